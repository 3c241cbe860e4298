//! The online driver: a tokio task that polls the store through SQL, feeds the graph and
//! the correlator, and runs RCA for new or grown incidents.
//!
//! Every `interval` (default 5 s): new anomalies (by timestamp watermark, re-reading an
//! overlap and dropping what was already taken, so rows that arrive a little late are not
//! lost) go through [`Correlator::handle_anomaly`], then [`Correlator::handle_timeout`];
//! every `graph_refresh` the service graph is rebuilt from the last `graph_window` of
//! `tcp_connections`; then up to `max_rca_per_tick` incidents whose revision moved get a
//! fresh RCA. At start, [`Driver::replay`] runs the anomalies of the last `replay`
//! through the same state machine, with each anomaly's timestamp as `now`, so the
//! incidents are rebuilt the same way every time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde_json::json;
use thiserror::Error;
use tokio::sync::watch;

use super::component::{self, component, component_of_series};
use super::graph::{self, ConnObservation, GraphLimits, ServiceGraph, Side};
use super::hub::{Hub, RcaCandidate, RcaInputCounts, RcaResult, StreamMessage, incident_summary};
use super::incidents::{Anomaly, Incident, Status};
use super::rca_bridge::{
    CallEdge, EvidenceEvent, OnsetRule, RcaInput, SeriesData, exhaustion_kind, incident_onset,
    rca_nodes, run_rca, shared_anomalies,
};
use crate::store::Store;

/// Driver settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// How often to poll.
    pub interval: Duration,
    /// Anomalies replayed at start, ms back from now.
    pub replay_ms: i64,
    /// Anomalies re-read behind the watermark each poll, ms.
    pub overlap_ms: i64,
    /// Anomalies read per poll at most.
    pub max_anomalies_per_tick: usize,
    /// `tcp_connections` looked at for the graph, ms back from now.
    pub graph_window_ms: i64,
    /// Rebuild the graph at most this often, ms.
    pub graph_refresh_ms: i64,
    /// Bounds of the graph.
    pub graph_limits: GraphLimits,
    /// RCA baseline before the first anomaly, ms.
    pub rca_lookback_ms: i64,
    /// RCA window at most, ms.
    pub max_rca_window_ms: i64,
    /// Series handed to RCA at most.
    pub max_rca_series: usize,
    /// RCAs per poll at most (the rest wait for the next poll).
    pub max_rca_per_tick: usize,
    /// An open incident's RCA is recomputed at least this often, ms, even when no new
    /// anomaly joined it: its series keep arriving, and a young incident's first
    /// ranking is made from a few seconds of data.
    pub rca_refresh_ms: i64,
    /// The RCA's anomalous period starts this long before the incident's onset (the
    /// root turns a little before the detectors fire); the data before is the
    /// baseline. The onset is the first major burst of the incident's anomalies that
    /// are not shared by every node ([`super::rca_bridge::incident_onset`]), not its
    /// first anomaly, which on a busy machine is often noise from before the fault.
    /// Change-point onset detection is not used online: over a young incident's few
    /// minutes of data, start-up transients would win it.
    pub rca_onset_lead_ms: i64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            interval: Duration::from_secs(5),
            replay_ms: 6 * 3_600_000,
            overlap_ms: 120_000,
            max_anomalies_per_tick: 20_000,
            graph_window_ms: 3_600_000,
            graph_refresh_ms: 30_000,
            graph_limits: GraphLimits::default(),
            rca_lookback_ms: 600_000,
            max_rca_window_ms: 6 * 3_600_000,
            max_rca_series: 1_500,
            max_rca_per_tick: 4,
            rca_refresh_ms: 5_000,
            rca_onset_lead_ms: 5_000,
        }
    }
}

/// Driver failures (one poll's; the task logs them and polls again).
#[derive(Debug, Error)]
pub enum DriverError {
    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] DataFusionError),
    /// A result column had an unexpected type.
    #[error("unexpected result column: {0}")]
    Arrow(#[from] ArrowError),
    /// A result column is missing.
    #[error("result has no column {0:?}")]
    MissingColumn(String),
    /// A blocking task failed.
    #[error("background task failed: {0}")]
    Task(String),
}

/// What one poll did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// New anomalies taken.
    pub anomalies: usize,
    /// Incident events (opened, updated, resolved).
    pub incident_events: usize,
    /// RCAs computed.
    pub rcas: usize,
    /// Whether the graph was rebuilt.
    pub graph_rebuilt: bool,
}

type AnomalyKey = (i64, String, String, String, String, String);

/// The driver. [`Driver::run`] is the task; [`Driver::replay`] and [`Driver::tick`] are
/// its steps, public so tests can drive it with their own `now`.
pub struct Driver {
    store: Store,
    hub: Hub,
    cfg: DriverConfig,
    watermark: Option<i64>,
    seen: BTreeSet<AnomalyKey>,
    last_graph_ms: Option<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Driver {
    /// A driver over `store` publishing into `hub`.
    pub fn new(store: Store, hub: Hub, cfg: DriverConfig) -> Self {
        Driver {
            store,
            hub,
            cfg,
            watermark: None,
            seen: BTreeSet::new(),
            last_graph_ms: None,
        }
    }

    /// Replays, then polls every `interval` until `shutdown` fires.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        match self.replay(now_ms()).await {
            Ok(n) => tracing::info!(anomalies = n, "correlation: replayed stored anomalies"),
            Err(e) => tracing::warn!(error = %e, "correlation: replay failed; starting empty"),
        }
        self.hub.lock().ready = true;
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            match self.tick(now_ms()).await {
                Ok(r) => {
                    failing = false;
                    if r.anomalies > 0 || r.incident_events > 0 || r.rcas > 0 {
                        tracing::debug!(
                            anomalies = r.anomalies,
                            incident_events = r.incident_events,
                            rcas = r.rcas,
                            graph_rebuilt = r.graph_rebuilt,
                            "correlation poll"
                        );
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "correlation poll failed; will retry");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn context(&self) -> Result<SessionContext, DriverError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.session_context())
            .await
            .map_err(|e| DriverError::Task(e.to_string()))?
            .map_err(DriverError::Query)
    }

