//! Starts a real `tally serve` process on 127.0.0.1 and talks to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_api::signature::{SigningSecret, sign};

pub const SIGNING_SECRET: &str = "test-signing-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// A server that has not said where it listens by then has failed to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `tally serve`; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
}

/// A running server, in its own process or in this one.
pub trait Server {
    /// `path` on the server's base URL.
    fn url(&self, path: &str) -> String;
}

impl Server for ServerProcess {
    fn url(&self, path: &str) -> String {
        ServerProcess::url(self, path)
    }
}

impl Server for super::in_process::InProcessServer {
    fn url(&self, path: &str) -> String {
        super::in_process::InProcessServer::url(self, path)
    }
}

impl ServerProcess {
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let mut child = serve_command(data_dir, extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (address_tx, address_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("listening on ") {
                    let _ = address_tx.send(address.to_owned());
                }
            }
        });
        let address = address_rx
            .recv_timeout(START_TIMEOUT)
            .expect("tally serve did not start listening");
        Self {
            child,
            base: format!("http://{address}"),
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM (graceful shutdown), and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for tally serve")
    }
}

/// `tally serve` on `data_dir`, listening on a free loopback port, with the test secrets.
fn serve_command(data_dir: &Path, extra_args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--signing-secret",
            SIGNING_SECRET,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .args(extra_args)
        .env("TALLY_LOG", "warn");
    command
}

/// Runs a `tally serve` that is expected to refuse to start, and waits for it.
pub fn serve_until_exit(data_dir: &Path, extra_args: &[&str]) -> std::process::Output {
    serve_command(data_dir, extra_args)
        .output()
        .expect("run tally serve")
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The Tally-Signature header value for `body`, signed now with the test secret.
pub fn signature_for(body: &[u8]) -> String {
    sign(&SigningSecret::from_text(SIGNING_SECRET), now_s(), body)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a signed JSON body.
pub fn post_signed(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &[u8],
) -> reqwest::Result<reqwest::blocking::Response> {
    client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Tally-Signature", signature_for(body))
        .body(body.to_vec())
        .send()
}

/// An admin request builder with the bearer token.
pub fn admin(
    client: &reqwest::blocking::Client,
    method: reqwest::Method,
    url: &str,
) -> reqwest::blocking::RequestBuilder {
    client
        .request(method, url)
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
}

pub fn create_campaign(
    client: &reqwest::blocking::Client,
    server: &impl Server,
    campaign_id: &str,
    currency: &str,
) {
    let response = admin(client, reqwest::Method::POST, &server.url("/v1/campaigns"))
        .json(&serde_json::json!({"campaign_id": campaign_id, "name": campaign_id, "currency": currency}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
}

/// A valid donation body.
pub fn donation_json(
    payment_ref: &str,
    campaign_id: &str,
    amount_cents: u64,
    user_id: &str,
) -> serde_json::Value {
    serde_json::json!({
        "payment_ref": payment_ref,
        "order_id": format!("ord-{payment_ref}"),
        "user_id": user_id,
        "campaign_id": campaign_id,
        "amount_cents": amount_cents,
        "paid_at": "2026-11-24T18:30:00Z",
    })
}

/// Posts a signed $1 donation to `meals` from user `usr-{user}`; its status and JSON answer.
pub fn donate_to_meals(
    server: &impl Server,
    payment_ref: &str,
    user: usize,
) -> (u16, serde_json::Value) {
    let body = donation_json(payment_ref, "meals", 100, &format!("usr-{user}"));
    let response = post_signed(
        &client(),
        &server.url("/v1/donations"),
        body.to_string().as_bytes(),
    )
    .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// A whole load generator run against `targets`, with the test secrets; panics if it cannot
/// complete (its verification is the caller's to check).
pub fn run_loadgen(
    config: &tally_loadgen::run::RunConfig,
    targets: &[String],
) -> tally_loadgen::report::Report {
    let credentials = || {
        Ok((
            SigningSecret::from_text(SIGNING_SECRET),
            ADMIN_TOKEN.to_owned(),
        ))
    };
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(tally_loadgen::run::run(config, targets, credentials))
        .expect("the run completes")
}

/// Asserts that a load generator run verified, acknowledged more than `acknowledged_over`
/// donations and sent resends.
pub fn assert_run_verified(report: &tally_loadgen::report::Report, acknowledged_over: u64) {
    let verification = report.verification.as_ref().expect("verification ran");
    assert!(
        verification.passed,
        "mismatches: {:#?}",
        verification.mismatches
    );
    assert!(
        report.counters.donations_acknowledged > acknowledged_over,
        "{report:?}"
    );
    assert!(report.counters.resends_sent > 0);
}
