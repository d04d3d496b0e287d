//! Membership: which live node owns which partitions.
//!
//! Two ways to own partitions share this topic (never at once on one topic): **members** of
//! the automatic assignment (`--owns auto`; see [`super::assignment`] and the supervisor in the
//! server) join, heartbeat, expire a silent member, and acquire and release partitions at
//! epochs; nodes with **fixed partitions** claim them, as below.
//!
//! A node with fixed partitions joins by appending a **claim** (its id, the partitions it owns, the address other
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
//! ([`crate::support::codec::encode_versioned`]); this build writes version 1 for the kinds
//! fixed partitions use (claims, heartbeats, withdrawals) and version 2 for the kinds automatic
//! assignment added (joins, member heartbeats, expiries, acquires, releases, delivery cursors;
//! the same enum, extended), and reads both and records written before versions existed (a
//! bare bincode `NodeRecord`, read as version 0). A record of
//! a later version is refused with [`ClusterError::Undecodable`] naming the version. Version 1's
//! layout is the `NodeRecord` below: a change to it is a new version, the old layout frozen
//! beside it and still decoded. `tests/cluster_format_fixtures.rs` pins both.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::{KeyedRecord, Log, LogError, Offset, PartitionId};
use crate::support::clock::{Clock, UnixMillis};
use crate::support::codec::{self, FormatError};

use super::assignment::Assignment;
use super::partition_set::format_ranges;

/// How often a running node says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node that stopped saying so keeps its partitions.
pub const LEASE: Duration = Duration::from_secs(5);
/// A node whose heartbeats have not reached the topic for this long stops acting for its
/// partitions: well before any other node can find its lease run out, so two nodes never act
/// for one partition at once while clocks advance at the same rate.
pub const FENCE_AFTER: Duration = Duration::from_secs(3);
const _: () = assert!(FENCE_AFTER.as_millis() + HEARTBEAT_INTERVAL.as_millis() < LEASE.as_millis());
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
    // Version 2 adds the kinds below, for automatic assignment (`--owns auto`).
    /// A node joining as a member: the assignment decides what it runs.
    Join {
        node_id: String,
        advertise: String,
        at_ms: UnixMillis,
    },
    /// A member says it is alive.
    MemberHeartbeat {
        node_id: String,
        join_offset: Offset,
        at_ms: UnixMillis,
    },
    /// A member's lease ran out, as member `by` saw it.
    Expired {
        node_id: String,
        join_offset: Offset,
        by: String,
        at_ms: UnixMillis,
    },
    /// A member starts running these partitions, each at its epoch.
    Acquired {
        node_id: String,
        join_offset: Offset,
        partitions: Vec<(PartitionId, Offset)>,
    },
    /// A member stopped running these partitions: their last checkpoints are committed and
    /// their results published.
    Released {
        node_id: String,
        join_offset: Offset,
        partitions: Vec<(PartitionId, Offset)>,
    },
    /// How far a member delivered donor notifications of partitions it holds: `(partition,
    /// epoch, cursor)`, everything below `cursor` delivered.
    Delivered {
        node_id: String,
        join_offset: Offset,
        cursors: Vec<(PartitionId, Offset, Offset)>,
    },
}

/// The nodes-topic record format of the kinds version 1 had; they are still written as version
/// 1, so a cluster of nodes with explicit `--owns` stays readable by builds that know only it.
const NODE_RECORD_VERSION: u8 = 1;
/// The format of the kinds version 2 added.
const MEMBER_RECORD_VERSION: u8 = 2;
/// Kinds the unversioned nodes-topic record had (Claim, Heartbeat, Withdrawn): its first byte
/// is one of `0..3`, never [`codec::VERSION_MARKER`].
const UNVERSIONED_NODE_KINDS: u8 = 3;
const _: () = assert!(UNVERSIONED_NODE_KINDS < codec::VERSION_MARKER);
const NODE_RECORD: &str = "nodes-topic record";

impl NodeRecord {
    fn encode(&self) -> Vec<u8> {
        let version = match self {
            NodeRecord::Claim { .. }
            | NodeRecord::Heartbeat { .. }
            | NodeRecord::Withdrawn { .. } => NODE_RECORD_VERSION,
            _ => MEMBER_RECORD_VERSION,
        };
        codec::encode_versioned(version, self)
    }

