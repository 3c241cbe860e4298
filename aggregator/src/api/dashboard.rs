//! Dashboard reads: `GET /api/v1/nodes`, `/services`, `/graph`, `/series`.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use datafusion::prelude::SessionContext;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, bad_request, error, list_response, now_ms, page, sql_string, time_range};
use crate::correlate::component::{self, component_of_series};
use crate::correlate::driver::{Columns, DriverError, collect, load_graph};
use crate::correlate::graph::GraphLimits;
use crate::correlate::incidents::Status;
use crate::store::Store;

/// A node is `up` when heard from within this, ms.
const UP_MS: i64 = 30_000;
/// ... and `stale` (not yet `down`) within this.
const STALE_MS: i64 = 300_000;
/// Points per series response at most.
const MAX_POINTS: usize = 10_000;

async fn context(store: &Store) -> Result<SessionContext, Response> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.session_context()).await {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(server_error(format!("cannot open the tables: {e}"))),
        Err(e) => Err(server_error(format!("cannot open the tables: {e}"))),
    }
}

fn server_error(msg: String) -> Response {
    tracing::warn!(error = %msg, "dashboard request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

fn query_failed(e: DriverError) -> Response {
    server_error(e.to_string())
}

fn take<T: serde::de::DeserializeOwned>(
    params: Result<Query<T>, QueryRejection>,
) -> Result<T, super::BadRequest> {
    params
        .map(|Query(p)| p)
        .map_err(|e| super::BadRequest(e.body_text()))
}

/// Parameters of `GET /api/v1/nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesParams {
    /// `up`, `stale`, `down` or `all` (default).
    pub status: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

pub(super) async fn list_nodes(
    State(app): State<AppState>,
    params: Result<Query<NodesParams>, QueryRejection>,
) -> Response {
    let p = match take(params) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (limit, offset) = match page(p.limit, p.offset) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    if let Some(s) = p.status.as_deref()
        && !matches!(s, "up" | "stale" | "down" | "all")
    {
        return bad_request(format!(
            "status must be one of up, stale, down, all; got {s:?}"
        ));
    }
    let ctx = match context(&app.store).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let now = now_ms();
    match nodes_items(&ctx, &app, now, p.status.as_deref()).await {
        Ok(items) => list_response(items, limit, offset),
        Err(e) => query_failed(e),
    }
}

async fn nodes_items(
    ctx: &SessionContext,
    app: &AppState,
    now: i64,
    status: Option<&str>,
) -> Result<Vec<Value>, DriverError> {
    let mut anomalies: BTreeMap<String, i64> = BTreeMap::new();
    let sql = format!(
        "SELECT node, count(*) AS n FROM anomalies WHERE ts >= to_timestamp_millis({}) GROUP BY node",
        now - 3_600_000
    );
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        for (n, k) in c.strings("node")?.into_iter().zip(c.ints("n")?) {
            if let (Some(n), Some(k)) = (n, k) {
                anomalies.insert(n, k);
            }
        }
    }
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    {
        let st = app.hub.lock();
        for i in st
            .correlator
            .incidents()
            .filter(|i| i.status == Status::Open)
        {
            for n in &i.nodes {
                *open.entry(n.clone()).or_default() += 1;
            }
        }
    }
    let sql = "SELECT node, agent_version, boot_id, session, capabilities, first_seen, last_seen, batches, samples FROM nodes ORDER BY node";
    let mut items = Vec::new();
    for b in collect(ctx, sql).await? {
        let c = Columns(&b);
        let (node, version, boot, session, caps) = (
            c.strings("node")?,
            c.strings("agent_version")?,
            c.strings("boot_id")?,
            c.ints("session")?,
            c.strings("capabilities")?,
        );
        let (first, last, batches, samples) = (
            c.ints("first_seen")?,
            c.ints("last_seen")?,
            c.ints("batches")?,
            c.ints("samples")?,
        );
        for i in 0..b.num_rows() {
            let Some(name) = node[i].clone() else {
                continue;
            };
            let last_seen = last[i].unwrap_or(0);
            let age = (now - last_seen).max(0);
            let state = if age <= UP_MS {
                "up"
            } else if age <= STALE_MS {
                "stale"
            } else {
                "down"
            };
            if status.is_some_and(|s| s != "all" && s != state) {
                continue;
            }
            let capabilities: Vec<&str> = caps[i]
                .as_deref()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .collect();
            items.push(json!({
                "node": name,
                "status": state,
                "agent_version": version[i],
                "boot_id": boot[i],
                "session": session[i],
                "capabilities": capabilities,
                "first_seen_ms": first[i],
                "last_seen_ms": last_seen,
                "last_seen_age_ms": age,
                "batches": batches[i],
                "samples": samples[i],
                "anomalies_last_hour": anomalies.get(&name).copied().unwrap_or(0),
                "open_incidents": open.get(&name).copied().unwrap_or(0),
            }));
        }
    }
    Ok(items)
}

/// Parameters of `GET /api/v1/services`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesParams {
    /// Start of the range (default: an hour ago).
    pub since: Option<String>,
    /// End of the range (default: now).
    pub until: Option<String>,
    /// Only components seen on this node.
    pub node: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

#[derive(Default)]
struct ServiceAcc {
    nodes: BTreeSet<String>,
    processes: i64,
    last_seen_ms: Option<i64>,
    anomalies: i64,
    last_anomaly_ms: Option<i64>,
    calls_out: u64,
    calls_in: u64,
    open_incidents: usize,
}

pub(super) async fn list_services(
    State(app): State<AppState>,
    params: Result<Query<ServicesParams>, QueryRejection>,
) -> Response {
    let p = match take(params) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (limit, offset) = match page(p.limit, p.offset) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let now = now_ms();
    let (since, until) = match time_range(
        p.since.as_deref(),
        p.until.as_deref(),
        now - 3_600_000,
        now + 1,
    ) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let ctx = match context(&app.store).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match services_items(&ctx, &app, since, until, p.node.as_deref()).await {
        Ok(items) => list_response(items, limit, offset),
        Err(e) => query_failed(e),
    }
}

async fn services_items(
    ctx: &SessionContext,
    app: &AppState,
    since: i64,
    until: i64,
    node: Option<&str>,
) -> Result<Vec<Value>, DriverError> {
    let range = format!(
        "ts >= to_timestamp_millis({since}) AND ts < to_timestamp_millis({until}){}",
        node.map(|n| format!(" AND node = {}", sql_string(n)))
            .unwrap_or_default()
    );
    let mut acc: BTreeMap<String, ServiceAcc> = BTreeMap::new();
    let sql = format!(
        "SELECT node, labels, count(DISTINCT entity) AS processes, max(ts) AS last_ts FROM samples \
         WHERE {range} AND entity LIKE 'process/%' AND metric = 'proc.cpu_pct' \
         GROUP BY node, labels LIMIT 200000"
    );
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        let (nodes, labels, procs, last) = (
            c.strings("node")?,
            c.strings("labels")?,
            c.ints("processes")?,
            c.ints("last_ts")?,
        );
        for i in 0..b.num_rows() {
            let Some(n) = nodes[i].as_deref() else {
                continue;
            };
            let comp = component_of_series(n, "process/0", labels[i].as_deref().unwrap_or(""));
            let a = acc.entry(comp).or_default();
            a.nodes.insert(n.to_string());
            a.processes += procs[i].unwrap_or(0);
            a.last_seen_ms = a.last_seen_ms.max(last[i]);
        }
    }
    let sql = format!(
        "SELECT node, entity, labels, count(*) AS n, max(ts) AS last_ts FROM anomalies \
         WHERE {range} GROUP BY node, entity, labels LIMIT 200000"
    );
    for b in collect(ctx, &sql).await? {
        let c = Columns(&b);
        let (nodes, entities, labels, n, last) = (
            c.strings("node")?,
            c.strings("entity")?,
            c.strings("labels")?,
            c.ints("n")?,
            c.ints("last_ts")?,
        );
        for i in 0..b.num_rows() {
            let (Some(nd), Some(e)) = (nodes[i].as_deref(), entities[i].as_deref()) else {
                continue;
            };
            let comp = component_of_series(nd, e, labels[i].as_deref().unwrap_or(""));
            let a = acc.entry(comp).or_default();
            a.nodes.insert(nd.to_string());
            a.anomalies += n[i].unwrap_or(0);
            a.last_anomaly_ms = a.last_anomaly_ms.max(last[i]);
        }
    }
    let graph = load_graph(ctx, since, Some(until), GraphLimits::default()).await?;
    for e in &graph.edges {
        for (comp, out) in [(&e.caller, true), (&e.callee, false)] {
            let a = acc.entry(comp.clone()).or_default();
            if let Some(n) = component::node_of(comp) {
                a.nodes.insert(n.to_string());
            }
            if out {
                a.calls_out += e.connections;
            } else {
                a.calls_in += e.connections;
            }
        }
    }
    {
        let st = app.hub.lock();
        for i in st
            .correlator
            .incidents()
            .filter(|i| i.status == Status::Open)
        {
            for c in &i.components {
                if let Some(a) = acc.get_mut(c) {
                    a.open_incidents += 1;
                }
            }
        }
    }
    let mut items: Vec<(i64, String, Value)> = acc
        .into_iter()
        .filter(|(_, a)| node.is_none_or(|n| a.nodes.contains(n) || a.nodes.is_empty()))
        .map(|(comp, a)| {
            let v = json!({
                "component": comp,
                "kind": component::kind_of(&comp),
                "nodes": a.nodes,
                "processes": a.processes,
                "last_seen_ms": a.last_seen_ms,
                "anomaly_count": a.anomalies,
                "last_anomaly_ms": a.last_anomaly_ms,
                "open_incidents": a.open_incidents,
                "calls_out": a.calls_out,
                "calls_in": a.calls_in,
            });
            (a.anomalies, comp, v)
        })
        .collect();
    items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(items.into_iter().map(|(_, _, v)| v).collect())
}

