//! `tally serve`'s flags, each with a `TALLY_…` environment fallback, and their conversion
//! into the library's [`ServerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tally::ServerConfig;
use tally_ingest::body::{BODY_READ_TIMEOUT_DEFAULT, CALLBACK_BODY_READS_MAX_DEFAULT};
use tally_ingest::rate_limit::RateLimitConfig;
use tally_ingest::routes::IngestLimits;
use tally_pipeline::cluster::PartitionSet;
use tally_pipeline::log::LogLocation;
use tally_pipeline::runner::PipelineConfig;

use crate::commands::StateSettings;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "TALLY_LISTEN")]
    pub listen: SocketAddr,
    /// Secret that signs callbacks (Tally-Signature); default: generated into the data directory.
    #[arg(long, env = "TALLY_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Bearer token for admin routes; default: generated into the data directory.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Deliver donor notifications to this URL (signed JSON POSTs); without it, consumers page
    /// through GET /v1/notifications.
    #[arg(long, env = "TALLY_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,
    /// Where the donation log lives: `embedded` (in the data directory) or
    /// `fluvio://HOST:PORT/TOPIC` (a topic on a Fluvio cluster, created if missing). The first
    /// start binds the data directory to it.
    #[arg(long = "log", env = "TALLY_LOG_LOCATION", default_value = "embedded")]
    pub log_location: LogLocation,
    /// Partitions of the log if this start creates it.
    #[arg(long, env = "TALLY_PARTITIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(tally::PARTITIONS_MAX)))]
    pub partitions: u32,
    /// Replicas of each partition when tally creates the Fluvio topic: 1 suits a one-SPU test
    /// cluster; use at least 2 in production, where durability comes from replication.
    #[arg(long, env = "TALLY_FLUVIO_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fluvio_replication: u32,
    /// Partitions whose pipeline this node runs: `auto` (on a shared Fluvio log the live nodes
    /// split them among themselves and move a dead node's to the others; alone, all of them),
    /// `all`, or fixed partitions such as `0-3`, `0,2,4-5`. Two live nodes never run the same one.
    #[arg(long, default_value = "auto", env = "TALLY_OWNS")]
    pub owns: PartitionSet,
    /// This node's id among the nodes on a shared log; default: generated into the data
    /// directory, so a restart on it is the same node.
    #[arg(long, env = "TALLY_NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL other nodes reach this one at (default: http:// and the listen address).
    #[arg(long, env = "TALLY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Largest accepted donation, in cents.
    #[arg(long, env = "TALLY_AMOUNT_CENTS_MAX",
          default_value_t = IngestLimits::default().donation.amount_cents_max)]
    pub amount_cents_max: u64,
    /// Donations a user may send in a burst before being rate limited.
    #[arg(long, env = "TALLY_RATE_LIMIT_BURST", default_value_t = RateLimitConfig::default().burst)]
    pub rate_limit_burst: u32,
    /// Donations per second a user's allowance refills by.
    #[arg(long, env = "TALLY_RATE_LIMIT_PER_SECOND",
          default_value_t = RateLimitConfig::default().refill_per_second)]
    pub rate_limit_per_second: f64,
    /// Commit a checkpoint at least this often while records are applied.
    #[arg(long, env = "TALLY_CHECKPOINT_INTERVAL", default_value = "50ms",
          value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Duration,
    /// …or after this many records.
    #[arg(long, env = "TALLY_CHECKPOINT_RECORDS",
          default_value_t = PipelineConfig::default().checkpoint_records_max)]
    pub checkpoint_records: u64,
    /// With --owns auto on a Fluvio log: publish each partition's state to the cluster this
    /// often (when it changed), so a node taking the partition over replays at most about this
    /// much of the log.
    #[arg(long, env = "TALLY_STATE_SNAPSHOT_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub state_snapshot_interval: Duration,
    /// Client connections served at once; one more is answered 503 too_many_connections and
    /// closed. Default: 16384, or fewer if the open-file limit (raised to its hard limit at
    /// start) leaves less room beside the server's own files.
    #[arg(long, env = "TALLY_CONNECTIONS_MAX")]
    pub connections_max: Option<u64>,
    /// How long a request head may take to arrive whole: from accept for a connection's first
    /// request, from its first byte for the next ones. A client past it is disconnected.
    #[arg(long, env = "TALLY_HEADER_READ_TIMEOUT", default_value_t = ServerConfig::default().header_read_timeout.into())]
    pub header_read_timeout: humantime::Duration,
    /// How long a kept-alive connection may wait for its next request, or leave a response
    /// unread, before it is closed.
    #[arg(long, env = "TALLY_IDLE_TIMEOUT", default_value_t = ServerConfig::default().idle_timeout.into())]
    pub idle_timeout: humantime::Duration,
    /// How long a request body may take to arrive; past it the answer is 408 body_timeout and
    /// the connection is closed.
    #[arg(long, env = "TALLY_BODY_READ_TIMEOUT", default_value_t = BODY_READ_TIMEOUT_DEFAULT.into())]
    pub body_read_timeout: humantime::Duration,
    /// Callback-sized bodies (up to 16 KiB) read at once, before their signature is checked;
    /// one more is answered 503 too_many_body_reads. Memory: this × 16 KiB at most. Batches
    /// have 64 slots of their own.
    #[arg(long, env = "TALLY_BODY_READS_MAX", default_value_t = CALLBACK_BODY_READS_MAX_DEFAULT as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub body_reads_max: u32,
}

