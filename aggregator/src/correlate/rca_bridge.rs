//! The one place that calls the RCA engine ([`crate::rca`]), and the pure rules the
//! driver uses to shape an incident's RCA input: which of its anomalies are shared by
//! every node (noise of the machine, not one node's fault) and when the incident
//! really began.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::rca::{CallEdge, EvidenceEvent, Ranking, RcaConfig, RcaInput, SeriesData};

use super::component;
use super::incidents::Anomaly;

/// Ranks the candidate causes of one incident.
pub fn run_rca(input: &RcaInput) -> Ranking {
    crate::rca::rank(input, &RcaConfig::default())
}

/// Two anomalies of one node-level series on different nodes this close together are
/// one shared movement (the detectors of different nodes tick at different phases).
pub const SHARED_WITHIN_MS: i64 = 2_000;

/// Indices of the anomalies of node-level entities (the host, its disks, file systems,
/// cgroups nobody was named for: component kind `host`) whose `(entity, metric, labels)`
/// was also anomalous on another node within [`SHARED_WITHIN_MS`]. All the scenario
/// "nodes" are namespaces of one machine whose disk, load and PSI move with whatever
/// else runs on it; on a real cluster, a signal common to several nodes at once is not
/// one node's root cause either.
pub fn shared_anomalies(anoms: &[Anomaly]) -> BTreeSet<usize> {
    // (entity, metric, labels) -> (ts, node, index), the node-level anomalies.
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut by_key: BTreeMap<Key, Vec<(i64, &str, usize)>> = BTreeMap::new();
    for (i, a) in anoms.iter().enumerate() {
        if component::kind_of(&a.component) == "host" {
            by_key
                .entry((a.entity.as_str(), a.metric.as_str(), a.labels.as_str()))
                .or_default()
                .push((a.ts_ms, a.node.as_str(), i));
        }
    }
    let mut out = BTreeSet::new();
    for v in by_key.values_mut() {
        v.sort_unstable();
        for (j, &(t, node, i)) in v.iter().enumerate() {
            // Neighbours in time order: scan both ways while within the span.
            let close = |&&(u, other, _): &&(i64, &str, usize)| {
                (u - t).abs() <= SHARED_WITHIN_MS && other != node
            };
            let before = v[..j]
                .iter()
                .rev()
                .take_while(|p| t - p.0 <= SHARED_WITHIN_MS)
                .any(|p| close(&p));
            let after = v[j + 1..]
                .iter()
                .take_while(|p| p.0 - t <= SHARED_WITHIN_MS)
                .any(|p| close(&p));
            if before || after {
                out.insert(i);
            }
        }
    }
    out
}

/// Settings of [`incident_onset`].
#[derive(Clone, Copy, Debug)]
pub struct OnsetRule {
    /// A burst: anomalies within this span of its first one.
    pub burst_ms: i64,
    /// Anomalies weaker than this do not count towards a burst.
    pub min_score: f64,
    /// A burst needs this many distinct (component, metric) anomalies.
    pub min_burst: usize,
    /// The onset is the first burst at least this share of the largest one.
    pub major_share: f64,
}

impl Default for OnsetRule {
    fn default() -> Self {
        OnsetRule {
            burst_ms: 5_000,
            min_score: 0.6,
            min_burst: 3,
            major_share: 0.5,
        }
    }
}

/// When the incident began, judged by its anomalies that are not `shared`: a fault
/// shows up as a burst of anomalies on several series within seconds, while the noise
/// that often opens an incident first (a host metric of a busy machine, one process's
/// blip) comes alone. The onset is the start of the first burst that is at least
/// `major_share` of the largest; without any burst, the first unshared anomaly of at
/// least `min_score`; else the first anomaly. `None` for no anomalies.
pub fn incident_onset(anoms: &[Anomaly], shared: &BTreeSet<usize>, rule: OnsetRule) -> Option<i64> {
    let mut pts: Vec<(i64, &str, &str)> = anoms
        .iter()
        .enumerate()
        .filter(|(i, a)| !shared.contains(i) && a.score >= rule.min_score)
        .map(|(_, a)| (a.ts_ms, a.component.as_str(), a.metric.as_str()))
        .collect();
    pts.sort_unstable();
    // Size of the burst starting at each point: distinct (component, metric) pairs.
    let sizes: Vec<usize> = (0..pts.len())
        .map(|j| {
            let t = pts[j].0;
            let mut keys: Vec<(&str, &str)> = pts[j..]
                .iter()
                .take_while(|p| p.0 - t <= rule.burst_ms)
                .map(|p| (p.1, p.2))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys.len()
        })
        .collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    if largest >= rule.min_burst {
        let need = ((largest as f64 * rule.major_share).ceil() as usize).max(rule.min_burst);
        if let Some(j) = sizes.iter().position(|&s| s >= need) {
            return Some(pts[j].0);
        }
    }
    pts.first()
        .map(|p| p.0)
        .or_else(|| anoms.iter().map(|a| a.ts_ms).min())
}

