//! Guards, through the real server, that damage to the log is never taken for a torn write:
//! donations recorded and checkpointed, the server stopped, one byte of the last commit
//! flipped. A flip in a commit's seal loses nothing and offsets continue; a flip in its records
//! makes `tally serve` refuse to start with one line naming the file, the byte and the
//! checkpoint that saw it, until `tally log repair` cuts the commit, records the loss in
//! `repair-audit.jsonl` and lets the partition be rebuilt — and no offset is handed out twice.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::{ServerProcess, client, create_campaign, donate_to_meals, serve_until_exit};
use support::{flip_byte, segment_files, tally};

/// A server that has not caught up by then has failed.
const WAIT_MAX: Duration = Duration::from_secs(60);
const SEAL_BYTES: u64 = 64;

fn campaign(server: &ServerProcess) -> Value {
    client()
        .get(server.url("/v1/campaigns/meals"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits until every partition applied the whole log; the campaign then.
fn caught_up(server: &ServerProcess) -> Value {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let view = campaign(server);
        if view["freshness"]["lag_records"] == 0 {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not catch up: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A data directory with 30 donations in one partition, applied and checkpointed, server
/// stopped cleanly; returns the partition's active segment.
fn recorded_and_stopped(data_dir: &Path) -> PathBuf {
    let server = ServerProcess::start(data_dir, &["--partitions", "1"]);
    create_campaign(&client(), &server, "meals", "USD");
    for i in 0..30 {
        assert_eq!(donate_to_meals(&server, &format!("pay_{i:03}"), i).0, 202);
    }
    assert_eq!(caught_up(&server)["donations"], 30);
    assert!(server.terminate().success());
    segment_files(&data_dir.join("log"), 0).pop().unwrap()
}

#[test]
fn a_flip_near_the_end_of_the_active_segment_loses_no_donation() {
    let data = tempfile::tempdir().unwrap();
    let segment = recorded_and_stopped(data.path());
    let length = std::fs::metadata(&segment).unwrap().len();
    flip_byte(&segment, length - 60);

    let server = ServerProcess::start(data.path(), &[]);
    assert_eq!(
        caught_up(&server)["donations"],
        30,
        "every acknowledged donation is counted"
    );
    assert_eq!(donate_to_meals(&server, "pay_after", 99).0, 202);
    let view = caught_up(&server);
    assert_eq!(
        view["donations"], 31,
        "the next donation is counted: {view}"
    );
    let looked_up: Value = client()
        .get(server.url("/v1/donations/pay_after"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        looked_up["offset"], 30,
        "a new offset, never one handed out before"
    );
    drop(server);
    let verify = tally(data.path(), &["checkpoint", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_damaged_checkpointed_commit_stops_the_start_until_repaired() {
    let data = tempfile::tempdir().unwrap();
    let segment = recorded_and_stopped(data.path());
    let length = std::fs::metadata(&segment).unwrap().len();
    flip_byte(&segment, length - SEAL_BYTES - 10);

    let refused = serve_until_exit(data.path(), &[]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    let line = message
        .lines()
        .find(|l| l.starts_with("tally: "))
        .unwrap_or_else(|| panic!("{message}"));
    assert!(line.contains(&segment.display().to_string()), "{line}");
    assert!(
        line.contains("checkpoints-000.journal"),
        "names the witness: {line}"
    );
    assert!(line.contains("tally log repair"), "{line}");
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        length,
        "nothing was cut"
    );

    let repair = tally(data.path(), &["log", "repair"]);
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(
        repair.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(said.contains("offsets 29..30 are lost"), "{said}");
    let audit = std::fs::read_to_string(data.path().join("log/repair-audit.jsonl")).unwrap();
    let mut lines = audit.lines();
    let started: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        started["witnesses"][0]["end_offset"], 30,
        "recorded before the cut: {started}"
    );
    let entry: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(entry["partition"], 0);
    assert_eq!(entry["kept_end_offset"], 29);
    assert_eq!(entry["witnessed_end_offset"], 30);

    let server = ServerProcess::start(data.path(), &[]);
    assert_eq!(
        caught_up(&server)["donations"],
        29,
        "rebuilt from what the log holds"
    );
    assert_eq!(donate_to_meals(&server, "pay_after", 99).0, 202);
    assert_eq!(caught_up(&server)["donations"], 30);
    drop(server);
    let verify = tally(data.path(), &["checkpoint", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
