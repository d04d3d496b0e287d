//! Applies log records to one partition's operators, deterministically.
//!
//! - [`partition_state`]: every operator's state for one partition, and `apply`.
//! - [`digest`]: the order-independent digest of that state.

pub mod digest;
pub mod partition_state;

pub use digest::StateDigest;
pub use partition_state::{
    Outcome, PartitionCounters, PartitionState, RecordedEvents, StateChanges,
};
