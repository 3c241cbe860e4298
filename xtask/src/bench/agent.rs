//! `cargo xtask bench agent`: what the node agent costs the host it watches, side by side
//! with Prometheus node_exporter and Netdata measured in the same run on the same load.
//!
//! Steps: build the release binaries; make a temporary directory with a development PKI;
//! start the aggregator and one agent (`--interval-secs`) on free loopback ports; install
//! (apt) and start the peers unless `--no-peers`; start a modest load generator; warm up
//! 5 s; then measure for `--secs`, sampling every second. node_exporter is scraped every
//! interval, since it collects only when scraped. Afterwards: stop the peers, stop the
//! agent (it delivers what it holds), check that the aggregator stored samples, stop the
//! aggregator, print the table and write `target/bench-agent.json`.
//!
//! Every program is measured the same way ([`procfs`]): CPU is the growth of user+system
//! time of its whole process tree over the window, as a percentage of one core; peak RSS
//! is `VmHWM` (summed over the tree); average RSS is `VmRSS` sampled every second. Only
//! Netdata has a tree (its plugins); the others are single processes.
//!
//! Every started program sits behind a [`Daemon`] guard, and the load generator behind its
//! own, so an error or Ctrl-C at any point stops them all.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::daemon::Daemon;
use super::peers::{self, NETDATA, NODE_EXPORTER};
use super::procfs::{self, ProcStat, TreeCpu};
use super::{check_interrupted, http_agent};
use crate::{certs, cmd};

const WARMUP: Duration = Duration::from_secs(5);
const NODE: &str = "bench";

/// The issues' targets for the agent at a 1 s interval: (name, CPU % of one core, RSS MiB).
const TARGETS: &[(&str, f64, f64)] = &[("Foundation", 2.0, 40.0), ("eBPF", 1.0, 30.0)];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to measure, after a 5 s warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// Collection interval of node-agent and Netdata, and node_exporter's scrape interval.
    #[arg(long, value_name = "SECS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_secs: u64,
    /// Measure node-agent alone: do not install or start node_exporter and Netdata.
    #[arg(long)]
    pub no_peers: bool,
    /// Run no load generator during the run.
    #[arg(long)]
    no_load: bool,
    /// Extra argument for `node-agent run` (repeat it), e.g. `--agent-arg=--max-processes=0`
    /// to see what one collector costs.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

/// What the run measures about one program.
struct Measured {
    name: &'static str,
    /// "agent", "peer", or "info" (the aggregator: not compared, shown for scale).
    role: &'static str,
    version: String,
    note: String,
    root_pid: i32,
    cpu: Option<TreeCpu>,
    n_samples: u64,
    rss_kib_sum: u64,
    max_rss_kib: u64,
    peak_hwm_kib: u64,
    max_procs: usize,
    /// Every process seen in the tree, by pid: its command name (several only for Netdata).
    commands: BTreeMap<i32, String>,
}

impl Measured {
    fn new(name: &'static str, role: &'static str, version: String, root_pid: i32) -> Self {
        Measured {
            name,
            role,
            version,
            note: String::new(),
            root_pid,
            cpu: None,
            n_samples: 0,
            rss_kib_sum: 0,
            max_rss_kib: 0,
            peak_hwm_kib: 0,
            max_procs: 0,
            commands: BTreeMap::new(),
        }
    }

    /// Take one sample from a snapshot of all processes.
    fn sample(&mut self, all: &[ProcStat]) {
        let members = procfs::tree(all, self.root_pid);
        match &mut self.cpu {
            Some(cpu) => cpu.update(&members),
            None => self.cpu = Some(TreeCpu::new(&members)),
        }
        let (mut rss, mut hwm) = (0, 0);
        for p in &members {
            self.commands
                .entry(p.pid)
                .or_insert_with(|| procfs::comm(p.pid));
            if let Some((r, h)) = procfs::memory_kib(p.pid) {
                rss += r;
                hwm += h;
            }
        }
        self.n_samples += 1;
        self.rss_kib_sum += rss;
        self.max_rss_kib = self.max_rss_kib.max(rss);
        self.peak_hwm_kib = self.peak_hwm_kib.max(hwm);
        self.max_procs = self.max_procs.max(members.len());
    }

