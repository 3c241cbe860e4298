//! Correlation of anomalies into incidents: a sans-IO state machine (quinn-proto style).
//!
//! Feed it with [`Correlator::handle_anomaly`] and [`Correlator::handle_timeout`], both
//! taking the current time as a parameter (no clock is read here), and drain what
//! happened with [`Correlator::poll_event`].
//!
//! Rules:
//! - an anomaly joins an open incident when it is within `window_ms` of the incident's
//!   anomalies (at most `window_ms` after its last one and not more than `window_ms` before
//!   its first) **and** it is related: same component, same node, or a component adjacent
//!   in the service graph ([`Correlator::set_graph`]) to one of the incident's components;
//! - when several open incidents qualify, the one updated last wins (ties: smaller id);
//!   incidents are never merged;
//! - otherwise it opens a new incident;
//! - an open incident with no new anomaly for `quiet_ms` (by the `now` of the calls)
//!   resolves; a later related anomaly opens a new one;
//! - bounds: `max_open` open incidents (opening one more resolves the one updated longest
//!   ago, with reason `evicted`), `max_anomalies` anomalies kept per incident (the rest are
//!   counted), `max_kept` incidents remembered in all (oldest resolved ones forgotten
//!   first), `max_events` events queued (oldest dropped and counted).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

/// One anomaly, as the correlator sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Anomaly {
    /// When it was detected (node clock), ms.
    pub ts_ms: i64,
    /// Node.
    pub node: String,
    /// Entity (`process/<pid>`, `host`, ...).
    pub entity: String,
    /// Metric.
    pub metric: String,
    /// Labels text.
    pub labels: String,
    /// Component name ([`super::component`]).
    pub component: String,
    /// Score 0..=1.
    pub score: f64,
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Detector.
    pub detector: String,
    /// Severity.
    pub severity: String,
    /// Explanation.
    pub explanation: String,
}

/// Settings.
#[derive(Clone, Copy, Debug)]
pub struct CorrelatorConfig {
    /// An anomaly joins an incident within this of its anomalies, ms.
    pub window_ms: i64,
    /// An incident resolves after this long without a new anomaly, ms.
    pub quiet_ms: i64,
    /// Open incidents at most.
    pub max_open: usize,
    /// Anomalies kept per incident.
    pub max_anomalies: usize,
    /// Incidents remembered (open and resolved).
    pub max_kept: usize,
    /// Events queued until polled.
    pub max_events: usize,
}

impl Default for CorrelatorConfig {
    fn default() -> Self {
        CorrelatorConfig {
            window_ms: 60_000,
            quiet_ms: 120_000,
            max_open: 256,
            max_anomalies: 200,
            max_kept: 1_000,
            max_events: 10_000,
        }
    }
}

/// Lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still receiving anomalies (or within its quiet period).
    Open,
    /// Quiet for the configured period, or evicted.
    Resolved,
}

impl Status {
    /// `open` / `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Resolved => "resolved",
        }
    }
}

/// One incident.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    /// Stable id (derived from the first anomaly, so a replay gives the same ids).
    pub id: String,
    /// State.
    pub status: Status,
    /// `now` when it opened, ms.
    pub opened_at_ms: i64,
    /// `now` of its last change, ms.
    pub updated_at_ms: i64,
    /// `now` when it resolved, ms.
    pub resolved_at_ms: Option<i64>,
    /// Why it resolved: `quiet` or `evicted`.
    pub resolved_reason: Option<&'static str>,
    /// Earliest anomaly timestamp, ms.
    pub first_anomaly_ms: i64,
    /// Latest anomaly timestamp, ms.
    pub last_anomaly_ms: i64,
    /// Nodes involved.
    pub nodes: BTreeSet<String>,
    /// Components involved.
    pub components: BTreeSet<String>,
    /// Anomalies joined, kept or not.
    pub anomaly_count: u64,
    /// The first `max_anomalies` anomalies.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies counted but not kept.
    pub dropped_anomalies: u64,
    /// Bumped on every change: a consumer redoes its work (RCA) when this moves.
    pub revision: u64,
}

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new incident.
    Opened,
    /// An incident got another anomaly.
    Updated,
    /// An incident resolved.
    Resolved,
}

impl EventKind {
    /// `opened` / `updated` / `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::Resolved => "resolved",
        }
    }
}

/// One change, to be polled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IncidentEvent {
    /// What happened.
    pub kind: EventKind,
    /// To which incident.
    pub id: String,
    /// `now` of the change, ms.
    pub at_ms: i64,
}

