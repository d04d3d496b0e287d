//! The process's open-file limit, and how many client connections fit under it.
//!
//! Every connection is a file descriptor, and so is every log segment, checkpoint journal,
//! outbound connection and the listener itself. `tally serve` raises its soft `RLIMIT_NOFILE` to
//! the hard limit at start (the soft limit is often 1,024 while the hard one is far higher), and
//! keeps the connection cap under what is left with room to spare, so that a full house of
//! clients never makes opening a log segment or accepting a health check fail with `EMFILE`.

/// Files kept for the process's own work while it serves, above those open at start: log
/// segments rolled while serving (one a partition per segment size written), checkpoint and
/// savepoint writes, the Fluvio, webhook and peer connections (a few per partition and peer).
/// At the default 8 partitions these are a few dozen; 1,024 covers growth and many partitions.
pub const FILES_RESERVED: u64 = 1024;

/// Below this many connections the limit is too small to serve on: refuse to start.
const CONNECTIONS_MIN: u64 = 64;

/// The open-file limit as raised, and the descriptors open when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub limit: u64,
    pub open: u64,
}

/// Raises the soft open-file limit to the hard one, as far as the system allows; the limit now.
pub fn raise_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let mut limit = current.current.unwrap_or(u64::MAX);
    if current.current.is_some() && current.maximum != current.current {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = current.maximum.unwrap_or(u64::MAX),
            // macOS refuses an unlimited soft limit; the soft one stays.
            Err(error) => tracing::warn!(%error, limit, "cannot raise the open-file limit"),
        }
    }
    limit
}

impl OpenFiles {
    /// Under `limit`, with the descriptors open now.
    pub fn now(limit: u64) -> Self {
        Self {
            limit,
            open: open_descriptors(),
        }
    }
}

/// Descriptors open now, from `/proc/self/fd` where there is one; elsewhere a guess well above
/// what `tally serve` opens before serving.
fn open_descriptors() -> u64 {
    const GUESS: u64 = 256;
    std::fs::read_dir("/proc/self/fd").map_or(GUESS, |entries| entries.count() as u64)
}

/// How the descriptors left are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Client connections served at once.
    pub connections: u64,
    /// Connections above the cap answered 503 at once.
    pub refusals: u64,
}

impl OpenFiles {
    /// What fits under the limit beside the files open now: [`FILES_RESERVED`] for the server's
    /// own work and `refusals_max` for refusals, each cut down on a small limit (to half and an
    /// eighth of what is free) so that a server still starts under 1,024 descriptors, and the
    /// rest for connections; those are `asked`, or `default` if fewer fit.
    pub fn budget(
        &self,
        asked: Option<u64>,
        default: u64,
        refusals_max: u64,
    ) -> anyhow::Result<ConnectionBudget> {
        let free = self.limit.saturating_sub(self.open);
        let reserved = FILES_RESERVED.min(free / 2);
        let refusals = refusals_max.min(free / 8);
        let room = free - reserved - refusals;
        let advice = "raise the hard open-file limit (ulimit -Hn, LimitNOFILE=)";
        anyhow::ensure!(
            room >= CONNECTIONS_MIN,
            "the open-file limit {} leaves room for {room} connections ({} files open, \
             {reserved} kept for the server's own, {refusals} for refusals); {advice}",
            self.limit,
            self.open,
        );
        let connections = match asked {
            Some(asked) => {
                anyhow::ensure!(asked >= 1, "--connections-max must be at least 1");
                anyhow::ensure!(
                    asked <= room,
                    "--connections-max {asked} does not fit under the open-file limit {}: at \
                     most {room} do; {advice}, or ask for fewer",
                    self.limit
                );
                asked
            }
            None => default.min(room),
        };
        Ok(ConnectionBudget {
            connections,
            refusals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64, asked: Option<u64>) -> anyhow::Result<ConnectionBudget> {
        OpenFiles { limit, open: 40 }.budget(asked, 16_384, 256)
    }

    #[test]
    fn the_cap_keeps_room_for_the_servers_own_files_and_the_refusals() {
        let expected = ConnectionBudget {
            connections: 16_384,
            refusals: 256,
        };
        assert_eq!(budget(1_048_576, None).unwrap(), expected);
        assert_eq!(budget(20_000, Some(100)).unwrap().connections, 100);
        let room = 20_000 - 40 - FILES_RESERVED - 256;
        assert_eq!(budget(20_000, Some(room)).unwrap().connections, room);
        assert!(budget(20_000, Some(room + 1)).is_err());
        assert!(budget(20_000, Some(0)).is_err());
        assert_eq!(
            budget(4096, None).unwrap().connections,
            4096 - 40 - FILES_RESERVED - 256
        );
    }

    #[test]
    fn a_small_limit_shrinks_the_reserves_and_a_tiny_one_is_refused() {
        let free = 1024 - 40;
        assert_eq!(
            budget(1024, None).unwrap(),
            ConnectionBudget {
                connections: free - free / 2 - free / 8,
                refusals: free / 8,
            }
        );
        assert!(budget(100, None).is_err());
    }
}
