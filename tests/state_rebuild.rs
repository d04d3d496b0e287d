//! Guards "sled is derived state": when the sled directory is deleted or damaged, or an index
//! journal is damaged, tally says so and rebuilds that state from the log, reaching the very
//! same digests and totals, instead of serving wrong totals or refusing to start.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::pipeline::{DataDir, donation};

const PARTITIONS: u32 = 4;

fn tally(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap()
}

fn success(output: Output) -> Output {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The digests and totals a fully processed data directory reports.
fn digests_and_totals(root: &Path) -> (Vec<String>, String) {
    let list: serde_json::Value =
        serde_json::from_slice(&success(tally(root, &["checkpoint", "list", "--json"])).stdout)
            .unwrap();
    let digests = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state_digest"].to_string())
        .collect();
    let totals =
        String::from_utf8(success(tally(root, &["campaign", "totals", "--json"])).stdout).unwrap();
    (digests, totals)
}

fn processed_data_dir() -> (tempfile::TempDir, (Vec<String>, String)) {
    let root = tempfile::tempdir().unwrap();
    let data = DataDir::new(root.path(), PARTITIONS);
    let mut rng = StdRng::seed_from_u64(7);
    let events: Vec<_> = (0..5_000)
        .map(|i| {
            let id = if i % 10 == 9 { rng.gen_range(0..i) } else { i };
            let amount = if i % 50 == 49 { 999 } else { 100 + id % 7 };
            donation(
                &format!("pay_{id}"),
                ["meals", "shelter"][id as usize % 2],
                amount,
                1_795_546_800_000 + id as i64 * 1_000,
                1,
            )
        })
        .collect();
    data.append(&data.open_log(), &events);
    success(tally(
        root.path(),
        &["process", "--checkpoint-records", "300"],
    ));
    let expected = digests_and_totals(root.path());
    (root, expected)
}

fn reprocess_and_check(root: &Path, expected: &(Vec<String>, String)) -> String {
    let output = success(tally(root, &["process"]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        &digests_and_totals(root),
        expected,
        "the rebuilt state is the same state"
    );
    success(tally(root, &["checkpoint", "verify"]));
    said
}

#[test]
fn a_deleted_sled_directory_is_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    std::fs::remove_dir_all(root.path().join("state/sled")).unwrap();
    reprocess_and_check(root.path(), &expected);
}

#[test]
fn damaged_sled_files_are_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    let sled_dir = root.path().join("state/sled");
    for entry in walk(&sled_dir) {
        let length = std::fs::metadata(&entry).unwrap().len();
        if length > 0 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&entry)
                .unwrap();
            for position in (0..length).step_by(97) {
                file.write_all_at(&[0xA5], position).unwrap();
            }
        }
    }
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("rebuil"),
        "the output says it rebuilt: {said}"
    );
}

#[test]
fn a_damaged_index_journal_is_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    let journal = root.path().join("state/journal-002");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.write_all_at(b"\xFF\xFF\xFF\xFF", 100).unwrap();
    drop(file);
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("partition 2 was rebuilt from the log"),
        "{said}"
    );
}

#[test]
fn a_truncated_index_journal_is_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    let journal = root.path().join("state/journal-001");
    let length = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("partition 1 was rebuilt from the log"),
        "{said}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
