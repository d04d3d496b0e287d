//! `GET /v1/ops` and the operator's page's source: per partition the log's end, what is
//! applied, the lag and the checkpoint age; the node's counters; who runs what.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use tally_api::views::{OpsCounters, OpsNodeView, OpsView, PartitionOpsView};
use tally_pipeline::log::{Offset, PartitionId};
use tally_pipeline::read_model::PartitionProgress;

use super::AppState;

pub async fn ops(State(state): State<Arc<AppState>>) -> Json<OpsView> {
    Json(ops_view(&state).await)
}

/// The operator's view of this node, now.
pub async fn ops_view(state: &AppState) -> OpsView {
    let progress = state.read_model.progress();
    let (ends, log_reachable) = log_ends(state, &progress).await;
    let now_ms = state.clock.now_ms();
    let nodes = nodes(state, now_ms);
    let owner_of = |partition: PartitionId| {
        nodes
            .iter()
            .find(|node| node.partitions.contains(&partition))
            .map(|node| node.node_id.clone())
    };
    let partitions = progress
        .iter()
        .zip(&ends)
        .map(|(p, &end)| {
            let lag_records = end.saturating_sub(p.applied_offset);
            let committed = p.committed_at_ms > 0;
            PartitionOpsView {
                partition: p.partition,
                log_end_offset: end,
                applied_offset: p.applied_offset,
                lag_records,
                lag_ms: if lag_records > 0 && committed {
                    (now_ms - p.committed_at_ms).max(0)
                } else {
                    0
                },
                checkpoint_age_s: committed
                    .then(|| (now_ms - p.committed_at_ms).max(0) as f64 / 1000.0),
                runs_here: state.node.owns(p.partition),
                owner: owner_of(p.partition),
            }
        })
        .collect();
    OpsView {
        at: tally_query::views::rfc3339(now_ms),
        node_id: state.node.node_id.clone(),
        log_reachable,
        partitions,
        counters: counters(state, &progress),
        ownership: state.node.ownership().to_owned(),
        nodes,
    }
}

/// Each partition's end; the applied offset stands in for one the log does not answer.
async fn log_ends(state: &AppState, progress: &[PartitionProgress]) -> (Vec<Offset>, bool) {
    let mut reachable = true;
    let mut ends = Vec::with_capacity(progress.len());
    for p in progress {
        match state.log.end_offset(p.partition).await {
            Ok(end) => ends.push(end),
            Err(_) => {
                reachable = false;
                ends.push(p.applied_offset);
            }
        }
    }
    (ends, reachable)
}

fn counters(state: &AppState, progress: &[PartitionProgress]) -> OpsCounters {
    let by_class = state.requests.by_status_class();
    let sum = |f: fn(&tally_pipeline::processor::PartitionCounters) -> u64| {
        progress.iter().map(|p| f(&p.counters)).sum()
    };
    let ingest = &state.ingest.metrics;
    OpsCounters {
        appended_records: ingest.appended_records.load(Ordering::Relaxed),
        responses_2xx: by_class[2],
        responses_4xx: by_class[4],
        responses_5xx: by_class[5],
        rate_limited: ingest.rate_limited.load(Ordering::Relaxed),
        recorded: sum(|c| c.recorded),
        duplicates: sum(|c| c.duplicates),
        conflicts: sum(|c| c.conflicts),
    }
}

/// The live nodes, with what each runs.
fn nodes(state: &AppState, now_ms: i64) -> Vec<OpsNodeView> {
    let node = &state.node;
    let this_node = || OpsNodeView {
        node_id: node.node_id.clone(),
        advertise: node.advertise.clone(),
        partitions: node.owned(),
        last_heard_ms_ago: 0,
    };
    let Some(cluster) = &node.cluster else {
        return vec![this_node()];
    };
    if let Some(membership) = node.automatic() {
        let assignment = membership.assignment_view();
        let nodes = assignment
            .members
            .iter()
            .map(|member| OpsNodeView {
                node_id: member.node_id.clone(),
                advertise: member.advertise.clone(),
                partitions: assignment
                    .partitions
                    .iter()
                    .filter(|p| {
                        p.holder
                            .as_ref()
                            .is_some_and(|h| h.node_id == member.node_id)
                    })
                    .map(|p| p.partition)
                    .collect(),
                last_heard_ms_ago: if member.node_id == node.node_id {
                    0
                } else {
                    (now_ms - member.last_heard_ms).max(0)
                },
            })
            .collect();
        return nodes;
    }
    let mut nodes: Vec<OpsNodeView> = cluster
        .membership
        .live_nodes()
        .into_iter()
        .filter(|view| view.node.node_id != node.node_id)
        .map(|view| OpsNodeView {
            node_id: view.node.node_id,
            advertise: view.node.advertise,
            partitions: view.node.owns,
            last_heard_ms_ago: (now_ms - view.last_seen_ms).max(0),
        })
        .collect();
    nodes.insert(0, this_node());
    nodes
}

/// The pages read the operator's view through this.
#[derive(Debug)]
pub struct NodeOps(pub Arc<AppState>);

#[async_trait::async_trait]
impl tally_web::pages::OpsSource for NodeOps {
    async fn ops_view(&self) -> OpsView {
        ops_view(&self.0).await
    }
}
