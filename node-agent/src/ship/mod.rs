//! Shipping: from collected values to batches acked by the aggregator.
//!
//! Data path: collect → **ship**: [`batcher`] groups a few intervals of values into one
//! [`common::model::Batch`] and encodes it; [`outbox`] holds encoded batches until the
//! aggregator acks them (bounded; oldest shed first, counted); [`client`] drives the QUIC
//! connection: hello, resend-from-resume-point, pipelined batches, acks, backoff.
//!
//! The outbox is in memory for now; its interface (push / next to send / ack / reset)
//! is what the crash-safe on-disk spool will implement.

pub mod batcher;
pub mod client;
pub mod outbox;
pub mod spool;
pub mod tls;