    /// Rebuilds the incidents from the stored anomalies of the last `replay_ms`.
    /// Deterministic: each anomaly's own timestamp is its `now`.
    pub async fn replay(&mut self, now: i64) -> Result<usize, DriverError> {
        let ctx = self.context().await?;
        self.refresh_graph(&ctx, now).await?;
        let from = now - self.cfg.replay_ms;
        let mut total = 0;
        let mut cursor = from;
        loop {
            let batch = load_anomalies(&ctx, cursor, self.cfg.max_anomalies_per_tick).await?;
            let n = batch.len();
            let mut fresh = Vec::new();
            for a in batch {
                cursor = cursor.max(a.ts_ms);
                if self.seen.insert(key(&a)) {
                    fresh.push(a);
                }
            }
            {
                let mut st = self.hub.lock();
                for a in &fresh {
                    st.correlator.handle_timeout(a.ts_ms);
                    st.correlator.handle_anomaly(a.ts_ms, a);
                    st.anomalies_seen += 1;
                }
                st.correlator.handle_timeout(now);
                while st.correlator.poll_event().is_some() {}
            }
            total += fresh.len();
            self.watermark = Some(cursor);
            if n < self.cfg.max_anomalies_per_tick || fresh.is_empty() {
                break;
            }
        }
        self.prune_seen();
        Ok(total)
    }

    /// One poll at time `now`.
    pub async fn tick(&mut self, now: i64) -> Result<TickReport, DriverError> {
        let mut report = TickReport::default();
        let ctx = self.context().await?;
        if self
            .last_graph_ms
            .is_none_or(|t| now - t >= self.cfg.graph_refresh_ms || now < t)
        {
            self.refresh_graph(&ctx, now).await?;
            report.graph_rebuilt = true;
        }
        let from = match self.watermark {
            Some(w) => w - self.cfg.overlap_ms,
            None => now - self.cfg.replay_ms,
        };
        let batch = load_anomalies(&ctx, from, self.cfg.max_anomalies_per_tick).await?;
        let mut fresh = Vec::new();
        for a in batch {
            self.watermark = Some(self.watermark.map_or(a.ts_ms, |w| w.max(a.ts_ms)));
            if self.seen.insert(key(&a)) {
                fresh.push(a);
            }
        }
        self.prune_seen();
        report.anomalies = fresh.len();
        let mut messages = Vec::new();
        {
            let mut st = self.hub.lock();
            for a in &fresh {
                st.correlator.handle_anomaly(now, a);
                st.anomalies_seen += 1;
                messages.push(StreamMessage {
                    event: "anomaly",
                    data: json!(a),
                });
            }
            st.correlator.handle_timeout(now);
            while let Some(ev) = st.correlator.poll_event() {
                report.incident_events += 1;
                if let Some(inc) = st.correlator.get(&ev.id) {
                    let mut data = incident_summary(inc, st.rca.get(&ev.id));
                    if let serde_json::Value::Object(m) = &mut data {
                        m.insert("change".into(), json!(ev.kind.as_str()));
                        m.insert("at_ms".into(), json!(ev.at_ms));
                    }
                    messages.push(StreamMessage {
                        event: "incident",
                        data,
                    });
                }
            }
        }
        for m in messages {
            self.hub.publish(m);
        }
        report.rcas = self.run_pending_rca(&ctx, now).await?;
        Ok(report)
    }

    fn prune_seen(&mut self) {
        if let Some(w) = self.watermark {
            let floor = w - self.cfg.overlap_ms;
            self.seen.retain(|k| k.0 >= floor);
        }
    }

    async fn refresh_graph(&mut self, ctx: &SessionContext, now: i64) -> Result<(), DriverError> {
        let g = load_graph(
            ctx,
            now - self.cfg.graph_window_ms,
            None,
            self.cfg.graph_limits,
        )
        .await?;
        let mut st = self.hub.lock();
        st.correlator.set_graph(g.pairs());
        st.graph = g;
        st.graph_at_ms = Some(now);
        self.last_graph_ms = Some(now);
        Ok(())
    }

    /// RCA for incidents whose revision moved since their last RCA: open ones first, then
    /// the most recently updated.
    async fn run_pending_rca(
        &mut self,
        ctx: &SessionContext,
        now: i64,
    ) -> Result<usize, DriverError> {
        let (pending, graph) = {
            let st = self.hub.lock();
            // Moved since the last RCA (or never ranked); else open and due a refresh.
            let moved = |i: &Incident| st.rca.get(&i.id).is_none_or(|r| r.revision != i.revision);
            let due = |i: &Incident| {
                i.status == Status::Open
                    && st.rca.get(&i.id).is_some_and(|r| {
                        now - r.computed_at_ms >= self.cfg.rca_refresh_ms || now < r.computed_at_ms
                    })
            };
            let mut pending: Vec<Incident> = st
                .correlator
                .incidents()
                .filter(|i| moved(i) || due(i))
                .cloned()
                .collect();
            pending.sort_by(|a, b| {
                (!moved(a))
                    .cmp(&!moved(b))
                    .then((a.status != Status::Open).cmp(&(b.status != Status::Open)))
                    .then(b.updated_at_ms.cmp(&a.updated_at_ms))
            });
            pending.truncate(self.cfg.max_rca_per_tick);
            (pending, Arc::new(st.graph.clone()))
        };
        let mut done = 0;
        for inc in pending {
            let started = Instant::now();
            let end = match inc.resolved_at_ms {
                Some(r) => r.min(now).max(inc.last_anomaly_ms),
                None => now.max(inc.last_anomaly_ms),
            };
            let start = (inc.first_anomaly_ms - self.cfg.rca_lookback_ms)
                .max(end - self.cfg.max_rca_window_ms);
            let (mut input, incident_onset) =
                build_rca_input(ctx, &inc, &graph, start, end, self.cfg.max_rca_series).await?;
            let onset = (incident_onset.unwrap_or(inc.first_anomaly_ms)
                - self.cfg.rca_onset_lead_ms)
                .clamp(start, end);
            input.window = Some((onset, end));
            let counts = RcaInputCounts {
                series: input.series.len(),
                events: input.events.len(),
                edges: input.edges.len(),
                from_ms: start,
                to_ms: end,
            };
            let ranking = tokio::task::spawn_blocking(move || run_rca(&input))
                .await
                .map_err(|e| DriverError::Task(e.to_string()))?;
            let value = serde_json::to_value(&ranking).unwrap_or_default();
            let candidates: Vec<RcaCandidate> = value
                .get("ranking")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let result = RcaResult {
                ranking: candidates,
                onset_ms: ranking.onset_ms,
                computed_at_ms: now,
                duration_ms: started.elapsed().as_millis() as u64,
                components_considered: ranking.components_considered,
                inputs: counts,
                revision: inc.revision,
            };
            tracing::info!(
                incident = %inc.id,
                top = result.ranking.first().map(|c| c.target.as_str()).unwrap_or("-"),
                series = counts.series,
                events = counts.events,
                edges = counts.edges,
                duration_ms = result.duration_ms,
                "RCA computed"
            );
            let mut st = self.hub.lock();
            if st.correlator.get(&inc.id).is_some() {
                st.rca.insert(inc.id.clone(), result);
            }
            let live: BTreeSet<String> = st.correlator.incidents().map(|i| i.id.clone()).collect();
            st.rca.retain(|id, _| live.contains(id));
            done += 1;
        }
        Ok(done)
    }
}