    /// "pid name" for every process seen in the tree.
    fn tree_names(&self) -> Vec<String> {
        self.commands
            .iter()
            .map(|(pid, name)| format!("{pid} {name}"))
            .collect()
    }

    fn cpu_pct(&self, wall: Duration) -> f64 {
        let ticks = self.cpu.as_ref().map_or(0, TreeCpu::ticks);
        ticks as f64 / procfs::ticks_per_sec() / wall.as_secs_f64() * 100.0
    }

    fn avg_rss_mib(&self) -> f64 {
        self.rss_kib_sum as f64 / self.n_samples.max(1) as f64 / 1024.0
    }

    fn peak_rss_mib(&self) -> f64 {
        self.peak_hwm_kib as f64 / 1024.0
    }
}

/// A peer that could not be measured, and why.
struct NotMeasured {
    name: &'static str,
    why: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    super::catch_stop_signals()?;
    let command_line = std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");

    let mut build = cmd::cargo();
    build.args(["build", "--release", "-p", "aggregator", "-p", "node-agent"]);
    cmd::run(&mut build)?;
    let target = target_dir()?;
    let aggregator_bin = target.join("release/aggregator");
    let agent_bin = target.join("release/node-agent");
    for bin in [&aggregator_bin, &agent_bin] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }

    // Declared first so that it is dropped last, after every program in it has stopped.
    let mut work = WorkDir::create()?;
    let dir = work.path.clone();
    let pki = certs::ensure(&dir.join("pki"), &[NODE.to_string()])?;
    let (node_cert, node_key) = pki.node(NODE);

    let mut not_measured = Vec::new();
    let mut background = Vec::new();
    let mut peer_ok = [false, false];
    if args.no_peers {
        println!("xtask: bench: --no-peers: measuring node-agent alone");
    } else {
        background = peers::already_running();
        for other in &background {
            println!("xtask: bench: warning: {other} was already running; it loads this run");
        }
        let why_not = peers::ensure_installed(&[&NODE_EXPORTER, &NETDATA], &dir);
        for ((peer, why), ok) in [&NODE_EXPORTER, &NETDATA]
            .iter()
            .zip(why_not)
            .zip(&mut peer_ok)
        {
            match why {
                Some(why) => {
                    println!("xtask: bench: {}: not measured: {why}", peer.name);
                    not_measured.push(NotMeasured {
                        name: peer.name,
                        why,
                    });
                }
                None => *ok = true,
            }
        }
    }

    let ports = free_ports()?;
    let store_dir = dir.join("aggregator");
    let agent_dir = dir.join("node-agent");
    for d in [&store_dir, &agent_dir] {
        fs::create_dir_all(d).with_context(|| format!("could not create {}", d.display()))?;
    }

    let mut aggregator = start_aggregator(&aggregator_bin, &pki, &store_dir, &ports, &dir)?;

    let mut agent = Command::new(&agent_bin);
    agent
        .arg("run")
        .args(["--aggregator", &format!("127.0.0.1:{}", ports.quic)])
        .args(["--server-name", "localhost"])
        .arg("--ca")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&node_cert)
        .arg("--key")
        .arg(&node_key)
        .args(["--node", NODE])
        .args(["--interval-secs", &args.interval_secs.to_string()])
        .args(["--batch-secs", &args.interval_secs.max(5).to_string()])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports.metrics)])
        .args(&args.agent_args)
        .current_dir(&agent_dir);
    let mut agent = Daemon::spawn(
        "node-agent",
        agent,
        &dir.join("node-agent.log"),
        Duration::from_secs(20),
    )?;
    agent.wait_ready(
        &format!("http://127.0.0.1:{}/healthz", ports.metrics),
        Duration::from_secs(30),
    )?;

    let mut node_exporter = None;
    if peer_ok[0] {
        match peers::start_node_exporter(ports.node_exporter, &dir) {
            Ok(d) => node_exporter = Some(d),
            Err(e) => {
                println!("xtask: bench: node_exporter: not measured: {e:#}");
                not_measured.push(NotMeasured {
                    name: NODE_EXPORTER.name,
                    why: format!("did not start: {e:#}"),
                });
            }
        }
    }
    let mut netdata = None;
    if peer_ok[1] {
        match peers::start_netdata(ports.netdata, args.interval_secs, &dir) {
            Ok(d) => netdata = Some(d),
            Err(e) => {
                println!("xtask: bench: netdata: not measured: {e:#}");
                not_measured.push(NotMeasured {
                    name: NETDATA.name,
                    why: format!("did not start: {e:#}"),
                });
            }
        }
    }

    let mut measured = vec![Measured::new(
        "node-agent",
        "agent",
        peers::version(&agent_bin, "--version"),
        agent.pid(),
    )];
    if let Some(d) = &node_exporter {
        let mut m = Measured::new(
            "node_exporter",
            "peer",
            peers::version(Path::new(peers::NODE_EXPORTER_BIN), "--version"),
            d.pid(),
        );
        m.note = format!("scraped every {} s", args.interval_secs);
        measured.push(m);
    }
    if let Some(d) = &netdata {
        let mut m = Measured::new(
            "netdata",
            "peer",
            peers::version(Path::new(peers::NETDATA_BIN), "-v"),
            d.pid(),
        );
        m.note = "with its plugins (process tree)".into();
        measured.push(m);
    }
    measured.push(Measured::new(
        "aggregator",
        "info",
        peers::version(&aggregator_bin, "--version"),
        aggregator.pid(),
    ));

    let load = (!args.no_load).then(|| LoadGen::start(&dir));
    let scrape_url = format!("http://127.0.0.1:{}/metrics", ports.node_exporter);
    let mut scraper = Scraper::new(node_exporter.is_some().then_some(scrape_url));
    let mut running: Vec<&mut Daemon> = [
        Some(&mut aggregator),
        Some(&mut agent),
        node_exporter.as_mut(),
        netdata.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect();

    println!("xtask: bench: warming up for {} s", WARMUP.as_secs());
    let start = Instant::now();
    let mut tick = 0u64;
    while start.elapsed() < WARMUP {
        every_tick(&mut running, &mut scraper, tick, args.interval_secs)?;
        tick += 1;
        sleep_until(start + Duration::from_secs(tick));
    }
    scraper.reset_stats();

    println!(
        "xtask: bench: measuring for {} s (a sample every second)",
        args.secs
    );
    let host_start = procfs::host_cpu_jiffies();
    let loadavg_start = loadavg();
    let window_start = Instant::now();
    let all = procfs::snapshot();
    for m in &mut measured {
        m.sample(&all);
    }
    for k in 1..=args.secs {
        sleep_until(window_start + Duration::from_secs(k));
        every_tick(&mut running, &mut scraper, tick, args.interval_secs)?;
        tick += 1;
        let all = procfs::snapshot();
        for m in &mut measured {
            m.sample(&all);
        }
    }
    let wall = window_start.elapsed();
    let host_end = procfs::host_cpu_jiffies();
    let loadavg_end = loadavg();
    let host_busy_pct = match (host_start, host_end) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
        }
        _ => None,
    };
    drop(running);
    let load_stats = load.map(LoadGen::finish);
    let agent_self = agent_self_metrics(ports.metrics);

    println!("xtask: bench: window done; stopping");
    let mut stop_errors = Vec::new();
    for daemon in [netdata.as_mut(), node_exporter.as_mut(), Some(&mut agent)]
        .into_iter()
        .flatten()
    {
        if let Err(e) = daemon.stop() {
            stop_errors.push(format!("{e:#}"));
        }
    }
    let n_samples = stored_samples(ports.http);
    if let Err(e) = aggregator.stop() {
        stop_errors.push(format!("{e:#}"));
    }

    let report = Report {
        args,
        command_line: &command_line,
        wall,
        measured: &measured,
        not_measured: &not_measured,
        background: &background,
        host_busy_pct,
        loadavg: (loadavg_start, loadavg_end),
        load: load_stats.as_ref(),
        scrapes: &scraper,
        agent_self: &agent_self,
        stored_samples: n_samples.as_ref().ok().copied(),
    };
    report.print();
    let json_path = target.join("bench-agent.json");
    let json = serde_json::to_string_pretty(&report.json())?;
    fs::write(&json_path, json + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("xtask: bench: wrote {}", json_path.display());

    let n_samples = n_samples.context("could not count the aggregator's samples")?;
    if n_samples == 0 {
        bail!(
            "the aggregator stored no samples; see the logs in {}",
            dir.display()
        );
    }
    if !stop_errors.is_empty() {
        bail!("did not stop cleanly: {}", stop_errors.join("; "));
    }
    work.remove();
    Ok(())
}

