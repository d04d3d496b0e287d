//! One load run: create the campaigns, note what the servers hold, replay the schedule open
//! loop (single or batch requests, bounded in flight, spread over the targets), measure latency
//! and freshness, maybe crash the (one) server on a timer, then verify every target against the
//! ground truth and against each other.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_api::signature::SigningSecret;
use tokio::sync::{Notify, Semaphore};

use crate::chaos::ManagedServer;
use crate::client::{BatchAnswer, Placement, Server, Signed, SingleAnswer};
use crate::ground_truth::{GroundTruth, SentDonation, SentRefund};
use crate::plan::{PlannedCheckout, PlannedRequest, Signing};
use crate::report::{Report, ReportContext, RunStats, VerificationReport};
use crate::schedule::{Profile, Schedule};
use crate::targets::{Targets, first_target};
use crate::traffic::{Body, Planned, RefundTiming, ResendTiming, Traffic, TrafficConfig};
use crate::verify;

/// A request refused with 429/503, or left unanswered, is sent again for this long at most.
const RETRY_WINDOW: Duration = Duration::from_secs(120);
/// How long verification waits for each server to apply everything.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);
/// One freshness probe at most this often.
const FRESHNESS_PROBE_EVERY: Duration = Duration::from_millis(100);
/// A probe not visible after this long is dropped (and reported).
const FRESHNESS_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub profile: Profile,
    pub duration: Duration,
    /// Average checkouts per second over the run.
    pub rate: f64,
    pub seed: u64,
    pub run_id: String,
    /// Donations per request: 1 sends `POST /v1/donations`, more sends batches.
    pub batch: usize,
    /// Requests in flight at most (and HTTP connections kept).
    pub connections: usize,
    pub verify: bool,
    pub progress: bool,
    /// Start the server with this shell command (and own it).
    pub server_cmd: Option<String>,
    /// SIGKILL and restart the owned server this often.
    pub kill_every: Option<Duration>,
}

impl RunConfig {
    fn traffic(&self) -> TrafficConfig {
        TrafficConfig {
            seed: self.seed,
            run_id: self.run_id.clone(),
            // "Minutes later" in a day compressed into the run: at most a quarter of the run.
            later_resend_ms_max: (self.duration.as_millis() as u64 / 4).clamp(1_000, 30_000),
            ..TrafficConfig::default()
        }
    }

    /// About how many distinct donations the schedule plans (bursts add about 6%), capped so a
    /// mistyped rate cannot reserve the machine's memory up front.
    fn expected_donations(&self) -> usize {
        let checkouts = self.rate * self.duration.as_secs_f64();
        (checkouts * 1.1).clamp(0.0, 50_000_000.0) as usize
    }

    fn settings(&self, targets: &[String]) -> BTreeMap<String, String> {
        let mut settings = BTreeMap::from([
            target_setting(targets),
            ("profile".to_owned(), format!("{:?}", self.profile)),
            (
                "duration".to_owned(),
                humantime::format_duration(self.duration).to_string(),
            ),
            ("rate (average/s)".to_owned(), self.rate.to_string()),
            ("seed".to_owned(), self.seed.to_string()),
            ("run id".to_owned(), self.run_id.clone()),
            ("donations per request".to_owned(), self.batch.to_string()),
            ("connections".to_owned(), self.connections.to_string()),
        ]);
        if let Some(every) = self.kill_every {
            settings.insert(
                "kill every".to_owned(),
                humantime::format_duration(every).to_string(),
            );
        }
        settings
    }
}

/// The target setting: the URL of one target, or how many there were and their URLs.
fn target_setting(targets: &[String]) -> (String, String) {
    match targets {
        [one] => ("target".to_owned(), one.clone()),
        several => (
            "targets".to_owned(),
            format!("{}: {}", several.len(), several.join(", ")),
        ),
    }
}

