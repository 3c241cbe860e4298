//! The one place that calls the RCA engine.
//!
//! TEMPORARY: until `crate::rca` is part of the crate, a stand-in with the engine's
//! fixed API that ranks nothing. Swap for `pub use crate::rca::{...}` and
//! `crate::rca::rank` once it lands.

/// Stand-in for the engine's types (same fields).
mod shim {
    use serde::Serialize;

    #[derive(Clone, Debug, PartialEq)]
    pub struct SeriesData {
        pub component: String,
        pub metric: String,
        pub points: Vec<(i64, f64)>,
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct CallEdge {
        pub caller: String,
        pub callee: String,
    }
    #[derive(Clone, Debug, PartialEq)]
    pub struct EvidenceEvent {
        pub component: String,
        pub ts_ms: i64,
        pub kind: String,
        pub detail: String,
        pub score: f64,
    }
    #[derive(Clone, Debug, Default)]
    pub struct RcaInput {
        pub series: Vec<SeriesData>,
        pub edges: Vec<CallEdge>,
        pub window: Option<(i64, i64)>,
        pub events: Vec<EvidenceEvent>,
    }
    #[derive(Clone, Debug, Default)]
    pub struct RcaConfig {}
    #[derive(Serialize, Clone, Debug)]
    pub struct Ranking {
        pub ranking: Vec<Candidate>,
        pub onset_ms: Option<i64>,
        pub components_considered: usize,
    }
    #[derive(Serialize, Clone, Debug)]
    pub struct Candidate {
        pub target: String,
        pub kind: String,
        pub score: f64,
        pub evidence: Vec<Evidence>,
        pub explanation: String,
    }
    #[derive(Serialize, Clone, Debug)]
    pub struct Evidence {
        pub series: String,
        pub at_ms: i64,
        pub value: f64,
        pub baseline: f64,
        pub deviation: f64,
        pub note: String,
    }
    pub fn rank(input: &RcaInput, _cfg: &RcaConfig) -> Ranking {
        let comps: std::collections::BTreeSet<&str> =
            input.series.iter().map(|s| s.component.as_str()).collect();
        Ranking {
            ranking: Vec::new(),
            onset_ms: None,
            components_considered: comps.len(),
        }
    }
}

pub use shim::{CallEdge, EvidenceEvent, Ranking, RcaConfig, RcaInput, SeriesData};

/// Ranks the candidate causes of one incident.
pub fn run_rca(input: &RcaInput) -> Ranking {
    shim::rank(input, &RcaConfig::default())
}
