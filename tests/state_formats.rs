//! Guards the data directories already out there: one written before checkpoint format 2
//! (`tests/fixtures/data_dir_v1`, made by `tally campaign create`, two `tally import`s of the
//! files beside it and `tally process` after each) must open with this build, verify against its
//! log, answer the totals and statistics it answered then, and go on taking records; and the
//! savepoint written then (`savepoint_v1.bin`, after the first import) must restore.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use support::{copy_dir, fixtures, reported_totals, tally};

/// Every campaign's (total cents, donations) from the imported files: the first event of each
/// `payment_ref` counts.
fn totals_of(files: &[&str]) -> BTreeMap<String, (u64, u64)> {
    let mut seen = HashSet::new();
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            if seen.insert(event["payment_ref"].as_str().unwrap().to_owned()) {
                let total = totals
                    .entry(event["campaign_id"].as_str().unwrap().to_owned())
                    .or_default();
                total.0 += event["amount_cents"].as_u64().unwrap();
                total.1 += 1;
            }
        }
    }
    totals
}

fn succeed(data_dir: &Path, args: &[&str]) -> String {
    let output = tally(data_dir, args);
    assert!(
        output.status.success(),
        "tally {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn verified(data_dir: &Path) {
    let report = succeed(data_dir, &["checkpoint", "verify"]);
    assert_eq!(report.matches(": ok at offset").count(), 2, "{report}");
}

const IMPORTS: [&str; 2] = ["data_dir_v1.import-1.ndjson", "data_dir_v1.import-2.ndjson"];

#[test]
fn a_data_directory_written_by_format_1_opens_verifies_and_goes_on() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("data_dir_v1"), copy.path());
    verified(copy.path());
    assert_eq!(reported_totals(copy.path()), totals_of(&IMPORTS));
    // What the format 1 build answered for this query.
    let stats: serde_json::Value = serde_json::from_str(&succeed(
        copy.path(),
        &[
            "campaign",
            "stats",
            "meals-for-kids",
            "--from",
            "2026-11-20T00:00:00Z",
            "--to",
            "2026-11-27T00:00:00Z",
            "--bucket",
            "day",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (
            &stats["count"],
            &stats["sum_cents"],
            &stats["min_cents"],
            &stats["max_cents"],
            &stats["p50_cents"],
            &stats["resolution"]
        ),
        (
            &serde_json::json!(60),
            &serde_json::json!(18309),
            &serde_json::json!(37),
            &serde_json::json!(1234),
            &serde_json::json!(100),
            &serde_json::json!("minute")
        ),
        "{stats}"
    );
    let counts: Vec<u64> = stats["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [3, 11, 11, 11, 9, 7, 8]);

    // New records on top: appended to the old journals, counted once, verified.
    let more = copy.path().join("more.ndjson");
    std::fs::write(
        &more,
        concat!(
            r#"{"payment_ref": "pay_9001", "order_id": "ord_9001", "user_id": "usr_1", "campaign_id": "food-bank", "amount_cents": 250, "currency": "USD", "paid_at": "2026-11-26T10:00:00Z"}"#,
            "\n",
            r#"{"payment_ref": "pay_0002", "order_id": "ord_0002", "user_id": "usr_2", "campaign_id": "meals-for-kids", "amount_cents": 100, "currency": "USD", "paid_at": "2026-11-20T21:16:02Z"}"#,
            "\n"
        ),
    )
    .unwrap();
    succeed(copy.path(), &["import", more.to_str().unwrap()]);
    succeed(copy.path(), &["process"]);
    verified(copy.path());
    let mut expected = totals_of(&IMPORTS);
    let food_bank = expected.get_mut("food-bank").unwrap();
    food_bank.0 += 250;
    food_bank.1 += 1;
    assert_eq!(reported_totals(copy.path()), expected);
}

#[test]
fn a_savepoint_written_by_format_1_restores() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("data_dir_v1"), copy.path());
    let savepoint = fixtures().join("savepoint_v1.bin");
    succeed(
        copy.path(),
        &["checkpoint", "restore", savepoint.to_str().unwrap()],
    );
    // The savepoint was taken after the first import.
    assert_eq!(reported_totals(copy.path()), totals_of(&IMPORTS[..1]));
    verified(copy.path());
    succeed(copy.path(), &["process"]);
    assert_eq!(reported_totals(copy.path()), totals_of(&IMPORTS));
    verified(copy.path());
}
