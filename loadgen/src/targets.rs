//! The servers a run drives: one `tally serve`, or several nodes sharing one log, each taking any
//! donation and answering any query. Donation requests go to them round robin, so a payment's
//! resends and retries often reach another node than its original; freshness probes read from a
//! node other than the one that acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};

use tally_api::signature::SigningSecret;

use crate::client::Server;

/// A target list a run cannot use.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("no target server given (--target URL)")]
    Missing,
    #[error(
        "--server-cmd and --kill-every drive exactly one server, but {count} targets were given"
    )]
    SeveralWithOwnedServer { count: usize },
    #[error("cannot use target {url}")]
    Client {
        url: String,
        #[source]
        source: crate::http::HttpError,
    },
}

/// Checks a run's target URLs: at least one, and exactly one when the run starts (and crashes)
/// the server itself. Returns the first target.
pub fn first_target(urls: &[String], owns_server: bool) -> Result<&str, TargetsError> {
    let first = urls.first().ok_or(TargetsError::Missing)?;
    if owns_server && urls.len() > 1 {
        return Err(TargetsError::SeveralWithOwnedServer { count: urls.len() });
    }
    Ok(first)
}

/// The target of the `request_index`th donation request out of `count`.
pub fn round_robin(request_index: u64, count: usize) -> usize {
    (request_index % count.max(1) as u64) as usize
}

/// The target a freshness probe reads from, for its `turn`th probe: with several targets, one of
/// those that did not acknowledge the donation, taken in turn; with one, that one.
pub fn probe_reader(acknowledged_by: usize, turn: u64, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let others = (count - 1) as u64;
    (acknowledged_by + 1 + (turn % others) as usize) % count
}

/// The servers of a run, never empty, with the counters that spread requests over them.
#[derive(Debug)]
pub struct Targets {
    servers: Vec<Server>,
    requests: AtomicU64,
    probes: AtomicU64,
}

impl Targets {
    /// Clients for `urls` (at least one), all with the same secret and admin token.
    pub fn new(
        urls: &[String],
        secret: &SigningSecret,
        admin_token: &str,
        connections: usize,
    ) -> Result<Self, TargetsError> {
        first_target(urls, false)?;
        let client = |url: &String| {
            Server::new(url, secret.clone(), admin_token.to_owned(), connections).map_err(
                |source| TargetsError::Client {
                    url: url.clone(),
                    source,
                },
            )
        };
        let servers = urls.iter().map(client).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            servers,
            requests: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        })
    }

    /// The first target: campaigns are created and unanswered payments looked up there.
    pub fn first(&self) -> &Server {
        &self.servers[0]
    }

    pub fn all(&self) -> &[Server] {
        &self.servers
    }

    pub fn several(&self) -> bool {
        self.servers.len() > 1
    }

    /// The targets' base URLs, in order.
    pub fn bases(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.base().to_owned()).collect()
    }

    /// The target for the next donation request (first attempts and retries alike), with its
    /// index.
    pub fn next_for_request(&self) -> (usize, &Server) {
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        self.pick(round_robin(index, self.servers.len()))
    }

    /// The target the next freshness probe reads from, for a donation `acknowledged_by` one.
    pub fn next_for_probe(&self, acknowledged_by: usize) -> (usize, &Server) {
        let turn = self.probes.fetch_add(1, Ordering::Relaxed);
        self.pick(probe_reader(acknowledged_by, turn, self.servers.len()))
    }

    fn pick(&self, index: usize) -> (usize, &Server) {
        let index = index % self.servers.len();
        (index, &self.servers[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("http://127.0.0.1:{}", 8081 + i))
            .collect()
    }

    #[test]
    fn requests_spread_evenly_in_turn() {
        let picked: Vec<usize> = (0..7).map(|i| round_robin(i, 3)).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2, 0]);
        assert!((0..5).all(|i| round_robin(i, 1) == 0));
        assert_eq!(round_robin(4, 0), 0, "no targets is not a division by zero");
    }

    #[test]
    fn consecutive_requests_reach_different_targets() {
        let secret = SigningSecret::from_text("secret");
        let targets = Targets::new(&urls(2), &secret, "token", 1).unwrap();
        let bases: Vec<String> = (0..4)
            .map(|_| targets.next_for_request().1.base().to_owned())
            .collect();
        assert_eq!(
            bases,
            [
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082",
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082"
            ]
        );
    }

    #[test]
    fn probes_read_from_a_node_that_did_not_acknowledge() {
        for count in 2..5 {
            for acknowledged_by in 0..count {
                let readers: Vec<usize> = (0..(count as u64 - 1) * 2)
                    .map(|turn| probe_reader(acknowledged_by, turn, count))
                    .collect();
                assert!(readers.iter().all(|&r| r != acknowledged_by && r < count));
                let distinct: std::collections::BTreeSet<usize> = readers.iter().copied().collect();
                assert_eq!(distinct.len(), count - 1, "every other node in turn");
            }
        }
        assert_eq!(probe_reader(0, 5, 1), 0, "one target reads from itself");
    }

    #[test]
    fn an_owned_server_needs_exactly_one_target() {
        let one = urls(1);
        let two = urls(2);
        assert_eq!(first_target(&one, true).ok(), Some("http://127.0.0.1:8081"));
        assert_eq!(
            first_target(&two, false).ok(),
            Some("http://127.0.0.1:8081")
        );
        assert!(matches!(
            first_target(&two, true),
            Err(TargetsError::SeveralWithOwnedServer { count: 2 })
        ));
        assert!(matches!(
            first_target(&[], false),
            Err(TargetsError::Missing)
        ));
        let secret = SigningSecret::from_text("secret");
        assert!(matches!(
            Targets::new(&[], &secret, "token", 1),
            Err(TargetsError::Missing)
        ));
    }
}