    /// Decodes a nodes-topic record of any version this build knows.
    fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        match codec::split_versioned(NODE_RECORD, bytes)? {
            // Versions 0, 1 and 2 share the layout of `NodeRecord` (2 only adds kinds).
            (
                version @ (codec::UNVERSIONED | NODE_RECORD_VERSION | MEMBER_RECORD_VERSION),
                body,
            ) => codec::decode_body(NODE_RECORD, version, body),
            (version, _) => Err(FormatError::UnknownVersion {
                kind: NODE_RECORD,
                version,
                known: MEMBER_RECORD_VERSION,
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
    #[error(
        "live node {node_id:?} ({advertise}) runs {runs}: nodes with explicit --owns and nodes \
         with --owns auto cannot share a topic; start this node the same way, or stop that one"
    )]
    MixedOwnership {
        node_id: String,
        advertise: String,
        runs: &'static str,
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
    /// Members joined for automatic assignment, and what they were assigned.
    members: Members,
}

impl Folded {
    /// Applies the record at `offset`, read at `now_ms` by this node's clock.
    fn apply(&mut self, offset: Offset, record: NodeRecord, now_ms: UnixMillis) {
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
                self.members.leave(&node_id, claim_offset, offset);
            }
            NodeRecord::Join {
                node_id,
                advertise,
                at_ms,
            } => self.members.join(node_id, advertise, offset, at_ms, now_ms),
            NodeRecord::MemberHeartbeat {
                node_id,
                join_offset,
                at_ms,
            } => self.members.heard(&node_id, join_offset, at_ms, now_ms),
            NodeRecord::Expired {
                node_id,
                join_offset,
                ..
            } => self.members.leave(&node_id, join_offset, offset),
            NodeRecord::Acquired {
                node_id,
                join_offset,
                partitions,
            } => self.members.acquired(&node_id, join_offset, &partitions),
            NodeRecord::Released {
                node_id,
                join_offset,
                partitions,
            } => self.members.released(&node_id, join_offset, &partitions),
            NodeRecord::Delivered {
                node_id,
                join_offset,
                cursors,
            } => self.members.delivered(&node_id, join_offset, &cursors),
        }
        self.next_offset = offset + 1;
    }
}

/// A member as the nodes topic shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub node_id: String,
    pub advertise: String,
    /// The offset of its join record: which run of the node this is.
    pub join_offset: Offset,
    pub joined_at_ms: UnixMillis,
    /// When this node last read a heartbeat of it (this node's clock).
    pub last_heard_ms: UnixMillis,
    /// When it last said it was alive (its own clock).
    pub last_said_ms: UnixMillis,
}

/// Who runs a partition now: the member that acquired it at an epoch and has not released it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub node_id: String,
    pub join_offset: Offset,
    pub epoch: Offset,
}

/// The members of automatic assignment, the assignment their order gives, and who holds
/// each partition.
#[derive(Debug, Default)]
struct Members {
    members: BTreeMap<String, MemberView>,
    assignment: Assignment,
    holders: Vec<Option<Holder>>,
    /// How far notifications of each partition were delivered, as its holders said.
    delivered: Vec<Offset>,
    /// Partitions that changed owner, over every change folded.
    reassignments: u64,
}

impl Members {
    fn sized(&mut self, partition_count: u32) {
        if self.holders.len() != partition_count as usize {
            self.assignment = Assignment::unowned(partition_count);
            self.holders = vec![None; partition_count as usize];
            self.delivered = vec![0; partition_count as usize];
        }
    }

    fn join(
        &mut self,
        node_id: String,
        advertise: String,
        offset: Offset,
        at_ms: UnixMillis,
        now_ms: UnixMillis,
    ) {
        let view = MemberView {
            node_id: node_id.clone(),
            advertise,
            join_offset: offset,
            joined_at_ms: at_ms,
            last_heard_ms: now_ms,
            last_said_ms: at_ms,
        };
        // A node that joins again (a restart on its data directory) replaces its earlier run:
        // the member set, and so the assignment, stays as it was.
        if self.members.insert(node_id, view).is_none() {
            self.reassign(offset);
        }
    }

    fn heard(&mut self, node_id: &str, join_offset: Offset, at_ms: UnixMillis, now_ms: UnixMillis) {
        if let Some(member) = self.members.get_mut(node_id)
            && member.join_offset == join_offset
        {
            member.last_heard_ms = member.last_heard_ms.max(now_ms);
            member.last_said_ms = member.last_said_ms.max(at_ms);
        }
    }

    /// The run of `node_id` that joined at `join_offset` left (withdrew or expired).
    fn leave(&mut self, node_id: &str, join_offset: Offset, offset: Offset) {
        if self
            .members
            .get(node_id)
            .is_some_and(|member| member.join_offset == join_offset)
        {
            self.members.remove(node_id);
            self.reassign(offset);
        }
    }

    fn reassign(&mut self, offset: Offset) {
        if self.holders.is_empty() {
            return;
        }
        let ids: BTreeSet<String> = self.members.keys().cloned().collect();
        self.reassignments += self.assignment.reassign(&ids, offset).len() as u64;
    }

