//! State snapshots on the cluster: each owner publishes its partitions' state, so that a node
//! taking a partition over restores it and replays the log from there, not from offset 0.
//!
//! The topic `<topic>-state` has as many partitions as the donation topic; partition `p`'s
//! snapshots go to its partition `p`. A snapshot is the section a savepoint holds for the
//! partition (`checkpoint::savepoint::export_partition`): its last committed checkpoint as one
//! journal generation, every frame with its CRC32C, whose digest is checked whole when it is
//! installed. It is split into parts of at most [`PART_BYTES`], appended in order by the
//! partition's one holder (an owner that does not hold its lease publishes nothing).
//!
//! # Record format
//! `[0xFF, 1, bincode of StatePartV1]`: the snapshot's id (unique per publisher and
//! snapshot), the owner's epoch, the offset the state reflects, the part's number and the
//! count of parts, the CRC32C of the whole section, and the part's bytes. A record of a later
//! version is skipped (and logged) while looking for the latest snapshot.
//!
//! # Finding the latest
//! [`latest`] reads the partition backwards from its end: the last record that is a snapshot's
//! last part names the offset of its first part; the parts between must be that snapshot's, in
//! order, and their bytes must match the CRC. A torn snapshot (its owner died half-way) is
//! passed over for the one before it.

use serde::{Deserialize, Serialize};

use crate::log::{FluvioLogOptions, KeyedRecord, Log, LogError, LogRecord, Offset, PartitionId};
use crate::support::codec::{self, FormatError};

/// The bytes of a section one record carries at most.
pub const PART_BYTES: usize = 60 * 1024;
/// The largest record of the state topic (a part and its header).
pub const STATE_RECORD_BYTES_MAX: usize = PART_BYTES + 4096;
/// Parts per append.
const PARTS_PER_APPEND: usize = 8;
/// Records read per step backwards.
const READ_BACK_RECORDS: u64 = 64;
/// How long the state topic keeps a closed segment after its last write: owners publish
/// every partition they run at least every few minutes, so the latest snapshot of a running
/// partition is always far younger; a partition nobody ran for this long is restored from the
/// log alone.
pub const STATE_RETENTION_SECONDS: u32 = 6 * 60 * 60;

const STATE_RECORD_VERSION: u8 = 1;
const STATE_RECORD: &str = "state snapshot record";

/// One part of a snapshot, format version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatePartV1 {
    snapshot_id: u64,
    epoch: Offset,
    next_offset: Offset,
    part: u32,
    parts: u32,
    section_crc32c: u32,
    bytes: Vec<u8>,
}

/// A whole snapshot as found on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    pub partition: PartitionId,
    /// The epoch of the owner that published it.
    pub epoch: Offset,
    /// The state reflects records `0..next_offset` of the partition.
    pub next_offset: Offset,
    /// The section, as `install_partition` takes it.
    pub section: Vec<u8>,
    /// Where its first part is on the state topic.
    pub at: Offset,
}

/// The options of the state topic: records of a part, and [`STATE_RETENTION_SECONDS`].
pub fn state_topic_options(defaults: FluvioLogOptions) -> FluvioLogOptions {
    FluvioLogOptions {
        record_bytes_max: STATE_RECORD_BYTES_MAX,
        retention_seconds: STATE_RETENTION_SECONDS,
        ..defaults
    }
}

/// Publishes a partition's section (reflecting records `0..next_offset`) as snapshot
/// `snapshot_id` of an owner at `epoch`.
pub async fn publish(
    log: &dyn Log,
    partition: PartitionId,
    epoch: Offset,
    next_offset: Offset,
    snapshot_id: u64,
    section: &[u8],
) -> Result<(), LogError> {
    let section_crc32c = crc32c::crc32c(section);
    let chunks: Vec<&[u8]> = if section.is_empty() {
        vec![&[]]
    } else {
        section.chunks(PART_BYTES).collect()
    };
    let parts = chunks.len() as u32;
    let records: Vec<KeyedRecord> = chunks
        .into_iter()
        .enumerate()
        .map(|(part, bytes)| KeyedRecord {
            key: partition.to_le_bytes().to_vec(),
            value: codec::encode_versioned(
                STATE_RECORD_VERSION,
                &StatePartV1 {
                    snapshot_id,
                    epoch,
                    next_offset,
                    part: part as u32,
                    parts,
                    section_crc32c,
                    bytes: bytes.to_vec(),
                },
            ),
        })
        .collect();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let append: Vec<KeyedRecord> = records.by_ref().take(PARTS_PER_APPEND).collect();
        log.append(partition, append).await?;
    }
    Ok(())
}

