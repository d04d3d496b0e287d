//! Guards the public HTTP API of `tally serve` end to end: every route, every error code and the
//! error shape, against the server `tally serve` runs (`tally::run`), started in this process on
//! 127.0.0.1.
//!
//! Each test starts its own server on its own temporary data directory and groups the assertions
//! that can share it. Nothing sleeps for correctness: where the pipeline has to catch up, a test
//! polls a condition (applied offsets reaching the log end) until a bounded deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use tally::ServerConfig;
use tally_api::signature::{SigningSecret, sign};
use tally_pipeline::clock::{Clock, ManualClock};

use support::in_process::{InProcessServer, clock_at_now};
use support::server::*;

/// How long a polled condition may take before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Partitions of a fresh server's log (the `--partitions` default).
const PARTITIONS: usize = 8;
/// Largest body of one donation callback (`IngestLimits::body_bytes_max`).
const BODY_BYTES_MAX: usize = 16 * 1024;
/// Most donations in one batch (`IngestLimits::batch_items_max`).
const BATCH_ITEMS_MAX: usize = 1000;
/// The signature tolerance, in seconds, either side of the server's clock.
const SIGNATURE_TOLERANCE_S: i64 = 300;
/// The longest request target the server takes (`request_target::URI_BYTES_MAX`).
const URI_BYTES_MAX: usize = 8 * 1024;
/// The largest request head the HTTP layer reads (`connections::REQUEST_HEAD_BYTES_MAX`).
const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// How long a raw connection waits for an answer before the test fails.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Donations: accepted, counted once, looked up, streamed live.

#[test]
fn accepted_donations_are_counted_once_looked_up_and_streamed_live() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("meals", "USD");

    // No currency: the campaign's is used. An explicit matching currency is accepted too.
    let first_body = donation("pay-1", "meals", 250, "usr-1");
    assert!(first_body.get("currency").is_none());
    let first = fixture.donate_accepted(&first_body);
    let mut second_body = donation("pay-2", "meals", 100, "usr-2");
    second_body["currency"] = json!("USD");
    fixture.donate_accepted(&second_body);

    let campaign = fixture.wait_for_total("meals", 350, 2);
    assert_eq!(campaign["status"], "open");
    assert_eq!(campaign["currency"], "USD");
    let freshness = &campaign["freshness"];
    assert_eq!(freshness["lag_records"], 0, "{campaign}");
    assert_eq!(freshness["applied_offsets"], freshness["log_end_offsets"]);
    assert_eq!(
        freshness["applied_offsets"].as_array().unwrap().len(),
        PARTITIONS
    );

    let recorded = fixture.get_ok("/v1/donations/pay-1");
    assert_keys(
        &recorded,
        "amount_cents campaign_id conflicts currency duplicates offset order_id paid_at \
         partition payment_ref recorded_at user_id",
    );
    assert_eq!(recorded["payment_ref"], "pay-1");
    assert_eq!(recorded["order_id"], "ord-pay-1");
    assert_eq!(recorded["user_id"], "usr-1");
    assert_eq!(recorded["campaign_id"], "meals");
    assert_eq!(recorded["amount_cents"], 250);
    assert_eq!(recorded["currency"], "USD", "defaulted from the campaign");
    assert_eq!(recorded["paid_at"], first_body["paid_at"]);
    assert_eq!(recorded["partition"], first.partition);
    assert_eq!(recorded["offset"], first.offset);
    assert_eq!(
        (
            recorded["duplicates"].clone(),
            recorded["conflicts"].clone()
        ),
        (json!(0), json!(0))
    );

    // A resend is acknowledged again, lands in the same partition, and counts once.
    let resent = fixture.donate_accepted(&first_body);
    assert_eq!(resent.partition, first.partition, "keyed by payment_ref");
    let recorded = wait_for("pay-1 to show one duplicate", || {
        let view = fixture.get_ok("/v1/donations/pay-1");
        (view["duplicates"] == 1).then_some(view)
    });
    assert_eq!(
        recorded["offset"], first.offset,
        "the first event stays the recorded one"
    );
    fixture.wait_for_total("meals", 350, 2);

    let listed = fixture.get_ok("/v1/campaigns");
    let meals = find_campaign(&listed, "meals");
    assert_eq!(totals(meals), (350, 2));
    assert!(
        meals.get("freshness").is_none(),
        "the list carries no freshness: {meals}"
    );

    let metrics = fixture.metrics();
    assert_eq!(
        metric(&metrics, "tally_duplicates_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tally_recorded_donations_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "tally_log_appended_records_total"),
        Some(3.0)
    );

    check_live_stream(&fixture);
}

/// `GET /v1/campaigns/meals/live` reports the current total first, then the new one.
fn check_live_stream(fixture: &Fixture) {
    let live_client = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let response = live_client
        .get(fixture.url("/v1/campaigns/meals/live"))
        .header("Accept", "text/event-stream")
        .send()
        .expect("open the live stream");
    assert_eq!(response.status(), 200);
    let content_type = header(&response, "content-type");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut events = BufReader::new(response);
    let current = next_total_event(&mut events);
    assert_keys(
        &current,
        "at campaign_id donations gross_cents refunded_cents refunds total_cents",
    );
    assert_eq!(current["campaign_id"], "meals");
    assert_eq!(totals(&current), (350, 2));

    fixture.donate_accepted(&donation("pay-3", "meals", 100, "usr-3"));
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let update = next_total_event(&mut events);
        if update["total_cents"] == 450 {
            assert_eq!(update["donations"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "no live update to 450: {update}");
    }

    fixture.assert_get_error("/v1/campaigns/nope/live", 404, "campaign_not_found");
}

// ---------------------------------------------------------------------------------------------
// Callbacks that fail a check.

#[test]
fn refused_callbacks_get_their_code_on_a_connection_that_stays_open() {
    // The server's clock stands still, so the tolerance is measured from a known second.
    let fixture = Fixture::start_with_clock(|_| {}, clock_at_now());
    fixture.create_campaign("checks", "USD");
    let good = fixture.donate_accepted(&donation("good-1", "checks", 500, "usr-good"));

    let mut connection = RawConnection::open(&fixture.server);
    let cases = refused_callbacks(fixture.now_s());
    for case in &cases {
        let mut headers = vec![("Content-Type", case.content_type.to_owned())];
        if let Some(signature) = &case.signature {
            headers.push(("Tally-Signature", signature.clone()));
        }
        let request = raw_request("POST", "/v1/donations", &headers, &case.body);
        let (status, body) = connection.exchange(&request);
        assert_eq!(status, case.status, "{}: {body}", case.label);
        assert_error_shape(&body, case.code, case.field);
    }
    // The same connection still takes a good callback.
    let body = serde_json::to_vec(&donation("good-2", "checks", 700, "usr-good")).unwrap();
    let headers = [
        ("Content-Type", "application/json".to_owned()),
        ("Tally-Signature", signed_at(&body, now_s())),
    ];
    let (status, accepted) =
        connection.exchange(&raw_request("POST", "/v1/donations", &headers, &body));
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "accepted");

    check_unreadable_body(&fixture);

    // Only the two good callbacks count; nothing refused was recorded.
    fixture.wait_for_total("checks", 1200, 2);
    assert_eq!(
        fixture.get_ok("/v1/donations/good-1")["offset"],
        good.offset
    );
    for case in &cases {
        let Some(payment_ref) = case.payment_ref() else {
            continue;
        };
        let path = format!("/v1/donations/{payment_ref}");
        fixture.assert_get_error(&path, 404, "donation_not_found");
    }

    check_public_utility_routes(&fixture);
}

