//! Starts the server inside the test process, through the same `tally::run` as `tally serve`,
//! on 127.0.0.1 and a temporary data directory; stopped gracefully, and its directory removed,
//! when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tally::ServerConfig;
use tally_pipeline::clock::{Clock, ManualClock, SystemClock};
use tempfile::TempDir;

use super::server::{ADMIN_TOKEN, SIGNING_SECRET};

/// A server that has not bound its listener by then has failed to start.
const BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// The defaults of `tally serve` on `data_dir`, with the test secrets (as `ServerProcess` passes
/// them).
pub fn test_config(data_dir: &Path) -> ServerConfig {
    ServerConfig {
        signing_secret: Some(SIGNING_SECRET.to_owned()),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        ..ServerConfig::new(data_dir)
    }
}

/// A clock at the present second that moves only when told to, for tests whose outcome
/// depends on the time (signature tolerance, rate limits).
pub fn clock_at_now() -> ManualClock {
    ManualClock::new(SystemClock.now_ms() / 1000 * 1000)
}

/// A server running on its own thread and tokio runtime.
pub struct InProcessServer {
    pub address: SocketAddr,
    pub base: String,
    pub data_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// Removed once the server has stopped (`Drop` stops it before the fields are dropped).
    _owned_dir: Option<TempDir>,
}

impl InProcessServer {
    /// A server with `configure`'s changes to [`test_config`] on a new temporary directory,
    /// on the system clock.
    pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with_clock(configure, Arc::new(SystemClock))
    }

    /// As [`start`](Self::start), on `clock`.
    pub fn start_with_clock(
        configure: impl FnOnce(&mut ServerConfig),
        clock: Arc<dyn Clock>,
    ) -> Self {
        let dir = TempDir::new().expect("a temporary data directory");
        let mut config = test_config(dir.path());
        configure(&mut config);
        let mut server = Self::start_on(config, clock);
        server._owned_dir = Some(dir);
        server
    }

    /// A server with `config` (its data directory the caller's), on `clock`.
    pub fn start_on(config: ServerConfig, clock: Arc<dyn Clock>) -> Self {
        let data_dir = config.data_dir.clone();
        let (address_tx, address_rx) = mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tally-in-process".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tally::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                    let _ = address_tx.send(listener.local_addr()?);
                    let shutdown = async {
                        let _ = shutdown_rx.await;
                    };
                    tally::run(listener, config, clock, shutdown).await
                })
            })
            .expect("spawn the server thread");
        let address = match address_rx.recv_timeout(BIND_TIMEOUT) {
            Ok(address) => address,
            Err(_) => match thread.join() {
                Ok(result) => panic!("the server did not start: {result:?}"),
                Err(_) => panic!("the server thread panicked"),
            },
        };
        Self {
            address,
            base: format!("http://{address}"),
            data_dir,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _owned_dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server as SIGTERM stops `tally serve` (in-flight requests answered, a
    /// checkpoint committed) and returns how `run` ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        let outcome = self.stop_and_wait();
        if let Err(error) = outcome
            && !std::thread::panicking()
        {
            panic!("the server stopped with an error: {error:#}");
        }
    }
}
