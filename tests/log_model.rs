//! Guards the embedded log against an in-memory model: random appends, reads from random
//! offsets, and reopens (some after a torn, unacknowledged write) must always agree with a
//! plain vector of acknowledged records per partition.

mod support;

use std::fs::OpenOptions;
use std::io::Write;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use support::{open, read_all, segment_files, small_segment_options};
use tally_pipeline::log::{EmbeddedLog, KeyedRecord};

const PARTITIONS: u32 = 2;

#[derive(Debug, Clone)]
enum Operation {
    Append {
        partition: u32,
        value_sizes: Vec<usize>,
    },
    Read {
        partition: u32,
        from: Index,
        records_max: usize,
    },
    Reopen {
        torn_tail: Option<(u32, Vec<u8>)>,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        5 => (0..PARTITIONS, prop::collection::vec(0usize..300, 1..12))
            .prop_map(|(partition, value_sizes)| Operation::Append { partition, value_sizes }),
        3 => (0..PARTITIONS, any::<Index>(), 1usize..40)
            .prop_map(|(partition, from, records_max)| Operation::Read { partition, from, records_max }),
        1 => prop::option::of((0..PARTITIONS, prop::collection::vec(any::<u8>(), 1..200)))
            .prop_map(|torn_tail| Operation::Reopen { torn_tail }),
    ]
}

/// Simulates a crash during an unacknowledged write: bytes after the last durable frame.
fn tear(dir: &std::path::Path, partition: u32, garbage: &[u8]) {
    let segment = segment_files(dir, partition).pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(segment).unwrap();
    file.write_all(garbage).unwrap();
}

fn check_against_model(log: &EmbeddedLog, model: &[Vec<KeyedRecord>]) {
    for (partition, expected) in model.iter().enumerate() {
        let stored = read_all(log, partition as u32);
        assert_eq!(stored.len(), expected.len(), "partition {partition}");
        for (offset, (got, want)) in stored.iter().zip(expected).enumerate() {
            assert_eq!(got.offset, offset as u64);
            assert_eq!((&got.key, &got.value), (&want.key, &want.value));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(operations in prop::collection::vec(operation(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segment_options(PARTITIONS);
        let mut log = Some(open(dir.path(), &options));
        let mut model: Vec<Vec<KeyedRecord>> = vec![Vec::new(); PARTITIONS as usize];
        for (step, operation) in operations.into_iter().enumerate() {
            let current = log.as_ref().unwrap();
            match operation {
                Operation::Append { partition, value_sizes } => {
                    let records: Vec<KeyedRecord> = value_sizes
                        .iter()
                        .enumerate()
                        .map(|(i, &size)| KeyedRecord {
                            key: format!("s{step}-{i}").into_bytes(),
                            value: vec![(step + i) as u8; size],
                        })
                        .collect();
                    let ack = current.append_blocking(partition, records.clone()).unwrap();
                    let slot = &mut model[partition as usize];
                    let expected: Vec<u64> = (slot.len() as u64..).take(records.len()).collect();
                    prop_assert_eq!(&ack.offsets, &expected);
                    slot.extend(records);
                }
                Operation::Read { partition, from, records_max } => {
                    let expected = &model[partition as usize];
                    let from = from.index(expected.len() + 1);
                    let got = current.partition(partition).unwrap().read(from as u64, records_max).unwrap();
                    let want: Vec<_> = expected[from..].iter().take(records_max).collect();
                    prop_assert_eq!(got.len(), want.len());
                    for (got, want) in got.iter().zip(want) {
                        prop_assert_eq!(&got.key, &want.key);
                        prop_assert_eq!(&got.value, &want.value);
                    }
                }
                Operation::Reopen { torn_tail } => {
                    drop(log.take());
                    if let Some((partition, garbage)) = torn_tail {
                        tear(dir.path(), partition, &garbage);
                    }
                    log = Some(open(dir.path(), &options));
                }
            }
        }
        check_against_model(log.as_ref().unwrap(), &model);
        drop(log.take());
        check_against_model(&open(dir.path(), &options), &model);
    }
}
