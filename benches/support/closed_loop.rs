//! The benches' lean closed-loop load: connections each sending signed donations (singles or
//! batches) back to back, on the load generator's lean HTTP/1.1 client, counting what was
//! accepted and the latency of every request.

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

/// Closed loop: `concurrency` connections each sending requests back to back for `duration`.
pub async fn closed_loop(
    base: &str,
    concurrency: usize,
    items: usize,
    duration: Duration,
    run: u64,
) -> Phase {
    let secret = Arc::new(SigningSecret::from_text(SIGNING_SECRET));
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + duration;
    let path = if items == 1 {
        "/v1/donations"
    } else {
        "/v1/donations/batch"
    };
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (secret, base) = (Arc::clone(&secret), base.to_owned());
            let (accepted, requests, errors) = (
                Arc::clone(&accepted),
                Arc::clone(&requests),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let Ok(mut connection) = Connection::open(&base).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latency;
                };
                let mut sequence = 0u64;
                while Instant::now() < stop_at {
                    let bodies: Vec<String> = (0..items)
                        .map(|_| {
                            sequence += 1;
                            donation(
                                &format!("r{run}-t{task}-{sequence}"),
                                "bench",
                                1 + sequence % 500,
                            )
                        })
                        .collect();
                    let body = if items == 1 {
                        bodies.into_iter().next().unwrap_or_default()
                    } else {
                        format!("[{}]", bodies.join(","))
                    };
                    let signature = sign(&secret, now_s(), body.as_bytes());
                    let started = Instant::now();
                    let status = connection.post(path, &body, &signature).await;
                    let _ = latency.record(started.elapsed().as_micros() as u64);
                    requests.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Ok(status) if (200..300).contains(&status) => {
                            accepted.fetch_add(items as u64, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
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
    let started = Instant::now();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for task in tasks {
        if let Ok(histogram) = task.await {
            let _ = latency_us.add(histogram);
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    Phase {
        name: if items == 1 {
            format!("single, {concurrency} connections")
        } else {
            format!("batch of {items}, {concurrency} connections")
        },
        donations_per_s: accepted.load(Ordering::Relaxed) as f64 / seconds,
        requests_per_s: requests.load(Ordering::Relaxed) as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        latency_us,
    }
}

/// Closed loop over given bodies: `concurrency` connections each signing and sending the next
/// body of `bodies` (single donations) as soon as it has an answer, for `duration` or until the
/// bodies run out. Every 2xx counts as acknowledged, as the load generator counts them.
pub async fn closed_loop_over(
    base: &str,
    concurrency: usize,
    duration: Duration,
    bodies: Arc<Vec<Vec<u8>>>,
) -> Phase {
    let secret = Arc::new(SigningSecret::from_text(SIGNING_SECRET));
    let next = Arc::new(AtomicU64::new(0));
    let (accepted, requests, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop_at = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (secret, base, bodies, next) = (
                Arc::clone(&secret),
                base.to_owned(),
                Arc::clone(&bodies),
                Arc::clone(&next),
            );
            let (accepted, requests, errors) = (
                Arc::clone(&accepted),
                Arc::clone(&requests),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let Ok(mut connection) = Connection::open(&base).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latency;
                };
                while Instant::now() < stop_at {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(body) = bodies.get(index) else {
                        break;
                    };
                    let body = String::from_utf8_lossy(body);
                    let signature = sign(&secret, now_s(), body.as_bytes());
                    let started = Instant::now();
                    let status = connection.post("/v1/donations", &body, &signature).await;
                    let _ = latency.record(started.elapsed().as_micros() as u64);
                    requests.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Ok(status) if (200..300).contains(&status) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
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
    let started = Instant::now();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for task in tasks {
        if let Ok(histogram) = task.await {
            let _ = latency_us.add(histogram);
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Phase {
        name: format!("given bodies, {concurrency} connections"),
        donations_per_s: accepted.load(Ordering::Relaxed) as f64 / seconds,
        requests_per_s: requests.load(Ordering::Relaxed) as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        latency_us,
    }
}
