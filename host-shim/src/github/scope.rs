//! Where runners register: one repository, an organization or an enterprise.
//!
//! GitHub puts the same runner endpoints under three prefixes; everything else
//! in the client is the same for all of them.

use std::fmt;

/// The level at which Kiln's JIT runners register (config: `repo`, `org` or `enterprise`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunnerScope {
    /// One repository: the App needs repository "Administration: read & write".
    Repo { owner: String, repo: String },
    /// An organization: the App needs organization "Self-hosted runners: read & write".
    Org { org: String },
    /// An enterprise (GitHub Enterprise Cloud or Server).
    Enterprise { enterprise: String },
}

impl RunnerScope {
    /// `/repos/{owner}/{repo}/actions/runners`, `/orgs/{org}/actions/runners` or
    /// `/enterprises/{enterprise}/actions/runners`, each name percent-encoded so a
    /// stray `/` or `?` in the config cannot address another endpoint.
    pub fn runners_path(&self) -> String {
        match self {
            RunnerScope::Repo { owner, repo } => format!(
                "/repos/{}/{}/actions/runners",
                encode_segment(owner),
                encode_segment(repo)
            ),
            RunnerScope::Org { org } => format!("/orgs/{}/actions/runners", encode_segment(org)),
            RunnerScope::Enterprise { enterprise } => {
                format!(
                    "/enterprises/{}/actions/runners",
                    encode_segment(enterprise)
                )
            }
        }
    }
}

impl RunnerScope {
    /// Where the App's installation on this scope is found:
    /// `/repos/{owner}/{repo}/installation`, `/orgs/{org}/installation` or
    /// `/enterprises/{enterprise}/installation`.
    pub fn installation_path(&self) -> String {
        let runners = self.runners_path();
        let prefix = runners.strip_suffix("/actions/runners").unwrap_or(&runners);
        format!("{prefix}/installation")
    }

    /// Whether this scope's runners can take jobs of `repository`
    /// (`owner/name`, as in a webhook): the repository itself, or one the
    /// organization owns (GitHub's names are case-insensitive). An
    /// enterprise's organizations are not in a webhook's repository name,
    /// so every repository passes there.
    pub fn covers(&self, repository: &str) -> bool {
        let Some((owner, name)) = repository.split_once('/') else {
            return false;
        };
        match self {
            RunnerScope::Repo { owner: o, repo: r } => {
                o.eq_ignore_ascii_case(owner) && r.eq_ignore_ascii_case(name)
            }
            RunnerScope::Org { org } => org.eq_ignore_ascii_case(owner),
            RunnerScope::Enterprise { .. } => true,
        }
    }
}

impl fmt::Display for RunnerScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerScope::Repo { owner, repo } => write!(f, "repository {owner}/{repo}"),
            RunnerScope::Org { org } => write!(f, "organization {org}"),
            RunnerScope::Enterprise { enterprise } => write!(f, "enterprise {enterprise}"),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters; a segment of
/// only dots is encoded too, or it would mean "this/parent directory".
pub(crate) fn encode_segment(segment: &str) -> String {
    let all_dots = segment.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~');
        if unreserved || (byte == b'.' && !all_dots) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_scope() {
        let repo = RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into(),
        };
        assert_eq!(repo.runners_path(), "/repos/acme/widgets/actions/runners");
        let org = RunnerScope::Org { org: "acme".into() };
        assert_eq!(org.runners_path(), "/orgs/acme/actions/runners");
        let ent = RunnerScope::Enterprise {
            enterprise: "acme-inc".into(),
        };
        assert_eq!(ent.runners_path(), "/enterprises/acme-inc/actions/runners");
    }

    #[test]
    fn a_scope_covers_its_repository_or_its_organizations_repositories() {
        let repo = RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into(),
        };
        assert!(repo.covers("acme/widgets"));
        assert!(repo.covers("ACME/Widgets"));
        assert!(!repo.covers("acme/gadgets"));
        assert!(!repo.covers("evil/widgets"));
        assert!(!repo.covers("acme"));
        let org = RunnerScope::Org { org: "acme".into() };
        assert!(org.covers("Acme/anything"));
        assert!(!org.covers("acme-evil/widgets"));
        assert!(!org.covers("evil/acme"));
        let ent = RunnerScope::Enterprise {
            enterprise: "acme-inc".into(),
        };
        assert!(ent.covers("anyone/anything"));
    }

    #[test]
    fn names_cannot_escape_their_segment() {
        let org = RunnerScope::Org {
            org: "../app?x=1 y".into(),
        };
        assert_eq!(
            org.runners_path(),
            "/orgs/..%2Fapp%3Fx%3D1%20y/actions/runners"
        );
        let dots = RunnerScope::Repo {
            owner: "..".into(),
            repo: "my.repo".into(),
        };
        assert_eq!(dots.runners_path(), "/repos/%2E%2E/my.repo/actions/runners");
    }
}
