//! # tally-loadgen
//!
//! Replays dinner-rush checkout traffic against a running tally server, or several nodes sharing
//! one log, and checks the totals and statistics each reports against the ground truth of what
//! was acknowledged. The crate stands outside tally's data path: it talks to the servers over
//! HTTP only, and shares with them just the contract, `tally-api` (without its server side): the
//! signature it signs callbacks with and the JSON views it reads.
//!
//! - [`schedule`]: traffic shapes (`steady`, `dinner-rush`, `spike`) as open-loop due times.
//! - [`traffic`]: donations with their resends, conflicts, bursts and bad requests, from a seed.
//! - [`plan`]: checkouts planned ahead on a thread of their own, bodies encoded and signed.
//! - [`ground_truth`]: what the server must report, from the donations it acknowledged.
//! - [`http`]: a lean HTTP/1.1 client: pooled keep-alive connections, answers read whole.
//! - [`client`]: the server's HTTP API, answers read in the contract's views and reduced to
//!   what a run needs.
//! - [`targets`]: the servers a run drives, and how requests and probes spread over them.
//! - [`run`]: one run: replay, retries, freshness probes, the crash timer, verification.
//! - [`chaos`]: a server process the run owns and SIGKILLs on a timer.
//! - [`verify`]: the comparison of the server's totals and statistics with the ground truth.
//! - [`report`]: the progress line, the end-of-run table and the JSON report.

pub mod chaos;
pub mod client;
pub mod ground_truth;
pub mod http;
pub mod plan;
pub mod report;
pub mod report_page;
pub mod run;
pub mod schedule;
pub mod targets;
pub mod traffic;
pub mod verify;