/// One request's worth of donation bodies and what each means for the ground truth.
#[derive(Debug, Clone)]
struct Item {
    body: Body,
    /// Its signature, made when it was planned (single requests).
    signed: Option<Signed>,
    /// The donation a 2xx records (originals and resends); `None` for conflicts and bad bodies.
    donation: Option<SentDonation>,
    /// The refund a 2xx records: the item goes to `POST /v1/refunds`.
    refund: Option<SentRefund>,
}

/// A freshness probe: a donation acknowledged by target `acknowledged_by` at `acknowledged_at`,
/// visible once its partition's applied offset passes its offset.
#[derive(Debug, Clone)]
struct Probe {
    campaign_id: String,
    placement: Placement,
    acknowledged_by: usize,
    acknowledged_at: Instant,
}

/// State the sending tasks share.
#[derive(Debug)]
struct Shared {
    targets: Targets,
    started: Instant,
    slots: Semaphore,
    stats: Mutex<RunStats>,
    truth: Mutex<GroundTruth>,
    /// Donations whose requests were never answered within the retry window.
    unknown: Mutex<Vec<SentDonation>>,
    probe: Mutex<ProbeSlot>,
    /// Whether `probe` is `Wanted`: read on every acknowledgement, so the slot's lock is taken
    /// only when a probe is asked for.
    probe_wanted: AtomicBool,
    /// Wakes the freshness prober when the slot it asked for is filled.
    probe_filled: Notify,
}

