//! Many-node ingest: N simulated agents → real QUIC with mutual TLS on loopback → the real
//! `aggregator` binary, started as a separate process so that its RSS and CPU can be read
//! from /proc.
//!
//! Run through `cargo xtask bench ingest-nodes [--nodes 10,100,1000] [--secs 30]`, which
//! builds the release binaries and runs this one. By default the aggregator is the
//! `aggregator` binary beside this one (`target/release/`) and the report goes to
//! `target/bench-ingest-nodes.json`.
//!
//! Per N and per mode, a fresh aggregator (empty data dir, default limits) and N agents,
//! each with its own node certificate (issued by a throwaway CA with `common::pki`) and its
//! own QUIC endpoint (one UDP socket per agent, as N real hosts would have). Every agent
//! connects (at most `--handshakes` at a time), says `Hello`, waits for `HelloAck`, and
//! once all are connected they send 5 s batches of the realistic node stream
//! (`benches::NodeStream`, about 1,615 series per node, steady and churning nodes mixed),
//! pipelined (window 64, as the agent), acks read concurrently:
//!
//! - `realtime`: each node sends one batch per 5 s, nodes staggered evenly over the 5 s,
//!   for `--secs` seconds: the load N real nodes put on an aggregator.
//! - `max`: each node sends its batches back to back: what the aggregator can take.
//!
//! Reported per (N, mode): samples/s acked (over first send → last ack), p50/p99 ack
//! latency (frame handed to QUIC → its ack read), the aggregator's peak RSS (VmHWM) and
//! CPU% (100% = one core) over the phase, the generator's own CPU%, and connections
//! accepted/refused as the aggregator counts them (`/metrics`) and as the agents saw them.
//! Last, a shedding probe: an aggregator started with `--max-connections 8` and 10 agents,
//! showing what the refused ones are told.
//!
//! Self-contained payloads (what an agent spools) are encoded before the clock starts;
//! `--distinct` streams (default 100) are generated and node i sends stream i mod distinct
//! under its own name, so the generator does not spend the two cores on generating data.
//! Each frame is built when it is sent, as the agent builds it: with `--protocol 2` (the
//! default) in the connection form, which depends on what was acked (definitions travel
//! until a batch carrying them is acked), so the generator's CPU includes that rewrite;
//! `--protocol 1` sends the self-contained payloads as a protocol-1 agent does.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use benches::{NodeStream, Prepared, Sender, StreamConfig, percentile};
use common::codec;
use common::pki;
use common::wire::{self, Frame, Hello};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// Seconds of stream per batch (the agent's default).
const BATCH_SECS: u32 = 5;
/// Unacked batches per agent (the agent's default).
const WINDOW: usize = 64;
/// Connections of the shedding probe, and the limit the probe's aggregator gets.
const PROBE_AGENTS: usize = 10;
const PROBE_LIMIT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Realtime,
    Max,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Realtime => "realtime",
            Mode::Max => "max",
        }
    }
}

#[derive(Debug)]
struct Opts {
    aggregator: PathBuf,
    nodes: Vec<usize>,
    secs: u64,
    modes: Vec<Mode>,
    out: PathBuf,
    distinct: usize,
    /// Batches in the `max` mode over all agents (at least one per agent).
    max_batches: usize,
    handshakes: usize,
    probe: bool,
    /// Protocol version the agents speak.
    protocol: u16,
}

const USAGE: &str = "usage: ingest-nodes [--aggregator PATH] [--nodes 10,100,1000] [--secs 30] \
[--modes realtime,max] [--out target/bench-ingest-nodes.json] [--distinct 100] \
[--max-batches 2000] [--handshakes 64] [--protocol 2] [--no-probe]";

