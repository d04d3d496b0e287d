//! Guards exactly-once processing against real crashes: `tally process --follow` runs over a log
//! that keeps growing between rounds and is SIGKILLed at random moments; after every round is
//! restarted and the log fully processed, the totals equal the model exactly (no donation lost,
//! none counted twice) and `tally checkpoint verify` passes — also with journals compacting all
//! the time, so that kills land in compactions.

mod support;

use support::{reported_totals, tally};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::pipeline::{DataDir, donation};
use tally_pipeline::event::DonationEvent;

const PARTITIONS: u32 = 4;
const ROUNDS: usize = 5;
/// Enough that processing takes a few hundred milliseconds or more, so kills land mid-work.
const INITIAL_EVENTS: usize = 300_000;
const EVENTS_PER_ROUND: usize = 60_000;
const CAMPAIGNS: [&str; 4] = ["meals", "meals", "food-bank", "shelter"];

/// Makes `count` events: mostly new, some duplicates of earlier ones, a few conflicts.
fn events(rng: &mut StdRng, issued: &mut Vec<DonationEvent>, count: usize) -> Vec<DonationEvent> {
    (0..count)
        .map(|_| {
            let roll = rng.gen_range(0..100);
            if roll < 10 && !issued.is_empty() {
                issued[rng.gen_range(0..issued.len())].clone()
            } else if roll < 12 && !issued.is_empty() {
                let mut conflicting = issued[rng.gen_range(0..issued.len())].clone();
                conflicting.amount_cents += 1;
                conflicting
            } else {
                let id = issued.len();
                let event = donation(
                    &format!("pay_{id}"),
                    CAMPAIGNS[rng.gen_range(0..CAMPAIGNS.len())],
                    rng.gen_range(1..600),
                    1_795_546_800_000 + rng.gen_range(0..4 * 3_600_000),
                    rng.gen_range(0..1000),
                );
                issued.push(event.clone());
                event
            }
        })
        .collect()
}

/// Campaign totals as a plain recomputation gives them: the first event of each payment counts.
fn model_totals(all: &[DonationEvent]) -> BTreeMap<String, (u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for event in all {
        if seen.insert(event.payment_ref.clone()) {
            let total = totals.entry(event.campaign_id.clone()).or_default();
            total.0 += event.amount_cents;
            total.1 += 1;
        }
    }
    totals
}

#[test]
fn totals_are_exact_after_repeated_sigkill() {
    sigkill_rounds(None, PARTITIONS);
}

#[test]
fn totals_are_exact_after_repeated_sigkill_at_64_partitions() {
    sigkill_rounds(None, 64);
}

/// The same with journals compacted as soon as they are due (`--compaction-floor-bytes 0`), so
/// the kills land in compactions: a new generation half written, written but not yet renamed,
/// renamed but its directory not yet synced.
#[test]
fn totals_are_exact_after_repeated_sigkill_during_compactions() {
    let compaction = sigkill_rounds(Some("0"), PARTITIONS);
    assert!(
        compaction.kills_mid_compaction + compaction.generations_after_the_first > 0,
        "journals were compacted: {compaction:?}"
    );
}

/// What the kills met of journal compaction.
#[derive(Debug, Default)]
struct CompactionSeen {
    /// Kills that left a new generation unfinished beside a journal.
    kills_mid_compaction: usize,
    /// Journals past their first generation at the end.
    generations_after_the_first: usize,
}

fn sigkill_rounds(compaction_floor_bytes: Option<&str>, partitions: u32) -> CompactionSeen {
    let mut seen = CompactionSeen::default();
    let root = tempfile::tempdir().unwrap();
    let data = DataDir::new(root.path(), partitions);
    let mut rng = StdRng::seed_from_u64(0x5eed_c4a5);
    let mut issued = Vec::new();
    let mut appended = events(&mut rng, &mut issued, INITIAL_EVENTS);
    {
        let log = data.open_log();
        data.append(&log, &appended);
    }
    let mut killed_mid_work = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("--data-dir")
            .arg(root.path())
            .args([
                "process",
                "--follow",
                "--checkpoint-interval",
                "10ms",
                "--checkpoint-records",
                "700",
            ])
            .env("TALLY_LOG", "warn")
            .env(
                "TALLY_COMPACTION_FLOOR_BYTES",
                compaction_floor_bytes.unwrap_or("1048576"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The moment of the crash is what varies; the checks below do not depend on it.
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // No state directory yet when the kill came before the process made it.
        seen.kills_mid_compaction += std::fs::read_dir(data.state_dir())
            .into_iter()
            .flatten()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".compacting")
            })
            .count()
            .min(1);
        let log = data.open_log();
        let committed = data.committed_offsets();
        let ends: Vec<u64> = (0..partitions)
            .map(|p| log.partition(p).unwrap().end_offset())
            .collect();
        assert!(
            committed.iter().zip(&ends).all(|(c, e)| c <= e),
            "round {round}: a checkpoint beyond the log"
        );
        killed_mid_work += usize::from(committed != ends);
        let more = events(&mut rng, &mut issued, EVENTS_PER_ROUND);
        data.append(&log, &more);
        appended.extend(more);
    }
    assert!(
        killed_mid_work > 0,
        "no kill landed while records were being applied"
    );
    let output = tally(root.path(), &["process"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        reported_totals(root.path()),
        model_totals(&appended),
        "no donation lost, none counted twice"
    );

    let verify = tally(root.path(), &["checkpoint", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let verified = String::from_utf8(verify.stdout).unwrap();
    assert_eq!(
        verified.matches(": ok at offset").count(),
        partitions as usize,
        "{verified}"
    );
    for partition in 0..partitions {
        let journal = std::fs::read(
            data.state_dir()
                .join(format!("checkpoints-{partition:03}.journal")),
        )
        .unwrap();
        let generation = u64::from_le_bytes(journal[24..32].try_into().unwrap());
        seen.generations_after_the_first += usize::from(generation > 1);
    }
    seen
}
