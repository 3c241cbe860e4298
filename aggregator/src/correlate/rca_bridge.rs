//! The one place that calls the RCA engine ([`crate::rca`]).

pub use crate::rca::{CallEdge, EvidenceEvent, Ranking, RcaConfig, RcaInput, SeriesData};

/// Ranks the candidate causes of one incident.
pub fn run_rca(input: &RcaInput) -> Ranking {
    crate::rca::rank(input, &RcaConfig::default())
}
