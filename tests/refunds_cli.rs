//! Guards the refund commands of the CLI on a data directory: `tally audit refunds` lists what
//! is not counted and why (a conflicting resend, an excess, a pending refund), `tally export`
//! writes the ledger that adds up to `tally campaign totals`, and both refuse bad arguments with
//! a one-line message and a non-zero exit.

mod support;

use serde_json::Value;
use support::pipeline::{DataDir, donation};
use support::tally;
use tally_pipeline::event::refund::{RefundEvent, RetractionKind};
use tally_pipeline::event::{EventTime, envelope};

const PARTITIONS: u32 = 2;
const BASE_MS: i64 = 1_795_546_800_000;

fn refund(refund_ref: &str, payment_ref: &str, amount_cents: u64) -> RefundEvent {
    RefundEvent {
        refund_ref: refund_ref.into(),
        payment_ref: payment_ref.into(),
        amount_cents,
        kind: RetractionKind::Refund,
        refunded_at: EventTime(BASE_MS + 60_000),
    }
}

/// A processed data directory: two donations to `meals`, refunds of them of every outcome.
fn data_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let created = tally(
        root.path(),
        &[
            "campaign",
            "create",
            "meals",
            "--name",
            "Meals",
            "--currency",
            "USD",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let data = DataDir::new(root.path(), PARTITIONS);
    let log = data.open_log();
    let records = vec![
        envelope::keyed_record(&donation("pay-1", "meals", 100, BASE_MS, 1)),
        envelope::keyed_record(&donation("pay-2", "meals", 250, BASE_MS, 2)),
        envelope::keyed_refund_record(&refund("re-1", "pay-1", 60)),
        envelope::keyed_refund_record(&refund("re-1", "pay-1", 61)),
        envelope::keyed_refund_record(&refund("re-2", "pay-1", 50)),
        envelope::keyed_refund_record(&refund("re-3", "pay-9", 10)),
        envelope::keyed_refund_record(&refund("re-4", "pay-2", 250)),
    ];
    data.append_records(&log, records);
    drop(log);
    let processed = tally(root.path(), &["process"]);
    assert!(processed.status.success(), "{processed:?}");
    root
}

#[test]
fn the_audit_lists_every_refund_not_counted_and_why() {
    let root = data_dir();
    let output = tally(root.path(), &["audit", "refunds", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut reasons: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["refund_ref"].as_str().unwrap().to_owned(),
                u["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    let expected = [
        ("re-1", "conflict"),
        ("re-2", "excess"),
        ("re-3", "pending"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(r, why)| (r.to_string(), why.to_string()))
        .collect();
    assert_eq!(reasons, expected, "{listed}");
    let excess = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["reason"] == "excess")
        .unwrap();
    assert_eq!(excess["remaining_cents"], 40, "{excess}");
    let conflict = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["reason"] == "conflict")
        .unwrap();
    assert_eq!(conflict["differences"][0]["field"], "amount_cents");

    let text = tally(root.path(), &["audit", "refunds"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.ends_with("3 refunds not counted\n"), "{text}");
}

#[test]
fn the_export_adds_up_to_the_totals_and_bad_arguments_are_one_line_errors() {
    let root = data_dir();
    let out = root.path().join("meals.csv");
    let exported = tally(
        root.path(),
        &[
            "export",
            "--campaign",
            "meals",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    let ledger = support::ledger::Ledger::parse(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(ledger.donations, (350, 2));
    assert_eq!(ledger.retractions, (310, 2), "re-1 and re-4 count");
    assert_eq!(ledger.net_cents, 40);
    let totals = tally(root.path(), &["campaign", "totals", "--json"]);
    let totals: Value = serde_json::from_slice(&totals.stdout).unwrap();
    assert_eq!(totals[0]["total_cents"], 40);
    assert_eq!(totals[0]["gross_cents"], 350);
    assert_eq!(totals[0]["refunded_cents"], 310);

    // The range in event time: the refunds are a minute after the donations.
    let later = root.path().join("later.csv");
    let from = EventTime(BASE_MS + 60_000).to_rfc3339().unwrap();
    let ranged = tally(
        root.path(),
        &[
            "export",
            "--campaign",
            "meals",
            "--from",
            &from,
            "--out",
            later.to_str().unwrap(),
        ],
    );
    assert!(ranged.status.success(), "{ranged:?}");
    let ranged = support::ledger::Ledger::parse(&std::fs::read_to_string(&later).unwrap());
    assert_eq!((ranged.donations, ranged.retractions), ((0, 0), (310, 2)));

    let never = root.path().join("never.csv");
    let never = never.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "export",
                "--campaign",
                "meals",
                "--out",
                out.to_str().unwrap(),
            ],
            "cannot create",
        ),
        (
            vec!["export", "--campaign", "nope", "--out", never],
            "there is no campaign",
        ),
        (
            vec![
                "export",
                "--campaign",
                "meals",
                "--from",
                "soon",
                "--out",
                never,
            ],
            "--from",
        ),
    ] {
        let refused = tally(root.path(), &args);
        assert!(!refused.status.success(), "{args:?}");
        let stderr = String::from_utf8(refused.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(!std::path::Path::new(never).exists());
}
