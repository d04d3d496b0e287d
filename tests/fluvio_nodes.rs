//! Two `tally serve` nodes on one Fluvio topic, each running half the partitions: donations go
//! to either node (resends of one payment to the other one), a node is SIGKILLed mid-run and
//! restarted, and at the end both nodes give the same exact totals, statistics and donation
//! look-ups; a third node claiming a live node's partition is refused; a close on one node
//! stops intake on both and reconciles.
//!
//! Runs when `TALLY_FLUVIO_ENDPOINT` (`HOST:PORT` of the SC's public server on 127.0.0.1) is
//! set, on a new topic each run; otherwise it passes and says plainly that it did not run.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_pipeline::log::Partitioner;

use support::fluvio;
use support::server::{
    ServerProcess, admin, client, create_campaign, donation_json, post_signed, serve_until_exit,
};

const PARTITIONS: &str = "8";
const CAMPAIGN: &str = "nodes-meals";
/// Donations per phase: before the kill, while one node is down, after its restart.
const PHASE_DONATIONS: usize = 120;
/// Every Nth donation is sent again, to the other node.
const RESEND_EVERY: usize = 4;
/// Bound on waiting for both nodes to show every donation.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// One node's command line.
struct NodeArgs {
    log: String,
    owns: &'static str,
}

impl NodeArgs {
    fn start(&self, data_dir: &std::path::Path) -> ServerProcess {
        ServerProcess::start(data_dir, &self.args())
    }

    fn args(&self) -> Vec<&str> {
        vec![
            "--log",
            &self.log,
            "--partitions",
            PARTITIONS,
            "--owns",
            self.owns,
        ]
    }
}

