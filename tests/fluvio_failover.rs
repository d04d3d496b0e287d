//! Automatic assignment on a real Fluvio cluster (`--owns auto`, the default there): three
//! nodes under load-generator traffic to all of them; one is SIGKILLed and not restarted, the
//! other two take its partitions (restoring them from its snapshots) and the run verifies with
//! exact totals; it comes back and the partitions rebalance. A node paused past its lease
//! (SIGSTOP, then SIGCONT) fences itself and joins again; totals stay exact and no donor
//! notification is delivered twice. One user's burst split over two nodes gets one allowance.
//!
//! Runs when `TALLY_FLUVIO_ENDPOINT` (`HOST:PORT` of the SC's public server on 127.0.0.1) is
//! set, on a new topic each run; otherwise it passes and says plainly that it did not run.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::fluvio;
use support::server::{
    ServerProcess, assert_run_verified, client, create_campaign, donation_json, post_signed,
    run_loadgen,
};
use support::webhook::{self, Received};
use tally_loadgen::report::Report;
use tally_loadgen::run::RunConfig;
use tally_loadgen::schedule::Profile;
use tally_pipeline::log::Partitioner;

const PARTITIONS: usize = 16;
/// Bound on waiting for the nodes to agree on an assignment (a lease is 5 s).
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

fn start(log: &str, dir: &std::path::Path) -> ServerProcess {
    start_with(log, dir, &[])
}

/// A node on `log` (state snapshots every second), with `extra` arguments.
fn start_with(log: &str, dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
    let partitions = PARTITIONS.to_string();
    let mut args = vec![
        "--log",
        log,
        "--partitions",
        &partitions,
        "--state-snapshot-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(dir, &args)
}

/// The partitions `node` took over, and whether each came from a cluster snapshot.
fn taken_over(http: &reqwest::blocking::Client, node: &ServerProcess) -> Vec<(u64, bool)> {
    cluster(http, node).expect("a cluster view")["taken_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["partition"].as_u64().unwrap(),
                t["snapshot_offset"].is_u64(),
            )
        })
        .collect()
}

