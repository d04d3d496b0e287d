//! Guards that recovery never mistakes damage for a torn write: a completed last commit that is
//! damaged later is refused (with or without a checkpoint that saw it), a commit whose write
//! never completed is cut, nothing is ever cut below a witness, and `repair` is the one way to
//! accept a loss, recorded.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;

use support::{flip_byte, open, read_all, record, segment_files};
use tally_pipeline::log::embedded;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, LogError, Witness};

const SEGMENT_HEADER_BYTES: u64 = 24;
const SEAL_BYTES: u64 = 64;
const SECTOR_BYTES: u64 = 512;

fn one_partition() -> EmbeddedLogOptions {
    EmbeddedLogOptions {
        partition_count: 1,
        ..Default::default()
    }
}

fn with_witness(end_offset: u64) -> EmbeddedLogOptions {
    EmbeddedLogOptions {
        witnesses: vec![Witness {
            partition: 0,
            end_offset,
            source: "the test's checkpoint".into(),
        }],
        ..one_partition()
    }
}

/// A log of `commits` commits of one record each, with values of `value_bytes` bytes.
fn log_with_commits(commits: usize, value_bytes: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), &one_partition());
    for i in 0..commits {
        let value = format!("{i:04}").repeat(value_bytes / 4);
        log.append_blocking(0, vec![record(&format!("pay_{i:04}"), &value)])
            .unwrap();
    }
    dir
}

/// A log of 100 one-record commits over several small segments.
fn log_of_many_segments() -> (tempfile::TempDir, EmbeddedLogOptions) {
    let dir = tempfile::tempdir().unwrap();
    let options = support::small_segment_options(1);
    let log = open(dir.path(), &options);
    for i in 0..100 {
        log.append_blocking(0, vec![record(&format!("pay_{i:04}"), "some value")])
            .unwrap();
    }
    (dir, options)
}

fn active_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir, 0).pop().unwrap()
}

fn zero(path: &Path, from: u64, to: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}

