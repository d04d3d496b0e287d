//! This node's place in a deployment: its id, the partitions whose pipeline it runs, and — on
//! a shared Fluvio log — its membership and the topics that connect it to the other nodes.
//!
//! On the embedded log a node is alone: it owns every partition and every close waits for it
//! only. On a Fluvio cluster ([`tally_pipeline::cluster`]) it joins with a claim on the nodes
//! topic, keeps its lease with heartbeats, publishes its partitions' results and folds the
//! others'.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tally_pipeline::clock::Clock;
use tally_pipeline::cluster::{Membership, NodeAnnouncement, NodeView};
use tally_pipeline::log::{Log, PartitionId};
use tokio::sync::watch;

use tally_pipeline::cluster::membership::HEARTBEAT_INTERVAL;

use super::ServerConfig;
use super::logs::SharedTopics;

/// What this node is and owns.
#[derive(Debug)]
pub struct Node {
    pub node_id: String,
    /// Partitions whose pipeline runs here, in order.
    pub owns: Vec<PartitionId>,
    /// The base URL this node tells others to reach it at.
    pub advertise: String,
    /// Present on a shared log.
    pub cluster: Option<ClusterLink>,
}

/// The parts of a node that exist only on a shared log.
#[derive(Debug)]
pub struct ClusterLink {
    pub membership: Arc<Membership>,
    pub results: Arc<dyn Log>,
}

impl Node {
    pub fn owns(&self, partition: PartitionId) -> bool {
        self.owns.contains(&partition)
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
    pub async fn keep_lease(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(link) = &self.cluster else { return };
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
            owns,
            advertise,
            cluster: None,
        });
    };
    let me = NodeAnnouncement {
        node_id: node_id.clone(),
        owns: owns.clone(),
        advertise: advertise.clone(),
    };
    let membership = Membership::join(Arc::clone(&shared.nodes), me, Arc::clone(clock))
        .await
        .context("cannot join the other nodes")?;
    tracing::info!(node_id, owns = %config.owns, %advertise, "joined the nodes on the shared log");
    Ok(Node {
        node_id,
        owns,
        advertise,
        cluster: Some(ClusterLink {
            membership: Arc::new(membership),
            results: Arc::clone(&shared.results),
        }),
    })
}

/// `GET /v1/cluster`: this node and the live nodes it knows of.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub node_id: String,
    pub owns: Vec<PartitionId>,
    pub advertise: String,
    /// `embedded` (one node) or `shared` (several nodes on a Fluvio log).
    pub log: &'static str,
    pub live_nodes: Vec<NodeView>,
}

pub async fn cluster_view(State(state): State<Arc<super::AppState>>) -> Json<ClusterView> {
    let node = &state.node;
    Json(ClusterView {
        node_id: node.node_id.clone(),
        owns: node.owns.clone(),
        advertise: node.advertise.clone(),
        log: if node.cluster.is_some() {
            "shared"
        } else {
            "embedded"
        },
        live_nodes: node.live_nodes(),
    })
}
