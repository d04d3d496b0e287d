//! `tally serve` on a Fluvio cluster that goes away mid-run and comes back. Concurrent clients
//! post signed donations and retry each until it gets a 2xx, as payment systems do; after a
//! number of acknowledgements the cluster is stopped. Ingest must then answer 503 with
//! `Retry-After` and the `log_unavailable` error code; once those answers were seen the cluster
//! is started again, and every donation must eventually be acknowledged. At the end the pipeline
//! has applied the whole log, the campaign counts every acknowledged payment exactly once
//! (retries that were written twice, and deliberate resends, are duplicates), every payment is
//! found by its reference, and the checkpoints verify.
//!
//! It runs only when all three variables are set, and otherwise passes and says it did not run:
//!
//! ```sh
//! TALLY_FLUVIO_ENDPOINT=127.0.0.1:9003 \
//! TALLY_FLUVIO_STOP_CMD="pkill -f 'fluvio-run spu -i [5]001'" \
//! TALLY_FLUVIO_START_CMD="setsid nohup /path/to/fluvio-run spu -i 5001 -p 127.0.0.1:9010 \
//!     -v 127.0.0.1:9011 --sc-addr 127.0.0.1:9004 --log-base-dir /path/to/spu-5001 \
//!     >> /path/to/spu.log 2>&1 < /dev/null &" \
//! cargo test --test fluvio_outage -- --nocapture
//! ```
//!
//! `TALLY_FLUVIO_ENDPOINT` is the SC's public address. The commands run with `sh -c`: the stop
//! command stops the cluster's SPU (or the whole cluster), the start command starts it again
//! and returns while it runs in the background, its output sent elsewhere than the test's.
//! (`[5]001` keeps `pkill -f` from matching the `sh -c` running it.) Each run creates a topic
//! named `tally-outage-<pid>-<millis>` with four partitions; it stays on the cluster.

mod support;

use std::cell::Cell;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use support::server::{ServerProcess, admin, client, create_campaign, donation_json, post_signed};
use tempfile::TempDir;

const ENDPOINT_VAR: &str = "TALLY_FLUVIO_ENDPOINT";
const STOP_VAR: &str = "TALLY_FLUVIO_STOP_CMD";
const START_VAR: &str = "TALLY_FLUVIO_START_CMD";

const PARTITIONS: &str = "4";
const CAMPAIGN: &str = "outage";
const CLIENTS: usize = 4;
const DONATIONS_PER_CLIENT: usize = 150;
/// Every fifth donation is sent again after its 2xx: a resend the pipeline must count once.
const RESEND_EVERY: usize = 5;
/// 2xx answers before the cluster is stopped: about a third of the traffic.
const ACCEPTED_BEFORE_STOP: usize = 200;
/// Well-formed 503 answers seen before the cluster is started again: two per client, so the
/// outage outlasts the append timeout twice over and the pipeline's reads back off.
const UNAVAILABLE_BEFORE_START: usize = 2 * CLIENTS;
/// Attempts at one donation before its client gives up.
const ATTEMPTS_MAX: u32 = 500;
/// `Retry-After` is honoured up to this wait, so that the test stays short.
const RETRY_WAIT_MAX: Duration = Duration::from_millis(250);
/// Every donation must have got its 2xx by then, outage included.
const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// Bound on each wait for the traffic to reach a point: the acknowledgements before the stop,
/// the 503s after it.
const TRAFFIC_WAIT: Duration = Duration::from_secs(60);
/// Bound on waiting for the pipeline to apply the whole log once the clients are done.
const APPLY_WAIT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[test]
fn acknowledged_donations_survive_a_fluvio_outage_and_count_once() {
    let Some(config) = OutageConfig::from_env() else {
        return;
    };
    let run = OutageRun::start(&config);
    create_campaign(&client(), &run.server, CAMPAIGN, "USD");
    let started_at = Instant::now();
    let deadline = started_at + RUN_DEADLINE;
    let progress = Arc::new(Progress::default());
    let clients = spawn_clients(&run.server.url("/v1/donations"), &progress, deadline);
    let campaign_url = run.server.url(&format!("/v1/campaigns/{CAMPAIGN}"));
    let timeline = stop_and_start_cluster(&run.cluster, &progress, started_at, &campaign_url);
    let acknowledged = join_clients(clients);
    let all_acknowledged_after = started_at.elapsed();

    let http = client();
    let view = wait_until_everything_applied(&http, &run.server);
    let all_applied_after = started_at.elapsed();
    assert_counted_once(&view, &acknowledged);
    let duplicates = assert_every_donation_found(&run.server, &acknowledged);
    assert_checkpoints_verify(&http, &run.server);

    let counts = progress.counts();
    let resent = acknowledged.iter().filter(|a| a.resent).count() as u64;
    eprintln!(
        "fluvio outage: cluster stopped at {:.1?} after {} 2xx answers, first 503 {:.1?} later, \
         started again at {:.1?} after {} 503s; {} donations ({resent} resent) acknowledged at \
         {all_acknowledged_after:.1?}, all applied at {all_applied_after:.1?}; {} 503s in all, \
         {} requests without an answer; {duplicates} duplicate records, {} beyond the \
         deliberate resends (retries written twice)",
        timeline.stopped_at,
        timeline.accepted_at_stop,
        timeline.first_unavailable_after_stop,
        timeline.started_at,
        timeline.unavailable_at_start,
        acknowledged.len(),
        counts.unavailable,
        counts.failed_requests,
        duplicates - resent,
    );
}

