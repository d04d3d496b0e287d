//! Guards the embedded log's durability contract across close, reopen, torn tails and damage:
//! every acknowledged record is there once, in order, and damage is reported, never skipped.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use support::{flip_byte, open, read_all, record, segment_files, small_segment_options};
use tally_pipeline::log::{
    EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, LogError, Partitioner, append_keyed,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn roundtrip_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segment_options(8);
    let log = open(dir.path(), &options);
    let records: Vec<KeyedRecord> = (0..1000)
        .map(|i| record(&format!("pay_{i}"), &format!("value-{i}")))
        .collect();
    let runtime = runtime();
    let placements: Vec<_> = records
        .chunks(100)
        .flat_map(|chunk| {
            runtime
                .block_on(append_keyed(&log, chunk.to_vec()))
                .unwrap()
        })
        .collect();

    let partitioner = Partitioner::new(8);
    for (record, (partition, offset)) in records.iter().zip(&placements) {
        assert_eq!(*partition, partitioner.partition_for_key(&record.key));
        let read = log.partition(*partition).unwrap().read(*offset, 1).unwrap();
        assert_eq!(
            (read[0].key.as_slice(), read[0].value.as_slice()),
            (record.key.as_slice(), record.value.as_slice())
        );
    }
    let total: usize = (0..8).map(|p| read_all(&log, p).len()).sum();
    assert_eq!(total, 1000, "every record exactly once");
    assert!(
        (0..8).all(|p| segment_files(dir.path(), p).len() > 1),
        "segments rolled"
    );
}

#[test]
fn reopen_after_clean_close_keeps_records_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segment_options(2);
    let before = {
        let log = open(dir.path(), &options);
        for i in 0..100 {
            log.append_blocking(
                i % 2,
                vec![record(&format!("k{i}"), &"v".repeat(i as usize))],
            )
            .unwrap();
        }
        [read_all(&log, 0), read_all(&log, 1)]
    };
    let log = open(dir.path(), &options);
    assert_eq!([read_all(&log, 0), read_all(&log, 1)], before);
    let ack = log
        .append_blocking(0, vec![record("after", "reopen")])
        .unwrap();
    assert_eq!(ack.offsets, [50]);
    assert_eq!(read_all(&log, 0).last().unwrap().key, b"after");
}

#[test]
fn reads_from_any_offset_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), &small_segment_options(1));
    let mut expected = Vec::new();
    for batch in 0..60u64 {
        let records: Vec<_> = (0..batch % 7 + 1)
            .map(|i| record(&format!("b{batch}-{i}"), &format!("{batch}:{i}")))
            .collect();
        expected.extend(records.clone());
        log.append_blocking(0, records).unwrap();
    }
    let partition = log.partition(0).unwrap();
    for from in 0..expected.len() as u64 {
        let read = partition.read(from, 5).unwrap();
        let want: Vec<_> = expected[from as usize..].iter().take(5).collect();
        assert_eq!(read.len(), want.len());
        for (offset, (got, want)) in (from..).zip(read.iter().zip(want)) {
            assert_eq!((got.offset, &got.key), (offset, &want.key));
        }
    }
    let end = expected.len() as u64;
    assert!(partition.read(end, 5).unwrap().is_empty());
    assert!(matches!(
        partition.read(end + 1, 5),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segment_options(1);
    let before = {
        let log = open(dir.path(), &options);
        for i in 0..200 {
            log.append_blocking(0, vec![record(&format!("k{i}"), "some value bytes")])
                .unwrap();
        }
        read_all(&log, 0)
    };
    let indexes: Vec<_> = std::fs::read_dir(dir.path().join("partition-000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    assert!(indexes.len() > 2);
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], b"garbage").unwrap();
    let log = open(dir.path(), &options);
    assert_eq!(read_all(&log, 0), before);
}

/// Appends `count` single-record frames to partition 0 and returns the log's directory.
fn log_with_frames(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        &EmbeddedLogOptions {
            partition_count: 1,
            ..Default::default()
        },
    );
    for i in 0..count {
        log.append_blocking(
            0,
            vec![record(&format!("key-{i:04}"), &format!("value-{i:04}"))],
        )
        .unwrap();
    }
    dir
}

/// Every frame above has the same size: header 12 + fixed 24 + record header 8 + 8 + 10.
const FRAME_BYTES: u64 = 12 + 24 + 8 + 8 + 10;
/// Each commit ends with its seal, two copies of 32 bytes.
const SEAL_BYTES: u64 = 64;
/// A commit of one such frame.
const COMMIT_BYTES: u64 = FRAME_BYTES + SEAL_BYTES;
const SEGMENT_HEADER_BYTES: u64 = 24;

