//! Guards the operator CLI for the log: `tally import` appends valid lines and names each bad
//! one; `tally log stats|tail|verify` report what is stored; failures are one line and a
//! non-zero exit status.

mod support;

use support::tally;

use std::process::Output;

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

const GOOD: &str = r#"{"payment_ref":"pay_1","order_id":"o1","user_id":"u1","campaign_id":"meals","amount_cents":100,"currency":"USD","paid_at":"2026-11-20T18:00:00Z"}"#;
const GOOD_2: &str = r#"{"payment_ref":"pay_2","order_id":"o2","user_id":"u1","campaign_id":"meals","amount_cents":250,"currency":"EUR","paid_at":"2026-11-20T18:01:00.5Z"}"#;

#[test]
fn import_appends_valid_lines_and_reports_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("donations.ndjson");
    let lines = [
        GOOD,
        "",
        "{not json",
        &GOOD.replace("100", "\"200\""),
        &GOOD.replace("\"currency\":\"USD\",", "\"currency\":\"USD\",\"tip\":1,"),
        GOOD_2,
        &GOOD.replace(
            "\"amount_cents\":100,",
            "\"amount_cents\":100,\"amount_cents\":999999,",
        ),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = tally(dir.path(), &["import", input.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "rejected lines make the exit status non-zero"
    );
    let errors = stderr(&output);
    assert!(errors.contains("line 3: malformed JSON"), "{errors}");
    assert!(
        errors.contains("line 4: amount_cents: must be an integer"),
        "{errors}"
    );
    assert!(
        errors.contains("line 5: tip: is not a donation field"),
        "{errors}"
    );
    assert!(
        errors.contains("line 7: amount_cents: appears more than once"),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 4, "{errors}");
    assert!(
        stdout(&output).contains("imported 2 donations"),
        "{}",
        stdout(&output)
    );

    let stats = tally(dir.path(), &["log", "stats", "--json"]);
    assert!(stats.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let total: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["end_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2);
    assert!(tally(dir.path(), &["log", "verify"]).status.success());
}

#[test]
fn tail_prints_records_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one.ndjson");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    assert!(
        tally(
            dir.path(),
            &["import", input.to_str().unwrap(), "--partitions", "1"]
        )
        .status
        .success()
    );
    let output = tally(
        dir.path(),
        &["log", "tail", "--partition", "0", "--from", "0"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let record: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(record["payment_ref"], "pay_1");
    assert_eq!(record["offset"], 0);
    assert_eq!(record["partition"], 0);
    assert_eq!(record["paid_at"], "2026-11-20T18:00:00Z");
    assert!(record["append_time"].is_string());
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["log", "stats"],
        vec!["import", "/nonexistent/donations.ndjson"],
    ] {
        let output = tally(dir.path(), &args);
        assert!(!output.status.success(), "{args:?}");
        let errors = stderr(&output);
        assert_eq!(errors.lines().count(), 1, "{args:?}: {errors}");
        assert!(errors.starts_with("tally: "), "{errors}");
    }
    let input = dir.path().join("one.ndjson");
    std::fs::write(&input, GOOD).unwrap();
    assert!(
        tally(dir.path(), &["import", input.to_str().unwrap()])
            .status
            .success()
    );
    let output = tally(dir.path(), &["log", "tail", "--partition", "99"]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output).trim(),
        "tally: partition 99 does not exist; the topic has 8"
    );
}

/// `--owns` splits partitions between nodes on a shared log; on the embedded log, and for
/// partitions the log does not have, `serve` refuses to start with one line.
#[test]
fn serve_refuses_an_ownership_it_cannot_have() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |owns: &str| {
        support::server::serve_until_exit(dir.path(), &["--partitions", "4", "--owns", owns])
    };
    for (owns, expected) in [
        ("0-1", "needs a shared log"),
        ("2-9", "partition 4 does not exist"),
        ("3-1", "start is above its end"),
    ] {
        let output = serve(owns);
        assert!(!output.status.success(), "{owns}");
        let errors = stderr(&output);
        let error_lines: Vec<&str> = errors
            .lines()
            .filter(|l| l.starts_with("tally: ") || l.starts_with("error: "))
            .collect();
        assert_eq!(error_lines.len(), 1, "{owns}: {errors}");
        assert!(error_lines[0].contains(expected), "{owns}: {errors}");
    }
}
