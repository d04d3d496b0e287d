//! Guards "the state is derived": when the state directory is deleted, or a checkpoint journal
//! is damaged or cut short, tally rebuilds that state from the log (saying so when it found
//! damage), reaching the very same digests and totals, instead of serving wrong totals or
//! refusing to start.

mod support;

use support::tally;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::pipeline::{DataDir, donation};

const PARTITIONS: u32 = 4;

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
    // In three rounds, so that every partition's journal holds several checkpoints.
    for round in events.chunks(events.len() / 3 + 1) {
        data.append(&data.open_log(), round);
        success(tally(
            root.path(),
            &["process", "--checkpoint-records", "300"],
        ));
    }
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
fn a_deleted_state_directory_is_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    std::fs::remove_dir_all(root.path().join("state")).unwrap();
    reprocess_and_check(root.path(), &expected);
}

#[test]
fn damaged_checkpoint_journals_are_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    for partition in 0..PARTITIONS {
        let journal = root
            .path()
            .join(format!("state/checkpoints-{partition:03}.journal"));
        let length = std::fs::metadata(&journal).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap();
        for position in (30..length).step_by(997) {
            file.write_all_at(&[0xA5], position).unwrap();
        }
    }
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("rebuil"),
        "the output says it rebuilt: {said}"
    );
}

#[test]
fn a_damaged_checkpoint_journal_is_rebuilt_from_the_log() {
    let (root, expected) = processed_data_dir();
    let journal = root.path().join("state/checkpoints-002.journal");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.write_all_at(b"\xFF\xFF\xFF\xFF", 100).unwrap();
    drop(file);
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("partition 2: checkpoint journal damaged at byte"),
        "{said}"
    );
    assert!(
        said.contains("partition 2 was rebuilt from the log"),
        "{said}"
    );
}

#[test]
fn a_cut_short_checkpoint_journal_resumes_from_its_last_whole_checkpoint() {
    let (root, expected) = processed_data_dir();
    let journal = root.path().join("state/checkpoints-001.journal");
    let length = std::fs::metadata(&journal).unwrap().len();
    // As a crash in the middle of a commit leaves it: the torn checkpoint does not count.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let said = reprocess_and_check(root.path(), &expected);
    assert!(
        said.contains("partition 1: dropped an incomplete last checkpoint"),
        "{said}"
    );
}

#[allow(dead_code)]
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
