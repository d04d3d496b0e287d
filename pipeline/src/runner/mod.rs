//! Runs the operators over the log: a fixed pool of workers (one per core by default), each
//! running several partitions — reading each from its committed offset, applying records — and
//! committing the checkpoints that are due (every N records or T milliseconds of a partition) in
//! one round, with one sync for all of them (see `checkpoint::rounds`).
//!
//! Per partition, on its worker:
//! ```text
//! load checkpoint ──(missing or damaged: reset, rebuild from offset 0)──┐
//!     │                                                               │
//!     └──► read records from next_offset ─► apply ─► checkpoint due? ─┴─► the worker's round:
//!                                                                         commit + publish
//! ```
//! A partition is run by one worker; nothing else writes its state. A worker runs its own
//! single-threaded async runtime to wait on the log, so checkpoint syncs never block a server's
//! executor, and waits for records on all of its partitions at once when they are caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::{FutureExt, select_all};
use tokio::sync::watch;

use crate::checkpoint::{
    CheckpointCommitter, CheckpointError, CheckpointMeta, CheckpointStore, LoadedPartition,
    RoundCheckpoint,
};
use crate::event::{DonationEvent, LogEvent, envelope};
use crate::log::{Log, LogError, LogRecord, Offset, PartitionId};
use crate::operators::dedupe::ResendCounts;
use crate::operators::event_time_windows::WindowHorizons;
use crate::operators::retractions::RetractionLedger;
use crate::operators::watermark::ALLOWED_LATENESS_MS_DEFAULT;
use crate::processor::partition_state::{
    ApplyError, RecordedEvents, SharedIndex, SharedRetractions,
};
use crate::processor::{PartitionState, StateChanges};
use crate::read_model::{PartitionUpdate, ReadModel};
use crate::support::backoff::Backoff;
use crate::support::clock::Clock;

mod pool;

use pool::Command;
pub use pool::RunningPool;

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Commit a checkpoint at least this often while records are applied; bounds how stale the
    /// published totals can be while a partition works through a backlog.
    pub checkpoint_interval: Duration,
    /// Once a partition has caught up with the log, commit once this long has passed since its
    /// last checkpoint: what a 202 waits for before the totals show it, under steady load.
    pub caught_up_checkpoint_interval: Duration,
    /// …or after this many records, whichever comes first.
    pub checkpoint_records_max: u64,
    pub allowed_lateness_ms: i64,
    /// Records read from the log per call.
    pub read_batch_records: usize,
    /// How long minute and hour buckets are kept before only coarser ones hold their time.
    pub window_horizons: WindowHorizons,
    /// Worker threads running the partitions; 0 means one per core.
    pub workers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            // Working through a backlog, checkpoints are the cost that does not apply records:
            // every 50 ms keeps them a few percent of it.
            checkpoint_interval: Duration::from_millis(50),
            // Caught up, a 202 is in the totals within about this long (plus the round's sync);
            // each worker then commits at most this often, one sync for all of its partitions.
            caught_up_checkpoint_interval: Duration::from_millis(10),
            checkpoint_records_max: 50_000,
            allowed_lateness_ms: ALLOWED_LATENESS_MS_DEFAULT,
            read_batch_records: 4096,
            window_horizons: WindowHorizons::DEFAULT,
            workers: 0,
        }
    }
}

impl PipelineConfig {
    /// The workers to run `partitions` partitions on.
    pub fn worker_count(&self, partitions: usize) -> usize {
        let workers = match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        workers.min(partitions).max(1)
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
    #[error("the worker running partition {partition} panicked")]
    Panicked { partition: PartitionId },
    #[error("partition {partition} is not running here")]
    NotRunning { partition: PartitionId },
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
    retractions: Vec<std::sync::RwLock<SharedRetractions>>,
}

impl DonationIndexes {
    fn new(partition_count: u32) -> Self {
        Self {
            partitions: (0..partition_count).map(|_| Default::default()).collect(),
            retractions: (0..partition_count)
                .map(|partition| {
                    std::sync::RwLock::new(Arc::new(std::sync::RwLock::new(RetractionLedger::new(
                        partition,
                    ))))
                })
                .collect(),
        }
    }

