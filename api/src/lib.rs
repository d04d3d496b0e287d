//! # tally-api
//!
//! tally's public HTTP contract, as `docs/api.md` describes it: what the server writes and
//! clients (the payment system, the load generator, other nodes) read. It owns the shapes, not
//! the state: nothing here reads the log or the read model, and the crate depends on no other
//! tally crate unless the `server` feature is on.
//!
//! - [`error`]: the one error type, [`ApiError`], and its JSON shape
//!   `{"error":{"code","message","field"}}` with stable codes and `Retry-After`.
//! - [`signature`]: the `Tally-Signature` header: the shared secret, signing and checking.
//! - [`views`]: the JSON bodies of successful answers (acceptances, totals, statistics,
//!   recorded donations).
//!
//! With the `server` feature (the server crates enable it; clients do not, and so build no
//! axum):
//!
//! - `server`: [`ApiError`] as an axum response, and `PathParameter`.
//! - `pipeline_errors`: the pipeline's errors mapped to [`ApiError`], each in one place.
//! - `remote`: a donation look-up asked of the node that runs its partition, and that node's
//!   answer read back in the API's shapes.

pub mod error;
#[cfg(feature = "server")]
pub mod pipeline_errors;
#[cfg(feature = "server")]
pub mod remote;
#[cfg(feature = "server")]
pub mod server;
pub mod signature;
pub mod views;

pub use error::{ApiError, ErrorBody, ErrorDetail};