/// Where the cluster is and how to stop and start it, from the environment.
struct OutageConfig {
    endpoint: String,
    stop_command: String,
    start_command: String,
}

impl OutageConfig {
    /// The configuration, or `None` after saying on stderr which variables are missing.
    fn from_env() -> Option<Self> {
        let read = |name: &'static str| std::env::var(name).map_err(|_| name);
        match (read(ENDPOINT_VAR), read(STOP_VAR), read(START_VAR)) {
            (Ok(endpoint), Ok(stop_command), Ok(start_command)) => Some(Self {
                endpoint,
                stop_command,
                start_command,
            }),
            (endpoint, stop, start) => {
                let missing: Vec<&str> = [endpoint.err(), stop.err(), start.err()]
                    .into_iter()
                    .flatten()
                    .collect();
                // Written to stderr directly rather than with eprintln!, which the test
                // harness captures: the skip shows in every test run's output.
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: the Fluvio outage test did not run",
                    not_set(&missing)
                );
                None
            }
        }
    }
}

/// "A is not set", "A and B are not set", "A, B and C are not set".
fn not_set(names: &[&str]) -> String {
    match names {
        [name] => format!("{name} is not set"),
        [first @ .., last] => format!("{} and {last} are not set", first.join(", ")),
        [] => String::new(),
    }
}

/// Everything the test started, undone when dropped, panic included, in field order: the server
/// is killed, the cluster is started again if the test left it stopped, the data directory is
/// removed.
struct OutageRun {
    server: ServerProcess,
    cluster: Cluster,
    _data_dir: TempDir,
}

impl OutageRun {
    fn start(config: &OutageConfig) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let topic = format!("tally-outage-{}-{}", std::process::id(), unix_millis());
        let location = format!("fluvio://{}/{topic}", config.endpoint);
        eprintln!("fluvio outage: tally serve --log {location} --partitions {PARTITIONS}");
        let args = [
            "--log",
            location.as_str(),
            "--partitions",
            PARTITIONS,
            "--rate-limit-burst",
            "1000000",
            "--rate-limit-per-second",
            "1000000",
        ];
        let server = ServerProcess::start(data_dir.path(), &args);
        Self {
            server,
            cluster: Cluster::new(config),
            _data_dir: data_dir,
        }
    }
}

/// Stops and starts the cluster with the configured commands.
struct Cluster {
    stop_command: String,
    start_command: String,
    /// Stopped by this test and not started since.
    stopped: Cell<bool>,
}

impl Cluster {
    fn new(config: &OutageConfig) -> Self {
        Self {
            stop_command: config.stop_command.clone(),
            start_command: config.start_command.clone(),
            stopped: Cell::new(false),
        }
    }

    fn stop(&self) {
        self.stopped.set(true);
        run_shell("stop", &self.stop_command);
    }

    fn start(&self) {
        run_shell("start", &self.start_command);
        self.stopped.set(false);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stopped.get() {
            eprintln!("fluvio outage: starting the cluster again before leaving");
            run_shell("start", &self.start_command);
        }
    }
}

