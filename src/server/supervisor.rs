//! Automatic assignment on a shared log (`--owns auto`): keeps this member's lease, expires
//! members whose lease ran out, and runs the partitions the assignment gives this node.
//!
//! Every [`HEARTBEAT_INTERVAL`] the supervisor heartbeats, reads the nodes topic, and compares
//! what the assignment wants of this node ([`OwnershipPlan`]) with what it runs. On a change it
//! hands over only the partitions that move, in an order that never lets two nodes act for one
//! partition; the partitions it keeps run on undisturbed:
//!
//! ```text
//! stop the deliveries and the pipeline of what moves away (each at its last checkpoint) ─►
//! publish the last results ─► release it ─► acquire what moved here (read back: held) ─►
//! restore and start it on the running worker pool
//! ```
//!
//! A partition moving here from a live member waits for that member's release (or its
//! expiry); one moving from a member that died starts once the expiry is on the topic. A
//! partition taken on is restored from the cluster's latest snapshot of it, or from this
//! node's own checkpoint when that is further on, and then replays the log from there. A node
//! that cannot renew its lease for [`FENCE_AFTER`] stops its run and
//! publishes and delivers nothing (the fence in the publisher and the deliveries covers the
//! moments before the supervisor notices); one that finds it was expired while away joins
//! again as a new run, holding nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::checkpoint::savepoint;
use tally_pipeline::cluster::membership::{FENCE_AFTER, HEARTBEAT_INTERVAL};
use tally_pipeline::cluster::state_snapshots;
use tally_pipeline::cluster::{Membership, OwnershipPlan, ResultsPublisher};
use tally_pipeline::log::{Log, Offset, PartitionId};
use tally_pipeline::runner::{PartitionRunSummary, Pipeline, PipelineError, RunningPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::node::{Node, TakeOver};
use super::notifications::Notifications;
use tally_ingest::routes::IngestContext;

/// What the supervisor drives.
#[derive(Debug)]
pub struct Supervisor {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    pub pipeline: Pipeline,
    pub publisher: Arc<ResultsPublisher>,
    pub notifications: Arc<Notifications>,
    pub snapshots: Arc<StateSnapshots>,
    /// Ingest, whose per-user rate limit the members share.
    pub ingest: Arc<IngestContext>,
}

/// Publishing this node's partition states to the state topic, and restoring others'.
#[derive(Debug)]
pub struct StateSnapshots {
    pub node: Arc<Node>,
    pub membership: Arc<Membership>,
    pub store: Arc<CheckpointStore>,
    pub topic: Arc<dyn Log>,
    /// Where sections are staged on their way to and from the topic.
    pub scratch_dir: PathBuf,
    pub interval: Duration,
    /// The offset each partition's last published snapshot reflects.
    pub published: Mutex<BTreeMap<PartitionId, Offset>>,
    pub sequence: AtomicU64,
}

/// The worker pool running the partitions held now, and each one's deliveries.
struct Run {
    pool: RunningPool,
    deliveries: BTreeMap<PartitionId, Delivery>,
}

/// One partition's notification deliveries, stopped on their own.
struct Delivery {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Run {
    fn partitions(&self) -> Vec<PartitionId> {
        self.pool.partitions()
    }
}

impl Supervisor {
    /// Runs until `shutdown`; then stops the run, publishes its last results and releases
    /// every partition held, so the other members take them at once.
    pub async fn supervise(self, mut shutdown: watch::Receiver<bool>) {
        let mut run: Option<Run> = None;
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            self.step(&mut run).await;
        }
        self.stop(&mut run).await;
        let release = self.membership.held();
        self.say_delivered(&release).await;
        self.snapshots.publish_all(&release).await;
        if let Err(error) = self.membership.release(&release).await {
            tracing::warn!(%error, "could not release the partitions; they move when the lease runs out");
        }
    }

    /// One look at the topic, and what follows from it.
    async fn step(&self, run: &mut Option<Run>) {
        let membership = &self.membership;
        if let Err(error) = membership.heartbeat().await {
            tracing::warn!(%error, "heartbeat failed; this node stops its partitions if this goes on");
        }
        if let Err(error) = membership.refresh().await {
            tracing::warn!(%error, "cannot read the nodes topic");
        }
        // Every member sees part of a user's callbacks: each admits its share of the allowance.
        self.ingest
            .rate_limiter
            .share_between(membership.member_count());
        if !membership.is_member() {
            // Read up to its last heartbeat, the topic says the others found this run's lease
            // run out: a new run, holding nothing, joins.
            tracing::error!("the other members found this node's lease run out: joining again");
            self.stop(run).await;
            if let Err(error) = membership.rejoin().await {
                tracing::warn!(%error, "cannot join again; retrying");
            }
            return;
        }
        if !membership.holds_lease() {
            if run.is_some() {
                tracing::error!(
                    "no heartbeat reached the nodes topic for {FENCE_AFTER:?}: stopping this \
                     node's partitions before its lease can run out elsewhere"
                );
                self.stop(run).await;
            }
            return;
        }
        if let Err(error) = membership.expire_silent_members().await {
            tracing::warn!(%error, "cannot expire a silent member");
        }
        if run.is_some() {
            self.say_delivered(&membership.held()).await;
        }
        let plan = membership.plan();
        let running = running(run);
        let takes_new = plan.acquire.iter().any(|(p, _)| !running.contains(p));
        let lost_some = plan.keep.iter().copied().ne(running.iter().copied());
        if plan.release.is_empty() && !takes_new && !lost_some {
            // At most a partition that came back at a new epoch while it ran here.
            self.acquire(&plan.acquire).await;
            self.stamp_epochs();
            let held = self.membership.held();
            self.say_delivered(&held).await;
            return;
        }
        self.hand_over(run, plan).await;
    }

    /// Moves only what the plan moves: gives up what went elsewhere, releases it, acquires
    /// what came here and starts it; the partitions kept run on.
    async fn hand_over(&self, run: &mut Option<Run>, plan: OwnershipPlan) {
        let running_before = running(run);
        let leaving: Vec<PartitionId> = running_before
            .iter()
            .copied()
            .filter(|p| !plan.keep.contains(p))
            .collect();
        self.give_up(run, &leaving).await;
        // The new owners restore what these last checkpoints hold, and deliver from where
        // this node stopped.
        self.say_delivered(&plan.release).await;
        self.snapshots.publish_all(&plan.release).await;
        if let Err(error) = self.membership.release(&plan.release).await {
            tracing::warn!(%error, "cannot release partitions; retrying");
        } else {
            let released: Vec<PartitionId> = plan.release.iter().map(|(p, _)| *p).collect();
            self.publisher.forget(&released);
        }
        let acquired = self.acquire(&plan.acquire).await;
        for &partition in &acquired {
            if !running_before.contains(&partition) {
                let epoch = plan
                    .acquire
                    .iter()
                    .find(|(p, _)| *p == partition)
                    .map_or(0, |(_, epoch)| *epoch);
                self.snapshots.restore(partition, epoch).await;
            }
        }
        let still_running = running(run);
        let mut starting: Vec<PartitionId> = plan
            .keep
            .iter()
            .chain(&acquired)
            .copied()
            .filter(|p| !still_running.contains(p))
            .collect();
        starting.sort_unstable();
        starting.dedup();
        tracing::info!(
            kept = ?still_running,
            starting = ?starting,
            gave_up = ?leaving,
            released = ?plan.release,
            waiting = ?plan.waiting,
            "running the partitions the assignment gives this node"
        );
        self.take_on(run, starting).await;
    }

    /// Acquires `partitions`; returns those held now.
    async fn acquire(&self, partitions: &[(PartitionId, Offset)]) -> Vec<PartitionId> {
        match self.membership.acquire(partitions).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot acquire partitions; retrying");
                Vec::new()
            }
        }
    }

    /// Results of each partition held go out stamped with the epoch it is held at.
    fn stamp_epochs(&self) {
        for (partition, epoch) in self.membership.held() {
            self.publisher.set_epoch(partition, epoch);
        }
    }

    /// Says on the nodes topic how far this node delivered the notifications of `held`
    /// partitions (at their epochs), where that moved since it last said so.
    async fn say_delivered(&self, held: &[(PartitionId, Offset)]) {
        let cursors: Vec<(PartitionId, Offset, Offset)> = held
            .iter()
            .map(|&(partition, epoch)| (partition, epoch, self.notifications.cursor(partition)))
            .filter(|&(partition, _, cursor)| cursor > self.membership.delivered_cursor(partition))
            .collect();
        if let Err(error) = self.membership.delivered(&cursors).await {
            tracing::warn!(%error, "cannot say how far notifications were delivered");
        }
    }

    /// Loads `partitions` and starts them, and their deliveries, beside those running (on a
    /// pool started now if none runs). One that does not load is started again next step.
    async fn take_on(&self, run: &mut Option<Run>, partitions: Vec<PartitionId>) {
        self.stamp_epochs();
        if partitions.is_empty() {
            return;
        }
        if run.is_none() {
            match self.pipeline.start_pool() {
                Ok(pool) => {
                    *run = Some(Run {
                        pool,
                        deliveries: BTreeMap::new(),
                    })
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start the pipeline workers");
                    return;
                }
            }
        }
        let Some(current) = run.as_mut() else { return };
        let pipeline = self.pipeline.clone();
        let loading = partitions.clone();
        let loaded = match tokio::task::spawn_blocking(move || pipeline.load_partitions(&loading))
            .await
        {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(error)) => {
                tracing::error!(%error, ?partitions, "cannot load the partitions; trying again");
                return;
            }
            Err(error) => {
                tracing::error!(%error, ?partitions, "loading the partitions panicked");
                return;
            }
        };
        current.pool.take(loaded);
        let now_running = current.partitions();
        self.node.set_owned(now_running.clone());
        self.node.started_running(&partitions);
        if let Err(error) = self.notifications.set_owned(now_running) {
            tracing::warn!("{error:#}");
        }
        for &partition in &partitions {
            // Delivered elsewhere (by an earlier holder) is delivered.
            let cursor = self.membership.delivered_cursor(partition);
            if let Err(error) = self.notifications.adopt_cursor(partition, cursor) {
                tracing::warn!(partition, "{error:#}");
            }
            let (stop, stopped) = watch::channel(false);
            let task = self.notifications.spawn_delivery_of(partition, stopped);
            current
                .deliveries
                .insert(partition, Delivery { stop, task });
        }
    }

    /// Stops `partitions` — their deliveries, then their last checkpoints, then their results
    /// — while the others run on.
    async fn give_up(&self, run: &mut Option<Run>, partitions: &[PartitionId]) {
        let Some(current) = run.as_mut() else { return };
        if partitions.is_empty() {
            return;
        }
        let staying: Vec<PartitionId> = current
            .partitions()
            .into_iter()
            .filter(|p| !partitions.contains(p))
            .collect();
        self.node.set_owned(staying.clone());
        let deliveries: Vec<Delivery> = partitions
            .iter()
            .filter_map(|p| current.deliveries.remove(p))
            .collect();
        stop_deliveries(deliveries).await;
        let results = current.pool.give(partitions).await;
        log_stopped(&results);
        if let Err(error) = self.notifications.set_owned(staying) {
            tracing::warn!("{error:#}");
        }
        self.publish_committed().await;
    }

    /// Stops the whole run: deliveries, then the pipeline's last checkpoints, then their
    /// results.
    async fn stop(&self, run: &mut Option<Run>) {
        let Some(run) = run.take() else { return };
        self.node.set_owned(Vec::new());
        stop_deliveries(run.deliveries.into_values().collect()).await;
        let pool = run.pool;
        match tokio::task::spawn_blocking(move || pool.stop()).await {
            Ok(results) => log_stopped(&results),
            Err(_) => tracing::error!("stopping the pipeline workers panicked"),
        }
        if let Err(error) = self.notifications.set_owned(Vec::new()) {
            tracing::warn!("{error:#}");
        }
        self.publish_committed().await;
    }

    /// What the last checkpoints committed goes out before anything is released.
    async fn publish_committed(&self) {
        let (_, stopped) = watch::channel(true);
        self.publisher.run(stopped).await;
    }
}

