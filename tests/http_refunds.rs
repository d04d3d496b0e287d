//! Guards the refund routes end to end against the server `tally serve` runs, in this process on
//! 127.0.0.1: every answer and error code of `POST /v1/refunds` and its batch form, how a
//! campaign's gross, refunded and net totals follow them, the metrics, and a close with refunds
//! (the reconciled refunds, then a post-close adjustment).
//!
//! Nothing sleeps for correctness: where the pipeline has to catch up, a test polls until every
//! partition has applied the log, within a bounded deadline.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use support::in_process::InProcessServer;
use support::ledger::Ledger;
use support::server::{admin, client, create_campaign, donation_json, post_signed};

const WAIT_MAX: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

struct Fixture {
    server: InProcessServer,
    client: Client,
}

impl Fixture {
    fn start() -> Self {
        Self {
            server: InProcessServer::start(|_| {}),
            client: client(),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).unwrap();
        post_signed(&self.client, &self.server.url(path), &bytes).expect("POST")
    }

    #[track_caller]
    fn donate(&self, payment_ref: &str, campaign_id: &str, amount_cents: u64) {
        let body = donation_json(
            payment_ref,
            campaign_id,
            amount_cents,
            &format!("usr-{payment_ref}"),
        );
        json_ok(self.post("/v1/donations", &body), 202);
    }

    #[track_caller]
    fn refund_accepted(&self, body: &Value) -> Value {
        let accepted = json_ok(self.post("/v1/refunds", body), 202);
        assert_eq!(
            keys(&accepted),
            "offset partition payment_ref refund_ref status"
        );
        assert_eq!(accepted["status"], "accepted");
        assert_eq!(accepted["refund_ref"], body["refund_ref"]);
        assert_eq!(accepted["payment_ref"], body["payment_ref"]);
        accepted
    }

    fn get_ok(&self, path: &str) -> Value {
        let response = self.client.get(self.server.url(path)).send().unwrap();
        json_ok(response, 200)
    }

    fn metrics(&self) -> String {
        let response = self.client.get(self.server.url("/metrics")).send().unwrap();
        response.text().unwrap()
    }