fn key(a: &Anomaly) -> AnomalyKey {
    (
        a.ts_ms,
        a.node.clone(),
        a.entity.clone(),
        a.metric.clone(),
        a.labels.clone(),
        a.detector.clone(),
    )
}

/// SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs a query and collects it.
pub async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, DriverError> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Typed access to result columns (any string/dictionary/int/timestamp type is cast).
pub struct Columns<'a>(pub &'a RecordBatch);

impl Columns<'_> {
    fn column(&self, name: &str, to: &DataType) -> Result<Arc<dyn Array>, DriverError> {
        let col = self
            .0
            .column_by_name(name)
            .ok_or_else(|| DriverError::MissingColumn(name.to_string()))?;
        Ok(cast(col, to)?)
    }

    /// Strings (nulls stay `None`).
    pub fn strings(&self, name: &str) -> Result<Vec<Option<String>>, DriverError> {
        let col = self.column(name, &DataType::Utf8)?;
        let arr = col
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DriverError::MissingColumn(name.to_string()))?;
        Ok(arr.iter().map(|v| v.map(str::to_string)).collect())
    }

    /// Integers (timestamps as their ms, whatever their unit: `date_bin` answers in
    /// nanoseconds even over a millisecond column).
    pub fn ints(&self, name: &str) -> Result<Vec<Option<i64>>, DriverError> {
        let raw = self
            .0
            .column_by_name(name)
            .ok_or_else(|| DriverError::MissingColumn(name.to_string()))?;
        let col = match raw.data_type() {
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Millisecond => {
                cast(raw, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?
            }
            _ => raw.clone(),
        };
        let col = cast(&col, &DataType::Int64)?;
        let arr = col
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DriverError::MissingColumn(name.to_string()))?;
        Ok(arr.iter().collect())
    }

    /// Floats.
    pub fn floats(&self, name: &str) -> Result<Vec<Option<f64>>, DriverError> {
        let col = self.column(name, &DataType::Float64)?;
        let arr = col
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DriverError::MissingColumn(name.to_string()))?;
        Ok(arr.iter().collect())
    }
}

/// Anomalies with `ts >= from_ms`, oldest first, at most `limit`.
pub async fn load_anomalies(
    ctx: &SessionContext,
    from_ms: i64,
    limit: usize,
) -> Result<Vec<Anomaly>, DriverError> {
    let sql = format!(
        "SELECT ts, node, entity, metric, labels, score, value, expected, detector, severity, explanation \
         FROM anomalies WHERE ts >= to_timestamp_millis({from_ms}) \
         ORDER BY ts, node, entity, metric LIMIT {limit}"
    );
    let mut out = Vec::new();
    for b in collect(ctx, &sql).await? {
        push_anomaly_rows(&b, &mut out)?;
    }
    Ok(out)
}

/// Appends the rows of an `anomalies` query result (the columns `load_anomalies` selects)
/// as [`Anomaly`]s; rows without a time, node or entity are skipped.
fn push_anomaly_rows(b: &RecordBatch, out: &mut Vec<Anomaly>) -> Result<(), DriverError> {
    let c = Columns(b);
    let (ts, node, entity, metric, labels) = (
        c.ints("ts")?,
        c.strings("node")?,
        c.strings("entity")?,
        c.strings("metric")?,
        c.strings("labels")?,
    );
    let (score, value, expected) = (
        c.floats("score")?,
        c.floats("value")?,
        c.floats("expected")?,
    );
    let (detector, severity, explanation) = (
        c.strings("detector")?,
        c.strings("severity")?,
        c.strings("explanation")?,
    );
    for i in 0..b.num_rows() {
        let (Some(ts), Some(node), Some(entity)) = (ts[i], node[i].clone(), entity[i].clone())
        else {
            continue;
        };
        let labels = labels[i].clone().unwrap_or_default();
        out.push(Anomaly {
            ts_ms: ts,
            component: component_of_series(&node, &entity, &labels),
            node,
            entity,
            metric: metric[i].clone().unwrap_or_default(),
            labels,
            score: score[i].unwrap_or(0.0),
            value: value[i].unwrap_or(f64::NAN),
            expected: expected[i].unwrap_or(f64::NAN),
            detector: detector[i].clone().unwrap_or_default(),
            severity: severity[i].clone().unwrap_or_default(),
            explanation: explanation[i].clone().unwrap_or_default(),
        });
    }
    Ok(())
}

