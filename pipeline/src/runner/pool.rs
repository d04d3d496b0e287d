//! A running pool of pipeline workers whose partitions change while it runs: a node under
//! automatic assignment takes partitions on and gives them up without stopping the others.
//!
//! Each worker runs its partitions as [`Pipeline::run_partitions`] does and, between passes,
//! obeys what the pool tells it: take a loaded partition on, or give one up — commit what it
//! applied since its last checkpoint, in a round of its own, and answer how its run went. A
//! partition is given up by the worker running it, so nothing else writes its state meanwhile.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot, watch};

use super::{PartitionRunSummary, Pipeline, PipelineError, RunMode};
use crate::log::PartitionId;
use crate::processor::PartitionState;

/// What a pool tells one of its workers.
#[derive(Debug)]
pub(super) enum Command {
    /// Run this loaded partition too.
    Take {
        state: Box<PartitionState>,
        rebuilt: bool,
    },
    /// Stop running this partition once its last checkpoint is committed.
    Give {
        partition: PartitionId,
        reply: oneshot::Sender<Result<PartitionRunSummary, PipelineError>>,
    },
}

type WorkerResults = Vec<(PartitionId, Result<PartitionRunSummary, PipelineError>)>;

/// Workers following the log, started once; partitions come and go.
#[derive(Debug)]
pub struct RunningPool {
    stop: watch::Sender<bool>,
    workers: Vec<PoolWorker>,
    /// Which worker runs each partition.
    placed: BTreeMap<PartitionId, usize>,
}

#[derive(Debug)]
struct PoolWorker {
    commands: mpsc::UnboundedSender<Command>,
    thread: std::thread::JoinHandle<WorkerResults>,
}

impl Pipeline {
    /// Starts the workers of a pool (one per core unless configured), running no partition
    /// yet; they follow the log until [`RunningPool::stop`].
    pub fn start_pool(&self) -> Result<RunningPool, std::io::Error> {
        let (stop, stopped) = watch::channel(false);
        let workers = (0..self.config.worker_count(usize::MAX))
            .map(|worker| {
                let (commands, told) = mpsc::unbounded_channel();
                let pipeline = self.clone();
                let mode = RunMode::Follow {
                    shutdown: stopped.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("tally-pipeline-w{worker}"))
                    .spawn(move || pipeline.run_worker(Vec::new(), mode, Some(told)))
                    .map(|thread| PoolWorker { commands, thread })
            })
            .collect::<Result<_, _>>()?;
        Ok(RunningPool {
            stop,
            workers,
            placed: BTreeMap::new(),
        })
    }
}

impl RunningPool {
    /// The partitions the pool runs (or was given and has not given up).
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.placed.keys().copied().collect()
    }

    /// Runs partitions loaded by [`Pipeline::load_partitions`] too, each on the worker that
    /// runs the fewest.
    pub fn take(&mut self, loaded: Vec<(PartitionState, bool)>) {
        for (state, rebuilt) in loaded {
            let partition = state.partition();
            assert!(
                !self.placed.contains_key(&partition),
                "partition {partition} is already running in this pool"
            );
            let worker = self.least_loaded();
            if self.workers[worker]
                .commands
                .send(Command::Take {
                    state: Box::new(state),
                    rebuilt,
                })
                .is_err()
            {
                tracing::error!(
                    partition,
                    "the pipeline worker is gone; not running the partition"
                );
                continue;
            }
            self.placed.insert(partition, worker);
        }
    }

    /// Gives up `partitions`: each commits what it applied since its last checkpoint and stops;
    /// the others keep running. Returns how each run went (one not running here: `NotRunning`).
    pub async fn give(&mut self, partitions: &[PartitionId]) -> WorkerResults {
        let mut replies = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let Some(worker) = self.placed.remove(&partition) else {
                replies.push((partition, None));
                continue;
            };
            let (reply, answer) = oneshot::channel();
            let sent = self.workers[worker]
                .commands
                .send(Command::Give { partition, reply });
            replies.push((partition, sent.ok().map(|()| answer)));
        }
        let mut results = Vec::with_capacity(replies.len());
        for (partition, answer) in replies {
            let result = match answer {
                None => Err(PipelineError::NotRunning { partition }),
                Some(answer) => answer
                    .await
                    .unwrap_or(Err(PipelineError::Panicked { partition })),
            };
            results.push((partition, result));
        }
        results
    }

    /// Stops every worker, each after its last round; blocks until they are done.
    pub fn stop(self) -> WorkerResults {
        let _ = self.stop.send(true);
        let mut results = WorkerResults::new();
        for (at, worker) in self.workers.into_iter().enumerate() {
            drop(worker.commands);
            match worker.thread.join() {
                Ok(worker_results) => results.extend(worker_results),
                Err(_) => results.extend(self.placed.iter().filter(|&(_, &w)| w == at).map(
                    |(&partition, _)| (partition, Err(PipelineError::Panicked { partition })),
                )),
            }
        }
        results.sort_by_key(|(partition, _)| *partition);
        results
    }

    fn least_loaded(&self) -> usize {
        let mut load = vec![0usize; self.workers.len()];
        for &worker in self.placed.values() {
            load[worker] += 1;
        }
        (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0)
    }
}
