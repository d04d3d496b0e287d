//! Guards donor notifications: with a webhook, every recorded donation is delivered — signed,
//! with its payment_ref as Idempotency-Key — at least once, through receiver failures and a
//! server SIGKILL, and a duplicate or conflicting resend is not notified as a donation of its own.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use support::server::{
    SIGNING_SECRET, ServerProcess, client, create_campaign, donation_json, now_s, post_signed,
};
use tally_api::signature::{SigningSecret, verify};

const DONATIONS: usize = 60;
const DEADLINE: Duration = Duration::from_secs(120);

/// What the receiver saw: deliveries per payment_ref, and how many requests it refused.
#[derive(Debug, Default)]
struct Received {
    deliveries: BTreeMap<String, u32>,
    requests: u32,
    bad_signatures: u32,
}

/// A webhook receiver on 127.0.0.1 that refuses every third request with a 500.
fn start_receiver() -> (String, Arc<Mutex<Received>>) {
    let received: Arc<Mutex<Received>> = Default::default();
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let state = Arc::clone(&received);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            address_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(receive))
                .with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
    });
    let address = address_rx.recv().unwrap();
    (format!("http://{address}/hook"), received)
}

async fn receive(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut received = received.lock().unwrap();
    received.requests += 1;
    if received.requests % 3 == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR; // a flaky receiver
    }
    let signature = headers.get("Tally-Signature").and_then(|v| v.to_str().ok());
    if verify(
        &SigningSecret::from_text(SIGNING_SECRET),
        signature,
        &body,
        now_s(),
        300,
    )
    .is_err()
    {
        received.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let notification: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = headers["Idempotency-Key"].to_str().unwrap().to_owned();
    assert_eq!(notification["payment_ref"], key.as_str());
    *received.deliveries.entry(key).or_default() += 1;
    StatusCode::OK
}

#[test]
fn every_recorded_donation_is_delivered_through_failures_and_a_crash() {
    let (hook, received) = start_receiver();
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
