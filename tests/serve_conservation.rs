//! The conservation test: concurrent clients send donations — with immediate, concurrent and
//! late retries and conflicting resends — and refunds and chargebacks of them — partial, several
//! per donation, some before their donation, resent and resent with other fields — while the
//! server is SIGKILLed and restarted several times. Clients retry until they get a 2xx, as
//! payment systems do. At the end every donation and every refund that got a 2xx is counted
//! exactly once: gross, refunded and net totals and stats equal the ground truth, and
//! `tally checkpoint verify` passes.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::ledger::Ledger;
use support::server::{ServerProcess, client, create_campaign, donation_json, post_signed};

const CLIENTS: usize = 4;
const DONATIONS_PER_CLIENT: usize = 1500;
const KILLS: usize = 4;
const CAMPAIGNS: [&str; 2] = ["meals", "shelter"];
/// Every client must be done by then; a hang fails the test instead of running forever.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// A donation and what the ground truth says it adds.
#[derive(Debug, Clone)]
struct Planned {
    body: serde_json::Value,
    campaign: &'static str,
    amount_cents: u64,
}

fn plan(client_id: usize, rng: &mut StdRng) -> Vec<Planned> {
    (0..DONATIONS_PER_CLIENT)
        .map(|i| {
            let campaign = CAMPAIGNS[rng.gen_range(0..CAMPAIGNS.len())];
            let amount_cents = rng.gen_range(1..500);
            let user = format!("usr-{}", rng.gen_range(0..10_000));
            Planned {
                body: donation_json(
                    &format!("pay-{client_id}-{i}"),
                    campaign,
                    amount_cents,
                    &user,
                ),
                campaign,
                amount_cents,
            }
        })
        .collect()
}

/// Per campaign: gross cents, donations, refunded cents, refunds.
type Truth = BTreeMap<String, (u64, u64, u64, u64)>;

/// A refund body of `amount_cents` of `payment_ref`'s donation.
fn refund_json(
    refund_ref: &str,
    payment_ref: &str,
    amount_cents: u64,
    chargeback: bool,
) -> serde_json::Value {
    serde_json::json!({
        "refund_ref": refund_ref,
        "payment_ref": payment_ref,
        "amount_cents": amount_cents,
        "kind": if chargeback { "chargeback" } else { "refund" },
        "refunded_at": "2026-11-24T19:00:00Z",
    })
}

