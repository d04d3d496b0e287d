//! What the stages share, and nothing of the data flow itself.
//!
//! - [`backoff`]: the doubling pause with which followers wait out a log that does not answer.
//! - [`clock`]: the injectable clock.
//! - [`codec`]: the one encoding of checkpointed state and versioned records.
//! - `directory_lock`: one process per state or log directory.
//! - [`storage`]: the file interface the log and checkpoints write through, and a simulated
//!   disk that tears unsynced writes at a crash, for tests.
//! - [`write_ahead`]: the shared file whose one sync makes a round of appends to many files
//!   durable.

pub mod backoff;
pub mod clock;
pub mod codec;
pub(crate) mod directory_lock;
pub mod storage;
pub mod write_ahead;
