//! The benches' lean closed-loop load: connections each sending signed donations (singles or
//! batches) back to back, on the load generator's lean HTTP/1.1 client, counting what was
//! accepted and the latency of every request.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_api::signature::{SigningSecret, sign};

use crate::server::{Connection, SIGNING_SECRET};

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn donation(payment_ref: &str, campaign_id: &str, amount_cents: u64) -> String {
    format!(
        r#"{{"payment_ref":"{payment_ref}","order_id":"o-{payment_ref}","user_id":"u-{}","campaign_id":"{campaign_id}","amount_cents":{amount_cents},"paid_at":"2026-11-24T18:30:00Z"}}"#,
        amount_cents % 1000
    )
}

/// What one closed-loop phase achieved.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    pub donations_per_s: f64,
    pub requests_per_s: f64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
}

/// Where a loop's request bodies come from.
enum Bodies {
    /// Made as they are sent: `items` uniform donations per request, refs unique to `run`.
    Made { items: usize, run: u64 },
    /// Taken in turn from a list, single donations, until it runs out.
    Given {
        bodies: Arc<Vec<Vec<u8>>>,
        next: AtomicU64,
    },
}

impl Bodies {
    /// The next request body of connection `task`, and how many donations it holds.
    fn next(&self, task: usize, sequence: &mut u64) -> Option<(Cow<'_, str>, u64)> {
        match self {
            Bodies::Made { items, run } => {
                let bodies: Vec<String> = (0..*items)
                    .map(|_| {
                        *sequence += 1;
                        donation(
                            &format!("r{run}-t{task}-{sequence}"),
                            "bench",
                            1 + *sequence % 500,
                        )
                    })
                    .collect();
                let body = if *items == 1 {
                    bodies.into_iter().next().unwrap_or_default()
                } else {
                    format!("[{}]", bodies.join(","))
                };
                Some((Cow::Owned(body), *items as u64))
            }
            Bodies::Given { bodies, next } => {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let body = bodies.get(index)?;
                Some((String::from_utf8_lossy(body), 1))
            }
        }
    }
}

/// What the connections of one loop counted.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Closed loop: `concurrency` connections each sending requests back to back for `duration`.
pub async fn closed_loop(
    base: &str,
    concurrency: usize,
    items: usize,
    duration: Duration,
    run: u64,
) -> Phase {
    let (path, name) = if items == 1 {
        (
            "/v1/donations",
            format!("single, {concurrency} connections"),
        )
    } else {
        (
            "/v1/donations/batch",
            format!("batch of {items}, {concurrency} connections"),
        )
    };
    let bodies = Bodies::Made { items, run };
    drive(base, concurrency, duration, path, bodies, true, name).await
}

/// Closed loop over given bodies: `concurrency` connections each signing and sending the next
/// body of `bodies` (single donations) as soon as it has an answer, for `duration` or until the
/// bodies run out. Every 2xx counts as acknowledged, as the load generator counts them; other
/// answers (the refusals a mix asks for) are not errors.
pub async fn closed_loop_over(
    base: &str,
    concurrency: usize,
    duration: Duration,
    bodies: Arc<Vec<Vec<u8>>>,
) -> Phase {
    let bodies = Bodies::Given {
        bodies,
        next: AtomicU64::new(0),
    };
    let name = format!("given bodies, {concurrency} connections");
    drive(
        base,
        concurrency,
        duration,
        "/v1/donations",
        bodies,
        false,
        name,
    )
    .await
}

/// Runs the connections of one loop and gathers what they counted. `refusal_is_error`: whether
/// an answer other than a 2xx counts as an error.
async fn drive(
    base: &str,
    concurrency: usize,
    duration: Duration,
    path: &'static str,
    bodies: Bodies,
    refusal_is_error: bool,
    name: String,
) -> Phase {
    let secret = Arc::new(SigningSecret::from_text(SIGNING_SECRET));
    let (bodies, counts) = (Arc::new(bodies), Arc::new(Counts::default()));
    let stop_at = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (secret, base) = (Arc::clone(&secret), base.to_owned());
            let (bodies, counts) = (Arc::clone(&bodies), Arc::clone(&counts));
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let Ok(mut connection) = Connection::open(&base).await else {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    return latency;
                };
                let mut sequence = 0u64;
                while Instant::now() < stop_at {
                    let Some((body, items)) = bodies.next(task, &mut sequence) else {
                        break;
                    };
                    let signature = sign(&secret, now_s(), body.as_bytes());
                    let sent = Instant::now();
                    let status = connection.post(path, &body, &signature).await;
                    let _ = latency.record(sent.elapsed().as_micros() as u64);
                    counts.requests.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Ok(status) if (200..300).contains(&status) => {
                            counts.accepted.fetch_add(items, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            if refusal_is_error {
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            match Connection::open(&base).await {
                                Ok(fresh) => connection = fresh,
                                Err(_) => return latency,
                            }
                        }
                    }
                }
                latency
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for task in tasks {
        if let Ok(histogram) = task.await {
            let _ = latency_us.add(histogram);
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Phase {
        name,
        donations_per_s: counts.accepted.load(Ordering::Relaxed) as f64 / seconds,
        requests_per_s: counts.requests.load(Ordering::Relaxed) as f64 / seconds,
        errors: counts.errors.load(Ordering::Relaxed),
        latency_us,
    }
}
