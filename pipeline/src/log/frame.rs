//! The batch frame: the unit the embedded log checks and reads.
//!
//! One group commit writes one or more frames with one write and one sync; the last frame of a
//! commit carries the `COMMIT_END` flag. Frames are kept small (64 KiB by default) so that a
//! read of one record checks little more than that record, while a commit stays one sync. A
//! crash can only tear the last commit, and recovery drops that commit whole. All integers are
//! little-endian.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "TLYF"
//! 4       4     body_len: bytes of the body that follows the header
//! 8       4     crc32c of the body (Castagnoli)
//! 12      8     base_offset: offset of the first record
//! 20      4     record_count (≥ 1)
//! 24      4     flags: bit 0 = COMMIT_END (last frame of its commit); other bits 0
//! 28      8     append_time_ms: commit time, Unix milliseconds
//! 36      ...   record_count × { key_len: u32, value_len: u32, key, value }
//! ```

use super::{KeyedRecord, LogRecord, Offset, PartitionId};
use crate::support::clock::UnixMillis;

pub const FRAME_MAGIC: [u8; 4] = *b"TLYF";
pub const FRAME_HEADER_BYTES: usize = 12;
const BODY_FIXED_BYTES: usize = 24;
/// Flag of the last frame of a commit.
pub const FLAG_COMMIT_END: u32 = 1;
const RECORD_HEADER_BYTES: usize = 8;
/// Largest frame body: bounds what one commit writes and what a reader allocates for one frame.
pub const FRAME_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a frame's header and fixed body fields say, once its checksum matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub base_offset: Offset,
    pub record_count: u32,
    pub append_time_ms: UnixMillis,
    /// Whether this is the last frame of its commit.
    pub commit_end: bool,
    /// Header plus body.
    pub frame_bytes: usize,
}

impl FrameInfo {
    pub fn end_offset(&self) -> Offset {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Why bytes at a position are not a whole, valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// The bytes end before the frame does (a possibly torn write).
    Truncated,
    /// The bytes are a frame no writer could have produced.
    Invalid(String),
    /// The commit's frames are whole but no copy of its seal checks out (format version 2).
    Unsealed,
}

/// Bytes one encoded record adds to a frame.
pub fn record_encoded_bytes(record: &KeyedRecord) -> usize {
    RECORD_HEADER_BYTES + record.key.len() + record.value.len()
}

/// Appends one frame holding `records` to `buffer`.
///
/// The caller bounds the batch: the body must not exceed [`FRAME_BODY_BYTES_MAX`].
pub fn encode_frame<'a>(
    buffer: &mut Vec<u8>,
    base_offset: Offset,
    append_time_ms: UnixMillis,
    commit_end: bool,
    records: impl IntoIterator<Item = &'a KeyedRecord>,
) -> FrameInfo {
    let frame_start = buffer.len();
    buffer.extend_from_slice(&FRAME_MAGIC);
    buffer.extend_from_slice(&[0; 8]); // body_len and crc, filled in below
    let body_start = buffer.len();
    buffer.extend_from_slice(&base_offset.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]); // record_count, filled in below
    let flags = if commit_end { FLAG_COMMIT_END } else { 0 };
    buffer.extend_from_slice(&flags.to_le_bytes());
    buffer.extend_from_slice(&append_time_ms.to_le_bytes());
    let mut record_count: u32 = 0;
    for record in records {
        let key_len = u32::try_from(record.key.len()).expect("key bounded by the frame limit");
        let value_len =
            u32::try_from(record.value.len()).expect("value bounded by the frame limit");
        buffer.extend_from_slice(&key_len.to_le_bytes());
        buffer.extend_from_slice(&value_len.to_le_bytes());
        buffer.extend_from_slice(&record.key);
        buffer.extend_from_slice(&record.value);
        record_count += 1;
    }
    assert!(record_count > 0, "a frame holds at least one record");
    let body_len = buffer.len() - body_start;
    assert!(
        body_len <= FRAME_BODY_BYTES_MAX,
        "frame body of {body_len} bytes over the limit"
    );
    buffer[body_start + 8..body_start + 12].copy_from_slice(&record_count.to_le_bytes());
    let crc = crc32c::crc32c(&buffer[body_start..]);
    buffer[frame_start + 4..frame_start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    buffer[frame_start + 8..frame_start + 12].copy_from_slice(&crc.to_le_bytes());
    FrameInfo {
        base_offset,
        record_count,
        append_time_ms,
        commit_end,
        frame_bytes: buffer.len() - frame_start,
    }
}

/// The body length a frame header announces, after checking its magic and bound.
pub fn body_len_from_header(header: &[u8]) -> Result<usize, FrameProblem> {
    if header.len() < FRAME_HEADER_BYTES {
        return Err(FrameProblem::Truncated);
    }
    if header[0..4] != FRAME_MAGIC {
        return Err(FrameProblem::Invalid("bad frame magic".into()));
    }
    let body_len = read_u32(header, 4) as usize;
    if !(BODY_FIXED_BYTES..=FRAME_BODY_BYTES_MAX).contains(&body_len) {
        return Err(FrameProblem::Invalid(format!(
            "frame body length {body_len} out of bounds"
        )));
    }
    Ok(body_len)
}