/// Once a second: everything still running, and node_exporter scraped on its interval.
fn every_tick(
    running: &mut [&mut Daemon],
    scraper: &mut Scraper,
    tick: u64,
    interval_secs: u64,
) -> anyhow::Result<()> {
    check_interrupted()?;
    for daemon in running.iter_mut() {
        daemon.check_running()?;
    }
    if tick.is_multiple_of(interval_secs) {
        scraper.scrape();
    }
    Ok(())
}

pub(super) fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

/// Scrapes node_exporter the way a Prometheus server would: GET /metrics, read it all.
struct Scraper {
    url: Option<String>,
    http: ureq::Agent,
    n_ok: u64,
    n_failed: u64,
    bytes: u64,
    secs: f64,
}

impl Scraper {
    fn new(url: Option<String>) -> Scraper {
        Scraper {
            url,
            http: http_agent(Duration::from_secs(5)),
            n_ok: 0,
            n_failed: 0,
            bytes: 0,
            secs: 0.0,
        }
    }

    fn scrape(&mut self) {
        let Some(url) = &self.url else { return };
        let started = Instant::now();
        let body = self
            .http
            .get(url)
            .call()
            .ok()
            .filter(|resp| resp.status() == 200)
            .and_then(|mut resp| resp.body_mut().read_to_string().ok());
        match body {
            Some(body) => {
                self.n_ok += 1;
                self.bytes += body.len() as u64;
                self.secs += started.elapsed().as_secs_f64();
            }
            None => self.n_failed += 1,
        }
    }