/// Rows aggregated into graph observations at most.
const MAX_OBSERVATIONS: usize = 200_000;

/// The service graph over `tcp_connections` rows in `[since_ms, until_ms)`.
pub async fn load_graph(
    ctx: &SessionContext,
    since_ms: i64,
    until_ms: Option<i64>,
    limits: GraphLimits,
) -> Result<ServiceGraph, DriverError> {
    let until = until_ms
        .map(|u| format!(" AND ts < to_timestamp_millis({u})"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT node, comm, cgroup, pod_uid, container_id, side, saddr, lport, daddr, rport, \
           sum(is_connect) AS connects, sum(is_close) AS closes, sum(is_error) AS errors, \
           sum(is_reset) AS resets, sum(retx) AS retransmits, sum(lat) AS lat_sum, \
           count(lat) AS lat_n, min(ts) AS first_ts, max(ts) AS last_ts \
         FROM ( \
           SELECT ts, node, comm, cgroup, pod_uid, container_id, \
             CASE WHEN direction IN ('in', 'accept', 'incoming') THEN 'accept' ELSE 'connect' END AS side, \
             coalesce(saddr, '') AS saddr, \
             CASE WHEN direction IN ('in', 'accept', 'incoming') THEN sport ELSE CAST(NULL AS BIGINT) END AS lport, \
             coalesce(daddr, '') AS daddr, \
             CASE WHEN direction IN ('in', 'accept', 'incoming') THEN CAST(NULL AS BIGINT) ELSE dport END AS rport, \
             CASE WHEN kind = 'tcp.connect' THEN 1 ELSE 0 END AS is_connect, \
             CASE WHEN kind = 'tcp.close' THEN 1 ELSE 0 END AS is_close, \
             CASE WHEN kind = 'tcp.connect' AND coalesce(result, 'ok') <> 'ok' THEN 1 ELSE 0 END AS is_error, \
             CASE WHEN coalesce(reset, 'none') NOT IN ('none', '', 'false', '0') THEN 1 ELSE 0 END AS is_reset, \
             coalesce(retransmits, 0) AS retx, \
             connect_latency_us AS lat \
           FROM tcp_connections \
           WHERE ts >= to_timestamp_millis({since_ms}){until} \
             AND coalesce(direction, 'out') <> 'unknown' \
         ) t \
         GROUP BY node, comm, cgroup, pod_uid, container_id, side, saddr, lport, daddr, rport \
         LIMIT {MAX_OBSERVATIONS}"
    );
    let mut obs = Vec::new();
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        let (node, comm, cgroup, pod, ctr, side) = (
            c.strings("node")?,
            c.strings("comm")?,
            c.strings("cgroup")?,
            c.strings("pod_uid")?,
            c.strings("container_id")?,
            c.strings("side")?,
        );
        let (saddr, lport, daddr, rport) = (
            c.strings("saddr")?,
            c.ints("lport")?,
            c.strings("daddr")?,
            c.ints("rport")?,
        );
        let (connects, closes, errors, resets, retx) = (
            c.ints("connects")?,
            c.ints("closes")?,
            c.ints("errors")?,
            c.ints("resets")?,
            c.ints("retransmits")?,
        );
        let (lat_sum, lat_n, first, last) = (
            c.floats("lat_sum")?,
            c.ints("lat_n")?,
            c.ints("first_ts")?,
            c.ints("last_ts")?,
        );
        let u = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        for i in 0..b.num_rows() {
            let Some(n) = node[i].clone() else { continue };
            obs.push(ConnObservation {
                component: component(
                    &n,
                    comm[i].as_deref(),
                    cgroup[i].as_deref(),
                    pod[i].as_deref(),
                    ctr[i].as_deref(),
                ),
                node: n,
                side: if side[i].as_deref() == Some("accept") {
                    Side::Accept
                } else {
                    Side::Connect
                },
                local_addr: saddr[i].clone().unwrap_or_default(),
                local_port: lport[i],
                remote_addr: daddr[i].clone().unwrap_or_default(),
                remote_port: rport[i],
                connects: u(connects[i]),
                closes: u(closes[i]),
                errors: u(errors[i]),
                resets: u(resets[i]),
                retransmits: u(retx[i]),
                latency_sum_us: lat_sum[i].unwrap_or(0.0),
                latency_n: u(lat_n[i]),
                first_ms: first[i].unwrap_or(0),
                last_ms: last[i].unwrap_or(0),
            });
        }
    }
    Ok(graph::build(&obs, limits))
}

/// The far ends of TCP rows, resolved to components through the service graph's edges
/// (the server addresses each edge was seen calling).
struct PeerIndex {
    /// (caller, `addr:port`) -> callee.
    by_caller: BTreeMap<(String, String), String>,
    /// `addr:port` -> callee, whoever called it (a single callee only).
    by_addr: BTreeMap<String, Option<String>>,
    /// (callee, caller's address) -> the caller, when only one caller has that address.
    callers: BTreeMap<(String, String), Option<String>>,
}

impl PeerIndex {
    fn new(graph: &ServiceGraph) -> PeerIndex {
        let mut by_caller = BTreeMap::new();
        let mut by_addr: BTreeMap<String, Option<String>> = BTreeMap::new();
        // Component -> the addresses it was seen listening on.
        let mut listens: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for e in &graph.edges {
            for a in &e.addresses {
                by_caller.insert((e.caller.clone(), a.clone()), e.callee.clone());
                by_addr
                    .entry(a.clone())
                    .and_modify(|c| {
                        if c.as_deref() != Some(e.callee.as_str()) {
                            *c = None;
                        }
                    })
                    .or_insert_with(|| Some(e.callee.clone()));
                if let Some((ip, _)) = a.rsplit_once(':') {
                    listens.entry(e.callee.as_str()).or_default().insert(ip);
                }
            }
        }
        let mut callers: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
        for e in &graph.edges {
            for ip in listens.get(e.caller.as_str()).into_iter().flatten() {
                callers
                    .entry((e.callee.clone(), (*ip).to_string()))
                    .and_modify(|c| {
                        if c.as_deref() != Some(e.caller.as_str()) {
                            *c = None;
                        }
                    })
                    .or_insert_with(|| Some(e.caller.clone()));
            }
        }
        PeerIndex {
            by_caller,
            by_addr,
            callers,
        }
    }

