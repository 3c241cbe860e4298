//! The agent's main loop: collect every interval, batch, hand batches to the shipper.
//!
//! Collection never waits for the network: batches go into the bounded outbox and the
//! client drains it on its own task. On stop, the partial batch is pushed and the client
//! gets a grace period to deliver everything before the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::codec;
use common::model::{Event, Severity};
use common::wire::{Hello, PROTOCOL_VERSION};
use tokio::sync::watch;

use crate::collect::{self, CollectConfig, CollectError, Collector};
use crate::detect::{DetectConfig, DetectorBank};
use crate::ship::batcher::Batcher;
use crate::ship::client::{self, ClientConfig, Shared};
use crate::ship::outbox::{Budget, Outbox};
use crate::ship::tls;
use crate::telemetry::{self, AgentMetrics};

/// Everything `node-agent run` is told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (must match its certificate).
    pub node: String,
    /// Aggregator QUIC address.
    pub aggregator: SocketAddr,
    /// Name on the aggregator's certificate.
    pub server_name: String,
    /// CA (PEM).
    pub ca: PathBuf,
    /// Node certificate (PEM).
    pub cert: PathBuf,
    /// Node key (PEM).
    pub key: PathBuf,
    /// Sampling interval.
    pub interval: Duration,
    /// How much to gather into one batch.
    pub batch_interval: Duration,
    /// `/metrics` + `/healthz`.
    pub metrics_listen: SocketAddr,
    /// Unacked payload bytes kept in memory.
    pub max_outbox_bytes: usize,
    /// Crash-safe spool directory; `None` keeps unacked batches in memory only.
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool may use on disk.
    pub max_spool_bytes: u64,
    /// Where collectors read.
    pub collect: CollectConfig,
    /// How long to keep delivering after a stop signal.
    pub drain_grace: Duration,
    /// Streaming anomaly detection settings (`None`: detection off).
    pub detect: Option<DetectConfig>,
    /// Most series with detector state.
    pub max_detected_series: usize,
    /// Load the eBPF collectors (process, TCP, run queue, block I/O).
    pub ebpf: bool,
    /// Log tailing and mining (`None`: no logs).
    pub logs: Option<crate::logs::LogInputs>,
}

