//! Guards `tally serve` against clients that hold connections without finishing requests:
//! thousands of stalled bodies and silent sockets do not keep signed donations from a 202 or
//! health checks from an answer, and the server closes them once their timeouts pass; a client
//! trickling its request head is disconnected; connections above the cap and bodies above their
//! slots are refused at once with a 503 in the API's error shape; every route that reads a body
//! (donations, batches, admin requests) reads it in a slot within the read timeout.
//!
//! Hostile traffic goes to 127.0.0.1 only, in bounded counts, and every wait has a deadline.
//! The timeouts are set short in the server's configuration so the test is quick; nothing asserts
//! how fast the server answers, only that it does before a generous deadline. The server runs in
//! this process (`tally::run`, as `tally serve` runs it).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::in_process::InProcessServer;
use support::server::*;

/// Stalled uploads: more than the 4,096 requests the server once served at once, each of which
/// a stalled body held.
const STALLED_BODIES: usize = 4200;
/// Connections that never send a byte.
const SILENT_SOCKETS: usize = 2000;
/// Signed donations sent while the hostile connections are open.
const SIGNED_DONATIONS: usize = 20;
/// The server's header-read and body-read timeouts under hostile load: long enough for the
/// hostile connections to be set up and the donations sent while the first are still held.
const HOSTILE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long any wait of the test may take before it fails: far above every timeout set.
const WAIT_MAX: Duration = Duration::from_secs(90);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The stalled request: the head of a donation callback and the first byte of its body.
const STALLED_REQUEST: &[u8] = b"POST /v1/donations HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";

/// File descriptors the test process needs: its hostile sockets and some to spare.
const TEST_FILES_MAX: u64 = (STALLED_BODIES + SILENT_SOCKETS) as u64 + 1024;

#[test]
fn signed_donations_are_accepted_while_thousands_of_stalled_bodies_and_silent_sockets_are_open() {
    raise_open_file_limit(TEST_FILES_MAX);
    let server = InProcessServer::start(|config| {
        config.header_read_timeout = HOSTILE_TIMEOUT;
        config.body_read_timeout = HOSTILE_TIMEOUT;
    });
    let client = client();
    create_campaign(&client, &server, "meals", "USD");
    let address = socket_address(&server);

    let stalled: Vec<TcpStream> = (0..STALLED_BODIES)
        .map(|_| {
            let mut stream = connect(address);
            stream.write_all(STALLED_REQUEST).unwrap();
            stream
        })
        .collect();
    let silent: Vec<TcpStream> = (0..SILENT_SOCKETS).map(|_| connect(address)).collect();
    wait_until("the server reads every stalled body", || {
        metric(&server, "tally_http_body_reads_in_progress") >= STALLED_BODIES as f64
    });

    for index in 0..SIGNED_DONATIONS {
        let body = donation_json(
            &format!("pay-{index}"),
            "meals",
            100,
            &format!("usr-{index}"),
        );
        let response = post_signed(
            &client,
            &server.url("/v1/donations"),
            body.to_string().as_bytes(),
        )
        .expect("a signed donation is answered");
        assert_eq!(response.status(), 202, "{}", response.text().unwrap());
    }
    let health = client.get(server.url("/healthz")).send().unwrap();
    assert_eq!(health.status(), 200);

    for stream in stalled {
        let answer = read_until_closed(stream);
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("\"body_timeout\""),
            "a stalled body was answered {answer:?}"
        );
    }
    for stream in silent {
        assert_eq!(
            read_until_closed(stream),
            "",
            "a silent socket was answered"
        );
    }
    assert!(metric(&server, "tally_http_body_read_timeouts_total") >= STALLED_BODIES as f64);
    let header_timeouts = metric(
        &server,
        "tally_http_connections_timed_out_total{reason=\"header_read\"}",
    );
    assert!(
        header_timeouts >= SILENT_SOCKETS as f64,
        "{header_timeouts}"
    );
}

