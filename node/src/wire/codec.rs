//! CBOR encoding with `cbor4ii`. Decoding is bounded by size before it starts
//! and never panics; unknown fields are errors (`deny_unknown_fields` on every
//! type), so no input makes the decoder skip through unbounded nesting.

use cbor4ii::core::dec::Read as _;
use cbor4ii::core::utils::SliceReader;
use cbor4ii::serde::Deserializer;
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

/// Decodes at most `max` bytes into `T`. The bytes must hold exactly one
/// value: trailing bytes are an error, or one message would have many byte
/// strings.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { len: bytes.len(), max });
    }
    let mut de = Deserializer::new(SliceReader::new(bytes));
    let value = T::deserialize(&mut de).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let mut rest = de.into_inner();
    match rest.fill(1) {
        Ok(r) if r.as_ref().is_empty() => Ok(value),
        _ => Err(DecodeError::Invalid("trailing bytes after the message")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pbft::Message;
    use crate::wire::limits::ENVELOPE_BYTES_MAX;
    use crate::wire::testkit::*;
    use crate::wire::*;

    /// The major type of the CBOR item that starts at `bytes[0]`.
    fn major(bytes: &[u8]) -> u8 {
        bytes[0] >> 5
    }

    /// The bytes right after the text key `key` in an encoded map.
    fn after_key<'a>(bytes: &'a [u8], key: &str) -> &'a [u8] {
        let mut pat = vec![0x60 | key.len() as u8];
        pat.extend_from_slice(key.as_bytes());
        let at = bytes.windows(pat.len()).position(|w| w == pat).unwrap_or_else(|| panic!("no key {key}"));
        &bytes[at + pat.len()..]
    }

    #[test]
    fn a_digest_encodes_as_a_32_byte_cbor_byte_string() {
        let d = digest(0xab);
        let bytes = encode(&d);
        assert_eq!(bytes.len(), 34);
        assert_eq!(&bytes[..2], &[0x58, 0x20]);
        assert_eq!(&bytes[2..], &[0xab; 32]);
        let back: Digest = decode(&bytes, 64).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn a_digest_of_the_wrong_length_or_type_does_not_decode() {
        let mut short = vec![0x58, 31];
        short.extend_from_slice(&[0; 31]);
        assert!(decode::<Digest>(&short, 64).is_err());
        // An array of 32 integers is not a byte string.
        let mut array = vec![0x98, 32];
        array.extend_from_slice(&[0; 32]);
        assert!(decode::<Digest>(&array, 64).is_err());
    }

    #[test]
    fn signed_byte_strings_encode_as_cbor_byte_strings() {
        assert_eq!(encode(&SignedBytes(vec![1, 2, 3])), vec![0x43, 1, 2, 3]);
        let net = Net::new();
        let sealed = net.seal_request(1);
        let env = sealed.bytes();
        for key in ["network", "signer", "body", "signature"] {
            assert_eq!(major(after_key(env, key)), 2, "{key} is a byte string");
        }
        // Inside the body, the gateway's PeerId is a byte string too.
        let body: Envelope = decode(env, ENVELOPE_BYTES_MAX).unwrap();
        assert_eq!(major(after_key(&body.body, "gateway")), 2);
        // And a batch's digests.
        let pp = encode(&PrePrepare { view: 0, seq: 1, requests: vec![digest(7)] });
        assert_eq!(&after_key(&pp, "requests")[..3], &[0x81, 0x58, 0x20]);
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = encode(&digest(1));
        bytes.push(0);
        assert!(matches!(decode::<Digest>(&bytes, 64), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn decode_checks_the_bound_before_decoding() {
        let bytes = encode(&digest(1));
        assert!(matches!(decode::<Digest>(&bytes, 33), Err(DecodeError::TooLarge { len: 34, max: 33 })));
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
        // 100k nested arrays, then for a map-of-arrays shape.
        let nested = vec![0x81u8; 100_000];
        assert!(decode::<PeerRequest>(&nested, usize::MAX).is_err());
        let mut tagged = vec![0xa1, 0x68];
        tagged.extend_from_slice(b"Requests");
        tagged.extend(std::iter::repeat_n(0x81u8, 100_000));
        assert!(decode::<PeerRequest>(&tagged, usize::MAX).is_err());
    }

    /// Feeds `bytes` to every decoder a peer's input reaches. Returns how
    /// many signed openings accepted it: 0 for anything not sealed by a member.
    fn open_everything(bytes: &[u8], net: &Net) -> usize {
        let (n, v) = (&net.network(), &net.members);
        // Unsigned: anything may decode, nothing may panic.
        let _ = decode::<PeerRequest>(bytes, ENVELOPE_BYTES_MAX).map(|r| r.check());
        let _ = decode::<PeerResponse>(bytes, ENVELOPE_BYTES_MAX);
        [
            Envelope::open(bytes, n, v).is_ok(),
            Signed::<Request>::open(bytes, n, v).is_ok(),
            Signed::<Reply>::open(bytes, n, v).is_ok(),
            Signed::<PrePrepare>::open(bytes, n, v).is_ok(),
            Signed::<Prepare>::open(bytes, n, v).is_ok(),
            Signed::<Commit>::open(bytes, n, v).is_ok(),
            Signed::<Checkpoint>::open(bytes, n, v).is_ok(),
            Signed::<ViewChange>::open(bytes, n, v).is_ok(),
            Signed::<NewView>::open(bytes, n, v).is_ok(),
            Message::open(bytes, n, v).is_ok(),
        ]
        .into_iter()
        .filter(|ok| *ok)
        .count()
    }

    /// Decodes `body` as the body of a message of `kind`, skipping the
    /// signature so that mutated bodies reach the body decoder.
    fn decode_body(kind: Kind, body: &[u8], net: &Net) -> bool {
        let env = Envelope {
            network: net.network(),
            kind,
            signer: net.gateway.public().to_peer_id(),
            body: body.to_vec(),
            signature: vec![],
            batch: None,
        };
        let bytes: Arc<[u8]> = Arc::from(&[][..]);
        let b = bytes.clone();
        match kind {
            Kind::Request => Signed::<Request>::from_envelope(env, b).is_ok(),
            Kind::Reply => Signed::<Reply>::from_envelope(env, b).is_ok(),
            Kind::PrePrepare => Signed::<PrePrepare>::from_envelope(env, b).is_ok(),
            Kind::Prepare => Signed::<Prepare>::from_envelope(env, b).is_ok(),
            Kind::Commit => Signed::<Commit>::from_envelope(env, b).is_ok(),
            Kind::Checkpoint => Signed::<Checkpoint>::from_envelope(env, b).is_ok(),
            Kind::ViewChange => Signed::<ViewChange>::from_envelope(env, b).is_ok(),
            Kind::NewView => Signed::<NewView>::from_envelope(env, b).is_ok(),
        }
    }

    const KINDS: [Kind; 8] = [
        Kind::Request,
        Kind::Reply,
        Kind::PrePrepare,
        Kind::Prepare,
        Kind::Commit,
        Kind::Checkpoint,
        Kind::ViewChange,
        Kind::NewView,
    ];

    #[test]
    fn arbitrary_bytes_never_panic_and_never_open() {
        let net = Net::new();
        let mut rng = XorShift::new(0x5eed_cb04);
        for _ in 0..200_000 {
            // Mostly short strings, some up to a few KiB.
            let len = if rng.below(16) == 0 { rng.below(4096) } else { rng.below(96) };
            let bytes = rng.bytes(len);
            assert_eq!(open_everything(&bytes, &net), 0, "{}", hex::encode(&bytes));
            let kind = KINDS[rng.below(KINDS.len())];
            decode_body(kind, &bytes, &net);
        }
    }

    #[test]
    fn every_truncation_of_a_valid_message_fails_cleanly() {
        let net = Net::new();
        let mut messages: Vec<Vec<u8>> = sealed_samples(&net).into_iter().map(|(_, bytes)| bytes).collect();
        messages.push(encode(&PeerRequest::Requests(vec![digest(1), digest(2)])));
        messages.push(encode(&PeerRequest::Deliver(vec![SignedBytes(messages[0].clone())])));
        messages.push(encode(&PeerRequest::State { proof: vec![SignedBytes(vec![1, 2])], state: vec![3] }));
        messages.push(encode(&PeerRequest::Status(Status { view: 1, changing: false, executed: 70, stable: 64 })));
        messages.push(encode(&PeerRequest::Replies { request: digest(3) }));
        messages.push(encode(&PeerResponse::Replies(vec![SignedBytes(vec![1, 2, 3])])));
        for bytes in &messages {
            for len in 0..bytes.len() {
                let cut = &bytes[..len];
                assert_eq!(open_everything(cut, &net), 0);
                assert!(decode::<PeerRequest>(cut, ENVELOPE_BYTES_MAX).is_err());
                assert!(decode::<PeerResponse>(cut, ENVELOPE_BYTES_MAX).is_err());
            }
        }
        for (kind, bytes) in sealed_samples(&net) {
            let env: Envelope = decode(&bytes, ENVELOPE_BYTES_MAX).unwrap();
            assert!(decode_body(kind, &env.body, &net));
            for len in 0..env.body.len() {
                assert!(!decode_body(kind, &env.body[..len], &net));
            }
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic() {
        let net = Net::new();
        let mut rng = XorShift::new(7);
        let samples = sealed_samples(&net);
        let bodies: Vec<(Kind, Vec<u8>)> = samples
            .iter()
            .map(|(k, b)| {
                let env: Envelope = decode(b, ENVELOPE_BYTES_MAX).unwrap();
                (*k, env.body)
            })
            .collect();
        for _ in 0..20_000 {
            let (kind, body) = &bodies[rng.below(bodies.len())];
            let mut m = body.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                m[i] = rng.next_u64() as u8;
            }
            if rng.below(4) == 0 {
                m.truncate(rng.below(m.len() + 1));
            }
            // A mutation may still decode (a changed number, say); it must
            // simply not panic, here or in the signature check below.
            decode_body(*kind, &m, &net);
            let (_, env) = &samples[rng.below(samples.len())];
            let mut e = env.clone();
            let i = rng.below(e.len());
            e[i] ^= 1 + rng.below(255) as u8;
            assert_eq!(open_everything(&e, &net), 0);
        }
    }
}
