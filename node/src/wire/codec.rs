//! CBOR encoding with `cbor4ii`. Decoding is bounded by size before it starts
//! and never panics; unknown fields are errors (`deny_unknown_fields` on every
//! type), so no input makes the decoder skip through unbounded nesting.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the bound of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encodes a value. Our types contain nothing that can fail to encode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    cbor4ii::serde::to_vec(Vec::new(), value).expect("encoding into a Vec cannot fail")
}

/// Decodes at most `max` bytes into `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}
