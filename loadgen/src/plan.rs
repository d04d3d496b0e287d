//! Checkouts planned ahead of their due times, on a thread of their own: the traffic generated,
//! every body encoded and every single callback signed before the sending path sees it. The
//! sending path (one async thread) then only writes requests and reads answers, so its work per
//! request, which adds to every round trip, stays small; the planner runs on the core the
//! server leaves idle.
//!
//! Checkouts go to the sender in chunks of [`CHUNK`], so the two threads wake each other once a
//! chunk rather than once a checkout; the planner runs at most [`CHUNKS_AHEAD`] chunks ahead of
//! the sender. A donation's `paid_at` is its due time, not the moment it was planned.

use std::time::Duration;

use tally_api::signature::SigningSecret;
use tokio::sync::mpsc;

use crate::client::Signed;
use crate::schedule::Schedule;
use crate::traffic::{Planned, Traffic};

/// Checkouts the planner hands over at once.
pub const CHUNK: usize = 64;
/// Chunks planned and not yet taken by the sender, at most.
pub const CHUNKS_AHEAD: usize = 16;

/// One request of a checkout: what it is, and its signature when it goes alone.
#[derive(Debug)]
pub struct PlannedRequest {
    pub planned: Planned,
    pub signed: Option<Signed>,
}

/// A checkout's requests and when it is due, from the start of the run.
#[derive(Debug)]
pub struct PlannedCheckout {
    pub due: Duration,
    pub requests: Vec<PlannedRequest>,
}

/// How the planner signs: each request alone (single callbacks), or not at all (batches are
/// put together, and signed, when they are sent).
#[derive(Debug, Clone)]
pub enum Signing {
    EachRequest(SigningSecret),
    AtSend,
}

/// Starts planning `schedule`'s checkouts from `traffic`; the run starts at `started_unix_ms`.
/// The receiver yields them in chunks, in due order, and ends after the last; dropping it stops
/// the planner.
pub fn start(
    schedule: Schedule,
    mut traffic: Traffic,
    started_unix_ms: i64,
    signing: Signing,
) -> (
    mpsc::Receiver<Vec<PlannedCheckout>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    let planner = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for due in schedule.due_times() {
            let paid_at_ms = started_unix_ms + due.as_millis() as i64;
            let requests = traffic
                .checkout(paid_at_ms)
                .into_iter()
                .map(|planned| sign(planned, &signing))
                .collect();
            chunk.push(PlannedCheckout { due, requests });
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                if sender.blocking_send(full).is_err() {
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = sender.blocking_send(chunk);
        }
    });
    (receiver, planner)
}

fn sign(planned: Planned, signing: &Signing) -> PlannedRequest {
    let signed = match signing {
        Signing::EachRequest(secret) => Some(Signed::now(secret, planned.body().as_bytes())),
        Signing::AtSend => None,
    };
    PlannedRequest { planned, signed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Profile;
    use crate::traffic::TrafficConfig;

    #[tokio::test]
    async fn checkouts_come_in_due_order_signed_and_paid_at_their_due_time() {
        let schedule = Schedule::new(Profile::Steady, Duration::from_secs(2), 300.0);
        let expected = schedule.due_times().count();
        let started_unix_ms = 1_795_546_800_000;
        let secret = SigningSecret::from_text("secret");
        let (mut checkouts, planner) = start(
            schedule,
            Traffic::new(TrafficConfig::default()),
            started_unix_ms,
            Signing::EachRequest(secret.clone()),
        );
        let mut seen = 0;
        let mut last_due = Duration::ZERO;
        while let Some(chunk) = checkouts.recv().await {
            assert!(chunk.len() <= CHUNK);
            for checkout in chunk {
                assert!(checkout.due >= last_due);
                last_due = checkout.due;
                seen += 1;
                for request in &checkout.requests {
                    let signed = request.signed.as_ref().expect("single requests are signed");
                    let verified = tally_api::signature::verify(
                        &secret,
                        Some(signed.header()),
                        request.planned.body().as_bytes(),
                        signed.signed_at_s(),
                        0,
                    );
                    assert!(verified.is_ok(), "{verified:?}");
                    if let Planned::Donation(donation, _) = &request.planned
                        && donation.paid_at_ms > started_unix_ms + 10_000
                    {
                        panic!("paid_at past the schedule: {donation:?}");
                    }
                }
                if let Some(PlannedRequest {
                    planned: Planned::Donation(donation, _),
                    ..
                }) = checkout.requests.first()
                {
                    let due_ms = started_unix_ms + checkout.due.as_millis() as i64;
                    assert!(
                        donation.paid_at_ms <= due_ms,
                        "late callbacks lag, never lead"
                    );
                }
            }
        }
        planner.await.unwrap();
        assert_eq!(seen, expected);
    }
}