fn parse_args(args: &[String]) -> anyhow::Result<Opts> {
    // Beside this binary: target/release/{ingest-nodes,aggregator}, report in target/.
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut opts = Opts {
        aggregator: exe_dir.join("aggregator"),
        nodes: vec![10, 100, 1000],
        secs: 30,
        modes: vec![Mode::Realtime, Mode::Max],
        out: exe_dir
            .parent()
            .map(|t| t.join("bench-ingest-nodes.json"))
            .unwrap_or_else(|| PathBuf::from("target/bench-ingest-nodes.json")),
        distinct: 100,
        max_batches: 2000,
        handshakes: 64,
        probe: true,
        protocol: wire::PROTOCOL_VERSION,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if key == "--no-probe" {
            opts.probe = false;
            continue;
        }
        if key == "-h" || key == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .with_context(|| format!("{key} needs a value\n{USAGE}"))?
                .clone(),
        };
        let num = |v: &str| -> anyhow::Result<usize> {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{key}: {v:?} is not a number"))
        };
        match key {
            "--aggregator" => opts.aggregator = PathBuf::from(value),
            "--nodes" => {
                opts.nodes = value.split(',').map(num).collect::<Result<_, _>>()?;
            }
            "--secs" => opts.secs = num(&value)? as u64,
            "--modes" => {
                opts.modes = value
                    .split(',')
                    .map(|m| match m.trim() {
                        "realtime" => Ok(Mode::Realtime),
                        "max" => Ok(Mode::Max),
                        other => bail!("--modes: unknown mode {other:?} (realtime, max)"),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--out" => opts.out = PathBuf::from(value),
            "--distinct" => opts.distinct = num(&value)?,
            "--max-batches" => opts.max_batches = num(&value)?,
            "--handshakes" => opts.handshakes = num(&value)?,
            "--protocol" => {
                opts.protocol = match num(&value)? {
                    v @ 1..=2 => v as u16,
                    v => bail!("--protocol: {v} (1 or 2)"),
                }
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !opts.aggregator.is_file() {
        bail!(
            "no aggregator binary at {} (build it: cargo build --release -p aggregator, or pass --aggregator)",
            opts.aggregator.display()
        );
    }
    if opts.nodes.is_empty() || opts.nodes.contains(&0) {
        bail!("--nodes: give positive counts");
    }
    if opts.secs < u64::from(BATCH_SECS) {
        bail!("--secs: at least {BATCH_SECS}");
    }
    opts.distinct = opts.distinct.max(1);
    opts.handshakes = opts.handshakes.max(1);
    Ok(opts)
}

/// Raises the soft open-files limit to the hard one: 1000 agents hold 1000 UDP sockets.
fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The throwaway PKI in `dir`: CA and aggregator certificate as files, node certs in memory.
struct Pki {
    ca: pki::CertPair,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> anyhow::Result<Pki> {
        let ca = pki::new_ca("ingest-nodes bench CA")?;
        let server = pki::issue_aggregator(&ca, &["localhost", "127.0.0.1"])?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        std::fs::write(dir.join("aggregator.pem"), &server.cert_pem)?;
        std::fs::write(dir.join("aggregator.key"), &server.key_pem)?;
        Ok(Pki {
            ca,
            dir: dir.to_path_buf(),
        })
    }

    fn node_config(&self, node: &str) -> anyhow::Result<quinn::ClientConfig> {
        let cert = pki::issue_node(&self.ca, node)?;
        benches::client_config(&self.ca.cert_pem, &cert.cert_pem, &cert.key_pem)
    }
}

/// CPU ticks (utime + stime) of a process from /proc/<pid>/stat.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` on loopback with a bare HTTP/1.1 request: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of a Prometheus counter's values over the lines whose name-and-labels start with
/// `prefix` (e.g. `aggregator_connections_total{outcome="shed"}`).
fn prom_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty f64 sum is -0.0.
        + 0.0
}

/// The aggregator as a child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct AggProc {
    child: Child,
    quic: SocketAddr,
    http: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl AggProc {
    fn start(
        bin: &Path,
        pki: &Pki,
        work: &Path,
        tag: &str,
        max_connections: Option<usize>,
    ) -> anyhow::Result<AggProc> {
        let data = work.join(format!("data-{tag}"));
        std::fs::create_dir_all(&data)?;
        let log = work.join(format!("aggregator-{tag}.log"));
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()?).parse()?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--quic-listen")
            .arg(quic.to_string())
            .arg("--ca")
            .arg(pki.dir.join("ca.pem"))
            .arg("--cert")
            .arg(pki.dir.join("aggregator.pem"))
            .arg("--key")
            .arg(pki.dir.join("aggregator.key"));
        if let Some(m) = max_connections {
            cmd.arg("--max-connections").arg(m.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn");
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agg = AggProc {
            child,
            quic,
            http,
            data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agg.child.try_wait()? {
                bail!(
                    "the aggregator exited ({status}) at start; log {}:\n{}",
                    agg.log.display(),
                    std::fs::read_to_string(&agg.log).unwrap_or_default()
                );
            }
            if matches!(http_get(http, "/healthz"), Ok((200, _))) {
                return Ok(agg);
            }
            if Instant::now() > deadline {
                bail!("the aggregator did not answer /healthz within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        match http_get(self.http, "/metrics") {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AggProc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Samples the aggregator's RSS and both processes' CPU while a phase runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<u64>)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0u64;
            let mut rss = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(r) = status_bytes(pid, "VmRSS") {
                    peak = peak.max(r);
                    rss.push(r);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (peak, rss)
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// One agent's part in a phase.
#[derive(Default)]
struct AgentResult {
    connected: bool,
    error: Option<String>,
    acked: usize,
    nacked: usize,
    samples: usize,
    sent: usize,
    /// Payload bytes sent (what the protocol put on the wire, frames excluded).
    bytes: usize,
    /// Samples in the batches sent.
    sent_samples: usize,
    latencies: Vec<Duration>,
    first_send: Option<Instant>,
    last_ack: Option<Instant>,
}

async fn read_frame(recv: &mut quinn::RecvStream) -> anyhow::Result<Option<Frame>> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::peek_frame_len(&prefix)?.unwrap_or(0);
    let mut buf = vec![0u8; 4 + len];
    buf[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut buf[4..]).await?;
    match wire::decode_frame(&buf)? {
        Some((frame, _)) => Ok(Some(frame)),
        None => bail!("short frame"),
    }
}

struct Spec {
    node: String,
    session: u64,
    client: quinn::ClientConfig,
    /// Self-contained payloads; the first `count` are sent.
    batches: Arc<Vec<Prepared>>,
    count: usize,
    protocol: u16,
    /// When to send batch 0, after the start; batch k goes at `offset + k × interval`.
    offset: Duration,
    interval: Option<Duration>,
}

struct Shared {
    addr: SocketAddr,
    handshakes: Semaphore,
    ready: AtomicUsize,
    start: watch::Receiver<Option<Instant>>,
}

/// Connect, hello, wait for the common start, send, read acks.
async fn run_agent(spec: Spec, shared: Arc<Shared>) -> AgentResult {
    let mut res = AgentResult::default();
    let connected = connect(&spec, &shared).await;
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let mut start_rx = shared.start.clone();
    let start = match start_rx.wait_for(|s| s.is_some()).await {
        Ok(s) => s.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    };
    let (endpoint, conn, mut send, mut recv, version) = match connected {
        Ok(c) => c,
        Err(e) => {
            res.error = Some(format!("{e:#}"));
            return res;
        }
    };
    res.connected = true;
    let n = spec.count;
    let sender = Sender::new(version);
    let bytes = AtomicUsize::new(0);
    let sent_samples = AtomicUsize::new(0);
    let sent_at: Vec<std::sync::OnceLock<Instant>> =
        (0..n).map(|_| std::sync::OnceLock::new()).collect();
    let window = Semaphore::new(WINDOW);
    let sent = AtomicUsize::new(0);
    let writer = async {
        for (k, b) in spec.batches.iter().take(n).enumerate() {
            if let Some(interval) = spec.interval {
                let at = start + spec.offset + interval * k as u32;
                tokio::time::sleep_until(at.into()).await;
            }
            window.acquire().await?.forget();
            let (frame, payload_len) =
                sender.frame(&spec.node, spec.session, k as u64 + 1, &b.payload);
            bytes.fetch_add(payload_len, Ordering::Relaxed);
            sent_samples.fetch_add(b.samples, Ordering::Relaxed);
            let _ = sent_at[k].set(Instant::now());
            send.write_all(&frame).await?;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    };
    let reader = async {
        let mut out = (0usize, 0usize, 0usize, Vec::with_capacity(n), None);
        while out.0 + out.1 < n {
            let (seq, nack) = match read_frame(&mut recv).await? {
                Some(Frame::Ack { seq, .. }) => {
                    sender.acked(seq);
                    (seq, false)
                }
                Some(Frame::Nack { seq, .. }) => {
                    sender.refused(seq);
                    (seq, true)
                }
                other => bail!("expected Ack, got {other:?}"),
            };
            let idx = seq.checked_sub(1).context("ack for seq 0")? as usize;
            let sent = sent_at
                .get(idx)
                .and_then(|s| s.get())
                .context("ack for a batch never sent")?;
            let now = Instant::now();
            out.3.push(now - *sent);
            if nack {
                out.1 += 1;
            } else {
                out.0 += 1;
                out.2 += spec.batches.get(idx).map_or(0, |b| b.samples);
            }
            out.4 = Some(now);
            window.add_permits(1);
        }
        anyhow::Ok(out)
    };
    let (w, r) = tokio::join!(writer, reader);
    res.sent = sent.load(Ordering::Relaxed);
    res.bytes = bytes.load(Ordering::Relaxed);
    res.sent_samples = sent_samples.load(Ordering::Relaxed);
    res.first_send = sent_at.first().and_then(|s| s.get().copied());
    match r {
        Ok((acked, nacked, samples, lat, last)) => {
            res.acked = acked;
            res.nacked = nacked;
            res.samples = samples;
            res.latencies = lat;
            res.last_ack = last;
        }
        Err(e) => res.error = Some(format!("reading acks: {e:#}")),
    }
    if let Err(e) = w {
        res.error.get_or_insert(format!("sending: {e:#}"));
    }
    let _ = send.finish();
    conn.close(quinn::VarInt::from_u32(0), b"bench done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    res
}

type Connected = (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    u16,
);

async fn connect(spec: &Spec, shared: &Shared) -> anyhow::Result<Connected> {
    let _permit = shared.handshakes.acquire().await?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?).context("client endpoint")?;
    let conn = endpoint
        .connect_with(spec.client.clone(), shared.addr, "localhost")?
        .await
        .context("QUIC connect")?;
    let (mut send, mut recv) = conn.open_bi().await.context("open stream")?;
    let hello = Hello {
        protocol_version: spec.protocol,
        node: spec.node.clone(),
        agent_version: "bench-ingest-nodes".into(),
        boot_id: format!("boot-{:016x}", spec.session),
        session: spec.session,
        capabilities: vec!["host".into(), "process".into(), "cgroup".into()],
    };
    send.write_all(&wire::encode_frame(&Frame::Hello(hello)))
        .await
        .context("send Hello")?;
    match tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv)).await {
        Ok(Ok(Some(Frame::HelloAck(ack)))) => Ok((
            endpoint,
            conn,
            send,
            recv,
            ack.protocol_version.min(spec.protocol),
        )),
        Ok(Ok(Some(Frame::Reject { reason }))) => bail!("Reject: {reason}"),
        Ok(Ok(other)) => bail!("expected HelloAck, got {other:?}"),
        Ok(Err(e)) => Err(e.context("waiting for HelloAck")),
        Err(_) => bail!("no HelloAck within 30 s"),
    }
}

/// Every distinct stream's batches, encoded once: steady and churning nodes alternate.
fn prepare(distinct: usize, per_stream: usize) -> Vec<Arc<Vec<Prepared>>> {
    (0..distinct)
        .map(|j| {
            let seed = 1000 + j as u64;
            let cfg = if j % 2 == 0 {
                StreamConfig::steady(seed)
            } else {
                StreamConfig::churn(seed)
            };
            let mut stream = NodeStream::new(cfg);
            Arc::new(
                (0..per_stream)
                    .map(|_| {
                        let b = stream.next_batch(BATCH_SECS);
                        Prepared {
                            payload: codec::encode_batch(&b),
                            samples: b.n_samples(),
                        }
                    })
                    .collect(),
            )
        })
        .collect()
}

struct PhaseOut {
    agents: Vec<AgentResult>,
    wall: Duration,
    agg_cpu_pct: f64,
    gen_cpu_pct: f64,
    peak_rss: u64,
    hwm: u64,
    avg_rss: u64,
    metrics: String,
    incomplete: usize,
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    rt: &tokio::runtime::Runtime,
    agg: &AggProc,
    configs: &[quinn::ClientConfig],
    streams: &[Arc<Vec<Prepared>>],
    n: usize,
    mode: Mode,
    batches_per_node: usize,
    opts: &Opts,
    session_base: u64,
) -> anyhow::Result<PhaseOut> {
    let (start_tx, start_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        addr: agg.quic,
        handshakes: Semaphore::new(opts.handshakes),
        ready: AtomicUsize::new(0),
        start: start_rx,
    });
    let interval = Duration::from_secs(u64::from(BATCH_SECS));
    let specs: Vec<Spec> = (0..n)
        .map(|i| {
            let node = format!("sim-node-{i:04}");
            let session = session_base + i as u64;
            let stream = &streams[i % streams.len()];
            let count = batches_per_node.min(stream.len());
            let (offset, interval) = match mode {
                Mode::Realtime => (interval * i as u32 / n as u32, Some(interval)),
                Mode::Max => (Duration::ZERO, None),
            };
            Spec {
                node,
                session,
                client: configs[i].clone(),
                batches: stream.clone(),
                count,
                protocol: opts.protocol,
                offset,
                interval,
            }
        })
        .collect();

    let pid = agg.pid().to_string();
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| rt.spawn(run_agent(spec, shared.clone())))
        .collect();
    // Everyone connected (or failed): start the clock.
    let connect_started = Instant::now();
    while shared.ready.load(Ordering::SeqCst) < n {
        if connect_started.elapsed() > Duration::from_secs(300) {
            bail!("agents still connecting after 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "  {n} agents connected (or refused) in {:.1} s",
        connect_started.elapsed().as_secs_f64()
    );
    let agg_cpu0 = cpu_ticks(&pid).unwrap_or(0);
    let gen_cpu0 = cpu_ticks("self").unwrap_or(0);
    let sampler = Sampler::start(agg.pid());
    let t0 = Instant::now();
    let _ = start_tx.send(Some(t0));
    let budget = match mode {
        Mode::Realtime => Duration::from_secs(opts.secs + 120),
        Mode::Max => Duration::from_secs(600),
    };
    let (agents, incomplete) = rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        let mut incomplete = 0;
        let deadline = tokio::time::Instant::now() + budget;
        for h in handles {
            let abort = h.abort_handle();
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => out.push(AgentResult {
                    error: Some(format!("agent task: {e}")),
                    ..Default::default()
                }),
                Err(_) => {
                    abort.abort();
                    incomplete += 1;
                }
            }
        }
        (out, incomplete)
    });
    let wall = t0.elapsed();
    let ticks = clock_ticks_per_sec();
    let agg_cpu = cpu_ticks(&pid).unwrap_or(0).saturating_sub(agg_cpu0) as f64 / ticks;
    let gen_cpu = cpu_ticks("self").unwrap_or(0).saturating_sub(gen_cpu0) as f64 / ticks;
    let (peak_rss, rss) = sampler.finish();
    let hwm = status_bytes(agg.pid(), "VmHWM").unwrap_or(0);
    let avg_rss = if rss.is_empty() {
        0
    } else {
        rss.iter().sum::<u64>() / rss.len() as u64
    };
    Ok(PhaseOut {
        agents,
        wall,
        agg_cpu_pct: agg_cpu / wall.as_secs_f64() * 100.0,
        gen_cpu_pct: gen_cpu / wall.as_secs_f64() * 100.0,
        peak_rss: peak_rss.max(hwm),
        hwm,
        avg_rss,
        metrics: agg.metrics(),
        incomplete,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summarize(n: usize, mode: Mode, batches_per_node: usize, p: &PhaseOut) -> Value {
    let connected = p.agents.iter().filter(|a| a.connected).count();
    let acked: usize = p.agents.iter().map(|a| a.acked).sum();
    let nacked: usize = p.agents.iter().map(|a| a.nacked).sum();
    let sent: usize = p.agents.iter().map(|a| a.sent).sum();
    let sent_bytes: usize = p.agents.iter().map(|a| a.bytes).sum();
    let sent_samples: usize = p.agents.iter().map(|a| a.sent_samples).sum();
    let samples: usize = p.agents.iter().map(|a| a.samples).sum();
    let first = p.agents.iter().filter_map(|a| a.first_send).min();
    let last = p.agents.iter().filter_map(|a| a.last_ack).max();
    let span = match (first, last) {
        (Some(f), Some(l)) if l > f => l - f,
        _ => p.wall,
    };
    let mut lat: Vec<Duration> = p
        .agents
        .iter()
        .flat_map(|a| a.latencies.iter().copied())
        .collect();
    lat.sort();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for e in p.agents.iter().filter_map(|a| a.error.as_ref()) {
        *errors.entry(e.clone()).or_default() += 1;
    }
    let m = &p.metrics;
    let conn = |o: &str| {
        prom_value(
            m,
            &format!("aggregator_connections_total{{outcome=\"{o}\"}}"),
        )
    };
    let stored = prom_value(m, "aggregator_samples_stored_total");
    let rate = samples as f64 / span.as_secs_f64();
    let offered = match mode {
        Mode::Realtime => samples as f64 / acked.max(1) as f64 * n as f64 / f64::from(BATCH_SECS),
        Mode::Max => f64::NAN,
    };
    println!(
        "  {n:>5} nodes {:<8} {:>10.0} samples/s acked ({} of {} batches, {} samples in {:.1} s), ack p50 {:.1} ms p99 {:.1} ms max {:.1} ms; aggregator peak RSS {:.0} MiB (avg {:.0}), CPU {:.0}%; generator CPU {:.0}%; connections accepted {} refused {} (agents: {connected} connected)",
        mode.name(),
        rate,
        acked,
        n * batches_per_node,
        samples,
        span.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        mib(p.peak_rss),
        mib(p.avg_rss),
        p.agg_cpu_pct,
        p.gen_cpu_pct,
        conn("accepted"),
        conn("shed") + conn("refused_tls") + conn("refused_hello"),
    );
    println!(
        "        wire payload sent: {sent_bytes} B ({:.3} B/sample)",
        sent_bytes as f64 / sent_samples.max(1) as f64
    );
    for (e, count) in &errors {
        println!("        {count} agent(s): {e}");
    }
    json!({
        "nodes": n,
        "mode": mode.name(),
        "batch_secs": BATCH_SECS,
        "batches_per_node": batches_per_node,
        "batches_sent": sent,
        "payload_bytes_sent": sent_bytes,
        "payload_bytes_per_sample": sent_bytes as f64 / sent_samples.max(1) as f64,
        "batches_acked": acked,
        "batches_nacked": nacked,
        "samples_acked": samples,
        "aggregator_samples_stored": stored,
        "span_secs": span.as_secs_f64(),
        "samples_per_sec": rate,
        "offered_samples_per_sec": if offered.is_finite() { json!(offered) } else { Value::Null },
        "ack_latency_ms": {
            "p50": ms(percentile(&lat, 0.5)),
            "p99": ms(percentile(&lat, 0.99)),
            "max": ms(lat.last().copied().unwrap_or_default()),
            "count": lat.len(),
        },
        "aggregator": {
            "peak_rss_mib": mib(p.peak_rss),
            "vm_hwm_mib": mib(p.hwm),
            "avg_rss_mib": mib(p.avg_rss),
            "cpu_pct": p.agg_cpu_pct,
        },
        "generator_cpu_pct": p.gen_cpu_pct,
        "connections": {
            "agents_connected": connected,
            "accepted": conn("accepted"),
            "shed": conn("shed"),
            "refused_tls": conn("refused_tls"),
            "refused_hello": conn("refused_hello"),
        },
        "agents_incomplete": p.incomplete,
        "agent_errors": errors,
    })
}

/// An aggregator limited to [`PROBE_LIMIT`] connections and [`PROBE_AGENTS`] agents that
/// stay connected: what do the ones past the limit see?
fn shed_probe(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    pki: &Pki,
    work: &Path,
    configs: &[quinn::ClientConfig],
) -> anyhow::Result<Value> {
    let agg = AggProc::start(bin, pki, work, "probe", Some(PROBE_LIMIT))?;
    let addr = agg.quic;
    let outcomes: Vec<String> = rt.block_on(async {
        let mut held = Vec::new();
        let mut out = Vec::new();
        for (i, cfg) in configs.iter().take(PROBE_AGENTS).enumerate() {
            let spec = Spec {
                node: format!("sim-node-{i:04}"),
                session: 9_000_000 + i as u64,
                client: cfg.clone(),
                batches: Arc::new(Vec::new()),
                count: 0,
                protocol: wire::PROTOCOL_VERSION,
                offset: Duration::ZERO,
                interval: None,
            };
            let shared = Shared {
                addr,
                handshakes: Semaphore::new(1),
                ready: AtomicUsize::new(0),
                start: watch::channel(None).1,
            };
            match connect(&spec, &shared).await {
                Ok(c) => {
                    out.push("connected".to_string());
                    held.push(c);
                }
                Err(e) => out.push(format!("{e:#}")),
            }
        }
        for (endpoint, conn, _, _, _) in held {
            conn.close(quinn::VarInt::from_u32(0), b"probe done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        out
    });
    let shed = prom_value(
        &agg.metrics(),
        "aggregator_connections_total{outcome=\"shed\"}",
    );
    println!(
        "Shedding probe: aggregator --max-connections {PROBE_LIMIT}, {PROBE_AGENTS} agents connecting one after the other and staying connected:"
    );
    for (i, o) in outcomes.iter().enumerate() {
        println!("  agent {}: {o}", i + 1);
    }
    println!("  aggregator_connections_total{{outcome=\"shed\"}} = {shed}");
    Ok(json!({
        "max_connections": PROBE_LIMIT,
        "agents": PROBE_AGENTS,
        "outcomes": outcomes,
        "aggregator_shed": shed,
    }))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = parse_args(&args)?;
    let nofile = raise_nofile()?;
    let max_n = opts.nodes.iter().copied().max().unwrap_or(1);
    if (nofile as usize) < max_n + 256 {
        bail!("open-files limit {nofile} is too low for {max_n} agents (raise the hard limit)");
    }
    let work = std::env::temp_dir().join(format!("ingest-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&opts, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run(opts: &Opts, work: &Path) -> anyhow::Result<()> {
    let max_n = opts.nodes.iter().copied().max().unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let t = Instant::now();
    let pki = Pki::new(work)?;
    let configs: Vec<quinn::ClientConfig> = (0..max_n.max(PROBE_AGENTS))
        .map(|i| pki.node_config(&format!("sim-node-{i:04}")))
        .collect::<Result<_, _>>()?;
    println!(
        "ingest-nodes: {} node certificates in {:.1} s; open-files limit raised to {}",
        configs.len(),
        t.elapsed().as_secs_f64(),
        raise_nofile()?
    );

    let rt_batches = (opts.secs / u64::from(BATCH_SECS)) as usize;
    let max_per_node = |n: usize| opts.max_batches.div_ceil(n).max(1);
    let need = opts
        .nodes
        .iter()
        .map(|&n| {
            let mut b = 0;
            if opts.modes.contains(&Mode::Realtime) {
                b = b.max(rt_batches);
            }
            if opts.modes.contains(&Mode::Max) {
                b = b.max(max_per_node(n));
            }
            (n, b)
        })
        .collect::<Vec<_>>();
    let mut phases = Vec::new();
    let mut session_base = 1u64;
    for &(n, per_stream) in &need {
        let t = Instant::now();
        let distinct = opts.distinct.min(n);
        let streams = prepare(distinct, per_stream);
        let per_batch: usize = streams
            .iter()
            .flat_map(|s| s.iter())
            .map(|p| p.samples)
            .sum::<usize>()
            / (distinct * per_stream).max(1);
        let bytes: usize = streams
            .iter()
            .flat_map(|s| s.iter())
            .map(|p| p.payload.len())
            .sum::<usize>()
            / (distinct * per_stream).max(1);
        println!(
            "N = {n}: {distinct} distinct streams × {per_stream} batches encoded in {:.1} s ({per_batch} samples, {bytes} B per batch on average)",
            t.elapsed().as_secs_f64()
        );
        for &mode in &opts.modes {
            let batches_per_node = match mode {
                Mode::Realtime => rt_batches,
                Mode::Max => max_per_node(n),
            };
            let tag = format!("{n}-{}", mode.name());
            let agg = AggProc::start(&opts.aggregator, &pki, work, &tag, None)?;
            println!(
                "N = {n}, {}: aggregator pid {} (QUIC {}), {batches_per_node} batches per node",
                mode.name(),
                agg.pid(),
                agg.quic
            );
            let out = run_phase(
                &rt,
                &agg,
                &configs,
                &streams,
                n,
                mode,
                batches_per_node,
                opts,
                session_base,
            )?;
            session_base += n as u64;
            let mut summary = summarize(n, mode, batches_per_node, &out);
            if let Value::Object(map) = &mut summary {
                map.insert("samples_per_batch".into(), json!(per_batch));
                map.insert("payload_bytes_per_batch".into(), json!(bytes));
                map.insert("distinct_streams".into(), json!(distinct));
            }
            phases.push(summary);
            drop(agg);
        }
    }
    let probe = if opts.probe {
        shed_probe(&rt, &opts.aggregator, &pki, work, &configs)?
    } else {
        Value::Null
    };
    let report = json!({
        "bench": "ingest-nodes",
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "window": WINDOW,
        "protocol": opts.protocol,
        "secs": opts.secs,
        "phases": phases,
        "shed_probe": probe,
    });
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", opts.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // Any existing file stands in for the aggregator binary.
        let bin = std::env::current_exe().expect("test binary");
        let bin = bin.to_str().expect("UTF-8 path");
        let o = a(&[
            "--aggregator",
            bin,
            "--nodes",
            "1,2",
            "--secs=10",
            "--modes",
            "max",
        ])
        .expect("parses");
        assert_eq!(o.nodes, [1, 2]);
        assert_eq!(o.secs, 10);
        assert_eq!(o.modes, [Mode::Max]);
        assert!(a(&["--aggregator", "/nonexistent/aggregator"]).is_err());
        assert!(a(&["--aggregator", bin, "--nodes", "0"]).is_err());
        assert!(a(&["--aggregator", bin, "--bogus", "1"]).is_err());
    }

    #[test]
    fn prometheus_values() {
        let text = "# HELP x\naggregator_connections_total{outcome=\"accepted\"} 12\naggregator_connections_total{outcome=\"shed\"} 2\n";
        assert_eq!(
            prom_value(text, "aggregator_connections_total{outcome=\"shed\"}"),
            2.0
        );
        assert_eq!(prom_value(text, "aggregator_connections_total"), 14.0);
    }
}
