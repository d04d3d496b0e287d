//! Guards that a full disk heals without a restart, on a real small file system: `tally serve`
//! on a 30 MB tmpfs answers 503 `log_unavailable` once the disk is full, and within seconds of
//! space being freed takes donations again and catches up, every acknowledged donation counted
//! once. Mounting needs root; without it the test says that it did not run.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::{ServerProcess, client, create_campaign, donate_to_meals};

/// Bounds on the test: it stops by itself whatever the server does.
const DONATIONS_MAX: usize = 20_000;
const RESUME_WAIT_MAX: Duration = Duration::from_secs(30);
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallFileSystem {
    dir: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system with one file until it is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.flush();
    path
}

/// Sends `count` donations that must each be acknowledged.
fn donate_accepted(server: &ServerProcess, count: usize, next: &mut usize, acknowledged: &mut u64) {
    for _ in 0..count {
        let (status, body) = donate_to_meals(server, &format!("pay_{next:05}"), *next);
        assert_eq!(status, 202, "{body}");
        *acknowledged += 1;
        *next += 1;
    }
}

#[test]
fn a_full_disk_heals_without_a_restart() {
    let Some(file_system) = SmallFileSystem::mount("30m") else {
        eprintln!("cannot mount a tmpfs (not root?): the disk-full test did not run");
        return;
    };
    let data_dir = file_system.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--partitions", "2"]);
    create_campaign(&client(), &server, "meals", "USD");
    let mut acknowledged = 0u64;
    let mut next = 0usize;
    donate_accepted(&server, 20, &mut next, &mut acknowledged);

    let filler = fill(file_system.path());
    let refusal = loop {
        assert!(next < DONATIONS_MAX, "the disk never filled up");
        let (status, body) = donate_to_meals(&server, &format!("pay_{next:05}"), next);
        next += 1;
        match status {
            202 => acknowledged += 1,
            503 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
    };
    assert_eq!(refusal["error"]["code"], "log_unavailable", "{refusal}");
    let health = client().get(server.url("/healthz")).send().unwrap();
    assert!(
        health.status().is_success(),
        "the server stays up while the disk is full"
    );

    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + RESUME_WAIT_MAX;
    loop {
        let (status, body) = donate_to_meals(&server, &format!("pay_{next:05}"), next);
        next += 1;
        if status == 202 {
            acknowledged += 1;
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "ingest did not resume after space returned: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    donate_accepted(&server, 20, &mut next, &mut acknowledged);

    let deadline = Instant::now() + CATCH_UP_WAIT_MAX;
    let view = loop {
        let view: Value = client()
            .get(server.url("/v1/campaigns/meals"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if view["freshness"]["lag_records"] == 0 && view["donations"] == acknowledged {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the pipeline did not catch up: {view}, {acknowledged} acknowledged"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(view["total_cents"], acknowledged * 100);
    server.kill();
}
