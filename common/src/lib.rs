//! Shared vocabulary of Auto-DevOps: what a record is, how it travels, how it is identified.
//!
//! Data path: node-agent collectors build [`model`] records, [`codec`] packs them into
//! compact columnar batches, [`dict`] names their series by connection-local ids on the
//! wire, [`wire`] frames them for the QUIC streams, and the aggregator runs the same code
//! in reverse. [`pki`] makes the development certificates and reads a
//! node's name back out of its certificate.
//!
//! Invariant: this crate does no I/O and has no async runtime. Every decoder is
//! bounds-checked and returns a typed error on hostile input; none panics or allocates
//! more than its input justifies.
#![warn(missing_docs)]

pub mod codec;
pub mod dict;
pub mod model;
pub mod pki;
pub mod wire;
