//! A `tally serve` process for the benches, and a lean HTTP/1.1 connection to it.
//!
//! [`start_server`] runs the release binary on 127.0.0.1 (a free port) with a fixed signing
//! secret and admin token and the rate limits out of the way; dropping the [`Server`] stops it
//! (SIGTERM, then waits), also when a bench fails half-way.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use tally_api::signature::SIGNATURE_HEADER;
use tally_loadgen::http::{self, HttpError};

/// The callback signing secret the bench server takes, as text.
pub const SIGNING_SECRET: &str = "bench-signing-secret";
/// The bench server's admin token.
pub const ADMIN_TOKEN: &str = "bench-admin-token";
/// Rate limit burst and refill per second: far above anything one machine sends, so the benches
/// measure ingest, not the limiter.
const RATE_LIMIT_OFF: &str = "1000000000";

/// A running `tally serve`; stopped on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The `tally` binary the bench runs: this build's, or `TALLY_BENCH_TALLY` when set (another
/// build's binary, to compare two builds on one machine in runs one after the other).
fn tally_binary() -> std::ffi::OsString {
    std::env::var_os("TALLY_BENCH_TALLY")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tally").into())
}

/// Starts `tally serve` on a fresh `data_dir` and waits until it listens; with
/// `TALLY_BENCH_PARTITIONS=N`, on a log of N partitions (default: the server's).
pub fn start_server(data_dir: &Path) -> anyhow::Result<Server> {
    match std::env::var("TALLY_BENCH_PARTITIONS") {
        Ok(partitions) if !partitions.is_empty() => {
            start_server_with(data_dir, &["--partitions", &partitions])
        }
        _ => start_server_with(data_dir, &[]),
    }
}

/// [`start_server`] with more `serve` arguments (`--log`, `--owns`, …).
pub fn start_server_with(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Server> {
    let mut child = Command::new(tally_binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra_args)
        .args(["--signing-secret", SIGNING_SECRET])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--rate-limit-burst", RATE_LIMIT_OFF])
        .args(["--rate-limit-per-second", RATE_LIMIT_OFF])
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start tally serve")?;
    let stdout = child.stdout.take().context("tally serve has no stdout")?;
    // From here on, `server` owns the child: an early return below stops it.
    let mut server = Server {
        child,
        base: String::new(),
    };
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .context("tally serve exited before listening")?
            .context("reading tally serve's output")?;
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    server.base = format!("http://{address}");
    Ok(server)
}

/// A lean HTTP/1.1 keep-alive connection (the load generator's own client): the bench's client
/// shares the machine with the server, so it spends as little CPU per request as it can (a
/// general client library costs several times more than the server's work per donation).
#[derive(Debug)]
pub struct Connection(http::Connection);

impl Connection {
    pub async fn open(base: &str) -> Result<Self, HttpError> {
        Ok(Self(http::Connection::open_url(base).await?))
    }

    /// POSTs a signed JSON body; returns the response status.
    pub async fn post(
        &mut self,
        path: &str,
        body: &str,
        signature: &str,
    ) -> Result<u16, HttpError> {
        let (status, _body) = self.post_reading_body(path, body, signature).await?;
        Ok(status)
    }

    /// POSTs a signed JSON body; returns the response status and body.
    pub async fn post_reading_body(
        &mut self,
        path: &str,
        body: &str,
        signature: &str,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let headers = [(SIGNATURE_HEADER, signature)];
        let request = http::Request::post_json(path, &headers, body.as_bytes());
        let response = self.0.send(request).await?;
        Ok((response.status, response.body))
    }

    /// GETs `path` (with its query); returns the response status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), HttpError> {
        let response = self.0.send(http::Request::get(path)).await?;
        Ok((response.status, response.body))
    }
}

/// Creates each campaign through the admin API.
pub async fn create_campaigns(base: &str, campaigns: &[impl AsRef<str>]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for campaign in campaigns {
        let campaign = campaign.as_ref();
        client
            .post(format!("{base}/v1/campaigns"))
            .bearer_auth(ADMIN_TOKEN)
            .json(
                &serde_json::json!({"campaign_id": campaign, "name": campaign, "currency": "USD"}),
            )
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("creating campaign {campaign}"))?;
    }
    Ok(())
}
