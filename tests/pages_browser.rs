//! The pages in a real headless Chromium (over WebDriver, see `support/browser.rs`) against a
//! real `tally serve`: the campaign page's total, live without a reload, and its refund line,
//! which appears live with the first refund; a closed campaign's
//! reconciled final total; a hostile campaign name shown as text; the page without
//! JavaScript; the operator's view of every partition. Each test saves a screenshot under
//! `CARGO_TARGET_TMPDIR/pages/` and prints its path.

mod support;

use std::time::Instant;

use support::browser::{Browser, PHONE};
use support::server::{ServerProcess, admin, client, donation_json, post_signed};
use tempfile::TempDir;

/// A campaign `campaign_id` named `name`, in USD, with a goal when given.
fn create(server: &ServerProcess, campaign_id: &str, name: &str, goal_cents: Option<u64>) {
    let response = admin(
        &client(),
        reqwest::Method::POST,
        &server.url("/v1/campaigns"),
    )
    .json(&serde_json::json!({
        "campaign_id": campaign_id, "name": name, "currency": "USD", "goal_cents": goal_cents,
    }))
    .send()
    .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
}

fn donate(server: &ServerProcess, payment_ref: &str, campaign_id: &str, amount_cents: u64) {
    let body = donation_json(payment_ref, campaign_id, amount_cents, "usr-1").to_string();
    let response = post_signed(&client(), &server.url("/v1/donations"), body.as_bytes()).unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().unwrap());
}

/// A signed refund (or chargeback, by `kind`) of `amount_cents` of the donation `payment_ref`.
fn refund(
    server: &ServerProcess,
    refund_ref: &str,
    payment_ref: &str,
    amount_cents: u64,
    kind: &str,
) {
    let body = serde_json::json!({
        "refund_ref": refund_ref,
        "payment_ref": payment_ref,
        "amount_cents": amount_cents,
        "kind": kind,
        "refunded_at": "2026-11-24T19:00:00Z",
    })
    .to_string();
    let response = post_signed(&client(), &server.url("/v1/refunds"), body.as_bytes()).unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().unwrap());
}