    /// The campaign once every partition has applied the whole log and `done` holds.
    #[track_caller]
    fn campaign_when(&self, campaign_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/v1/campaigns/{campaign_id}");
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let campaign = self.get_ok(&path);
            if campaign["freshness"]["lag_records"] == 0 && done(&campaign) {
                return campaign;
            }
            assert!(Instant::now() < deadline, "never came: {campaign}");
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The campaign once caught up with the log (nothing else asked).
    fn caught_up(&self, campaign_id: &str) -> Value {
        self.campaign_when(campaign_id, |_| true)
    }
}

fn refund(refund_ref: &str, payment_ref: &str, amount_cents: u64, kind: &str) -> Value {
    json!({
        "refund_ref": refund_ref,
        "payment_ref": payment_ref,
        "amount_cents": amount_cents,
        "kind": kind,
        "refunded_at": "2026-11-24T19:00:00Z",
    })
}

/// `(gross, refunded, net, donations, refunds, chargeback_cents, chargebacks)` of a campaign.
fn amounts(campaign: &Value) -> (u64, u64, u64, u64, u64, u64, u64) {
    let n = |name: &str| {
        campaign[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {campaign}"))
    };
    assert_eq!(n("total_cents"), n("net_cents"), "{campaign}");
    (
        n("gross_cents"),
        n("refunded_cents"),
        n("net_cents"),
        n("donations"),
        n("refunds"),
        n("chargeback_cents"),
        n("chargebacks"),
    )
}

#[test]
fn refunds_take_money_back_once_within_the_donation_and_wait_for_their_donation() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    fixture.donate("pay-1", "meals", 1000);
    fixture.donate("pay-2", "meals", 500);

    // Partial refunds and a chargeback; a resend is a duplicate, one with another amount a
    // conflict: neither takes money again.
    let first = fixture.refund_accepted(&refund("re-1", "pay-1", 300, "refund"));
    fixture.refund_accepted(&refund("re-2", "pay-1", 200, "chargeback"));
    let resent = fixture.refund_accepted(&refund("re-1", "pay-1", 300, "refund"));
    assert_eq!(
        resent["partition"], first["partition"],
        "one payment, one partition"
    );
    fixture.refund_accepted(&refund("re-1", "pay-1", 301, "refund"));
    let campaign = fixture.campaign_when("meals", |c| c["refunds"] == 2);
    assert_eq!(amounts(&campaign), (1500, 500, 1000, 2, 2, 200, 1));

    // More than is left: refused where ingest can tell, and nothing is appended.
    let ends = campaign["freshness"]["log_end_offsets"].clone();
    let over = fixture.post("/v1/refunds", &refund("re-3", "pay-1", 501, "refund"));
    assert_error(over, 422, "refund_exceeds_donation", Some("amount_cents"));
    let over = fixture.post("/v1/refunds", &refund("re-4", "pay-2", 501, "refund"));
    assert_error(over, 422, "refund_exceeds_donation", Some("amount_cents"));
    assert_eq!(
        fixture.caught_up("meals")["freshness"]["log_end_offsets"],
        ends
    );
    // What is left is still refundable, and a resend of a recorded refund is never refused.
    fixture.refund_accepted(&refund("re-5", "pay-1", 500, "refund"));
    fixture.refund_accepted(&refund("re-5", "pay-1", 500, "refund"));

    // A refund before its donation waits for it; its donation's amount then bounds it.
    fixture.refund_accepted(&refund("re-6", "pay-3", 250, "refund"));
    fixture.refund_accepted(&refund("re-7", "pay-3", 900, "refund"));
    let waiting = fixture.campaign_when("meals", |c| c["refunds"] == 3);
    assert_eq!(amounts(&waiting), (1500, 1000, 500, 2, 3, 200, 1));
    assert_eq!(metric(&fixture.metrics(), "tally_refunds_pending"), 2);
    fixture.donate("pay-3", "meals", 300);
    let settled = fixture.campaign_when("meals", |c| c["donations"] == 3);
    assert_eq!(amounts(&settled), (1800, 1250, 550, 3, 4, 200, 1));

    let metrics = fixture.metrics();
    assert_eq!(metric(&metrics, "tally_refunds_recorded_total"), 5);
    assert_eq!(metric(&metrics, "tally_refunds_applied_total"), 4);
    assert_eq!(metric(&metrics, "tally_refunds_pending"), 0);
    assert_eq!(
        metric(&metrics, "tally_refunds_excess_total"),
        1,
        "re-7: 900 of 300"
    );
    assert_eq!(metric(&metrics, "tally_refund_duplicates_total"), 2);
    assert_eq!(metric(&metrics, "tally_refund_conflicts_total"), 1);

    // Statistics count refunds at their refunded_at, beside the donations at their paid_at.
    let stats = fixture.get_ok(
        "/v1/campaigns/meals/stats?from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z&bucket=hour",
    );
    assert_eq!(
        (stats["count"].clone(), stats["sum_cents"].clone()),
        (json!(3), json!(1800))
    );
    assert_eq!(
        (stats["refunds"].clone(), stats["refunded_cents"].clone()),
        (json!(4), json!(1250))
    );
    let series = stats["series"].as_array().unwrap();
    let at_19 = series
        .iter()
        .find(|p| p["start"] == "2026-11-24T19:00:00Z")
        .unwrap();
    assert_eq!(
        (at_19["refunds"].clone(), at_19["refunded_cents"].clone()),
        (json!(4), json!(1250))
    );
    let before = fixture
        .get_ok("/v1/campaigns/meals/stats?from=2026-11-24T00:00:00Z&to=2026-11-24T19:00:00Z");
    assert_eq!(before["refunds"], 0, "{before}");

    // The list tells the net total too.
    let listed = fixture.get_ok("/v1/campaigns");
    assert_eq!(listed[0]["net_cents"], 550);
    assert_eq!(listed[0]["total_cents"], 550);
}

#[test]
fn bad_refunds_get_their_code_and_field() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    let mut cases: Vec<(Value, u16, &str, Option<&str>)> = Vec::new();
    let with = |field: &str, value: Value| {
        let mut body = refund("re-1", "pay-1", 100, "refund");
        body[field] = value;
        body
    };
    cases.push((
        with("kind", json!("goodwill")),
        400,
        "invalid_field",
        Some("kind"),
    ));
    cases.push((
        with("amount_cents", json!(0)),
        400,
        "invalid_field",
        Some("amount_cents"),
    ));
    cases.push((
        with("amount_cents", json!("5")),
        400,
        "invalid_field",
        Some("amount_cents"),
    ));
    cases.push((
        with("refunded_at", json!("soon")),
        400,
        "invalid_field",
        Some("refunded_at"),
    ));
    cases.push((
        with("payment_ref", json!("a b")),
        400,
        "invalid_field",
        Some("payment_ref"),
    ));
    cases.push((
        with("refund_ref", Value::Null),
        400,
        "missing_field",
        Some("refund_ref"),
    ));
    cases.push((
        with("campaign_id", json!("meals")),
        400,
        "unknown_field",
        Some("campaign_id"),
    ));
    cases.push((json!([1]), 400, "invalid_body", None));
    for (body, status, code, field) in cases {
        let response = fixture.post("/v1/refunds", &body);
        assert_error(response, status, code, field);
    }
    // Unsigned, and signed over other bytes.
    let url = fixture.server.url("/v1/refunds");
    let body = serde_json::to_vec(&refund("re-1", "pay-1", 100, "refund")).unwrap();
    let unsigned = fixture
        .client
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_error(unsigned, 401, "signature_missing", None);
    let wrong = fixture
        .client
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Tally-Signature", support::server::signature_for(b"other"))
        .body(body)
        .send()
        .unwrap();
    assert_error(wrong, 401, "signature_mismatch", None);
    let not_json = fixture
        .client
        .post(&url)
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .unwrap();
    assert_error(not_json, 415, "unsupported_media_type", None);
    // Nothing above was appended.
    let campaign = fixture.caught_up("meals");
    let ends = campaign["freshness"]["log_end_offsets"]
        .as_array()
        .unwrap()
        .clone();
    assert!(ends.iter().all(|end| end == 0), "{campaign}");
}

