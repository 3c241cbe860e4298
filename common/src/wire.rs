//! The wire protocol between node agent and aggregator: versioned, length-prefixed
//! postcard frames on QUIC streams. See docs/wire.md.
//!
//! One bidirectional stream per connection carries, in order:
//! agent → `Hello`; aggregator → `HelloAck` or `Reject`; then agent → `Batch`...,
//! aggregator → `Ack`/`Nack` per batch once the batch is durable (or refused).
//!
//! A frame is `u32 little-endian length` then that many bytes of postcard-encoded
//! [`Frame`]. Lengths above [`MAX_FRAME_LEN`] are refused before any allocation.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of this protocol: 2 adds the connection-scoped series dictionary
/// (`crate::dict`, codec format 2). The agent says the highest it speaks; the aggregator
/// answers the version the connection uses (`HelloAck::protocol_version`).
pub const PROTOCOL_VERSION: u16 = 2;

/// Oldest version the aggregator still accepts. A protocol-1 connection carries only
/// self-contained (format 1) payloads.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// First version whose batches may use the connection form (codec format 2).
pub const DICTIONARY_VERSION: u16 = 2;

/// Largest frame accepted, in bytes (payload after the 4-byte length prefix).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// ALPN token of the protocol on QUIC.
pub const ALPN: &[u8] = b"autodevops/1";

/// The agent's opening frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u16,
    /// Node name; must equal the name in the agent's client certificate.
    pub node: String,
    /// The agent's version string.
    pub agent_version: String,
    /// `/proc/sys/kernel/random/boot_id` of the host.
    pub boot_id: String,
    /// Random id of this agent run; `(node, session, seq)` names every batch.
    pub session: u64,
    /// Collectors that are running, and disabled ones with why (`name` or `name:off:reason`).
    pub capabilities: Vec<String>,
}

/// The aggregator's answer to an accepted [`Hello`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version this connection speaks: the lower of the agent's and the aggregator's.
    pub protocol_version: u16,
    /// Highest seq of this session already durable, if any: the agent may forget up to it.
    pub durable_through: Option<u64>,
}

/// One batch of records: a codec payload, self-contained ([`crate::codec::encode_batch`])
/// or, on a protocol-2 connection, in the connection form ([`crate::dict::SenderDict`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchFrame {
    /// Node the records belong to; must equal the certificate's node name.
    pub node: String,
    /// Agent run that produced the batch.
    pub session: u64,
    /// Position in the session, from 1 upward, no reuse.
    pub seq: u64,
    /// Encoded batch.
    pub payload: Vec<u8>,
}

/// Everything that travels on the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Agent → aggregator, first frame.
    Hello(Hello),
    /// Aggregator → agent: accepted.
    HelloAck(HelloAck),
    /// Aggregator → agent: refused; the connection closes after this.
    Reject {
        /// Why, for the agent's log.
        reason: String,
    },
    /// Agent → aggregator: records.
    Batch(BatchFrame),
    /// Aggregator → agent: this batch is durable (or was already); forget it.
    Ack {
        /// Session of the batch.
        session: u64,
        /// Seq of the batch.
        seq: u64,
    },
    /// Aggregator → agent: this batch can never be accepted (undecodable); drop and count it.
    Nack {
        /// Session of the batch.
        session: u64,
        /// Seq of the batch.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Error, PartialEq)]
pub enum WireError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame body is not a valid postcard [`Frame`].
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a frame with its length prefix.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    // Serialising our own in-memory enum into a Vec cannot fail.
    let body = postcard::to_allocvec(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one frame from the front of `buf`.
///
/// `Ok(None)`: not enough bytes yet (read more and call again). `Ok(Some((frame, used)))`:
/// a frame and how many bytes of `buf` it took. `Err`: the stream is corrupt; close it.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (frame, rest) = postcard::take_from_bytes::<Frame>(body)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes after frame",
            rest.len()
        )));
    }
    Ok(Some((frame, 4 + len)))
}

/// The announced body length of the frame at the front of `buf`, once its prefix is there.
/// Lets a reader size its read without trusting more than [`MAX_FRAME_LEN`].
pub fn peek_frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node: "n1".into(),
            agent_version: "0.1.0".into(),
            boot_id: "b".into(),
            session: 7,
            capabilities: vec!["host".into()],
        })
    }

    #[test]
    fn round_trip_every_kind() {
        let frames = vec![
            hello(),
            Frame::HelloAck(HelloAck {
                protocol_version: 1,
                durable_through: Some(3),
            }),
            Frame::Reject {
                reason: "no".into(),
            },
            Frame::Batch(BatchFrame {
                node: "n".into(),
                session: 1,
                seq: 2,
                payload: vec![1, 2, 3],
            }),
            Frame::Ack { session: 1, seq: 2 },
            Frame::Nack {
                session: 1,
                seq: 2,
                reason: "bad".into(),
            },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend(encode_frame(f));
        }
        let mut pos = 0;
        for f in &frames {
            let (got, used) = decode_frame(&stream[pos..]).unwrap().unwrap();
            assert_eq!(&got, f);
            pos += used;
        }
        assert_eq!(pos, stream.len());
    }

    #[test]
    fn truncated_is_incomplete_never_error() {
        let bytes = encode_frame(&hello());
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_refused_before_allocation() {
        let mut bytes = (u32::MAX).to_le_bytes().to_vec();
        bytes.extend([0u8; 8]);
        assert!(matches!(
            decode_frame(&bytes),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_garbage_in_body_refused() {
        let mut bytes = encode_frame(&Frame::Ack { session: 1, seq: 1 });
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(decode_frame(&bytes), Err(WireError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn hostile_body_with_valid_prefix_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
            bytes.extend(&body);
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn batch_frames_round_trip(node in "[a-z0-9-]{1,20}", session: u64, seq: u64,
                                   payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let f = Frame::Batch(BatchFrame { node, session, seq, payload });
            let bytes = encode_frame(&f);
            let (got, used) = decode_frame(&bytes).unwrap().unwrap();
            prop_assert_eq!(got, f);
            prop_assert_eq!(used, bytes.len());
        }
    }
}