    fn reset_stats(&mut self) {
        (self.n_ok, self.n_failed, self.bytes, self.secs) = (0, 0, 0, 0.0);
    }
}

/// Starts the aggregator on loopback `ports` with its store in `store_dir` and its log in
/// `dir`, and waits until it is healthy.
pub(super) fn start_aggregator(
    bin: &Path,
    pki: &certs::Pki,
    store_dir: &Path,
    ports: &Ports,
    dir: &Path,
) -> anyhow::Result<Daemon> {
    let mut aggregator = Command::new(bin);
    aggregator
        .arg("serve")
        .arg("--data-dir")
        .arg(store_dir)
        .args(["--http-listen", &format!("127.0.0.1:{}", ports.http)])
        .args(["--quic-listen", &format!("127.0.0.1:{}", ports.quic)])
        .arg("--ca")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.aggregator_cert)
        .arg("--key")
        .arg(&pki.aggregator_key)
        .current_dir(store_dir);
    let mut aggregator = Daemon::spawn(
        "aggregator",
        aggregator,
        &dir.join("aggregator.log"),
        Duration::from_secs(30),
    )?;
    aggregator.wait_ready(
        &format!("http://127.0.0.1:{}/healthz", ports.http),
        Duration::from_secs(60),
    )?;
    Ok(aggregator)
}

/// The ports everything listens on, all on 127.0.0.1.
pub(super) struct Ports {
    pub(super) http: u16,
    pub(super) quic: u16,
    pub(super) metrics: u16,
    node_exporter: u16,
    netdata: u16,
}

