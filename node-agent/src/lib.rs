//! Scarlet, the node agent: samples this host and ships compact batches to the aggregator.
//!
//! Data path, one module each: [`collect`] (procfs, cgroupfs) → [`ship`] (batch, outbox,
//! QUIC client). [`run`] is the loop that joins them; [`telemetry`] serves the agent's own
//! `/metrics` and `/healthz`. `main.rs` only parses arguments.

pub mod collect;
pub mod detect;
pub mod logs;
pub mod run;
pub mod ship;
pub mod telemetry;
