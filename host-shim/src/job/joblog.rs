//! Per-job log files: `<dir>/<job id>-<runner>.log`, mode 0600, the job's
//! stdout and stderr as they arrive plus kiln's own lines about the job.
//! The guest is hostile, so each file is capped and only the newest
//! [`JobLogs::keep`] files are kept. Job output never goes to tracing.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_protocol::Stream;
use tokio::io::AsyncWriteExt;

use crate::vm::OutputSink;

/// Default cap of one job's log.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;
/// Default number of job logs kept.
pub const DEFAULT_KEEP: usize = 1000;
/// The log files' extension; pruning only ever removes such files.
const EXT: &str = "log";

/// Where job logs go and how much of them is kept.
#[derive(Debug, Clone)]
pub struct JobLogs {
    pub dir: PathBuf,
    /// The most bytes of job output one log holds.
    pub max_bytes: u64,
    /// How many logs are kept; the oldest go first.
    pub keep: usize,
}

impl JobLogs {
    /// Creates `dir` (0700) if needed and checks that it is a directory.
    pub fn open(dir: PathBuf, max_bytes: u64, keep: usize) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(JobLogs {
            dir,
            max_bytes,
            keep: keep.max(1),
        })
    }

    /// A new log for job `job_id`'s runner `runner`, after pruning the
    /// oldest logs so that at most [`JobLogs::keep`] remain with it.
    pub async fn create(&self, job_id: u64, runner: &str) -> io::Result<JobLog> {
        let path = self.dir.join(format!("{job_id}-{runner}.{EXT}"));
        let (dir, keep) = (self.dir.clone(), self.keep);
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            if let Err(e) = prune(&dir, keep - 1) {
                tracing::warn!(dir = %dir.display(), error = %e, "pruning old job logs failed");
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(JobLog {
            path,
            file: tokio::fs::File::from_std(file),
            written: 0,
            max_bytes: self.max_bytes,
            full: false,
            line_start: true,
        })
    }
}

/// Removes the oldest `*.log` files in `dir` until at most `keep` remain.
fn prune(dir: &Path, keep: usize) -> io::Result<()> {
    let mut logs: Vec<(SystemTime, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_log = path.extension().is_some_and(|e| e == EXT);
        let meta = entry.metadata()?;
        if is_log && meta.is_file() {
            logs.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), path));
        }
    }
    if logs.len() <= keep {
        return Ok(());
    }
    logs.sort();
    let excess = logs.len() - keep;
    for (_, path) in logs.into_iter().take(excess) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One job's log. As an [`OutputSink`] it takes the job's output up to
/// the cap, then notes the cut once and drops the rest (the job goes on).
pub struct JobLog {
    path: PathBuf,
    file: tokio::fs::File,
    written: u64,
    max_bytes: u64,
    full: bool,
    /// Whether the file ends with a newline (or is empty).
    line_start: bool,
}

impl JobLog {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Job output bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A line of kiln's own (not counted against the cap: kiln bounds it).
    /// Control characters other than newline and tab become `?`, since
    /// parts of it may come from the guest.
    pub async fn note(&mut self, text: &str) {
        let mut line: String = text
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '?'
                } else {
                    c
                }
            })
            .collect();
        // Kiln's lines start a line of their own, whatever the job wrote.
        line.insert_str(
            0,
            if self.line_start {
                "[kiln] "
            } else {
                "\n[kiln] "
            },
        );
        line.push('\n');
        self.line_start = true;
        if let Err(e) = self.file.write_all(line.as_bytes()).await {
            tracing::warn!(log = %self.path.display(), error = %e, "writing the job log failed");
        }
    }

    /// Flushes what is buffered.
    pub async fn finish(&mut self) {
        if let Err(e) = self.file.flush().await {
            tracing::warn!(log = %self.path.display(), error = %e, "flushing the job log failed");
        }
    }
}

impl OutputSink for JobLog {
    async fn write(&mut self, _stream: Stream, data: &[u8]) -> io::Result<()> {
        if self.full {
            return Ok(());
        }
        let room = self.max_bytes.saturating_sub(self.written);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        let kept = &data[..take];
        self.file.write_all(kept).await?;
        self.written += take as u64;
        if let Some(&last) = kept.last() {
            self.line_start = last == b'\n';
        }
        if take < data.len() {
            self.full = true;
            let cap = self.max_bytes;
            self.note(&format!(
                "the job's output passed {cap} bytes: the rest is not logged"
            ))
            .await;
        }
        Ok(())
    }
}

/// No log (it could not be created): the output is dropped.
impl OutputSink for Option<JobLog> {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        match self {
            Some(log) => log.write(stream, data).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn logs_are_private_capped_and_noted() {
        let d = tempfile::tempdir().expect("tempdir");
        let logs = JobLogs::open(d.path().join("logs"), 10, 5).expect("open");
        let mut log = logs.create(7, "kiln-small-7-abcdef").await.expect("create");
        assert_eq!(
            log.path(),
            d.path().join("logs/7-kiln-small-7-abcdef.log").as_path()
        );
        log.write(Stream::Stdout, b"hello ").await.expect("write");
        log.write(Stream::Stderr, b"world, and more")
            .await
            .expect("write");
        log.write(Stream::Stdout, b"dropped").await.expect("write");
        log.note("done\x1b[31m").await;
        log.finish().await;
        assert_eq!(log.written(), 10);
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert!(text.starts_with("hello worl\n[kiln] "), "{text:?}");
        assert!(text.contains("passed 10 bytes"), "{text:?}");
        assert!(
            !text.contains("dropped") && !text.contains("more"),
            "{text:?}"
        );
        assert!(text.ends_with("[kiln] done?[31m\n"), "{text:?}");
        let mode = std::fs::metadata(log.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dir_mode = std::fs::metadata(&logs.dir)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0, "{dir_mode:o}");
        // The same job and runner twice is refused, not appended to.
        assert!(logs.create(7, "kiln-small-7-abcdef").await.is_err());
    }

    #[tokio::test]
    async fn only_the_newest_logs_are_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let logs = JobLogs::open(d.path().to_owned(), 100, 3).expect("open");
        std::fs::write(d.path().join("notes.txt"), "not a log").expect("write");
        for i in 0..5u64 {
            let mut log = logs.create(i, "r").await.expect("create");
            log.finish().await;
            // mtime order must be unambiguous.
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .write(true)
                .open(log.path())
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["2-r.log", "3-r.log", "4-r.log", "notes.txt"]);
    }
}