#[test]
fn torn_tail_is_truncated_back_to_the_last_whole_record() {
    let dir = log_with_frames(10);
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    let length = std::fs::metadata(&segment).unwrap().len();
    assert_eq!(length, SEGMENT_HEADER_BYTES + 10 * COMMIT_BYTES);
    // Cut the last commit in the middle and add garbage after it, as a crash mid-write could.
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(length - COMMIT_BYTES / 2).unwrap();
    let mut appender = OpenOptions::new().append(true).open(&segment).unwrap();
    appender.write_all(&[0xAB; 300]).unwrap();
    drop((file, appender));

    let options = EmbeddedLogOptions {
        partition_count: 1,
        ..Default::default()
    };
    let log = open(dir.path(), &options);
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 9, "the torn record is gone, the others stay");
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.key == format!("key-{i:04}").into_bytes())
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        SEGMENT_HEADER_BYTES + 9 * COMMIT_BYTES
    );
    let ack = log.append_blocking(0, vec![record("next", "one")]).unwrap();
    assert_eq!(ack.offsets, [9]);
    drop(log);
    assert_eq!(read_all(&open(dir.path(), &options), 0).len(), 10);
}

#[test]
fn garbage_after_the_last_whole_record_is_truncated() {
    let dir = log_with_frames(3);
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    let mut appender = OpenOptions::new().append(true).open(&segment).unwrap();
    appender
        .write_all(b"TLYF\x10\x00\x00\x00not a frame at all")
        .unwrap();
    drop(appender);
    let log = open(
        dir.path(),
        &EmbeddedLogOptions {
            partition_count: 1,
            ..Default::default()
        },
    );
    assert_eq!(read_all(&log, 0).len(), 3);
}

#[test]
fn corruption_in_the_middle_is_reported_not_skipped() {
    let dir = log_with_frames(10);
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    let damaged_frame_position = SEGMENT_HEADER_BYTES + 4 * COMMIT_BYTES;
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(b"X", damaged_frame_position + 40)
        .unwrap();
    drop(file);

    let error = EmbeddedLog::open(
        dir.path(),
        EmbeddedLogOptions {
            partition_count: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    match error {
        LogError::Corruption { path, position, .. } => {
            assert_eq!(path, segment);
            assert_eq!(position, damaged_frame_position);
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert!(error_text(dir.path()).contains(&segment.display().to_string()));
}

fn error_text(dir: &std::path::Path) -> String {
    EmbeddedLog::open(
        dir,
        EmbeddedLogOptions {
            partition_count: 1,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn corruption_in_a_sealed_segment_fails_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segment_options(1);
    {
        let log = open(dir.path(), &options);
        for i in 0..100 {
            log.append_blocking(0, vec![record(&format!("k{i:03}"), "0123456789")])
                .unwrap();
        }
    }
    let first_segment = segment_files(dir.path(), 0).remove(0);
    // Flipped, not overwritten: byte 400 may lie in a frame's append time, which a fixed byte
    // would sometimes leave as it was.
    flip_byte(&first_segment, 400);

    let log = open(dir.path(), &options);
    let partition = log.partition(0).unwrap();
    let read_error = (0..partition.end_offset())
        .find_map(|from| partition.read(from, 1000).err())
        .expect("a read over the damage fails");
    assert!(
        matches!(&read_error, LogError::Corruption { path, .. } if *path == first_segment),
        "{read_error}"
    );
    assert!(
        matches!(log.verify(), Err(LogError::Corruption { path, .. }) if path == first_segment)
    );
    // Reads that start after the damaged frame are unaffected.
    assert!(partition.read(partition.end_offset() - 1, 10).is_ok());
}

#[test]
fn concurrent_appenders_get_unique_contiguous_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), &small_segment_options(2)));
    const TASKS: usize = 16;
    const APPENDS_PER_TASK: usize = 50;
    let acks = runtime().block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut acks = Vec::new();
                    for append in 0..APPENDS_PER_TASK {
                        let records: Vec<_> = (0..append % 4 + 1)
                            .map(|i| record(&format!("t{task}-a{append}-r{i}"), "v"))
                            .collect();
                        let ack = log.append(0, records.clone()).await.unwrap();
                        acks.push((ack, records));
                    }
                    acks
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        all
    });
    let stored = read_all(&log, 0);
    let total: usize = acks.iter().map(|(_, records)| records.len()).sum();
    assert_eq!(stored.len(), total);
    let mut covered = vec![false; total];
    for (ack, records) in &acks {
        assert_eq!(ack.count(), records.len());
        assert!(
            ack.offsets.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "one append's offsets are consecutive on the embedded log"
        );
        for (&offset, record) in ack.offsets.iter().zip(records) {
            let offset = offset as usize;
            assert!(!covered[offset], "offset {offset} acknowledged twice");
            covered[offset] = true;
            assert_eq!(stored[offset].key, record.key);
        }
    }
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path(), &small_segment_options(1));
    let second = EmbeddedLog::open(dir.path(), small_segment_options(1));
    assert!(matches!(second, Err(LogError::Locked { .. })));
}