/// The freshness prober asks for the next acknowledged donation, then follows it.
#[derive(Debug)]
enum ProbeSlot {
    Idle,
    Wanted,
    Filled(Probe),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the load against `targets` (one server, or several nodes sharing one log) and, unless
/// told not to, the verification; the report says how both went. `credentials` (signing secret,
/// admin token, the same for every target) are read once the server is up: a server started by
/// `server_cmd` may generate them on its first start. A run that starts the server itself takes
/// exactly one target.
pub async fn run(
    config: &RunConfig,
    targets: &[String],
    credentials: impl FnOnce() -> anyhow::Result<(SigningSecret, String)>,
) -> anyhow::Result<Report> {
    let first = first_target(targets, config.server_cmd.is_some())?;
    let mut managed = match &config.server_cmd {
        Some(command) => Some(ManagedServer::start(command, &Server::health_probe(first)?).await?),
        None => None,
    };
    let (secret, admin_token) = credentials()?;
    let targets = Targets::new(targets, &secret, &admin_token, config.connections)?;
    let traffic_config = config.traffic();
    for campaign in &traffic_config.campaigns {
        targets.first().create_campaign(campaign).await?;
    }
    let start_ms = unix_ms();
    let ranges = verify::ranges_for_run(
        start_ms,
        start_ms + config.duration.as_millis() as i64,
        traffic_config.lateness_ms_max,
    );
    // Every node must know the campaigns before it is sent donations for them.
    if config.verify || targets.several() {
        verify::wait_every_caught_up(targets.all(), &traffic_config.campaigns, CATCH_UP_WAIT)
            .await?;
    }
    let baseline = if config.verify {
        Some(verify::snapshot_every(targets.all(), &traffic_config.campaigns, &ranges).await?)
    } else {
        None
    };

    let bases = targets.bases();
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    let shared = Arc::new(Shared {
        targets,
        started,
        slots: Semaphore::new(config.connections.max(1)),
        stats: Mutex::new(RunStats::with_targets(&bases)),
        truth: Mutex::new(GroundTruth::with_capacity(config.expected_donations())),
        unknown: Mutex::new(Vec::new()),
        probe: Mutex::new(ProbeSlot::Idle),
        probe_wanted: AtomicBool::new(false),
        probe_filled: Notify::new(),
    });
    let finished = Arc::new(Notify::new());
    let helpers = Helpers::start(config, &shared, &finished, managed.take());
    let signing = if config.batch <= 1 {
        Signing::EachRequest(secret)
    } else {
        Signing::AtSend
    };
    let (checkouts, planner) = crate::plan::start(
        Schedule::new(config.profile, config.duration, config.rate),
        Traffic::new(traffic_config.clone()),
        started_unix_ms,
        signing,
    );
    replay(config, &shared, checkouts).await;
    planner.await?;
    let elapsed = shared.started.elapsed();
    let managed = helpers.stop(&finished).await?;

    let stats_snapshot = {
        let truth = lock(&shared.truth);
        lock(&shared.stats).report(ReportContext {
            elapsed,
            scheduled: config.duration,
            distinct_recorded: truth.recorded_count(),
            settings: config.settings(&bases),
        })
    };
    let mut report = stats_snapshot;
    if let Some(before) = baseline {
        let outcome = verify_run(&shared, &traffic_config.campaigns, &ranges, &before).await;
        report.distinct_donations_recorded = lock(&shared.truth).recorded_count();
        report.verification = Some(outcome?);
    }
    if let Some(managed) = managed {
        managed.stop();
    }
    Ok(report)
}

/// One request's worth of the schedule (a checkout, or a batch's worth of them) and when it
/// fell due.
struct Job {
    plans: Vec<Vec<PlannedRequest>>,
    due: Instant,
}

/// Sends the schedule's checkouts as they fall due, then waits for every request to finish.
///
/// A fixed set of senders, one per connection, takes the requests in due order; the replay
/// hands one over only when a sender is free (or one is queued per sender). A server slower
/// than the schedule so slows the replay down instead of piling up requests that cost the load
/// generator the CPU it shares with the server; latency still counts from each due time, so the
/// wait shows in it (no coordinated omission).
async fn replay(
    config: &RunConfig,
    shared: &Arc<Shared>,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<PlannedCheckout>>,
) {
    let senders_count = config.connections.max(1);
    // Many receivers: a sender that is done takes the next job at once, without waiting for
    // another sender to be scheduled and hand a shared receiver on.
    let (jobs, queue) = async_channel::bounded::<Job>(senders_count);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..senders_count {
        senders.spawn(sender(Arc::clone(shared), queue.clone(), config.batch));
    }
    drop(queue);
    let mut pending: Vec<Vec<PlannedRequest>> = Vec::new();
    let mut last_due = shared.started;
    'schedule: while let Some(chunk) = chunks.recv().await {
        for checkout in chunk {
            let due = shared.started + checkout.due;
            // Behind the schedule (the senders are busy), a due time already passed goes at once.
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            pending.push(checkout.requests);
            last_due = due;
            if pending.len() >= config.batch {
                let plans = std::mem::take(&mut pending);
                if jobs.send(Job { plans, due }).await.is_err() {
                    break 'schedule;
                }
            }
        }
    }
    if !pending.is_empty() {
        let _ = jobs
            .send(Job {
                plans: pending,
                due: last_due,
            })
            .await;
    }
    drop(jobs);
    while senders.join_next().await.is_some() {}
}

/// One sender: takes the next request of the schedule, sends it with the resends that race or
/// follow it, and leaves the resends due minutes later to a task of their own.
async fn sender(shared: Arc<Shared>, queue: async_channel::Receiver<Job>, batch: usize) {
    let mut later_resends = tokio::task::JoinSet::new();
    while let Ok(Job { plans, due }) = queue.recv().await {
        let later = if batch <= 1 {
            send_singles(&shared, plans, due).await
        } else {
            send_batches(&shared, plans, due, batch).await
        };
        if !later.is_empty() {
            later_resends.spawn(send_later(Arc::clone(&shared), later, batch));
        }
        while later_resends.try_join_next().is_some() {}
    }
    while later_resends.join_next().await.is_some() {}
}

/// Resends that go a while after their originals were answered: each at its time, alone.
async fn send_later(shared: Arc<Shared>, later: Vec<(Instant, Item)>, batch: usize) {
    for (at, item) in later {
        tokio::time::sleep_until(at.into()).await;
        if batch <= 1 || item.refund.is_some() {
            send_single(&shared, &item, Instant::now()).await;
        } else {
            send_batch(&shared, vec![item], Instant::now()).await;
        }
    }
}

