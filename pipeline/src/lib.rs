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
//! - [`clock`]: the injectable wall clock.
//!
//! # Data flow
//! A validated event is encoded into its envelope and appended under its `payment_ref` key; the
//! [`Partitioner`](log::Partitioner) sends every retry of one payment to one partition. An append
//! is acknowledged only once the record is durable; readers see durable records only.

pub mod campaigns;
pub mod checkpoint;
pub mod clock;
pub mod codec;
mod directory_lock;
pub mod event;
pub mod log;
pub mod operators;
pub mod processor;
pub mod read_model;
pub mod reconcile;
pub mod runner;