/// Checks the frame at the start of `bytes`: magic, bounds, checksum and record layout.
pub fn check_frame(bytes: &[u8]) -> Result<FrameInfo, FrameProblem> {
    let body_len = body_len_from_header(bytes)?;
    let frame_bytes = FRAME_HEADER_BYTES + body_len;
    if bytes.len() < frame_bytes {
        return Err(FrameProblem::Truncated);
    }
    let body = &bytes[FRAME_HEADER_BYTES..frame_bytes];
    let stored_crc = read_u32(bytes, 8);
    let actual_crc = crc32c::crc32c(body);
    if stored_crc != actual_crc {
        return Err(FrameProblem::Invalid(format!(
            "checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
        )));
    }
    let flags = read_u32(body, 12);
    if flags & !FLAG_COMMIT_END != 0 {
        return Err(FrameProblem::Invalid(format!(
            "unknown frame flags {flags:#x}"
        )));
    }
    let info = FrameInfo {
        base_offset: read_u64(body, 0),
        record_count: read_u32(body, 8),
        append_time_ms: read_u64(body, 16) as i64,
        commit_end: flags & FLAG_COMMIT_END != 0,
        frame_bytes,
    };
    check_record_layout(body, info.record_count)?;
    Ok(info)
}

/// Decodes the records of a checked frame (`bytes` starts at the frame), skipping those before
/// `from` and stopping after `records_max` records in total in `into`.
pub fn decode_records(
    bytes: &[u8],
    info: &FrameInfo,
    partition: PartitionId,
    from: Offset,
    records_max: usize,
    into: &mut Vec<LogRecord>,
) {
    let body = &bytes[FRAME_HEADER_BYTES..info.frame_bytes];
    let mut position = BODY_FIXED_BYTES;
    for index in 0..u64::from(info.record_count) {
        if into.len() >= records_max {
            return;
        }
        let key_len = read_u32(body, position) as usize;
        let value_len = read_u32(body, position + 4) as usize;
        let key_start = position + RECORD_HEADER_BYTES;
        let value_start = key_start + key_len;
        position = value_start + value_len;
        let offset = info.base_offset + index;
        if offset >= from {
            into.push(LogRecord {
                partition,
                offset,
                append_time_ms: info.append_time_ms,
                key: body[key_start..value_start].to_vec(),
                value: body[value_start..position].to_vec(),
            });
        }
    }
}

/// The value of the first record of a checked frame (`bytes` starts at the frame), in place.
pub fn only_record_value<'a>(bytes: &'a [u8], info: &FrameInfo) -> &'a [u8] {
    let body = &bytes[FRAME_HEADER_BYTES..info.frame_bytes];
    let key_len = read_u32(body, BODY_FIXED_BYTES) as usize;
    let value_len = read_u32(body, BODY_FIXED_BYTES + 4) as usize;
    let value_start = BODY_FIXED_BYTES + RECORD_HEADER_BYTES + key_len;
    &body[value_start..value_start + value_len]
}

fn check_record_layout(body: &[u8], record_count: u32) -> Result<(), FrameProblem> {
    if record_count == 0 {
        return Err(FrameProblem::Invalid("frame with zero records".into()));
    }
    let mut position = BODY_FIXED_BYTES;
    for _ in 0..record_count {
        if position + RECORD_HEADER_BYTES > body.len() {
            return Err(FrameProblem::Invalid(
                "record header past the frame end".into(),
            ));
        }
        let key_len = read_u32(body, position) as usize;
        let value_len = read_u32(body, position + 4) as usize;
        position += RECORD_HEADER_BYTES + key_len + value_len;
        if position > body.len() {
            return Err(FrameProblem::Invalid("record past the frame end".into()));
        }
    }
    if position != body.len() {
        return Err(FrameProblem::Invalid("bytes after the last record".into()));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<KeyedRecord> {
        (0..n)
            .map(|i| KeyedRecord {
                key: format!("k{i}").into_bytes(),
                value: vec![i as u8; i],
            })
            .collect()
    }

    #[test]
    fn encode_check_decode_roundtrip() {
        let input = records(5);
        let mut buffer = Vec::new();
        let written = encode_frame(&mut buffer, 40, 1234, true, &input);
        let checked = check_frame(&buffer).unwrap();
        assert_eq!(written, checked);
        assert!(checked.commit_end);
        assert_eq!(checked.end_offset(), 45);
        let mut out = Vec::new();
        decode_records(&buffer, &checked, 3, 42, 2, &mut out);
        assert_eq!(
            out.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![42, 43]
        );
        assert_eq!(out[0].key, b"k2");
        assert_eq!(out[1].value, vec![3u8; 3]);
        assert!(
            out.iter()
                .all(|r| r.partition == 3 && r.append_time_ms == 1234)
        );
    }

    #[test]
    fn every_truncation_is_detected_as_truncated() {
        let mut buffer = Vec::new();
        encode_frame(&mut buffer, 0, 1, false, &records(3));
        for cut in 0..buffer.len() {
            assert_eq!(
                check_frame(&buffer[..cut]),
                Err(FrameProblem::Truncated),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buffer = Vec::new();
        encode_frame(&mut buffer, 7, 1, true, &records(3));
        for byte in 0..buffer.len() {
            for bit in 0..8 {
                let mut damaged = buffer.clone();
                damaged[byte] ^= 1 << bit;
                assert!(check_frame(&damaged).is_err(), "byte {byte} bit {bit}");
            }
        }
    }
}
