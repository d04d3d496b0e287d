//! # tally-pipeline
//!
//! The core of tally: what a donation is, the log that records it, and (with the stream
//! operators) what is computed from that log. It knows nothing of HTTP; `tally-ingest` and
//! `tally-query` build on it, never the other way round.
//!
//! # Layout
//! - [`event`]: the [`DonationEvent`](event::DonationEvent), its validation from JSON input, and
//!   its versioned binary envelope (the bytes stored in the log).
//! - [`log`]: the partitioned, keyed, append-only log that is the record of truth. The
//!   [`Log`](log::Log) trait is the interface; [`EmbeddedLog`](log::EmbeddedLog) is the default
//!   backend: segment files in one directory, group-committed with `fdatasync`.
//! - [`operators`]: the stream operators (dedupe, totals, windows, watermark, outbox, conflicts).
//! - [`processor`]: one partition's state, how a record changes it, and its digest.
//! - [`checkpoint`]: committing state and offsets together; savepoints.
//! - [`runner`]: one thread per partition from the log through the operators to checkpoints.
//! - [`read_model`]: what queries see — committed totals and buckets of every partition.
//! - [`campaigns`]: campaign definitions (checked once for every way in), closes and their
//!   reconciliation (a campaign's total recomputed from the donation records), on a control log
//!   of their own.
//! - [`cluster`]: several nodes on one shared log: partition ownership, membership, and the
//!   results topic through which every node sees every partition's results.
//! - [`clock`], [`codec`]: the injectable clock; the one encoding of checkpointed state.
//! - [`storage`]: the file interface the log and checkpoints write through, and a simulated
//!   disk that tears unsynced writes at a crash, for tests.
//! - [`backoff`]: the doubling pause with which followers wait out a log that does not answer.
//!
//! # Data flow
//! A validated event is encoded into its envelope and appended under its `payment_ref` key; the
//! [`Partitioner`](log::Partitioner) sends every retry of one payment to one partition. An append
//! is acknowledged only once the record is durable; readers see durable records only. Each
//! partition's runner applies records in order, commits a checkpoint (state and next offset in
//! one step) every few milliseconds, and publishes what it committed to the read model.

pub mod backoff;
pub mod campaigns;
pub mod checkpoint;
pub mod clock;
pub mod cluster;
pub mod codec;
mod directory_lock;
pub mod event;
pub mod log;
pub mod operators;
pub mod processor;
pub mod read_model;
pub mod runner;
pub mod storage;
