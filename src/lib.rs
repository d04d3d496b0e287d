//! tally's server, as a library: one process that takes payment callbacks over HTTP, appends
//! them to the durable donation log, runs the pipeline over it, and serves totals, statistics
//! and donor notifications. The `tally` binary parses its flags into a [`ServerConfig`] and
//! calls [`run`]; tests call [`run`] the same way on a listener of their own, with a clock of
//! their own.
//!
//! # Layout
//!
//! - [`run`], [`ServerConfig`], [`bind`]: start a server on a bound listener until a shutdown
//!   future resolves. `server/` holds the steps: `logs` (open the donation and control logs),
//!   `node` (join the other nodes on a shared log), `background` (the pipeline thread,
//!   deliveries, leases), `connections` (the connection cap and deadlines), and the routes
//!   this crate adds to ingest's and query's: `admin`, `metrics`, `notifications`.
//! - [`data_dir`]: where a data directory keeps the embedded log, the checkpointed state and
//!   the binding to its log; the server and every command open them through it.
//!
//! Data enters through the ingest routes (`tally_ingest`) into the log (`tally_pipeline`),
//! and leaves through the query routes (`tally_query`); the HTTP contract is `tally_api`,
//! documented in `docs/api.md`. What is not here: the command line (`src/main.rs`, the
//! commands in `src/commands/`), which parses flags and environment and calls this crate.

pub mod data_dir;
mod server;

pub use server::{ConfigError, PARTITIONS_MAX, ServerConfig, bind, run};