/// Posts a donation until some node acknowledges it (a node being killed may not answer).
fn post_until_acknowledged(
    http: &reqwest::blocking::Client,
    nodes: &[&ServerProcess],
    body: &serde_json::Value,
) {
    let bytes = serde_json::to_vec(body).unwrap();
    for attempt in 0..50 {
        let node = nodes[attempt % nodes.len()];
        match post_signed(http, &node.url("/v1/donations"), &bytes) {
            Ok(response) if response.status() == 202 => return,
            Ok(response) if response.status() == 503 => {}
            Ok(response) => panic!(
                "donation {body} refused: {} {}",
                response.status(),
                response.text().unwrap_or_default()
            ),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("donation {body} was never acknowledged");
}

/// Sends `count` donations from `first`, alternating nodes, every `RESEND_EVERY`th again to
/// the other node; returns them by payment.
fn send_phase(
    http: &reqwest::blocking::Client,
    nodes: &[&ServerProcess],
    first: usize,
    count: usize,
) -> BTreeMap<String, u64> {
    let mut sent = BTreeMap::new();
    for i in first..first + count {
        let payment_ref = format!("pay-{i:05}");
        let amount_cents = 100 + (i as u64 % 7) * 25;
        let body = donation_json(&payment_ref, CAMPAIGN, amount_cents, &format!("user-{i}"));
        let own = [nodes[i % nodes.len()]];
        post_until_acknowledged(http, &own, &body);
        if i % RESEND_EVERY == 0 {
            let other = [nodes[(i + 1) % nodes.len()]];
            post_until_acknowledged(http, &other, &body);
        }
        sent.insert(payment_ref, amount_cents);
    }
    sent
}

fn campaign(http: &reqwest::blocking::Client, node: &ServerProcess) -> serde_json::Value {
    http.get(node.url(&format!("/v1/campaigns/{CAMPAIGN}")))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits until `node` shows no lag and `expected_cents` over `expected_count` donations.
fn wait_converged(
    http: &reqwest::blocking::Client,
    node: &ServerProcess,
    expected_cents: u64,
    expected_count: u64,
) -> serde_json::Value {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let view = campaign(http, node);
        let converged = view["freshness"]["lag_records"] == 0
            && view["total_cents"] == expected_cents
            && view["donations"] == expected_count;
        if converged {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not converge to {expected_cents} cents / {expected_count}: {view}",
            node.base
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stats(http: &reqwest::blocking::Client, node: &ServerProcess) -> serde_json::Value {
    let url = node.url(&format!(
        "/v1/campaigns/{CAMPAIGN}/stats?from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z&bucket=hour"
    ));
    let mut stats: serde_json::Value = http.get(url).send().unwrap().json().unwrap();
    // Which node's partitions finished last differs; what was counted must not.
    stats.as_object_mut().unwrap().remove("complete_through");
    stats
}

#[test]
fn two_nodes_split_the_partitions_survive_a_kill_and_give_one_answer() {
    let Some(endpoint) = fluvio::endpoint("the two-node Fluvio test") else {
        return;
    };
    let log = format!("fluvio://{endpoint}/{}", fluvio::unique_topic("nodes"));
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let args_a = NodeArgs {
        log: log.clone(),
        owns: "0-3",
    };
    let args_b = NodeArgs {
        log: log.clone(),
        owns: "4-7",
    };
    let http = client();
    let node_a = args_a.start(dir_a.path());
    let node_b = args_b.start(dir_b.path());
    create_campaign(&http, &node_a, CAMPAIGN, "USD");

    let mut sent = send_phase(&http, &[&node_a, &node_b], 0, PHASE_DONATIONS);
    node_b.kill();
    // A look-up in node b's partitions cannot be answered while it is away, and says so.
    let partitioner = Partitioner::new(PARTITIONS.parse().unwrap());
    let in_b = sent
        .keys()
        .find(|r| partitioner.partition_for_key(r.as_bytes()) >= 4)
        .expect("some payment landed in node b's partitions");
    let response = http
        .get(node_a.url(&format!("/v1/donations/{in_b}")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 503);
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "owner_unavailable", "{error}");
    // Node b's notifications are node b's to deliver.
    let response = admin(
        &http,
        reqwest::Method::GET,
        &node_a.url("/v1/notifications?partition=5"),
    )
    .send()
    .unwrap();
    assert_eq!(response.status(), 409);
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "partition_not_owned", "{error}");
    // A ledger export needs every partition's state: node a runs only some.
    let response = admin(
        &http,
        reqwest::Method::GET,
        &node_a.url(&format!("/v1/campaigns/{CAMPAIGN}/ledger.csv")),
    )
    .send()
    .unwrap();
    assert_eq!(response.status(), 409);
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "partitions_elsewhere", "{error}");
    // Node b's partitions wait for it; node a keeps taking donations for every partition.
    sent.extend(send_phase(
        &http,
        &[&node_a],
        PHASE_DONATIONS,
        PHASE_DONATIONS,
    ));
    let node_b = args_b.start(dir_b.path());
    sent.extend(send_phase(
        &http,
        &[&node_b, &node_a],
        2 * PHASE_DONATIONS,
        PHASE_DONATIONS,
    ));

    let expected_cents: u64 = sent.values().sum();
    let expected_count = sent.len() as u64;
    wait_converged(&http, &node_a, expected_cents, expected_count);
    wait_converged(&http, &node_b, expected_cents, expected_count);
    assert_eq!(stats(&http, &node_a), stats(&http, &node_b));
    assert_eq!(stats(&http, &node_a)["sum_cents"], expected_cents);
    for (payment_ref, amount_cents) in sent.iter().step_by(17) {
        for node in [&node_a, &node_b] {
            let found: serde_json::Value = http
                .get(node.url(&format!("/v1/donations/{payment_ref}")))
                .send()
                .unwrap()
                .json()
                .unwrap();
            let cluster: serde_json::Value = http
                .get(node.url("/v1/cluster"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(
                found["amount_cents"], *amount_cents,
                "{found} from {}, which sees {cluster}",
                node.base
            );
        }
    }

    // A third node claiming a partition of each live node is refused, naming the owner.
    let refused = serve_until_exit(
        dir_c.path(),
        &["--log", &log, "--partitions", PARTITIONS, "--owns", "3-4"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("tally: ") && line.contains("owned by live node")),
        "{stderr}"
    );

    // A close on one node stops intake on both and reconciles over every partition.
    let closed: serde_json::Value = admin(
        &http,
        reqwest::Method::POST,
        &node_b.url(&format!("/v1/campaigns/{CAMPAIGN}/close")),
    )
    .send()
    .unwrap()
    .json()
    .unwrap();
    assert_eq!(closed["status"], "closed", "{closed}");
    assert_eq!(closed["reconciliation"]["matched"], true, "{closed}");
    assert_eq!(
        closed["reconciliation"]["final_total_cents"],
        expected_cents
    );
    // Node a learns of the close from the campaigns topic, a moment later.
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    while campaign(&http, &node_a)["status"] != "closed" {
        assert!(Instant::now() < deadline, "node a never showed the close");
        std::thread::sleep(Duration::from_millis(50));
    }
    let late = donation_json("pay-after-close", CAMPAIGN, 100, "user-late");
    let response = post_signed(
        &http,
        &node_a.url("/v1/donations"),
        &serde_json::to_vec(&late).unwrap(),
    )
    .unwrap();
    assert_eq!(response.status(), 422);
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "campaign_closed");

    // A retry of a recorded donation to the closed campaign is answered with where it is — by
    // the node for its own partitions, by asking the owner for the others — and with 503, never
    // 422, while the owner cannot be asked.
    let retry = |payment_ref: &str| {
        let i: usize = payment_ref["pay-".len()..].parse().unwrap();
        let body = donation_json(
            payment_ref,
            CAMPAIGN,
            sent[payment_ref],
            &format!("user-{i}"),
        );
        post_signed(
            &http,
            &node_a.url("/v1/donations"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .unwrap()
    };
    let owned_by = |first: u32| {
        sent.keys()
            .find(|r| partitioner.partition_for_key(r.as_bytes()) / 4 == first / 4)
            .expect("payments landed in every node's partitions")
    };
    assert_eq!(retry(owned_by(0)).status(), 202);
    assert_eq!(retry(owned_by(4)).status(), 202);
    node_b.kill();
    let response = retry(owned_by(4));
    assert_eq!(response.status(), 503);
    let error: serde_json::Value = response.json().unwrap();
    assert_eq!(error["error"]["code"], "owner_unavailable", "{error}");
}
