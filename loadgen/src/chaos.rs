//! Crash the server on a timer: `--server-cmd` starts it, `--kill-every` SIGKILLs it (its whole
//! process group, so nothing it started survives) and starts it again, for the conservation check
//! under crashes. The command runs under `sh -c` in its own process group and must keep the
//! server in the foreground.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::Server;

/// How long a (re)started server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A server process this load generator owns.
#[derive(Debug)]
pub struct ManagedServer {
    command: String,
    child: Option<Child>,
}

impl ManagedServer {
    /// Starts `command` and waits until `server` answers `/healthz`.
    pub async fn start(command: &str, server: &Server) -> anyhow::Result<Self> {
        let mut managed = Self {
            command: command.to_owned(),
            child: None,
        };
        managed.spawn(server).await?;
        Ok(managed)
    }

    /// SIGKILLs the server's process group, waits for it to exit, starts it again and waits
    /// until it answers.
    pub async fn kill_and_restart(&mut self, server: &Server) -> anyhow::Result<()> {
        self.kill();
        self.spawn(server).await
    }

    async fn spawn(&mut self, server: &Server) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the server command {:?}", self.command))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !server.is_healthy().await {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("the server command exited with {status} before answering");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not answer /healthz within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "-KILL");
            let _ = child.wait();
        }
    }

    /// Asks the server to stop (SIGTERM: it finishes in-flight work and checkpoints).
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "-TERM");
            let _ = child.wait();
        }
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal to a process group with kill(1): the workspace forbids `unsafe`, which a
/// direct `kill(2)` call would need.
fn signal_group(process_group: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg("--")
        .arg(format!("-{process_group}"))
        .stderr(Stdio::null())
        .status();
}
