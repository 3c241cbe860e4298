//! End-to-end ingest benchmark: K simulated agents → real QUIC with mutual TLS on loopback
//! → the real aggregator (ingest, WAL with fsync, hot Arrow store, Parquet flusher).
//!
//! Run: `cargo bench -p benches --bench ingest`.
//!
//! Each agent has its own node certificate and QUIC endpoint and speaks the agent's
//! protocol (node-agent/src/ship/client.rs): `Hello` → `HelloAck`, then pre-encoded 5 s
//! batches of the realistic node stream as `Batch` frames with seq 1.., up to 64 unacked,
//! acks read concurrently. Encoding happens before the clock starts. One criterion
//! iteration is one round: every agent opens a new session, they all start together, and
//! the round ends when the last ack arrives. Throughput is samples acked per second.
//!
//! The aggregator and the agents run on two separate tokio runtimes (threads `agg-rt` and
//! `agents-rt`) so the CPU each side uses can be read per thread from /proc; before
//! criterion runs, the bench prints that split, a per-stage cost table of the aggregator's
//! work per batch, the fsync time of this disk, and the unloaded ack latency.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aggregator::ingest::{self, IngestLimits};
use aggregator::metrics::Metrics;
use aggregator::store::state::StoreState;
use aggregator::store::{Store, StoreConfig, schema};
use aggregator::wal::{self, WalEntry};
use benches::{NodeStream, Prepared, SessionStats, SimAgent, StreamConfig, percentile};
use common::{codec, pki};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::{Barrier, watch};

/// Batches per round over all agents (≈ 8,000 samples each).
const BATCHES_PER_ROUND: usize = 96;
/// Agent-side pipelining window (the agent's default).
const WINDOW: usize = 64;
/// Seconds per batch (the agent's default).
const BATCH_SECS: u32 = 5;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "autodevops-bench-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The real aggregator, wired as main.rs wires it (minus HTTP), on its own runtime.
struct Aggregator {
    rt: Runtime,
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    dir: PathBuf,
}

/// The throwaway PKI: CA, aggregator certificate, and what agents need.
struct Pki {
    ca: pki::CertPair,
    dir: PathBuf,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let dir = temp_dir("pki")?;
        let ca = pki::new_ca("bench CA")?;
        let server = pki::issue_aggregator(&ca, &["localhost", "127.0.0.1"])?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        std::fs::write(dir.join("aggregator.pem"), &server.cert_pem)?;
        std::fs::write(dir.join("aggregator.key"), &server.key_pem)?;
        Ok(Pki { ca, dir })
    }

    fn agent(&self, rt: &Runtime, idx: usize) -> anyhow::Result<SimAgent> {
        let node = format!("bench-node-{idx}");
        let cert = pki::issue_node(&self.ca, &node)?;
        let cfg = benches::client_config(&self.ca.cert_pem, &cert.cert_pem, &cert.key_pem)?;
        let _guard = rt.enter();
        SimAgent::new(&node, cfg)
    }
}

