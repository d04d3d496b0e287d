//! Runs the operators over the log: one thread per partition, each reading its partition from
//! the committed offset, applying records, and checkpointing every N records or T milliseconds.
//!
//! Per partition:
//! ```text
//! load checkpoint ──(missing or damaged: reset, rebuild from offset 0)──┐
//!     │                                                               │
//!     └──► read records from next_offset ─► apply ─► checkpoint due? ─┴─► commit + publish
//! ```
//! A partition thread owns its state; nothing else writes it. It runs its own single-threaded
//! async runtime to wait on the log, so checkpoint syncs never block a server's executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore, LoadedPartition};
use crate::event::{DonationEvent, envelope};
use crate::log::{Log, LogError, LogRecord, Offset, PartitionId};
use crate::operators::dedupe::ResendCounts;
use crate::operators::event_time_windows::WindowHorizons;
use crate::operators::watermark::ALLOWED_LATENESS_MS_DEFAULT;
use crate::processor::partition_state::{ApplyError, RecordedEvents, SharedIndex};
use crate::processor::{PartitionState, StateChanges};
use crate::read_model::{PartitionUpdate, ReadModel};
use crate::support::backoff::Backoff;
use crate::support::clock::Clock;

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Commit a checkpoint at least this often while records are applied; bounds how stale the
    /// published totals can be.
    pub checkpoint_interval: Duration,
    /// …or after this many records, whichever comes first.
    pub checkpoint_records_max: u64,
    pub allowed_lateness_ms: i64,
    /// Records read from the log per call.
    pub read_batch_records: usize,
    /// How long minute and hour buckets are kept before only coarser ones hold their time.
    pub window_horizons: WindowHorizons,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            // 50 ms keeps totals fresh well under a second at about twenty small commits (one
            // append and one fdatasync each) a second per partition while records flow.
            checkpoint_interval: Duration::from_millis(50),
            checkpoint_records_max: 50_000,
            allowed_lateness_ms: ALLOWED_LATENESS_MS_DEFAULT,
            read_batch_records: 4096,
            window_horizons: WindowHorizons::DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(
        "record {offset} of partition {partition} is not a donation event this build can read: {reason}"
    )]
    UndecodableRecord {
        partition: PartitionId,
        offset: Offset,
        reason: String,
    },
    #[error("the log has {log} partitions but the state has {state}")]
    PartitionCountMismatch { log: u32, state: u32 },
    #[error(
        "partition {partition}'s checkpoint is at offset {checkpoint_offset} but the log ends at {log_end}: records the checkpoint counted are missing from the log"
    )]
    CheckpointBeyondLog {
        partition: PartitionId,
        checkpoint_offset: Offset,
        log_end: Offset,
    },
    #[error("could not start the runtime for partition {partition}: {source}")]
    Runtime {
        partition: PartitionId,
        source: std::io::Error,
    },
    #[error("partition {partition}'s thread panicked")]
    Panicked { partition: PartitionId },
}

/// Whether a run stops at the end of the log or keeps following it.
#[derive(Debug, Clone)]
pub enum RunMode {
    /// Apply everything the log holds now, checkpoint, return.
    CatchUp,
    /// Keep applying new records until `shutdown` turns true; then checkpoint and return.
    Follow { shutdown: watch::Receiver<bool> },
}

/// What one partition's run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRunSummary {
    pub partition: PartitionId,
    pub started_at_offset: Offset,
    pub next_offset: Offset,
    pub rebuilt: bool,
    pub last_checkpoint: Option<CheckpointMeta>,
}

/// Each partition's donation index, as the running partitions share them with readers.
#[derive(Debug)]
pub struct DonationIndexes {
    partitions: Vec<std::sync::RwLock<SharedIndex>>,
}

impl DonationIndexes {
    fn new(partition_count: u32) -> Self {
        Self {
            partitions: (0..partition_count).map(|_| Default::default()).collect(),
        }
    }

    fn install(&self, partition: PartitionId, index: SharedIndex) {
        *self.partitions[partition as usize]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = index;
    }

