//! The commit seal: how recovery tells a torn commit from a completed one that was damaged later.
//!
//! From segment format version 2 on, every commit ends with a seal written in the same `pwrite`
//! as its frames and synced with them: two identical 32-byte copies, back to back.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "TLYS"
//! 4       4     commit_bytes: bytes of the commit's frames, which end where the seal starts
//! 8       8     base_offset of the commit's first record
//! 16      8     end_offset: one past the commit's last record
//! 24      4     crc32c of the commit's frames (all of them, headers included)
//! 28      4     crc32c of bytes 0..28 of this copy
//! ```
//!
//! A seal that checks out says the write of its commit reached its last bytes. With it, damage
//! inside the commit is told apart by what a torn write leaves: a sector that never reached the
//! disk reads as zeros (the commit was written past the file's synced end, which recovery keeps
//! zeroed), while damage to written bytes does not turn a whole sector into zeros. See
//! `docs/log-format.md` for the full rule and why it can never drop an acknowledged record.

use super::Offset;

pub const SEAL_MAGIC: [u8; 4] = *b"TLYS";
/// One copy.
pub const SEAL_COPY_BYTES: usize = 32;
/// Both copies: what a commit adds to the segment after its frames.
pub const SEAL_BYTES: usize = 2 * SEAL_COPY_BYTES;

/// What a seal records about its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub commit_bytes: u32,
    pub base_offset: Offset,
    pub end_offset: Offset,
    pub commit_crc: u32,
}

impl Seal {
    /// The seal of a commit whose frames are `frames`.
    pub fn of_commit(frames: &[u8], base_offset: Offset, end_offset: Offset) -> Self {
        let commit_bytes =
            u32::try_from(frames.len()).expect("a commit is bounded far below 4 GiB");
        Self {
            commit_bytes,
            base_offset,
            end_offset,
            commit_crc: crc32c::crc32c(frames),
        }
    }

    /// Appends both copies to `buffer`.
    pub fn encode(&self, buffer: &mut Vec<u8>) {
        let copy = self.encode_copy();
        buffer.extend_from_slice(&copy);
        buffer.extend_from_slice(&copy);
    }

    fn encode_copy(&self) -> [u8; SEAL_COPY_BYTES] {
        let mut copy = [0u8; SEAL_COPY_BYTES];
        copy[0..4].copy_from_slice(&SEAL_MAGIC);
        copy[4..8].copy_from_slice(&self.commit_bytes.to_le_bytes());
        copy[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        copy[16..24].copy_from_slice(&self.end_offset.to_le_bytes());
        copy[24..28].copy_from_slice(&self.commit_crc.to_le_bytes());
        let crc = crc32c::crc32c(&copy[0..28]);
        copy[28..32].copy_from_slice(&crc.to_le_bytes());
        copy
    }

    /// The seal copy at the start of `bytes`, if one is there and checks out.
    pub fn decode_copy(bytes: &[u8]) -> Option<Self> {
        let copy = bytes.get(0..SEAL_COPY_BYTES)?;
        if copy[0..4] != SEAL_MAGIC {
            return None;
        }
        let stored_crc = u32::from_le_bytes(copy[28..32].try_into().ok()?);
        if crc32c::crc32c(&copy[0..28]) != stored_crc {
            return None;
        }
        Some(Self {
            commit_bytes: u32::from_le_bytes(copy[4..8].try_into().ok()?),
            base_offset: u64::from_le_bytes(copy[8..16].try_into().ok()?),
            end_offset: u64::from_le_bytes(copy[16..24].try_into().ok()?),
            commit_crc: u32::from_le_bytes(copy[24..28].try_into().ok()?),
        })
    }

    /// How many of the two copies at the start of `bytes` check out and equal `self`.
    pub fn copies_matching(&self, bytes: &[u8]) -> usize {
        [0, SEAL_COPY_BYTES]
            .iter()
            .filter(|&&at| {
                bytes
                    .get(at..)
                    .and_then(Seal::decode_copy)
                    .is_some_and(|copy| copy == *self)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_roundtrips_and_any_bit_flip_spoils_only_its_copy() {
        let seal = Seal::of_commit(b"frames of a commit", 10, 14);
        let mut bytes = Vec::new();
        seal.encode(&mut bytes);
        assert_eq!(bytes.len(), SEAL_BYTES);
        assert_eq!(seal.copies_matching(&bytes), 2);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert_eq!(seal.copies_matching(&damaged), 1, "byte {byte} bit {bit}");
            }
        }
    }
}