fn decode(record: &LogRecord) -> Result<StatePartV1, FormatError> {
    match codec::split_versioned(STATE_RECORD, &record.value)? {
        (STATE_RECORD_VERSION, body) => {
            codec::decode_body(STATE_RECORD, STATE_RECORD_VERSION, body)
        }
        (version, _) => Err(FormatError::UnknownVersion {
            kind: STATE_RECORD,
            version,
            known: STATE_RECORD_VERSION,
        }),
    }
}

/// The latest whole snapshot of `partition`, if the topic holds one.
pub async fn latest(
    log: &dyn Log,
    partition: PartitionId,
) -> Result<Option<StateSnapshot>, LogError> {
    let mut before = log.end_offset(partition).await?;
    while before > 0 {
        let from = before.saturating_sub(READ_BACK_RECORDS);
        let window = read_range(log, partition, from, before).await?;
        let last_part = window.iter().rev().find_map(|record| match decode(record) {
            Ok(part) if part.part + 1 == part.parts => Some((record.offset, part)),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(partition, offset = record.offset, %error, "skipping a state record");
                None
            }
        });
        let Some((last_offset, last)) = last_part else {
            before = from;
            continue;
        };
        let first = last_offset.saturating_sub(u64::from(last.parts) - 1);
        if let Some(snapshot) = assemble(log, partition, first, last_offset, &last).await? {
            return Ok(Some(snapshot));
        }
        before = last_offset;
    }
    Ok(None)
}

/// The snapshot whose last part `last` is at `last_offset`, if parts `first..=last_offset` are
/// all its own and match its CRC.
async fn assemble(
    log: &dyn Log,
    partition: PartitionId,
    first: Offset,
    last_offset: Offset,
    last: &StatePartV1,
) -> Result<Option<StateSnapshot>, LogError> {
    let records = read_range(log, partition, first, last_offset + 1).await?;
    let mut section = Vec::new();
    for (expected_part, record) in records.iter().enumerate() {
        let Ok(part) = decode(record) else {
            return Ok(None);
        };
        if part.snapshot_id != last.snapshot_id || part.part != expected_part as u32 {
            return Ok(None);
        }
        section.extend_from_slice(&part.bytes);
    }
    if records.len() != last.parts as usize || crc32c::crc32c(&section) != last.section_crc32c {
        return Ok(None);
    }
    Ok(Some(StateSnapshot {
        partition,
        epoch: last.epoch,
        next_offset: last.next_offset,
        section,
        at: first,
    }))
}

/// Records `from..until` of `partition`.
async fn read_range(
    log: &dyn Log,
    partition: PartitionId,
    mut from: Offset,
    until: Offset,
) -> Result<Vec<LogRecord>, LogError> {
    let mut records = Vec::new();
    while from < until {
        let read = log
            .read(partition, from, (until - from).min(1024) as usize)
            .await?;
        let Some(last) = read.last() else { break };
        from = last.offset + 1;
        records.extend(read.into_iter().filter(|r| r.offset < until));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EmbeddedLog, EmbeddedLogOptions};

    fn topic(dir: &std::path::Path) -> EmbeddedLog {
        let options = EmbeddedLogOptions {
            partition_count: 2,
            ..EmbeddedLogOptions::default()
        };
        EmbeddedLog::open(dir, options).unwrap()
    }

    #[tokio::test]
    async fn the_latest_whole_snapshot_is_found_and_a_torn_one_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let log = topic(dir.path());
        assert_eq!(latest(&log, 1).await.unwrap(), None);
        let big: Vec<u8> = (0..PART_BYTES * 3 + 17).map(|i| (i % 251) as u8).collect();
        publish(&log, 1, 4, 1_000, 1, &big).await.unwrap();
        publish(&log, 0, 4, 7, 2, b"other partition").await.unwrap();
        let found = latest(&log, 1).await.unwrap().unwrap();
        assert_eq!((found.epoch, found.next_offset, found.at), (4, 1_000, 0));
        assert_eq!(found.section, big);

        // A later snapshot whose last part never arrived (its owner died): the earlier one.
        let torn = StatePartV1 {
            snapshot_id: 3,
            epoch: 9,
            next_offset: 2_000,
            part: 0,
            parts: 2,
            section_crc32c: 0,
            bytes: vec![1, 2, 3],
        };
        let record = KeyedRecord {
            key: vec![],
            value: codec::encode_versioned(STATE_RECORD_VERSION, &torn),
        };
        log.append(1, vec![record]).await.unwrap();
        assert_eq!(latest(&log, 1).await.unwrap().unwrap().next_offset, 1_000);
        // A newer whole one wins.
        publish(&log, 1, 9, 3_000, 4, b"newer").await.unwrap();
        let found = latest(&log, 1).await.unwrap().unwrap();
        assert_eq!(
            (found.next_offset, found.section.as_slice()),
            (3_000, &b"newer"[..])
        );
        assert_eq!(
            latest(&log, 0).await.unwrap().unwrap().section,
            b"other partition"
        );
    }
}
