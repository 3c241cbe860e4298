//! The aggregator: receives node records over QUIC, keeps them durable, answers SQL.
//!
//! Data path, one module each: [`ingest`] (QUIC + mutual TLS) → [`wal`] (group-committed
//! write-ahead log) → [`store`] (hot Arrow, Parquet partitions, manifest) → [`query`]
//! (DataFusion SQL) → [`api`] (HTTP). `main.rs` only wires them.

pub mod api;
pub mod correlate;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod rca;
pub mod store;
pub mod wal;
