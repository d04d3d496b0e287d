//! Guards "an acknowledged append is never lost" against real crashes: a child process appends
//! in a loop from several threads and reports every acknowledged record; the parent SIGKILLs it
//! at a random moment, several rounds in a row, and after each round every acknowledged record
//! must be in the log exactly once, at its acknowledged offset, in order.
//!
//! The child is this same test binary, re-run with `TALLY_CRASH_CHILD_DIR` set.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rand::{Rng, SeedableRng};
use support::{open, read_all, small_segment_options};
use tally_pipeline::log::KeyedRecord;

const CHILD_DIR_VAR: &str = "TALLY_CRASH_CHILD_DIR";
const CHILD_ROUND_VAR: &str = "TALLY_CRASH_CHILD_ROUND";
const CHILD_PARTITIONS_VAR: &str = "TALLY_CRASH_CHILD_PARTITIONS";
/// The log's partitions: few, and as many as a deployment that scales out has.
const PARTITIONS: u32 = 4;
const MANY_PARTITIONS: u32 = 64;
const ROUNDS: u64 = 6;
const CHILD_THREADS: usize = 4;
/// A child stops by itself after this many appends per thread, so a lost parent cannot leave
/// it running for long.
const CHILD_APPENDS_MAX: usize = 20_000;

/// One acknowledged record as the child reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Acknowledged {
    partition: u32,
    offset: u64,
    key: String,
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return; // Only runs as the child of `acknowledged_appends_survive_sigkill`.
    };
    let round: u64 = std::env::var(CHILD_ROUND_VAR).unwrap().parse().unwrap();
    let partitions: u32 = std::env::var(CHILD_PARTITIONS_VAR)
        .unwrap()
        .parse()
        .unwrap();
    let log = open(Path::new(&dir), &small_segment_options(partitions));
    std::thread::scope(|scope| {
        for thread in 0..CHILD_THREADS {
            let log = &log;
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round * 100 + thread as u64);
                for append in 0..CHILD_APPENDS_MAX {
                    let partition = rng.gen_range(0..partitions);
                    let keys: Vec<String> = (0..rng.gen_range(1..20))
                        .map(|i| format!("r{round}-t{thread}-a{append}-{i}"))
                        .collect();
                    let records = keys
                        .iter()
                        .map(|key| KeyedRecord {
                            key: key.clone().into_bytes(),
                            value: format!("value of {key}").into_bytes(),
                        })
                        .collect();
                    let ack = log.append_blocking(partition, records).unwrap();
                    // One line per acknowledged record, written in one call so lines never mix.
                    let lines: String = keys
                        .iter()
                        .enumerate()
                        .map(|(i, key)| format!("ack {partition} {} {key}\n", ack.offsets[i]))
                        .collect();
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    out.write_all(lines.as_bytes()).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

fn spawn_child(dir: &Path, round: u64, partitions: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
            "-q",
        ])
        .env(CHILD_DIR_VAR, dir)
        .env(CHILD_ROUND_VAR, round.to_string())
        .env(CHILD_PARTITIONS_VAR, partitions.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads acknowledgements until `kill_after` of them were seen (or the child ends), then
/// SIGKILLs the child. Returns what was acknowledged.
fn run_round(dir: &Path, round: u64, kill_after: usize, partitions: u32) -> Vec<Acknowledged> {
    let mut child = spawn_child(dir, round, partitions);
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut fields = line.split(' ');
        if fields.next() != Some("ack") {
            continue;
        }
        let (Some(partition), Some(offset), Some(key)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue; // a line cut by the kill
        };
        acknowledged.push(Acknowledged {
            partition: partition.parse().unwrap(),
            offset: offset.parse().unwrap(),
            key: key.to_owned(),
        });
        if acknowledged.len() >= kill_after {
            child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    child.wait().unwrap();
    acknowledged
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    appends_survive_sigkill(PARTITIONS);
}

#[test]
fn acknowledged_appends_survive_sigkill_at_64_partitions() {
    appends_survive_sigkill(MANY_PARTITIONS);
}

fn appends_survive_sigkill(partitions: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11_c0de);
    let mut all_acknowledged: Vec<Acknowledged> = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = rng.gen_range(50..3000);
        let acknowledged = run_round(dir.path(), round, kill_after, partitions);
        assert!(
            !acknowledged.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        all_acknowledged.extend(acknowledged);

        let log = open(dir.path(), &small_segment_options(partitions));
        let stored: Vec<Vec<_>> = (0..partitions).map(|p| read_all(&log, p)).collect();
        for ack in &all_acknowledged {
            let record = stored[ack.partition as usize]
                .get(ack.offset as usize)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {ack:?} is missing"));
            assert_eq!(record.key, ack.key.as_bytes(), "round {round}: {ack:?}");
            assert_eq!(record.value, format!("value of {}", ack.key).into_bytes());
        }
        let mut seen = HashSet::new();
        for record in stored.iter().flatten() {
            assert!(
                seen.insert(record.key.clone()),
                "round {round}: a record is stored twice"
            );
        }
        log.verify().unwrap();
    }
}
