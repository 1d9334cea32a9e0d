//! `kiln serve`'s state directory (`KILN_STATE_DIR`, or `/var/lib/kiln`
//! for root): there or creatable, owned by the user kiln runs as, not
//! writable by others, writable, with room, and a journal that opens.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{access, AccessFlags};

use super::{Finding, Level};
use crate::store::{JournalHealth, SqliteJournal, StoreError};

/// Less free space than this is a warning: job logs, and by default the
/// VMs' scratch disks, live on this filesystem too.
pub const LOW_SPACE_BYTES: u64 = 1 << 30;

/// The findings about `dir`: the directory, its free space, the journal.
pub fn check_state_dir(dir: &Path) -> Vec<Finding> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vec![missing(dir)],
        Err(e) => {
            return vec![Finding::problem(
                "state dir",
                Level::Fail,
                format!("{}: {e}", dir.display()),
                "make it a directory kiln can read, or point KILN_STATE_DIR elsewhere",
            )]
        }
    };
    if let Some(problem) = directory_problem(dir, &meta) {
        return vec![problem];
    }
    vec![
        Finding::ok(
            "state dir",
            format!("{} (mode {:04o})", dir.display(), meta.mode() & 0o7777),
        ),
        free_space(dir),
        journal(dir),
    ]
}

/// A directory that is not there: fine when its parent lets it be made
/// (`kiln serve`'s unit makes it: StateDirectory=kiln).
fn missing(dir: &Path) -> Finding {
    let creatable = dir
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .is_some_and(|a| access(a, AccessFlags::W_OK | AccessFlags::X_OK).is_ok());
    let fix = format!(
        "the systemd unit makes it (StateDirectory=kiln); otherwise run `install -d -m 0700 {}`",
        dir.display()
    );
    if creatable {
        Finding::problem(
            "state dir",
            Level::Warn,
            format!("{} does not exist yet (it can be created)", dir.display()),
            fix,
        )
    } else {
        Finding::problem(
            "state dir",
            Level::Fail,
            format!(
                "{} does not exist and its parent is not writable",
                dir.display()
            ),
            fix,
        )
    }
}

/// Not a directory, another owner, writable by others, or not writable.
fn directory_problem(dir: &Path, meta: &std::fs::Metadata) -> Option<Finding> {
    let d = dir.display();
    let fail =
        |detail: String, fix: String| Some(Finding::problem("state dir", Level::Fail, detail, fix));
    if !meta.is_dir() {
        return fail(
            format!("{d} is not a directory"),
            "remove it, or point KILN_STATE_DIR at a directory".into(),
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        let who = if me == 0 {
            "root".to_string()
        } else {
            format!("uid {me}")
        };
        return fail(
            format!(
                "{d} is owned by uid {}, not {who} (kiln's user)",
                meta.uid()
            ),
            format!("chown {who} {d}"),
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return fail(
            format!("{d} is writable by every user (mode {mode:04o}): any of them could replace the journal"),
            format!("chmod 0700 {d}"),
        );
    }
    if let Err(errno) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        return fail(
            format!("{d} is not writable: {errno}"),
            "mount it read-write, or point KILN_STATE_DIR at a writable directory".into(),
        );
    }
    None
}

/// Free space where the journal, the job logs and the scratch disks go.
fn free_space(dir: &Path) -> Finding {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => {
            let free = st.blocks_available() * st.fragment_size();
            let detail = format!("{} GiB free in {}", free >> 30, dir.display());
            if free < LOW_SPACE_BYTES {
                Finding::problem(
                    "free space",
                    Level::Warn,
                    detail,
                    "free space there: when the filesystem fills, kiln serve refuses new jobs",
                )
            } else {
                Finding::ok("free space", detail)
            }
        }
        Err(errno) => Finding::problem(
            "free space",
            Level::Warn,
            format!("statvfs {}: {errno}", dir.display()),
            "check the filesystem the state directory is on",
        ),
    }
}

/// The journal, opened read-only.
fn journal(dir: &Path) -> Finding {
    match SqliteJournal::inspect(dir) {
        Ok(JournalHealth::Missing { path }) => Finding::ok(
            "journal",
            format!("{} not made yet (kiln serve's first start makes it)", path.display()),
        ),
        Ok(JournalHealth::Readable { path, version }) => {
            Finding::ok("journal", format!("{} opens (schema {version})", path.display()))
        }
        Ok(JournalHealth::Unreadable { path, reason }) => Finding::problem(
            "journal",
            Level::Warn,
            format!("{} is unreadable: {reason}", path.display()),
            "the next start of kiln serve moves it aside and starts an empty one; what ran before is then found by the on-host scan alone",
        ),
        Err(e @ StoreError::TooNew { .. }) => Finding::problem(
            "journal",
            Level::Fail,
            e.to_string(),
            "run the kiln that wrote it",
        ),
        Err(e) => Finding::problem(
            "journal",
            Level::Fail,
            e.to_string(),
            "see above; kiln serve cannot keep its journal until this is fixed",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn levels(findings: &[Finding]) -> Vec<(&'static str, Level)> {
        findings.iter().map(|f| (f.name, f.level)).collect()
    }

    #[test]
    fn a_private_directory_passes_and_its_journal_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let found = check_state_dir(dir.path());
        assert_eq!(found[0].level, Level::Ok, "{found:?}");
        assert_eq!(found[2].name, "journal");
        assert!(found[2].detail.contains("not made yet"), "{found:?}");
        assert!(
            !dir.path().join("journal.db").exists(),
            "doctor made nothing"
        );
        drop(SqliteJournal::open(dir.path()).expect("open journal"));
        let found = check_state_dir(dir.path());
        assert_eq!(found[2].level, Level::Ok, "{found:?}");
        assert!(found[2].detail.contains("opens (schema"), "{found:?}");
    }

    #[test]
    fn an_unreadable_journal_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("journal.db");
        std::fs::write(
            &journal,
            b"not a database at all, but long enough to look like one",
        )
        .expect("write");
        let found = check_state_dir(dir.path());
        assert_eq!(found[2].level, Level::Warn, "{found:?}");
        assert!(found[2].detail.contains("unreadable"), "{found:?}");
        assert_eq!(
            std::fs::read(&journal).expect("still there"),
            b"not a database at all, but long enough to look like one"
        );
    }

    #[test]
    fn a_world_writable_directory_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let found = check_state_dir(dir.path());
        assert_eq!(levels(&found), [("state dir", Level::Fail)]);
        assert!(found[0].detail.contains("mode 0777"), "{found:?}");
        assert_eq!(
            found[0].fix.as_deref(),
            Some(&*format!("chmod 0700 {}", dir.path().display()))
        );
    }

    #[test]
    fn a_missing_directory_that_can_be_made_is_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let found = check_state_dir(&dir.path().join("state"));
        assert_eq!(levels(&found), [("state dir", Level::Warn)]);
        assert!(found[0].detail.contains("can be created"), "{found:?}");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let found = check_state_dir(&file);
        assert_eq!(levels(&found), [("state dir", Level::Fail)]);
    }
}
