//! tally over HTTP: `tally serve` with a fresh data directory, signed callbacks.

use super::*;
use server::{Connection, SIGNING_SECRET};

/// One worker's keep-alive connection to `POST /v1/donations`.
pub struct SingleCallbacks {
    base: String,
    secret: Arc<SigningSecret>,
    connection: Connection,
}

impl SingleCallbacks {
    pub async fn open(base: &str, secret: &Arc<SigningSecret>) -> anyhow::Result<Self> {
        let connection = Connection::open(base)
            .await
            .with_context(|| format!("connecting to {base}"))?;
        Ok(Self {
            base: base.to_owned(),
            secret: Arc::clone(secret),
            connection,
        })
    }
}

impl Callbacks for SingleCallbacks {
    async fn take(&mut self, event: &stream::Event) -> anyhow::Result<()> {
        let signature = sign(&self.secret, now_ms() / 1000, event.body.as_bytes());
        let status = self
            .connection
            .post("/v1/donations", &event.body, &signature)
            .await?;
        anyhow::ensure!((200..300).contains(&status), "answered {status}");
        Ok(())
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.connection = Connection::open(&self.base).await?;
        Ok(())
    }
}

pub fn signing_secret() -> Arc<SigningSecret> {
    Arc::new(SigningSecret::from_text(SIGNING_SECRET))
}

/// Every campaign's total, once tally has applied everything it acknowledged.
pub async fn totals(base: &str, campaigns: &[String]) -> anyhow::Result<Totals> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let mut totals = Totals::new();
    for campaign in campaigns {
        let view = loop {
            let view: serde_json::Value = client
                .get(format!("{base}/v1/campaigns/{campaign}"))
                .send()
                .await?
                .json()
                .await
                .with_context(|| format!("reading campaign {campaign}"))?;
            if view["freshness"]["lag_records"] == 0 {
                break view;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "tally did not apply its log within {CATCH_UP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let total = ExpectedTotal {
            total_cents: view["total_cents"].as_u64().unwrap_or_default(),
            donations: view["donations"].as_u64().unwrap_or_default(),
        };
        if total.donations > 0 {
            totals.insert(campaign.clone(), total);
        }
    }
    Ok(totals)
}