/// What a checkout's requests become, in the order they must go.
#[derive(Debug, Default)]
struct Waves {
    /// Refunds that go before their donations, when due.
    before: Vec<Item>,
    /// Originals and bad requests, sent when due.
    first: Vec<Item>,
    /// Resends racing their originals.
    concurrent: Vec<Item>,
    /// Resends and conflicting resends that go once the originals were answered.
    after: Vec<Item>,
    /// Resends that go this long after the originals were answered.
    later: Vec<(Duration, Item)>,
}

impl Waves {
    fn new(plans: Vec<Vec<PlannedRequest>>, stats: &mut RunStats) -> Self {
        let mut waves = Waves::default();
        for PlannedRequest { planned, signed } in plans.into_iter().flatten() {
            match planned {
                Planned::Donation(donation, body) => waves.first.push(Item {
                    body,
                    signed,
                    donation: Some(donation),
                    refund: None,
                }),
                Planned::Invalid { body } => {
                    stats.counters.invalid_sent += 1;
                    waves.first.push(Item {
                        body,
                        signed,
                        donation: None,
                        refund: None,
                    });
                }
                Planned::Resend { of, body, timing } => {
                    stats.counters.resends_sent += 1;
                    let item = Item {
                        body,
                        signed,
                        donation: Some(of),
                        refund: None,
                    };
                    match timing {
                        ResendTiming::Immediate => waves.after.push(item),
                        ResendTiming::Concurrent => waves.concurrent.push(item),
                        ResendTiming::Later { delay_ms } => {
                            waves.later.push((Duration::from_millis(delay_ms), item));
                        }
                    }
                }
                Planned::Conflict { body, .. } => {
                    stats.counters.conflicts_sent += 1;
                    waves.after.push(Item {
                        body,
                        signed,
                        donation: None,
                        refund: None,
                    });
                }
                Planned::Refund {
                    refund,
                    body,
                    timing,
                } => {
                    let item = Item {
                        body,
                        signed,
                        donation: None,
                        refund: Some(refund),
                    };
                    match timing {
                        RefundTiming::Before => waves.before.push(item),
                        RefundTiming::After => waves.after.push(item),
                        RefundTiming::Later { delay_ms } => {
                            waves.later.push((Duration::from_millis(delay_ms), item));
                        }
                    }
                }
                Planned::RefundResend { of, body } => {
                    stats.counters.refund_resends_sent += 1;
                    // Once its original was answered: just after it.
                    let original_delay = waves
                        .later
                        .iter()
                        .find(|(_, item)| {
                            item.refund
                                .as_ref()
                                .is_some_and(|refund| refund.refund_ref == of.refund_ref)
                        })
                        .map(|(delay, _)| *delay);
                    let item = Item {
                        body,
                        signed,
                        donation: None,
                        refund: Some(of),
                    };
                    match original_delay {
                        Some(delay) => waves.later.push((delay, item)),
                        None => waves.after.push(item),
                    }
                }
            }
        }
        waves.later.sort_by_key(|(delay, _)| *delay);
        waves
    }

    /// The later resends, timed from `answered`, when the waves before them were answered.
    fn later_from(self, answered: Instant) -> Vec<(Instant, Item)> {
        self.later
            .into_iter()
            .map(|(delay, item)| (answered + delay, item))
            .collect()
    }
}

