//! # tally-query
//!
//! The HTTP side that serves campaign totals and time-range statistics from the read model the
//! `tally-pipeline` operators publish to, and looks recorded donations up. It reads; it never
//! writes donations. Errors use the API's one error type, [`tally_api::ApiError`], and the answers
//! are the contract's JSON views ([`tally_api::views`]), built here from the state.
//!
//! - [`routes`]: `GET /v1/campaigns`, `/v1/campaigns/{id}`, `/v1/campaigns/{id}/stats`,
//!   `/v1/campaigns/{id}/live` (Server-Sent Events) and `/v1/donations/{payment_ref}`.
//! - [`slots`]: the bounded query slots statistics are computed in, on the blocking pool, so
//!   queries never take the workers that take donations.
//! - [`views`]: those routes' answers built from campaigns, totals, statistics and events.

pub mod routes;
pub mod slots;
pub mod views;
