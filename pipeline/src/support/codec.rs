//! The one binary encoding of tally's checkpointed state: bincode 1.x with fixed-width
//! little-endian integers, trailing bytes rejected and allocations bounded. Deterministic: equal
//! values always encode to equal bytes (state uses ordered maps and sorted vectors only).

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// No single checkpointed value is near this size; a larger length prefix means corruption.
const VALUE_BYTES_MAX: u64 = 256 * 1024 * 1024;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(VALUE_BYTES_MAX)
}

/// Encodes a value of tally's own state types.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // tally's state types are plain structs, enums, strings, integers and sequences: encoding
    // them into memory cannot fail short of the size bound, which no state value approaches.
    options()
        .serialize(value)
        .expect("state values always encode")
}

/// Appends the encoding of a value to `buffer` (the same bytes [`encode`] gives).
pub fn encode_into<T: Serialize + ?Sized>(buffer: &mut Vec<u8>, value: &T) {
    options()
        .serialize_into(buffer, value)
        .expect("state values always encode");
}

/// Decodes bytes read back from storage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

/// [`decode`] into a value that borrows from `bytes` (byte strings are not copied out).
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

/// The first byte of every versioned record: `[VERSION_MARKER, version, bincode body…]`.
///
/// Records written before versions existed are a bare bincode enum, which starts with its
/// variant index as a little-endian `u32`: the first byte is the index's low byte, below the
/// enum's variant count. Every such enum is frozen with fewer variants than this marker (each
/// user checks so with a `const` assertion), so no unversioned record starts with it, and a
/// reader tells the two apart by the first byte alone.
pub const VERSION_MARKER: u8 = 0xFF;

/// The version a reader reports for a record written before versions existed.
pub const UNVERSIONED: u8 = 0;

/// Why stored bytes are not a record this build can read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{kind} format version {version} is newer than this build, which reads versions up to \
         {known}: upgrade this node"
    )]
    UnknownVersion {
        kind: &'static str,
        version: u8,
        known: u8,
    },
    #[error("{kind} format version {version} does not decode: {reason}")]
    Malformed {
        kind: &'static str,
        version: u8,
        reason: String,
    },
}

/// Encodes `value` as format `version` (1 or later) of a versioned record.
pub fn encode_versioned<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    assert!(
        version > UNVERSIONED,
        "versioned records start at version 1"
    );
    let mut bytes = vec![VERSION_MARKER, version];
    // As in `encode`: state values always encode.
    options()
        .serialize_into(&mut bytes, value)
        .expect("state values always encode");
    bytes
}

/// A record's format version and body: [`UNVERSIONED`] and all of it for a record without the
/// marker.
pub fn split_versioned<'a>(
    kind: &'static str,
    bytes: &'a [u8],
) -> Result<(u8, &'a [u8]), FormatError> {
    match bytes {
        [VERSION_MARKER, UNVERSIONED, ..] | [VERSION_MARKER] => Err(FormatError::Malformed {
            kind,
            version: UNVERSIONED,
            reason: "a version marker without a version".into(),
        }),
        [VERSION_MARKER, version, body @ ..] => Ok((*version, body)),
        _ => Ok((UNVERSIONED, bytes)),
    }
}

/// Decodes the body of a record of format `version`.
pub fn decode_body<T: DeserializeOwned>(
    kind: &'static str,
    version: u8,
    body: &[u8],
) -> Result<T, FormatError> {
    decode(body).map_err(|error| FormatError::Malformed {
        kind,
        version,
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unversioned_enum_never_starts_with_the_marker() {
        #[derive(Serialize)]
        enum Legacy {
            A,
            B(u64),
        }
        for value in [Legacy::A, Legacy::B(u64::MAX)] {
            let bytes = encode(&value);
            assert_eq!(split_versioned("legacy", &bytes).unwrap(), (0, &bytes[..]));
        }
    }

    #[test]
    fn a_versioned_record_reads_back_its_version_and_body() {
        let bytes = encode_versioned(3, &7u32);
        let (version, body) = split_versioned("record", &bytes).unwrap();
        assert_eq!(version, 3);
        assert_eq!(decode_body::<u32>("record", version, body).unwrap(), 7);
        assert!(matches!(
            split_versioned("record", &[VERSION_MARKER]),
            Err(FormatError::Malformed { .. })
        ));
        assert!(matches!(
            split_versioned("record", &[VERSION_MARKER, 0, 1]),
            Err(FormatError::Malformed { .. })
        ));
    }
}
