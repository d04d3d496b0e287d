//! Guards the offline `tally campaign create|close` (on the data directory, no server): create
//! refuses every definition the admin API refuses, with the API's field and message on one line;
//! close stops intake at the log's end, runs the pipeline there and records the reconciled total.

mod support;

use std::process::Output;

use serde_json::Value;
use support::tally;

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn create(data_dir: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec!["campaign", "create", "meals"];
    for (flag, default) in [("--name", "Meals for kids"), ("--currency", "USD")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend(extra);
    tally(data_dir, &args)
}

#[test]
fn create_refuses_what_the_admin_api_refuses_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let long_name = "x".repeat(201);
    let refused: [(&[&str], &str); 7] = [
        (&["--name", ""], "name: must be 1 to 200 characters"),
        (&["--name", &long_name], "name: must be 1 to 200 characters"),
        (&["--goal-cents", "0"], "goal_cents: must be at least 1"),
        (
            &["--starts-at", "tomorrow"],
            "starts_at: must be an RFC 3339 timestamp",
        ),
        (
            &["--ends-at", "2026-11-20"],
            "ends_at: must be an RFC 3339 timestamp",
        ),
        (
            &[
                "--starts-at",
                "2026-11-20T00:00:00Z",
                "--ends-at",
                "2026-11-20T00:00:00Z",
            ],
            "ends_at: must be after starts_at",
        ),
        (
            &["--currency", "usd"],
            "currency: must be an ISO 4217 code such as \"USD\"",
        ),
    ];
    for (extra, message) in refused {
        let output = create(dir.path(), extra);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert_eq!(stderr(&output), format!("tally: {message}\n"), "{extra:?}");
    }
    let listed = stdout_json(&tally(dir.path(), &["campaign", "list", "--json"]));
    assert_eq!(listed, serde_json::json!([]), "nothing refused was created");

    let created = stdout_json(&create(dir.path(), &["--goal-cents", "100"]));
    assert_eq!(created["status"], "open");
    assert_eq!(created["definition"]["name"], "Meals for kids");
}

#[test]
fn close_reconciles_the_recorded_donations_and_a_second_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    stdout_json(&create(dir.path(), &[]));
    let input = dir.path().join("donations.ndjson");
    let donation = |payment_ref: &str, cents: u64| {
        format!(
            r#"{{"payment_ref":"{payment_ref}","order_id":"o1","user_id":"u1","campaign_id":"meals","amount_cents":{cents},"currency":"USD","paid_at":"2026-11-20T18:00:00Z"}}"#
        )
    };
    // The resend of pay_1 is a duplicate: counted once.
    let lines = [
        donation("pay_1", 100),
        donation("pay_2", 250),
        donation("pay_1", 100),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let imported = tally(dir.path(), &["import", input.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));

    let closed = stdout_json(&tally(dir.path(), &["campaign", "close", "meals"]));
    assert_eq!(closed["status"], "closed");
    let reconciliation = &closed["reconciliation"];
    assert_eq!(reconciliation["final_total_cents"], 350);
    assert_eq!(reconciliation["final_donations"], 2);
    assert_eq!(reconciliation["matched"], true);

    let again = tally(dir.path(), &["campaign", "close", "meals"]);
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again),
        "tally: campaign \"meals\" is already closed\n"
    );
    let missing = tally(dir.path(), &["campaign", "close", "shelter"]);
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing),
        "tally: campaign \"shelter\" does not exist\n"
    );
}
