//! Several tally nodes on one shared log: who owns which partitions, and how every node sees
//! the results of partitions it does not own.
//!
//! Every node takes donations for every partition (ingest appends to the shared log), but runs
//! the pipeline only for the partitions it owns. Three small topics beside the donation topic
//! tie the nodes together:
//!
//! ```text
//! <topic>            donations (the record of truth), P partitions
//! <topic>-campaigns  campaign definitions and closes (crate::control::campaigns), 1 partition
//! <topic>-nodes      claims, heartbeats and withdrawals of nodes (membership), 1 partition
//! <topic>-results    each owner's committed per-partition results (results), 1 partition
//! <topic>-state      each owner's partition state snapshots (state_snapshots), P partitions
//! ```
//!
//! - [`partition_set`]: the partitions a node owns (`--owns 0-3`).
//! - [`membership`]: joining with a claim, refusing a claim that overlaps a live node's, the
//!   lease kept alive by heartbeats, and the view of live nodes; with `--owns auto`, members
//!   that expire a silent member and acquire and release partitions at epochs.
//! - [`state_snapshots`]: owners publish their partitions' state, so a new owner restores it
//!   instead of replaying the log from offset 0.
//! - [`assignment`]: which member runs each partition, by rendezvous hashing over the members
//!   in the topic's order.
//! - [`results`]: owners publish what they committed as absolute values with the offset they
//!   reflect; every node folds them into its read model, so any node answers any query.

pub mod assignment;
pub mod membership;
pub mod partition_set;
pub mod results;
pub mod state_snapshots;

pub use membership::{
    AssignmentView, ClusterError, Membership, NodeAnnouncement, NodeView, OwnershipPlan,
};
pub use partition_set::{PartitionSet, PartitionSetError};
pub use results::{ResultsPublisher, catch_up_results, follow_results};

/// Whether this node may act for its partitions (publish results, deliver notifications):
/// false once its lease may have run out elsewhere. See [`Membership::holds_lease`].
pub trait Fence: Send + Sync + std::fmt::Debug {
    fn holds(&self) -> bool;
}

impl Fence for Membership {
    fn holds(&self) -> bool {
        self.holds_lease() && self.is_member()
    }
}

/// The names of the topics that go with a donation topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanionTopics {
    pub campaigns: String,
    pub nodes: String,
    pub results: String,
    pub state: String,
}

/// The longest suffix a companion topic adds to the donation topic's name.
pub const COMPANION_SUFFIX_BYTES_MAX: usize = "-campaigns".len();

impl CompanionTopics {
    pub fn of(topic: &str) -> Self {
        Self {
            campaigns: format!("{topic}-campaigns"),
            nodes: format!("{topic}-nodes"),
            results: format!("{topic}-results"),
            state: format!("{topic}-state"),
        }
    }
}
