//! One module per `tally` subcommand.

pub mod audit;
pub mod campaign;
pub mod checkpoint;
pub mod export;
pub mod import;
pub mod log;
pub mod log_repair;
pub mod process;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tally::data_dir;
pub use tally::data_dir::{log_binding, log_dir, open_existing_log, open_log, witnesses};
use tally_pipeline::checkpoint::{
    COMPACTION_FLOOR_BYTES_DEFAULT, CheckpointStore, LoadedPartition,
};
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::log::Log;
use tally_pipeline::operators::event_time_windows::{DAY_MS, HOUR_MS, WindowHorizons};
use tally_pipeline::read_model::{PartitionUpdate, ReadModel};
use tally_pipeline::runner::{Pipeline, PipelineConfig};

/// How the state keeps its windows and journals: the same for every command (set them in the
/// environment so `serve`, `process` and `checkpoint verify` agree).
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Minute buckets older than this behind the watermark are rolled up into hours.
    #[arg(long, global = true, env = "TALLY_MINUTE_HORIZON", default_value = "14days",
          value_parser = humantime::parse_duration)]
    pub minute_horizon: Duration,
    /// Hour buckets older than this behind the watermark are rolled up into days; at least the
    /// minute horizon.
    #[arg(long, global = true, env = "TALLY_HOUR_HORIZON", default_value = "396days",
          value_parser = humantime::parse_duration)]
    pub hour_horizon: Duration,
    /// A partition's checkpoint journal is compacted once its checkpoints since the last
    /// snapshot outweigh the snapshot and are at least this many bytes.
    #[arg(long, global = true, env = "TALLY_COMPACTION_FLOOR_BYTES",
          default_value_t = COMPACTION_FLOOR_BYTES_DEFAULT)]
    pub compaction_floor_bytes: u64,
}

/// The state settings of this process, checked.
#[derive(Debug, Clone, Copy)]
pub struct StateSettings {
    pub horizons: WindowHorizons,
    pub compaction_floor_bytes: u64,
}

static STATE_SETTINGS: OnceLock<StateSettings> = OnceLock::new();

/// Checks the state settings and makes them the ones every store and pipeline of this process
/// opens with.
pub fn use_state_settings(args: &StateArgs) -> anyhow::Result<()> {
    let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    let horizons = WindowHorizons {
        minutes_ms: millis(args.minute_horizon),
        hours_ms: millis(args.hour_horizon),
    };
    anyhow::ensure!(
        horizons.minutes_ms >= HOUR_MS,
        "--minute-horizon must be at least an hour"
    );
    anyhow::ensure!(
        horizons.hours_ms >= horizons.minutes_ms.max(DAY_MS),
        "--hour-horizon must be at least a day and at least --minute-horizon"
    );
    let _ = STATE_SETTINGS.set(StateSettings {
        horizons,
        compaction_floor_bytes: args.compaction_floor_bytes,
    });
    Ok(())
}

/// The settings [`use_state_settings`] made this process's, or the defaults.
pub fn state_settings() -> StateSettings {
    *STATE_SETTINGS.get_or_init(|| StateSettings {
        horizons: WindowHorizons::DEFAULT,
        compaction_floor_bytes: COMPACTION_FLOOR_BYTES_DEFAULT,
    })
}

/// The pipeline configuration with this process's state settings.
pub fn pipeline_config(config: PipelineConfig) -> PipelineConfig {
    PipelineConfig {
        window_horizons: state_settings().horizons,
        ..config
    }
}

/// Opens the checkpoint store for a log's partitions with this process's compaction floor.
pub fn open_store(data_dir: &Path, partition_count: u32) -> anyhow::Result<CheckpointStore> {
    data_dir::open_store(
        data_dir,
        partition_count,
        state_settings().compaction_floor_bytes,
    )
}

/// The log, the state and the pipeline over them, for commands that process.
pub fn open_pipeline(data_dir: &Path, config: PipelineConfig) -> anyhow::Result<Pipeline> {
    let log: Arc<dyn Log> = Arc::new(open_existing_log(data_dir)?);
    let store = Arc::new(open_store(data_dir, log.partition_count())?);
    let read_model = Arc::new(ReadModel::new(log.partition_count()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Pipeline::new(
        log,
        store,
        read_model,
        clock,
        pipeline_config(config),
    )?)
}

/// The committed state as queries see it, without processing anything. A damaged partition is
/// an error here: `tally process` rebuilds it.
pub fn load_read_model(store: &CheckpointStore) -> anyhow::Result<ReadModel> {
    let read_model = ReadModel::new(store.partition_count());
    for partition in 0..store.partition_count() {
        let loaded = store.load(partition).with_context(|| {
            format!(
                "the state of partition {partition} cannot be read (`tally process` rebuilds it)"
            )
        })?;
        if let LoadedPartition::Restored { state, meta, .. } = loaded {
            read_model.publish(PartitionUpdate::whole(&state, meta.committed_at_ms));
        }
    }
    Ok(read_model)
}

/// Formats Unix milliseconds as RFC 3339 for people.
pub fn rfc3339(unix_ms: i64) -> String {
    tally_pipeline::event::EventTime(unix_ms)
        .to_rfc3339()
        .unwrap_or_else(|_| unix_ms.to_string())
}

/// Where an operator command acts: a running server, or the data directory itself.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// A running `tally serve` (e.g. http://127.0.0.1:8080); without it, the data directory is
    /// used directly (no server may be running on it).
    #[arg(long, env = "TALLY_SERVER")]
    pub server: Option<String>,
    /// The server's admin token; default: the data directory's `admin-token` file.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Sends an admin request to `target.server` and returns its JSON answer; an error answer
/// becomes a one-line error.
pub fn server_request(
    data_dir: &Path,
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let server = target.server.as_deref().context("no --server given")?;
    let token = match &target.admin_token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(data_dir.join("admin-token"))
            .context("no --admin-token and no admin-token file in the data directory")?
            .trim()
            .to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let url = format!("{}{path}", server.trim_end_matches('/'));
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .json()
            .await
            .context("the server's answer is not JSON")?;
        if !status.is_success() {
            let message = answer["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            anyhow::bail!(
                "{status}: {} ({message})",
                answer["error"]["code"].as_str().unwrap_or("")
            );
        }
        Ok(answer)
    })
}