/// Single requests: the checkout's originals in order, resends racing or following them;
/// returns the resends due later, with their times.
async fn send_singles(
    shared: &Shared,
    plans: Vec<Vec<PlannedRequest>>,
    due: Instant,
) -> Vec<(Instant, Item)> {
    let waves = Waves::new(plans, &mut lock(&shared.stats));
    for item in &waves.before {
        send_single(shared, item, due).await;
    }
    match (waves.first.as_slice(), waves.concurrent.is_empty()) {
        // Most checkouts: one donation, nothing racing it.
        ([original], true) => send_single(shared, original, due).await,
        _ => {
            // A checkout's donations (several for a user's burst) go out at once, as a burst
            // would.
            let originals = futures_util::future::join_all(
                waves
                    .first
                    .iter()
                    .map(|item| send_single(shared, item, due)),
            );
            let racing = async {
                for item in &waves.concurrent {
                    send_single(shared, item, Instant::now()).await;
                }
            };
            tokio::join!(originals, racing);
        }
    }
    for item in &waves.after {
        send_single(shared, item, Instant::now()).await;
    }
    waves.later_from(Instant::now())
}

/// Batches: the originals in one request, racing resends in another, then the rest; returns
/// the resends due later, with their times.
///
/// A wave holds more requests than the checkouts it came from (bursts, resends and bad requests
/// ride along), so it goes in as many requests of at most `batch` donations as it needs, at
/// once: a request over the server's batch limit would be refused whole.
async fn send_batches(
    shared: &Shared,
    plans: Vec<Vec<PlannedRequest>>,
    due: Instant,
    batch: usize,
) -> Vec<(Instant, Item)> {
    let mut waves = Waves::new(plans, &mut lock(&shared.stats));
    for item in &waves.before {
        send_single(shared, item, due).await;
    }
    tokio::join!(
        send_in_batches(shared, std::mem::take(&mut waves.first), due, batch),
        send_in_batches(
            shared,
            std::mem::take(&mut waves.concurrent),
            Instant::now(),
            batch
        )
    );
    send_in_batches(
        shared,
        std::mem::take(&mut waves.after),
        Instant::now(),
        batch,
    )
    .await;
    waves.later_from(Instant::now())
}

/// `items` in requests of at most `batch` donations, all at once (refunds go alone, to their
/// own route).
async fn send_in_batches(shared: &Shared, items: Vec<Item>, due: Instant, batch: usize) {
    let (refunds, items): (Vec<Item>, Vec<Item>) =
        items.into_iter().partition(|item| item.refund.is_some());
    for refund in &refunds {
        send_single(shared, refund, due).await;
    }
    let mut items = items.into_iter();
    let requests = std::iter::from_fn(|| {
        let request: Vec<Item> = items.by_ref().take(batch.max(1)).collect();
        (!request.is_empty()).then_some(request)
    });
    futures_util::future::join_all(requests.map(|request| send_batch(shared, request, due))).await;
}

impl Shared {
    fn second(&self) -> usize {
        self.started.elapsed().as_secs() as usize
    }

    /// Target `target` acknowledged `item` at `placement`.
    fn acknowledged(&self, item: &Item, placement: Placement, target: usize) {
        if let Some(refund) = &item.refund {
            if lock(&self.truth).refund_acknowledged(refund) {
                lock(&self.stats).counters.refunds_acknowledged += 1;
            }
            return;
        }
        let Some(donation) = &item.donation else {
            return;
        };
        lock(&self.truth).acknowledged(donation);
        if !self.probe_wanted.load(Ordering::Relaxed) {
            return;
        }
        let mut probe = lock(&self.probe);
        if matches!(*probe, ProbeSlot::Wanted) {
            *probe = ProbeSlot::Filled(Probe {
                campaign_id: donation.campaign_id.clone(),
                placement,
                acknowledged_by: target,
                acknowledged_at: Instant::now(),
            });
            self.probe_wanted.store(false, Ordering::Relaxed);
            self.probe_filled.notify_one();
        }
    }

    fn refused(&self, item: &Item, status: u16, code: &str) {
        lock(&self.stats).refused(self.second(), status, code, 1);
        if item.donation.is_some() || item.refund.is_some() {
            let what = if item.refund.is_some() {
                "refund"
            } else {
                "donation"
            };
            eprintln!(
                "tally-loadgen: a valid {what} was refused: {status} {code}: {}",
                item.body
            );
        }
    }