    /// The index of a partition (empty until the partition has been loaded).
    pub fn index(&self, partition: PartitionId) -> SharedIndex {
        Arc::clone(
            &self.partitions[partition as usize]
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The donation recorded for `payment_ref` in a partition this node runs, read back from
    /// `log`: the index gives a candidate offset (a fingerprint can match another payment), and
    /// the event there confirms it. `None` if nothing is recorded for it; a log that cannot be
    /// read is an error, never "not recorded".
    pub async fn recorded(
        &self,
        log: &dyn Log,
        payment_ref: &str,
    ) -> Result<Option<FoundDonation>, LookupError> {
        let partition = log.partition_for_key(payment_ref.as_bytes());
        let index = self.index(partition);
        let candidate = index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recorded_offset_candidate(payment_ref);
        let Some(offset) = candidate else {
            return Ok(None);
        };
        let records = log.read(partition, offset, 1).await?;
        let Some(record) = records.first() else {
            return Ok(None);
        };
        let event = envelope::decode(&record.value)?;
        if event.payment_ref != payment_ref {
            return Ok(None);
        }
        let resends = index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .resends(offset);
        Ok(Some(FoundDonation {
            partition,
            offset,
            append_time_ms: record.append_time_ms,
            event,
            resends,
        }))
    }
}

/// A recorded donation, as [`DonationIndexes::recorded`] found it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundDonation {
    pub partition: PartitionId,
    pub offset: Offset,
    /// When the log accepted it.
    pub append_time_ms: crate::support::clock::UnixMillis,
    pub event: DonationEvent,
    pub resends: ResendCounts,
}

/// Why a recorded donation could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
}

/// Takes every committed update a partition publishes, beside the local read model (the
/// results topic's publisher, so other nodes see them).
pub trait UpdateSink: Send + Sync + std::fmt::Debug {
    fn offer(&self, update: &PartitionUpdate);
}

/// The operators over a log, checkpointed into a store, publishing to a read model.
#[derive(Debug, Clone)]
pub struct Pipeline {
    log: Arc<dyn Log>,
    store: Arc<CheckpointStore>,
    read_model: Arc<ReadModel>,
    donation_indexes: Arc<DonationIndexes>,
    clock: Arc<dyn Clock>,
    config: PipelineConfig,
    sink: Option<Arc<dyn UpdateSink>>,
}

/// A partition's state as loaded, and whether a damaged checkpoint made it start over.
type LoadResult = Result<(PartitionState, bool), PipelineError>;

impl Pipeline {
    pub fn new(
        log: Arc<dyn Log>,
        store: Arc<CheckpointStore>,
        read_model: Arc<ReadModel>,
        clock: Arc<dyn Clock>,
        config: PipelineConfig,
    ) -> Result<Self, PipelineError> {
        if log.partition_count() != store.partition_count() {
            return Err(PipelineError::PartitionCountMismatch {
                log: log.partition_count(),
                state: store.partition_count(),
            });
        }
        let donation_indexes = Arc::new(DonationIndexes::new(log.partition_count()));
        Ok(Self {
            log,
            store,
            read_model,
            donation_indexes,
            clock,
            config,
            sink: None,
        })
    }

