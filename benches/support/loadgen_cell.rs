//! One load generator run against bench servers, as the `e2e` and `nodes` benches make it: the
//! steady profile with the realistic mix, open loop, verification on, the servers' credentials.

use std::time::Duration;

use tally_api::signature::SigningSecret;
use tally_loadgen::report::Report;
use tally_loadgen::run::{RunConfig, run};
use tally_loadgen::schedule::Profile;

use crate::server::{ADMIN_TOKEN, SIGNING_SECRET};

/// Requests in flight at most.
pub const CONNECTIONS: usize = 64;

/// Runs the steady profile at `rate` checkouts/s for `duration` against `targets`, in requests
/// of `batch` donations, and verifies.
pub async fn run_cell(
    targets: &[String],
    batch: usize,
    rate: f64,
    duration: Duration,
    run_id: String,
) -> anyhow::Result<Report> {
    let config = RunConfig {
        profile: Profile::Steady,
        duration,
        rate,
        seed: 7,
        run_id,
        batch,
        connections: CONNECTIONS,
        verify: true,
        progress: false,
        server_cmd: None,
        kill_every: None,
    };
    let credentials = || {
        Ok((
            SigningSecret::from_text(SIGNING_SECRET),
            ADMIN_TOKEN.to_owned(),
        ))
    };
    run(&config, targets, credentials).await
}

/// "passed", "FAILED" or "skipped".
pub fn verified(report: &Report) -> &'static str {
    report
        .verification
        .as_ref()
        .map_or("skipped", |v| if v.passed { "passed" } else { "FAILED" })
}

/// The first few mismatches, under a row.
pub fn print_mismatches(report: &Report) {
    if let Some(verification) = &report.verification {
        for mismatch in verification.mismatches.iter().take(5) {
            println!("       mismatch: {mismatch}");
        }
    }
}