    fn retried(&self, status: u16, count: u64) {
        let mut stats = lock(&self.stats);
        if status == 429 {
            stats.counters.rate_limited_retries += count;
        } else {
            stats.counters.unavailable_retries += count;
        }
    }

    fn gave_up(&self, items: &[Item]) {
        let donations: Vec<SentDonation> =
            items.iter().filter_map(|i| i.donation.clone()).collect();
        lock(&self.stats).counters.gave_up += donations.len() as u64;
        lock(&self.unknown).extend(donations);
    }
}

async fn send_single(shared: &Shared, item: &Item, mut due: Instant) {
    let give_up = Instant::now() + RETRY_WINDOW;
    {
        let mut stats = lock(&shared.stats);
        stats.counters.requests_sent += 1;
        if item.refund.is_some() {
            stats.counters.refunds_sent += 1;
        } else {
            stats.counters.donations_sent += 1;
        }
    }
    loop {
        let (target, server) = shared.targets.next_for_request();
        lock(&shared.stats).sent_to(target);
        let answer = {
            let _slot = shared.slots.acquire().await;
            let (body, signed) = (item.body.as_bytes(), item.signed.as_ref());
            match item.refund {
                Some(_) => server.post_refund(body, signed).await,
                None => server.post_donation(body, signed).await,
            }
        };
        let (status, wait) = match answer {
            SingleAnswer::Accepted(placement) => {
                {
                    let donations = u64::from(item.refund.is_none());
                    let mut stats = lock(&shared.stats);
                    stats.answered(shared.second(), due.elapsed(), donations);
                    stats.acknowledged_by(target, donations);
                }
                shared.acknowledged(item, placement, target);
                return;
            }
            SingleAnswer::Refused { status, code } => {
                lock(&shared.stats).answered(shared.second(), due.elapsed(), 0);
                shared.refused(item, status, &code);
                return;
            }
            SingleAnswer::RetryAfter { status, wait } => (status, wait),
            SingleAnswer::Unreachable => (0, Duration::from_millis(100)),
        };
        shared.retried(status, 1);
        if Instant::now() + wait > give_up {
            shared.gave_up(std::slice::from_ref(item));
            return;
        }
        tokio::time::sleep(wait).await;
        due = due_after_retry(status, due);
    }
}

async fn send_batch(shared: &Shared, mut items: Vec<Item>, mut due: Instant) {
    if items.is_empty() {
        return;
    }
    let give_up = Instant::now() + RETRY_WINDOW;
    lock(&shared.stats).counters.donations_sent += items.len() as u64;
    loop {
        let body = batch_body(&items);
        let (target, server) = shared.targets.next_for_request();
        {
            let mut stats = lock(&shared.stats);
            stats.counters.requests_sent += 1;
            stats.sent_to(target);
        }
        let answer = {
            let _slot = shared.slots.acquire().await;
            server.post_batch(&body).await
        };
        let (status, wait) = match answer {
            BatchAnswer::Answered { accepted, rejected } => {
                let acknowledged = accepted.len() as u64;
                {
                    let mut stats = lock(&shared.stats);
                    stats.answered(shared.second(), due.elapsed(), acknowledged);
                    stats.acknowledged_by(target, acknowledged);
                }
                for (index, placement) in accepted {
                    if let Some(item) = items.get(index) {
                        shared.acknowledged(item, placement, target);
                    }
                }
                let mut limited = Vec::new();
                for (index, code) in rejected {
                    let Some(item) = items.get(index) else {
                        continue;
                    };
                    if code == "rate_limited" {
                        limited.push(item.clone());
                    } else {
                        shared.refused(item, 400, &code);
                    }
                }
                if limited.is_empty() {
                    return;
                }
                items = limited;
                (429, Duration::from_secs(1))
            }
            BatchAnswer::Refused { status, code } => {
                lock(&shared.stats).answered(shared.second(), due.elapsed(), 0);
                for item in &items {
                    shared.refused(item, status, &code);
                }
                return;
            }
            BatchAnswer::RetryAfter { status, wait } => (status, wait),
            BatchAnswer::Unreachable => (0, Duration::from_millis(100)),
        };
        shared.retried(status, items.len() as u64);
        if Instant::now() + wait > give_up {
            shared.gave_up(&items);
            return;
        }
        tokio::time::sleep(wait).await;
        due = due_after_retry(status, due);
    }
}