/// Parameters of `GET /api/v1/graph`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphParams {
    /// Start of the range (default: an hour ago).
    pub since: Option<String>,
    /// End of the range (default: now).
    pub until: Option<String>,
}

pub(super) async fn graph(
    State(app): State<AppState>,
    params: Result<Query<GraphParams>, QueryRejection>,
) -> Response {
    let p = match take(params) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let now = now_ms();
    let (since, until) = match time_range(
        p.since.as_deref(),
        p.until.as_deref(),
        now - 3_600_000,
        now + 1,
    ) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let ctx = match context(&app.store).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match load_graph(&ctx, since, Some(until), GraphLimits::default()).await {
        Ok(g) => Json(json!({
            "since_ms": since,
            "until_ms": until,
            "nodes": g.nodes,
            "edges": g.edges,
            "dropped_edges": g.dropped_edges,
        }))
        .into_response(),
        Err(e) => query_failed(e),
    }
}

/// Parameters of `GET /api/v1/series`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Node (required).
    pub node: Option<String>,
    /// Entity (required), e.g. `host`, `process/42`.
    pub entity: Option<String>,
    /// Metric (required), e.g. `cpu.usage_pct`.
    pub metric: Option<String>,
    /// Exact labels text (`comm=x,cgroup=y`); absent: every label set, one item each.
    pub labels: Option<String>,
    /// Start (default: an hour ago).
    pub since: Option<String>,
    /// End (default: now).
    pub until: Option<String>,
    /// Downsampling bucket: ms, or `10s`, `5m`, `1h` (1 s ..= 1 day). Absent: raw points.
    pub step: Option<String>,
}

