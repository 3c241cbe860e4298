//! Correlation: the service graph, anomalies grouped into incidents, and online RCA.
//!
//! Data path: after the store. [`driver`] polls the store's tables through DataFusion
//! SQL, feeds the sans-IO cores ([`graph::build`], [`incidents::Correlator`]) and runs
//! root-cause analysis ([`rca_bridge::run_rca`]) for each new or grown incident. The
//! results live in a [`Hub`] that the HTTP API reads and that broadcasts live updates.
//!
//! - `component`: how components are named (pod, container, `comm@node`, external);
//! - `graph`: who calls whom, from `tcp_connections`;
//! - `incidents`: the correlation state machine;
//! - `driver`: the tokio task and the SQL that feeds the cores;
//! - `hub`: shared, bounded state for the API (incidents, RCA, graph, live stream);
//! - `rca_bridge`: the one place that calls the RCA engine.

pub mod component;
pub mod driver;
pub mod graph;
pub mod hub;
pub mod incidents;
pub mod rca_bridge;

pub use driver::{Driver, DriverConfig, DriverError};
pub use hub::{Hub, RcaResult, StreamMessage};
