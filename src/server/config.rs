//! What a server is started with: a plain struct, filled by `tally serve`'s flags or by a test.

use std::path::PathBuf;
use std::time::Duration;

use tally_ingest::body::{BODY_READ_TIMEOUT_DEFAULT, CALLBACK_BODY_READS_MAX_DEFAULT};
use tally_ingest::rate_limit::RateLimitConfig;
use tally_ingest::routes::IngestLimits;
use tally_pipeline::checkpoint::COMPACTION_FLOOR_BYTES_DEFAULT;
use tally_pipeline::cluster::PartitionSet;
use tally_pipeline::log::LogLocation;
use tally_pipeline::operators::event_time_windows::WindowHorizons;
use tally_pipeline::runner::PipelineConfig;

use super::connections::{HEADER_READ_TIMEOUT_DEFAULT, IDLE_TIMEOUT_DEFAULT};

/// How often, by default, a partition run with `--owns auto` publishes its state.
pub const STATE_SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);

/// How a server runs. [`ServerConfig::new`] (or `Default`, on `./tally-data`) gives the same
/// settings as `tally serve` without flags; change the public fields for the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Where the log (if embedded), the state, the secrets and the savepoints live.
    pub data_dir: PathBuf,
    /// The secret that signs callbacks (`Tally-Signature`), as text; `None`: generated once into
    /// `<data_dir>/signing-secret`.
    pub signing_secret: Option<String>,
    /// The bearer token of the admin routes; `None`: generated once into `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    /// Where donor notifications are delivered (signed JSON POSTs); `None`: consumers page
    /// through `GET /v1/notifications`.
    pub notify_webhook: Option<String>,
    /// The donation log: embedded in the data directory, or a topic on a Fluvio cluster. The
    /// first start binds the data directory to it.
    pub log_location: LogLocation,
    /// Partitions of the log if this start creates it; 1 to 1024.
    pub partitions: u32,
    /// Replicas of each partition when the server creates the Fluvio topics.
    pub fluvio_replication: u32,
    /// Partitions whose pipeline this node runs: on a shared log, `Auto` (the default) lets the
    /// live nodes' assignment decide; on the embedded log a node runs all of them.
    pub owns: PartitionSet,
    /// This node's id on a shared log; `None`: generated once into `<data_dir>/node-id`.
    pub node_id: Option<String>,
    /// The base URL other nodes reach this one at; `None`: `http://` and the listen address.
    pub advertise: Option<String>,
    /// Largest accepted donation, in cents.
    pub amount_cents_max: u64,
    /// The per-user rate limit of donations.
    pub rate_limit: RateLimitConfig,
    /// A checkpoint is committed at least this often while records are applied…
    pub checkpoint_interval: Duration,
    /// …or after this many records (0 counts as 1).
    pub checkpoint_records_max: u64,
    /// With `--owns auto`: how often each partition's state is published to the cluster (if it
    /// changed), so a node taking it over replays at most about this much of the log.
    pub state_snapshot_interval: Duration,
    /// How long minute and hour buckets are kept behind the watermark.
    pub window_horizons: WindowHorizons,
    /// A checkpoint journal is compacted once its checkpoints since the last snapshot outweigh
    /// the snapshot and are at least this many bytes.
    pub compaction_floor_bytes: u64,
    /// Client connections served at once; `None`: 16384, or fewer if the open-file limit leaves
    /// less room beside the server's own files.
    pub connections_max: Option<u64>,
    /// How long a request head may take to arrive whole; more than 0.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request; more than 0.
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive; more than 0.
    pub body_read_timeout: Duration,
    /// Callback-sized bodies read at once, before their signature is checked; at least 1.
    pub body_reads_max: usize,
}

/// A setting the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be more than 0")]
    Zero { field: &'static str },
    #[error("partitions must be from 1 to {PARTITIONS_MAX}, not {0}")]
    Partitions(u32),
}

/// The most partitions a new log may have, as `tally serve --partitions` takes them.
pub const PARTITIONS_MAX: u32 = 1024;

impl ServerConfig {
    /// The defaults, on `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            signing_secret: None,
            admin_token: None,
            notify_webhook: None,
            log_location: LogLocation::Embedded,
            partitions: 8,
            fluvio_replication: 1,
            owns: PartitionSet::Auto,
            node_id: None,
            advertise: None,
            amount_cents_max: IngestLimits::default().donation.amount_cents_max,
            rate_limit: RateLimitConfig::default(),
            checkpoint_interval: Duration::from_millis(50),
            checkpoint_records_max: PipelineConfig::default().checkpoint_records_max,
            state_snapshot_interval: STATE_SNAPSHOT_INTERVAL_DEFAULT,
            window_horizons: WindowHorizons::DEFAULT,
            compaction_floor_bytes: COMPACTION_FLOOR_BYTES_DEFAULT,
            connections_max: None,
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            body_read_timeout: BODY_READ_TIMEOUT_DEFAULT,
            body_reads_max: CALLBACK_BODY_READS_MAX_DEFAULT,
        }
    }

    /// Refuses settings the server cannot run with.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return Err(ConfigError::Partitions(self.partitions));
        }
        let durations = [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("state_snapshot_interval", self.state_snapshot_interval),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(ConfigError::Zero { field });
        }
        if self.fluvio_replication == 0 {
            return Err(ConfigError::Zero {
                field: "fluvio_replication",
            });
        }
        if self.body_reads_max == 0 {
            return Err(ConfigError::Zero {
                field: "body_reads_max",
            });
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new("./tally-data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_a_zero_limit_is_refused_by_name() {
        assert_eq!(ServerConfig::default().check(), Ok(()));
        let config = ServerConfig {
            idle_timeout: Duration::ZERO,
            ..ServerConfig::default()
        };
        assert_eq!(
            config.check().unwrap_err().to_string(),
            "idle_timeout must be more than 0"
        );
        let config = ServerConfig {
            partitions: 0,
            ..ServerConfig::default()
        };
        assert!(config.check().is_err());
    }
}