/// `500`, `10s`, `5m`, `1h`, `1d` → ms.
fn parse_step(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("step: {s:?} is not a duration like 5000, 10s, 5m, 1h"))?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("step: unknown unit {unit:?} (use ms, s, m, h, d)")),
    };
    let ms = n.saturating_mul(mult);
    if !(1_000..=86_400_000).contains(&ms) {
        return Err(format!("step must be between 1s and 1d, got {s:?}"));
    }
    Ok(ms)
}

pub(super) async fn series(
    State(app): State<AppState>,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Response {
    let p = match take(params) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (Some(node), Some(entity), Some(metric)) = (&p.node, &p.entity, &p.metric) else {
        return bad_request("node, entity and metric are required");
    };
    let now = now_ms();
    let (since, until) = match time_range(
        p.since.as_deref(),
        p.until.as_deref(),
        now - 3_600_000,
        now + 1,
    ) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let step = match p.step.as_deref().map(parse_step).transpose() {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    if let Some(step) = step
        && (until - since) / step > MAX_POINTS as i64
    {
        return bad_request(format!(
            "{} buckets of {step} ms is more than {MAX_POINTS}: use a larger step or a shorter range",
            (until - since) / step
        ));
    }
    let mut filter = format!(
        "node = {} AND entity = {} AND metric = {} AND ts >= to_timestamp_millis({since}) AND ts < to_timestamp_millis({until})",
        sql_string(node),
        sql_string(entity),
        sql_string(metric)
    );
    if let Some(l) = &p.labels {
        filter.push_str(&format!(" AND labels = {}", sql_string(l)));
    }
    let sql = match step {
        Some(step) => format!(
            "SELECT labels, t, v, mn, mx FROM (SELECT labels, date_bin(INTERVAL '{step} milliseconds', ts) AS t, \
               avg(value) AS v, min(value) AS mn, max(value) AS mx FROM samples WHERE {filter} GROUP BY labels, t) s \
             ORDER BY labels, t LIMIT {}",
            MAX_POINTS + 1
        ),
        None => format!(
            "SELECT labels, ts AS t, value AS v FROM samples WHERE {filter} ORDER BY labels, t LIMIT {}",
            MAX_POINTS + 1
        ),
    };
    let ctx = match context(&app.store).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let batches = match collect(&ctx, &sql).await {
        Ok(b) => b,
        Err(e) => return query_failed(e),
    };
    let mut by_labels: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut n = 0usize;
    let mut truncated = false;
    for b in &batches {
        let c = Columns(b);
        let rows = (|| -> Result<_, DriverError> {
            Ok((
                c.strings("labels")?,
                c.ints("t")?,
                c.floats("v")?,
                if step.is_some() {
                    Some((c.floats("mn")?, c.floats("mx")?))
                } else {
                    None
                },
            ))
        })();
        let (labels, t, v, minmax) = match rows {
            Ok(r) => r,
            Err(e) => return query_failed(e),
        };
        for i in 0..b.num_rows() {
            if n >= MAX_POINTS {
                truncated = true;
                break;
            }
            n += 1;
            let point = match &minmax {
                Some((mn, mx)) => json!([t[i], v[i], mn[i], mx[i]]),
                None => json!([t[i], v[i]]),
            };
            by_labels
                .entry(labels[i].clone().unwrap_or_default())
                .or_default()
                .push(point);
        }
    }
    let items: Vec<Value> = by_labels
        .into_iter()
        .map(|(labels, points)| json!({ "labels": labels, "points": points }))
        .collect();
    Json(json!({
        "node": node,
        "entity": entity,
        "metric": metric,
        "since_ms": since,
        "until_ms": until,
        "step_ms": step,
        "point_fields": if step.is_some() { json!(["ts_ms", "avg", "min", "max"]) } else { json!(["ts_ms", "value"]) },
        "total": items.len(),
        "items": items,
        "truncated": truncated,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_with_units_and_bounds() {
        assert_eq!(parse_step("5000"), Ok(5000));
        assert_eq!(parse_step("10s"), Ok(10_000));
        assert_eq!(parse_step("5m"), Ok(300_000));
        assert_eq!(parse_step("1h"), Ok(3_600_000));
        assert!(parse_step("10").is_err());
        assert!(parse_step("2d").is_err());
        assert!(parse_step("5x").is_err());
        assert!(parse_step("s").is_err());
        assert!(parse_step("99999999999999999999").is_err());
    }
}
