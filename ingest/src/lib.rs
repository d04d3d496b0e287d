//! # tally-ingest
//!
//! The HTTP side that takes payment callbacks and appends them, durably, to the donation log
//! owned by `tally-pipeline`. It validates and authenticates each callback, answers only after
//! the event is on disk, and never decides totals: that is the pipeline's job.
//!
//! Donations enter through these routes (`tally serve`) or, for backfills, `tally import`.
//!
//! - [`routes`]: `POST /v1/donations` and `POST /v1/donations/batch`.
//! - [`refunds`]: `POST /v1/refunds` and `POST /v1/refunds/batch`: refunds and chargebacks.
//! - [`body`]: how a JSON body is read (type, encoding, size; in a bounded slot, within a
//!   timeout, before authentication) and parsed (no key twice).
//! - [`error`]: ingest's errors (bodies, the rate limit) as the API's one error type.
//! - [`rate_limit`]: per-user token buckets in bounded memory, answering how long to wait.
//!
//! The contract these routes keep (the error shape, the `Tally-Signature` scheme, the JSON
//! answers, the look-up on the node that runs a partition) is `tally-api`'s.

pub mod body;
pub mod error;
pub mod rate_limit;
pub mod refunds;
pub mod routes;
