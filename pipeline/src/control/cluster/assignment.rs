//! Automatic assignment: which member runs each partition, agreed from the nodes topic alone.
//!
//! Every node folds the same topic in the same order, so every node computes the same
//! [`Assignment`] after each record. Partition `p` goes to the member with the highest
//! rendezvous score `score(p, node_id)` (highest random weight hashing): when a member leaves,
//! only its partitions move, each to the member that scored next; when one joins, it takes
//! only the partitions it now scores highest on. The score is a fixed hash of the partition and
//! the node's id, the same on every build and machine.
//!
//! Each partition's **epoch** is the nodes-topic offset of the record that gave it its current
//! owner: it only grows, and two owners of one partition at different times always have
//! different epochs.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::log::{Offset, PartitionId};

/// A partition's owner under an assignment, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ownership {
    pub partition: PartitionId,
    /// `None` while there is no member at all.
    pub owner: Option<String>,
    /// The nodes-topic offset of the record that made `owner` the owner.
    pub epoch: Offset,
}

/// Every partition's owner and epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    partitions: Vec<Ownership>,
}

impl Assignment {
    /// No owner for any of `partition_count` partitions, at epoch 0.
    pub fn unowned(partition_count: u32) -> Self {
        Self {
            partitions: (0..partition_count)
                .map(|partition| Ownership {
                    partition,
                    owner: None,
                    epoch: 0,
                })
                .collect(),
        }
    }

    /// The members changed at nodes-topic offset `at`: each partition goes to its highest
    /// scoring member, and a partition whose owner changed takes `at` as its epoch. Returns the
    /// partitions that moved.
    pub fn reassign(&mut self, members: &BTreeSet<String>, at: Offset) -> Vec<PartitionId> {
        let mut moved = Vec::new();
        for ownership in &mut self.partitions {
            let owner = owner_of(ownership.partition, members);
            if owner != ownership.owner {
                debug_assert!(at >= ownership.epoch, "epochs only grow");
                ownership.owner = owner;
                ownership.epoch = at;
                moved.push(ownership.partition);
            }
        }
        moved
    }

    pub fn get(&self, partition: PartitionId) -> Option<&Ownership> {
        self.partitions.get(partition as usize)
    }

    pub fn partitions(&self) -> &[Ownership] {
        &self.partitions
    }

    /// The partitions `node_id` owns, in order.
    pub fn owned_by(&self, node_id: &str) -> Vec<PartitionId> {
        self.partitions
            .iter()
            .filter(|o| o.owner.as_deref() == Some(node_id))
            .map(|o| o.partition)
            .collect()
    }
}

/// The member that runs `partition`: the highest score, ties (never seen in practice) to the
/// smaller id.
pub fn owner_of(partition: PartitionId, members: &BTreeSet<String>) -> Option<String> {
    members
        .iter()
        .max_by(|a, b| {
            score(partition, a)
                .cmp(&score(partition, b))
                .then_with(|| b.cmp(a))
        })
        .cloned()
}

/// The rendezvous score of a member for a partition: FNV-1a over the id and the partition,
/// then a 64-bit finalizer so that scores of similar ids spread.
fn score(partition: PartitionId, node_id: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for byte in node_id.bytes().chain(partition.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    mix(hash)
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn the_score_is_fixed_across_builds() {
        // Every node of a cluster must compute the same owners: pinned values.
        assert_eq!(score(0, "a"), score(0, "a"));
        assert_ne!(score(0, "a"), score(1, "a"));
        assert_eq!(score(3, "node-1"), 0xafa5_b3e3_355e_0541);
    }

    #[test]
    fn only_a_leaving_members_partitions_move() {
        let mut assignment = Assignment::unowned(64);
        let three = members(&["a", "b", "c"]);
        assert_eq!(assignment.reassign(&three, 1).len(), 64);
        let before = assignment.clone();
        for id in ["a", "b", "c"] {
            assert!(
                !before.owned_by(id).is_empty(),
                "{id} owns some of 64 partitions"
            );
        }
        let moved = assignment.reassign(&members(&["a", "c"]), 7);
        assert_eq!(moved, before.owned_by("b"), "exactly b's partitions move");
        for ownership in assignment.partitions() {
            let old = before.get(ownership.partition).unwrap();
            if moved.contains(&ownership.partition) {
                assert_eq!(ownership.epoch, 7);
                assert_ne!(ownership.owner.as_deref(), Some("b"));
            } else {
                assert_eq!(ownership, old, "an unmoved partition keeps owner and epoch");
            }
        }
        // b comes back: it takes back exactly what it had.
        let moved_back = assignment.reassign(&three, 9);
        assert_eq!(moved_back, before.owned_by("b"));
        assert_eq!(assignment.owned_by("b"), before.owned_by("b"));
        assert!(
            assignment
                .partitions()
                .iter()
                .filter(|o| moved_back.contains(&o.partition))
                .all(|o| o.epoch == 9)
        );
    }

    #[test]
    fn no_members_owns_nothing_and_one_member_owns_everything() {
        let mut assignment = Assignment::unowned(4);
        assert!(assignment.reassign(&BTreeSet::new(), 0).is_empty());
        assert!(assignment.partitions().iter().all(|o| o.owner.is_none()));
        assignment.reassign(&members(&["solo"]), 3);
        assert_eq!(assignment.owned_by("solo"), vec![0, 1, 2, 3]);
        assignment.reassign(&BTreeSet::new(), 5);
        assert!(assignment.owned_by("solo").is_empty());
        assert!(assignment.partitions().iter().all(|o| o.epoch == 5));
    }
}