fn running(run: &Option<Run>) -> Vec<PartitionId> {
    run.as_ref().map(Run::partitions).unwrap_or_default()
}

async fn stop_deliveries(deliveries: Vec<Delivery>) {
    for delivery in &deliveries {
        let _ = delivery.stop.send(true);
    }
    for task in deliveries.into_iter().filter_map(|d| d.task) {
        let _ = task.await;
    }
}

fn log_stopped(results: &[(PartitionId, Result<PartitionRunSummary, PipelineError>)]) {
    let mut offsets = Vec::new();
    for (partition, result) in results {
        match result {
            Ok(summary) => offsets.push((*partition, summary.next_offset)),
            Err(error) => tracing::error!(partition, %error, "the partition stopped with an error"),
        }
    }
    tracing::info!(?offsets, "stopped the partitions at a checkpoint");
}

impl StateSnapshots {
    /// Publishes the state of every partition this node runs whose checkpoint moved since its
    /// last snapshot, every interval, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            let running = self.node.owned();
            let held: Vec<(PartitionId, Offset)> = self
                .membership
                .held()
                .into_iter()
                .filter(|(p, _)| running.contains(p))
                .collect();
            self.publish_all(&held).await;
        }
    }

    /// Publishes a snapshot of each of `partitions` (at its epoch) that moved since the last.
    pub async fn publish_all(&self, partitions: &[(PartitionId, Offset)]) {
        for &(partition, epoch) in partitions {
            if let Err(error) = self.publish(partition, epoch).await {
                tracing::warn!(partition, "cannot publish the partition's state: {error:#}");
            }
        }
    }

    async fn publish(&self, partition: PartitionId, epoch: Offset) -> anyhow::Result<()> {
        // The last commit's offset is in memory: exporting (rebuilding the state from the
        // journal) is only worth it when it moved past the last snapshot.
        let Some(committed) = self.store.meta(partition)?.map(|m| m.scalars.next_offset) else {
            return Ok(());
        };
        let last = self.lock().get(&partition).copied();
        if last.is_some_and(|last| last >= committed) {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let scratch = self.scratch_dir.clone();
        let exported = tokio::task::spawn_blocking(move || {
            savepoint::export_partition(&store, partition, &scratch)
        })
        .await??;
        let Some((meta, section)) = exported else {
            return Ok(());
        };
        let next_offset = meta.scalars.next_offset;
        if !self.membership.holds_lease() {
            anyhow::bail!("this node does not hold its lease");
        }
        let snapshot_id = self.snapshot_id(partition);
        state_snapshots::publish(
            self.topic.as_ref(),
            partition,
            epoch,
            next_offset,
            snapshot_id,
            &section,
        )
        .await?;
        self.lock().insert(partition, next_offset);
        tracing::debug!(
            partition,
            next_offset,
            bytes = section.len(),
            "published the partition's state"
        );
        Ok(())
    }

    /// Installs the cluster's latest snapshot of `partition` if it is ahead of this node's own
    /// checkpoint of it; says what it restored from.
    pub async fn restore(&self, partition: PartitionId, epoch: Offset) {
        let local = match self.store.meta(partition) {
            Ok(meta) => meta.map_or(0, |m| m.scalars.next_offset),
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read the partition's checkpoint");
                0
            }
        };
        let restored = match state_snapshots::latest(self.topic.as_ref(), partition).await {
            Ok(Some(snapshot)) if snapshot.next_offset > local => {
                let store = Arc::clone(&self.store);
                let scratch = self.scratch_dir.clone();
                let section = snapshot.section;
                let installed = tokio::task::spawn_blocking(move || {
                    savepoint::install_partition(&store, partition, &section, &scratch)
                })
                .await;
                match installed {
                    Ok(Ok(())) => Some(snapshot.next_offset),
                    Ok(Err(error)) => {
                        tracing::warn!(partition, %error, "the cluster's snapshot does not install; replaying from this node's checkpoint");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "installing the snapshot failed");
                        None
                    }
                }
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read the state topic; replaying from this node's checkpoint");
                None
            }
        };
        tracing::info!(partition, epoch, local_offset = local, restored_from = ?restored, "taking the partition over");
        self.node.took_over(TakeOver {
            partition,
            epoch,
            local_checkpoint_offset: local,
            snapshot_offset: restored,
        });
    }

    fn snapshot_id(&self, partition: PartitionId) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        nanos ^ (u64::from(partition) << 48) ^ sequence.rotate_left(32)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, Offset>> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
