//! The notification outbox: one entry per newly recorded donation, committed in the same atomic
//! step as the state that recorded it.
//!
//! An entry is the log position of the recorded event (partition, offset); the donor, amount and
//! campaign are read from the log when the notification is delivered, so the outbox costs eight
//! bytes per donation. In the checkpoint the entries travel inside the checkpoint journal (a
//! `Recorded` change is exactly "this donation was recorded, notify its donor"), in commit order.

use serde::{Deserialize, Serialize};

use crate::log::{Offset, PartitionId};

/// A donation whose donor is owed one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub partition: PartitionId,
    pub offset: Offset,
}