/// A JSON array of the items' encoded bodies.
fn batch_body(items: &[Item]) -> Vec<u8> {
    let length: usize = items.iter().map(|i| i.body.as_bytes().len() + 1).sum();
    let mut body = Vec::with_capacity(length + 2);
    body.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.body.as_bytes());
    }
    body.push(b']');
    body
}

/// A request sent again after a 429 is due when its `Retry-After` ends: the wait is the rate
/// limit working as asked, not the server being slow. After a 503 or no answer it keeps its
/// first due time, so unavailability shows in the latency.
fn due_after_retry(status: u16, due: Instant) -> Instant {
    if status == 429 { Instant::now() } else { due }
}

/// The tasks that run beside the replay: progress, freshness probes, the crash timer.
struct Helpers {
    progress: tokio::task::JoinHandle<()>,
    freshness: tokio::task::JoinHandle<()>,
    chaos: tokio::task::JoinHandle<anyhow::Result<Option<ManagedServer>>>,
}

impl Helpers {
    fn start(
        config: &RunConfig,
        shared: &Arc<Shared>,
        finished: &Arc<Notify>,
        managed: Option<ManagedServer>,
    ) -> Self {
        let progress = tokio::spawn(show_progress(
            Arc::clone(shared),
            Arc::clone(finished),
            config.duration,
            config.progress,
        ));
        let freshness = tokio::spawn(probe_freshness(Arc::clone(shared), Arc::clone(finished)));
        let chaos = tokio::spawn(crash_on_timer(
            Arc::clone(shared),
            Arc::clone(finished),
            managed,
            config.kill_every,
        ));
        Self {
            progress,
            freshness,
            chaos,
        }
    }

    async fn stop(self, finished: &Notify) -> anyhow::Result<Option<ManagedServer>> {
        finished.notify_waiters();
        let _ = self.progress.await;
        let _ = self.freshness.await;
        self.chaos.await?
    }
}

async fn show_progress(shared: Arc<Shared>, finished: Arc<Notify>, planned: Duration, on: bool) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let stop = finished.notified();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(every) => {}
        }
        if !on {
            continue;
        }
        let line = lock(&shared.stats).progress_line(shared.started.elapsed(), planned);
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
    if on && terminal {
        eprintln!();
    }
}

async fn probe_freshness(shared: Arc<Shared>, finished: Arc<Notify>) {
    let stop = finished.notified();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(FRESHNESS_PROBE_EVERY) => {}
        }
        *lock(&shared.probe) = ProbeSlot::Wanted;
        shared.probe_wanted.store(true, Ordering::Relaxed);
        tokio::select! {
            () = &mut stop => return,
            () = shared.probe_filled.notified() => {}
        }
        let ProbeSlot::Filled(probe) =
            std::mem::replace(&mut *lock(&shared.probe), ProbeSlot::Idle)
        else {
            continue;
        };
        let (_, reader) = shared.targets.next_for_probe(probe.acknowledged_by);
        tokio::select! {
            () = &mut stop => return,
            visible = wait_visible(reader, &probe) => {
                if visible {
                    lock(&shared.stats).freshness(probe.acknowledged_at.elapsed());
                } else {
                    eprintln!(
                        "tally-loadgen: a donation was not visible at {} {FRESHNESS_PROBE_TIMEOUT:?} after its 202: {probe:?}",
                        reader.base()
                    );
                }
            }
        }
    }
}