/// Sends `body` until it gets a 2xx, following the server across restarts.
fn send_until_accepted(
    http: &reqwest::blocking::Client,
    base: &RwLock<String>,
    path: &str,
    body: &serde_json::Value,
    deadline: Instant,
) {
    let bytes = serde_json::to_vec(body).unwrap();
    loop {
        assert!(Instant::now() < deadline, "a donation was never accepted");
        let url = format!("{}{path}", base.read().unwrap());
        match post_signed(http, &url, &bytes) {
            Ok(response) if response.status().is_success() => return,
            Ok(response) if response.status().is_server_error() || response.status() == 429 => {}
            Ok(response) => panic!(
                "unexpected {}: {}",
                response.status(),
                response.text().unwrap_or_default()
            ),
            Err(_) => {} // the server was killed mid-request; it is being restarted
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_acknowledged_donation_counts_once_across_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--checkpoint-interval",
        "20ms",
        "--rate-limit-burst",
        "1000000",
        "--rate-limit-per-second",
        "1000000",
    ];
    let mut server = ServerProcess::start(dir.path(), &args);
    let http = client();
    for campaign in CAMPAIGNS {
        create_campaign(&http, &server, campaign, "USD");
    }
    let base = Arc::new(RwLock::new(server.base.clone()));
    let ground_truth: Arc<Mutex<Truth>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let clients_finished = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + RUN_DEADLINE;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_id| {
            let (base, ground_truth) = (Arc::clone(&base), Arc::clone(&ground_truth));
            let clients_finished = Arc::clone(&clients_finished);
            std::thread::spawn(move || {
                let http = client();
                let mut rng = StdRng::seed_from_u64(client_id as u64);
                let planned = plan(client_id, &mut rng);
                // What each donation has left to refund.
                let mut left: Vec<u64> = planned.iter().map(|p| p.amount_cents).collect();
                let mut refunds_sent = 0usize;
                let mut refund = |http: &reqwest::blocking::Client,
                                  rng: &mut StdRng,
                                  left: &mut Vec<u64>,
                                  of: usize| {
                    if left[of] == 0 {
                        return;
                    }
                    let amount = rng.gen_range(1..=left[of]);
                    left[of] -= amount;
                    let refund_ref = format!("re-{client_id}-{refunds_sent}");
                    refunds_sent += 1;
                    let payment_ref = planned[of].body["payment_ref"].as_str().unwrap();
                    let body = refund_json(&refund_ref, payment_ref, amount, rng.gen_ratio(1, 4));
                    send_until_accepted(http, &base, "/v1/refunds", &body, deadline);
                    let mut truth = ground_truth.lock().unwrap();
                    let total = truth.entry(planned[of].campaign.to_owned()).or_default();
                    total.2 += amount;
                    total.3 += 1;
                    drop(truth);
                    // Resent as it was, or with another amount (a conflict, never counted).
                    match rng.gen_range(0..6) {
                        0 => send_until_accepted(http, &base, "/v1/refunds", &body, deadline),
                        1 if amount > 1 => {
                            let mut other = body.clone();
                            other["amount_cents"] = serde_json::json!(amount - 1);
                            send_until_accepted(http, &base, "/v1/refunds", &other, deadline);
                        }
                        _ => {}
                    }
                };
                for (i, donation) in planned.iter().enumerate() {
                    // Now and then a refund comes before its donation.
                    if rng.gen_ratio(1, 25) {
                        refund(&http, &mut rng, &mut left, i);
                    }
                    send_until_accepted(&http, &base, "/v1/donations", &donation.body, deadline);
                    let mut truth = ground_truth.lock().unwrap();
                    let total = truth.entry(donation.campaign.to_owned()).or_default();
                    total.0 += donation.amount_cents;
                    total.1 += 1;
                    drop(truth);
                    // Refunds of this donation or an earlier one, partial or whole.
                    if rng.gen_ratio(1, 6) {
                        let of = rng.gen_range(i.saturating_sub(20)..=i);
                        refund(&http, &mut rng, &mut left, of);
                    }
                    // Retries: one in five again at once, one in ten later, one in twenty as a
                    // conflicting resend (different amount), and every tenth batch carries an
                    // earlier donation again.
                    match rng.gen_range(0..20) {
                        0..4 => send_until_accepted(
                            &http,
                            &base,
                            "/v1/donations",
                            &donation.body,
                            deadline,
                        ),
                        4..6 if i > 10 => send_until_accepted(
                            &http,
                            &base,
                            "/v1/donations",
                            &planned[i - 10].body,
                            deadline,
                        ),
                        6 => {
                            let mut conflicting = donation.body.clone();
                            conflicting["amount_cents"] =
                                serde_json::json!(donation.amount_cents + 1);
                            send_until_accepted(
                                &http,
                                &base,
                                "/v1/donations",
                                &conflicting,
                                deadline,
                            );
                        }
                        7 if i > 0 => {
                            let batch = serde_json::json!([planned[i - 1].body, donation.body]);
                            send_until_accepted(
                                &http,
                                &base,
                                "/v1/donations/batch",
                                &batch,
                                deadline,
                            );
                        }
                        _ => {}
                    }
                }
                clients_finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let concurrent_retries = {
        // Two threads racing the same payments at once.
        let (base, done) = (Arc::clone(&base), Arc::clone(&done));
        std::thread::spawn(move || {
            let http = client();
            let mut rng = StdRng::seed_from_u64(99);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let client_id = rng.gen_range(0..CLIENTS);
                let planned = plan(client_id, &mut StdRng::seed_from_u64(client_id as u64));
                let donation = &planned[rng.gen_range(0..20)];
                let url = format!("{}/v1/donations", base.read().unwrap());
                let _ = post_signed(&http, &url, &serde_json::to_vec(&donation.body).unwrap());
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(7);
    for kill in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..500)));
        assert!(
            clients_finished.load(Ordering::SeqCst) < CLIENTS,
            "kill {kill} came after the traffic ended"
        );
        server.kill(); // SIGKILL
        server = ServerProcess::start(dir.path(), &args);
        *base.write().unwrap() = server.base.clone();
    }
    for client in clients {
        client.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    concurrent_retries.join().unwrap();

    let expected = ground_truth.lock().unwrap().clone();
    assert_eq!(
        expected.values().map(|t| t.1).sum::<u64>(),
        (CLIENTS * DONATIONS_PER_CLIENT) as u64
    );
    let http = client();
    assert!(
        expected.values().map(|t| t.3).sum::<u64>() > 500,
        "refunds were sent: {expected:?}"
    );
    for campaign in CAMPAIGNS {
        let view = wait_until_caught_up(&http, &server, campaign, deadline);
        let (sum, count, refunded, refunds) = expected.get(campaign).copied().unwrap_or_default();
        let field = |name: &str| view[name].as_u64().unwrap();
        assert_eq!(
            (
                field("gross_cents"),
                field("donations"),
                field("refunded_cents"),
                field("refunds"),
                field("total_cents"),
            ),
            (sum, count, refunded, refunds, sum - refunded),
            "{campaign}"
        );
        let stats: serde_json::Value = http
            .get(server.url(&format!(
                "/v1/campaigns/{campaign}/stats?from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z"
            )))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            (
                stats["sum_cents"].as_u64().unwrap(),
                stats["count"].as_u64().unwrap()
            ),
            (sum, count),
            "{campaign} stats"
        );
    }
    // The ledger export adds up to the same totals.
    for campaign in CAMPAIGNS {
        let (sum, count, refunded, refunds) = expected[campaign];
        let url = server.url(&format!("/v1/campaigns/{campaign}/ledger.csv"));
        let text = support::server::admin(&http, reqwest::Method::GET, &url)
            .send()
            .unwrap()
            .text()
            .unwrap();
        let ledger = Ledger::parse(&text);
        assert_eq!(ledger.donations, (sum, count), "{campaign} ledger");
        assert_eq!(ledger.retractions, (refunded, refunds), "{campaign} ledger");
        assert_eq!(ledger.net_cents, (sum - refunded) as i64);
        assert!(ledger.in_log_order);
    }
    // Every refund found its donation, and none was more than it had left.
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for (name, expected) in [
        ("tally_refunds_pending ", 0),
        ("tally_refunds_excess_total ", 0),
    ] {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
        assert_eq!(
            line[name.len()..].trim().parse::<u64>().unwrap(),
            expected,
            "{line}"
        );
    }
    assert!(server.terminate().success(), "graceful shutdown");
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["checkpoint", "verify"])
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // And `tally export`, from the data directory the server left.
    for campaign in CAMPAIGNS {
        let (sum, count, refunded, refunds) = expected[campaign];
        let out = dir.path().join(format!("{campaign}.csv"));
        let export = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["export", "--campaign", campaign, "--out"])
            .arg(&out)
            .env("TALLY_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            export.status.success(),
            "{}",
            String::from_utf8_lossy(&export.stderr)
        );
        let ledger = Ledger::parse(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(ledger.donations, (sum, count), "{campaign} export");
        assert_eq!(ledger.retractions, (refunded, refunds), "{campaign} export");
        assert!(ledger.in_log_order);
    }
}

/// The campaign once the server reports no lag.
fn wait_until_caught_up(
    http: &reqwest::blocking::Client,
    server: &ServerProcess,
    campaign: &str,
    deadline: Instant,
) -> serde_json::Value {
    loop {
        let view: serde_json::Value = http
            .get(server.url(&format!("/v1/campaigns/{campaign}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["freshness"]["lag_records"] == 0 {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline never caught up: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
