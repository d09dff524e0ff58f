//! The versioned envelope around every message body.
//!
//! bincode cannot add fields compatibly, so a released version's structs are frozen and a
//! change means a new [`WIRE_VERSION`]. The four header bytes (`F`, `M`, version, kind) let a
//! consumer reject a message it does not understand — dead-letter it with a log line —
//! instead of decoding garbage into plausible-looking values.

use serde::{Serialize, de::DeserializeOwned};

/// Version of the message structs in [`crate::messages`]. Bump on any change to them.
pub const WIRE_VERSION: u8 = 1;

/// Upper bound on an encoded message. Items and outcomes are descriptors of a few hundred
/// bytes; anything near this limit is a bug or an attack, and bincode must not be allowed to
/// allocate what a length prefix in hostile bytes claims.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

const MAGIC: [u8; 2] = *b"FM";
const HEADER_LEN: usize = 4;

/// What a message body carries; checked so an outcome is never decoded as an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Item = 1,
    Outcome = 2,
    /// Several small child executions of one run ([`crate::messages::ItemPack`]). New kinds
    /// are added, not the existing structs changed, so the wire version stays: a worker of
    /// this version reads both, and an older one dead-letters a pack as undecodable.
    ItemPack = 3,
    /// The outcomes of several child executions ([`crate::messages::encode_outcomes`]).
    OutcomePack = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Item),
            2 => Some(Kind::Outcome),
            3 => Some(Kind::ItemPack),
            4 => Some(Kind::OutcomePack),
            _ => None,
        }
    }
}

/// Why bytes could not be turned into a message. Never retryable: the same bytes fail again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {len} bytes is shorter than the {HEADER_LEN}-byte envelope header")]
    TooShort { len: usize },
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("message does not start with the fleetmap magic bytes (got {got:02x?})")]
    BadMagic { got: [u8; 2] },
    #[error("message has wire version {got}, this build understands version {WIRE_VERSION}")]
    UnsupportedVersion { got: u8 },
    #[error("message is of kind {got}, expected {expected:?}")]
    WrongKind { got: u8, expected: Kind },
    #[error("message is of kind {got}, which this build does not know")]
    UnknownKind { got: u8 },
    #[error("message body is not a valid {expected:?}: {reason}")]
    Body { expected: Kind, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding a {kind:?} message failed: {reason}")]
    Bincode { kind: Kind, reason: String },
    #[error("encoded {kind:?} message is {len} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge { kind: Kind, len: usize },
}

/// bincode's limit bounds what decoding may *allocate*, not the bytes it reads: a `Vec` of
/// structs claims `len × size_of::<T>()`, which can be several times its varint-packed wire
/// size. The wire length is checked against [`MAX_MESSAGE_BYTES`] before decoding; this
/// allowance keeps every legal message decodable while still refusing a hostile length prefix
/// that claims gigabytes.
const MAX_DECODED_BYTES: usize = 8 * MAX_MESSAGE_BYTES;

fn encode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODED_BYTES>()
}

/// Encodes `msg` behind the envelope header.
pub fn encode<T: Serialize>(kind: Kind, msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    bincode::serde::encode_into_std_write(msg, &mut out, encode_config()).map_err(|e| {
        EncodeError::Bincode {
            kind,
            reason: e.to_string(),
        }
    })?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge {
            kind,
            len: out.len(),
        });
    }
    Ok(out)
}

/// Checks the envelope's length, magic and version, and returns its kind: for a consumer
/// that takes more than one kind from a queue.
pub fn kind_of(bytes: &[u8]) -> Result<Kind, DecodeError> {
    let byte = header(bytes)?;
    Kind::from_byte(byte).ok_or(DecodeError::UnknownKind { got: byte })
}

/// The kind byte of a message whose length, magic and version are right.
fn header(bytes: &[u8]) -> Result<u8, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic {
            got: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { got: bytes[2] });
    }
    Ok(bytes[3])
}

/// Checks the envelope and decodes the body; trailing bytes are an error, not ignored.
pub fn decode<T: DeserializeOwned>(expected: Kind, bytes: &[u8]) -> Result<T, DecodeError> {
    let got = header(bytes)?;
    if Kind::from_byte(got) != Some(expected) {
        return Err(DecodeError::WrongKind { got, expected });
    }
    let body = &bytes[HEADER_LEN..];
    let (msg, used) = bincode::serde::decode_from_slice(body, decode_config()).map_err(|e| {
        DecodeError::Body {
            expected,
            reason: e.to_string(),
        }
    })?;
    if used != body.len() {
        return Err(DecodeError::Body {
            expected,
            reason: format!("{} trailing bytes after the message", body.len() - used),
        });
    }
    Ok(msg)
}
