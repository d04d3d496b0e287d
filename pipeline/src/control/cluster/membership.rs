//! Membership: which live node owns which partitions.
//!
//! A node joins by appending a **claim** (its id, the partitions it owns, the address other
//! nodes reach it at) to the nodes topic, then reading the topic up to its own claim. If a
//! **live** node other than itself — one whose last claim or heartbeat is younger than the
//! lease and that has not withdrawn — claimed any of the same partitions *earlier* in the
//! topic, the newcomer withdraws and refuses to start, naming that node. The topic's order
//! settles a race between two nodes starting at once: the earlier claim wins.
//!
//! A running node appends a heartbeat every [`HEARTBEAT_INTERVAL`]; a node whose heartbeats stop
//! (a crash, SIGKILL) keeps its partitions until its [`LEASE`] runs out, and a node stopping
//! cleanly withdraws at once. A node restarted on its own data directory keeps its id, so it
//! takes its partitions back at once.
//!
//! Should two nodes ever process one partition (a node cut off from the cluster for longer than
//! the lease while another claimed its partitions), totals stay exact: results are absolute
//! values computed from the same log prefix, and readers keep the one for the highest offset.
//! The overlap is logged; restart the node that lost its lease.
//!
//! # Record format
//! A nodes-topic record is `[0xFF, version, bincode of the record]`
//! ([`crate::support::codec::encode_versioned`]); this build writes version 1 and reads it and records
//! written before versions existed (a bare bincode `NodeRecord`, read as version 0). A record of
//! a later version is refused with [`ClusterError::Undecodable`] naming the version. Version 1's
//! layout is the `NodeRecord` below: a change to it is a new version, the old layout frozen
//! beside it and still decoded. `tests/cluster_format_fixtures.rs` pins both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::{KeyedRecord, Log, LogError, Offset, PartitionId};
use crate::support::clock::{Clock, UnixMillis};
use crate::support::codec::{self, FormatError};

use super::partition_set::format_ranges;

/// How often a running node says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node that stopped saying so keeps its partitions.
pub const LEASE: Duration = Duration::from_secs(5);
/// Records of the nodes topic read back from a new claim: at one heartbeat a second per node,
/// many times the lease for any plausible number of nodes.
const JOIN_LOOKBACK_RECORDS: u64 = 4096;
/// Records read per step while folding the topic.
const READ_RECORDS: usize = 1024;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnnouncement {
    pub node_id: String,
    /// The partitions whose pipeline it runs, in order.
    pub owns: Vec<PartitionId>,
    /// The base URL other nodes reach its HTTP API at.
    pub advertise: String,
}

/// One record of the nodes topic (format versions 0 and 1, see the module's notes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum NodeRecord {
    Claim {
        node: NodeAnnouncement,
        at_ms: UnixMillis,
    },
    Heartbeat {
        node: NodeAnnouncement,
        /// The offset of the claim this node runs under.
        claim_offset: Offset,
        at_ms: UnixMillis,
    },
    Withdrawn {
        node_id: String,
        claim_offset: Offset,
        at_ms: UnixMillis,
    },
}

/// The nodes-topic record format this build writes.
const NODE_RECORD_VERSION: u8 = 1;
/// Kinds the unversioned nodes-topic record had (Claim, Heartbeat, Withdrawn): its first byte
/// is one of `0..3`, never [`codec::VERSION_MARKER`].
const UNVERSIONED_NODE_KINDS: u8 = 3;
const _: () = assert!(UNVERSIONED_NODE_KINDS < codec::VERSION_MARKER);
const NODE_RECORD: &str = "nodes-topic record";

impl NodeRecord {
    fn encode(&self) -> Vec<u8> {
        codec::encode_versioned(NODE_RECORD_VERSION, self)
    }

    /// Decodes a nodes-topic record of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        match codec::split_versioned(NODE_RECORD, bytes)? {
            // Versions 0 and 1 share the layout of `NodeRecord`.
            (version @ (codec::UNVERSIONED | NODE_RECORD_VERSION), body) => {
                codec::decode_body(NODE_RECORD, version, body)
            }
            (version, _) => Err(FormatError::UnknownVersion {
                kind: NODE_RECORD,
                version,
                known: NODE_RECORD_VERSION,
            }),
        }
    }
}

/// A node as the nodes topic shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeAnnouncement,
    pub claim_offset: Offset,
    pub last_seen_ms: UnixMillis,
    pub withdrawn: bool,
}