    /// The callee `caller` reached at `addr:port`.
    fn callee_at(&self, caller: &str, addr: &str, port: i64) -> Option<String> {
        let a = format!("{addr}:{port}");
        self.by_caller
            .get(&(caller.to_string(), a.clone()))
            .cloned()
            .or_else(|| self.by_addr.get(&a).cloned().flatten())
            .filter(|c| c != caller)
    }

    /// The caller of `callee` that connected from `addr`.
    fn caller_at(&self, callee: &str, addr: &str) -> Option<String> {
        self.callers
            .get(&(callee.to_string(), addr.to_string()))
            .cloned()
            .flatten()
            .filter(|c| c != callee)
    }
}

/// Sample metrics handed to RCA: store name → (RCA metric name, combine by max instead of
/// sum across the processes of a component).
const RCA_METRICS: &[(&str, &str, bool)] = &[
    ("proc.cpu_pct", "cpu_pct", false),
    ("proc.rss_bytes", "rss_bytes", false),
    ("proc.read_bytes_per_s", "io_read_bytes_per_s", false),
    ("proc.write_bytes_per_s", "io_write_bytes_per_s", false),
    ("proc.fds", "fds", false),
    ("proc.threads", "threads", false),
    ("cpu.usage_pct", "cpu_pct", true),
    ("cpu.iowait_pct", "cpu_iowait_pct", true),
    ("mem.used_pct", "mem_used_pct", true),
    ("load.1m", "load_1m", true),
    ("psi.cpu.some_avg10", "psi_cpu_some_pct", true),
    ("psi.memory.some_avg10", "psi_memory_some_pct", true),
    ("psi.io.some_avg10", "psi_io_some_pct", true),
    ("cgroup.cpu_pct", "cgroup_cpu_pct", true),
    ("cgroup.cpu_throttled_pct", "cgroup_cpu_throttled_pct", true),
    ("cgroup.mem_usage_bytes", "cgroup_mem_bytes", true),
    // Error lines per interval of a log the agent attributed to a process.
    ("log.errors", "log_errors", false),
    (
        "cgroup.io_read_bytes_per_s",
        "cgroup_io_read_bytes_per_s",
        true,
    ),
    (
        "cgroup.io_write_bytes_per_s",
        "cgroup_io_write_bytes_per_s",
        true,
    ),
];

/// Bucket width for a window: about 240 points, whole seconds, at least 1 s. Fine enough
/// that the baseline before a young incident holds the RCA engine's 10 points.
fn step_for(start: i64, end: i64) -> i64 {
    (((end - start) / 240).max(1_000) / 1000) * 1000
}