/// Runs a cluster command with `sh -c`. A failed exit is reported, not fatal: whether the
/// cluster went away and came back is judged by the server's answers.
fn run_shell(what: &str, command: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("fluvio outage: the {what} command exited with {status}"),
        Err(error) => eprintln!("fluvio outage: the {what} command did not run: {error}"),
    }
}

/// What the clients have seen so far, shared with the thread that stops and starts the cluster.
#[derive(Debug, Default)]
struct Progress {
    counts: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// 2xx answers, resends included.
    accepted: usize,
    /// 503 answers, each with `Retry-After` and the `log_unavailable` code.
    unavailable: usize,
    /// Requests that got no answer.
    failed_requests: usize,
    /// Client threads that returned or panicked.
    clients_ended: usize,
    /// A client thread panicked (its message is on stderr).
    client_failed: bool,
}

impl Progress {
    fn counts(&self) -> Counts {
        *self.lock()
    }

    fn update(&self, change: impl FnOnce(&mut Counts)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `reached` holds, at most `TRAFFIC_WAIT`; fails the test when the wait runs
    /// out or every client ended first.
    fn wait_until(&self, what: &str, reached: impl Fn(&Counts) -> bool) -> Counts {
        let deadline = Instant::now() + TRAFFIC_WAIT;
        let mut counts = self.lock();
        loop {
            if reached(&counts) {
                return *counts;
            }
            assert!(
                !counts.client_failed,
                "a client failed before {what}: {counts:?}"
            );
            assert!(
                counts.clients_ended < CLIENTS,
                "the clients ended before {what}: {counts:?}"
            );
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(
                !remaining.is_zero(),
                "no {what} within {TRAFFIC_WAIT:?}: {counts:?}"
            );
            counts = self
                .changed
                .wait_timeout(counts, remaining)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Counts a client thread as ended when it returns or panics, and as failed if it panics.
struct ClientEnd(Arc<Progress>);

impl Drop for ClientEnd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.0.update(|counts| {
            counts.clients_ended += 1;
            counts.client_failed |= panicking;
        });
    }
}

/// When the outage happened, measured from the start of the traffic.
struct Timeline {
    stopped_at: Duration,
    accepted_at_stop: usize,
    first_unavailable_after_stop: Duration,
    unavailable_at_start: usize,
    started_at: Duration,
}

/// Stops the cluster once `ACCEPTED_BEFORE_STOP` donations were acknowledged, and starts it
/// again once `UNAVAILABLE_BEFORE_START` 503s were answered.
/// While it is stopped, the campaign's totals stay readable, marked as measured against the log
/// ends last read.
fn stop_and_start_cluster(
    cluster: &Cluster,
    progress: &Progress,
    traffic_start: Instant,
    campaign_url: &str,
) -> Timeline {
    let before_stop = progress.wait_until("enough 2xx answers to stop the cluster", |c| {
        c.accepted >= ACCEPTED_BEFORE_STOP
    });
    let http = client();
    let reachable = campaign_view(&http, campaign_url);
    assert_eq!(reachable["freshness"]["log_reachable"], true, "{reachable}");
    assert_eq!(
        before_stop.unavailable, 0,
        "503s before the cluster stopped"
    );
    cluster.stop();
    let stopped_at = traffic_start.elapsed();
    eprintln!(
        "fluvio outage: cluster stopped after {} 2xx answers",
        before_stop.accepted
    );
    progress.wait_until("503 answers after the cluster stopped", |c| {
        c.unavailable >= 1
    });
    let first_unavailable_after_stop = traffic_start.elapsed() - stopped_at;
    let during_outage = campaign_view(&http, campaign_url);
    assert_eq!(
        during_outage["freshness"]["log_reachable"], false,
        "{during_outage}"
    );
    let before_start = progress.wait_until("enough 503 answers to start the cluster", |c| {
        c.unavailable >= UNAVAILABLE_BEFORE_START
    });
    cluster.start();
    let started_at = traffic_start.elapsed();
    eprintln!(
        "fluvio outage: cluster started again after {} 503 answers",
        before_start.unavailable
    );
    Timeline {
        stopped_at,
        accepted_at_stop: before_stop.accepted,
        first_unavailable_after_stop,
        unavailable_at_start: before_start.unavailable,
        started_at,
    }
}

/// `GET /v1/campaigns/{id}`, which must answer 200.
fn campaign_view(http: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let response = http.get(url).send().expect("the campaign view answers");
    assert_eq!(response.status(), 200, "the campaign view during the run");
    response.json().expect("a JSON campaign view")
}

/// A donation whose payment got a 2xx.
#[derive(Debug, Clone)]
struct Acknowledged {
    payment_ref: String,
    amount_cents: u64,
    /// Where the first 2xx said it was appended.
    partition: u64,
    offset: u64,
    /// Sent again after its 2xx.
    resent: bool,
}

fn spawn_clients(
    url: &str,
    progress: &Arc<Progress>,
    deadline: Instant,
) -> Vec<JoinHandle<Vec<Acknowledged>>> {
    (0..CLIENTS)
        .map(|client_id| {
            let (url, progress) = (url.to_owned(), Arc::clone(progress));
            std::thread::spawn(move || {
                let _end = ClientEnd(Arc::clone(&progress));
                send_donations(client_id, &url, &progress, deadline)
            })
        })
        .collect()
}

fn join_clients(clients: Vec<JoinHandle<Vec<Acknowledged>>>) -> Vec<Acknowledged> {
    let mut acknowledged = Vec::new();
    for handle in clients {
        match handle.join() {
            Ok(client_acknowledged) => acknowledged.extend(client_acknowledged),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    acknowledged
}

/// One client's donations, each sent until it got a 2xx; every `RESEND_EVERY`th again after.
fn send_donations(
    client_id: usize,
    url: &str,
    progress: &Progress,
    deadline: Instant,
) -> Vec<Acknowledged> {
    let http = client();
    (0..DONATIONS_PER_CLIENT)
        .map(|i| {
            let payment_ref = format!("pay-{client_id}-{i}");
            let amount_cents = 100 + (client_id * DONATIONS_PER_CLIENT + i) as u64 % 997;
            let user = format!("usr-{client_id}-{}", i % 10);
            let body = donation_json(&payment_ref, CAMPAIGN, amount_cents, &user);
            let accepted = send_until_accepted(&http, url, &body, progress, deadline);
            let resent = i % RESEND_EVERY == 0;
            if resent {
                send_until_accepted(&http, url, &body, progress, deadline);
            }
            Acknowledged {
                payment_ref,
                amount_cents,
                partition: accepted["partition"]
                    .as_u64()
                    .expect("partition in the 2xx"),
                offset: accepted["offset"].as_u64().expect("offset in the 2xx"),
                resent,
            }
        })
        .collect()
}

/// Posts `body` until a 2xx, waiting as `Retry-After` says (capped) after a 503; the 2xx body.
fn send_until_accepted(
    http: &reqwest::blocking::Client,
    url: &str,
    body: &serde_json::Value,
    progress: &Progress,
    deadline: Instant,
) -> serde_json::Value {
    let bytes = serde_json::to_vec(body).unwrap();
    let payment_ref = &body["payment_ref"];
    for _ in 0..ATTEMPTS_MAX {
        assert!(
            Instant::now() < deadline,
            "payment {payment_ref} got no 2xx within {RUN_DEADLINE:?}"
        );
        let response = match post_signed(http, url, &bytes) {
            Ok(response) => response,
            Err(error) => {
                eprintln!("fluvio outage: payment {payment_ref}: no answer: {error}");
                progress.update(|c| c.failed_requests += 1);
                std::thread::sleep(RETRY_WAIT_MAX);
                continue;
            }
        };
        let status = response.status();
        if status.is_success() {
            progress.update(|c| c.accepted += 1);
            return response.json().expect("a 2xx body is JSON");
        }
        assert_eq!(
            status,
            503,
            "payment {payment_ref}: unexpected answer: {}",
            response.text().unwrap_or_default()
        );
        let retry_after = unavailable_retry_after(response);
        progress.update(|c| c.unavailable += 1);
        std::thread::sleep(retry_after.min(RETRY_WAIT_MAX));
    }
    panic!("payment {payment_ref} got no 2xx in {ATTEMPTS_MAX} attempts");
}

/// The `Retry-After` of a 503, after checking it is there and the body says the log is
/// unavailable in the API's error shape.
fn unavailable_retry_after(response: reqwest::blocking::Response) -> Duration {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let body: serde_json::Value = response.json().expect("a 503 body is JSON");
    let error = &body["error"];
    assert_eq!(error["code"], "log_unavailable", "503 body: {body}");
    assert!(error["message"].is_string(), "503 body: {body}");
    let seconds = retry_after.unwrap_or_else(|| panic!("a 503 without Retry-After: {body}"));
    assert!(seconds >= 1, "Retry-After: {seconds}");
    Duration::from_secs(seconds)
}

/// The campaign, once the pipeline applied every partition up to the log's end.
fn wait_until_everything_applied(
    http: &reqwest::blocking::Client,
    server: &ServerProcess,
) -> serde_json::Value {
    let deadline = Instant::now() + APPLY_WAIT;
    let url = server.url(&format!("/v1/campaigns/{CAMPAIGN}"));
    loop {
        let answer = http.get(&url).send().map(|r| (r.status(), r.text()));
        let last = match answer {
            Ok((status, Ok(text))) if status == 200 => {
                let view: serde_json::Value = serde_json::from_str(&text).unwrap();
                let freshness = &view["freshness"];
                if freshness["lag_records"] == 0
                    && freshness["applied_offsets"] == freshness["log_end_offsets"]
                {
                    return view;
                }
                text
            }
            other => format!("{other:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "the pipeline did not apply the whole log within {APPLY_WAIT:?}: {last}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The campaign counts each acknowledged payment once, with its amount.
fn assert_counted_once(view: &serde_json::Value, acknowledged: &[Acknowledged]) {
    assert_eq!(acknowledged.len(), CLIENTS * DONATIONS_PER_CLIENT);
    let expected_cents: u64 = acknowledged.iter().map(|a| a.amount_cents).sum();
    assert_eq!(
        (view["donations"].as_u64(), view["total_cents"].as_u64()),
        (Some(acknowledged.len() as u64), Some(expected_cents)),
        "campaign after the outage: {view}"
    );
}

/// Every acknowledged payment is found (looked up by `CLIENTS` threads: a look-up on Fluvio
/// reads the record back from the cluster). The duplicate records in all.
fn assert_every_donation_found(server: &ServerProcess, acknowledged: &[Acknowledged]) -> u64 {
    let chunk = acknowledged.len().div_ceil(CLIENTS);
    std::thread::scope(|scope| {
        let lookups: Vec<_> = acknowledged
            .chunks(chunk)
            .map(|donations| {
                scope.spawn(move || {
                    let http = client();
                    donations
                        .iter()
                        .map(|donation| look_up(&http, server, donation))
                        .sum::<u64>()
                })
            })
            .collect();
        lookups
            .into_iter()
            .map(|lookup| {
                lookup
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .sum()
    })
}

/// Checks that the payment is recorded once, with its amount, at or before where its 2xx placed
/// it, and that a resent one counts its resend as a duplicate; the duplicates it counts.
fn look_up(
    http: &reqwest::blocking::Client,
    server: &ServerProcess,
    donation: &Acknowledged,
) -> u64 {
    let url = server.url(&format!("/v1/donations/{}", donation.payment_ref));
    let response = http.get(&url).send().unwrap();
    assert_eq!(
        response.status(),
        200,
        "{}: {:?}",
        donation.payment_ref,
        response.text()
    );
    let found: serde_json::Value = response.json().unwrap();
    assert_eq!(
        found["amount_cents"].as_u64(),
        Some(donation.amount_cents),
        "{found}"
    );
    assert_eq!(found["campaign_id"], CAMPAIGN, "{found}");
    assert_eq!(
        found["partition"].as_u64(),
        Some(donation.partition),
        "{found}"
    );
    assert!(
        found["offset"].as_u64().unwrap() <= donation.offset,
        "recorded after its acknowledged append at {}: {found}",
        donation.offset
    );
    assert_eq!(found["conflicts"], 0, "{found}");
    let duplicates = found["duplicates"].as_u64().unwrap();
    if donation.resent {
        assert!(
            duplicates >= 1,
            "a resend not counted as a duplicate: {found}"
        );
    }
    duplicates
}

fn assert_checkpoints_verify(http: &reqwest::blocking::Client, server: &ServerProcess) {
    let response = admin(http, Method::POST, &server.url("/v1/checkpoints/verify"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().unwrap();
    assert_eq!(report["ok"], true, "checkpoint verification: {report}");
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