    /// Also offers every published update to `sink`.
    pub fn with_sink(mut self, sink: Arc<dyn UpdateSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Publishes a committed update to the read model and the sink.
    fn publish(&self, update: PartitionUpdate) {
        if let Some(sink) = &self.sink {
            sink.offer(&update);
        }
        self.read_model.publish(update);
    }

    pub fn store(&self) -> &Arc<CheckpointStore> {
        &self.store
    }

    pub fn donation_indexes(&self) -> &Arc<DonationIndexes> {
        &self.donation_indexes
    }

    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    pub fn read_model(&self) -> &Arc<ReadModel> {
        &self.read_model
    }

    /// Loads every partition's checkpoint and publishes it to the read model, rebuilding any
    /// partition whose checkpoint is damaged. Returns the states, ready to run.
    pub fn load(&self) -> Result<Vec<(PartitionState, bool)>, PipelineError> {
        let partitions: Vec<PartitionId> = (0..self.log.partition_count()).collect();
        self.load_partitions(&partitions)
    }

    /// [`Pipeline::load`] for some partitions only.
    pub fn load_partitions(
        &self,
        partitions: &[PartitionId],
    ) -> Result<Vec<(PartitionState, bool)>, PipelineError> {
        let loaders = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(partitions.len().max(1));
        // Loading is reading and hashing: the cores take the partitions one at a time, the next
        // free core the next partition, so one large journal does not hold up the rest.
        let next = AtomicUsize::new(0);
        let mut loaded: Vec<(usize, LoadResult)> = std::thread::scope(|scope| {
            let loaders: Vec<_> = (0..loaders)
                .map(|_| {
                    scope.spawn(|| {
                        let mut taken = Vec::new();
                        loop {
                            let at = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&partition) = partitions.get(at) else {
                                return taken;
                            };
                            taken.push((at, self.load_partition(partition)));
                        }
                    })
                })
                .collect();
            loaders
                .into_iter()
                .flat_map(|loader| {
                    loader
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        loaded.sort_unstable_by_key(|&(at, _)| at);
        loaded.into_iter().map(|(_, result)| result).collect()
    }

    fn load_partition(
        &self,
        partition: PartitionId,
    ) -> Result<(PartitionState, bool), PipelineError> {
        match self.store.load(partition) {
            Ok(LoadedPartition::Restored {
                mut state,
                meta,
                damage,
            }) => {
                state.set_window_horizons(self.config.window_horizons);
                if let Some(damage) = &damage {
                    warn_damage(partition, Some(meta.scalars.next_offset), damage);
                }
                // The index first: a reader that sees the published offsets must find every
                // donation recorded below them.
                self.donation_indexes
                    .install(partition, state.shared_index());
                self.publish(PartitionUpdate::whole(&state, meta.committed_at_ms));
                Ok((*state, damage.as_ref().is_some_and(|d| !d.torn)))
            }
            Ok(LoadedPartition::Empty { damage }) => {
                if let Some(damage) = &damage {
                    warn_damage(partition, None, damage);
                }
                let state = self.empty_state(partition);
                self.donation_indexes
                    .install(partition, state.shared_index());
                Ok((state, damage.as_ref().is_some_and(|d| !d.torn)))
            }
            Err(CheckpointError::Corrupt { what, reason }) => {
                tracing::warn!(
                    partition,
                    "rebuilding partition {partition} from the log: {what} is damaged: {reason}"
                );
                self.store.reset(partition)?;
                self.read_model.reset_partition(partition);
                let state = self.empty_state(partition);
                self.donation_indexes
                    .install(partition, state.shared_index());
                Ok((state, true))
            }
            Err(other) => Err(other.into()),
        }
    }

    fn empty_state(&self, partition: PartitionId) -> PartitionState {
        PartitionState::new(
            partition,
            self.config.allowed_lateness_ms,
            self.config.window_horizons,
        )
    }

    /// Loads every partition and runs them all, one thread each, until done.
    pub fn run(&self, mode: RunMode) -> Result<Vec<PartitionRunSummary>, PipelineError> {
        let partitions: Vec<PartitionId> = (0..self.log.partition_count()).collect();
        self.run_partitions(mode, &partitions)
    }

    /// Loads and runs the given partitions only (the ones this node owns), one thread each.
    pub fn run_partitions(
        &self,
        mode: RunMode,
        partitions: &[PartitionId],
    ) -> Result<Vec<PartitionRunSummary>, PipelineError> {
        let states = self.load_partitions(partitions)?;
        let handles: Vec<_> = states
            .into_iter()
            .map(|(state, rebuilt)| {
                let pipeline = self.clone();
                let mode = mode.clone();
                let partition = state.partition();
                std::thread::Builder::new()
                    .name(format!("tally-pipeline-p{partition}"))
                    .spawn(move || pipeline.run_partition(state, rebuilt, mode))
                    .map_err(|source| PipelineError::Runtime { partition, source })
            })
            .collect::<Result<_, _>>()?;
        handles
            .into_iter()
            .zip(partitions)
            .map(|(handle, &partition)| {
                handle
                    .join()
                    .unwrap_or(Err(PipelineError::Panicked { partition }))
            })
            .collect()
    }

    /// Runs one partition on the calling thread until the mode says stop: read, apply,
    /// checkpoint when due; following, a log or disk that fails for a while is waited out.
    pub fn run_partition(
        &self,
        state: PartitionState,
        rebuilt: bool,
        mode: RunMode,
    ) -> Result<PartitionRunSummary, PipelineError> {
        let partition = state.partition();
        self.donation_indexes
            .install(partition, state.shared_index());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PipelineError::Runtime { partition, source })?;
        let log_end = runtime.block_on(self.log.end_offset(partition))?;
        if state.next_offset() > log_end {
            return Err(PipelineError::CheckpointBeyondLog {
                partition,
                checkpoint_offset: state.next_offset(),
                log_end,
            });
        }
        let mut run = PartitionRun::new(self, &runtime, state, rebuilt, mode);
        while !run.shutdown_asked() {
            // A checkpoint failed (a full disk): nothing more is applied until it is committed,
            // so what it owes the journal stays one checkpoint's worth.
            if run.unsaved.is_some() && run.following() {
                run.commit()?;
                continue;
            }
            let Some(records) = run.read()? else {
                continue; // the log did not answer; waited, and reading again from the same offset
            };
            if records.is_empty() {
                if !run.following() {
                    break; // caught up: the checkpoint after the loop commits what was applied
                }
                run.idle()?;
                continue;
            }
            if run.apply(records)? && run.commit_due() {
                run.commit()?;
            }
        }
        run.finish()
    }

    /// Rebuilds a partition's state from the log alone, in memory, applying records
    /// `0..until`; its digest is up to date on return. `checkpoint verify` compares it with the
    /// checkpoint's.
    pub fn rebuild_in_memory(
        &self,
        partition: PartitionId,
        until: Offset,
        allowed_lateness_ms: i64,
    ) -> Result<PartitionState, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PipelineError::Runtime { partition, source })?;
        let lookup = LogLookup {
            log: self.log.as_ref(),
            partition,
            runtime: &runtime,
        };
        let mut state =
            PartitionState::new(partition, allowed_lateness_ms, self.config.window_horizons);
        while state.next_offset() < until {
            let want = ((until - state.next_offset()) as usize).min(self.config.read_batch_records);
            let records = runtime.block_on(self.log.read(partition, state.next_offset(), want))?;
            if records.is_empty() {
                let log_end = runtime.block_on(self.log.end_offset(partition))?;
                return Err(PipelineError::CheckpointBeyondLog {
                    partition,
                    checkpoint_offset: until,
                    log_end,
                });
            }
            for record in records {
                let event = decode(partition, record.offset, &record.value)?;
                state.apply(record.offset, event, &lookup)?;
            }
            // Keep the pending change lists short; only the digest matters here.
            state.take_changes();
        }
        Ok(state)
    }

    /// Commits the state's changes (with any a failed checkpoint left in `unsaved`) and
    /// publishes them. On failure the changes stay in `unsaved` for the next checkpoint.
    fn checkpoint(
        &self,
        state: &mut PartitionState,
        unsaved: &mut Option<StateChanges>,
    ) -> Result<CheckpointMeta, PipelineError> {
        let started = Instant::now();
        let mut changes: StateChanges = state.take_changes();
        if let Some(earlier) = unsaved.take() {
            changes = earlier.followed_by(changes);
        }
        let meta = match self.store.commit(state, &changes, self.clock.now_ms()) {
            Ok(meta) => meta,
            Err(error) => {
                *unsaved = Some(changes);
                return Err(error.into());
            }
        };
        let buckets = state.changed_buckets(&changes);
        self.publish(PartitionUpdate {
            partition: state.partition(),
            next_offset: state.next_offset(),
            committed_at_ms: meta.committed_at_ms,
            checkpoint_duration_us: started.elapsed().as_micros() as u64,
            watermark_ms: state.watermark().current(),
            counters: state.counters(),
            totals: changes.totals,
            buckets,
            rolled_up: changes.windows.rolled_up,
        });
        Ok(meta)
    }
}

impl Pipeline {
    /// A following partition's checkpoint: a failure of the state's storage (a full disk, a
    /// failed sync) is waited out — the partition keeps its state and pending changes, pauses,
    /// and commits again later — instead of stopping the partition. `None` when it waited.
    fn checkpoint_or_wait(
        &self,
        state: &mut PartitionState,
        unsaved: &mut Option<StateChanges>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Option<CheckpointMeta>, PipelineError> {
        match self.checkpoint(state, unsaved) {
            Ok(meta) => Ok(Some(meta)),
            Err(PipelineError::Checkpoint(error @ CheckpointError::Io { .. })) => {
                let partition = state.partition();
                tracing::warn!(partition, %error, "checkpoint failed; committing again in {:?}", backoff.next());
                runtime.block_on(backoff.pause(shutdown));
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }
}

/// One partition's run: its state, and what a checkpoint resets (the records applied since the
/// last commit, when it was, the pause after a failure). Every commit goes through
/// [`PartitionRun::commit`], or [`PartitionRun::finish`] at the end.
struct PartitionRun<'a> {
    pipeline: &'a Pipeline,
    runtime: &'a tokio::runtime::Runtime,
    state: PartitionState,
    summary: PartitionRunSummary,
    /// Following: the signal to stop. Catching up: `None`.
    shutdown: Option<watch::Receiver<bool>>,
    applied_since_commit: u64,
    committed_at: Instant,
    /// What a checkpoint that failed to commit (a full disk) still owes the journal.
    unsaved: Option<StateChanges>,
    /// A following partition whose log or disk fails tries again after a doubling pause.
    backoff: Backoff,
}

impl<'a> PartitionRun<'a> {
    fn new(
        pipeline: &'a Pipeline,
        runtime: &'a tokio::runtime::Runtime,
        state: PartitionState,
        rebuilt: bool,
        mode: RunMode,
    ) -> Self {
        let summary = PartitionRunSummary {
            partition: state.partition(),
            started_at_offset: state.next_offset(),
            next_offset: state.next_offset(),
            rebuilt,
            last_checkpoint: None,
        };
        let shutdown = match mode {
            RunMode::CatchUp => None,
            RunMode::Follow { shutdown } => Some(shutdown),
        };
        Self {
            pipeline,
            runtime,
            state,
            summary,
            shutdown,
            applied_since_commit: 0,
            committed_at: Instant::now(),
            unsaved: None,
            backoff: Backoff::for_log(),
        }
    }

    fn following(&self) -> bool {
        self.shutdown.is_some()
    }

    fn shutdown_asked(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow())
    }

    /// The next records from the partition's next offset. Following, a log that does not
    /// answer (a Fluvio cluster away) is waited for: `None`, nothing was applied, and the next
    /// read starts at the same offset.
    fn read(&mut self) -> Result<Option<Vec<LogRecord>>, PipelineError> {
        let partition = self.state.partition();
        let read = self.runtime.block_on(self.pipeline.log.read(
            partition,
            self.state.next_offset(),
            self.pipeline.config.read_batch_records,
        ));
        match (read, self.shutdown.as_mut()) {
            (Ok(records), _) => {
                self.backoff.reset();
                Ok(Some(records))
            }
            (Err(error), Some(shutdown)) if error.is_retryable() => {
                tracing::warn!(partition, %error, "the log is unavailable; reading again in {:?}", self.backoff.next());
                self.runtime.block_on(self.backoff.pause(shutdown));
                Ok(None)
            }
            (Err(error), _) => Err(error.into()),
        }
    }

    /// Applies records in order; false if it stopped to wait for the log.
    fn apply(&mut self, records: Vec<LogRecord>) -> Result<bool, PipelineError> {
        let partition = self.state.partition();
        let lookup = LogLookup {
            log: self.pipeline.log.as_ref(),
            partition,
            runtime: self.runtime,
        };
        for record in records {
            let event = decode(partition, record.offset, &record.value)?;
            match (
                self.state.apply(record.offset, event, &lookup),
                &mut self.shutdown,
            ) {
                (Ok(_), _) => self.applied_since_commit += 1,
                // Following, a recorded event that cannot be read back because the log is away
                // is waited for like a failed read: the record changed nothing and is applied
                // again from the same offset.
                (Err(error), Some(shutdown)) if error.is_retryable() => {
                    tracing::warn!(partition, %error, "the log is unavailable; applying again in {:?}", self.backoff.next());
                    self.runtime.block_on(self.backoff.pause(shutdown));
                    return Ok(false);
                }
                (Err(error), _) => return Err(error.into()),
            }
        }
        Ok(true)
    }

    /// After applying: enough records, or the interval is over.
    fn commit_due(&self) -> bool {
        let config = &self.pipeline.config;
        self.applied_since_commit >= config.checkpoint_records_max
            || self.committed_at.elapsed() >= config.checkpoint_interval
    }

    /// Caught up while following: commits once the interval is over, not at every wake-up
    /// (each commit is an fdatasync; under steady load the partition is caught up after almost
    /// every read); until then waits for records.
    fn idle(&mut self) -> Result<(), PipelineError> {
        let commit_at = (self.applied_since_commit > 0)
            .then(|| self.committed_at + self.pipeline.config.checkpoint_interval);
        if commit_at.is_some_and(|at| Instant::now() >= at) {
            return self.commit();
        }
        let shutdown = self
            .shutdown
            .as_mut()
            .expect("only a following partition idles");
        self.runtime.block_on(wait_for_records(
            self.pipeline.log.as_ref(),
            self.state.partition(),
            self.state.next_offset(),
            shutdown,
            commit_at,
        ));
        Ok(())
    }

    /// Commits a checkpoint and starts counting again. Following, a failure of the state's
    /// storage is waited out ([`Pipeline::checkpoint_or_wait`]) and nothing is reset.
    fn commit(&mut self) -> Result<(), PipelineError> {
        let committed = match self.shutdown.as_mut() {
            Some(shutdown) => self.pipeline.checkpoint_or_wait(
                &mut self.state,
                &mut self.unsaved,
                shutdown,
                &mut self.backoff,
                self.runtime,
            )?,
            None => Some(
                self.pipeline
                    .checkpoint(&mut self.state, &mut self.unsaved)?,
            ),
        };
        if let Some(meta) = committed {
            self.summary.last_checkpoint = Some(meta);
            self.applied_since_commit = 0;
            self.committed_at = Instant::now();
            self.backoff.reset();
        }
        Ok(())
    }

    /// The last checkpoint, of what was applied since the one before (or the first of a run
    /// that committed none); a failure here is the run's error.
    fn finish(mut self) -> Result<PartitionRunSummary, PipelineError> {
        if self.applied_since_commit > 0 || self.summary.last_checkpoint.is_none() {
            let meta = self
                .pipeline
                .checkpoint(&mut self.state, &mut self.unsaved)?;
            self.summary.last_checkpoint = Some(meta);
        }
        self.summary.next_offset = self.state.next_offset();
        Ok(self.summary)
    }
}

/// Says what loading a partition's checkpoint journal cut off, and where processing resumes.
fn warn_damage(
    partition: PartitionId,
    resume_offset: Option<Offset>,
    damage: &crate::checkpoint::Damage,
) {
    let from = resume_offset.map_or_else(
        || "offset 0".to_owned(),
        |offset| format!("offset {offset}"),
    );
    if damage.torn {
        tracing::warn!(
            partition,
            "partition {partition}: dropped an incomplete last checkpoint at byte {} ({}); rebuilding from the log from {from}",
            damage.position,
            damage.reason
        );
    } else {
        tracing::warn!(
            partition,
            "partition {partition}: checkpoint journal damaged at byte {} ({}); later checkpoints cut off; rebuilding from the log from {from}",
            damage.position,
            damage.reason
        );
    }
}

/// Waits until the record at `offset` exists, shutdown is asked for, or `until` comes.
async fn wait_for_records(
    log: &dyn Log,
    partition: PartitionId,
    offset: Offset,
    shutdown: &mut watch::Receiver<bool>,
    until: Option<Instant>,
) {
    let deadline = async {
        match until {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = log.wait_for_offset(partition, offset) => {}
        _ = shutdown.changed() => {}
        _ = deadline => {}
    }
}

fn decode(
    partition: PartitionId,
    offset: Offset,
    value: &[u8],
) -> Result<DonationEvent, PipelineError> {
    envelope::decode(value).map_err(|e| PipelineError::UndecodableRecord {
        partition,
        offset,
        reason: e.to_string(),
    })
}

/// Reads recorded events back from the log, for dedupe's exact comparisons.
struct LogLookup<'a> {
    log: &'a dyn Log,
    partition: PartitionId,
    runtime: &'a tokio::runtime::Runtime,
}

impl RecordedEvents for LogLookup<'_> {
    fn recorded_event(&self, offset: Offset) -> Result<DonationEvent, ApplyError> {
        let unavailable = |reason: String, retryable: bool| ApplyError::RecordedEventUnavailable {
            partition: self.partition,
            offset,
            reason,
            retryable,
        };
        let records = self
            .runtime
            .block_on(self.log.read(self.partition, offset, 1))
            .map_err(|e| unavailable(e.to_string(), e.is_retryable()))?;
        let record = records
            .first()
            .ok_or_else(|| unavailable("no such record".into(), false))?;
        envelope::decode(&record.value).map_err(|e| unavailable(e.to_string(), false))
    }
}
