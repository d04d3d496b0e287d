//! # tally-loadgen
//!
//! Replays dinner-rush checkout traffic against a running tally server and checks the totals it
//! reports against the ground truth of what was acknowledged. The binary and its traffic shapes
//! are added by the load generator work; the crate stands outside tally's data path.
