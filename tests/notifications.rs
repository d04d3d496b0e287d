//! Guards donor notifications: with a webhook, every recorded donation is delivered — signed,
//! with its payment_ref as Idempotency-Key — at least once, through receiver failures and a
//! server SIGKILL, and a duplicate or conflicting resend is not notified as a donation of its own.

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
        expected.insert(payment_ref);
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
