//! The audit record of a conflicting resend: same `payment_ref`, different money facts.

use serde::{Deserialize, Serialize};

use super::dedupe::FieldDifference;
use crate::log::{Offset, PartitionId};

/// A resend of a recorded `payment_ref` that differs in amount, campaign, currency, order or
/// user. It is not counted; it is kept here for people to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub payment_ref: String,
    pub partition: PartitionId,
    /// Where the recorded (first) event sits in the log.
    pub recorded_offset: Offset,
    /// Where the conflicting event sits in the log.
    pub conflicting_offset: Offset,
    pub differences: Vec<FieldDifference>,
}