/// `POST /v1/donations/batch` of these events; returns the positions acknowledged.
async fn send_batch(
    connection: &mut Connection,
    secret: &SigningSecret,
    events: &[&stream::Event],
) -> anyhow::Result<Vec<usize>> {
    let bodies: Vec<&str> = events.iter().map(|event| event.body.as_str()).collect();
    let body = format!("[{}]", bodies.join(","));
    let signature = sign(secret, now_ms() / 1000, body.as_bytes());
    let (status, answer) = connection
        .post_reading_body("/v1/donations/batch", &body, &signature)
        .await?;
    anyhow::ensure!(
        status == 200,
        "batch answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    let answer: BatchAnswer = serde_json::from_slice(&answer).context("reading a batch answer")?;
    let rejected: Vec<usize> = answer.rejected.iter().map(|item| item.index).collect();
    let acknowledged: Vec<usize> = (0..events.len())
        .filter(|index| !rejected.contains(index))
        .collect();
    anyhow::ensure!(
        acknowledged.len() == answer.accepted,
        "batch answer counts {} accepted of {} items with {} rejected",
        answer.accepted,
        events.len(),
        rejected.len()
    );
    Ok(acknowledged)
}

#[derive(Debug, serde::Deserialize)]
struct BatchAnswer {
    accepted: usize,
    rejected: Vec<RejectedItem>,
}

#[derive(Debug, serde::Deserialize)]
struct RejectedItem {
    index: usize,
}

/// The stream in batches: first every donation and resend, in queue order; then the
/// conflicts whose donation was acknowledged (so their donation's amount was recorded first).
pub async fn drive_batches(
    stream: &Arc<Stream>,
    base: &str,
    concurrency: usize,
    batch_items: usize,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + SYSTEM_TIME_MAX;
    let donations = events_where(stream, |event| event.kind != Kind::Conflict);
    let mut outcome = send_batches(
        stream,
        base,
        concurrency,
        batch(donations, batch_items),
        deadline,
    )
    .await;
    let acknowledged_units: std::collections::HashSet<usize> = outcome
        .acknowledged_donations
        .iter()
        .filter(|index| stream.event(**index).kind == Kind::Original)
        .map(|index| index.unit)
        .collect();
    let conflicts = events_where(stream, |event| event.kind == Kind::Conflict);
    let (conflicts, held_back): (Vec<_>, Vec<_>) = conflicts
        .into_iter()
        .partition(|index| acknowledged_units.contains(&index.unit));
    let second = send_batches(
        stream,
        base,
        concurrency,
        batch(conflicts, batch_items),
        deadline,
    );
    let second = second.await;
    outcome.unsent += second.unsent;
    outcome.merge(second);
    outcome.conflicts_held_back += held_back.len() as u64;
    outcome.elapsed = started.elapsed();
    outcome
}

fn events_where(stream: &Stream, keep: impl Fn(&stream::Event) -> bool) -> Vec<EventIndex> {
    let mut indexes = Vec::new();
    for (unit, events) in stream.units.iter().enumerate() {
        for (position, event) in events.events.iter().enumerate() {
            if keep(event) {
                indexes.push(EventIndex { unit, position });
            }
        }
    }
    indexes
}

fn batch(indexes: Vec<EventIndex>, batch_items: usize) -> Vec<Vec<EventIndex>> {
    indexes.chunks(batch_items).map(<[_]>::to_vec).collect()
}

/// Closed loop over batches: each worker sends the next batch until none is left.
async fn send_batches(
    stream: &Arc<Stream>,
    base: &str,
    concurrency: usize,
    batches: Vec<Vec<EventIndex>>,
    deadline: Instant,
) -> Outcome {
    let batches = Arc::new(batches);
    let next_batch = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (stream, batches) = (Arc::clone(stream), Arc::clone(&batches));
            let (next_batch, base) = (Arc::clone(&next_batch), base.to_owned());
            tokio::spawn(async move {
                work_batches(&stream, &base, &batches, &next_batch, deadline).await
            })
        })
        .collect();
    let mut outcome = merge_workers(tasks).await;
    outcome.unsent = batches.len() - next_batch.load(Ordering::Relaxed).min(batches.len());
    outcome
}

async fn work_batches(
    stream: &Stream,
    base: &str,
    batches: &[Vec<EventIndex>],
    next_batch: &AtomicUsize,
    deadline: Instant,
) -> Outcome {
    let mut outcome = Outcome::new();
    let secret = signing_secret();
    let mut connection = match Connection::open(base).await {
        Ok(connection) => connection,
        Err(error) => {
            outcome.note_error(&anyhow::Error::from(error).context("connecting"));
            return outcome;
        }
    };
    while Instant::now() < deadline {
        let Some(indexes) = batches.get(next_batch.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        let events: Vec<&stream::Event> = indexes.iter().map(|i| stream.event(*i)).collect();
        let started = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            send_batch(&mut connection, &secret, &events),
        )
        .await;
        outcome.record_latency(started.elapsed());
        let error = match answer {
            Ok(Ok(acknowledged)) => {
                outcome.acknowledged += acknowledged.len() as u64;
                let donations = acknowledged.into_iter().map(|position| indexes[position]);
                outcome
                    .acknowledged_donations
                    .extend(donations.filter(|index| stream.event(*index).kind != Kind::Conflict));
                continue;
            }
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        outcome.note_error(&error);
        match Connection::open(base).await {
            Ok(fresh) => connection = fresh,
            Err(_) => return outcome,
        }
    }
    outcome
}