    /// Whether `holder` is a run of a member that is still a member.
    fn is_current(&self, holder: &Holder) -> bool {
        self.members
            .get(&holder.node_id)
            .is_some_and(|member| member.join_offset == holder.join_offset)
    }

    /// Whether the member's run at `join_offset` may start `partition` at `epoch`: it is the
    /// owner at that epoch, and nobody else (no current member) holds it.
    fn may_hold(
        &self,
        node_id: &str,
        join_offset: Offset,
        partition: PartitionId,
        epoch: Offset,
    ) -> bool {
        let Some(ownership) = self.assignment.get(partition) else {
            return false;
        };
        if ownership.owner.as_deref() != Some(node_id) || ownership.epoch != epoch {
            return false;
        }
        match &self.holders[partition as usize] {
            None => true,
            Some(holder) if holder.node_id == node_id && holder.join_offset == join_offset => true,
            Some(holder) => !self.is_current(holder),
        }
    }

    fn acquired(
        &mut self,
        node_id: &str,
        join_offset: Offset,
        partitions: &[(PartitionId, Offset)],
    ) {
        for &(partition, epoch) in partitions {
            if (partition as usize) < self.holders.len()
                && self.may_hold(node_id, join_offset, partition, epoch)
            {
                self.holders[partition as usize] = Some(Holder {
                    node_id: node_id.to_owned(),
                    join_offset,
                    epoch,
                });
            }
        }
    }

    fn released(
        &mut self,
        node_id: &str,
        join_offset: Offset,
        partitions: &[(PartitionId, Offset)],
    ) {
        for &(partition, epoch) in partitions {
            let slot = self.holders.get_mut(partition as usize);
            if let Some(slot) = slot
                && slot.as_ref().is_some_and(|h| {
                    h.node_id == node_id && h.join_offset == join_offset && h.epoch == epoch
                })
            {
                *slot = None;
            }
        }
    }

    /// Cursors said by the holder they name (a member that no longer holds a partition, a
    /// node paused past its lease, is not heard on it).
    fn delivered(
        &mut self,
        node_id: &str,
        join_offset: Offset,
        cursors: &[(PartitionId, Offset, Offset)],
    ) {
        for &(partition, epoch, cursor) in cursors {
            let holds = self.holders.get(partition as usize).is_some_and(|holder| {
                holder.as_ref().is_some_and(|h| {
                    h.node_id == node_id && h.join_offset == join_offset && h.epoch == epoch
                })
            });
            if holds {
                let delivered = &mut self.delivered[partition as usize];
                *delivered = (*delivered).max(cursor);
            }
        }
    }

    /// The partitions the run of `node_id` at `join_offset` holds.
    fn held_by(&self, node_id: &str, join_offset: Offset) -> Vec<(PartitionId, Offset)> {
        self.holders
            .iter()
            .enumerate()
            .filter_map(|(partition, holder)| {
                holder
                    .as_ref()
                    .filter(|h| h.node_id == node_id && h.join_offset == join_offset)
                    .map(|h| (partition as PartitionId, h.epoch))
            })
            .collect()
    }
}

/// What a member should do about its partitions, from the topic as folded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnershipPlan {
    /// Held and still assigned to it: keep running (re-acquired at the new epoch if it moved
    /// away and back).
    pub keep: Vec<PartitionId>,
    /// Held but assigned elsewhere now: stop, then release.
    pub release: Vec<(PartitionId, Offset)>,
    /// Assigned to it, and free (or held by a run that is gone): acquire, then start.
    pub acquire: Vec<(PartitionId, Offset)>,
    /// Assigned to it but still held by another live member: wait for its release or expiry.
    pub waiting: Vec<PartitionId>,
}

/// The cluster's assignment as one node sees it, for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct AssignmentView {
    pub members: Vec<MemberView>,
    pub partitions: Vec<PartitionView>,
    /// Partitions that changed owner since this node started folding the topic.
    pub reassignments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    pub partition: PartitionId,
    /// The member it is assigned to, and since which nodes-topic offset (its epoch).
    pub owner: Option<String>,
    pub epoch: Offset,
    /// The member running it now; differs from `owner` during a hand-over.
    pub holder: Option<Holder>,
    /// Notifications below this offset were delivered, as its holders said.
    pub delivered: Offset,
}

/// How a node came to its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `--owns LIST`: a claim of fixed partitions.
    Explicit,
    /// `--owns auto`: a member; the assignment decides.
    Auto { partition_count: u32 },
}

