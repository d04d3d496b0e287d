//! The pages and `GET /v1/ops` over plain HTTP (no browser): content types, caching, escaping,
//! the errors of unknown campaigns and assets, and the operator's view adding up to what was
//! appended. `pages_browser.rs` checks what a browser does with them.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::in_process::InProcessServer;
use support::server::{client, create_campaign, donation_json, post_signed};

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