/// The state machine.
#[derive(Debug)]
pub struct Correlator {
    cfg: CorrelatorConfig,
    incidents: BTreeMap<String, Incident>,
    /// Ids in opening order (for forgetting the oldest).
    order: VecDeque<String>,
    neighbors: BTreeMap<String, BTreeSet<String>>,
    events: VecDeque<IncidentEvent>,
    dropped_events: u64,
}

impl Correlator {
    /// An empty correlator.
    pub fn new(cfg: CorrelatorConfig) -> Self {
        Correlator {
            cfg,
            incidents: BTreeMap::new(),
            order: VecDeque::new(),
            neighbors: BTreeMap::new(),
            events: VecDeque::new(),
            dropped_events: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CorrelatorConfig {
        &self.cfg
    }

    /// Replaces the service graph used for adjacency (caller, callee pairs; direction is
    /// ignored).
    pub fn set_graph<'a>(&mut self, edges: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.neighbors.clear();
        for (a, b) in edges {
            self.neighbors
                .entry(a.to_string())
                .or_default()
                .insert(b.to_string());
            self.neighbors
                .entry(b.to_string())
                .or_default()
                .insert(a.to_string());
        }
    }

    /// Takes one anomaly at time `now_ms`.
    pub fn handle_anomaly(&mut self, now_ms: i64, a: &Anomaly) {
        let window = self.cfg.window_ms;
        let neighbors = self.neighbors.get(&a.component);
        let best = self
            .incidents
            .values()
            .filter(|i| i.status == Status::Open)
            .filter(|i| {
                a.ts_ms <= i.last_anomaly_ms + window && a.ts_ms >= i.first_anomaly_ms - window
            })
            .filter(|i| {
                i.components.contains(&a.component)
                    || i.nodes.contains(&a.node)
                    || neighbors.is_some_and(|n| n.iter().any(|c| i.components.contains(c)))
            })
            .max_by(|x, y| {
                x.updated_at_ms
                    .cmp(&y.updated_at_ms)
                    .then_with(|| y.id.cmp(&x.id))
            })
            .map(|i| i.id.clone());
        match best {
            Some(id) => {
                let max_anomalies = self.cfg.max_anomalies;
                if let Some(inc) = self.incidents.get_mut(&id) {
                    inc.updated_at_ms = inc.updated_at_ms.max(now_ms);
                    inc.first_anomaly_ms = inc.first_anomaly_ms.min(a.ts_ms);
                    inc.last_anomaly_ms = inc.last_anomaly_ms.max(a.ts_ms);
                    inc.nodes.insert(a.node.clone());
                    inc.components.insert(a.component.clone());
                    inc.anomaly_count += 1;
                    if inc.anomalies.len() < max_anomalies {
                        inc.anomalies.push(a.clone());
                    } else {
                        inc.dropped_anomalies += 1;
                    }
                    inc.revision += 1;
                }
                self.push_event(EventKind::Updated, id, now_ms);
            }
            None => self.open(now_ms, a),
        }
    }

    fn open(&mut self, now_ms: i64, a: &Anomaly) {
        let open: Vec<(i64, String)> = self
            .incidents
            .values()
            .filter(|i| i.status == Status::Open)
            .map(|i| (i.updated_at_ms, i.id.clone()))
            .collect();
        if open.len() >= self.cfg.max_open.max(1)
            && let Some((_, oldest)) = open.into_iter().min()
        {
            self.resolve(&oldest, now_ms, "evicted");
        }
        let base = format!(
            "inc-{}-{:06x}",
            a.ts_ms,
            fnv1a(&[&a.node, &a.component, &a.metric]) & 0xff_ffff
        );
        let mut id = base.clone();
        let mut n = 1;
        while self.incidents.contains_key(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        let inc = Incident {
            id: id.clone(),
            status: Status::Open,
            opened_at_ms: now_ms,
            updated_at_ms: now_ms,
            resolved_at_ms: None,
            resolved_reason: None,
            first_anomaly_ms: a.ts_ms,
            last_anomaly_ms: a.ts_ms,
            nodes: BTreeSet::from([a.node.clone()]),
            components: BTreeSet::from([a.component.clone()]),
            anomaly_count: 1,
            anomalies: if self.cfg.max_anomalies > 0 {
                vec![a.clone()]
            } else {
                Vec::new()
            },
            dropped_anomalies: u64::from(self.cfg.max_anomalies == 0),
            revision: 1,
        };
        self.incidents.insert(id.clone(), inc);
        self.order.push_back(id.clone());
        self.push_event(EventKind::Opened, id, now_ms);
        self.forget_old();
    }

    /// Resolves incidents quiet for `quiet_ms` as of `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        let due: Vec<String> = self
            .incidents
            .values()
            .filter(|i| i.status == Status::Open && now_ms >= i.updated_at_ms + self.cfg.quiet_ms)
            .map(|i| i.id.clone())
            .collect();
        for id in due {
            self.resolve(&id, now_ms, "quiet");
        }
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.incidents
            .values()
            .filter(|i| i.status == Status::Open)
            .map(|i| i.updated_at_ms + self.cfg.quiet_ms)
            .min()
    }

    /// The next change, oldest first.
    pub fn poll_event(&mut self) -> Option<IncidentEvent> {
        self.events.pop_front()
    }

    /// Events dropped because nobody polled them in time.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// One incident.
    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    /// Every remembered incident, by id.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    /// Open incidents.
    pub fn open_count(&self) -> usize {
        self.incidents
            .values()
            .filter(|i| i.status == Status::Open)
            .count()
    }

    fn resolve(&mut self, id: &str, now_ms: i64, reason: &'static str) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        if inc.status != Status::Open {
            return;
        }
        inc.status = Status::Resolved;
        inc.resolved_at_ms = Some(now_ms);
        inc.resolved_reason = Some(reason);
        inc.updated_at_ms = inc.updated_at_ms.max(now_ms);
        inc.revision += 1;
        self.push_event(EventKind::Resolved, id.to_string(), now_ms);
        self.forget_old();
    }