/// Builds the RCA input of one incident over `[start, end]` on its nodes and the nodes
/// of its components' call-graph neighbours (symptoms travel along the graph, so the
/// cause may sit one hop away on a node where nothing was flagged yet). Also returns
/// the incident's onset ([`incident_onset`]), `None` without anomalies.
pub async fn build_rca_input(
    ctx: &SessionContext,
    inc: &Incident,
    graph: &ServiceGraph,
    start: i64,
    end: i64,
    max_series: usize,
) -> Result<(RcaInput, Option<i64>), DriverError> {
    let step = step_for(start, end);
    let pairs: Vec<(&str, &str)> = graph.pairs().collect();
    let node_set: BTreeSet<String> = rca_nodes(
        inc.nodes.iter().map(String::as_str),
        &inc.components,
        &pairs,
        MAX_RCA_NODES,
    )
    .into_iter()
    .collect();
    let nodes: Vec<String> = node_set.iter().map(|n| sql_str(n)).collect();
    let node_list = if nodes.is_empty() {
        "''".to_string()
    } else {
        nodes.join(", ")
    };
    let window = format!(
        "ts >= to_timestamp_millis({start}) AND ts <= to_timestamp_millis({end}) AND node IN ({node_list})"
    );
    let metric_list = RCA_METRICS
        .iter()
        .map(|(m, _, _)| sql_str(m))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT node, entity, labels, metric, b, avg(value) AS v FROM ( \
           SELECT node, entity, labels, metric, value, \
             date_bin(INTERVAL '{step} milliseconds', ts) AS b \
           FROM samples WHERE {window} AND metric IN ({metric_list}) \
             AND (entity = 'host' OR entity LIKE 'process/%' OR entity LIKE 'cgroup/%' \
               OR entity LIKE 'log/%') \
         ) t GROUP BY node, entity, labels, metric, b LIMIT 2000000"
    );
    // (component, metric) -> bucket -> (value, is_max)
    let mut series: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
    let batches = collect(ctx, &sql).await?;
    // A cgroup that holds the processes of exactly one component (a systemd service,
    // the harness's `ado-scenario/<node>/<service>`) is that component: its cgroup
    // series and anomalies count for it, not for the host.
    let mut cgroups = CgroupOwners::default();
    for b in &batches {
        let c = Columns(b);
        let (node, entity, labels) = (
            c.strings("node")?,
            c.strings("entity")?,
            c.strings("labels")?,
        );
        for i in 0..b.num_rows() {
            if let (Some(node), Some(entity), Some(labels)) = (
                node[i].as_deref(),
                entity[i].as_deref(),
                labels[i].as_deref(),
            ) {
                cgroups.observe(node, entity, labels);
            }
        }
    }
    // (component, metric, bucket) per entity first: sum over processes, max for the rest.
    for b in &batches {
        let c = Columns(b);
        let (node, entity, labels, metric, bucket, v) = (
            c.strings("node")?,
            c.strings("entity")?,
            c.strings("labels")?,
            c.strings("metric")?,
            c.ints("b")?,
            c.floats("v")?,
        );
        for i in 0..b.num_rows() {
            let (Some(node), Some(entity), Some(metric), Some(bucket), Some(v)) = (
                node[i].as_deref(),
                entity[i].as_deref(),
                metric[i].as_deref(),
                bucket[i],
                v[i],
            ) else {
                continue;
            };
            if !v.is_finite() {
                continue;
            }
            let Some((_, name, use_max)) = RCA_METRICS.iter().find(|(m, _, _)| *m == metric) else {
                continue;
            };
            let comp = cgroups.component(node, entity, labels[i].as_deref().unwrap_or(""));
            if entity.starts_with("cgroup/")
                && !matches!(component::kind_of(&comp), "pod" | "container" | "process")
            {
                continue;
            }
            // A log nobody was named for says nothing about the host as a whole.
            if entity.starts_with("log/") && component::kind_of(&comp) == "host" {
                continue;
            }
            let slot = series
                .entry((comp, name.to_string()))
                .or_default()
                .entry(bucket)
                .or_insert(if *use_max { f64::MIN } else { 0.0 });
            if *use_max {
                *slot = slot.max(v);
            } else {
                *slot += v;
            }
        }
    }

    // TCP health per component, as series. Failures are put down to the end that caused
    // them, not the one that saw them: a connect refused, or an outgoing connection
    // reset, is the callee's doing (nothing listens, or the process went away with
    // connections open), so it counts for the callee the graph resolves the address to;
    // a reset on an accepted connection is the caller's (it went away), so it counts for
    // the caller whose address it came from. What cannot be resolved stays with the
    // component that saw it, as a symptom.
    let peers = PeerIndex::new(graph);
    let sql = format!(
        "SELECT node, comm, cgroup, pod_uid, container_id, b, side, daddr, dport, \
           sum(coalesce(retransmits, 0)) AS retx, \
           sum(CASE WHEN coalesce(reset, 'none') NOT IN ('none', '', 'false', '0') THEN 1 ELSE 0 END) AS resets, \
           sum(CASE WHEN kind = 'tcp.connect' AND result = 'refused' THEN 1 ELSE 0 END) AS refused, \
           sum(CASE WHEN kind = 'tcp.connect' AND coalesce(result, 'ok') NOT IN ('ok', 'refused') THEN 1 ELSE 0 END) AS errors, \
           avg(CAST(connect_latency_us AS DOUBLE)) AS lat \
         FROM (SELECT *, date_bin(INTERVAL '{step} milliseconds', ts) AS b, \
             CASE WHEN direction IN ('in', 'accept', 'incoming') THEN 'accept' ELSE 'connect' END AS side \
           FROM tcp_connections WHERE {window}) t \
         GROUP BY node, comm, cgroup, pod_uid, container_id, b, side, daddr, dport LIMIT 500000"
    );
    let mut tcp_components: BTreeSet<String> = BTreeSet::new();
    // Refused connects as events too: a crash loop refuses in short bursts between
    // restarts, which a series' sustained-deviation rule would not count.
    let mut refusals: Vec<EvidenceEvent> = Vec::new();
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        let (node, comm, cgroup, pod, ctr, bucket) = (
            c.strings("node")?,
            c.strings("comm")?,
            c.strings("cgroup")?,
            c.strings("pod_uid")?,
            c.strings("container_id")?,
            c.ints("b")?,
        );
        let (side, daddr, dport) = (c.strings("side")?, c.strings("daddr")?, c.ints("dport")?);
        let (retx, resets, refused, errors, lat) = (
            c.ints("retx")?,
            c.ints("resets")?,
            c.ints("refused")?,
            c.ints("errors")?,
            c.floats("lat")?,
        );
        for i in 0..b.num_rows() {
            let (Some(node), Some(bucket)) = (node[i].as_deref(), bucket[i]) else {
                continue;
            };
            let comp = component(
                node,
                comm[i].as_deref(),
                cgroup[i].as_deref(),
                pod[i].as_deref(),
                ctr[i].as_deref(),
            );
            tcp_components.insert(comp.clone());
            let accept = side[i].as_deref() == Some("accept");
            let remote = daddr[i].as_deref().unwrap_or("");
            // Who the failures on these rows point at.
            let peer = if accept {
                peers.caller_at(&comp, remote)
            } else {
                dport[i].and_then(|p| peers.callee_at(&comp, remote, p))
            };
            let mut add = |comp: &str, name: &str, v: f64| {
                *series
                    .entry((comp.to_string(), name.to_string()))
                    .or_default()
                    .entry(bucket)
                    .or_insert(0.0) += v;
            };
            let count = |v: Option<i64>| v.unwrap_or(0).max(0) as f64;
            add(&comp, "tcp_retransmits", count(retx[i]));
            if let Some(l) = lat[i].filter(|v| v.is_finite()) {
                add(&comp, "conn_latency_us", l);
            }
            let (resets, refused, failed) = (count(resets[i]), count(refused[i]), count(errors[i]));
            match &peer {
                Some(p) => {
                    tcp_components.insert(p.clone());
                    add(p, "conn_reset_errors", resets);
                    if !accept {
                        add(p, "conn_failures", failed);
                        add(p, "conn_refused", refused);
                        if refused > 0.0 {
                            refusals.push(EvidenceEvent {
                                component: p.clone(),
                                ts_ms: bucket,
                                kind: "conn_refused".to_string(),
                                detail: format!("{refused} connects from {comp} refused"),
                                score: 0.9,
                            });
                        }
                    }
                    // The observer's own series exist (zero) so it is not judged on a gap.
                    add(&comp, "conn_reset_errors", 0.0);
                }
                None => {
                    add(&comp, "conn_reset_errors", resets);
                    add(&comp, "conn_failures", refused + failed);
                }
            }
        }
    }
    // Zero-filled from each series' first bucket with a row (not from the window's start,
    // when the component may not have existed yet: a run of made-up zeros before it
    // would make its everyday resets look like an incident).
    for comp in &tcp_components {
        for name in [
            "tcp_retransmits",
            "conn_reset_errors",
            "conn_failures",
            "conn_refused",
        ] {
            let Some(s) = series.get_mut(&(comp.clone(), name.to_string())) else {
                continue;
            };
            let Some(mut t) = s.keys().next().copied() else {
                continue;
            };
            while t <= end {
                s.entry(t).or_insert(0.0);
                t += step;
            }
        }
    }

    // Events: OOM kills, crashes, restarts; the incident's anomalies.
    let sql = format!(
        "SELECT ts, node, kind, comm, cgroup, pod_uid, container_id, exit_code, signal, message \
         FROM process_events WHERE {window} AND (kind IN ('oom.kill', 'process.exec') \
           OR (kind = 'process.exit' AND (coalesce(exit_code, 0) <> 0 OR coalesce(signal, 0) <> 0))) \
         ORDER BY ts LIMIT 20000"
    );
    let mut events = refusals;
    let mut crashed: BTreeSet<String> = BTreeSet::new();
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        let (ts, node, kind, comm, cgroup, pod, ctr) = (
            c.ints("ts")?,
            c.strings("node")?,
            c.strings("kind")?,
            c.strings("comm")?,
            c.strings("cgroup")?,
            c.strings("pod_uid")?,
            c.strings("container_id")?,
        );
        let (exit_code, signal, message) = (
            c.ints("exit_code")?,
            c.ints("signal")?,
            c.strings("message")?,
        );
        for i in 0..b.num_rows() {
            let (Some(ts), Some(node), Some(kind)) =
                (ts[i], node[i].as_deref(), kind[i].as_deref())
            else {
                continue;
            };
            let comp = component(
                node,
                comm[i].as_deref(),
                cgroup[i].as_deref(),
                pod[i].as_deref(),
                ctr[i].as_deref(),
            );
            let detail = message[i].clone().unwrap_or_default();
            let ev = match kind {
                "oom.kill" => Some(("oom_kill", 1.0)),
                "process.exit" => {
                    let sig = signal[i].unwrap_or(0);
                    let score = match sig {
                        4 | 6 | 7 | 8 | 11 => 0.9,
                        9 => 0.7,
                        0 if exit_code[i].unwrap_or(0) != 0 => 0.6,
                        _ => 0.5,
                    };
                    Some(("crash", score))
                }
                "process.exec" if crashed.contains(&comp) => Some(("restart", 0.5)),
                _ => None,
            };
            if let Some((k, score)) = ev {
                if k != "restart" {
                    crashed.insert(comp.clone());
                }
                events.push(EvidenceEvent {
                    component: comp,
                    ts_ms: ts,
                    kind: k.to_string(),
                    detail,
                    score,
                });
            }
        }
    }
    // Anomalies shared by several nodes at once (judged over every node's anomalies in
    // the window, not only the incident's) are the machine's, not a candidate's: they
    // neither set the onset nor count as evidence.
    let sql = format!(
        "SELECT ts, node, entity, metric, labels, score, value, expected, detector, severity, explanation \
         FROM anomalies \
         WHERE ts >= to_timestamp_millis({start}) AND ts <= to_timestamp_millis({end}) \
         ORDER BY ts LIMIT 50000"
    );
    let mut all: Vec<Anomaly> = Vec::new();
    for b in collect(ctx, &sql).await? {
        push_anomaly_rows(&b, &mut all)?;
    }
    // Evidence: every unshared anomaly on the RCA's nodes in the window, not only the
    // incident's (the incident may have been opened by one node's noise while the
    // fault's anomalies joined another), and the incident's own if the table read was cut.
    let shared = shared_anomalies(&all);
    let shared_keys: BTreeSet<AnomalyKeyRef> = shared
        .iter()
        .filter_map(|&i| all.get(i).map(key_ref))
        .collect();
    let mut own_keys: BTreeSet<AnomalyKeyRef> = BTreeSet::new();
    let own: Vec<Anomaly> = all
        .iter()
        .enumerate()
        .filter(|(i, a)| !shared.contains(i) && node_set.contains(&a.node))
        .map(|(_, a)| a)
        .chain(inc.anomalies.iter())
        .filter(|a| !shared_keys.contains(&key_ref(a)) && own_keys.insert(key_ref(a)))
        .map(|a| Anomaly {
            component: cgroups.component(&a.node, &a.entity, &a.labels),
            ..a.clone()
        })
        .collect();
    let onset = incident_onset(&own, &BTreeSet::new(), OnsetRule::default());
    for a in &own {
        let m = a.metric.to_ascii_lowercase();
        // Below what the detector expected: fewer log lines, less CPU, fewer writes (a
        // service that gets fewer requests because something upstream of it failed).
        let low = a.value.is_finite() && a.expected.is_finite() && a.value < a.expected;
        let kind = if low {
            "anomaly_low"
        } else if m.contains("error") || a.detector.contains("burst") {
            "error_burst"
        } else {
            "anomaly"
        };
        events.push(EvidenceEvent {
            component: a.component.clone(),
            ts_ms: a.ts_ms,
            kind: kind.to_string(),
            // The metric first: the engine classifies an anomaly by the first word.
            detail: format!("{} on {} {}: {}", a.metric, a.node, a.entity, a.explanation),
            score: a.score,
        });
        if let Some(kind) = exhaustion_kind(&a.explanation) {
            events.push(EvidenceEvent {
                component: a.component.clone(),
                ts_ms: a.ts_ms,
                kind: kind.to_string(),
                detail: format!("its log says so: {}", a.explanation),
                score: a.score,
            });
        }
    }

    // Bounded series: the incident's components first, then their graph neighbours, then
    // the rest.
    let neighbours: BTreeSet<&str> = graph
        .pairs()
        .filter_map(|(a, b)| {
            if inc.components.contains(a) {
                Some(b)
            } else if inc.components.contains(b) {
                Some(a)
            } else {
                None
            }
        })
        .collect();
    let mut out: Vec<(u8, SeriesData)> = series
        .into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .map(|((comp, metric), pts)| {
            let prio = if inc.components.contains(&comp) {
                0
            } else if neighbours.contains(comp.as_str()) {
                1
            } else if comp.starts_with("host@") {
                2
            } else {
                3
            };
            (
                prio,
                SeriesData {
                    component: comp,
                    metric,
                    points: pts.into_iter().collect(),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.component.cmp(&b.1.component))
            .then_with(|| a.1.metric.cmp(&b.1.metric))
    });
    out.truncate(max_series);
    let series: Vec<SeriesData> = out.into_iter().map(|(_, s)| s).collect();
    let present: BTreeSet<&str> = series
        .iter()
        .map(|s| s.component.as_str())
        .chain(inc.components.iter().map(String::as_str))
        .chain(events.iter().map(|e| e.component.as_str()))
        .collect();
    let edges: Vec<CallEdge> = graph
        .pairs()
        .filter(|(a, b)| present.contains(a) || present.contains(b))
        .take(5_000)
        .map(|(a, b)| CallEdge {
            caller: a.to_string(),
            callee: b.to_string(),
        })
        .collect();
    Ok((
        RcaInput {
            series,
            edges,
            window: None,
            events,
        },
        onset,
    ))
}