impl NodeView {
    fn is_live(&self, now_ms: UnixMillis) -> bool {
        !self.withdrawn && now_ms - self.last_seen_ms < LEASE.as_millis() as i64
    }

    fn overlap(&self, owns: &[PartitionId]) -> Vec<PartitionId> {
        owns.iter()
            .copied()
            .filter(|p| self.node.owns.contains(p))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the nodes topic: {0}")]
    Log(#[from] LogError),
    #[error(
        "partitions {partitions} are owned by live node {node_id:?} ({advertise}), last heard \
         from {age_ms} ms ago: choose other partitions with --owns, or stop that node (a node \
         that stopped without withdrawing keeps its partitions for {lease_s} s)",
        partitions = format_ranges(partitions),
        lease_s = LEASE.as_secs()
    )]
    OwnershipConflict {
        partitions: Vec<PartitionId>,
        node_id: String,
        advertise: String,
        age_ms: i64,
    },
    #[error("record {offset} of the nodes topic: {source}")]
    Undecodable {
        offset: Offset,
        #[source]
        source: FormatError,
    },
}

#[derive(Debug, Default)]
struct Folded {
    next_offset: Offset,
    nodes: BTreeMap<String, NodeView>,
}

impl Folded {
    fn apply(&mut self, offset: Offset, record: NodeRecord) {
        match record {
            NodeRecord::Claim { node, at_ms } => {
                self.nodes.insert(
                    node.node_id.clone(),
                    NodeView {
                        node,
                        claim_offset: offset,
                        last_seen_ms: at_ms,
                        withdrawn: false,
                    },
                );
            }
            NodeRecord::Heartbeat {
                node,
                claim_offset,
                at_ms,
            } => {
                let view = self
                    .nodes
                    .entry(node.node_id.clone())
                    .or_insert_with(|| NodeView {
                        node: node.clone(),
                        claim_offset,
                        last_seen_ms: at_ms,
                        withdrawn: false,
                    });
                // A heartbeat of an earlier run of the node does not revive it.
                if claim_offset >= view.claim_offset {
                    view.node = node;
                    view.claim_offset = claim_offset;
                    view.last_seen_ms = view.last_seen_ms.max(at_ms);
                    view.withdrawn = false;
                }
            }
            NodeRecord::Withdrawn {
                node_id,
                claim_offset,
                at_ms,
            } => {
                if let Some(view) = self.nodes.get_mut(&node_id)
                    && view.claim_offset == claim_offset
                {
                    view.withdrawn = true;
                    view.last_seen_ms = view.last_seen_ms.max(at_ms);
                }
            }
        }
        self.next_offset = offset + 1;
    }
}

/// This node's membership: its claim, and the view of every node.
#[derive(Debug)]
pub struct Membership {
    log: Arc<dyn Log>,
    me: NodeAnnouncement,
    claim_offset: Offset,
    clock: Arc<dyn Clock>,
    folded: tokio::sync::Mutex<()>,
    view: Mutex<Folded>,
}