/// Waits (bounded) until the campaign's total in the API is `total_cents`.
fn wait_for_total(server: &ServerProcess, campaign_id: &str, total_cents: u64) {
    let url = server.url(&format!("/v1/campaigns/{campaign_id}"));
    let started = Instant::now();
    loop {
        let view: serde_json::Value = client().get(&url).send().unwrap().json().unwrap();
        if view["total_cents"] == total_cents {
            return;
        }
        assert!(
            started.elapsed() < support::browser::PAGE_TIMEOUT,
            "total stayed {view}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_campaign_page_shows_the_total_and_follows_a_donation_without_a_reload() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    create(&server, "meals", "Meals for kids", Some(10_000));
    donate(&server, "pay-1", "meals", 100);
    wait_for_total(&server, "meals", 100);

    let browser = Browser::start(true, PHONE);
    browser.goto(&server.url("/campaigns/meals"));
    assert_eq!(browser.text_of("campaign-name"), "Meals for kids");
    assert_eq!(browser.text_of("total"), "$1.00");
    assert_eq!(browser.text_of("donations"), "1");
    assert_eq!(browser.text_of("donations-word"), "donation");
    assert_eq!(browser.text_of("goal-percent"), "1%");
    // The live stream has connected once the freshness line says so.
    browser.wait_for_text("freshness", |text| text.starts_with("Live"));
    // A mark on this document: a reload would lose it.
    browser.run("window.loadedOnce = 'yes'; return null;");

    let posted = Instant::now();
    donate(&server, "pay-2", "meals", 12_345);
    browser.wait_for_text("total", |text| text == "$124.45");
    let seen_after = posted.elapsed();
    println!("the posted donation showed on the page {seen_after:?} after its 202");
    assert_eq!(browser.text_of("donations"), "2");
    assert_eq!(browser.text_of("donations-word"), "donations");
    assert_eq!(browser.text_of("goal-percent"), "124%");
    assert_eq!(
        browser.run("return window.loadedOnce;"),
        serde_json::json!("yes"),
        "the page was reloaded"
    );
    // A phone's width: nothing overflows sideways.
    let overflow = browser
        .run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;");
    assert!(overflow.as_i64().unwrap() <= 0, "overflows by {overflow}");
    browser.screenshot("campaign-live");
}

#[test]
fn the_campaign_page_follows_a_refund_without_a_reload() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    create(&server, "meals", "Meals for kids", Some(10_000));
    donate(&server, "pay-1", "meals", 2_000);
    wait_for_total(&server, "meals", 2_000);

    let browser = Browser::start(true, PHONE);
    browser.goto(&server.url("/campaigns/meals"));
    assert_eq!(browser.text_of("total"), "$20.00");
    // No refund yet: no refund line.
    let line = browser.run("return document.getElementById('refunds');");
    assert_eq!(line, serde_json::Value::Null);
    browser.wait_for_text("freshness", |text| text.starts_with("Live"));
    // A mark on this document: a reload would lose it.
    browser.run("window.loadedOnce = 'yes'; return null;");

    refund(&server, "re-1", "pay-1", 500, "refund");
    browser.wait_for_text("total", |text| text == "$15.00");
    browser.wait_for_text("refunds", |text| {
        text == "$20.00 raised · $5.00 refunded (1 refund)"
    });
    assert_eq!(browser.text_of("donations"), "1");
    assert_eq!(browser.text_of("goal-percent"), "15%");
    // A chargeback of more of it is named apart.
    refund(&server, "cb-1", "pay-1", 500, "chargeback");
    browser.wait_for_text("total", |text| text == "$10.00");
    browser.wait_for_text("refunds", |text| {
        text == "$20.00 raised · $10.00 refunded (1 refund, 1 chargeback)"
    });
    assert_eq!(browser.text_of("goal-percent"), "10%");
    assert_eq!(
        browser.run("return window.loadedOnce;"),
        serde_json::json!("yes"),
        "the page was reloaded"
    );
    let overflow = browser
        .run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;");
    assert!(overflow.as_i64().unwrap() <= 0, "overflows by {overflow}");
    browser.screenshot("campaign-refunds-live");
}

#[test]
fn a_closed_campaign_shows_its_reconciled_final_total() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    create(&server, "winter", "Winter appeal", None);
    donate(&server, "pay-1", "winter", 2_500);
    donate(&server, "pay-2", "winter", 1_000);
    let closed = admin(
        &client(),
        reqwest::Method::POST,
        &server.url("/v1/campaigns/winter/close"),
    )
    .send()
    .unwrap();
    assert_eq!(closed.status(), 200, "{}", closed.text().unwrap());

    let browser = Browser::start(true, PHONE);
    browser.goto(&server.url("/campaigns/winter"));
    assert_eq!(browser.text_of("status"), "Closed");
    let final_total = browser.text_of("final-total");
    assert!(final_total.contains("$35.00"), "{final_total}");
    assert!(
        final_total.contains("2 donations, reconciled"),
        "{final_total}"
    );
    assert_eq!(browser.text_of("total"), "$35.00");
    browser.screenshot("campaign-closed");
}

#[test]
fn a_campaign_named_like_markup_shows_that_text_and_runs_nothing() {
    let hostile = "<img src=x onerror=alert(1)>";
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    create(&server, "hostile", hostile, None);

    let browser = Browser::start(true, PHONE);
    for page in ["/campaigns/hostile", "/"] {
        browser.goto(&server.url(page));
        let images = browser.run("return document.images.length;");
        assert_eq!(images, serde_json::json!(0), "{page} made an <img>");
        let alert = browser.runtime.block_on(browser.client().get_alert_text());
        assert!(alert.is_err(), "{page} opened an alert: {alert:?}");
    }
    let listed = browser.run("return document.querySelector('#campaigns a').textContent;");
    assert_eq!(listed, serde_json::json!(hostile));
    browser.goto(&server.url("/campaigns/hostile"));
    assert_eq!(browser.text_of("campaign-name"), hostile);
    let title = browser.run("return document.title;");
    assert_eq!(title, serde_json::json!(format!("{hostile} · tally")));
    browser.screenshot("campaign-hostile-name");
}