fn length(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn a_flip_in_a_seal_copy_loses_nothing_and_offsets_continue() {
    // The reported case: one byte about 60 bytes before the end of the active segment.
    let dir = log_with_commits(20, 40);
    let segment = active_segment(dir.path());
    flip_byte(&segment, length(&segment) - 60);
    let log = open(dir.path(), &with_witness(20));
    assert_eq!(
        read_all(&log, 0).len(),
        20,
        "every acknowledged record stays"
    );
    let ack = log.append_blocking(0, vec![record("next", "one")]).unwrap();
    assert_eq!(ack.offsets, [20], "no offset is handed out twice");
}

#[test]
fn a_damaged_last_commit_without_a_witness_is_corruption_not_a_torn_write() {
    let dir = log_with_commits(20, 40);
    let segment = active_segment(dir.path());
    let end = length(&segment);
    // Inside the last commit's record, well before its seal.
    flip_byte(&segment, end - SEAL_BYTES - 10);
    let error = EmbeddedLog::open(dir.path(), one_partition()).unwrap_err();
    let text = error.to_string();
    match &error {
        LogError::Corruption { path, .. } => assert_eq!(*path, segment),
        other => panic!("expected corruption, got {other}"),
    }
    assert!(text.contains("tally log repair"), "{text}");
    assert_eq!(length(&segment), end, "nothing was cut");
}

#[test]
fn a_damaged_last_commit_below_a_witness_names_the_witness() {
    let dir = log_with_commits(20, 40);
    let segment = active_segment(dir.path());
    flip_byte(&segment, length(&segment) - SEAL_BYTES - 10);
    let error = EmbeddedLog::open(dir.path(), with_witness(20)).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, LogError::Corruption { .. }), "{text}");
    assert!(text.contains(&segment.display().to_string()), "{text}");
    assert!(text.contains("the test's checkpoint"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn a_last_commit_with_a_sector_that_never_reached_the_disk_is_torn_and_cut() {
    // Records of 1,500 bytes: the last commit spans several sectors before its seal.
    let dir = log_with_commits(5, 1500);
    let segment = active_segment(dir.path());
    let end = length(&segment);
    let commit_start = end - SEAL_BYTES - (12 + 24 + 8 + 8 + 1500);
    let first_whole_sector = commit_start.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    zero(
        &segment,
        first_whole_sector,
        first_whole_sector + SECTOR_BYTES,
    );
    let log = open(dir.path(), &one_partition());
    assert_eq!(
        read_all(&log, 0).len(),
        4,
        "the unacknowledged commit goes whole"
    );
    assert_eq!(length(&segment), commit_start);
    assert_eq!(
        log.append_blocking(0, vec![record("k", "v")])
            .unwrap()
            .offsets,
        [4]
    );
}

#[test]
fn a_torn_last_commit_is_never_cut_below_a_witness() {
    let dir = log_with_commits(5, 40);
    let segment = active_segment(dir.path());
    let end = length(&segment);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(end - 20)
        .unwrap();
    // A checkpoint that applied all five records saw the last commit: it was acknowledged.
    let error = EmbeddedLog::open(dir.path(), with_witness(5)).unwrap_err();
    assert!(
        error.to_string().contains("the test's checkpoint"),
        "{error}"
    );
    assert_eq!(length(&segment), end - 20, "nothing was cut");
    // Without that witness the same bytes are a torn write.
    let log = open(dir.path(), &with_witness(4));
    assert_eq!(read_all(&log, 0).len(), 4);
}

#[test]
fn a_log_that_ends_before_its_witness_is_refused() {
    let dir = log_with_commits(3, 40);
    let error = EmbeddedLog::open(dir.path(), with_witness(7)).unwrap_err();
    assert!(
        matches!(
            error,
            LogError::RecordsLost {
                partition: 0,
                offset: 3,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn repair_cuts_back_to_the_last_whole_commit_and_reports_the_loss() {
    let dir = log_with_commits(20, 40);
    let segment = active_segment(dir.path());
    let end = length(&segment);
    flip_byte(&segment, end - SEAL_BYTES - 10);
    let actions = embedded::repair(dir.path(), &with_witness(20)).unwrap();
    assert_eq!(actions.len(), 1);
    let action = &actions[0];
    assert_eq!((action.partition, action.kept_end_offset), (0, 19));
    assert_eq!(action.witness.as_ref().map(|w| w.end_offset), Some(20));
    assert!(action.bytes_cut > 0);
    assert!(length(&segment) < end);
    let log = open(dir.path(), &one_partition());
    assert_eq!(read_all(&log, 0).len(), 19);
    drop(log);
    assert!(
        embedded::repair(dir.path(), &one_partition())
            .unwrap()
            .is_empty(),
        "a sound log needs no repair"
    );
}

#[test]
fn repair_of_a_damaged_sealed_segment_removes_the_later_ones() {
    let (dir, options) = log_of_many_segments();
    let segments = segment_files(dir.path(), 0);
    assert!(segments.len() > 3);
    // Damage in the second segment, and its index gone so that opening scans it.
    flip_byte(&segments[1], SEGMENT_HEADER_BYTES + 20);
    std::fs::remove_file(segments[1].with_extension("idx")).unwrap();
    assert!(EmbeddedLog::open(dir.path(), options.clone()).is_err());
    let actions = embedded::repair(dir.path(), &options).unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].segments_removed.len(), segments.len() - 2);
    let log = open(dir.path(), &options);
    let kept = read_all(&log, 0).len() as u64;
    assert_eq!(kept, actions[0].kept_end_offset);
    assert!(kept < 100);
}

#[test]
fn a_damaged_commit_followed_by_a_later_sealed_commit_is_corruption_whatever_the_damage() {
    // Records of 1,500 bytes: each commit spans several sectors.
    for damage in ["both seal copies", "a whole sector"] {
        let dir = log_with_commits(6, 1500);
        let segment = active_segment(dir.path());
        let end = length(&segment);
        let commit_bytes = 12 + 24 + 8 + 8 + 1500 + SEAL_BYTES;
        // The fifth commit is damaged; the sixth, acknowledged after it, follows.
        let fifth_start = end - 2 * commit_bytes;
        match damage {
            "both seal copies" => {
                let seal = fifth_start + commit_bytes - SEAL_BYTES;
                zero(&segment, seal, seal + SEAL_BYTES);
            }
            _ => {
                let sector = fifth_start.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
                zero(&segment, sector, sector + SECTOR_BYTES);
            }
        }
        let error = EmbeddedLog::open(dir.path(), one_partition()).unwrap_err();
        assert!(
            matches!(error, LogError::Corruption { .. }),
            "{damage}: {error}"
        );
        assert_eq!(length(&segment), end, "{damage}: nothing was cut");
    }
}

#[test]
fn a_segment_whose_header_never_reached_the_disk_is_created_again() {
    // A roll crashed: the new segment's name is durable, its header is not, a few bytes of
    // its first (never acknowledged) commit are.
    let dir = log_with_commits(3, 40);
    let segment = active_segment(dir.path());
    zero(&segment, 0, SEGMENT_HEADER_BYTES);
    let log = open(dir.path(), &one_partition());
    assert_eq!(log.partition(0).unwrap().end_offset(), 0);
    drop(log);
    // With a checkpoint that saw those records, the same bytes are refused instead.
    let dir = log_with_commits(3, 40);
    zero(&active_segment(dir.path()), 0, SEGMENT_HEADER_BYTES);
    assert!(EmbeddedLog::open(dir.path(), with_witness(3)).is_err());
}

#[test]
fn repair_of_a_gap_cuts_the_partition_where_the_gap_starts() {
    let (dir, options) = log_of_many_segments();
    let segments = segment_files(dir.path(), 0);
    std::fs::remove_file(&segments[2]).unwrap();
    assert!(EmbeddedLog::open(dir.path(), options.clone()).is_err());
    let actions = embedded::repair(dir.path(), &options).unwrap();
    assert_eq!(actions.len(), 1);
    let log = open(dir.path(), &options);
    assert_eq!(read_all(&log, 0).len() as u64, actions[0].kept_end_offset);
    drop(log);
    assert!(
        embedded::repair(dir.path(), &options).unwrap().is_empty(),
        "repaired once"
    );
}
