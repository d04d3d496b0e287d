//! Guards donor notifications: with a webhook, every recorded donation and every refund applied to
//! one is delivered — signed, with the donation's payment_ref (or `refund:` and the refund's
//! refund_ref) as Idempotency-Key — at least once, through receiver failures and a server
//! SIGKILL, and a duplicate or conflicting resend is not notified as one of its own.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::server::{ServerProcess, client, create_campaign, donation_json, post_signed};
use support::webhook;

const DONATIONS: usize = 60;
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn every_recorded_donation_is_delivered_through_failures_and_a_crash() {
    let (hook, received) = webhook::start(Some(3)); // a flaky receiver
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--notify-webhook",
        hook.as_str(),
        "--rate-limit-burst",
        "100000",
    ];
    let mut server = ServerProcess::start(dir.path(), &args);
    let http = client();
    create_campaign(&http, &server, "meals", "USD");
    let mut expected = BTreeSet::new();
    for i in 0..DONATIONS {
        let payment_ref = format!("pay-{i}");
        if i % 6 == 3 {
            // A refund that comes before its donation: told once the donation is recorded.
            send_refund(&http, &server, &payment_ref, i);
            expected.insert(format!("refund:re-{i}"));
        }
        let body = serde_json::to_vec(&donation_json(
            &payment_ref,
            "meals",
            100 + i as u64,
            "usr-1",
        ))
        .unwrap();
        assert_eq!(
            post_signed(&http, &server.url("/v1/donations"), &body)
                .unwrap()
                .status(),
            202
        );
        if i % 4 == 0 {
            // A retry: recorded once, notified once.
            assert_eq!(
                post_signed(&http, &server.url("/v1/donations"), &body)
                    .unwrap()
                    .status(),
                202
            );
        }
        if i % 10 == 5 {
            let conflicting =
                serde_json::to_vec(&donation_json(&payment_ref, "meals", 1, "usr-1")).unwrap();
            assert_eq!(
                post_signed(&http, &server.url("/v1/donations"), &conflicting)
                    .unwrap()
                    .status(),
                202
            );
        }
        expected.insert(payment_ref.clone());
        if i % 6 == 0 {
            send_refund(&http, &server, &payment_ref, i);
            expected.insert(format!("refund:re-{i}"));
        }
        if i == DONATIONS / 2 {
            server.kill(); // SIGKILL mid-delivery
            server = ServerProcess::start(dir.path(), &args);
        }
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let delivered: BTreeSet<String> = received
            .lock()
            .unwrap()
            .deliveries
            .keys()
            .cloned()
            .collect();
        if delivered == expected {
            break;
        }
        assert!(
            delivered.is_subset(&expected),
            "notified something that is not a recorded donation"
        );
        assert!(
            Instant::now() < deadline,
            "missing deliveries: {:?}",
            expected.difference(&delivered).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = received.lock().unwrap();
    assert_eq!(received.bad_signatures, 0);
    assert!(
        received.requests as usize > expected.len(),
        "the receiver's failures were retried"
    );
    drop(server);
}

/// A refund of 50 cents of `payment_ref`'s donation, sent twice (a retry).
fn send_refund(
    http: &reqwest::blocking::Client,
    server: &ServerProcess,
    payment_ref: &str,
    i: usize,
) {
    let refund = serde_json::json!({
        "refund_ref": format!("re-{i}"),
        "payment_ref": payment_ref,
        "amount_cents": 50,
        "kind": "refund",
        "refunded_at": "2026-11-24T19:00:00Z",
    });
    let refund = serde_json::to_vec(&refund).unwrap();
    for _ in 0..2 {
        let response = post_signed(http, &server.url("/v1/refunds"), &refund).unwrap();
        assert_eq!(response.status(), 202);
    }
}