#[test]
fn the_campaign_page_renders_with_javascript_disabled() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    create(&server, "meals", "Meals for kids", Some(1_000_000));
    // $1,234,567.89 in donations of at most $100,000 (the largest one accepted).
    for i in 0..12 {
        donate(&server, &format!("pay-{i}"), "meals", 10_000_000);
    }
    donate(&server, "pay-12", "meals", 3_456_789);
    wait_for_total(&server, "meals", 123_456_789);

    let browser = Browser::start(false, PHONE);
    browser.goto(&server.url("/campaigns/meals"));
    assert_eq!(browser.text_of("total"), "$1,234,567.89");
    assert_eq!(browser.text_of("donations"), "13");
    assert_eq!(browser.text_of("goal-percent"), "12345%");
    // The page's scripts did not run: the server's freshness line stands, and the
    // <noscript> note shows.
    assert_eq!(
        browser.text_of("freshness"),
        "Up to date: every recorded donation is counted."
    );
    let note = browser.runtime.block_on(async {
        browser
            .client()
            .find(fantoccini::Locator::Css("section.charts p.note"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(note.contains("need JavaScript"), "{note}");
    browser.screenshot("campaign-without-javascript");
}

#[test]
fn the_operators_view_shows_every_partition_and_refreshes() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &["--partitions", "8"]);
    create(&server, "meals", "Meals for kids", None);
    for i in 0..20 {
        donate(&server, &format!("pay-{i}"), "meals", 100);
    }

    let browser = Browser::start(true, (1200, 1000));
    browser.goto(&server.url("/ops"));
    let first = browser.text_of("ops-at");
    let partitions = browser.run(
        "return [...document.querySelectorAll('#partition-rows tr')].map(r => Number(r.dataset.partition));",
    );
    assert_eq!(partitions, serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]));
    // The script refreshes the view from /v1/ops.
    browser.wait_for_text("ops-at", |text| text != first);
    let log_ends: u64 = browser
        .run(
            "return [...document.querySelectorAll('#partition-rows tr')]
                .reduce((sum, r) => sum + Number(r.children[1].textContent.replace(/,/g, '')), 0);",
        )
        .as_u64()
        .unwrap();
    assert_eq!(
        log_ends, 20,
        "the log ends add up to the donations appended"
    );
    let nodes = browser.run("return document.querySelectorAll('#node-rows tr').length;");
    assert_eq!(nodes, serde_json::json!(1));
    browser.screenshot("ops");
}

#[test]
fn the_load_generators_report_page_draws_its_charts_beside_its_table() {
    let dir = TempDir::new().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let config = tally_loadgen::run::RunConfig {
        profile: tally_loadgen::schedule::Profile::Steady,
        duration: std::time::Duration::from_secs(3),
        rate: 200.0,
        seed: 5,
        run_id: "page".to_owned(),
        batch: 1,
        connections: 8,
        verify: true,
        progress: false,
        server_cmd: None,
        kill_every: None,
    };
    let report = support::server::run_loadgen(&config, std::slice::from_ref(&server.base));
    support::server::assert_run_verified(&report, 100);
    let page = dir.path().join("report.html");
    std::fs::write(&page, tally_loadgen::report_page::render(&report).unwrap()).unwrap();

    let browser = Browser::start(true, (1300, 1100));
    browser.goto(&format!("file://{}", page.display()));
    let table = browser.text_of("table");
    assert!(table.contains("verification"), "{table}");
    assert!(table.contains("passed"), "{table}");
    // Three charts, each drawn on its canvas with the run's seconds.
    let charts = browser.run(
        "return ['chart-throughput', 'chart-outcomes', 'chart-latency']
            .map(id => document.querySelectorAll('#' + id + ' canvas').length);",
    );
    assert_eq!(charts, serde_json::json!([1, 1, 1]));
    let points =
        browser.run("return JSON.parse(document.getElementById('per-second').textContent).length;");
    assert!(points.as_u64().unwrap() >= 3, "{points}");
    // Nothing on the page came from the network.
    let remote = browser.run(
        "return performance.getEntriesByType('resource').map(r => r.name)
            .filter(n => !n.startsWith('file:') && !n.startsWith('data:'));",
    );
    assert_eq!(remote, serde_json::json!([]));
    browser.screenshot("loadgen-report");
}