impl ServeArgs {
    /// The server's configuration on `data_dir`, with this process's state settings; a zero
    /// timeout is refused naming its flag.
    pub fn into_config(
        self,
        data_dir: PathBuf,
        state: StateSettings,
    ) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            body_read_timeout: positive(self.body_read_timeout, "--body-read-timeout")?,
            header_read_timeout: positive(self.header_read_timeout, "--header-read-timeout")?,
            idle_timeout: positive(self.idle_timeout, "--idle-timeout")?,
            data_dir,
            signing_secret: self.signing_secret,
            admin_token: self.admin_token,
            notify_webhook: self.notify_webhook,
            log_location: self.log_location,
            partitions: self.partitions,
            fluvio_replication: self.fluvio_replication,
            owns: self.owns,
            node_id: self.node_id,
            advertise: self.advertise,
            amount_cents_max: self.amount_cents_max,
            rate_limit: RateLimitConfig {
                burst: self.rate_limit_burst,
                refill_per_second: self.rate_limit_per_second,
                ..RateLimitConfig::default()
            },
            checkpoint_interval: self.checkpoint_interval,
            state_snapshot_interval: self.state_snapshot_interval,
            checkpoint_records_max: self.checkpoint_records,
            window_horizons: state.horizons,
            compaction_floor_bytes: state.compaction_floor_bytes,
            connections_max: self.connections_max,
            body_reads_max: self.body_reads_max as usize,
        })
    }
}

fn positive(duration: humantime::Duration, flag: &str) -> anyhow::Result<Duration> {
    let duration: Duration = duration.into();
    anyhow::ensure!(!duration.is_zero(), "{flag} must be more than 0");
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(flags: &[&str]) -> ServeArgs {
        Serve::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("valid flags")
            .args
    }

    fn defaults() -> StateSettings {
        StateSettings {
            horizons: ServerConfig::default().window_horizons,
            compaction_floor_bytes: ServerConfig::default().compaction_floor_bytes,
        }
    }

    #[test]
    fn serve_without_flags_is_the_library_default() {
        let config = parse(&[]).into_config("./tally-data".into(), defaults());
        assert_eq!(config.unwrap(), ServerConfig::default());
    }

    #[test]
    fn a_zero_timeout_is_refused_naming_its_flag() {
        let error = parse(&["--idle-timeout", "0s"])
            .into_config("d".into(), defaults())
            .unwrap_err();
        assert_eq!(error.to_string(), "--idle-timeout must be more than 0");
    }
}