#[test]
fn the_manifest_fixes_the_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &small_segment_options(3)));
    let log = open(dir.path(), &small_segment_options(8));
    assert_eq!(log.partition_count(), 3);
    let zero = tempfile::tempdir().unwrap();
    assert!(matches!(
        EmbeddedLog::open(zero.path(), small_segment_options(0)),
        Err(LogError::InvalidDirectory { .. })
    ));
}

#[test]
fn waiting_for_an_offset_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), &small_segment_options(1)));
    runtime().block_on(async {
        let waiter = {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.wait_for_offset(0, 0).await })
        };
        tokio::task::yield_now().await;
        log.append(0, vec![record("a", "b")]).await.unwrap();
        waiter.await.unwrap().unwrap();
        assert_eq!(log.read(0, 0, 10).await.unwrap().len(), 1);
    });
}

/// A log whose commits are cut into one-record frames: two commits of three records each.
fn log_with_two_multi_frame_commits() -> (tempfile::TempDir, EmbeddedLogOptions) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedLogOptions {
        partition_count: 1,
        ..Default::default()
    };
    options.partition.frame_bytes_target = 30;
    let log = open(dir.path(), &options);
    for commit in 0..2 {
        let records = (0..3)
            .map(|i| {
                record(
                    &format!("key-{:04}", commit * 3 + i),
                    &format!("value-{:04}", commit * 3 + i),
                )
            })
            .collect();
        log.append_blocking(0, records).unwrap();
    }
    drop(log);
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        SEGMENT_HEADER_BYTES + 6 * FRAME_BYTES + 2 * SEAL_BYTES
    );
    (dir, options)
}

#[test]
fn a_torn_multi_frame_commit_is_dropped_whole() {
    let (dir, options) = log_with_two_multi_frame_commits();
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    // The second commit's last frame and its seal never reached the disk.
    let second_commit = SEGMENT_HEADER_BYTES + 3 * FRAME_BYTES + SEAL_BYTES;
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(second_commit + 2 * FRAME_BYTES + 10)
        .unwrap();
    let log = open(dir.path(), &options);
    let keys: Vec<_> = read_all(&log, 0)
        .into_iter()
        .map(|r| String::from_utf8(r.key).unwrap())
        .collect();
    assert_eq!(
        keys,
        ["key-0000", "key-0001", "key-0002"],
        "the second commit goes whole, not in part"
    );
}

#[test]
fn an_unfinished_commit_is_dropped_whole() {
    let (dir, options) = log_with_two_multi_frame_commits();
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    // Cut at a frame boundary inside the second commit: its first frame is whole but its end is missing.
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(SEGMENT_HEADER_BYTES + 4 * FRAME_BYTES + SEAL_BYTES)
        .unwrap();
    let log = open(dir.path(), &options);
    assert_eq!(read_all(&log, 0).len(), 3);
    assert_eq!(
        log.append_blocking(0, vec![record("k", "v")])
            .unwrap()
            .offsets,
        [3]
    );
}

#[test]
fn damage_followed_by_a_later_commit_is_corruption() {
    let (dir, options) = log_with_two_multi_frame_commits();
    let segment = segment_files(dir.path(), 0).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(b"#", SEGMENT_HEADER_BYTES + FRAME_BYTES + 40)
        .unwrap();
    drop(file);
    let error = EmbeddedLog::open(dir.path(), options).unwrap_err();
    assert!(
        matches!(&error, LogError::Corruption { path, position, .. } if *path == segment && *position == SEGMENT_HEADER_BYTES + FRAME_BYTES),
        "{error}"
    );
}