/// One refused callback: what is sent and what must come back.
struct RefusedCallback {
    label: String,
    content_type: &'static str,
    signature: Option<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

impl RefusedCallback {
    /// A JSON body, signed now with the server's secret.
    fn signed(label: impl Into<String>, body: Vec<u8>, status: u16, code: &'static str) -> Self {
        Self {
            label: label.into(),
            content_type: "application/json",
            signature: Some(signed_at(&body, now_s())),
            body,
            status,
            code,
            field: None,
        }
    }

    /// The payment it carries, if its body says: it must not be recorded.
    fn payment_ref(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        Some(body.get("payment_ref")?.as_str()?.to_owned())
    }
}

/// How a refused callback's `Tally-Signature` is made.
enum Signed {
    Missing,
    Header(String),
    /// With the right secret, at this Unix time.
    At(i64),
    WithAnotherSecret,
    /// The signature of another body, replayed.
    ForAnotherBody,
}

/// Every way a single callback can be refused, bar the rate limit (its own test).
/// `now`: the server's time, in Unix seconds.
fn refused_callbacks(now: i64) -> Vec<RefusedCallback> {
    let body_of = |payment_ref: &str| {
        serde_json::to_vec(&donation(payment_ref, "checks", 100, "usr-bad")).unwrap()
    };
    let tolerance_s = SIGNATURE_TOLERANCE_S;
    #[rustfmt::skip]
    let signature_cases = [
        ("sig-missing", Signed::Missing, "signature_missing"),
        ("sig-blank", Signed::Header(" ".into()), "signature_missing"),
        ("sig-garbage", Signed::Header("garbage".into()), "signature_malformed"),
        ("sig-nothex", Signed::Header(format!("t={now},v1=xyz")), "signature_malformed"),
        ("sig-no-v1", Signed::Header(format!("t={now}")), "signature_malformed"),
        ("sig-other", Signed::WithAnotherSecret, "signature_mismatch"),
        ("sig-replay", Signed::ForAnotherBody, "signature_mismatch"),
        ("sig-old", Signed::At(now - tolerance_s - 1), "signature_expired"),
        // +5, not +1: a second ticking before the server checks must not bring it in range.
        ("sig-future", Signed::At(now + tolerance_s + 5), "signature_expired"),
    ];
    let mut cases: Vec<RefusedCallback> = signature_cases
        .into_iter()
        .map(|(payment_ref, signed, code)| {
            let body = body_of(payment_ref);
            let signature = match signed {
                Signed::Missing => None,
                Signed::Header(header) => Some(header),
                Signed::At(timestamp_s) => Some(signed_at(&body, timestamp_s)),
                Signed::WithAnotherSecret => {
                    let other_secret = SigningSecret::from_text("not-the-signing-secret");
                    Some(sign(&other_secret, now, &body))
                }
                Signed::ForAnotherBody => Some(signed_at(&body_of("sig-original"), now)),
            };
            RefusedCallback {
                signature,
                ..RefusedCallback::signed(payment_ref, body, 401, code)
            }
        })
        .collect();

    // A good donation changed by a JSON merge patch (RFC 7396: null removes a field).
    #[rustfmt::skip]
    let patch_cases = [
        ("unknown-1", r#"{"tip_cents":5}"#, 400, "unknown_field", "tip_cents"),
        ("missing-1", r#"{"order_id":null}"#, 400, "missing_field", "order_id"),
        ("amount-1", r#"{"amount_cents":"200"}"#, 400, "invalid_field", "amount_cents"),
        ("amount-2", r#"{"amount_cents":2.5}"#, 400, "invalid_field", "amount_cents"),
        ("amount-3", r#"{"amount_cents":-1}"#, 400, "invalid_field", "amount_cents"),
        ("amount-4", r#"{"amount_cents":1e30}"#, 400, "invalid_field", "amount_cents"),
        ("amount-5", r#"{"amount_cents":0}"#, 400, "invalid_field", "amount_cents"),
        ("currency-1", r#"{"currency":"usd"}"#, 400, "invalid_field", "currency"),
        ("paid-at-1", r#"{"paid_at":"yesterday"}"#, 400, "invalid_field", "paid_at"),
        ("ref with space", "{}", 400, "invalid_field", "payment_ref"),
        ("campaign-1", r#"{"campaign_id":"nope"}"#, 422, "unknown_campaign", "campaign_id"),
        ("currency-2", r#"{"currency":"EUR"}"#, 422, "currency_mismatch", "currency"),
    ];
    for (payment_ref, patch, status, code, field) in patch_cases {
        let mut body = donation(payment_ref, "checks", 100, "usr-bad");
        merge_patch(&mut body, patch);
        let label = format!("{payment_ref} {patch}");
        let body = serde_json::to_vec(&body).unwrap();
        cases.push(RefusedCallback {
            field: Some(field),
            ..RefusedCallback::signed(label, body, status, code)
        });
    }

    let signed = RefusedCallback::signed;
    let mut oversize = body_of("big-1");
    oversize.resize(BODY_BYTES_MAX + 1, b' ');
    cases.extend([
        signed(
            "malformed JSON",
            br#"{"payment_ref":"#.to_vec(),
            400,
            "malformed_json",
        ),
        signed(
            "not UTF-8",
            b"{\"payment_ref\":\"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
        ),
        signed("an array", b"[1,2]".to_vec(), 400, "invalid_body"),
        signed("a string", b"\"donation\"".to_vec(), 400, "invalid_body"),
        signed("oversize", oversize, 413, "body_too_large"),
        RefusedCallback {
            content_type: "text/plain",
            ..signed(
                "text/plain",
                body_of("type-1"),
                415,
                "unsupported_media_type",
            )
        },
    ]);
    cases
}

/// A body the server cannot read (broken chunked encoding) is a 400 `unreadable_body`.
fn check_unreadable_body(fixture: &Fixture) {
    let mut connection = RawConnection::open(&fixture.server);
    let request = b"POST /v1/donations HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n";
    let (status, body) = connection.exchange(request);
    assert_eq!(status, 400, "{body}");
    assert_error_shape(&body, "unreadable_body", None);
}

/// `/healthz`, `/metrics`, an unknown route and an unknown donation.
fn check_public_utility_routes(fixture: &Fixture) {
    assert_eq!(fixture.get_ok("/healthz"), json!({"status": "ok"}));
    for (method, path) in [(Method::GET, "/v1/nope"), (Method::POST, "/nope")] {
        let response = fixture.request(method, path);
        assert_error(response, 404, "not_found", None);
    }
    fixture.assert_get_error("/v1/donations/never-sent", 404, "donation_not_found");
    fixture.assert_get_error("/v1/campaigns/nope", 404, "campaign_not_found");

    let response = fixture.get("/metrics");
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/plain"));
    let metrics = response.text().unwrap();
    for series in [
        "tally_http_requests_total",
        "tally_log_end_offset{partition=\"0\"}",
        "tally_applied_offset",
        "tally_duplicates_total",
        "tally_rate_limited_total",
        "tally_notification_backlog_records",
        "tally_checkpoint_age_seconds",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    let refused = metric(
        &metrics,
        "tally_http_requests_total{route=\"/v1/donations\",status=\"401\"}",
    );
    assert!(refused.is_some_and(|count| count >= 9.0), "{metrics}");
    let unmatched = metric(
        &metrics,
        "tally_http_requests_total{route=\"unmatched\",status=\"404\"}",
    );
    assert_eq!(unmatched, Some(2.0), "{metrics}");
    let ends: f64 = (0..PARTITIONS)
        .map(|p| {
            metric(
                &metrics,
                &format!("tally_log_end_offset{{partition=\"{p}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(ends, 2.0, "only the two good callbacks were appended");
}

// ---------------------------------------------------------------------------------------------
// Batches.

#[test]
fn a_batch_records_its_good_items_and_reports_each_bad_one() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("batch", "USD");
    let mut unknown_field = donation("b-4", "batch", 100, "usr-4");
    unknown_field["tip"] = json!(1);
    let mut euro = donation("b-7", "batch", 100, "usr-7");
    euro["currency"] = json!("EUR");
    let mut amount_text = donation("b-1", "batch", 100, "usr-1");
    amount_text["amount_cents"] = json!("200");
    let items = json!([
        donation("b-0", "batch", 100, "usr-0"),
        amount_text,
        donation("b-2", "batch", 200, "usr-2"),
        donation("b-3", "no-such-campaign", 100, "usr-3"),
        unknown_field,
        donation("b-5", "batch", 300, "usr-5"),
        42,
        euro,
    ]);
    let response = fixture.post_signed("/v1/donations/batch", &serde_json::to_vec(&items).unwrap());
    let outcome = json_ok(response, 200);
    assert_keys(&outcome, "accepted rejected results");
    assert_eq!(outcome["accepted"], 3, "{outcome}");

    let rejected: Vec<(u64, &str, Option<&str>)> = outcome["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rejection| {
            let allowed = ["code", "field", "index", "message"];
            assert!(
                keys(rejection)
                    .iter()
                    .all(|k| allowed.contains(&k.as_str())),
                "{rejection}"
            );
            assert!(rejection["message"].as_str().is_some_and(|m| !m.is_empty()));
            (
                rejection["index"].as_u64().unwrap(),
                rejection["code"].as_str().unwrap(),
                rejection.get("field").map(|f| f.as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (1, "invalid_field", Some("amount_cents")),
            (3, "unknown_campaign", Some("campaign_id")),
            (4, "unknown_field", Some("tip")),
            (6, "invalid_body", None),
            (7, "currency_mismatch", Some("currency")),
        ]
    );

    let results = outcome["results"].as_array().unwrap();
    let indexes: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 2, 5]);
    for result in results {
        assert_keys(result, "index offset partition payment_ref");
    }
    fixture.wait_for_total("batch", 600, 3);
    for result in results {
        let path = format!("/v1/donations/{}", result["payment_ref"].as_str().unwrap());
        let recorded = fixture.get_ok(&path);
        assert_eq!(recorded["partition"], result["partition"]);
        assert_eq!(recorded["offset"], result["offset"]);
    }
    for refused in ["b-1", "b-3", "b-4", "b-7"] {
        let path = format!("/v1/donations/{refused}");
        fixture.assert_get_error(&path, 404, "donation_not_found");
    }

    let too_many = vec![json!({}); BATCH_ITEMS_MAX + 1];
    let response = fixture.post_signed(
        "/v1/donations/batch",
        &serde_json::to_vec(&too_many).unwrap(),
    );
    assert_error(response, 413, "batch_too_large", None);
    let response = fixture.post_signed("/v1/donations/batch", br#"{"payment_ref":"b-9"}"#);
    assert_error(response, 400, "invalid_body", None);
    let response = fixture.post_signed("/v1/donations/batch", b"[{");
    assert_error(response, 400, "malformed_json", None);
    let empty = json_ok(fixture.post_signed("/v1/donations/batch", b"[]"), 200);
    assert_eq!(empty, json!({"accepted": 0, "rejected": [], "results": []}));
    let unsigned = fixture
        .client
        .post(fixture.url("/v1/donations/batch"))
        .header("Content-Type", "application/json")
        .body("[]")
        .send()
        .unwrap();
    assert_error(unsigned, 401, "signature_missing", None);
    fixture.wait_for_total("batch", 600, 3);
}

// ---------------------------------------------------------------------------------------------
// The per-user rate limit.

#[test]
fn the_rate_limit_refuses_one_users_burst_and_counts_nothing_refused() {
    // The clock stands still: no allowance refills while the test runs.
    let fixture = Fixture::start_with_clock(
        |config| {
            config.rate_limit.burst = 3;
            config.rate_limit.refill_per_second = 0.5;
        },
        clock_at_now(),
    );
    fixture.create_campaign("rush", "USD");
    for index in 0..3 {
        let payment_ref = format!("busy-{index}");
        fixture.donate_accepted(&donation(&payment_ref, "rush", 100, "usr-busy"));
    }
    let response = fixture.donate(&donation("busy-3", "rush", 100, "usr-busy"));
    let retry_after: u64 = header(&response, "retry-after")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_error(response, 429, "rate_limited", Some("user_id"));

    // Another user is not limited.
    fixture.donate_accepted(&donation("calm-0", "rush", 1000, "usr-calm"));

    let campaign = fixture.wait_for_total("rush", 1300, 4);
    let appended: u64 = campaign["freshness"]["log_end_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|offset| offset.as_u64().unwrap())
        .sum();
    assert_eq!(appended, 4, "the refused donation was not appended");
    fixture.assert_get_error("/v1/donations/busy-3", 404, "donation_not_found");
    assert_eq!(
        metric(&fixture.metrics(), "tally_rate_limited_total"),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Campaign administration, close and reconciliation.

#[test]
fn campaign_admin_needs_the_token_and_a_close_reconciles_the_total() {
    let fixture = Fixture::start(|_| {});
    check_admin_token_is_required(&fixture);
    check_campaign_creation(&fixture);

    // Distinct donations, a duplicate, a conflicting resend and refused ones.
    let a = fixture.donate_accepted(&donation("close-a", "closing", 1000, "usr-a"));
    fixture.donate_accepted(&donation("close-b", "closing", 2500, "usr-b"));
    fixture.donate_accepted(&donation("close-c", "closing", 40, "usr-c"));
    fixture.donate_accepted(&donation("close-a", "closing", 1000, "usr-a"));
    fixture.donate_accepted(&donation("close-b", "closing", 9999, "usr-b"));
    let mut dollars = donation("close-d", "closing", 500, "usr-d");
    dollars["currency"] = json!("USD");
    assert_error(
        fixture.donate(&dollars),
        422,
        "currency_mismatch",
        Some("currency"),
    );

    let closed = json_ok(fixture.close("closing"), 200);
    assert_eq!(closed["status"], "closed", "{closed}");
    assert!(closed["closed_at"].is_string());
    assert_eq!(
        closed["reconciliation"],
        json!({
            "final_total_cents": 3540,
            "final_donations": 3,
            "running_total_cents": 3540,
            "running_donations": 3,
            "matched": true,
        })
    );
    assert_eq!(totals(&closed), (3540, 3));

    // A closed campaign takes no new donation, but a resend of a recorded one is acknowledged
    // with where it is, and nothing is appended.
    let ends_before =
        fixture.get_ok("/v1/campaigns/closing")["freshness"]["log_end_offsets"].clone();
    let response = fixture.donate(&donation("close-e", "closing", 100, "usr-e"));
    assert_error(response, 422, "campaign_closed", Some("campaign_id"));
    let resent = fixture.donate_accepted(&donation("close-a", "closing", 1000, "usr-a"));
    assert_eq!((resent.partition, resent.offset), (a.partition, a.offset));
    let campaign = fixture.get_ok("/v1/campaigns/closing");
    assert_eq!(campaign["freshness"]["log_end_offsets"], ends_before);
    assert_eq!(campaign["status"], "closed");
    assert_eq!(campaign["total_cents"], 3540);

    // Closing again answers the same reconciliation.
    let again = json_ok(fixture.close("closing"), 200);
    assert_eq!(again["reconciliation"], closed["reconciliation"]);
    assert_eq!(again["closed_at"], closed["closed_at"]);
    let response = fixture.close("nope");
    assert_error(response, 404, "campaign_not_found", None);
}

fn check_admin_token_is_required(fixture: &Fixture) {
    let body = json!({"campaign_id": "closing", "name": "Closing", "currency": "EUR"});
    let url = fixture.url("/v1/campaigns");
    let missing = fixture.client.post(&url).json(&body).send().unwrap();
    assert_error(missing, 401, "admin_token_missing", None);
    let not_bearer = fixture
        .client
        .post(&url)
        .header("Authorization", format!("Basic {ADMIN_TOKEN}"))
        .json(&body)
        .send()
        .unwrap();
    assert_error(not_bearer, 401, "admin_token_missing", None);
    let wrong = fixture
        .client
        .post(&url)
        .header("Authorization", "Bearer not-the-token")
        .json(&body)
        .send()
        .unwrap();
    assert_error(wrong, 401, "admin_token_invalid", None);
    let close = fixture.request(Method::POST, "/v1/campaigns/closing/close");
    assert_error(close, 401, "admin_token_missing", None);
    fixture.assert_get_error("/v1/campaigns/closing", 404, "campaign_not_found");
}

fn check_campaign_creation(fixture: &Fixture) {
    let definition = json!({
        "campaign_id": "closing",
        "name": "Closing time",
        "currency": "EUR",
        "goal_cents": 100000,
        "starts_at": "2026-01-01T00:00:00Z",
        "ends_at": "2027-01-01T00:00:00Z",
    });
    let created = json_ok(fixture.admin_json("/v1/campaigns", &definition), 201);
    assert_keys(
        &created,
        "campaign_id chargeback_cents chargebacks closed_at created_at currency donations \
         ends_at goal_cents gross_cents name net_cents reconciliation refunded_cents refunds \
         starts_at status total_cents",
    );
    for field in [
        "campaign_id",
        "name",
        "currency",
        "goal_cents",
        "starts_at",
        "ends_at",
    ] {
        assert_eq!(created[field], definition[field], "{field}");
    }
    assert_eq!(created["status"], "open");
    assert_eq!(totals(&created), (0, 0));
    assert!(created["closed_at"].is_null() && created["reconciliation"].is_null());

    let create = |body: Value| fixture.admin_json("/v1/campaigns", &body);
    assert_error(
        create(definition.clone()),
        409,
        "campaign_exists",
        Some("campaign_id"),
    );
    // A valid definition changed by a JSON merge patch; each is refused for one field.
    #[rustfmt::skip]
    let invalid = [
        (r#"{"currency":"usd"}"#, "currency"),
        (r#"{"currency":"EURO"}"#, "currency"),
        (r#"{"campaign_id":"Bad Id"}"#, "campaign_id"),
        (r#"{"campaign_id":""}"#, "campaign_id"),
        (r#"{"name":""}"#, "name"),
        (r#"{"goal_cents":0}"#, "goal_cents"),
        (r#"{"starts_at":"soon"}"#, "starts_at"),
        (r#"{"starts_at":"2026-02-01T00:00:00Z","ends_at":"2026-01-01T00:00:00Z"}"#, "ends_at"),
    ];
    for (patch, field) in invalid {
        let mut body = json!({"campaign_id": "c1", "name": "c", "currency": "USD"});
        merge_patch(&mut body, patch);
        assert_error(create(body), 400, "invalid_field", Some(field));
    }
    let unknown = create(json!({"campaign_id": "c1", "name": "c", "currency": "USD", "tip": 1}));
    assert_error(unknown, 400, "invalid_body", Some("tip"));
    let missing = create(json!({"campaign_id": "c1", "name": "c"}));
    assert_error(missing, 400, "invalid_body", Some("currency"));
    let malformed = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "application/json")
        .body("{\"campaign_id\":")
        .send()
        .unwrap();
    assert_error(malformed, 400, "invalid_body", None);
    let text = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "text/plain")
        .body(definition.to_string())
        .send()
        .unwrap();
    assert_error(text, 415, "unsupported_media_type", None);
    let huge = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "application/json")
        .body(vec![b' '; BODY_BYTES_MAX + 1])
        .send()
        .unwrap();
    assert_error(huge, 413, "body_too_large", None);

    fixture.create_campaign("other", "USD");
    let listed = fixture.get_ok("/v1/campaigns");
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["campaign_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["closing", "other"]);
    assert_eq!(find_campaign(&listed, "closing")["name"], "Closing time");
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// The query parameters of a statistics request.
type StatsQuery<'a> = &'a [(&'a str, &'a str)];

#[test]
fn stats_summarize_a_range_and_refuse_bad_parameters() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("stats", "USD");
    // A whole hour three hours ago: every paid_at below is in the past.
    let hour_s = (now_s() / 3600 - 3) * 3600;
    let at = |minutes: i64| rfc3339_s(hour_s + minutes * 60);
    // Amounts up to 200 cents are bucketed exactly, so the percentiles are exact too.
    let paid = [(5, 10), (40, 20), (70, 30), (119, 40), (-1, 50), (120, 60)];
    for (index, (minutes, amount)) in paid.iter().enumerate() {
        let mut body = donation(
            &format!("stat-{index}"),
            "stats",
            *amount,
            &format!("usr-{index}"),
        );
        body["paid_at"] = json!(at(*minutes));
        fixture.donate_accepted(&body);
    }
    fixture.wait_for_total("stats", 210, 6);

    // Both ends are truncated to the minute; `to` is exclusive.
    let from = rfc3339_s(hour_s + 30);
    let to = rfc3339_s(hour_s + 2 * 3600 + 45);
    let stats = fixture.stats(&[("from", &from), ("to", &to), ("bucket", "hour")]);
    let stats = json_ok(stats, 200);
    assert_eq!(stats["campaign_id"], "stats");
    assert_eq!(stats["from"], json!(at(0)));
    assert_eq!(stats["to"], json!(at(120)));
    let summary: Vec<Value> = [
        "count",
        "sum_cents",
        "min_cents",
        "max_cents",
        "mean_cents",
        "p50_cents",
        "p90_cents",
        "p99_cents",
    ]
    .iter()
    .map(|name| stats[*name].clone())
    .collect();
    assert_eq!(
        Value::from(summary),
        json!([4, 100, 10, 40, 25, 20, 40, 40]),
        "{stats}"
    );
    assert!(stats.get("complete_through").is_some(), "{stats}");
    assert_eq!(
        stats["series"],
        json!([
            {"start": at(0), "count": 2, "sum_cents": 30, "refunds": 0, "refunded_cents": 0},
            {"start": at(60), "count": 2, "sum_cents": 70, "refunds": 0, "refunded_cents": 0},
        ])
    );

    // Without a bucket there is no series; an empty range has no amounts.
    let plain = json_ok(fixture.stats(&[("from", &at(0)), ("to", &at(60))]), 200);
    assert!(plain.get("series").is_none(), "{plain}");
    assert_eq!(
        (plain["count"].clone(), plain["sum_cents"].clone()),
        (json!(2), json!(30))
    );
    let minutes = json_ok(
        fixture.stats(&[("from", &at(0)), ("to", &at(10)), ("bucket", "minute")]),
        200,
    );
    assert_eq!(minutes["series"].as_array().unwrap().len(), 10);
    let empty = json_ok(
        fixture.stats(&[("from", &at(-600)), ("to", &at(-540))]),
        200,
    );
    assert_eq!(empty["count"], 0);
    for name in [
        "min_cents",
        "max_cents",
        "mean_cents",
        "p50_cents",
        "p90_cents",
        "p99_cents",
    ] {
        assert!(empty[name].is_null(), "{name}: {empty}");
    }

    let (early, late) = (rfc3339_s(hour_s + 10), rfc3339_s(hour_s + 50));
    #[rustfmt::skip]
    let refused: [(StatsQuery, &str, &str); 8] = [
        (&[("to", &to)], "missing_field", "from"),
        (&[("from", &from)], "missing_field", "to"),
        (&[("from", "yesterday"), ("to", &to)], "invalid_field", "from"),
        (&[("from", &from), ("to", "2026-13-01T00:00:00Z")], "invalid_field", "to"),
        (&[("from", &to), ("to", &from)], "invalid_range", "to"),
        (&[("from", &early), ("to", &late)], "invalid_range", "to"),
        (&[("from", &from), ("to", &to), ("bucket", "week")], "invalid_field", "bucket"),
        (&[("from", &from), ("to", &to), ("granularity", "hour")], "unknown_field", "granularity"),
    ];
    for (parameters, code, field) in refused {
        assert_error(fixture.stats(parameters), 400, code, Some(field));
    }
    let two_days = rfc3339_s(hour_s - 2 * 86_400);
    let response = fixture.stats(&[("from", &two_days), ("to", &from), ("bucket", "minute")]);
    assert_error(response, 400, "series_too_long", Some("bucket"));
    let response = fixture
        .client
        .get(fixture.url("/v1/campaigns/nope/stats"))
        .query(&[("from", &from), ("to", &to)])
        .send()
        .unwrap();
    assert_error(response, 404, "campaign_not_found", None);
}

#[test]
fn rolled_up_time_answers_by_the_hour_and_refuses_a_minute_series() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("stats", "USD");
    // One donation now moves the watermark; one 20 days back is in time whose minutes the
    // default 14-day horizon has rolled up into hours.
    let now_hour_s = (now_s() / 3600) * 3600;
    let old_s = now_hour_s - 20 * 86_400 + 15 * 60;
    for (index, paid_at_s) in [now_s() - 60, old_s].into_iter().enumerate() {
        let mut body = donation(&format!("rolled-{index}"), "stats", 100, "usr-rolled");
        body["paid_at"] = json!(rfc3339_s(paid_at_s));
        fixture.donate_accepted(&body);
    }
    fixture.wait_for_total("stats", 200, 2);
    let (from, to) = (rfc3339_s(old_s - 600), rfc3339_s(old_s + 3600));
    let answer = json_ok(fixture.stats(&[("from", &from), ("to", &to)]), 200);
    assert_eq!(
        (&answer["resolution"], &answer["from"], &answer["count"]),
        (
            &json!("hour"),
            &json!(rfc3339_s(now_hour_s - 20 * 86_400)),
            &json!(1)
        ),
        "{answer}"
    );
    let response = fixture.stats(&[("from", &from), ("to", &to), ("bucket", "minute")]);
    assert_error(
        response,
        400,
        "series_finer_than_resolution",
        Some("bucket"),
    );
}

/// The widest range RFC 3339 can name, as a client asks for "everything".
const WIDEST_FROM: &str = "0000-01-01T00:00:00Z";
const WIDEST_TO: &str = "9999-12-31T23:59:00Z";

#[test]
fn the_widest_range_answers_on_empty_and_populated_campaigns_and_its_series_is_refused() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("stats", "USD");
    let widest = [("from", WIDEST_FROM), ("to", WIDEST_TO)];
    let empty = json_ok(fixture.stats(&widest), 200);
    assert_eq!(
        (&empty["from"], &empty["to"], &empty["count"]),
        (&json!(WIDEST_FROM), &json!(WIDEST_TO), &json!(0)),
        "{empty}"
    );
    assert!(
        empty["min_cents"].is_null() && empty.get("series").is_none(),
        "{empty}"
    );

    let hour_s = (now_s() / 3600 - 3) * 3600;
    for (index, (minutes, amount)) in [(0, 10), (-3000, 20), (1, 30)].into_iter().enumerate() {
        let mut body = donation(&format!("wide-{index}"), "stats", amount, "usr-wide");
        body["paid_at"] = json!(rfc3339_s(hour_s + minutes * 60));
        fixture.donate_accepted(&body);
    }
    fixture.wait_for_total("stats", 60, 3);
    let populated = json_ok(fixture.stats(&widest), 200);
    assert_eq!(
        (
            &populated["count"],
            &populated["sum_cents"],
            &populated["min_cents"],
            &populated["max_cents"]
        ),
        (&json!(3), &json!(60), &json!(10), &json!(30)),
        "{populated}"
    );
    for bucket in ["minute", "hour", "day"] {
        let response = fixture.stats(&[widest[0], widest[1], ("bucket", bucket)]);
        assert_error(response, 400, "series_too_long", Some("bucket"));
    }
    // The longest series allowed: 1440 days, every point there, empty ones included.
    let to_s = (now_s() / 86_400 + 1) * 86_400;
    let (from, to) = (rfc3339_s(to_s - 1440 * 86_400), rfc3339_s(to_s));
    let days = json_ok(
        fixture.stats(&[("from", &from), ("to", &to), ("bucket", "day")]),
        200,
    );
    let series = days["series"].as_array().unwrap();
    assert_eq!(series.len(), 1440);
    let counted: u64 = series.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 3);
    assert_eq!(
        series.iter().filter(|p| p["count"] != 0).count(),
        2,
        "{days}"
    );
}

// ---------------------------------------------------------------------------------------------
// Notifications without a webhook, and checkpoints.

#[test]
fn notifications_page_through_recorded_donations_and_ack_moves_the_cursor() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("notify", "USD");
    let mut by_partition: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for index in 0..16 {
        let payment_ref = format!("note-{index}");
        let user_id = format!("usr-{index}");
        let placement =
            fixture.donate_accepted(&donation(&payment_ref, "notify", 100 + index, &user_id));
        by_partition
            .entry(placement.partition)
            .or_default()
            .push((placement.offset, payment_ref));
    }
    // The partition with the most donations, and one duplicate in it that is not notified twice.
    let (&partition, recorded) = by_partition
        .iter()
        .max_by_key(|(_, refs)| refs.len())
        .unwrap();
    assert!(recorded.len() >= 2, "16 donations over 8 partitions");
    let duplicate_ref = &recorded[0].1;
    let index: u64 = duplicate_ref.trim_start_matches("note-").parse().unwrap();
    let user_id = format!("usr-{index}");
    let duplicate =
        fixture.donate_accepted(&donation(duplicate_ref, "notify", 100 + index, &user_id));
    assert_eq!(duplicate.partition, partition);
    let campaign = fixture.wait_for_total("notify", (100..116).sum(), 16);
    let end_offset = campaign["freshness"]["log_end_offsets"][partition as usize].clone();
    assert_eq!(end_offset, duplicate.offset + 1);

    let path = format!("/v1/notifications?partition={partition}");
    fixture.assert_get_error(&path, 401, "admin_token_missing");
    let page = json_ok(fixture.admin_send(Method::GET, &path), 200);
    assert_keys(&page, "next_offset notifications partition");
    assert_eq!(page["partition"], partition);
    assert_eq!(page["next_offset"], end_offset);
    let notified: Vec<(u64, String)> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["offset"].as_u64().unwrap(),
                n["payment_ref"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        &notified, recorded,
        "recorded donations, in log order, once each"
    );
    let first = &page["notifications"][0];
    assert_keys(
        first,
        "amount_cents campaign_id currency offset order_id paid_at partition payment_ref \
         user_id",
    );
    assert_eq!(first["partition"], partition);
    assert_eq!(first["campaign_id"], "notify");
    assert_eq!(first["currency"], "USD");
    assert_eq!(first["amount_cents"], 100 + index);
    assert_eq!(first["order_id"], format!("ord-{duplicate_ref}"));

    let zero = fixture.admin_send(Method::GET, &format!("{path}&limit=0"));
    assert_error(zero, 400, "invalid_field", Some("limit"));
    // `limit` and `after` page through without moving the cursor.
    let one = json_ok(
        fixture.admin_send(Method::GET, &format!("{path}&limit=1")),
        200,
    );
    assert_eq!(one["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(one["next_offset"], recorded[0].0 + 1);
    let rest_path = format!("{path}&after={}", one["next_offset"]);
    let rest = json_ok(fixture.admin_send(Method::GET, &rest_path), 200);
    assert_eq!(
        rest["notifications"].as_array().unwrap().len(),
        recorded.len() - 1
    );

    let ack = json!({"partition": partition, "next_offset": page["next_offset"]});
    let unauthorized = fixture
        .client
        .post(fixture.url("/v1/notifications/ack"))
        .json(&ack)
        .send()
        .unwrap();
    assert_error(unauthorized, 401, "admin_token_missing", None);
    let acked = json_ok(fixture.admin_json("/v1/notifications/ack", &ack), 200);
    assert_eq!(acked, ack);
    let after_ack = json_ok(fixture.admin_send(Method::GET, &path), 200);
    assert_eq!(after_ack["notifications"], json!([]));
    assert_eq!(after_ack["next_offset"], end_offset);
    // The cursor never moves back.
    let back = json!({"partition": partition, "next_offset": 0});
    let acked = json_ok(fixture.admin_json("/v1/notifications/ack", &back), 200);
    assert_eq!(acked["next_offset"], end_offset);

    let out_of_range = format!("/v1/notifications?partition={PARTITIONS}");
    let response = fixture.admin_send(Method::GET, &out_of_range);
    assert_error(response, 400, "invalid_field", Some("partition"));
    let response = fixture.admin_send(Method::GET, "/v1/notifications?limit=many");
    assert_error(response, 400, "invalid_field", Some("limit"));
    let bad_ack = json!({"partition": PARTITIONS, "next_offset": 0});
    let response = fixture.admin_json("/v1/notifications/ack", &bad_ack);
    assert_error(response, 400, "invalid_field", Some("partition"));

    check_checkpoints(&fixture, partition, &end_offset);
}

fn check_checkpoints(fixture: &Fixture, partition: u64, end_offset: &Value) {
    fixture.assert_get_error("/v1/checkpoints", 401, "admin_token_missing");
    let checkpoints = json_ok(fixture.admin_send(Method::GET, "/v1/checkpoints"), 200);
    let checkpoints = checkpoints.as_array().expect("an array");
    assert_eq!(checkpoints.len(), PARTITIONS, "one entry per partition");
    for (index, checkpoint) in checkpoints.iter().enumerate() {
        if checkpoint.is_null() {
            continue; // a partition that has not committed a checkpoint yet
        }
        assert_keys(
            checkpoint,
            "committed_at_ms next_offset partition records_applied sequence state_digest",
        );
        assert_eq!(checkpoint["partition"], index);
    }
    let ours = &checkpoints[partition as usize];
    assert_eq!(&ours["next_offset"], end_offset, "{ours}");
}

// ---------------------------------------------------------------------------------------------
// Edge cases of the error contract and of admin operations.

#[test]
fn a_wrong_method_answers_with_the_error_shape() {
    let fixture = Fixture::start(|_| {});
    for (method, path) in [
        (Method::GET, "/v1/donations"),
        (Method::DELETE, "/v1/campaigns"),
        (Method::PUT, "/v1/notifications/ack"),
    ] {
        let response = fixture.request(method, path);
        assert!(!header(&response, "allow").is_empty());
        assert_error(response, 405, "method_not_allowed", None);
    }
}

#[test]
fn a_path_parameter_that_is_not_utf8_answers_with_the_error_shape() {
    let fixture = Fixture::start(|_| {});
    for (path, field) in [
        ("/v1/campaigns/%FF", "campaign_id"),
        ("/v1/campaigns/%FF/stats", "campaign_id"),
        ("/v1/donations/%FF", "payment_ref"),
    ] {
        assert_error(fixture.get(path), 400, "invalid_field", Some(field));
    }
}

#[test]
fn checkpoint_age_is_small_on_a_fresh_server() {
    let fixture = Fixture::start(|_| {});
    let metrics = fixture.metrics();
    for partition in 0..PARTITIONS {
        let series = format!("tally_checkpoint_age_seconds{{partition=\"{partition}\"}}");
        if let Some(age_s) = metric(&metrics, &series) {
            assert!(age_s < 600.0, "{series} {age_s}");
        }
    }
}

#[test]
fn a_notification_partition_beyond_u32_is_refused() {
    let fixture = Fixture::start(|_| {});
    let path = format!("/v1/notifications?partition={}", u64::from(u32::MAX) + 1);
    let response = fixture.admin_send(Method::GET, &path);
    assert_error(response, 400, "invalid_field", Some("partition"));
}

#[test]
fn concurrent_closes_all_answer_the_closed_campaign() {
    let fixture = Fixture::start(|_| {});
    let campaigns = ["race-1", "race-2", "race-3", "race-4"];
    for campaign in campaigns {
        fixture.create_campaign(campaign, "USD");
    }
    for campaign in campaigns {
        let path = format!("/v1/campaigns/{campaign}/close");
        let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
            let closers: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        let response = fixture.admin_send(Method::POST, &path);
                        (response.status().as_u16(), response.text().unwrap())
                    })
                })
                .collect();
            closers
                .into_iter()
                .map(|closer| closer.join().unwrap())
                .collect()
        });
        for (status, body) in answers {
            assert_eq!(status, 200, "{campaign}: {body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies and request targets at their edges.

#[test]
fn a_key_given_twice_is_refused_in_every_body() {
    let fixture = Fixture::start(|_| {});
    fixture.create_campaign("twice", "USD");
    let good = |payment_ref: &str| {
        serde_json::to_string(&donation(payment_ref, "twice", 100, "usr-twice")).unwrap()
    };
    // The last value would win: 999999 would be recorded for a body that says 100 first.
    let repeated_amount = good("twice-1").replace(
        "\"amount_cents\":100",
        "\"amount_cents\":100,\"amount_cents\":999999",
    );
    assert!(repeated_amount.contains("999999"), "{repeated_amount}");
    let response = fixture.post_signed("/v1/donations", repeated_amount.as_bytes());
    assert_error(response, 400, "duplicate_field", Some("amount_cents"));
    fixture.assert_get_error("/v1/donations/twice-1", 404, "donation_not_found");

    // In a batch, the item is refused on its own, like any other bad item; nested objects too.
    let nested = good("twice-3").replace('}', ",\"meta\":{\"x\":1,\"x\":2}}");
    let escaped = good("twice-4").replace("\"user_id\"", "\"user_id\":\"usr-x\",\"user\\u005fid\"");
    let batch = format!(
        "[{},{},{},{}]",
        good("twice-2"),
        repeated_amount,
        nested,
        escaped
    );
    let outcome = json_ok(
        fixture.post_signed("/v1/donations/batch", batch.as_bytes()),
        200,
    );
    assert_eq!(outcome["accepted"], 1, "{outcome}");
    assert_eq!(outcome["results"][0]["payment_ref"], "twice-2");
    let rejected: Vec<(u64, &str, &str)> = outcome["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["code"].as_str().unwrap(),
                r["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (1, "duplicate_field", "amount_cents"),
            (2, "duplicate_field", "x"),
            (3, "duplicate_field", "user_id"),
        ]
    );

    // Admin bodies: a campaign definition and an acknowledgement.
    let definition = r#"{"campaign_id":"c1","name":"c","currency":"USD","currency":"EUR"}"#;
    let response = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "application/json")
        .body(definition)
        .send()
        .unwrap();
    assert_error(response, 400, "duplicate_field", Some("currency"));
    fixture.assert_get_error("/v1/campaigns/c1", 404, "campaign_not_found");
    let ack = r#"{"partition":0,"next_offset":0,"partition":1}"#;
    let response = fixture
        .admin(Method::POST, "/v1/notifications/ack")
        .header("Content-Type", "application/json")
        .body(ack)
        .send()
        .unwrap();
    assert_error(response, 400, "duplicate_field", Some("partition"));
}

#[test]
fn an_admin_body_of_the_wrong_type_names_the_field() {
    let fixture = Fixture::start(|_| {});
    #[rustfmt::skip]
    let cases = [
        (json!({"campaign_id": "c1", "name": 5, "currency": "USD"}), "name"),
        (json!({"campaign_id": "c1", "name": "c", "currency": "USD", "goal_cents": "5"}), "goal_cents"),
        (json!({"campaign_id": "c1", "name": "c", "currency": "USD", "goal_cents": -1}), "goal_cents"),
        (json!({"campaign_id": ["c1"], "name": "c", "currency": "USD"}), "campaign_id"),
    ];
    for (body, field) in cases {
        let response = fixture.admin_json("/v1/campaigns", &body);
        assert_error(response, 400, "invalid_body", Some(field));
    }
    let ack = json!({"partition": u64::from(u32::MAX) + 1, "next_offset": 0});
    let response = fixture.admin_json("/v1/notifications/ack", &ack);
    assert_error(response, 400, "invalid_body", Some("partition"));
    let ack = json!({"partition": 0, "next_offset": "zero"});
    let response = fixture.admin_json("/v1/notifications/ack", &ack);
    assert_error(response, 400, "invalid_body", Some("next_offset"));
}

#[test]
fn a_body_is_refused_from_its_headers_before_it_is_read() {
    let fixture = Fixture::start(|_| {});
    let admin_token = ("Authorization", format!("Bearer {ADMIN_TOKEN}"));
    // A declared length over the route's limit is refused at once: the client that waits for
    // `100 Continue` hears 413 instead, and never sends the body.
    for (path, bytes_max) in [
        ("/v1/donations", BODY_BYTES_MAX),
        ("/v1/donations/batch", 1024 * 1024),
        ("/v1/campaigns", BODY_BYTES_MAX),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             {}: {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            admin_token.0,
            admin_token.1,
            bytes_max + 1
        );
        let mut connection = RawConnection::open(&fixture.server);
        let (status, body) = connection.exchange(request.as_bytes());
        assert_eq!(status, 413, "{path}: {body}");
        assert_error_shape(&body, "body_too_large", None);
    }

    // A compressed body is refused whatever it holds: the signature covers the bytes as sent.
    let body = serde_json::to_vec(&donation("gzip-1", "nope", 100, "usr-gzip")).unwrap();
    for encoding in ["gzip", "identity, br", "x-unknown"] {
        let response = fixture
            .client
            .post(fixture.url("/v1/donations"))
            .header("Content-Type", "application/json")
            .header("Content-Encoding", encoding)
            .header("Tally-Signature", signed_at(&body, now_s()))
            .body(body.clone())
            .send()
            .unwrap();
        assert_error(response, 415, "unsupported_encoding", None);
    }
    let response = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "deflate")
        .body(r#"{"campaign_id":"c1","name":"c","currency":"USD"}"#)
        .send()
        .unwrap();
    assert_error(response, 415, "unsupported_encoding", None);
    // `identity` is the body as is.
    let response = fixture
        .admin(Method::POST, "/v1/campaigns")
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "identity")
        .body(r#"{"campaign_id":"c1","name":"c","currency":"USD"}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[test]
fn an_overlong_request_target_answers_414_in_the_error_shape() {
    let fixture = Fixture::start(|_| {});
    let long_id = "a".repeat(URI_BYTES_MAX);
    for path in [
        format!("/v1/campaigns/{long_id}"),
        format!("/healthz?padding={long_id}"),
        format!("/v1/nope/{long_id}"),
    ] {
        assert_error(fixture.get(&path), 414, "uri_too_long", None);
        let response = fixture.request(Method::POST, &path);
        assert_error(response, 414, "uri_too_long", None);
    }
    // At the limit, the route answers.
    let at_limit = format!(
        "/healthz?p={}",
        "a".repeat(URI_BYTES_MAX - "/healthz?p=".len())
    );
    assert_eq!(fixture.get_ok(&at_limit), json!({"status": "ok"}));
    // A head over the HTTP layer's buffer is refused there, before any route: 431, no body.
    let over_head = format!("/healthz?p={}", "a".repeat(REQUEST_HEAD_BYTES_MAX));
    let response = fixture.get(&over_head);
    assert_eq!(response.status(), 431);
    assert_eq!(response.text().unwrap(), "");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A running server on its own data directory (removed when it stops), and a client for it.
struct Fixture {
    server: InProcessServer,
    client: Client,
    /// The server's clock, where the test holds it.
    clock: Option<ManualClock>,
}

/// Where the server says a donation is: its answer to a 202.
#[derive(Debug, Clone, Copy)]
struct Placement {
    partition: u64,
    offset: u64,
}

impl Fixture {
    /// A server with `configure`'s changes to the test configuration, on the system clock.
    fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self {
            server: InProcessServer::start(configure),
            client: client(),
            clock: None,
        }
    }

    /// As [`start`](Self::start), on a clock the test holds.
    fn start_with_clock(configure: impl FnOnce(&mut ServerConfig), clock: ManualClock) -> Self {
        Self {
            server: InProcessServer::start_with_clock(configure, Arc::new(clock.clone())),
            client: client(),
            clock: Some(clock),
        }
    }

    /// The server's time, in Unix seconds.
    fn now_s(&self) -> i64 {
        match &self.clock {
            Some(clock) => clock.now_ms().div_euclid(1000),
            None => now_s(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().expect("GET")
    }

    #[track_caller]
    fn get_ok(&self, path: &str) -> Value {
        json_ok(self.get(path), 200)
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        admin(&self.client, method, &self.url(path))
    }

    /// A request without a body or credentials.
    fn request(&self, method: Method, path: &str) -> Response {
        self.client
            .request(method, self.url(path))
            .send()
            .expect("a request")
    }

    /// GETs `path` and checks that it is refused with `status` and `code` (no field).
    #[track_caller]
    fn assert_get_error(&self, path: &str, status: u16, code: &str) {
        assert_error(self.get(path), status, code, None);
    }

    fn admin_send(&self, method: Method, path: &str) -> Response {
        self.admin(method, path).send().expect("an admin request")
    }

    fn admin_json(&self, path: &str, body: &Value) -> Response {
        let request = self.admin(Method::POST, path).json(body);
        request.send().expect("an admin request")
    }

    fn close(&self, campaign_id: &str) -> Response {
        self.admin_send(Method::POST, &format!("/v1/campaigns/{campaign_id}/close"))
    }

    fn create_campaign(&self, campaign_id: &str, currency: &str) {
        create_campaign(&self.client, &self.server, campaign_id, currency);
    }

    fn post_signed(&self, path: &str, body: &[u8]) -> Response {
        post_signed(&self.client, &self.url(path), body).expect("POST")
    }

    fn donate(&self, body: &Value) -> Response {
        self.post_signed("/v1/donations", &serde_json::to_vec(body).unwrap())
    }

    /// Posts a donation that must be accepted, checks the 202 answer, and says where it is.
    #[track_caller]
    fn donate_accepted(&self, body: &Value) -> Placement {
        let accepted = json_ok(self.donate(body), 202);
        assert_keys(&accepted, "offset partition payment_ref status");
        assert_eq!(accepted["status"], "accepted");
        assert_eq!(accepted["payment_ref"], body["payment_ref"]);
        let placement = Placement {
            partition: accepted["partition"].as_u64().expect("partition"),
            offset: accepted["offset"].as_u64().expect("offset"),
        };
        assert!(placement.partition < PARTITIONS as u64, "{accepted}");
        placement
    }

    fn stats(&self, parameters: StatsQuery) -> Response {
        self.client
            .get(self.url("/v1/campaigns/stats/stats"))
            .query(parameters)
            .send()
            .expect("GET stats")
    }

    fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status(), 200);
        response.text().unwrap()
    }

    /// Polls the campaign until every partition has applied the whole log and the total is the
    /// expected one; the campaign view then.
    #[track_caller]
    fn wait_for_total(&self, campaign_id: &str, total_cents: u64, donations: u64) -> Value {
        let path = format!("/v1/campaigns/{campaign_id}");
        wait_for(
            &format!("{campaign_id} to reach {total_cents} cents"),
            || {
                let campaign = self.get_ok(&path);
                let caught_up = campaign["freshness"]["lag_records"] == 0;
                let counted =
                    campaign["total_cents"] == total_cents && campaign["donations"] == donations;
                (caught_up && counted).then_some(campaign)
            },
        )
    }
}

/// Polls `probe` until it answers, failing after [`WAIT_MAX`].
#[track_caller]
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A valid donation paid an hour ago (whatever today's date).
fn donation(payment_ref: &str, campaign_id: &str, amount_cents: u64, user_id: &str) -> Value {
    let mut body = donation_json(payment_ref, campaign_id, amount_cents, user_id);
    body["paid_at"] = json!(rfc3339_s(now_s() - 3600));
    body
}

/// Applies a JSON merge patch (RFC 7396, one level deep): `null` removes a field.
fn merge_patch(value: &mut Value, patch: &str) {
    let patch: Value = serde_json::from_str(patch).expect("a patch is JSON");
    let object = value.as_object_mut().expect("an object to patch");
    for (key, change) in patch.as_object().expect("a patch is an object") {
        match change {
            Value::Null => object.remove(key),
            change => object.insert(key.clone(), change.clone()),
        };
    }
}

fn rfc3339_s(unix_s: i64) -> String {
    tally_query::views::rfc3339(unix_s * 1000)
}

/// The `Tally-Signature` value for `body` signed at `timestamp_s` with the server's secret.
fn signed_at(body: &[u8], timestamp_s: i64) -> String {
    sign(&SigningSecret::from_text(SIGNING_SECRET), timestamp_s, body)
}

#[track_caller]
fn json_ok(response: Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().expect("a response body");
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Checks an error answer: its status, and a body of exactly
/// `{"error": {"code", "message", "field"?}}` with this code and field.
#[track_caller]
fn assert_error(response: Response, status: u16, code: &str, field: Option<&str>) -> Value {
    let actual = response.status().as_u16();
    let content_type = header(&response, "content-type");
    let text = response.text().expect("an error body");
    assert_eq!(actual, status, "{text}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}: {text:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body not JSON ({e}): {text:?}"));
    assert_error_shape(&body, code, field);
    body
}

#[track_caller]
fn assert_error_shape(body: &Value, code: &str, field: Option<&str>) {
    assert_eq!(keys(body), ["error"], "{body}");
    let error = &body["error"];
    let expected_keys: &[&str] = match field {
        Some(_) => &["code", "field", "message"],
        None => &["code", "message"],
    };
    assert_eq!(keys(error), expected_keys, "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(error["field"], field, "{body}");
    }
}

/// Checks that `value` is an object with exactly these keys (space-separated, sorted).
#[track_caller]
fn assert_keys(value: &Value, expected: &str) {
    assert_eq!(keys(value).join(" "), expected, "{value}");
}

/// A campaign's (or live event's) `total_cents` and `donations`.
fn totals(view: &Value) -> (u64, u64) {
    let count = |name: &str| {
        view[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {view}"))
    };
    (count("total_cents"), count("donations"))
}

/// An object's keys, sorted (empty for anything else).
fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|object| {
            object
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .unwrap_or_default()
}

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn find_campaign<'a>(listed: &'a Value, campaign_id: &str) -> &'a Value {
    listed
        .as_array()
        .expect("a list of campaigns")
        .iter()
        .find(|campaign| campaign["campaign_id"] == campaign_id)
        .unwrap_or_else(|| panic!("{campaign_id} is not listed: {listed}"))
}

/// The value of one series (`name` or `name{labels}`) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// The data of the next `event: total` on a Server-Sent Events stream.
fn next_total_event(events: &mut impl BufRead) -> Value {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        let read = events.read_line(&mut line).expect("read the event stream");
        assert!(read > 0, "the event stream ended");
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            if event == "total" {
                return serde_json::from_str(data.trim()).expect("total data is JSON");
            }
        } else if line.is_empty() {
            event.clear();
        }
    }
}

/// One HTTP/1.1 connection, written and read by hand, to see that the server answers every
/// request on it in full and keeps it open.
struct RawConnection {
    reader: BufReader<TcpStream>,
}

impl RawConnection {
    fn open(server: &InProcessServer) -> Self {
        let stream = TcpStream::connect(server.address).expect("connect to the server");
        stream.set_read_timeout(Some(RAW_READ_TIMEOUT)).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request and reads its answer: the status and the JSON body (null if empty).
    fn exchange(&mut self, request: &[u8]) -> (u16, Value) {
        self.reader
            .get_mut()
            .write_all(request)
            .expect("the connection is still open");
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("a status line");
        assert!(!status_line.is_empty(), "the server closed the connection");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().expect("a Content-Length");
            }
        }
        let mut body = vec![0; content_length];
        self.reader.read_exact(&mut body).expect("the whole body");
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, body)
    }
}

fn raw_request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
