//! # tally-loadgen
//!
//! Replays dinner-rush checkout traffic against a running tally server and checks the totals it
//! reports against the ground truth of what was acknowledged. The crate stands outside tally's
//! data path: it talks to the server over HTTP only.
//!
//! - [`schedule`]: traffic shapes (`steady`, `dinner-rush`, `spike`) as open-loop due times.
//! - [`traffic`]: donations with their resends, conflicts and bad requests, from a seed.
//! - [`ground_truth`]: what the server must report, from the donations it acknowledged.

pub mod ground_truth;
pub mod schedule;
pub mod traffic;
