//! This node's place in a deployment: its id, the partitions whose pipeline it runs, and — on
//! a shared Fluvio log — its membership and the topics that connect it to the other nodes.
//!
//! On the embedded log a node is alone: it owns every partition and every close waits for it
//! only. On a Fluvio cluster ([`tally_pipeline::cluster`]) it joins the nodes topic — as a
//! member of the automatic assignment (`--owns auto`, see `supervisor`) or with a claim of
//! fixed partitions — keeps its lease with heartbeats, publishes its partitions' results and
//! folds the others'.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tally_pipeline::clock::Clock;
use tally_pipeline::cluster::{Membership, NodeAnnouncement, NodeView};
use tally_pipeline::log::{Log, Offset, PartitionId};
use tokio::sync::watch;

use tally_pipeline::cluster::membership::{FENCE_AFTER, HEARTBEAT_INTERVAL, LEASE};
use tally_pipeline::cluster::{AssignmentView, PartitionSet};

use super::ServerConfig;
use super::logs::SharedTopics;

/// What this node is and owns.
#[derive(Debug)]
pub struct Node {
    pub node_id: String,
    /// Partitions whose pipeline runs here, in order: fixed, or as the assignment gives them.
    owns: RwLock<Vec<PartitionId>>,
    /// The base URL this node tells others to reach it at.
    pub advertise: String,
    /// Present on a shared log.
    pub cluster: Option<ClusterLink>,
    /// How this node took over each partition it took from another (automatic assignment).
    taken_over: Mutex<BTreeMap<PartitionId, TakeOver>>,
    /// When this node last started running each partition, and how many times it did.
    started: Mutex<BTreeMap<PartitionId, RunStarts>>,
}

/// How often this node started running a partition: a partition it kept while others moved
/// was not started again.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunStarts {
    pub partition: PartitionId,
    pub starts: u64,
    /// Unix milliseconds of the last start.
    pub last_started_at_ms: i64,
}

/// How a partition was taken over: from this node's own checkpoint of it, or from the
/// cluster's snapshot when that was further on.
#[derive(Debug, Clone, Serialize)]
pub struct TakeOver {
    pub partition: PartitionId,
    pub epoch: Offset,
    pub local_checkpoint_offset: Offset,
    /// The offset the installed snapshot reflects; `None` if this node's own checkpoint (or
    /// offset 0) was as far.
    pub snapshot_offset: Option<Offset>,
}

/// The parts of a node that exist only on a shared log.
#[derive(Debug)]
pub struct ClusterLink {
    pub membership: Arc<Membership>,
    pub results: Arc<dyn Log>,
    /// Partition state snapshots (`--owns auto` publishes and restores them).
    pub state: Arc<dyn Log>,
}

impl Node {
    /// Whether this node runs `partition` now.
    pub fn owns(&self, partition: PartitionId) -> bool {
        self.owns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&partition)
    }

    /// The partitions this node runs now, in order.
    pub fn owned(&self) -> Vec<PartitionId> {
        self.owns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The partitions this node runs from now on (its assignment changed).
    pub fn set_owned(&self, partitions: Vec<PartitionId>) {
        *self.owns.write().unwrap_or_else(PoisonError::into_inner) = partitions;
    }

    /// Records how `partition` was taken over.
    pub fn took_over(&self, take_over: TakeOver) {
        self.taken_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(take_over.partition, take_over);
    }

    /// Records that this node started running `partitions` now.
    pub fn started_running(&self, partitions: &[PartitionId]) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        for &partition in partitions {
            let entry = started.entry(partition).or_insert(RunStarts {
                partition,
                starts: 0,
                last_started_at_ms: now_ms,
            });
            entry.starts += 1;
            entry.last_started_at_ms = now_ms;
        }
    }

    fn run_starts(&self) -> Vec<RunStarts> {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .copied()
            .collect()
    }

    fn taken_over(&self) -> Vec<TakeOver> {
        self.taken_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The membership, when partitions are assigned automatically among live nodes.
    pub fn automatic(&self) -> Option<&Arc<Membership>> {
        self.cluster
            .as_ref()
            .map(|link| &link.membership)
            .filter(|membership| membership.is_auto())
    }

    /// Ids of the live nodes, this one included.
    pub fn live_node_ids(&self) -> Vec<String> {
        match &self.cluster {
            None => vec![self.node_id.clone()],
            Some(link) => link
                .membership
                .live_nodes()
                .into_iter()
                .map(|node| node.node.node_id)
                .collect(),
        }
    }

    /// Every live node, for the cluster view.
    /// `auto` (the live nodes' assignment), `explicit` (fixed `--owns`) or, on the embedded
    /// log, `alone`.
    pub fn ownership(&self) -> &'static str {
        match (&self.cluster, self.automatic()) {
            (None, _) => "alone",
            (Some(_), Some(_)) => "auto",
            (Some(_), None) => "explicit",
        }
    }

    pub fn live_nodes(&self) -> Vec<NodeView> {
        match &self.cluster {
            None => Vec::new(),
            Some(link) => link.membership.live_nodes(),
        }
    }

    /// The live node that runs `partition`, when that is not this one.
    pub fn remote_owner(&self, partition: PartitionId) -> Option<NodeView> {
        self.cluster
            .as_ref()
            .and_then(|link| link.membership.remote_owner(partition))
    }

    /// Reads the nodes topic to its end (who is live now).
    pub async fn refresh(&self) {
        if let Some(link) = &self.cluster
            && let Err(error) = link.membership.refresh().await
        {
            tracing::warn!(%error, "cannot read the nodes topic");
        }
    }

    /// Gives this node's partitions up at once (after its pipeline stopped).
    pub async fn withdraw(&self) {
        if let Some(link) = &self.cluster {
            link.membership.withdraw().await;
        }
    }

    /// Keeps the lease: a heartbeat and a look at the other nodes every interval, until
    /// `shutdown`.
    /// (With automatic assignment the supervisor keeps the lease; this returns at once.)
    pub async fn keep_lease(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(link) = &self.cluster else { return };
        if link.membership.is_auto() {
            return;
        }
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(error) = link.membership.heartbeat().await {
                tracing::warn!(%error, "heartbeat failed; the lease runs out if this goes on");
            }
            self.refresh().await;
        }
    }
}