impl Membership {
    /// Claims `me.owns` on the nodes topic; refuses if a live node claimed any of them first.
    pub async fn join(
        log: Arc<dyn Log>,
        me: NodeAnnouncement,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClusterError> {
        let claim = NodeRecord::Claim {
            node: me.clone(),
            at_ms: clock.now_ms(),
        };
        let claim_offset = append(log.as_ref(), &me.node_id, &claim).await?;
        let folded = Folded {
            next_offset: claim_offset.saturating_sub(JOIN_LOOKBACK_RECORDS),
            ..Folded::default()
        };
        let membership = Self {
            log,
            me,
            claim_offset,
            clock,
            folded: tokio::sync::Mutex::new(()),
            view: Mutex::new(folded),
        };
        membership.fold(Some(claim_offset + 1)).await?;
        if let Some(conflict) = membership.earlier_live_claim() {
            membership.withdraw().await;
            return Err(conflict);
        }
        membership.refresh().await?;
        Ok(membership)
    }

    /// The first live node, other than this one, that claimed any of this node's partitions
    /// before this node did.
    fn earlier_live_claim(&self) -> Option<ClusterError> {
        let now_ms = self.clock.now_ms();
        let view = self.lock();
        view.nodes
            .values()
            .filter(|other| other.node.node_id != self.me.node_id)
            .filter(|other| other.is_live(now_ms) && other.claim_offset < self.claim_offset)
            .map(|other| (other, other.overlap(&self.me.owns)))
            .find(|(_, overlap)| !overlap.is_empty())
            .map(|(other, partitions)| ClusterError::OwnershipConflict {
                partitions,
                node_id: other.node.node_id.clone(),
                advertise: other.node.advertise.clone(),
                age_ms: now_ms - other.last_seen_ms,
            })
    }

    pub fn me(&self) -> &NodeAnnouncement {
        &self.me
    }

    /// Reads the nodes topic up to its end.
    pub async fn refresh(&self) -> Result<(), ClusterError> {
        self.fold(None).await?;
        self.warn_of_overlap();
        Ok(())
    }

    /// Applies the topic's records up to `until` (exclusive) or its end. Records are read
    /// without holding the view, so look-ups never wait on the cluster.
    async fn fold(&self, until: Option<Offset>) -> Result<(), ClusterError> {
        let _one_reader = self.folded.lock().await;
        loop {
            let next_offset = self.lock().next_offset;
            if until.is_some_and(|until| next_offset >= until) {
                return Ok(());
            }
            let records = self.log.read(0, next_offset, READ_RECORDS).await?;
            if records.is_empty() {
                match until {
                    None => return Ok(()),
                    Some(_) => {
                        self.log.wait_for_offset(0, next_offset).await?;
                        continue;
                    }
                }
            }
            let mut decoded = Vec::with_capacity(records.len());
            for record in records {
                let node_record = NodeRecord::decode(&record.value).map_err(|source| {
                    ClusterError::Undecodable {
                        offset: record.offset,
                        source,
                    }
                })?;
                decoded.push((record.offset, node_record));
            }
            let mut view = self.lock();
            for (offset, node_record) in decoded {
                view.apply(offset, node_record);
            }
        }
    }

    /// Logs a live node that owns one of this node's partitions (see the module's notes).
    fn warn_of_overlap(&self) {
        let now_ms = self.clock.now_ms();
        let view = self.lock();
        for other in view.nodes.values() {
            if other.node.node_id == self.me.node_id || !other.is_live(now_ms) {
                continue;
            }
            let overlap = other.overlap(&self.me.owns);
            // A later claim that overlaps is refused by its own node; an earlier one means this
            // node joined while the other was thought gone.
            if !overlap.is_empty() && other.claim_offset < self.claim_offset {
                tracing::error!(
                    node = other.node.node_id,
                    partitions = format_ranges(&overlap),
                    "another live node owns partitions this node runs; restart this node"
                );
            }
        }
    }

    /// Says this node is alive.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let record = NodeRecord::Heartbeat {
            node: self.me.clone(),
            claim_offset: self.claim_offset,
            at_ms: self.clock.now_ms(),
        };
        append(self.log.as_ref(), &self.me.node_id, &record).await?;
        Ok(())
    }

    /// Gives this node's partitions up at once (best effort: failing, they are given up when the
    /// lease runs out).
    pub async fn withdraw(&self) {
        let record = NodeRecord::Withdrawn {
            node_id: self.me.node_id.clone(),
            claim_offset: self.claim_offset,
            at_ms: self.clock.now_ms(),
        };
        if let Err(error) = append(self.log.as_ref(), &self.me.node_id, &record).await {
            tracing::warn!(%error, "could not withdraw from the nodes topic; the lease runs out instead");
        }
    }

    /// Every live node, this one included, by id.
    pub fn live_nodes(&self) -> Vec<NodeView> {
        let now_ms = self.clock.now_ms();
        let mut live: Vec<NodeView> = self
            .lock()
            .nodes
            .values()
            .filter(|node| node.node.node_id == self.me.node_id || node.is_live(now_ms))
            .cloned()
            .collect();
        if !live.iter().any(|n| n.node.node_id == self.me.node_id) {
            live.push(NodeView {
                node: self.me.clone(),
                claim_offset: self.claim_offset,
                last_seen_ms: now_ms,
                withdrawn: false,
            });
        }
        live
    }

    /// The live node other than this one that owns `partition` (the earliest claim if several).
    pub fn remote_owner(&self, partition: PartitionId) -> Option<NodeView> {
        if self.me.owns.contains(&partition) {
            return None;
        }
        let now_ms = self.clock.now_ms();
        self.lock()
            .nodes
            .values()
            .filter(|n| n.node.node_id != self.me.node_id && n.is_live(now_ms))
            .filter(|n| n.node.owns.contains(&partition))
            .min_by_key(|n| n.claim_offset)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Folded> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn append(log: &dyn Log, node_id: &str, record: &NodeRecord) -> Result<Offset, LogError> {
    let keyed = KeyedRecord {
        key: node_id.as_bytes().to_vec(),
        value: record.encode(),
    };
    Ok(log.append(0, vec![keyed]).await?.first_offset())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EmbeddedLog, EmbeddedLogOptions};
    use crate::support::clock::ManualClock;

    fn node(id: &str, owns: &[PartitionId]) -> NodeAnnouncement {
        NodeAnnouncement {
            node_id: id.into(),
            owns: owns.to_vec(),
            advertise: format!("http://{id}"),
        }
    }

    fn nodes_topic(dir: &std::path::Path) -> Arc<dyn Log> {
        let options = EmbeddedLogOptions {
            partition_count: 1,
            ..EmbeddedLogOptions::default()
        };
        Arc::new(EmbeddedLog::open(dir, options).unwrap())
    }

    #[tokio::test]
    async fn an_overlapping_claim_is_refused_while_the_owner_lives() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = Membership::join(Arc::clone(&log), node("a", &[0, 1, 2, 3]), clock.clone())
            .await
            .unwrap();
        let b = Membership::join(Arc::clone(&log), node("b", &[4, 5, 6, 7]), clock.clone())
            .await
            .unwrap();
        let refused = Membership::join(Arc::clone(&log), node("c", &[3, 4]), clock.clone()).await;
        match refused {
            Err(ClusterError::OwnershipConflict {
                partitions,
                node_id,
                ..
            }) => {
                assert_eq!(node_id, "a");
                assert_eq!(partitions, vec![3]);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The refused node withdrew: it is not among the live ones.
        b.refresh().await.unwrap();
        let live: Vec<String> = b.live_nodes().into_iter().map(|n| n.node.node_id).collect();
        assert_eq!(live, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(b.remote_owner(2).unwrap().node.node_id, "a");
        assert!(b.remote_owner(5).is_none(), "b owns 5 itself");

        // a stops heartbeating: once its lease runs out, its partitions can be claimed.
        clock.advance(LEASE.as_millis() as i64 + 1);
        b.heartbeat().await.unwrap();
        let c = Membership::join(Arc::clone(&log), node("c", &[0, 1, 2, 3]), clock.clone())
            .await
            .unwrap();
        assert_eq!(c.remote_owner(5).unwrap().node.node_id, "b");
        drop(a);
    }

    #[test]
    fn unversioned_and_version_1_records_decode_and_cannot_be_confused() {
        let kinds = [
            NodeRecord::Claim {
                node: node("a", &[0]),
                at_ms: 1,
            },
            NodeRecord::Heartbeat {
                node: node("a", &[0]),
                claim_offset: 3,
                at_ms: 2,
            },
            NodeRecord::Withdrawn {
                node_id: "a".into(),
                claim_offset: 3,
                at_ms: 4,
            },
        ];
        assert_eq!(kinds.len(), UNVERSIONED_NODE_KINDS as usize);
        for record in kinds {
            let unversioned = codec::encode(&record);
            assert!(unversioned[0] < UNVERSIONED_NODE_KINDS);
            assert_eq!(NodeRecord::decode(&unversioned).unwrap(), record);
            let versioned = record.encode();
            assert_eq!(versioned[..2], [codec::VERSION_MARKER, 1]);
            assert_eq!(NodeRecord::decode(&versioned).unwrap(), record);
        }
    }

    #[tokio::test]
    async fn a_record_of_a_newer_version_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let newer = KeyedRecord {
            key: b"b".to_vec(),
            value: vec![codec::VERSION_MARKER, 9, 1, 2, 3],
        };
        log.append(0, vec![newer]).await.unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        match Membership::join(Arc::clone(&log), node("a", &[0]), clock).await {
            Err(ClusterError::Undecodable {
                offset: 0,
                source: FormatError::UnknownVersion { version: 9, .. },
            }) => {}
            other => panic!("expected an unknown version, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_restarted_node_takes_its_partitions_back_and_a_withdrawn_one_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let first = Membership::join(Arc::clone(&log), node("a", &[0, 1]), clock.clone())
            .await
            .unwrap();
        // The same node again (a restart on its data directory) is not a conflict.
        let again = Membership::join(Arc::clone(&log), node("a", &[0, 1]), clock.clone())
            .await
            .unwrap();
        drop(first);
        again.withdraw().await;
        Membership::join(Arc::clone(&log), node("b", &[0, 1]), clock.clone())
            .await
            .unwrap();
    }
}