/// The nodes an incident's RCA input covers: the incident's own, and those of the
/// call-graph region around what runs on them: every transitive callee (a cause sits
/// downstream of its symptoms, maybe several hops away on a node where nothing was
/// flagged yet) and the direct callers (a crash or a failing caller starves its
/// callees). Seeds are the incident's components and every graph component on its
/// nodes (an incident opened by a node's own anomalies names only `host@<node>`). At
/// most `max_nodes`, the incident's first, then nearest first.
pub fn rca_nodes<'a>(
    inc_nodes: impl IntoIterator<Item = &'a str>,
    inc_components: &BTreeSet<String>,
    pairs: &[(&'a str, &'a str)],
    max_nodes: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |n: &str, out: &mut Vec<String>| {
        if out.len() < max_nodes && !n.is_empty() && !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    };
    for n in inc_nodes {
        push(n, &mut out);
    }
    let on_incident_node =
        |c: &str| component::node_of(c).is_some_and(|n| out.iter().any(|o| o == n));
    let mut seeds: BTreeSet<&str> = BTreeSet::new();
    for &(a, b) in pairs {
        for c in [a, b] {
            if inc_components.contains(c) || on_incident_node(c) {
                seeds.insert(c);
            }
        }
    }
    // Breadth first down the call direction from the seeds, plus one hop up.
    let mut seen: BTreeSet<&str> = seeds.clone();
    let mut frontier: Vec<&str> = seeds.iter().copied().collect();
    for &(a, b) in pairs {
        if seeds.contains(b)
            && seen.insert(a)
            && let Some(n) = component::node_of(a)
        {
            push(n, &mut out);
        }
    }
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for &c in &frontier {
            if let Some(n) = component::node_of(c) {
                push(n, &mut out);
            }
            for &(a, b) in pairs {
                if a == c && seen.insert(b) {
                    next.push(b);
                }
            }
        }
        next.sort_unstable();
        frontier = next;
    }
    out
}

/// Standard messages of a resource running out (the `strerror` texts of `ENOSPC`,
/// `EDQUOT`, `ENOMEM`, `EMFILE`/`ENFILE`, and the usual runtime wordings), lower case,
/// with the evidence kind they stand for. A service that logs one of these names its
/// own resource: cause evidence, not just an error burst.
const EXHAUSTION: &[(&str, &str)] = &[
    ("no space left on device", "disk_exhausted"),
    ("enospc", "disk_exhausted"),
    ("disk quota exceeded", "disk_exhausted"),
    ("cannot allocate memory", "memory_exhausted"),
    ("out of memory", "memory_exhausted"),
    ("outofmemoryerror", "memory_exhausted"),
    ("too many open files", "fd_exhausted"),
];

