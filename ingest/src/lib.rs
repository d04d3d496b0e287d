//! # tally-ingest
//!
//! The HTTP side that takes payment callbacks and appends them, durably, to the donation log
//! owned by `tally-pipeline`. It validates and authenticates each callback, answers only after
//! the event is on disk, and never decides totals: that is the pipeline's job.
//!
//! Donations enter through these routes (`tally serve`) or, for backfills, `tally import`.
//!
//! - [`routes`]: `POST /v1/donations` and `POST /v1/donations/batch`.
//! - [`body`]: how a JSON body is read (type, encoding, size; in a bounded slot, within a
//!   timeout, before authentication) and parsed (no key twice).
//! - [`error`]: the API's one error type and its JSON shape, shared with the query side.
//! - [`signature`]: the `Tally-Signature` header, HMAC-SHA256 signing and replay-safe checking
//!   of callbacks.
//! - [`rate_limit`]: per-user token buckets in bounded memory, answering how long to wait.
//! - [`remote`]: donations in partitions another node runs, asked of that node.

pub mod body;
pub mod error;
pub mod rate_limit;
pub mod remote;
pub mod routes;
pub mod signature;