/// Free ports, chosen by the kernel. Every socket is held until all are chosen so that no
/// two are the same; someone else could still take one before we use it (unlikely).
pub(super) fn free_ports() -> anyhow::Result<Ports> {
    let tcp: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("could not find a free TCP port")?;
    let udp = UdpSocket::bind("127.0.0.1:0").context("could not find a free UDP port")?;
    let port = |idx: usize| -> anyhow::Result<u16> { Ok(tcp[idx].local_addr()?.port()) };
    Ok(Ports {
        http: port(0)?,
        metrics: port(1)?,
        node_exporter: port(2)?,
        netdata: port(3)?,
        quic: udp.local_addr()?.port(),
    })
}

/// The bench's temporary directory: removed after a good run, kept (with the logs) after
/// a failed one.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub(super) fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("autodevops-bench-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("could not clear {}", path.display()))?;
        }
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        println!(
            "xtask: bench: working directory (PKI, logs, data): {}",
            path.display()
        );
        Ok(WorkDir { path, keep: true })
    }

    pub(super) fn remove(&mut self) {
        self.keep = false;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "xtask: bench: kept {} (logs of this run)",
                self.path.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            println!(
                "xtask: bench: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The same load for every measured program, since they all run at once: a few short
/// processes per second (process collectors see pids come and go) and some file I/O.
struct LoadGen {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadStats>>,
}

#[derive(Default)]
struct LoadStats {
    n_procs: u64,
    bytes_written: u64,
}

/// Short processes spawned per second.
const LOAD_PROCS_PER_SEC: u64 = 4;
/// Bytes written, fsynced and read back per second.
const LOAD_BYTES_PER_SEC: usize = 1024 * 1024;

impl LoadGen {
    fn start(dir: &Path) -> LoadGen {
        println!(
            "xtask: bench: load: {LOAD_PROCS_PER_SEC} short processes/s (`true`), \
             {} MiB/s written, fsynced and read back",
            LOAD_BYTES_PER_SEC / (1024 * 1024)
        );
        let stop = Arc::new(AtomicBool::new(false));
        let file = dir.join("load.bin");
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut stats = LoadStats::default();
                let buf = vec![0x5a_u8; LOAD_BYTES_PER_SEC];
                let step = Duration::from_millis(1000 / LOAD_PROCS_PER_SEC);
                let start = Instant::now();
                let mut idx = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let spawned = Command::new("true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if spawned.is_ok() {
                        stats.n_procs += 1;
                    }
                    if idx.is_multiple_of(LOAD_PROCS_PER_SEC) && file_io(&file, &buf).is_ok() {
                        stats.bytes_written += buf.len() as u64;
                    }
                    idx += 1;
                    sleep_until(start + step * idx as u32);
                }
                let _ = fs::remove_file(&file);
                stats
            })
        };
        LoadGen {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn file_io(path: &Path, buf: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(buf)?;
    f.sync_all()?;
    let mut back = Vec::with_capacity(buf.len());
    fs::File::open(path)?.read_to_end(&mut back)?;
    Ok(())
}

/// What the agent says about itself on /metrics (read once, after the window).
#[derive(Default)]
struct AgentSelf {
    ticks: f64,
    collect_secs: f64,
    samples_collected: f64,
    samples_built: f64,
    payload_bytes_built: f64,
    batches_acked: f64,
    collector_errors: f64,
}

fn agent_self_metrics(port: u16) -> Option<AgentSelf> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = http_agent(Duration::from_secs(5))
        .get(&url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    Some(AgentSelf {
        ticks: prom_value(&text, "agent_collect_seconds_count"),
        collect_secs: prom_value(&text, "agent_collect_seconds_sum"),
        samples_collected: prom_value(&text, "agent_samples_collected_total"),
        samples_built: prom_value(&text, "agent_samples_built_total"),
        payload_bytes_built: prom_value(&text, "agent_payload_bytes_built_total"),
        batches_acked: prom_value(&text, "agent_batches_acked_total"),
        collector_errors: prom_value(&text, "agent_collector_errors_total"),
    })
}

/// The sum over all label sets of metric `name` in Prometheus text format.
fn prom_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        // Not `sum()`: an empty f64 sum is -0.0.
        .fold(0.0, |acc, v| acc + v)
}