    fn install(&self, partition: PartitionId, state: &PartitionState) {
        *self.partitions[partition as usize]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state.shared_index();
        *self.retractions[partition as usize]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state.shared_retractions();
    }

    /// The refunds and chargebacks of a partition (empty until the partition has been loaded).
    pub fn retractions(&self, partition: PartitionId) -> SharedRetractions {
        Arc::clone(
            &self.retractions[partition as usize]
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
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
                self.donation_indexes.install(partition, &state);
                self.publish(PartitionUpdate::whole(&state, meta.committed_at_ms));
                Ok((*state, damage.as_ref().is_some_and(|d| !d.torn)))
            }
            Ok(LoadedPartition::Empty { damage }) => {
                if let Some(damage) = &damage {
                    warn_damage(partition, None, damage);
                }
                let state = self.empty_state(partition);
                self.donation_indexes.install(partition, &state);
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
                self.donation_indexes.install(partition, &state);
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

    /// Loads every partition and runs them all on the worker pool, until done.
    pub fn run(&self, mode: RunMode) -> Result<Vec<PartitionRunSummary>, PipelineError> {
        let partitions: Vec<PartitionId> = (0..self.log.partition_count()).collect();
        self.run_partitions(mode, &partitions)
    }

    /// Loads and runs the given partitions only (the ones this node owns) on the worker pool:
    /// partition `i` of the list on worker `i mod workers`.
    pub fn run_partitions(
        &self,
        mode: RunMode,
        partitions: &[PartitionId],
    ) -> Result<Vec<PartitionRunSummary>, PipelineError> {
        let states = self.load_partitions(partitions)?;
        let workers = self.config.worker_count(states.len());
        let mut shares: Vec<Vec<(PartitionState, bool)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for (at, loaded) in states.into_iter().enumerate() {
            shares[at % workers].push(loaded);
        }
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(worker, share)| {
                let pipeline = self.clone();
                let mode = mode.clone();
                let first = share.first().map_or(0, |(state, _)| state.partition());
                let owned: Vec<PartitionId> = share.iter().map(|(s, _)| s.partition()).collect();
                std::thread::Builder::new()
                    .name(format!("tally-pipeline-w{worker}"))
                    .spawn(move || pipeline.run_worker(share, mode, None))
                    .map(|handle| (handle, owned))
                    .map_err(|source| PipelineError::Runtime {
                        partition: first,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut results: Vec<(PartitionId, Result<PartitionRunSummary, PipelineError>)> =
            Vec::with_capacity(partitions.len());
        for (handle, owned) in handles {
            match handle.join() {
                Ok(worker_results) => results.extend(worker_results),
                Err(_) => results.extend(
                    owned
                        .into_iter()
                        .map(|partition| (partition, Err(PipelineError::Panicked { partition }))),
                ),
            }
        }
        let place = |partition: PartitionId| partitions.iter().position(|&p| p == partition);
        results.sort_by_key(|(partition, _)| place(*partition));
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Runs one partition on the calling thread until the mode says stop (a worker of one).
    pub fn run_partition(
        &self,
        state: PartitionState,
        rebuilt: bool,
        mode: RunMode,
    ) -> Result<PartitionRunSummary, PipelineError> {
        let partition = state.partition();
        self.run_worker(vec![(state, rebuilt)], mode, None)
            .pop()
            .map_or(Err(PipelineError::Panicked { partition }), |(_, result)| {
                result
            })
    }

    /// Runs a worker's partitions on the calling thread until the mode says stop: read and
    /// apply each, commit the checkpoints due in one round; following, a log or disk that fails
    /// for a while is waited out, and a worker whose partitions are all caught up waits for
    /// records on all of them at once. One partition's error ends that partition only.
    fn run_worker(
        &self,
        share: Vec<(PartitionState, bool)>,
        mode: RunMode,
        commands: Option<tokio::sync::mpsc::UnboundedReceiver<Command>>,
    ) -> Vec<(PartitionId, Result<PartitionRunSummary, PipelineError>)> {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(source) => {
                let reason = source.to_string();
                return share
                    .into_iter()
                    .map(|(state, _)| {
                        let partition = state.partition();
                        let source = std::io::Error::other(reason.clone());
                        (partition, Err(PipelineError::Runtime { partition, source }))
                    })
                    .collect();
            }
        };
        let mut worker = Worker {
            pipeline: self,
            runtime: &runtime,
            committer: self.store.committer(),
            runs: Vec::new(),
            ended: Vec::new(),
            shutdown: match &mode {
                RunMode::CatchUp => None,
                RunMode::Follow { shutdown } => Some(shutdown.clone()),
            },
            backoff: Backoff::for_log(),
            commands,
            told: Vec::new(),
        };
        for (state, rebuilt) in share {
            worker.start(state, rebuilt, &mode);
        }
        worker.run();
        worker.finish()
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
                state.apply_event(record.offset, event, &lookup)?;
            }
            // Keep the pending change lists short; only the digest matters here.
            state.take_changes();
        }
        Ok(state)
    }

    /// Commits the checkpoints of `runs` in one round (each with what an earlier failed round
    /// left in its `unsaved`) and publishes them. On failure every run keeps its changes in
    /// `unsaved` for the next round.
    fn checkpoint_round(
        &self,
        committer: &mut CheckpointCommitter,
        runs: &mut [&mut PartitionRun<'_>],
    ) -> Result<(), CheckpointError> {
        let started = Instant::now();
        let changes: Vec<StateChanges> = runs
            .iter_mut()
            .map(|run| {
                let changes = run.state.take_changes();
                match run.unsaved.take() {
                    Some(earlier) => earlier.followed_by(changes),
                    None => changes,
                }
            })
            .collect();
        let checkpoints: Vec<RoundCheckpoint<'_>> = runs
            .iter()
            .zip(&changes)
            .map(|(run, changes)| RoundCheckpoint {
                state: &run.state,
                changes,
            })
            .collect();
        let committed = self
            .store
            .commit_round(committer, &checkpoints, self.clock.now_ms());
        drop(checkpoints);
        let metas = match committed {
            Ok(metas) => metas,
            Err(error) => {
                for (run, changes) in runs.iter_mut().zip(changes) {
                    run.unsaved = Some(changes);
                }
                return Err(error);
            }
        };
        let checkpoint_duration_us = started.elapsed().as_micros() as u64;
        for ((run, changes), meta) in runs.iter_mut().zip(changes).zip(metas) {
            let state = &run.state;
            let buckets = state.changed_buckets(&changes);
            self.publish(PartitionUpdate {
                partition: state.partition(),
                next_offset: state.next_offset(),
                committed_at_ms: meta.committed_at_ms,
                checkpoint_duration_us,
                watermark_ms: state.watermark().current(),
                counters: state.counters(),
                totals: changes.totals,
                buckets,
                rolled_up: changes.windows.rolled_up,
                retractions: changes.shown_retractions.totals,
                refund_buckets: changes.shown_retractions.buckets,
                retraction_counters: state.retractions().counters(),
            });
            run.committed(meta);
        }
        Ok(())
    }
}

/// A worker: the partitions it runs, the committer of their checkpoints, and how it waits.
struct Worker<'a> {
    pipeline: &'a Pipeline,
    runtime: &'a tokio::runtime::Runtime,
    committer: CheckpointCommitter,
    runs: Vec<PartitionRun<'a>>,
    /// The partitions that ended (with an error), with how.
    ended: Vec<(PartitionId, Result<PartitionRunSummary, PipelineError>)>,
    /// Following: the signal to stop. Catching up: `None`.
    shutdown: Option<watch::Receiver<bool>>,
    /// A failing log or disk is waited out with a doubling pause.
    backoff: Backoff,
    /// A worker of a [`RunningPool`]: what it is told to take on or give up.
    commands: Option<tokio::sync::mpsc::UnboundedReceiver<Command>>,
    /// Commands received while waiting, obeyed at the start of the next pass.
    told: Vec<Command>,
}

impl<'a> Worker<'a> {
    /// Takes a loaded partition on: its index installed, its checkpoint checked against the log.
    fn start(&mut self, state: PartitionState, rebuilt: bool, mode: &RunMode) {
        let pipeline = self.pipeline;
        let partition = state.partition();
        pipeline.donation_indexes.install(partition, &state);
        let log_end = match self.runtime.block_on(pipeline.log.end_offset(partition)) {
            Ok(end) => end,
            Err(error) => {
                self.ended.push((partition, Err(error.into())));
                return;
            }
        };
        if state.next_offset() > log_end {
            self.ended.push((
                partition,
                Err(PipelineError::CheckpointBeyondLog {
                    partition,
                    checkpoint_offset: state.next_offset(),
                    log_end,
                }),
            ));
            return;
        }
        self.runs.push(PartitionRun::new(
            pipeline,
            self.runtime,
            state,
            rebuilt,
            mode.clone(),
        ));
    }

    fn following(&self) -> bool {
        self.shutdown.is_some()
    }

    fn shutdown_asked(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Passes over the partitions until the mode says stop: each reads and applies one batch,
    /// then the checkpoints due are committed in one round.
    fn run(&mut self) {
        while !self.shutdown_asked() {
            self.obey();
            if self.runs.is_empty() {
                if self.wait_for_command() {
                    continue;
                }
                break;
            }
            let mut applied = false;
            let mut at = 0;
            let following = self.following();
            while at < self.runs.len() {
                match self.runs[at].turn(following) {
                    Ok(step) => {
                        applied |= step == Step::Applied;
                        at += 1;
                    }
                    Err(error) => {
                        let run = self.runs.remove(at);
                        self.ended.push((run.state.partition(), Err(error)));
                    }
                }
            }
            let due = self.due_for_round();
            self.commit(&due);
            if !self.following() {
                if self.runs.iter().all(|run| run.caught_up) {
                    break; // the round in `finish` commits what was applied since
                }
                continue;
            }
            if !applied {
                self.wait_for_records();
            }
        }
    }

    /// The runs whose checkpoints go into this round: none while no run's checkpoint is due;
    /// once one is, every run with changes to commit rides along, so a worker's partitions share
    /// one round (one sync) per interval instead of each paying its own at its own time.
    fn due_for_round(&self) -> Vec<usize> {
        let following = self.following();
        if !self.runs.iter().any(|run| run.commit_due(following)) {
            return Vec::new();
        }
        (0..self.runs.len())
            .filter(|&at| {
                let run = &self.runs[at];
                run.commit_due(following) || run.applied_since_commit > 0
            })
            .collect()
    }

    /// Commits the checkpoints of the runs at `due` in one round. Following, a failure of the
    /// state's storage (a full disk, a failed sync) is waited out: the runs keep their state and
    /// pending changes and the worker pauses; catching up, it ends those runs with the error.
    fn commit(&mut self, due: &[usize]) {
        if due.is_empty() {
            return;
        }
        let mut runs: Vec<&mut PartitionRun<'a>> = self
            .runs
            .iter_mut()
            .enumerate()
            .filter(|(at, _)| due.contains(at))
            .map(|(_, run)| run)
            .collect();
        let result = self
            .pipeline
            .checkpoint_round(&mut self.committer, &mut runs);
        drop(runs);
        match (result, self.shutdown.as_mut()) {
            (Ok(()), _) => self.backoff.reset(),
            (Err(error @ CheckpointError::Io { .. }), Some(shutdown)) => {
                tracing::warn!(%error, "checkpoint round failed; committing again in {:?}", self.backoff.next());
                self.runtime.block_on(self.backoff.pause(shutdown));
            }
            (Err(error), _) => {
                for at in due.iter().rev() {
                    let run = self.runs.remove(*at);
                    let error = PipelineError::Checkpoint(error.copied());
                    self.ended.push((run.state.partition(), Err(error)));
                }
            }
        }
    }

    /// Every partition is caught up: waits until one of them has records, shutdown is asked
    /// for, or the first checkpoint falls due.
    fn wait_for_records(&mut self) {
        let commit_at = self
            .runs
            .iter()
            .filter(|run| run.applied_since_commit > 0)
            .map(|run| run.committed_at + run.interval())
            .min();
        if self.runs.is_empty() || commit_at.is_some_and(|at| Instant::now() >= at) {
            return;
        }
        let log = self.pipeline.log.as_ref();
        let shutdown = self
            .shutdown
            .as_mut()
            .expect("only a following worker waits");
        let waits: Vec<_> = self
            .runs
            .iter()
            .map(|run| {
                log.wait_for_offset(run.state.partition(), run.state.next_offset())
                    .boxed()
            })
            .collect();
        let deadline = async {
            match commit_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let commands = self.commands.as_mut();
        let told = self.runtime.block_on(async {
            tokio::select! {
                _ = select_all(waits) => None,
                _ = shutdown.changed() => None,
                _ = deadline => None,
                command = next_command(commands) => Some(command),
            }
        });
        self.told.extend(told);
    }

    /// A pool's worker with no partitions waits to be told to take one on (or to stop); true
    /// if it was told something. Any other worker with none left is done.
    fn wait_for_command(&mut self) -> bool {
        let (Some(commands), Some(shutdown)) = (self.commands.as_mut(), self.shutdown.as_mut())
        else {
            return false;
        };
        let told = self.runtime.block_on(async {
            tokio::select! {
                command = commands.recv() => command,
                _ = shutdown.changed() => None,
            }
        });
        match told {
            Some(command) => {
                self.told.push(command);
                true
            }
            None => false,
        }
    }

    /// Obeys what the pool told this worker since the last pass: takes partitions on, gives
    /// them up (each with its last checkpoint committed).
    fn obey(&mut self) {
        if let Some(commands) = self.commands.as_mut() {
            while let Ok(command) = commands.try_recv() {
                self.told.push(command);
            }
        }
        for command in std::mem::take(&mut self.told) {
            match command {
                Command::Take { state, rebuilt } => {
                    let mode = self.mode();
                    self.start(*state, rebuilt, &mode);
                }
                Command::Give { partition, reply } => {
                    // The pool may have stopped waiting; the checkpoint is committed either way.
                    let _ = reply.send(self.give(partition));
                }
            }
        }
    }

    fn mode(&self) -> RunMode {
        match &self.shutdown {
            Some(shutdown) => RunMode::Follow {
                shutdown: shutdown.clone(),
            },
            None => RunMode::CatchUp,
        }
    }

    /// Stops running `partition` here: commits what it applied since its last checkpoint, in
    /// a round of its own, and says how its run went.
    fn give(&mut self, partition: PartitionId) -> Result<PartitionRunSummary, PipelineError> {
        if let Some(at) = self.ended.iter().position(|(p, _)| *p == partition) {
            return self.ended.remove(at).1;
        }
        let at = self
            .runs
            .iter()
            .position(|run| run.state.partition() == partition)
            .ok_or(PipelineError::NotRunning { partition })?;
        let mut run = self.runs.remove(at);
        if run.owes_checkpoint() {
            self.pipeline
                .checkpoint_round(&mut self.committer, &mut [&mut run])
                .map_err(|error| PipelineError::Checkpoint(error.copied()))?;
        }
        Ok(run.into_summary())
    }

    /// The last round, of what each partition applied since its last checkpoint (or the first
    /// checkpoint of a run that committed none); a failure here is those partitions' error.
    /// Then the committer's write-ahead file is retired.
    fn finish(mut self) -> Vec<(PartitionId, Result<PartitionRunSummary, PipelineError>)> {
        let mut runs: Vec<&mut PartitionRun<'a>> = self
            .runs
            .iter_mut()
            .filter(|run| run.owes_checkpoint())
            .collect();
        let last_round = if runs.is_empty() {
            Ok(())
        } else {
            self.pipeline
                .checkpoint_round(&mut self.committer, &mut runs)
        };
        drop(runs);
        self.committer.close(&self.pipeline.store);
        let failure = last_round.err();
        let mut results = self.ended;
        for run in self.runs {
            let partition = run.state.partition();
            let result = match (&failure, run.unsaved.is_some()) {
                (Some(error), true) => Err(PipelineError::Checkpoint(error.copied())),
                _ => Ok(run.into_summary()),
            };
            results.push((partition, result));
        }
        results
    }
}

/// Batches a partition applies at most in one turn on its worker.
const BATCHES_PER_TURN: usize = 8;

/// What one step of a partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Applied,
    /// Nothing new in the log (or waiting to commit what a failed round left).
    Idle,
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
    /// The last read found nothing new.
    caught_up: bool,
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
            caught_up: false,
        }
    }

    /// The partition's turn on its worker: reads and applies batches while there are records,
    /// up to [`BATCHES_PER_TURN`] of them or until its checkpoint is due, so that it keeps its
    /// state in the caches for a while before the worker turns to the next partition.
    fn turn(&mut self, following: bool) -> Result<Step, PipelineError> {
        let mut outcome = Step::Idle;
        for _ in 0..BATCHES_PER_TURN {
            if self.step()? == Step::Idle {
                break;
            }
            outcome = Step::Applied;
            if self.commit_due(following) {
                break;
            }
        }
        Ok(outcome)
    }

    /// Reads and applies one batch. Following, a checkpoint that failed to commit is committed
    /// before anything more is applied, so what it owes the journal stays one checkpoint's
    /// worth.
    fn step(&mut self) -> Result<Step, PipelineError> {
        if self.unsaved.is_some() && self.following() {
            return Ok(Step::Idle);
        }
        let Some(records) = self.read()? else {
            return Ok(Step::Idle); // the log did not answer; waited, and reading again later
        };
        self.caught_up = records.is_empty();
        if self.caught_up {
            return Ok(Step::Idle);
        }
        self.apply(records)?;
        Ok(Step::Applied)
    }

    fn following(&self) -> bool {
        self.shutdown.is_some()
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
                self.state.apply_event(record.offset, event, &lookup),
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

    /// Whether this partition's checkpoint goes into the worker's next round: a failed one to
    /// commit again, enough records applied, or its interval over since the last one.
    fn commit_due(&self, following: bool) -> bool {
        let config = &self.pipeline.config;
        (self.unsaved.is_some() && following)
            || self.applied_since_commit >= config.checkpoint_records_max
            || (self.applied_since_commit > 0 && self.committed_at.elapsed() >= self.interval())
    }

    /// How long after its last checkpoint the next one is due: sooner once caught up.
    fn interval(&self) -> Duration {
        let config = &self.pipeline.config;
        if self.caught_up {
            config
                .caught_up_checkpoint_interval
                .min(config.checkpoint_interval)
        } else {
            config.checkpoint_interval
        }
    }

    /// What it applied since its last checkpoint (or a first checkpoint, or one that failed
    /// to commit) is still to be committed.
    fn owes_checkpoint(&self) -> bool {
        self.applied_since_commit > 0
            || self.summary.last_checkpoint.is_none()
            || self.unsaved.is_some()
    }

    /// A round committed this partition's checkpoint: counting starts again.
    fn committed(&mut self, meta: CheckpointMeta) {
        self.summary.last_checkpoint = Some(meta);
        self.applied_since_commit = 0;
        self.committed_at = Instant::now();
        self.backoff.reset();
    }

    fn into_summary(mut self) -> PartitionRunSummary {
        self.summary.next_offset = self.state.next_offset();
        self.summary
    }
}

/// The next command of a pool's worker; never, for a worker of no pool (or a pool gone).
async fn next_command(
    commands: Option<&mut tokio::sync::mpsc::UnboundedReceiver<Command>>,
) -> Command {
    match commands {
        Some(commands) => match commands.recv().await {
            Some(command) => command,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
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

fn decode(partition: PartitionId, offset: Offset, value: &[u8]) -> Result<LogEvent, PipelineError> {
    envelope::decode_event(value).map_err(|e| PipelineError::UndecodableRecord {
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