/// Nodes an incident's RCA input covers at most ([`rca_nodes`]).
const MAX_RCA_NODES: usize = 32;

/// `(ts, node, entity, metric, labels)` of an anomaly.
type AnomalyKeyRef = (i64, String, String, String, String);

fn key_ref(a: &Anomaly) -> AnomalyKeyRef {
    (
        a.ts_ms,
        a.node.clone(),
        a.entity.clone(),
        a.metric.clone(),
        a.labels.clone(),
    )
}

/// Which component owns each cgroup, learned from the processes' `cgroup=` labels.
#[derive(Default)]
struct CgroupOwners {
    /// (node, cgroup path) -> the one component seen in it, `None` once two were.
    owners: BTreeMap<(String, String), Option<String>>,
}

impl CgroupOwners {
    fn observe(&mut self, node: &str, entity: &str, labels: &str) {
        if !entity.starts_with("process/") {
            return;
        }
        let Some(cg) = component::label(labels, "cgroup") else {
            return;
        };
        let comp = component_of_series(node, entity, labels);
        if component::kind_of(&comp) != "process" {
            return;
        }
        self.owners
            .entry((node.to_string(), cg.trim_start_matches('/').to_string()))
            .and_modify(|o| {
                if o.as_deref() != Some(comp.as_str()) {
                    *o = None;
                }
            })
            .or_insert(Some(comp));
    }

