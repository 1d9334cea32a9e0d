//! Conditional requests: the `ETag` of each list answer, remembered per
//! request path, sent back as `If-None-Match`. GitHub answers `304 Not
//! Modified` when nothing changed, and a 304 does not count against the
//! installation's rate limit; the cached body then stands in for the answer.

use std::collections::HashMap;

use hyper::body::Bytes;
use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::client::Answer;
use super::error::GithubError;

/// Entries kept at most; past it the cache starts over (each path then costs
/// one counted request again), so a flood of workflow runs cannot grow it
/// without bound.
pub const MAX_ENTRIES: usize = 10_000;

/// What one request cost against the installation's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// A full answer: one request of the hourly limit.
    Counted,
    /// A 304: free; the cached answer was reused.
    NotModified,
}

/// The last full answer of each GET path (query included) and its `ETag`.
/// Not `Debug`-printed with bodies: they are list answers, no secrets, but
/// large.
#[derive(Default)]
pub struct EtagCache {
    entries: HashMap<String, Entry>,
}

struct Entry {
    etag: String,
    body: Bytes,
}

impl std::fmt::Debug for EtagCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtagCache")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl EtagCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the paths for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|path, _| keep(path));
    }

    fn etag(&self, path: &str) -> Option<&str> {
        self.entries.get(path).map(|e| e.etag.as_str())
    }

    fn remember(&mut self, path: &str, answer: &Answer) {
        let Some(etag) = answer.etag.clone() else {
            self.entries.remove(path);
            return;
        };
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(path) {
            tracing::debug!(
                entries = self.entries.len(),
                "ETag cache full; starting over"
            );
            self.entries.clear();
        }
        let body = answer.body().clone();
        self.entries.insert(path.to_owned(), Entry { etag, body });
    }
}

impl GithubApp {
    /// `GET path` as installation `installation_id`, conditional on the
    /// `ETag` `cache` holds for `path`. A 200 refreshes the cache; a 304
    /// returns the cached body as a 200. Other answers are returned as they
    /// are (and forget the path's entry).
    pub(crate) async fn get_conditional(
        &self,
        installation_id: u64,
        path: &str,
        cache: &mut EtagCache,
    ) -> Result<(Answer, Cost), GithubError> {
        let etag = cache.etag(path).map(str::to_owned);
        let answer = self
            .send_as_installation_if(installation_id, Method::GET, path, None, etag.as_deref())
            .await?;
        match answer.status {
            StatusCode::NOT_MODIFIED => {
                let entry = cache.entries.get(path).ok_or_else(|| GithubError::Decode {
                    method: "GET",
                    path: path.to_owned(),
                    problem: "304 Not Modified to a request without If-None-Match".into(),
                })?;
                let cached =
                    Answer::cached(entry.body.clone(), entry.etag.clone(), answer.rate_limit);
                Ok((cached, Cost::NotModified))
            }
            StatusCode::OK => {
                cache.remember(path, &answer);
                Ok((answer, Cost::Counted))
            }
            _ => {
                cache.entries.remove(path);
                Ok((answer, Cost::Counted))
            }
        }
    }
}