/// `SELECT count(*) FROM samples` on the aggregator.
fn stored_samples(http_port: u16) -> anyhow::Result<i64> {
    let url = format!("http://127.0.0.1:{http_port}/api/v1/sql");
    let body = json!({ "sql": "SELECT count(*) FROM samples" }).to_string();
    let mut resp = http_agent(Duration::from_secs(30))
        .post(&url)
        .header("content-type", "application/json")
        .send(body)
        .with_context(|| format!("POST {url} failed"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    if status != 200 {
        bail!("POST {url} answered {status}: {text}");
    }
    let value: Value = serde_json::from_str(&text).context("bad JSON from the SQL API")?;
    value["rows"][0][0]
        .as_i64()
        .with_context(|| format!("no count in {text}"))
}

/// Cargo's target directory (it may be moved by `CARGO_TARGET_DIR` or config).
pub(super) fn target_dir() -> anyhow::Result<PathBuf> {
    let out = cmd::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run `cargo metadata`")?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed bad JSON")?;
    let dir = json["target_directory"]
        .as_str()
        .context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// HEAD's short hash, with `+dirty` when the work tree has changes (the binaries were
/// built from the work tree).
pub(super) fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(cmd::repo_root())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "?".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head}+dirty"),
        _ => head,
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Everything the run found, to print and to write as JSON.
struct Report<'a> {
    args: &'a Args,
    command_line: &'a str,
    wall: Duration,
    measured: &'a [Measured],
    not_measured: &'a [NotMeasured],
    background: &'a [String],
    host_busy_pct: Option<f64>,
    loadavg: (String, String),
    load: Option<&'a LoadStats>,
    scrapes: &'a Scraper,
    agent_self: &'a Option<AgentSelf>,
    stored_samples: Option<i64>,
}