/// Joins the other nodes on a shared log (refusing partitions a live node owns), or stands
/// alone on the embedded log.
pub async fn join(
    config: &ServerConfig,
    address: SocketAddr,
    partition_count: u32,
    shared: Option<&SharedTopics>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Node> {
    let owns = config
        .owns
        .resolve(partition_count)
        .context("invalid --owns")?;
    anyhow::ensure!(!owns.is_empty(), "--owns names no partition");
    let node_id = super::secrets::node_id(&config.data_dir, config.node_id.as_deref())?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let Some(shared) = shared else {
        anyhow::ensure!(
            owns.len() == partition_count as usize,
            "--owns {} needs a shared log (--log fluvio://…): on the embedded log one node runs \
             every partition",
            config.owns
        );
        return Ok(Node {
            node_id,
            owns: RwLock::new(owns),
            advertise,
            cluster: None,
            taken_over: Default::default(),
            started: Default::default(),
        });
    };
    if config.owns == PartitionSet::Auto {
        let membership = Membership::join_auto(
            Arc::clone(&shared.nodes),
            node_id.clone(),
            advertise.clone(),
            partition_count,
            Arc::clone(clock),
        )
        .await
        .context("cannot join the other nodes")?;
        tracing::info!(node_id, %advertise, "joined the members on the shared log (--owns auto)");
        // Nothing owned until the supervisor acquires what the assignment gives this node.
        return Ok(Node::on_shared_log(
            node_id,
            Vec::new(),
            advertise,
            membership,
            shared,
        ));
    }
    let me = NodeAnnouncement {
        node_id: node_id.clone(),
        owns: owns.clone(),
        advertise: advertise.clone(),
    };
    let membership = Membership::join(Arc::clone(&shared.nodes), me, Arc::clone(clock))
        .await
        .context("cannot join the other nodes")?;
    tracing::info!(node_id, owns = %config.owns, %advertise, "joined the nodes on the shared log");
    Ok(Node::on_shared_log(
        node_id, owns, advertise, membership, shared,
    ))
}

impl Node {
    fn on_shared_log(
        node_id: String,
        owns: Vec<PartitionId>,
        advertise: String,
        membership: Membership,
        shared: &SharedTopics,
    ) -> Self {
        Node {
            node_id,
            owns: RwLock::new(owns),
            advertise,
            cluster: Some(ClusterLink {
                membership: Arc::new(membership),
                results: Arc::clone(&shared.results),
                state: Arc::clone(&shared.state),
            }),
            taken_over: Default::default(),
            started: Default::default(),
        }
    }
}

/// `GET /v1/cluster`: this node and the live nodes it knows of; with automatic assignment,
/// this node's lease and every partition's owner, epoch and holder.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub node_id: String,
    /// The partitions whose pipeline runs here now.
    pub owns: Vec<PartitionId>,
    pub advertise: String,
    /// `embedded` (one node) or `shared` (several nodes on a Fluvio log).
    pub log: &'static str,
    /// `auto` (the live nodes' assignment), `explicit` (fixed `--owns`) or, on the embedded
    /// log, `alone`.
    pub ownership: &'static str,
    pub live_nodes: Vec<NodeView>,
    /// With automatic assignment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentView>,
    /// With automatic assignment: how this node took over each partition it took over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<Vec<TakeOver>>,
    /// With automatic assignment: how many times this node started running each partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_starts: Option<Vec<RunStarts>>,
}

#[derive(Debug, Serialize)]
pub struct LeaseView {
    /// Whether this node may act for its partitions now.
    pub held: bool,
    /// Since its last heartbeat reached the nodes topic.
    pub renewed_ms_ago: i64,
    pub fence_after_ms: u64,
    pub lease_ms: u64,
}

pub async fn cluster_view(State(state): State<Arc<super::AppState>>) -> Json<ClusterView> {
    let node = &state.node;
    let automatic = node.automatic();
    Json(ClusterView {
        node_id: node.node_id.clone(),
        owns: node.owned(),
        advertise: node.advertise.clone(),
        log: if node.cluster.is_some() {
            "shared"
        } else {
            "embedded"
        },
        ownership: node.ownership(),
        live_nodes: node.live_nodes(),
        lease: automatic.map(|membership| LeaseView {
            held: membership.holds_lease() && membership.is_member(),
            renewed_ms_ago: membership.renewed_ms_ago(),
            fence_after_ms: FENCE_AFTER.as_millis() as u64,
            lease_ms: LEASE.as_millis() as u64,
        }),
        assignment: automatic.map(|membership| membership.assignment_view()),
        taken_over: automatic.map(|_| node.taken_over()),
        run_starts: automatic.map(|_| node.run_starts()),
    })
}