/// The exhaustion kind a log text (a new template, an error line) names, if any.
pub fn exhaustion_kind(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    EXHAUSTION
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anomaly(ts_ms: i64, node: &str, entity: &str, metric: &str, score: f64) -> Anomaly {
        let labels = if entity.starts_with("process/") {
            "comm=svc".to_string()
        } else {
            String::new()
        };
        Anomaly {
            ts_ms,
            node: node.into(),
            entity: entity.into(),
            metric: metric.into(),
            component: component::component_of_series(node, entity, &labels),
            labels,
            score,
            value: 1.0,
            expected: 0.0,
            detector: "d".into(),
            severity: "warning".into(),
            explanation: String::new(),
        }
    }

    /// The shape of `chain-mem-leak-checkout`'s anomalies: the machine's load and disk
    /// on every node first, one process blip, then the fault's burst on one node.
    fn leak_run() -> Vec<Anomaly> {
        let mut v = Vec::new();
        for (dt, node) in [(0, "n1"), (60, "n2"), (80, "n3")] {
            v.push(anomaly(-8_900 + dt, node, "host", "load.15m", 1.0));
            v.push(anomaly(
                -7_900 + dt,
                node,
                "disk/vda",
                "disk.io_latency_p99_us",
                1.0,
            ));
        }
        v.push(anomaly(-7_888, "n1", "process/7", "proc.cpu_pct", 0.99));
        v.push(anomaly(-4_875, "n3", "process/9", "log.lines", 0.58));
        v.push(anomaly(
            -4_875,
            "n3",
            "process/9",
            "log.template.count",
            0.58,
        ));
        for m in ["proc.cpu_pct", "proc.rss_bytes", "proc.threads", "proc.fds"] {
            v.push(anomaly(48, "n2", "process/5", m, 1.0));
        }
        v.push(anomaly(3_048, "n2", "host", "mem.used_pct", 0.9));
        v
    }

    #[test]
    fn anomalies_on_every_node_at_once_are_shared() {
        let v = leak_run();
        let shared = shared_anomalies(&v);
        let names: Vec<(&str, &str)> = shared
            .iter()
            .map(|&i| (v[i].node.as_str(), v[i].metric.as_str()))
            .collect();
        assert_eq!(shared.len(), 6, "{names:?}");
        assert!(shared.iter().all(|&i| v[i].ts_ms < 0), "{names:?}");
        // The same host metric on one node only, or a process's, is not shared.
        assert!(!shared.iter().any(|&i| v[i].metric == "mem.used_pct"));
        assert!(!shared.iter().any(|&i| v[i].entity.starts_with("process/")));
    }

    #[test]
    fn the_onset_is_the_fault_burst_not_the_noise_before_it() {
        let v = leak_run();
        let shared = shared_anomalies(&v);
        assert_eq!(incident_onset(&v, &shared, OnsetRule::default()), Some(48));
        // Without the shared set, the machine's noise is a burst of its own and wins.
        assert_eq!(
            incident_onset(&v, &BTreeSet::new(), OnsetRule::default()),
            Some(-8_900)
        );
    }

    #[test]
    fn an_earlier_burst_of_the_same_fault_sets_the_onset() {
        // The root's burst, then a bigger cascade 8 s later: the root's counts.
        let mut v = Vec::new();
        for m in ["proc.cpu_pct", "proc.rss_bytes", "proc.threads"] {
            v.push(anomaly(0, "n3", "process/5", m, 1.0));
        }
        for (i, m) in ["proc.cpu_pct", "proc.fds", "proc.threads", "proc.rss_bytes"]
            .iter()
            .enumerate()
        {
            v.push(anomaly(8_000, "n1", &format!("process/{}", 10 + i), m, 1.0));
        }
        assert_eq!(
            incident_onset(&v, &BTreeSet::new(), OnsetRule::default()),
            Some(0)
        );
        // Lone anomalies only: the first strong one.
        let lone = vec![
            anomaly(5, "n1", "process/1", "proc.cpu_pct", 0.3),
            anomaly(9, "n1", "process/1", "proc.rss_bytes", 0.9),
        ];
        assert_eq!(
            incident_onset(&lone, &BTreeSet::new(), OnsetRule::default()),
            Some(9)
        );
        assert_eq!(
            incident_onset(&[], &BTreeSet::new(), OnsetRule::default()),
            None
        );
    }

    #[test]
    fn exhaustion_messages_name_the_resource() {
        assert_eq!(
            exhaustion_kind(
                "new log pattern: <*> ERROR cart cannot write <*>: No space left on device (os error 28)"
            ),
            Some("disk_exhausted")
        );
        assert_eq!(
            exhaustion_kind("java.lang.OutOfMemoryError: heap"),
            Some("memory_exhausted")
        );
        assert_eq!(exhaustion_kind("ERROR upstream returned 502"), None);
    }

    #[test]
    fn the_rca_covers_the_graph_region_around_the_incident() {
        // frontend@n1 -> checkout@n2 -> payments@n3 -> ledger@n4; ops@n5 -> payments@n3;
        // other@n6 stands apart.
        let pairs = [
            ("frontend@n1", "checkout@n2"),
            ("checkout@n2", "payments@n3"),
            ("payments@n3", "ledger@n4"),
            ("ops@n5", "payments@n3"),
            ("other@n6", "other2@n6"),
        ];
        let only_host: BTreeSet<String> = ["host@n1".to_string()].into();
        // An incident of n1's host alone still reaches the whole chain below frontend.
        assert_eq!(
            rca_nodes(["n1"], &only_host, &pairs, 16),
            ["n1", "n2", "n3", "n4"]
        );
        // An incident on payments: its callers one hop up (n2, n5), its callee (n4).
        let payments: BTreeSet<String> = ["payments@n3".to_string()].into();
        let mut got = rca_nodes(["n3"], &payments, &pairs, 16);
        got.sort();
        assert_eq!(got, ["n2", "n3", "n4", "n5"]);
        // Bounded.
        assert_eq!(rca_nodes(["n1"], &only_host, &pairs, 2), ["n1", "n2"]);
    }
}