impl Report<'_> {
    fn agent(&self) -> &Measured {
        &self.measured[0]
    }

    fn print(&self) {
        let wall = self.wall;
        println!();
        println!(
            "Agent overhead: {:.1} s window after {} s warm-up, interval {} s, {} CPUs, \
             host CPU busy {} (all processes), load average {} -> {}",
            wall.as_secs_f64(),
            WARMUP.as_secs(),
            self.args.interval_secs,
            n_cpus(),
            self.host_busy_pct
                .map_or("?".into(), |b| format!("{b:.0}%")),
            self.loadavg.0,
            self.loadavg.1,
        );
        println!();
        println!(
            "{:<14} {:>10} {:>12} {:>13} {:>6}  notes",
            "process", "CPU % 1core", "avg RSS MiB", "peak RSS MiB", "procs"
        );
        for m in self.measured {
            let mut note = m.note.clone();
            if m.role == "info" {
                note = "receives the agent's data; not compared".into();
            }
            println!(
                "{:<14} {:>10.2} {:>12.1} {:>13.1} {:>6}  {note}",
                m.name,
                m.cpu_pct(wall),
                m.avg_rss_mib(),
                m.peak_rss_mib(),
                m.max_procs,
            );
        }
        for n in self.not_measured {
            println!("{:<14} not measured: {}", n.name, n.why);
        }
        for m in self.measured.iter().filter(|m| m.commands.len() > 1) {
            println!(
                "{}'s process tree (all seen): {}",
                m.name,
                m.tree_names().join(", ")
            );
        }
        println!();
        let agent = self.agent();
        for peer in self.measured.iter().filter(|m| m.role == "peer") {
            println!(
                "node-agent / {}: CPU {:.2}x, peak RSS {:.2}x, avg RSS {:.2}x",
                peer.name,
                ratio(agent.cpu_pct(wall), peer.cpu_pct(wall)),
                ratio(agent.peak_rss_mib(), peer.peak_rss_mib()),
                ratio(agent.avg_rss_mib(), peer.avg_rss_mib()),
            );
        }
        for (name, cpu_max, rss_max) in TARGETS {
            let cpu = agent.cpu_pct(wall);
            let rss = agent.peak_rss_mib();
            println!(
                "target {name} (CPU <= {cpu_max}% of one core, RSS <= {rss_max} MiB): CPU {}, RSS {}",
                verdict(cpu, *cpu_max, "%"),
                verdict(rss, *rss_max, " MiB"),
            );
        }
        if let Some(s) = self.agent_self {
            let mean_ms = s.collect_secs / s.ticks.max(1.0) * 1000.0;
            println!(
                "node-agent's own metrics: {:.0} ticks, collection {mean_ms:.1} ms per tick \
                 (wall time, ~{:.2}% of a core at this interval), {:.0} samples per tick, \
                 {:.2} bytes per sample on the wire, {:.0} batches acked, {:.0} collector errors",
                s.ticks,
                mean_ms / 10.0 / self.args.interval_secs as f64,
                s.samples_collected / s.ticks.max(1.0),
                s.payload_bytes_built / s.samples_built.max(1.0),
                s.batches_acked,
                s.collector_errors,
            );
        }
        if self.scrapes.url.is_some() {
            println!(
                "node_exporter: {} scrapes ({} failed), {:.0} KiB and {:.1} ms each on average",
                self.scrapes.n_ok,
                self.scrapes.n_failed,
                self.scrapes.bytes as f64 / self.scrapes.n_ok.max(1) as f64 / 1024.0,
                self.scrapes.secs / self.scrapes.n_ok.max(1) as f64 * 1000.0,
            );
        }
        if let Some(load) = self.load {
            println!(
                "load generator: {} processes, {} MiB written+fsynced+read (whole run)",
                load.n_procs,
                load.bytes_written / (1024 * 1024)
            );
        }
        for other in self.background {
            println!("warning: {other} was running before the bench and loaded it");
        }
        match self.stored_samples {
            Some(n) => println!("aggregator: {n} samples stored (SELECT count(*) FROM samples)"),
            None => println!("aggregator: could not count the stored samples"),
        }
        println!(
            "CPU: user+system time of the process tree / wall time of the window. Peak RSS: \
             VmHWM (summed over a tree). Avg RSS: VmRSS sampled each second."
        );
        println!();
    }

    fn json(&self) -> Value {
        let wall = self.wall;
        let agent = self.agent();
        let processes: Vec<Value> = self
            .measured
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "role": m.role,
                    "version": m.version,
                    "cpu_pct_of_one_core": round2(m.cpu_pct(wall)),
                    "avg_rss_mib": round2(m.avg_rss_mib()),
                    "peak_rss_mib": round2(m.peak_rss_mib()),
                    "max_sampled_rss_mib": round2(m.max_rss_kib as f64 / 1024.0),
                    "max_processes_in_tree": m.max_procs,
                    "processes_seen": m.tree_names(),
                    "samples": m.n_samples,
                    "note": m.note,
                })
            })
            .collect();
        let ratios: Vec<Value> = self
            .measured
            .iter()
            .filter(|m| m.role == "peer")
            .map(|peer| {
                json!({
                    "peer": peer.name,
                    "cpu": round2(ratio(agent.cpu_pct(wall), peer.cpu_pct(wall))),
                    "peak_rss": round2(ratio(agent.peak_rss_mib(), peer.peak_rss_mib())),
                    "avg_rss": round2(ratio(agent.avg_rss_mib(), peer.avg_rss_mib())),
                })
            })
            .collect();
        let targets: Vec<Value> = TARGETS
            .iter()
            .map(|(name, cpu_max, rss_max)| {
                json!({
                    "target": name,
                    "cpu_pct_max": cpu_max,
                    "rss_mib_max": rss_max,
                    "cpu_met": agent.cpu_pct(wall) <= *cpu_max,
                    "rss_met": agent.peak_rss_mib() <= *rss_max,
                })
            })
            .collect();
        let agent_self = self.agent_self.as_ref().map(|s| {
            json!({
                "ticks": s.ticks,
                "collect_ms_per_tick": round2(s.collect_secs / s.ticks.max(1.0) * 1000.0),
                "samples_per_tick": round2(s.samples_collected / s.ticks.max(1.0)),
                "bytes_per_sample": round2(s.payload_bytes_built / s.samples_built.max(1.0)),
                "batches_acked": s.batches_acked,
                "collector_errors": s.collector_errors,
            })
        });
        json!({
            "date_utc": utc_now(),
            "command": self.command_line,
            "git_commit": git_commit(),
            "machine": {
                "cpus": n_cpus(),
                "cpu_model": cpu_model(),
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string()).unwrap_or_default(),
                "mem_total_mib": mem_total_mib(),
                "host_cpu_busy_pct": self.host_busy_pct.map(round2),
                "loadavg_start": self.loadavg.0,
                "loadavg_end": self.loadavg.1,
                "peers_already_running": self.background,
            },
            "config": {
                "window_secs": round2(wall.as_secs_f64()),
                "warmup_secs": WARMUP.as_secs(),
                "interval_secs": self.args.interval_secs,
                "agent_args": self.args.agent_args,
                "load": self.load.map(|_| json!({
                    "procs_per_sec": LOAD_PROCS_PER_SEC,
                    "bytes_per_sec_written_fsynced_read": LOAD_BYTES_PER_SEC,
                })),
                "node_exporter_scrape_interval_secs":
                    self.scrapes.url.as_ref().map(|_| self.args.interval_secs),
            },
            "method": "CPU: growth of utime+stime (+ reaped children) of the process tree over \
                       the window / wall time, % of one core. peak_rss: VmHWM summed over the \
                       tree. avg_rss: VmRSS summed over the tree, sampled every second.",
            "processes": processes,
            "not_measured": self.not_measured.iter()
                .map(|n| json!({ "name": n.name, "why": n.why }))
                .collect::<Vec<_>>(),
            "ratios_agent_over_peer": ratios,
            "targets": targets,
            "agent_self_metrics": agent_self,
            "node_exporter_scrapes": self.scrapes.url.as_ref().map(|_| json!({
                "ok": self.scrapes.n_ok,
                "failed": self.scrapes.n_failed,
                "avg_bytes": self.scrapes.bytes / self.scrapes.n_ok.max(1),
            })),
            "aggregator_samples_stored": self.stored_samples,
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// "0.85% ok" or "2.50% MISSED by 0.50% (25%)".
fn verdict(value: f64, max: f64, unit: &str) -> String {
    if value <= max {
        format!("{value:.2}{unit} ok")
    } else {
        let over = value - max;
        format!(
            "{value:.2}{unit} MISSED by {over:.2}{unit} ({:.0}%)",
            over / max * 100.0
        )
    }
}

pub(super) fn n_cpus() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get())
}

pub(super) fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn mem_total_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| procfs::parse_status_kib(&s, "MemTotal"))
        .map_or(0, |kib| kib / 1024)
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn reads_prometheus_values_across_labels() {
        let text = "# HELP agent_collect_seconds x\n\
                    agent_collect_seconds_sum 1.5\n\
                    agent_collect_seconds_count 60\n\
                    agent_collector_errors_total{collector=\"host\"} 2\n\
                    agent_collector_errors_total{collector=\"cgroup\"} 1\n";
        assert_eq!(prom_value(text, "agent_collect_seconds_count"), 60.0);
        assert_eq!(prom_value(text, "agent_collect_seconds_sum"), 1.5);
        assert_eq!(prom_value(text, "agent_collector_errors_total"), 3.0);
        assert_eq!(prom_value(text, "agent_collect_seconds"), 0.0);
    }

    #[test]
    fn verdict_says_by_how_much() {
        assert_eq!(verdict(0.85, 2.0, "%"), "0.85% ok");
        assert_eq!(verdict(2.5, 2.0, "%"), "2.50% MISSED by 0.50% (25%)");
    }
}