/// How many times `node` started running each partition it ever ran.
fn run_starts(http: &reqwest::blocking::Client, node: &ServerProcess) -> BTreeMap<u64, u64> {
    cluster(http, node).expect("a cluster view")["run_starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["starts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The partitions a survivor ran before a hand-over and still runs were never started again.
fn assert_kept_undisturbed(
    node: &str,
    before: &BTreeMap<u64, u64>,
    after: &BTreeMap<u64, u64>,
    kept: &[u64],
) {
    for partition in kept {
        assert_eq!(
            before.get(partition),
            after.get(partition),
            "{node} kept partition {partition} through the hand-over without starting it again"
        );
    }
}

/// The partitions `node_id` holds in `view`.
fn held_by(view: &serde_json::Value, node_id: &str) -> Vec<u64> {
    view["assignment"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["holder"]["node_id"] == node_id)
        .map(|p| p["partition"].as_u64().unwrap())
        .collect()
}

fn cluster(http: &reqwest::blocking::Client, node: &ServerProcess) -> Option<serde_json::Value> {
    http.get(node.url("/v1/cluster"))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?
        .json()
        .ok()
}

/// The node id of each node, as its own cluster view says.
fn node_id(http: &reqwest::blocking::Client, node: &ServerProcess) -> String {
    cluster(http, node).expect("a cluster view")["node_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Whether `view` shows exactly `members`, each holding what it is assigned, every partition
/// held.
fn settled(view: &serde_json::Value, members: &BTreeSet<String>) -> bool {
    let Some(assignment) = view.get("assignment") else {
        return false;
    };
    let seen: BTreeSet<String> = assignment["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_str().unwrap().to_owned())
        .collect();
    let partitions = assignment["partitions"].as_array().unwrap();
    seen == *members
        && partitions.len() == PARTITIONS
        && partitions.iter().all(|p| {
            p["owner"].is_string()
                && p["holder"]["node_id"] == p["owner"]
                && p["holder"]["epoch"] == p["epoch"]
        })
}

/// Waits until every one of `nodes` shows `members` settled and runs what it is assigned;
/// returns how long that took.
fn wait_settled(
    http: &reqwest::blocking::Client,
    nodes: &[&ServerProcess],
    members: &BTreeSet<String>,
) -> Duration {
    let started = Instant::now();
    loop {
        let views: Vec<Option<serde_json::Value>> =
            nodes.iter().map(|n| cluster(http, n)).collect();
        let all_settled = views.iter().all(|view| {
            view.as_ref().is_some_and(|view| {
                let me = view["node_id"].as_str().unwrap();
                let assigned: Vec<u64> = view["assignment"]["partitions"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["owner"] == me)
                            .map(|p| p["partition"].as_u64().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                let owns: Vec<u64> = view["owns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_u64().unwrap())
                    .collect();
                settled(view, members) && owns == assigned
            })
        });
        if all_settled {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < ASSIGNMENT_TIMEOUT,
            "the nodes did not settle on members {members:?}: {views:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn loadgen(duration: Duration, run_id: &str) -> RunConfig {
    RunConfig {
        profile: Profile::Steady,
        duration,
        rate: 200.0,
        seed: 7,
        run_id: run_id.to_owned(),
        batch: 1,
        connections: 16,
        verify: true,
        progress: false,
        server_cmd: None,
        kill_every: None,
    }
}

fn drive(config: &RunConfig, targets: Vec<String>) -> Report {
    run_loadgen(config, &targets)
}

fn assert_verified(report: &Report) {
    assert_run_verified(report, 500);
}

#[test]
fn three_nodes_keep_counting_when_one_is_killed_and_rebalance_when_it_returns() {
    let Some(endpoint) = fluvio::endpoint("the Fluvio failover tests") else {
        return;
    };
    let log = format!("fluvio://{endpoint}/{}", fluvio::unique_topic("failover"));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let http = client();
    let a = start(&log, dirs[0].path());
    let b = start(&log, dirs[1].path());
    let c = start(&log, dirs[2].path());
    let ids: Vec<String> = [&a, &b, &c].iter().map(|n| node_id(&http, n)).collect();
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    wait_settled(&http, &[&a, &b, &c], &all);
    let before_kill = cluster(&http, &a).unwrap();
    let c_partitions = held_by(&before_kill, &ids[2]);
    assert!(!c_partitions.is_empty());
    let a_kept = held_by(&before_kill, &ids[0]);
    let b_kept = held_by(&before_kill, &ids[1]);
    let (a_starts, b_starts) = (run_starts(&http, &a), run_starts(&http, &b));

    // Traffic to all three; c is SIGKILLed while it runs and not restarted.
    let targets = vec![a.base.clone(), b.base.clone(), c.base.clone()];
    let killed_base = c.base.clone();
    let config = loadgen(Duration::from_secs(12), "failover1");
    let traffic = std::thread::spawn(move || drive(&config, targets));
    // Timing only, not correctness: the kill lands in the middle of the run.
    std::thread::sleep(Duration::from_secs(4));
    c.kill();
    let survivors: BTreeSet<String> = ids[..2].iter().cloned().collect();
    let took = wait_settled(&http, &[&a, &b], &survivors);
    eprintln!("the killed node's partitions were running elsewhere {took:?} after its death");
    // Only the dead node's partitions moved: what the survivors ran, they ran on.
    let a_after_kill = run_starts(&http, &a);
    let b_after_kill = run_starts(&http, &b);
    assert_kept_undisturbed("a", &a_starts, &a_after_kill, &a_kept);
    assert_kept_undisturbed("b", &b_starts, &b_after_kill, &b_kept);
    // The survivors restored c's partitions from the snapshots c published while it ran.
    let mut restored: Vec<(u64, bool)> = taken_over(&http, &a);
    restored.extend(taken_over(&http, &b));
    for partition in &c_partitions {
        assert!(
            restored.contains(&(*partition, true)),
            "partition {partition} of the killed node was restored from its snapshot: {restored:?}"
        );
    }
    let report = traffic.join().expect("the load generator thread");
    assert_verified(&report);
    let verification = report.verification.as_ref().unwrap();
    assert_eq!(verification.targets_left_out, vec![killed_base]);

    // It comes back on its data directory: it rejoins, the partitions rebalance, and a run
    // against all three verifies again.
    let c = start(&log, dirs[2].path());
    wait_settled(&http, &[&a, &b, &c], &all);
    // Only what returns to it moved: a and b ran the rest on.
    assert_kept_undisturbed("a", &a_after_kill, &run_starts(&http, &a), &a_kept);
    assert_kept_undisturbed("b", &b_after_kill, &run_starts(&http, &b), &b_kept);
    // It takes its partitions back from the snapshots a and b published as they released them
    // (further on than its own checkpoints, which stopped at the kill).
    let back = taken_over(&http, &c);
    for partition in &c_partitions {
        assert!(back.contains(&(*partition, true)), "{partition}: {back:?}");
    }
    let report = drive(
        &loadgen(Duration::from_secs(5), "failover2"),
        vec![a.base.clone(), b.base.clone(), c.base.clone()],
    );
    assert_verified(&report);
    assert!(report.verification.unwrap().targets_left_out.is_empty());
}

#[test]
fn a_node_paused_past_its_lease_fences_itself_and_totals_stay_exact() {
    let Some(endpoint) = fluvio::endpoint("the Fluvio failover tests") else {
        return;
    };
    let log = format!("fluvio://{endpoint}/{}", fluvio::unique_topic("paused"));
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (hook, received) = webhook::start(None);
    let http = client();
    let start_with_hook =
        |dir: &std::path::Path| start_with(&log, dir, &["--notify-webhook", &hook]);
    let a = start_with_hook(dirs[0].path());
    let b = start_with_hook(dirs[1].path());
    let ids: BTreeSet<String> = [&a, &b].iter().map(|n| node_id(&http, n)).collect();
    let b_id = node_id(&http, &b);
    wait_settled(&http, &[&a, &b], &ids);
    create_campaign(&http, &a, "paused-meals", "USD");
    let partitioner = Partitioner::new(PARTITIONS as u32);
    let mut records_in = vec![0u64; PARTITIONS];
    let mut expected_cents = 0;
    let mut donate = |range: std::ops::Range<usize>, nodes: &[&ServerProcess]| {
        for i in range {
            let payment_ref = format!("pause-{i:04}");
            let amount_cents = 100 + (i as u64 % 5) * 10;
            let body = donation_json(
                &payment_ref,
                "paused-meals",
                amount_cents,
                &format!("user-{i}"),
            );
            let node = nodes[i % nodes.len()];
            let response = post_signed(
                &http,
                &node.url("/v1/donations"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .unwrap();
            assert_eq!(response.status(), 202);
            expected_cents += amount_cents;
            records_in[partitioner.partition_for_key(payment_ref.as_bytes()) as usize] += 1;
        }
        records_in.clone()
    };
    let records = donate(0..100, &[&a, &b]);
    // Every notification delivered, and the cluster told how far (so nothing is delivered again
    // by whoever runs a partition next).
    wait_delivered(&http, &a, &records, &received, 100);

    let join_before = member_join_offset(&cluster(&http, &a).unwrap(), &b_id);
    b.signal("STOP");
    let only_a: BTreeSet<String> = [node_id(&http, &a)].into();
    wait_settled(&http, &[&a], &only_a);
    let records = donate(100..200, &[&a]);
    wait_delivered(&http, &a, &records, &received, 200);
    b.signal("CONT");
    // b finds its lease gone, stops, joins again as a new run, and gets its partitions back.
    wait_settled(&http, &[&a, &b], &ids);
    let join_after = member_join_offset(&cluster(&http, &a).unwrap(), &b_id);
    assert!(
        join_after > join_before,
        "b joined again: {join_before} → {join_after}"
    );
    let records = donate(200..260, &[&a, &b]);
    for node in [&a, &b] {
        wait_total(&http, node, "paused-meals", expected_cents, 260);
    }
    wait_delivered(&http, &a, &records, &received, 260);
    let deliveries = received.lock().unwrap().deliveries.clone();
    let twice: Vec<(&String, &u32)> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// Waits until the receiver has `count` distinct donations and `node`'s view of the cluster
/// has every partition's delivery cursor at its record count.
fn wait_delivered(
    http: &reqwest::blocking::Client,
    node: &ServerProcess,
    records_in: &[u64],
    received: &Mutex<Received>,
    count: usize,
) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let distinct = received.lock().unwrap().deliveries.len();
        let view = cluster(http, node).expect("a cluster view");
        let cursors: Vec<u64> = view["assignment"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["delivered"].as_u64().unwrap())
            .collect();
        if distinct == count && cursors == records_in {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{distinct} of {count} delivered; cursors {cursors:?}, records {records_in:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn member_join_offset(view: &serde_json::Value, node_id: &str) -> u64 {
    view["assignment"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == node_id)
        .unwrap_or_else(|| panic!("{node_id} is a member: {view}"))["join_offset"]
        .as_u64()
        .unwrap()
}

fn wait_total(
    http: &reqwest::blocking::Client,
    node: &ServerProcess,
    campaign: &str,
    cents: u64,
    count: u64,
) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let view: serde_json::Value = http
            .get(node.url(&format!("/v1/campaigns/{campaign}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["freshness"]["lag_records"] == 0
            && view["total_cents"] == cents
            && view["donations"] == count
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not converge to {cents} cents / {count}: {view}",
            node.base
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_users_burst_split_over_two_nodes_gets_one_allowance() {
    let Some(endpoint) = fluvio::endpoint("the Fluvio failover tests") else {
        return;
    };
    let log = format!("fluvio://{endpoint}/{}", fluvio::unique_topic("limit"));
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let http = client();
    // A burst of 20 and (nearly) no refill within the test: the allowance is the burst.
    let limits = [
        "--rate-limit-burst",
        "20",
        "--rate-limit-per-second",
        "0.001",
    ];
    let start_limited = |dir: &std::path::Path| start_with(&log, dir, &limits);
    let a = start_limited(dirs[0].path());
    let b = start_limited(dirs[1].path());
    let ids: BTreeSet<String> = [&a, &b].iter().map(|n| node_id(&http, n)).collect();
    wait_settled(&http, &[&a, &b], &ids);
    create_campaign(&http, &a, "limit-meals", "USD");
    let mut accepted = 0;
    let mut limited = 0;
    for i in 0..40 {
        let body = donation_json(&format!("limit-{i:03}"), "limit-meals", 100, "one-user");
        let node = [&a, &b][i % 2];
        let response = post_signed(
            &http,
            &node.url("/v1/donations"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .unwrap();
        match response.status().as_u16() {
            202 => accepted += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Each node admits half the burst: 20 in all, not 20 per node.
    assert_eq!((accepted, limited), (20, 20));
}
