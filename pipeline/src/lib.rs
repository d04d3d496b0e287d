//! # tally-pipeline
//!
//! The core of tally: what a donation is, the log that records it, and (with the stream
//! operators) what is computed from that log. It knows nothing of HTTP; `tally-ingest` and
//! `tally-query` build on it, never the other way round.
//!
//! # Layout
//! The stages, in the order a donation passes them:
//! - [`event`]: the [`DonationEvent`](event::DonationEvent), its validation from JSON input, and
//!   its versioned binary envelope (the bytes stored in the log).
//! - [`log`]: the partitioned, keyed, append-only log that is the record of truth. The
//!   [`Log`](log::Log) trait is the interface; [`EmbeddedLog`](log::EmbeddedLog) is the default
//!   backend: segment files in one directory, group-committed with `fdatasync`.
//! - [`operators`]: the stream operators (dedupe, totals, windows, watermark, conflicts), and
//!   [`processor`]: one partition's state, how a record changes it, and its digest;
//!   [`runner`]: one thread per partition from the log through the operators to checkpoints.
//! - [`checkpoint`]: committing state and offsets together; savepoints; verifying a
//!   checkpoint against the log.
//! - [`read_model`]: what queries see — committed totals and buckets of every partition.
//! - [`export`]: a campaign's ledger — its recorded donations and the refunds applied to them,
//!   in log order, adding up to its totals.
//! - [`outbox`]: the notifications donors are owed — each partition's recorded donations in
//!   log order, with a delivery cursor per partition.
//!
//! Beside them, [`control`], the control plane: [`campaigns`] (definitions, closes and their
//! reconciliation, on a control log of their own) and [`cluster`] (partition ownership,
//! membership and the results topic, for several nodes on one shared log). And [`support`],
//! what the stages share: the [`backoff`](support::backoff) of followers, the injectable
//! [`clock`], the [`codec`](support::codec) of checkpointed state, the [`storage`] interface
//! (with a simulated disk that tears unsynced writes at a crash) and the directory lock.
//!
//! # Data flow
//! A validated event is encoded into its envelope and appended under its `payment_ref` key; the
//! [`Partitioner`](log::Partitioner) sends every retry of one payment to one partition. An append
//! is acknowledged only once the record is durable; readers see durable records only. Each
//! partition's runner applies records in order, commits a checkpoint (state and next offset in
//! one step) every few milliseconds, and publishes what it committed to the read model.

pub mod checkpoint;
pub mod control;
pub mod event;
pub mod export;
pub mod log;
pub mod operators;
pub mod outbox;
pub mod processor;
pub mod read_model;
pub mod runner;
pub mod support;

// The paths other crates use.
pub use control::{campaigns, cluster};
pub use support::{clock, storage};
