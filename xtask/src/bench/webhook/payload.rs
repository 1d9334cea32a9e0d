//! What the load generator sends: `workflow_job` `queued` deliveries as
//! GitHub's App webhook sends them (the body's shape and size, the
//! headers), each with its own delivery GUID and job id, signed the way
//! `kiln serve` checks them.

use hyper::body::Bytes;
use kiln::secret::Secret;
use serde_json::json;

/// The labels every bench job asks for (`runs-on`); the bench's pool
/// serves exactly these.
pub const LABELS: [&str; 4] = ["self-hosted", "linux", "x64", "kiln-bench"];

/// One delivery, ready to send: nothing is computed once the clock runs.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub job_id: u64,
    pub signature: String,
    pub body: Bytes,
}

/// A GUID-shaped delivery id (8-4-4-4-12 hex digits, as GitHub's), unique
/// per (`nonce`, `seq`): the nonce tells bench invocations apart, the
/// sequence number requests within one.
pub fn delivery_id(nonce: u64, seq: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nonce >> 32) as u32,
        (nonce >> 16) as u16,
        nonce & 0xfff,
        (seq >> 48) & 0xfff,
        seq & 0xffff_ffff_ffff
    )
}

/// A `workflow_job` `queued` body for job `job_id`, with the fields and
/// the size (about 5 KiB) of a real one from an organisation's repository.
pub fn body(job_id: u64) -> Vec<u8> {
    let run_id = 9_000_000_000 + job_id / 4;
    let repo = "kiln-bench/widgets";
    let api = "https://api.github.com";
    let repo_api = format!("{api}/repos/{repo}");
    let sha = format!("{:040x}", u128::from(job_id) * 0x9e37_79b9_7f4a_7c15);
    let owner = json!({
        "login": "kiln-bench", "id": 90_000_001, "node_id": "O_kgDOBVwRAQ",
        "avatar_url": "https://avatars.githubusercontent.com/u/90000001?v=4", "gravatar_id": "",
        "url": format!("{api}/users/kiln-bench"), "html_url": "https://github.com/kiln-bench",
        "followers_url": format!("{api}/users/kiln-bench/followers"),
        "following_url": format!("{api}/users/kiln-bench/following{{/other_user}}"),
        "gists_url": format!("{api}/users/kiln-bench/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/kiln-bench/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/kiln-bench/subscriptions"),
        "organizations_url": format!("{api}/users/kiln-bench/orgs"),
        "repos_url": format!("{api}/users/kiln-bench/repos"),
        "events_url": format!("{api}/users/kiln-bench/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/kiln-bench/received_events"),
        "type": "Organization", "user_view_type": "public", "site_admin": false
    });
    let mut repository = json!({
        "id": 700_000_001, "node_id": "R_kgDOKbVwAQ", "name": "widgets", "full_name": repo,
        "private": true, "owner": owner, "html_url": format!("https://github.com/{repo}"),
        "description": "Widgets, built on Kiln runners", "fork": false, "url": repo_api,
        "created_at": "2024-03-01T09:12:44Z", "updated_at": "2026-11-20T17:03:10Z",
        "pushed_at": "2026-11-22T05:20:01Z", "git_url": format!("git://github.com/{repo}.git"),
        "ssh_url": format!("git@github.com:{repo}.git"),
        "clone_url": format!("https://github.com/{repo}.git"), "homepage": null, "size": 48_213
    });
    // Two halves: one `json!` this size exceeds the macro's recursion limit.
    let more = json!({
        "stargazers_count": 12, "watchers_count": 12, "language": "Rust", "has_issues": true,
        "has_projects": false, "has_downloads": true, "has_wiki": false, "has_pages": false,
        "has_discussions": false, "forks_count": 3, "archived": false, "disabled": false,
        "open_issues_count": 7, "license": null, "allow_forking": false, "is_template": false,
        "web_commit_signoff_required": false, "topics": ["ci", "rust"], "visibility": "private",
        "forks": 3, "open_issues": 7, "watchers": 12, "default_branch": "main",
        "custom_properties": {}
    });
    if let (Some(r), Some(m)) = (repository.as_object_mut(), more.as_object()) {
        r.extend(m.clone());
    }
    for what in [
        "forks",
        "keys",
        "collaborators",
        "teams",
        "hooks",
        "issue_events",
        "events",
        "assignees",
        "branches",
        "tags",
        "blobs",
        "git_tags",
        "git_refs",
        "trees",
        "statuses",
        "languages",
        "stargazers",
        "contributors",
        "subscribers",
        "subscription",
        "commits",
        "git_commits",
        "comments",
        "issue_comment",
        "contents",
        "compare",
        "merges",
        "archive",
        "downloads",
        "issues",
        "pulls",
        "milestones",
        "notifications",
        "labels",
        "releases",
        "deployments",
    ] {
        repository[format!("{what}_url")] = json!(format!("{repo_api}/{what}"));
    }
    let sender = json!({
        "login": "octo-dev", "id": 5_000_123, "node_id": "MDQ6VXNlcjUwMDAxMjM=",
        "avatar_url": "https://avatars.githubusercontent.com/u/5000123?v=4",
        "url": format!("{api}/users/octo-dev"), "html_url": "https://github.com/octo-dev",
        "type": "User", "user_view_type": "public", "site_admin": false
    });
    let event = json!({
        "action": "queued",
        "workflow_job": {
            "id": job_id, "run_id": run_id, "workflow_name": "CI", "head_branch": "main",
            "run_url": format!("{repo_api}/actions/runs/{run_id}"), "run_attempt": 1,
            "node_id": format!("CR_kwDOKbVwAc8AAAAC{job_id:x}"), "head_sha": sha,
            "url": format!("{repo_api}/actions/jobs/{job_id}"),
            "html_url": format!("https://github.com/{repo}/actions/runs/{run_id}/job/{job_id}"),
            "status": "queued", "conclusion": null, "created_at": "2026-11-22T05:20:03Z",
            "started_at": "2026-11-22T05:20:03Z", "completed_at": null,
            "name": "test (ubuntu, stable)", "steps": [],
            "check_run_url": format!("{repo_api}/check-runs/{job_id}"),
            "labels": LABELS, "runner_id": null, "runner_name": null,
            "runner_group_id": null, "runner_group_name": null
        },
        "repository": repository,
        "organization": {
            "login": "kiln-bench", "id": 90_000_001, "node_id": "O_kgDOBVwRAQ",
            "url": format!("{api}/orgs/kiln-bench"),
            "repos_url": format!("{api}/orgs/kiln-bench/repos"),
            "events_url": format!("{api}/orgs/kiln-bench/events"),
            "hooks_url": format!("{api}/orgs/kiln-bench/hooks"),
            "issues_url": format!("{api}/orgs/kiln-bench/issues"),
            "members_url": format!("{api}/orgs/kiln-bench/members{{/member}}"),
            "public_members_url": format!("{api}/orgs/kiln-bench/public_members{{/member}}"),
            "avatar_url": "https://avatars.githubusercontent.com/u/90000001?v=4",
            "description": "Kiln's benchmark organisation"
        },
        "sender": sender,
        "installation": { "id": 51_000_042, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNTEwMDAwNDI=" }
    });
    // Serialising a `Value` built above cannot fail.
    serde_json::to_vec(&event).unwrap_or_default()
}

/// `n` deliveries with job ids from `first_job_id` and delivery ids from
/// (`nonce`, `first_seq`), each signed with `secret`.
pub fn deliveries(
    secret: &Secret,
    nonce: u64,
    first_seq: u64,
    first_job_id: u64,
    n: usize,
) -> Vec<Delivery> {
    (0..n as u64)
        .map(|i| {
            let job_id = first_job_id + i;
            let body = body(job_id);
            Delivery {
                id: delivery_id(nonce, first_seq + i),
                job_id,
                signature: kiln::github::webhook::sign(secret, &body),
                body: Bytes::from(body),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use kiln::github::webhook::{parse_workflow_job, verify_signature, WorkflowJobAction};

    use super::*;

    #[test]
    fn delivery_ids_are_guids_and_unique() {
        let a = delivery_id(0x1234_5678_9abc_def0, 1);
        assert_eq!(a.len(), 36, "{a}");
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        let ids: HashSet<String> = (0..10_000).map(|s| delivery_id(7, s)).collect();
        assert_eq!(ids.len(), 10_000);
        assert_ne!(delivery_id(7, 1), delivery_id(8, 1));
    }

    #[test]
    fn bodies_are_what_kiln_serve_parses_and_a_few_kib() {
        let b = body(42);
        assert!((3 * 1024..8 * 1024).contains(&b.len()), "{} bytes", b.len());
        let ev = parse_workflow_job(&b).expect("parses");
        assert_eq!(ev.action, WorkflowJobAction::Queued);
        assert_eq!(ev.workflow_job.id, 42);
        assert_eq!(ev.workflow_job.labels, LABELS);
        assert_eq!(ev.installation.map(|i| i.id), Some(51_000_042));
        assert_eq!(ev.repository.full_name, "kiln-bench/widgets");
    }

    #[test]
    fn every_delivery_is_signed_and_has_its_own_ids() {
        let secret = Secret::new("bench secret");
        let list = deliveries(&secret, 99, 1000, 5_000, 50);
        assert_eq!(list.len(), 50);
        let ids: HashSet<&str> = list.iter().map(|d| d.id.as_str()).collect();
        let jobs: HashSet<u64> = list.iter().map(|d| d.job_id).collect();
        assert_eq!((ids.len(), jobs.len()), (50, 50));
        assert_eq!(list[3].job_id, 5_003);
        for d in &list {
            assert_eq!(
                verify_signature(&secret, &d.body, Some(d.signature.as_bytes())),
                Ok(())
            );
        }
        // Another secret's signature does not pass.
        let other = Secret::new("not it");
        assert!(
            verify_signature(&other, &list[0].body, Some(list[0].signature.as_bytes())).is_err()
        );
    }
}
