//! The pages and `GET /v1/ops` over plain HTTP (no browser): content types, caching, escaping,
//! the errors of unknown campaigns and assets, the campaign page's refund line and a closed
//! campaign's refunds after its close, and the operator's view adding up to what was appended. `pages_browser.rs` checks what a browser does with them.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::in_process::InProcessServer;
use support::server::{admin, client, create_campaign, donation_json, post_signed};

const WAIT_MAX: Duration = Duration::from_secs(30);

#[test]
fn pages_are_html_assets_are_embedded_and_unknown_ones_are_clear_errors() {
    let server = InProcessServer::start(|_| {});
    let http = client();
    create_campaign(&http, &server, "meals", "JPY");

    for path in ["/", "/campaigns/meals", "/ops"] {
        let response = http.get(server.url(path)).send().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers["content-type"], "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        let body = response.text().unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{path}");
        // Every script and style is one of ours, by a relative URL.
        for reference in body
            .split("src=\"")
            .skip(1)
            .chain(body.split("href=\"").skip(1))
        {
            assert!(reference.starts_with('/'), "{path} loads {reference:.40}");
        }
    }
    let page = http.get(server.url("/campaigns/meals")).send().unwrap();
    let page = page.text().unwrap();
    assert!(
        page.contains(r#"<p class="total" id="total">¥0</p>"#),
        "{page}"
    );
    assert!(
        !page.contains(r#"id="refunds""#),
        "no refunds, no line: {page}"
    );

    let missing = http.get(server.url("/campaigns/nope")).send().unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().unwrap().contains("campaign_not_found"));

    let asset = http
        .get(server.url("/assets/uplot-1.6.32.min.js"))
        .send()
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        asset.bytes().unwrap().len(),
        tally_web::assets::UPLOT_JS.len()
    );
    let unknown = http.get(server.url("/assets/secrets.txt")).send().unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().unwrap();
    assert_eq!(error["error"]["code"], "asset_not_found");
}

/// POSTs a signed JSON body to `path`, which answers 202.
fn post_accepted(server: &InProcessServer, path: &str, body: &Value) {
    let bytes = body.to_string();
    let response = post_signed(&client(), &server.url(path), bytes.as_bytes()).unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().unwrap());
}

fn refund_json(refund_ref: &str, payment_ref: &str, amount_cents: u64, kind: &str) -> Value {
    serde_json::json!({
        "refund_ref": refund_ref,
        "payment_ref": payment_ref,
        "amount_cents": amount_cents,
        "kind": kind,
        "refunded_at": "2026-11-24T19:00:00Z",
    })
}

/// The campaign's view once every partition has applied the log and it has `refunds`.
fn caught_up_with_refunds(server: &InProcessServer, campaign_id: &str, refunds: u64) -> Value {
    let started = Instant::now();
    loop {
        let view: Value = client()
            .get(server.url(&format!("/v1/campaigns/{campaign_id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["freshness"]["lag_records"] == 0 && view["refunds"] == refunds {
            return view;
        }
        assert!(started.elapsed() < WAIT_MAX, "{view}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn campaign_page(server: &InProcessServer, campaign_id: &str) -> String {
    let response = client()
        .get(server.url(&format!("/campaigns/{campaign_id}")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().unwrap()
}

#[test]
fn the_campaign_page_shows_refunds_and_refunds_after_a_close() {
    let server = InProcessServer::start(|_| {});
    create_campaign(&client(), &server, "meals", "USD");
    post_accepted(
        &server,
        "/v1/donations",
        &donation_json("pay-1", "meals", 1_000, "usr-1"),
    );
    post_accepted(
        &server,
        "/v1/donations",
        &donation_json("pay-2", "meals", 2_000, "usr-2"),
    );
    post_accepted(
        &server,
        "/v1/refunds",
        &refund_json("re-1", "pay-1", 100, "refund"),
    );
    post_accepted(
        &server,
        "/v1/refunds",
        &refund_json("re-2", "pay-1", 150, "refund"),
    );
    post_accepted(
        &server,
        "/v1/refunds",
        &refund_json("cb-1", "pay-2", 2_000, "chargeback"),
    );
    caught_up_with_refunds(&server, "meals", 3);

    let page = campaign_page(&server, "meals");
    assert!(
        page.contains(r#"<p class="total" id="total">$7.50</p>"#),
        "the total is net of the refunds: {page}"
    );
    assert!(
        page.contains(
            "<p class=\"refunds\" id=\"refunds\">$30.00 raised · $22.50 refunded (2\u{a0}refunds, 1\u{a0}chargeback)</p>"
        ),
        "{page}"
    );

    let closed = admin(
        &client(),
        reqwest::Method::POST,
        &server.url("/v1/campaigns/meals/close"),
    )
    .send()
    .unwrap();
    assert_eq!(closed.status(), 200, "{}", closed.text().unwrap());
    let page = campaign_page(&server, "meals");
    let final_total = &page[page.find(r#"id="final-total""#).expect(&page)..];
    assert!(
        final_total.contains(r#"<p class="total">$7.50</p>"#),
        "the final total is net of the refunds: {final_total}"
    );
    assert!(!page.contains("Adjusted after close"), "{page}");

    post_accepted(
        &server,
        "/v1/refunds",
        &refund_json("re-3", "pay-1", 250, "refund"),
    );
    caught_up_with_refunds(&server, "meals", 4);
    let page = campaign_page(&server, "meals");
    assert!(
        page.contains(r#"<p class="total" id="total">$5.00</p>"#),
        "{page}"
    );
    assert!(
        page.contains(
            "<p class=\"adjusted\" id=\"adjusted\">Adjusted after close: −$2.50 (1\u{a0}refund) · net now\u{a0}$5.00</p>"
        ),
        "{page}"
    );
    let final_total = &page[page.find(r#"id="final-total""#).expect(&page)..];
    assert!(
        final_total.contains(r#"<p class="total">$7.50</p>"#),
        "the final total stays: {final_total}"
    );
}

#[test]
fn the_operators_view_adds_up_to_what_was_appended() {
    let server = InProcessServer::start(|_| {});
    let http = client();
    create_campaign(&http, &server, "meals", "USD");
    for i in 0..30 {
        let body =
            donation_json(&format!("pay-{i}"), "meals", 100, &format!("usr-{i}")).to_string();
        let response = post_signed(&http, &server.url("/v1/donations"), body.as_bytes()).unwrap();
        assert_eq!(response.status(), 202);
    }
    // A resend of a recorded payment is a duplicate.
    let resend = donation_json("pay-0", "meals", 100, "usr-0").to_string();
    post_signed(&http, &server.url("/v1/donations"), resend.as_bytes()).unwrap();

    let started = Instant::now();
    let view = loop {
        let view: Value = http
            .get(server.url("/v1/ops"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["counters"]["duplicates"] == 1 && view["counters"]["recorded"] == 30 {
            break view;
        }
        assert!(started.elapsed() < WAIT_MAX, "{view}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let partitions = view["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 8);
    let ends: u64 = partitions
        .iter()
        .map(|p| p["log_end_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, 31, "{view}");
    assert_eq!(view["counters"]["appended_records"], 31);
    assert!(view["counters"]["responses_2xx"].as_u64().unwrap() >= 32);
    assert_eq!(view["ownership"], "alone");
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["partitions"].as_array().unwrap().len(), 8);
    for p in partitions {
        assert_eq!(p["owner"], nodes[0]["node_id"]);
        assert_eq!(p["runs_here"], true);
    }
}