#[test]
fn a_refund_batch_records_its_good_items_and_reports_each_bad_one() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    fixture.donate("pay-1", "meals", 1000);
    fixture.caught_up("meals");
    let batch = json!([
        refund("re-1", "pay-1", 400, "refund"),
        refund("re-2", "pay-1", 2000, "refund"),
        {"refund_ref": "re-3"},
        refund("re-4", "pay-9", 50, "chargeback"),
    ]);
    let outcome = json_ok(fixture.post("/v1/refunds/batch", &batch), 200);
    assert_eq!(keys(&outcome), "accepted rejected results");
    assert_eq!(outcome["accepted"], 2, "{outcome}");
    let rejected = outcome["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{outcome}");
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["code"], "refund_exceeds_donation");
    assert_eq!(rejected[0]["field"], "amount_cents");
    assert_eq!(rejected[1]["index"], 2);
    assert_eq!(rejected[1]["code"], "missing_field");
    let results = outcome["results"].as_array().unwrap();
    assert_eq!(
        keys(&results[0]),
        "index offset partition payment_ref refund_ref"
    );
    assert_eq!(
        (results[0]["index"].clone(), results[1]["index"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(results[1]["refund_ref"], "re-4");
    let campaign = fixture.campaign_when("meals", |c| c["refunds"] == 1);
    assert_eq!(amounts(&campaign), (1000, 400, 600, 1, 1, 0, 0));
    assert_eq!(metric(&fixture.metrics(), "tally_refunds_pending"), 1);

    let too_many: Vec<Value> = (0..1001)
        .map(|i| refund(&format!("re-x{i}"), "pay-1", 1, "refund"))
        .collect();
    let response = fixture.post("/v1/refunds/batch", &json!(too_many));
    assert_error(response, 413, "batch_too_large", None);
    let response = fixture.post("/v1/refunds/batch", &json!({"not": "an array"}));
    assert_error(response, 400, "invalid_body", None);
}

#[test]
fn a_close_reconciles_refunds_and_later_refunds_are_post_close_adjustments() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    fixture.donate("pay-1", "meals", 1000);
    fixture.donate("pay-2", "meals", 2000);
    fixture.refund_accepted(&refund("re-1", "pay-1", 100, "refund"));
    fixture.refund_accepted(&refund("re-2", "pay-2", 2000, "chargeback"));
    fixture.campaign_when("meals", |c| c["refunds"] == 2);

    let close_url = fixture.server.url("/v1/campaigns/meals/close");
    let closed = admin(&fixture.client, Method::POST, &close_url)
        .send()
        .unwrap();
    let closed = json_ok(closed, 200);
    assert_eq!(closed["status"], "closed");
    assert_eq!(
        closed["reconciliation"],
        json!({
            "final_total_cents": 3000,
            "final_donations": 2,
            "running_total_cents": 3000,
            "running_donations": 2,
            "matched": true,
            "final_refunded_cents": 2100,
            "final_refunds": 2,
            "final_chargeback_cents": 2000,
            "final_chargebacks": 1,
            "final_net_cents": 900,
            "running_refunded_cents": 2100,
            "running_refunds": 2,
            "refunds_matched": true,
        }),
        "{closed}"
    );
    assert_eq!(
        closed["adjustments"],
        json!({"refunded_cents": 0, "refunds": 0, "net_after_cents": 900})
    );

    // A closed campaign takes refunds: post-close adjustments; its final total stays.
    fixture.refund_accepted(&refund("re-4", "pay-1", 250, "refund"));
    let adjusted = fixture.campaign_when("meals", |c| c["refunds"] == 3);
    assert_eq!(adjusted["reconciliation"], closed["reconciliation"]);
    assert_eq!(
        adjusted["adjustments"],
        json!({"refunded_cents": 250, "refunds": 1, "net_after_cents": 650})
    );
    assert_eq!(amounts(&adjusted), (3000, 2350, 650, 2, 3, 2000, 1));
    // Closing again answers the same reconciliation.
    let again = admin(&fixture.client, Method::POST, &close_url)
        .send()
        .unwrap();
    assert_eq!(
        json_ok(again, 200)["reconciliation"],
        closed["reconciliation"]
    );
}

#[track_caller]
fn json_ok(response: Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().expect("a body");
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Checks an error answer: its status, and a body of exactly `{"error": {code, message,
/// field?}}` with this code and field.
#[track_caller]
fn assert_error(response: Response, status: u16, code: &str, field: Option<&str>) {
    let body = json_ok(response, status);
    assert_eq!(keys(&body), "error", "{body}");
    let error = &body["error"];
    let expected = if field.is_some() {
        "code field message"
    } else {
        "code message"
    };
    assert_eq!(keys(error), expected, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    if let Some(field) = field {
        assert_eq!(error["field"], field, "{body}");
    }
}

fn keys(value: &Value) -> String {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys.join(" ")
}

/// The value of an unlabelled metric.
#[track_caller]
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_ledger_export_lists_what_counts_in_log_order_and_adds_up_to_the_totals() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    create_campaign(&fixture.client, &fixture.server, "shelter", "USD");
    for i in 0..40 {
        let campaign = if i % 3 == 0 { "shelter" } else { "meals" };
        fixture.donate(&format!("pay-{i}"), campaign, 100 + i);
    }
    fixture.donate("pay-1", "meals", 101); // a resend: not a row
    fixture.refund_accepted(&refund("re-1", "pay-1", 50, "refund"));
    fixture.refund_accepted(&refund("re-1", "pay-1", 50, "refund")); // a resend
    fixture.refund_accepted(&refund("re-2", "pay-2", 102, "chargeback"));
    fixture.refund_accepted(&refund("re-3", "pay-3", 10, "refund")); // shelter's
    fixture.refund_accepted(&refund("re-4", "pay-99", 10, "refund")); // pending: not a row
    let campaign = fixture.campaign_when("meals", |c| c["refunds"] == 2);

    let url = fixture.server.url("/v1/campaigns/meals/ledger.csv");
    let response = admin(&fixture.client, Method::GET, &url).send().unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = response.text().unwrap();
    let ledger = Ledger::parse(&text);
    assert_eq!(
        ledger.donations,
        (campaign["gross_cents"].as_u64().unwrap(), 26)
    );
    assert_eq!(
        ledger.retractions,
        (campaign["refunded_cents"].as_u64().unwrap(), 2)
    );
    assert_eq!(ledger.net_cents, campaign["net_cents"].as_i64().unwrap());
    assert!(ledger.in_log_order, "{text}");
    assert!(text.contains(",re-2,,,102,-102,USD\n"), "{text}");

    // Without the token, for a campaign that does not exist, with a bad time.
    let unauthorized = fixture.client.get(&url).send().unwrap();
    assert_error(unauthorized, 401, "admin_token_missing", None);
    let missing = fixture.server.url("/v1/campaigns/nope/ledger.csv");
    let response = admin(&fixture.client, Method::GET, &missing)
        .send()
        .unwrap();
    assert_error(response, 404, "campaign_not_found", None);
    let bad = format!("{url}?from=yesterday");
    let response = admin(&fixture.client, Method::GET, &bad).send().unwrap();
    assert_error(response, 400, "invalid_field", Some("from"));
    // A range nothing falls in: the header alone.
    let empty = format!("{url}?from=2030-01-01T00:00:00Z");
    let response = admin(&fixture.client, Method::GET, &empty).send().unwrap();
    assert_eq!(response.text().unwrap().lines().count(), 1);
}

#[test]
fn donors_hear_of_applied_refunds_once_and_where_they_were_applied() {
    let fixture = Fixture::start();
    create_campaign(&fixture.client, &fixture.server, "meals", "USD");
    fixture.donate("pay-1", "meals", 1000);
    fixture.refund_accepted(&refund("re-1", "pay-1", 300, "refund"));
    fixture.refund_accepted(&refund("re-1", "pay-1", 300, "refund")); // a resend
    fixture.refund_accepted(&refund("re-2", "pay-2", 100, "chargeback")); // before its donation
    fixture.refund_accepted(&refund("re-9", "pay-9", 100, "refund")); // its donation never comes
    fixture.donate("pay-2", "meals", 100);
    fixture.campaign_when("meals", |c| c["refunds"] == 2 && c["donations"] == 2);
    // pay-2 is all back: more is refused, and nothing is owed for it.
    let more = fixture.post("/v1/refunds", &refund("re-3", "pay-2", 1, "refund"));
    assert_error(more, 422, "refund_exceeds_donation", Some("amount_cents"));

    // Every partition's notifications, in the order each page gives them.
    let mut notices: Vec<Value> = Vec::new();
    for partition in 0..8 {
        let url = fixture
            .server
            .url(&format!("/v1/notifications?partition={partition}&after=0"));
        let page = json_ok(
            admin(&fixture.client, Method::GET, &url).send().unwrap(),
            200,
        );
        notices.extend(page["notifications"].as_array().unwrap().iter().cloned());
    }
    let described: Vec<String> = notices
        .iter()
        .map(|n| match n.get("refund_ref") {
            Some(refund_ref) => format!(
                "{} {} of {}",
                n["kind"].as_str().unwrap(),
                refund_ref.as_str().unwrap(),
                n["payment_ref"].as_str().unwrap()
            ),
            None => format!("donation {}", n["payment_ref"].as_str().unwrap()),
        })
        .collect();
    let position = |what: &str| {
        described
            .iter()
            .position(|d| d == what)
            .unwrap_or_else(|| panic!("no {what} in {described:?}"))
    };
    assert_eq!(described.len(), 4, "{described:?}");
    assert!(position("donation pay-1") < position("refund re-1 of pay-1"));
    // The chargeback that came first is told right after its donation.
    assert_eq!(
        position("chargeback re-2 of pay-2"),
        position("donation pay-2") + 1,
        "{described:?}"
    );
    let chargeback = &notices[position("chargeback re-2 of pay-2")];
    assert_eq!(
        keys(chargeback),
        "amount_cents campaign_id currency kind offset order_id partition payment_ref refund_ref refunded_at user_id"
    );
    assert_eq!(chargeback["user_id"], "usr-pay-2");
    assert_eq!(chargeback["campaign_id"], "meals");
    assert_eq!(chargeback["currency"], "USD");
    assert_eq!(chargeback["amount_cents"], 100);
}