/// This node's membership: its claim (or join), its lease, and the view of every node.
#[derive(Debug)]
pub struct Membership {
    log: Arc<dyn Log>,
    me: NodeAnnouncement,
    mode: Mode,
    /// The offset of this run's claim or join record (a rejoin moves it).
    claim_offset: AtomicU64,
    /// When the last heartbeat that reached the topic was sent, by this node's clock: the lease
    /// counts from there.
    renewed_at_ms: AtomicI64,
    clock: Arc<dyn Clock>,
    folded: tokio::sync::Mutex<()>,
    view: Mutex<Folded>,
}

impl Membership {
    /// Claims `me.owns` on the nodes topic; refuses if a live node claimed any of them first,
    /// or if members of automatic assignment are live on the topic.
    pub async fn join(
        log: Arc<dyn Log>,
        me: NodeAnnouncement,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClusterError> {
        let sent_at_ms = clock.now_ms();
        let claim = NodeRecord::Claim {
            node: me.clone(),
            at_ms: sent_at_ms,
        };
        let claim_offset = append(log.as_ref(), &me.node_id, &claim).await?;
        let membership = Self::new(log, me, Mode::Explicit, claim_offset, sent_at_ms, clock);
        membership.fold(Some(claim_offset + 1)).await?;
        let conflict = membership
            .earlier_live_claim()
            .or_else(|| membership.live_member_of_other_mode());
        if let Some(conflict) = conflict {
            membership.withdraw().await;
            return Err(conflict);
        }
        membership.refresh().await?;
        Ok(membership)
    }

    /// Joins as a member of automatic assignment (`--owns auto`) of a log of
    /// `partition_count` partitions; refuses if a node with explicit `--owns` is live.
    pub async fn join_auto(
        log: Arc<dyn Log>,
        node_id: String,
        advertise: String,
        partition_count: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ClusterError> {
        let sent_at_ms = clock.now_ms();
        let record = NodeRecord::Join {
            node_id: node_id.clone(),
            advertise: advertise.clone(),
            at_ms: sent_at_ms,
        };
        let join_offset = append(log.as_ref(), &node_id, &record).await?;
        let me = NodeAnnouncement {
            node_id,
            owns: Vec::new(),
            advertise,
        };
        let mode = Mode::Auto { partition_count };
        let membership = Self::new(log, me, mode, join_offset, sent_at_ms, clock);
        membership.fold(Some(join_offset + 1)).await?;
        if let Some(conflict) = membership.live_member_of_other_mode() {
            membership.withdraw().await;
            return Err(conflict);
        }
        membership.refresh().await?;
        Ok(membership)
    }

    fn new(
        log: Arc<dyn Log>,
        me: NodeAnnouncement,
        mode: Mode,
        claim_offset: Offset,
        sent_at_ms: UnixMillis,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut folded = Folded {
            next_offset: claim_offset.saturating_sub(JOIN_LOOKBACK_RECORDS),
            ..Folded::default()
        };
        if let Mode::Auto { partition_count } = mode {
            folded.members.sized(partition_count);
        }
        Self {
            log,
            me,
            mode,
            claim_offset: AtomicU64::new(claim_offset),
            renewed_at_ms: AtomicI64::new(sent_at_ms),
            clock,
            folded: tokio::sync::Mutex::new(()),
            view: Mutex::new(folded),
        }
    }

    fn claim_offset(&self) -> Offset {
        self.claim_offset.load(Ordering::Acquire)
    }

    pub fn is_auto(&self) -> bool {
        matches!(self.mode, Mode::Auto { .. })
    }

    /// The first live node, other than this one, that claimed any of this node's partitions
    /// before this node did.
    fn earlier_live_claim(&self) -> Option<ClusterError> {
        let now_ms = self.clock.now_ms();
        let view = self.lock();
        view.nodes
            .values()
            .filter(|other| other.node.node_id != self.me.node_id)
            .filter(|other| other.is_live(now_ms) && other.claim_offset < self.claim_offset())
            .map(|other| (other, other.overlap(&self.me.owns)))
            .find(|(_, overlap)| !overlap.is_empty())
            .map(|(other, partitions)| ClusterError::OwnershipConflict {
                partitions,
                node_id: other.node.node_id.clone(),
                advertise: other.node.advertise.clone(),
                age_ms: now_ms - other.last_seen_ms,
            })
    }

    /// A live node of the other way of owning: explicit claims and automatic members do not
    /// share a topic.
    fn live_member_of_other_mode(&self) -> Option<ClusterError> {
        let now_ms = self.clock.now_ms();
        let view = self.lock();
        let other = match self.mode {
            Mode::Explicit => view
                .members
                .members
                .values()
                .filter(|m| m.node_id != self.me.node_id)
                .find(|m| now_ms - m.last_said_ms < LEASE.as_millis() as i64)
                .map(|m| (m.node_id.clone(), m.advertise.clone(), "--owns auto")),
            Mode::Auto { .. } => view
                .nodes
                .values()
                .filter(|n| n.node.node_id != self.me.node_id)
                .find(|n| n.is_live(now_ms))
                .map(|n| {
                    (
                        n.node.node_id.clone(),
                        n.node.advertise.clone(),
                        "an explicit --owns",
                    )
                }),
        };
        other.map(|(node_id, advertise, runs)| ClusterError::MixedOwnership {
            node_id,
            advertise,
            runs,
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
            let now_ms = self.clock.now_ms();
            let mut view = self.lock();
            for (offset, node_record) in decoded {
                view.apply(offset, node_record, now_ms);
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
            if !overlap.is_empty() && other.claim_offset < self.claim_offset() {
                tracing::error!(
                    node = other.node.node_id,
                    partitions = format_ranges(&overlap),
                    "another live node owns partitions this node runs; restart this node"
                );
            }
        }
    }

    /// Says this node is alive; once the heartbeat is on the topic (and, for a member, the
    /// topic read up to it still has this run as a member) the lease counts from when it was
    /// sent.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let sent_at_ms = self.clock.now_ms();
        let record = match self.mode {
            Mode::Explicit => NodeRecord::Heartbeat {
                node: self.me.clone(),
                claim_offset: self.claim_offset(),
                at_ms: sent_at_ms,
            },
            Mode::Auto { .. } => NodeRecord::MemberHeartbeat {
                node_id: self.me.node_id.clone(),
                join_offset: self.claim_offset(),
                at_ms: sent_at_ms,
            },
        };
        let offset = append(self.log.as_ref(), &self.me.node_id, &record).await?;
        if self.is_auto() {
            // The lease is renewed only if, read up to this heartbeat, this run is still a
            // member: a node paused past its lease sees the others' expiry of it first.
            self.fold(Some(offset + 1)).await?;
            if !self.is_member() {
                return Ok(());
            }
        }
        self.renewed_at_ms.fetch_max(sent_at_ms, Ordering::AcqRel);
        Ok(())
    }

    /// Whether this node may still act for its partitions: its last heartbeat on the topic was
    /// sent less than [`FENCE_AFTER`] ago, so no other node can have found its lease run out
    /// ([`LEASE`], counted from when that heartbeat was read). Checked before anything leaves
    /// the node on a partition's behalf: results, notifications.
    pub fn holds_lease(&self) -> bool {
        let renewed = self.renewed_at_ms.load(Ordering::Acquire);
        self.clock.now_ms() - renewed < FENCE_AFTER.as_millis() as i64
    }

    /// Since this node's last heartbeat reached the topic (by when it was sent).
    pub fn renewed_ms_ago(&self) -> i64 {
        self.clock.now_ms() - self.renewed_at_ms.load(Ordering::Acquire)
    }

    /// Whether the topic, as folded, still has this run as a member (automatic assignment): a
    /// member whose lease others found run out is not, and must join again.
    pub fn is_member(&self) -> bool {
        match self.mode {
            Mode::Explicit => true,
            Mode::Auto { .. } => self
                .lock()
                .members
                .members
                .get(&self.me.node_id)
                .is_some_and(|m| m.join_offset == self.claim_offset()),
        }
    }

    /// Joins again after this run was expired (automatic assignment): a new join record, so a
    /// new run with nothing held.
    pub async fn rejoin(&self) -> Result<(), ClusterError> {
        let sent_at_ms = self.clock.now_ms();
        let record = NodeRecord::Join {
            node_id: self.me.node_id.clone(),
            advertise: self.me.advertise.clone(),
            at_ms: sent_at_ms,
        };
        let join_offset = append(self.log.as_ref(), &self.me.node_id, &record).await?;
        self.claim_offset.store(join_offset, Ordering::Release);
        self.renewed_at_ms.fetch_max(sent_at_ms, Ordering::AcqRel);
        self.fold(Some(join_offset + 1)).await
    }

    /// Says that every member this node has not heard from for [`LEASE`] is gone, so its
    /// partitions move. Only a node that holds its own lease does this (a node that was
    /// paused has not read the others' heartbeats). Returns the members expired.
    pub async fn expire_silent_members(&self) -> Result<Vec<String>, ClusterError> {
        if !self.is_auto() || !self.holds_lease() {
            return Ok(Vec::new());
        }
        let now_ms = self.clock.now_ms();
        let silent: Vec<(String, Offset)> = self
            .lock()
            .members
            .members
            .values()
            .filter(|m| m.node_id != self.me.node_id)
            .filter(|m| now_ms - m.last_heard_ms >= LEASE.as_millis() as i64)
            .map(|m| (m.node_id.clone(), m.join_offset))
            .collect();
        for (node_id, join_offset) in &silent {
            let record = NodeRecord::Expired {
                node_id: node_id.clone(),
                join_offset: *join_offset,
                by: self.me.node_id.clone(),
                at_ms: now_ms,
            };
            append(self.log.as_ref(), &self.me.node_id, &record).await?;
            tracing::warn!(
                node = node_id,
                "a member's lease ran out; its partitions move"
            );
        }
        if !silent.is_empty() {
            self.fold(None).await?;
        }
        Ok(silent.into_iter().map(|(node_id, _)| node_id).collect())
    }

    /// What this member should do about its partitions now (automatic assignment).
    pub fn plan(&self) -> OwnershipPlan {
        let join_offset = self.claim_offset();
        let me = self.me.node_id.as_str();
        let view = self.lock();
        let members = &view.members;
        let mut plan = OwnershipPlan::default();
        let held = members.held_by(me, join_offset);
        for &(partition, epoch) in &held {
            match members.assignment.get(partition) {
                Some(o) if o.owner.as_deref() == Some(me) => {
                    plan.keep.push(partition);
                    if o.epoch != epoch {
                        plan.acquire.push((partition, o.epoch));
                    }
                }
                _ => plan.release.push((partition, epoch)),
            }
        }
        for ownership in members.assignment.partitions() {
            let partition = ownership.partition;
            if ownership.owner.as_deref() != Some(me) || held.iter().any(|(p, _)| *p == partition) {
                continue;
            }
            if members.may_hold(me, join_offset, partition, ownership.epoch) {
                plan.acquire.push((partition, ownership.epoch));
            } else {
                plan.waiting.push(partition);
            }
        }
        plan
    }

    /// Records that this member runs `partitions` (each at its epoch) and reads that back:
    /// returns the ones it now holds. One the topic gave to another member meanwhile is not
    /// among them.
    pub async fn acquire(
        &self,
        partitions: &[(PartitionId, Offset)],
    ) -> Result<Vec<PartitionId>, ClusterError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let join_offset = self.claim_offset();
        let record = NodeRecord::Acquired {
            node_id: self.me.node_id.clone(),
            join_offset,
            partitions: partitions.to_vec(),
        };
        let offset = append(self.log.as_ref(), &self.me.node_id, &record).await?;
        self.fold(Some(offset + 1)).await?;
        let held = self.lock().members.held_by(&self.me.node_id, join_offset);
        Ok(partitions
            .iter()
            .map(|(partition, _)| *partition)
            .filter(|p| held.iter().any(|(h, _)| h == p))
            .collect())
    }

    /// Says how far this member delivered notifications of partitions it holds: `(partition,
    /// epoch, cursor)`.
    pub async fn delivered(
        &self,
        cursors: &[(PartitionId, Offset, Offset)],
    ) -> Result<(), ClusterError> {
        if cursors.is_empty() {
            return Ok(());
        }
        let record = NodeRecord::Delivered {
            node_id: self.me.node_id.clone(),
            join_offset: self.claim_offset(),
            cursors: cursors.to_vec(),
        };
        let offset = append(self.log.as_ref(), &self.me.node_id, &record).await?;
        self.fold(Some(offset + 1)).await
    }

    /// Members of the automatic assignment, as folded.
    pub fn member_count(&self) -> u32 {
        u32::try_from(self.lock().members.members.len()).unwrap_or(u32::MAX)
    }

    /// The partitions this run holds, each with the epoch it holds it at.
    pub fn held(&self) -> Vec<(PartitionId, Offset)> {
        self.lock()
            .members
            .held_by(&self.me.node_id, self.claim_offset())
    }

    /// How far `partition`'s notifications were delivered, as its holders said.
    pub fn delivered_cursor(&self, partition: PartitionId) -> Offset {
        self.lock()
            .members
            .delivered
            .get(partition as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Records that this member stopped running `partitions` (their last checkpoints committed
    /// and results published), so their new owners may start.
    pub async fn release(&self, partitions: &[(PartitionId, Offset)]) -> Result<(), ClusterError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let record = NodeRecord::Released {
            node_id: self.me.node_id.clone(),
            join_offset: self.claim_offset(),
            partitions: partitions.to_vec(),
        };
        let offset = append(self.log.as_ref(), &self.me.node_id, &record).await?;
        self.fold(Some(offset + 1)).await
    }

    /// Gives this node's partitions up at once (best effort: failing, they are given up when the
    /// lease runs out).
    pub async fn withdraw(&self) {
        let record = NodeRecord::Withdrawn {
            node_id: self.me.node_id.clone(),
            claim_offset: self.claim_offset(),
            at_ms: self.clock.now_ms(),
        };
        if let Err(error) = append(self.log.as_ref(), &self.me.node_id, &record).await {
            tracing::warn!(%error, "could not withdraw from the nodes topic; the lease runs out instead");
        }
    }

    /// Every live node, this one included, by id; members of automatic assignment with the
    /// partitions they are assigned.
    pub fn live_nodes(&self) -> Vec<NodeView> {
        let now_ms = self.clock.now_ms();
        let view = self.lock();
        let mut live: Vec<NodeView> = view
            .nodes
            .values()
            .filter(|node| node.node.node_id == self.me.node_id || node.is_live(now_ms))
            .filter(|node| !(self.is_auto() && node.node.node_id == self.me.node_id))
            .cloned()
            .collect();
        live.extend(view.members.members.values().map(|member| NodeView {
            node: NodeAnnouncement {
                node_id: member.node_id.clone(),
                owns: view.members.assignment.owned_by(&member.node_id),
                advertise: member.advertise.clone(),
            },
            claim_offset: member.join_offset,
            last_seen_ms: member.last_heard_ms,
            withdrawn: false,
        }));
        if !live.iter().any(|n| n.node.node_id == self.me.node_id) {
            live.push(NodeView {
                node: self.me.clone(),
                claim_offset: self.claim_offset(),
                last_seen_ms: now_ms,
                withdrawn: false,
            });
        }
        live.sort_by(|a, b| a.node.node_id.cmp(&b.node.node_id));
        live
    }

    /// The live node other than this one that runs `partition` (automatic assignment: its
    /// holder, else the member it is assigned to; explicit: the earliest claim). `None` when
    /// this node runs it, or nobody does.
    pub fn remote_owner(&self, partition: PartitionId) -> Option<NodeView> {
        if self.is_auto() {
            return self.remote_member(partition);
        }
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

    fn remote_member(&self, partition: PartitionId) -> Option<NodeView> {
        let view = self.lock();
        let members = &view.members;
        let holder = members.holders.get(partition as usize)?.as_ref();
        let runner = match holder {
            Some(h) if members.is_current(h) => Some(h.node_id.clone()),
            _ => members.assignment.get(partition)?.owner.clone(),
        }?;
        if runner == self.me.node_id {
            return None;
        }
        let member = members.members.get(&runner)?;
        Some(NodeView {
            node: NodeAnnouncement {
                node_id: member.node_id.clone(),
                owns: members.assignment.owned_by(&member.node_id),
                advertise: member.advertise.clone(),
            },
            claim_offset: member.join_offset,
            last_seen_ms: member.last_heard_ms,
            withdrawn: false,
        })
    }

    /// The assignment, its epochs and holders, and the members with when each was last heard.
    pub fn assignment_view(&self) -> AssignmentView {
        let view = self.lock();
        let members = &view.members;
        AssignmentView {
            members: members.members.values().cloned().collect(),
            partitions: members
                .assignment
                .partitions()
                .iter()
                .map(|o| PartitionView {
                    partition: o.partition,
                    owner: o.owner.clone(),
                    epoch: o.epoch,
                    holder: members.holders[o.partition as usize].clone(),
                    delivered: members.delivered[o.partition as usize],
                })
                .collect(),
            reassignments: members.reassignments,
        }
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

    async fn member(log: &Arc<dyn Log>, id: &str, clock: &Arc<ManualClock>) -> Membership {
        Membership::join_auto(
            Arc::clone(log),
            id.into(),
            format!("http://{id}"),
            16,
            clock.clone(),
        )
        .await
        .unwrap()
    }

    /// Acquires what the plan says and returns what the member holds then.
    async fn take_up(member: &Membership) -> Vec<PartitionId> {
        member.refresh().await.unwrap();
        let plan = member.plan();
        let mut running = plan.keep.clone();
        running.extend(member.acquire(&plan.acquire).await.unwrap());
        running.sort_unstable();
        running.dedup();
        running
    }

    #[tokio::test]
    async fn members_agree_and_a_silent_members_partitions_move_to_the_others_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = member(&log, "a", &clock).await;
        let b = member(&log, "b", &clock).await;
        let c = member(&log, "c", &clock).await;
        let mut runs = Vec::new();
        for m in [&a, &b, &c] {
            runs.push(take_up(m).await);
        }
        // Every partition is run by exactly one member, and every member sees the same.
        let mut all: Vec<PartitionId> = runs.concat();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        a.refresh().await.unwrap();
        let seen_by_a = a.assignment_view().partitions;
        c.refresh().await.unwrap();
        let seen_by_c = c.assignment_view().partitions;
        assert_eq!(
            format!("{seen_by_a:?}"),
            format!("{seen_by_c:?}"),
            "two members folding one topic agree"
        );

        // b goes silent (killed): a and c heartbeat, and once b's lease has run out as they
        // read it, one of them expires it.
        clock.advance(LEASE.as_millis() as i64 / 2);
        a.heartbeat().await.unwrap();
        c.heartbeat().await.unwrap();
        a.refresh().await.unwrap();
        assert!(
            a.expire_silent_members().await.unwrap().is_empty(),
            "not yet"
        );
        clock.advance(LEASE.as_millis() as i64 / 2 + 1);
        a.heartbeat().await.unwrap();
        c.heartbeat().await.unwrap();
        a.refresh().await.unwrap();
        assert_eq!(
            a.expire_silent_members().await.unwrap(),
            vec!["b".to_owned()]
        );
        let a_after = take_up(&a).await;
        let c_after = take_up(&c).await;
        let mut moved: Vec<PartitionId> = a_after
            .iter()
            .chain(&c_after)
            .copied()
            .filter(|p| !runs[0].contains(p) && !runs[2].contains(p))
            .collect();
        moved.sort_unstable();
        assert_eq!(moved, runs[1], "exactly b's partitions moved");
        assert!(
            runs[0].iter().all(|p| a_after.contains(p)),
            "a kept its own"
        );
        assert!(
            runs[2].iter().all(|p| c_after.contains(p)),
            "c kept its own"
        );
        assert_eq!(a_after.len() + c_after.len(), 16);
        // Their epochs are the offset of the expiry.
        let view = a.assignment_view();
        let epochs: BTreeSet<Offset> = view
            .partitions
            .iter()
            .filter(|p| runs[1].contains(&p.partition))
            .map(|p| p.epoch)
            .collect();
        assert_eq!(epochs.len(), 1);
        assert!(view.reassignments >= 16 + runs[1].len() as u64);

        // b was paused, not dead: it wakes to find it no longer holds its lease nor is a member.
        assert!(!b.holds_lease());
        b.refresh().await.unwrap();
        assert!(!b.is_member());
        assert!(b.plan().keep.is_empty() && b.plan().release.is_empty());
        // It joins again as a new run and takes its partitions back once a and c release them.
        b.rejoin().await.unwrap();
        b.heartbeat().await.unwrap();
        assert!(b.holds_lease() && b.is_member());
        let waiting = b.plan();
        assert!(waiting.acquire.is_empty(), "a and c still hold them");
        assert_eq!(waiting.waiting, runs[1]);
        for m in [&a, &c] {
            m.refresh().await.unwrap();
            let plan = m.plan();
            assert!(!plan.release.is_empty());
            m.release(&plan.release).await.unwrap();
        }
        assert_eq!(take_up(&b).await, runs[1]);
    }

    #[tokio::test]
    async fn a_member_cannot_take_a_partition_given_elsewhere_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = member(&log, "a", &clock).await;
        let stale_plan = a.plan();
        assert_eq!(stale_plan.acquire.len(), 16);
        // b joins before a's acquire lands: b's partitions are no longer a's to take.
        let b = member(&log, "b", &clock).await;
        let held = a.acquire(&stale_plan.acquire).await.unwrap();
        b.refresh().await.unwrap();
        let b_owns = b
            .assignment_view()
            .partitions
            .iter()
            .filter(|p| p.owner.as_deref() == Some("b"))
            .count();
        assert_eq!(held.len(), 16 - b_owns);
        assert_eq!(take_up(&b).await.len(), b_owns, "free for b at once");
    }

    #[tokio::test]
    async fn a_delivery_cursor_is_heard_only_from_the_partitions_holder_at_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = member(&log, "a", &clock).await;
        let held = take_up(&a).await;
        let epoch = a.held()[0].1;
        a.delivered(&[(held[0], epoch, 7)]).await.unwrap();
        assert_eq!(a.delivered_cursor(held[0]), 7);
        // A stale epoch, and a member that does not hold the partition, are not heard.
        a.delivered(&[(held[0], epoch + 1, 50)]).await.unwrap();
        let b = member(&log, "b", &clock).await;
        b.delivered(&[(held[0], epoch, 60)]).await.unwrap();
        a.refresh().await.unwrap();
        assert_eq!(a.delivered_cursor(held[0]), 7);
        // A cursor never moves back.
        a.delivered(&[(held[0], epoch, 3)]).await.unwrap();
        assert_eq!(a.delivered_cursor(held[0]), 7);
    }

    #[tokio::test]
    async fn explicit_and_automatic_nodes_do_not_share_a_topic() {
        let dir = tempfile::tempdir().unwrap();
        let log = nodes_topic(dir.path());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let _a = member(&log, "a", &clock).await;
        let refused = Membership::join(Arc::clone(&log), node("x", &[0]), clock.clone()).await;
        assert!(
            matches!(refused, Err(ClusterError::MixedOwnership { ref node_id, .. }) if node_id == "a"),
            "{refused:?}"
        );
    }
}
