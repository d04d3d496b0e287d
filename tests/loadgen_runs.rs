//! The load generator against a real `tally serve`: a whole run (the realistic mix of resends,
//! conflicts, bursts and invalid requests) ends with its verification passed — with single
//! callbacks while it SIGKILLs and restarts the server, and with batches (also of the server's
//! largest batch size).

mod support;

use std::time::Duration;

use support::server::{
    ADMIN_TOKEN, SIGNING_SECRET, ServerProcess, assert_run_verified, run_loadgen,
};
use tally_loadgen::report::Report;
use tally_loadgen::run::RunConfig;
use tally_loadgen::schedule::Profile;

fn config(batch: usize, server_cmd: Option<String>, kill_every: Option<Duration>) -> RunConfig {
    RunConfig {
        profile: Profile::Steady,
        duration: Duration::from_secs(5),
        rate: 300.0,
        seed: 11,
        run_id: format!("test{batch}"),
        batch,
        connections: 16,
        verify: true,
        progress: false,
        server_cmd,
        kill_every,
    }
}

fn block_on(config: &RunConfig, target: &str) -> Report {
    run_loadgen(config, &[target.to_owned()])
}

fn assert_verified(report: &Report) {
    assert_run_verified(report, 1_000);
    assert!(report.counters.conflicts_sent > 0);
}

/// A loopback port that was free a moment ago: the restarted server must come back on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_run_with_the_server_sigkilled_and_restarted_still_verifies() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let command = format!(
        "TALLY_LOG=error exec '{}' --data-dir '{}' serve --listen 127.0.0.1:{port} --signing-secret {SIGNING_SECRET} --admin-token {ADMIN_TOKEN}",
        env!("CARGO_BIN_EXE_tally"),
        data_dir.path().display()
    );
    let report = block_on(
        &config(1, Some(command), Some(Duration::from_millis(1500))),
        &format!("http://127.0.0.1:{port}"),
    );
    assert_verified(&report);
    assert!(report.counters.server_restarts >= 1, "{report:?}");
}

#[test]
fn a_batched_run_verifies() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(data_dir.path(), &[]);
    let report = block_on(&config(25, None, None), &server.base);
    assert_verified(&report);
    assert!(report.counters.requests_sent < report.counters.donations_sent);
}

#[test]
fn batches_of_the_servers_largest_size_are_never_refused_as_too_large() {
    // A thousand checkouts bring more than a thousand requests (bursts, resends, bad requests):
    // the load generator must split them, not send a request the server refuses whole.
    let data_dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(data_dir.path(), &[]);
    let config = RunConfig {
        rate: 1_000.0,
        ..config(1_000, None, None)
    };
    let report = block_on(&config, &server.base);
    assert_verified(&report);
    let too_large: u64 = report
        .counters
        .refused_by_code
        .iter()
        .filter(|(code, _)| code.contains("batch_too_large"))
        .map(|(_, count)| *count)
        .sum();
    assert_eq!(too_large, 0, "{:?}", report.counters.refused_by_code);
    assert!(
        report.counters.donations_acknowledged > 4_000,
        "{:?}",
        report.counters
    );
}