impl Aggregator {
    fn start(pki: &Pki) -> anyhow::Result<Aggregator> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name("agg-rt")
            .enable_all()
            .build()?;
        let dir = temp_dir("data")?;
        let metrics = Metrics::new();
        let (store, _) = Store::open(StoreConfig::new(dir.clone()), metrics.clone())?;
        let server = ingest::tls::server_config(
            &pki.dir.join("ca.pem"),
            &pki.dir.join("aggregator.pem"),
            &pki.dir.join("aggregator.key"),
        )?;
        let endpoint = {
            let _guard = rt.enter();
            ingest::bind("127.0.0.1:0".parse()?, server)?
        };
        let addr = endpoint.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tasks = vec![
            rt.spawn(ingest::run(
                endpoint.clone(),
                store.clone(),
                metrics.clone(),
                IngestLimits::default(),
                shutdown_rx.clone(),
            )),
            rt.spawn(store.run_flusher(shutdown_rx)),
        ];
        Ok(Aggregator {
            rt,
            addr,
            metrics,
            shutdown,
            tasks,
            endpoint,
            dir,
        })
    }

    fn stop(self) {
        let _ = self.shutdown.send(true);
        self.rt.block_on(async {
            for t in self.tasks {
                let _ = t.await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        });
        drop(self.rt);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every agent's batches, encoded once.
fn prepare(n_agents: usize, per_agent: usize) -> Vec<Arc<Vec<Prepared>>> {
    (0..n_agents)
        .map(|idx| {
            let mut stream = NodeStream::new(StreamConfig::steady(100 + idx as u64));
            let batches = (0..per_agent)
                .map(|_| {
                    let b = stream.next_batch(BATCH_SECS);
                    Prepared {
                        payload: codec::encode_batch(&b),
                        samples: b.n_samples(),
                    }
                })
                .collect();
            Arc::new(batches)
        })
        .collect()
}

#[derive(Default)]
struct Round {
    samples: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// One round: every agent connects (new session), waits for the others, then sends all its
/// batches; ends at the last ack.
fn run_round(
    rt: &Runtime,
    agents: &[Arc<SimAgent>],
    batches: &[Arc<Vec<Prepared>>],
    addr: SocketAddr,
    window: usize,
) -> Round {
    let gate = Arc::new(Barrier::new(agents.len()));
    let results: Vec<SessionStats> = rt.block_on(async {
        let mut handles = Vec::new();
        for (agent, batches) in agents.iter().zip(batches) {
            let (agent, batches, gate) = (agent.clone(), batches.clone(), gate.clone());
            let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
            handles.push(tokio::spawn(async move {
                agent.session(addr, session, &batches, window, &gate).await
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("agent task").expect("agent session"));
        }
        out
    });
    let start = results.iter().map(|s| s.started).min().expect("agents");
    let end = results.iter().map(|s| s.finished).max().expect("agents");
    let mut round = Round {
        elapsed: end - start,
        ..Default::default()
    };
    for s in results {
        round.samples += s.samples;
        round.latencies.extend(s.ack_latencies);
    }
    round
}

/// CPU seconds used so far by this process's threads, grouped by thread-name prefix.
fn cpu_by_thread() -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let group = ["agg-rt", "agents-rt", "wal-committer"]
            .into_iter()
            .find(|p| name.starts_with(p))
            .unwrap_or("other");
        // Fields after the name: state is field 3, utime 14, stime 15 (1-based).
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: f64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        let secs = ticks / 100.0;
        match out.iter_mut().find(|(n, _)| n == group) {
            Some((_, s)) => *s += secs,
            None => out.push((group.to_string(), secs)),
        }
    }
    out
}

fn cpu_delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(n, a)| {
            (
                n.clone(),
                a - before
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, b)| *b)
                    .unwrap_or(0.0),
            )
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What each step of the aggregator's per-batch work costs on one core, outside QUIC.
fn print_stage_costs() {
    let mut stream = NodeStream::new(StreamConfig::steady(100));
    let batches: Vec<_> = (0..300).map(|_| stream.next_batch(BATCH_SECS)).collect();
    let payloads: Vec<Vec<u8>> = batches.iter().map(codec::encode_batch).collect();
    let samples: usize = batches.iter().map(|b| b.n_samples()).sum();
    let n = batches.len() as f64;
    let per_sample_ns = |d: Duration| d.as_secs_f64() * 1e9 / samples as f64;
    let line = |what: &str, d: Duration| {
        println!(
            "  {what:<44} {:>8.1} µs/batch {:>7.1} ns/sample {:>8.2} M samples/s/core",
            d.as_secs_f64() * 1e6 / n,
            per_sample_ns(d),
            samples as f64 / d.as_secs_f64() / 1e6
        );
    };
    println!(
        "Aggregator work per 5 s batch ({} samples, {} series), one core, no I/O:",
        samples / batches.len(),
        batches[0].series.len()
    );

    let frames: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(idx, p)| {
            common::wire::encode_frame(&common::wire::Frame::Batch(common::wire::BatchFrame {
                node: "bench-node-0".into(),
                session: 1,
                seq: idx as u64 + 1,
                payload: p.clone(),
            }))
        })
        .collect();
    let t = Instant::now();
    for f in &frames {
        std::hint::black_box(common::wire::decode_frame(f).expect("frame"));
    }
    line("wire::decode_frame (postcard, copies payload)", t.elapsed());

    let t = Instant::now();
    let decoded: Vec<_> = payloads
        .iter()
        .map(|p| codec::decode_batch(p).expect("payload"))
        .collect();
    line("codec::decode_batch", t.elapsed());

    let t = Instant::now();
    let arrow: Vec<_> = decoded
        .iter()
        .map(|b| schema::to_arrow("bench-node-0", b).expect("arrow"))
        .collect();
    line("schema::to_arrow", t.elapsed());

    let entries: Vec<WalEntry> = payloads
        .iter()
        .enumerate()
        .map(|(idx, p)| WalEntry::Batch {
            node: "bench-node-0".into(),
            session: 1,
            seq: idx as u64 + 1,
            received_ms: 0,
            payload: p.clone(),
        })
        .collect();
    let t = Instant::now();
    let records: Vec<Vec<u8>> = entries.iter().map(wal::encode_record).collect();
    line("wal::encode_record (postcard + crc32)", t.elapsed());

    let mut state = StoreState::default();
    let mut worst = Duration::ZERO;
    let t = Instant::now();
    for (entry, decoded) in entries.iter().zip(arrow) {
        let one = Instant::now();
        state.apply(entry, Some(decoded));
        worst = worst.max(one.elapsed());
    }
    line("StoreState::apply (hot push, merge every 256)", t.elapsed());
    println!(
        "  {:<44} {:>8.1} ms (the merge of 256 small batches, under the store lock)",
        "  worst single apply",
        ms(worst)
    );

    // fsync cost on this disk: the floor of every ack.
    let dir = temp_dir("fsync").expect("temp dir");
    let group: Vec<u8> = records.iter().take(8).flatten().copied().collect();
    let mut times = Vec::new();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("probe.wal"))
            .expect("probe file");
        for _ in 0..20 {
            let t = Instant::now();
            f.write_all(&group).expect("write");
            f.sync_data().expect("fsync");
            times.push(t.elapsed());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    times.sort();
    println!(
        "  {:<44} {:>8.2} ms p50, {:.2} ms max (write {} KiB + sync_data)",
        "WAL group commit on this disk",
        ms(percentile(&times, 0.5)),
        ms(*times.last().expect("times")),
        group.len() / 1024
    );
    println!();
}

fn bench_ingest(c: &mut Criterion) {
    print_stage_costs();
    let pki = Pki::new().expect("PKI");
    let agg = Aggregator::start(&pki).expect("aggregator");
    let agents_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("agents-rt")
        .enable_all()
        .build()
        .expect("runtime");

    // Unloaded latency: one agent, one batch at a time.
    {
        let agent = Arc::new(pki.agent(&agents_rt, 99).expect("agent"));
        let batches = prepare(1, 30);
        let round = run_round(
            &agents_rt,
            std::slice::from_ref(&agent),
            &batches,
            agg.addr,
            1,
        );
        let mut lat = round.latencies;
        lat.sort();
        println!(
            "Unloaded ack latency (1 agent, window 1, {} batches): p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        agents_rt.block_on(agent.shutdown());
    }

    let mut group = c.benchmark_group("ingest");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for n_agents in [4usize, 8] {
        let per_agent = BATCHES_PER_ROUND / n_agents;
        let agents: Vec<Arc<SimAgent>> = (0..n_agents)
            .map(|idx| Arc::new(pki.agent(&agents_rt, idx).expect("agent")))
            .collect();
        let batches = prepare(n_agents, per_agent);
        let samples: usize = batches
            .iter()
            .flat_map(|b| b.iter())
            .map(|p| p.samples)
            .sum();
        let payload_bytes: usize = batches
            .iter()
            .flat_map(|b| b.iter())
            .map(|p| p.payload.len())
            .sum();

        // One profiled round first: where the CPU goes.
        let cpu_before = cpu_by_thread();
        let wall = Instant::now();
        let round = run_round(&agents_rt, &agents, &batches, agg.addr, WINDOW);
        let wall = wall.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu_before, &cpu_by_thread());
        let split: Vec<String> = cpu
            .iter()
            .filter(|(_, s)| *s > 0.0)
            .map(|(n, s)| format!("{n} {:.0}%", s / wall * 100.0))
            .collect();
        println!(
            "{n_agents} agents, profiled round: {} samples ({} KiB of payload) in {:.0} ms = {:.0} samples/s; CPU over the round (100% = one core): {}",
            round.samples,
            payload_bytes / 1024,
            ms(round.elapsed),
            round.samples as f64 / round.elapsed.as_secs_f64(),
            split.join(", ")
        );

        let rounds: RefCell<Vec<Round>> = RefCell::new(Vec::new());
        group.throughput(Throughput::Elements(samples as u64));
        group.bench_function(
            format!("quic_mtls/{n_agents}_agents/{BATCH_SECS}s_batches"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let r = run_round(&agents_rt, &agents, &batches, agg.addr, WINDOW);
                        total += r.elapsed;
                        rounds.borrow_mut().push(r);
                    }
                    total
                })
            },
        );
        let rounds = rounds.into_inner();
        let n_samples: usize = rounds.iter().map(|r| r.samples).sum();
        let elapsed: Duration = rounds.iter().map(|r| r.elapsed).sum();
        let mut lat: Vec<Duration> = rounds.into_iter().flat_map(|r| r.latencies).collect();
        lat.sort();
        println!(
            "{n_agents} agents: {:.0} samples/s over {} batches; ack latency under this load p50 {:.1} ms, p99 {:.1} ms (window {WINDOW}, {per_agent} batches per agent per round)",
            n_samples as f64 / elapsed.as_secs_f64(),
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        for agent in &agents {
            agents_rt.block_on(agent.shutdown());
        }
    }
    group.finish();
    println!(
        "aggregator totals: {} samples stored, {} flushes to Parquet, {} hot rows left",
        agg.metrics.samples.get(),
        agg.metrics.flushes.get(),
        agg.metrics.hot_rows.get()
    );
    drop(agents_rt);
    agg.stop();
    let _ = std::fs::remove_dir_all(&pki.dir);
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