#[test]
fn a_client_trickling_its_request_head_is_disconnected_and_an_idle_one_closed() {
    let server = InProcessServer::start(|config| {
        config.header_read_timeout = Duration::from_secs(1);
        config.idle_timeout = Duration::from_secs(1);
    });
    let address = socket_address(&server);

    let mut slow = connect(address);
    slow.write_all(b"POST /v1/donations HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let trickler = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            let started = Instant::now();
            // One header byte every 100 ms, each one resetting any timeout that counted
            // silence, until the server hangs up or the test's deadline passes.
            while started.elapsed() < WAIT_MAX {
                if slow.write_all(b"a").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
    };
    assert_eq!(read_until_closed(slow), "", "the slow client was answered");
    assert!(trickler.join().unwrap(), "the server kept the slow client");

    let mut kept_alive = connect(address);
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(kept_alive);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle = metric(
        &server,
        "tally_http_connections_timed_out_total{reason=\"idle\"}",
    );
    assert!(idle >= 1.0, "{idle}");
}

#[test]
fn a_connection_above_the_cap_is_answered_503_and_served_once_there_is_room() {
    const CAP: usize = 16;
    let server = InProcessServer::start(|config| config.connections_max = Some(CAP as u64));
    let address = socket_address(&server);
    let held: Vec<TcpStream> = (0..CAP).map(|_| connect(address)).collect();

    // Accepted after the held ones (the listen queue is first in, first out): above the cap.
    let answer = raw_get(address, "/healthz");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{answer}");

    drop(held);
    wait_until("a health check is served again", || {
        raw_get(address, "/healthz").starts_with("HTTP/1.1 200")
    });
    assert!(metric(&server, "tally_http_connections_refused_total") >= 1.0);
}

#[test]
fn a_body_above_its_slots_is_refused_at_once_and_donations_flow_once_the_stalled_time_out() {
    const SLOTS: usize = 4;
    let server = InProcessServer::start(|config| {
        config.body_reads_max = SLOTS;
        config.body_read_timeout = Duration::from_secs(2);
    });
    let client = client();
    create_campaign(&client, &server, "meals", "USD");
    let address = socket_address(&server);
    let stalled: Vec<TcpStream> = (0..SLOTS)
        .map(|_| {
            let mut stream = connect(address);
            stream.write_all(STALLED_REQUEST).unwrap();
            stream
        })
        .collect();
    wait_until("the server reads every stalled body", || {
        metric(&server, "tally_http_body_reads_in_progress") >= SLOTS as f64
    });

    let body = donation_json("pay-1", "meals", 100, "usr-1").to_string();
    let url = server.url("/v1/donations");
    let refused = post_signed(&client, &url, body.as_bytes()).unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().unwrap();
    assert_eq!(error["error"]["code"], "too_many_body_reads");

    for stream in stalled {
        assert!(read_until_closed(stream).starts_with("HTTP/1.1 408"));
    }
    let accepted = post_signed(&client, &url, body.as_bytes()).unwrap();
    assert_eq!(accepted.status(), 202, "{}", accepted.text().unwrap());
}

#[test]
fn every_route_that_reads_a_body_reads_it_in_a_slot_within_the_timeout() {
    const SLOTS: usize = 1;
    let server = InProcessServer::start(|config| {
        config.body_reads_max = SLOTS;
        config.body_read_timeout = Duration::from_secs(1);
    });
    let address = socket_address(&server);
    let admin_token = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    for (path, headers) in [
        ("/v1/donations", ""),
        ("/v1/donations/batch", ""),
        ("/v1/campaigns", admin_token.as_str()),
        ("/v1/notifications/ack", admin_token.as_str()),
        ("/v1/checkpoints/savepoint", admin_token.as_str()),
    ] {
        let stalled_request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        let mut stream = connect(address);
        stream.write_all(stalled_request.as_bytes()).unwrap();
        let answer = read_until_closed(stream);
        assert!(
            answer.starts_with("HTTP/1.1 408") && answer.contains("\"body_timeout\""),
            "{path}: a stalled body was answered {answer:?}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: {answer:?}"
        );
    }
    let timed_out = metric(&server, "tally_http_body_read_timeouts_total");
    assert!(timed_out >= 5.0, "{timed_out}");
}

#[test]
fn an_admin_body_above_its_slots_is_refused_and_one_refused_from_its_headers_takes_no_slot() {
    const SLOTS: usize = 1;
    // The stalled body holds the one slot for the whole test.
    let server = InProcessServer::start(|config| {
        config.body_reads_max = SLOTS;
        config.body_read_timeout = Duration::from_secs(3600);
    });
    let address = socket_address(&server);
    let mut held = connect(address);
    held.write_all(STALLED_REQUEST).unwrap();
    wait_until("the server reads the stalled body", || {
        metric(&server, "tally_http_body_reads_in_progress") >= SLOTS as f64
    });
    let campaign = r#"{"campaign_id":"c1","name":"c","currency":"USD"}"#;
    let refused = admin(
        &client(),
        reqwest::Method::POST,
        &server.url("/v1/campaigns"),
    )
    .header("Content-Type", "application/json")
    .body(campaign)
    .send()
    .unwrap();
    assert_eq!(refused.status(), 503);
    let error: Value = refused.json().unwrap();
    assert_eq!(error["error"]["code"], "too_many_body_reads");
    let compressed = admin(
        &client(),
        reqwest::Method::POST,
        &server.url("/v1/campaigns"),
    )
    .header("Content-Type", "application/json")
    .header("Content-Encoding", "gzip")
    .body(campaign)
    .send()
    .unwrap();
    assert_eq!(compressed.status(), 415);
    let error: Value = compressed.json().unwrap();
    assert_eq!(error["error"]["code"], "unsupported_encoding");
    assert_eq!(metric(&server, "tally_http_body_reads_in_progress"), 1.0);
    drop(held);
}

/// Raises this process's soft open-file limit to `wanted` (at most the hard limit), or fails.
fn raise_open_file_limit(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= wanted) {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "the test needs {wanted} open files; the hard limit is {hard}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        },
    )
    .expect("raise the open-file limit");
}

fn socket_address(server: &InProcessServer) -> SocketAddr {
    server.address
}

fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&address, WAIT_MAX).expect("connect to the server")
}

/// GET `path` on a new connection that asks to be closed; the answer as text.
fn raw_get(address: SocketAddr, path: &str) -> String {
    let mut stream = connect(address);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    read_until_closed(stream)
}

/// What the server sent on `stream` until it closed it (end of stream or reset); fails if it
/// keeps it open past [`WAIT_MAX`].
fn read_until_closed(mut stream: TcpStream) -> String {
    let deadline = Instant::now() + WAIT_MAX;
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the server kept a connection open");
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("reading a connection: {error}"),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// The value of a sample in `/metrics` (`name` with its labels, as the line starts); 0 when
/// absent.
fn metric(server: &InProcessServer, sample: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|response| response.text())
        .expect("read /metrics");
    text.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}
