//! A webhook receiver on 127.0.0.1 for donor notifications: it checks each delivery's
//! signature and counts deliveries by `Idempotency-Key` (a donation's `payment_ref`, or
//! `refund:` and a refund's `refund_ref`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tally_api::signature::{SigningSecret, verify};

use super::server::{SIGNING_SECRET, now_s};

/// What the receiver saw: deliveries per payment_ref, requests, and refusals.
#[derive(Debug, Default)]
pub struct Received {
    pub deliveries: BTreeMap<String, u32>,
    pub requests: u32,
    pub bad_signatures: u32,
}

#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Received>>,
    refuse_every: Option<u32>,
}

/// Starts a receiver; with `refuse_every: Some(n)`, every nth request is refused with a 500 (a
/// flaky receiver). Returns its URL and what it receives.
pub fn start(refuse_every: Option<u32>) -> (String, Arc<Mutex<Received>>) {
    let received: Arc<Mutex<Received>> = Default::default();
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let state = Receiver {
        received: Arc::clone(&received),
        refuse_every,
    };
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

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut received = receiver.received.lock().unwrap();
    received.requests += 1;
    if receiver
        .refuse_every
        .is_some_and(|n| received.requests % n == 0)
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let signature = headers.get("Tally-Signature").and_then(|v| v.to_str().ok());
    let secret = SigningSecret::from_text(SIGNING_SECRET);
    if verify(&secret, signature, &body, now_s(), 300).is_err() {
        received.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let notification: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let key = headers["Idempotency-Key"].to_str().unwrap().to_owned();
    match key.strip_prefix("refund:") {
        Some(refund_ref) => assert_eq!(notification["refund_ref"], refund_ref),
        None => assert_eq!(notification["payment_ref"], key.as_str()),
    }
    *received.deliveries.entry(key).or_default() += 1;
    StatusCode::OK
}
