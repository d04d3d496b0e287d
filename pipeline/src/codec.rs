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

/// Decodes bytes read back from storage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}