/// Polls the campaign on `server` until its applied offset for the probe's partition passes the
/// probe.
async fn wait_visible(server: &Server, probe: &Probe) -> bool {
    while probe.acknowledged_at.elapsed() < FRESHNESS_PROBE_TIMEOUT {
        if let Some(view) = server.campaign(&probe.campaign_id).await {
            let applied = view
                .freshness
                .and_then(|f| f.applied_offsets.get(probe.placement.partition).copied());
            if applied.is_some_and(|applied| applied > probe.placement.offset) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

async fn crash_on_timer(
    shared: Arc<Shared>,
    finished: Arc<Notify>,
    mut managed: Option<ManagedServer>,
    every: Option<Duration>,
) -> anyhow::Result<Option<ManagedServer>> {
    let (Some(server), Some(every)) = (managed.as_mut(), every) else {
        return Ok(managed);
    };
    let stop = finished.notified();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(managed),
            () = tokio::time::sleep(every) => {}
        }
        server.kill_and_restart(shared.targets.first()).await?;
        lock(&shared.stats).counters.server_restarts += 1;
    }
}

/// After the run: settle unanswered donations, wait for every target, compare each with the
/// ground truth and with the others. Of several targets, those that no longer answer (a node
/// killed during the run) are left out and named; the rest must pass.
async fn verify_run(
    shared: &Shared,
    campaigns: &[String],
    ranges: &[verify::TimeRange],
    before: &[verify::TargetSnapshot],
) -> anyhow::Result<VerificationReport> {
    let (answering, targets_left_out) = answering_targets(shared).await?;
    let recorded_without_answer = settle_unanswered(shared, answering[0]).await?;
    let servers: Vec<Server> = answering
        .iter()
        .map(|&at| shared.targets.all()[at].clone())
        .collect();
    let before: Vec<verify::TargetSnapshot> =
        answering.iter().map(|&at| before[at].clone()).collect();
    verify::wait_every_caught_up(&servers, campaigns, CATCH_UP_WAIT).await?;
    let after = verify::snapshot_every(&servers, campaigns, ranges).await?;
    let comparison = verify::compare_targets(&before, &after, &lock(&shared.truth), ranges);
    Ok(VerificationReport {
        passed: comparison.mismatches.is_empty(),
        checks: comparison.checks,
        mismatches: comparison.mismatches,
        recorded_without_answer,
        targets_left_out,
    })
}

/// The indexes of the targets that answer a health probe now, and the URLs of those that do
/// not; with one target, that one whatever it answers (its checks say what is wrong).
async fn answering_targets(shared: &Shared) -> anyhow::Result<(Vec<usize>, Vec<String>)> {
    let servers = shared.targets.all();
    if servers.len() == 1 {
        return Ok((vec![0], Vec::new()));
    }
    let mut answering = Vec::new();
    let mut left_out = Vec::new();
    for (at, server) in servers.iter().enumerate() {
        if server.is_healthy().await {
            answering.push(at);
        } else {
            left_out.push(server.base().to_owned());
        }
    }
    anyhow::ensure!(
        !answering.is_empty(),
        "no target answers: nothing to verify"
    );
    Ok((answering, left_out))
}

/// Asks `target` whether each donation whose requests were never answered was recorded,
/// and adds those that were to the ground truth; returns how many.
async fn settle_unanswered(shared: &Shared, target: usize) -> anyhow::Result<u64> {
    let unknown = std::mem::take(&mut *lock(&shared.unknown));
    let server = &shared.targets.all()[target];
    let mut recorded_without_answer = 0;
    for donation in unknown {
        match server.is_recorded(&donation.payment_ref).await {
            Some(true) => {
                if lock(&shared.truth).recorded_without_answer(&donation) {
                    recorded_without_answer += 1;
                }
            }
            Some(false) => {}
            None => anyhow::bail!(
                "cannot ask the server whether {} was recorded",
                donation.payment_ref
            ),
        }
    }
    Ok(recorded_without_answer)
}