    /// The component of a series: a process-owned cgroup's owner, else the usual rule.
    fn component(&self, node: &str, entity: &str, labels: &str) -> String {
        let usual = component_of_series(node, entity, labels);
        if component::kind_of(&usual) != "host" {
            return usual;
        }
        entity
            .strip_prefix("cgroup/")
            .and_then(|p| {
                self.owners
                    .get(&(node.to_string(), p.trim_start_matches('/').to_string()))
            })
            .cloned()
            .flatten()
            .unwrap_or(usual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(caller: &str, callee: &str, addr: &str) -> super::graph::Edge {
        super::graph::Edge {
            caller: caller.into(),
            callee: callee.into(),
            connections: 1,
            connects: 1,
            closes: 1,
            errors: 0,
            resets: 0,
            retransmits: 0,
            mean_connect_latency_us: None,
            first_seen_ms: 0,
            last_seen_ms: 0,
            resolved_by: "listener",
            addresses: vec![addr.into()],
        }
    }

    #[test]
    fn tcp_failures_are_put_down_to_the_far_end() {
        let g = ServiceGraph {
            edges: vec![
                edge("frontend@n1", "checkout@n2", "10.0.0.12:8100"),
                edge("checkout@n2", "payments@n3", "10.0.0.13:8100"),
                edge("payments@n3", "ledger@n2", "10.0.0.12:8101"),
            ],
            ..ServiceGraph::default()
        };
        let p = PeerIndex::new(&g);
        // A refused or reset outgoing connection: the callee listening there.
        assert_eq!(
            p.callee_at("frontend@n1", "10.0.0.12", 8100).as_deref(),
            Some("checkout@n2")
        );
        // Another caller reaching the same address resolves too; unknown ports do not.
        assert_eq!(
            p.callee_at("host@n1", "10.0.0.12", 8101).as_deref(),
            Some("ledger@n2")
        );
        assert_eq!(p.callee_at("frontend@n1", "10.0.0.12", 9999), None);
        // A reset on an accepted connection: the caller that listens on that address.
        assert_eq!(
            p.caller_at("payments@n3", "10.0.0.12").as_deref(),
            Some("checkout@n2")
        );
        // frontend never listens anywhere: its address is unknown.
        assert_eq!(p.caller_at("checkout@n2", "10.0.0.11"), None);
    }

    /// `date_bin` over a millisecond column answers nanoseconds; buckets must still come
    /// out in ms, the unit of every other time the RCA input holds.
    #[tokio::test]
    async fn buckets_come_out_in_milliseconds() {
        let ctx = SessionContext::new();
        let batches = collect(
            &ctx,
            "SELECT date_bin(INTERVAL '1000 milliseconds', to_timestamp_millis(1796117561500)) AS b, \
               to_timestamp_millis(1796117561500) AS t, CAST(7 AS BIGINT) AS n",
        )
        .await
        .expect("query");
        let c = Columns(&batches[0]);
        assert_eq!(c.ints("b").expect("b"), vec![Some(1_796_117_561_000)]);
        assert_eq!(c.ints("t").expect("t"), vec![Some(1_796_117_561_500)]);
        assert_eq!(c.ints("n").expect("n"), vec![Some(7)]);
    }

    #[test]
    fn buckets_scale_with_the_window() {
        assert_eq!(step_for(0, 600_000), 2_000);
        assert_eq!(step_for(0, 3_600_000), 15_000);
        assert_eq!(step_for(0, 0), 1_000);
    }
}