/// Runs the agent until `stop` resolves, then drains and returns.
pub async fn run(
    cfg: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = AgentMetrics::new();
    let quic = tls::client_config(&cfg.ca, &cfg.cert, &cfg.key)?;
    let mut collectors = if cfg.ebpf {
        collect::collectors_with_ebpf(&cfg.collect)
    } else {
        collect::default_collectors(&cfg.collect)
    };
    if let Some(inputs) = &cfg.logs {
        let logs = collect::LogCollector::new(inputs.clone(), metrics.clone());
        collectors.push(Box::new(logs));
    }
    for c in &collectors {
        metrics.collector_up.with_label_values(&[c.name()]).set(1);
    }
    let budget = Budget {
        memory_bytes: cfg.max_outbox_bytes,
        spool_bytes: cfg.max_spool_bytes,
    };
    let (outbox, session) = open_outbox(&cfg, budget, &metrics);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node: cfg.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: std::fs::read_to_string(cfg.collect.proc_root.join("sys/kernel/random/boot_id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        session,
        capabilities: collectors.iter().map(|c| c.name().to_string()).collect(),
    };
    let shared = Arc::new(Shared::new(outbox));
    let (stop_tx, stop_rx) = watch::channel(false);

    let telemetry_task = tokio::spawn(telemetry::serve(
        cfg.metrics_listen,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let client_cfg = ClientConfig {
        aggregator: cfg.aggregator,
        server_name: cfg.server_name.clone(),
        quic,
        hello,
        window: 64,
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        drain_grace: cfg.drain_grace,
    };
    let client_task = tokio::spawn(client::run(
        client_cfg,
        shared.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(node = %cfg.node, session, aggregator = %cfg.aggregator, interval_ms = cfg.interval.as_millis() as u64, "agent started");

    let mut batcher = Batcher::default();
    batcher.add_event(Event {
        ts_ms: now_ms(),
        entity: "host".into(),
        kind: "agent.started".into(),
        severity: Severity::Info,
        message: format!("node agent {} started", env!("CARGO_PKG_VERSION")),
        attrs: vec![("session".into(), session.to_string())],
    });
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_batch = Instant::now();
    let mut values = Vec::new();
    let mut events = Vec::new();
    let mut error_counts = vec![0u64; collectors.len()];
    let mut detectors = cfg
        .detect
        .clone()
        .map(|d| DetectorBank::new(d, cfg.max_detected_series));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let started = Instant::now();
        let ts = now_ms();
        collect_once(
            &mut collectors,
            started,
            &mut values,
            &metrics,
            &mut error_counts,
        );
        for c in &mut collectors {
            c.drain_events(&mut events);
        }
        for e in events.drain(..) {
            batcher.add_event(e);
        }
        self_samples(&shared, &metrics, &mut values);
        if let Some(bank) = detectors.as_mut() {
            detect(bank, ts, &values, &mut batcher, &metrics);
        }
        metrics.samples_collected.inc_by(values.len() as u64);
        batcher.add_tick(ts, &mut values);
        metrics
            .collect_seconds
            .observe(started.elapsed().as_secs_f64());
        if last_batch.elapsed() + cfg.interval / 2 >= cfg.batch_interval {
            ship(&mut batcher, &shared, &metrics);
            last_batch = Instant::now();
        }
    }
    tracing::info!("stopping: sending what is left");
    ship(&mut batcher, &shared, &metrics);
    let _ = stop_tx.send(true);
    let _ = client_task.await;
    let _ = telemetry_task.await;
    tracing::info!("stopped");
    Ok(())
}

fn collect_once(
    collectors: &mut [Box<dyn Collector>],
    mono: Instant,
    values: &mut Vec<(common::model::SeriesKey, f64)>,
    metrics: &AgentMetrics,
    error_counts: &mut [u64],
) {
    for (idx, c) in collectors.iter_mut().enumerate() {
        // A panicking collector loses its own tick, not the agent.
        let res =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.collect(mono, values)));
        let up = metrics.collector_up.with_label_values(&[c.name()]);
        let err = match res {
            Ok(Ok(())) => {
                if up.get() == 0 {
                    tracing::info!(collector = c.name(), "collector available again");
                    up.set(1);
                }
                continue;
            }
            Ok(Err(CollectError::Unavailable { what, detail })) => {
                // Missing facility (no cgroupfs, no PSI): say it once, show it on
                // /metrics, keep the rest of the agent running.
                if up.get() == 1 {
                    tracing::warn!(collector = c.name(), what, detail = %detail, "collector disabled: facility unavailable on this host");
                    up.set(0);
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "collector panicked".to_string(),
        };
        metrics
            .collector_errors
            .with_label_values(&[c.name()])
            .inc();
        // First error, then one line per 60 so a broken source does not flood the log.
        if error_counts[idx].is_multiple_of(60) {
            tracing::warn!(collector = c.name(), error = %err, occurrences = error_counts[idx] + 1, "collector error");
        }
        error_counts[idx] += 1;
    }
}

/// Scores every value of this tick; an opening anomaly becomes an `anomaly` event whose
/// attributes the aggregator turns into a row of its `anomalies` table.
fn detect(
    bank: &mut DetectorBank<common::model::SeriesKey>,
    ts_ms: i64,
    values: &[(common::model::SeriesKey, f64)],
    batcher: &mut Batcher,
    metrics: &AgentMetrics,
) {
    for (key, value) in values {
        // The agent's own bookkeeping is not workload telemetry.
        if key.entity == "agent" {
            continue;
        }
        let obs = bank.observe(key, ts_ms, *value);
        let Some(start) = obs.anomaly else { continue };
        metrics.anomalies.inc();
        let severity = if start.score >= 0.99 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let label_text = key.labels_text();
        let what = if label_text.is_empty() {
            format!("{} {}", key.entity, key.metric)
        } else {
            format!("{} {} ({label_text})", key.entity, key.metric)
        };
        batcher.add_event(Event {
            ts_ms,
            entity: key.entity.clone(),
            kind: "anomaly".into(),
            severity,
            message: format!("{what}: {}", start.explanation),
            attrs: vec![
                ("detector".into(), start.detector.to_string()),
                ("expected".into(), format!("{}", start.expected)),
                ("labels".into(), label_text),
                ("lower".into(), format!("{}", start.lower)),
                ("metric".into(), key.metric.clone()),
                ("score".into(), format!("{:.4}", start.score)),
                ("upper".into(), format!("{}", start.upper)),
                ("value".into(), format!("{}", start.value)),
            ],
        });
    }
    metrics.detected_series.set(bank.len() as i64);
}

/// The spool when configured and usable, else memory only. The session id is the
/// spool's (stable across restarts, so resends dedup) or a fresh random one.
fn open_outbox(cfg: &AgentConfig, budget: Budget, metrics: &AgentMetrics) -> (Outbox, u64) {
    let Some(dir) = &cfg.spool_dir else {
        return (Outbox::new(budget.memory_bytes), rand::random());
    };
    match Outbox::with_spool(dir, budget) {
        Ok((outbox, rec)) => {
            metrics.spool_quarantined.inc_by(rec.quarantined as u64);
            tracing::info!(
                dir = %dir.display(),
                replaying = rec.found.len(),
                quarantined_segments = rec.quarantined,
                lost_bytes = rec.lost_bytes,
                "spool open"
            );
            (outbox, rec.session)
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "spool unusable; unacked batches kept in memory only (lost if the agent dies)");
            (Outbox::new(budget.memory_bytes), rand::random())
        }
    }
}

/// The agent's own health as samples of entity `agent`, so the aggregator sees it too
/// (shed data above all: loss is never silent).
fn self_samples(
    shared: &Shared,
    metrics: &AgentMetrics,
    values: &mut Vec<(common::model::SeriesKey, f64)>,
) {
    use common::model::SeriesKey;
    let (losses, spool_bytes, pending) = {
        let o = shared.outbox();
        (o.losses(), o.spool_bytes(), o.len())
    };
    metrics.refresh_self();
    let mut put = |metric: &str, v: f64| values.push((SeriesKey::new("agent", metric), v));
    put("agent.shed_batches", losses.shed_batches as f64);
    put("agent.shed_samples", losses.shed_samples as f64);
    put("agent.nacked_batches", losses.nacked_batches as f64);
    put("agent.unreadable_batches", losses.unreadable_batches as f64);
    put("agent.spool_bytes", spool_bytes as f64);
    put("agent.pending_batches", pending as f64);
    put("agent.rss_bytes", metrics.process_rss_bytes.get() as f64);
    put(
        "agent.cpu_seconds",
        (metrics.process_cpu_seconds.get() * 100.0).round() / 100.0,
    );
}

fn ship(batcher: &mut Batcher, shared: &Shared, metrics: &AgentMetrics) {
    if batcher.is_empty() {
        return;
    }
    let batch = batcher.finish();
    let n_samples = batch.n_samples();
    let payload = codec::encode_batch(&batch);
    metrics.payload_bytes_built.inc_by(payload.len() as u64);
    metrics.samples_built.inc_by(n_samples as u64);
    {
        let mut o = shared.outbox();
        let before = o.losses();
        o.push(payload, n_samples);
        let after = o.losses();
        if after.shed_batches > before.shed_batches {
            metrics
                .batches_shed
                .inc_by(after.shed_batches - before.shed_batches);
            metrics
                .samples_shed
                .inc_by(after.shed_samples - before.shed_samples);
            tracing::warn!(
                shed_batches = after.shed_batches,
                "outbox full: oldest batches dropped"
            );
        }
        metrics.outbox_batches.set(o.len() as i64);
        metrics.outbox_bytes.set(o.bytes() as i64);
        metrics.spool_bytes.set(o.spool_bytes() as i64);
        metrics
            .spool_write_errors
            .set(after.spool_write_errors as i64);
    }
    shared.changed.notify_one();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