    fn forget_old(&mut self) {
        while self.incidents.len() > self.cfg.max_kept.max(1) {
            let Some(pos) = self.order.iter().position(|id| {
                self.incidents
                    .get(id)
                    .is_none_or(|i| i.status == Status::Resolved)
            }) else {
                break;
            };
            if let Some(id) = self.order.remove(pos) {
                self.incidents.remove(&id);
            }
        }
    }

    fn push_event(&mut self, kind: EventKind, id: String, at_ms: i64) {
        if self.events.len() >= self.cfg.max_events.max(1) {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(IncidentEvent { kind, id, at_ms });
    }
}

/// FNV-1a over the parts (with a separator), for stable short ids.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn an(ts_s: i64, node: &str, component: &str) -> Anomaly {
        Anomaly {
            ts_ms: ts_s * 1000,
            node: node.into(),
            entity: "process/1".into(),
            metric: "proc.cpu_pct".into(),
            labels: String::new(),
            component: component.into(),
            score: 0.9,
            value: 99.0,
            expected: 5.0,
            detector: "ewma".into(),
            severity: "warning".into(),
            explanation: String::new(),
        }
    }

    /// Steps of a script: `A(ts, node, component)` feeds an anomaly at now = ts;
    /// `T(now)` a timeout.
    enum Step {
        A(i64, &'static str, &'static str),
        T(i64),
    }

    fn run(
        cfg: CorrelatorConfig,
        graph: &[(&str, &str)],
        steps: &[Step],
    ) -> (Correlator, Vec<(EventKind, String)>) {
        let mut c = Correlator::new(cfg);
        c.set_graph(graph.iter().copied());
        let mut events = Vec::new();
        for s in steps {
            match *s {
                Step::A(ts, node, comp) => c.handle_anomaly(ts * 1000, &an(ts, node, comp)),
                Step::T(now) => c.handle_timeout(now * 1000),
            }
            while let Some(e) = c.poll_event() {
                events.push((e.kind, e.id));
            }
        }
        (c, events)
    }

    fn kinds(events: &[(EventKind, String)]) -> Vec<EventKind> {
        events.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn grouping_follows_time_node_and_graph() {
        use EventKind::*;
        use Step::*;
        let graph = [("checkout@n1", "payments@n2")];
        // (name, steps, expected event kinds, expected incidents at the end)
        let cases: Vec<(&str, Vec<Step>, Vec<EventKind>, usize)> = vec![
            (
                "same node, close in time: one incident",
                vec![A(0, "n1", "a@n1"), A(30, "n1", "b@n1")],
                vec![Opened, Updated],
                1,
            ),
            (
                "graph neighbours on other nodes join",
                vec![A(0, "n1", "checkout@n1"), A(20, "n2", "payments@n2")],
                vec![Opened, Updated],
                1,
            ),
            (
                "unrelated nodes stay apart",
                vec![A(0, "n1", "a@n1"), A(10, "n3", "z@n3")],
                vec![Opened, Opened],
                2,
            ),
            (
                "too far apart in time: two incidents",
                vec![A(0, "n1", "a@n1"), A(61, "n1", "a@n1")],
                vec![Opened, Opened],
                2,
            ),
            (
                "window counts from the last anomaly",
                vec![
                    A(0, "n1", "a@n1"),
                    A(50, "n1", "a@n1"),
                    A(100, "n1", "a@n1"),
                ],
                vec![Opened, Updated, Updated],
                1,
            ),
            (
                "quiet period resolves, a later anomaly opens a new one",
                vec![A(0, "n1", "a@n1"), T(119), T(120), A(125, "n1", "a@n1")],
                vec![Opened, Resolved, Opened],
                2,
            ),
        ];
        for (name, steps, want, n) in cases {
            let (c, events) = run(CorrelatorConfig::default(), &graph, &steps);
            assert_eq!(kinds(&events), want, "{name}");
            assert_eq!(c.incidents().count(), n, "{name}");
        }
    }

    #[test]
    fn incidents_record_what_joined_them() {
        use Step::*;
        let (c, events) = run(
            CorrelatorConfig::default(),
            &[("checkout@n1", "payments@n2")],
            &[
                A(10, "n1", "checkout@n1"),
                A(5, "n2", "payments@n2"),
                A(40, "n1", "checkout@n1"),
                T(200),
            ],
        );
        let inc = c.get(&events[0].1).unwrap();
        assert_eq!(inc.status, Status::Resolved);
        assert_eq!(inc.first_anomaly_ms, 5_000);
        assert_eq!(inc.last_anomaly_ms, 40_000);
        assert_eq!(inc.opened_at_ms, 10_000);
        assert_eq!(inc.resolved_at_ms, Some(200_000));
        assert_eq!(inc.resolved_reason, Some("quiet"));
        assert_eq!(inc.anomaly_count, 3);
        assert_eq!(inc.nodes.iter().collect::<Vec<_>>(), vec!["n1", "n2"]);
        assert_eq!(inc.revision, 4);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn bounds_hold() {
        use Step::*;
        let cfg = CorrelatorConfig {
            max_open: 2,
            max_anomalies: 3,
            max_kept: 4,
            max_events: 4,
            ..Default::default()
        };
        let mut steps: Vec<Step> = (0..10).map(|i| A(i, "n1", "a@n1")).collect();
        steps.extend([
            A(11, "n2", "b@n2"),
            A(12, "n3", "c@n3"),
            A(13, "n4", "d@n4"),
        ]);
        let (c, _) = run(cfg, &[], &steps);
        assert_eq!(c.open_count(), 2);
        assert_eq!(c.incidents().count(), 4);
        let first = c
            .incidents()
            .find(|i| i.anomaly_count == 10)
            .expect("the first incident is still remembered");
        assert_eq!(first.anomalies.len(), 3);
        assert_eq!(first.dropped_anomalies, 7);
        assert_eq!(first.resolved_reason, Some("evicted"));
        let (c, _) = run(CorrelatorConfig { max_kept: 3, ..cfg }, &[], &steps);
        assert_eq!(
            c.incidents().count(),
            3,
            "the oldest resolved one is forgotten"
        );
        assert!(c.incidents().all(|i| i.anomaly_count == 1));
        let mut c2 = Correlator::new(cfg);
        for i in 0..10 {
            c2.handle_anomaly(i, &an(i * 100, &format!("n{i}"), "x"));
        }
        assert!(c2.dropped_events() > 0);
        let mut n = 0;
        while c2.poll_event().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn replay_is_deterministic() {
        use Step::*;
        let steps = || {
            vec![
                A(0, "n1", "a@n1"),
                A(3, "n2", "b@n2"),
                A(20, "n1", "c@n1"),
                T(300),
                A(400, "n2", "b@n2"),
            ]
        };
        let (a, ea) = run(CorrelatorConfig::default(), &[("a@n1", "b@n2")], &steps());
        let (b, eb) = run(CorrelatorConfig::default(), &[("a@n1", "b@n2")], &steps());
        assert_eq!(ea, eb);
        assert_eq!(
            a.incidents().collect::<Vec<_>>(),
            b.incidents().collect::<Vec<_>>()
        );
        assert_eq!(a.incidents().count(), 2);
    }
}
