//! Benchmark fixtures: a deterministic, realistic node stream, and a simulated agent that
//! ships pre-encoded batches to a real aggregator over QUIC.
//!
//! The stream is what Scarlet emits on a typical Kubernetes worker every 1 s tick: about 65
//! host series (CPU, memory, load, PSI, disks, network, filesystems), the top 200
//! processes × 6 metrics and 50 cgroups × 7 metrics, about 1,615 series per tick. Values
//! are produced the way the collectors produce them (node-agent/src/collect): counters
//! turned into per-second rates over the *measured* interval (so a tick that came 2 ms late
//! turns 8192 bytes into 8176 B/s), then rounded as the agent rounds (`round2` for
//! percentages and small rates, `.round()` for byte rates). Timestamps are one per tick,
//! shared by every series, 1000 ms apart with ±3 ms of wake-up jitter.
//!
//! Deterministic: the same [`StreamConfig`] always yields the same batches (a SplitMix64
//! generator of our own, so no dependency upgrade changes the data).
//!
//! Used by `benches/codec.rs` (bytes per sample, encode/decode) and `benches/ingest.rs`
//! (end-to-end ingest over QUIC with mutual TLS).

pub mod remote_write;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::dict::SenderDict;
use common::model::{Batch, Point, SeriesKey, SeriesPoints};
use common::wire::{self, BatchFrame, Frame, Hello};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// SplitMix64: tiny, fast, and stable across dependency versions.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `n` lower-case hex digits.
    pub fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Rounds as the agent does for percentages and small rates (`collect::round2`).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What kind of node stream to generate.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Processes with series (the agent's top-N by CPU and RSS).
    pub processes: usize,
    /// Kubernetes pods on the node; each has a pod slice and two container scopes.
    pub pods: usize,
    /// Chance per tick that a non-system process exits; as many new pids appear.
    pub churn_per_tick: f64,
    /// Timestamp of the first tick, ms since the epoch.
    pub start_ms: i64,
}

impl StreamConfig {
    /// A steady node: the same 200 processes and 50 cgroups all along.
    pub fn steady(seed: u64) -> Self {
        StreamConfig {
            seed,
            processes: 200,
            pods: 14,
            churn_per_tick: 0.0,
            start_ms: 1_750_000_000_000,
        }
    }

    /// A busy node: 1% of processes exit each tick (≈5% per 5 s batch) and new pids take
    /// their place; a new process has only RSS, threads and fds on its first tick (CPU and
    /// I/O rates need a previous reading), as in the agent.
    pub fn churn(seed: u64) -> Self {
        StreamConfig {
            churn_per_tick: 0.01,
            ..StreamConfig::steady(seed)
        }
    }
}

/// Groups one batch's ticks into series, in first-appearance order (as the agent's
/// `ship::batcher::Batcher` does).
#[derive(Default)]
struct Batcher {
    series: Vec<SeriesPoints>,
    index: HashMap<SeriesKey, usize>,
}

impl Batcher {
    fn push(&mut self, key: &SeriesKey, point: Point) {
        match self.index.get(key) {
            Some(&idx) => self.series[idx].points.push(point),
            None => {
                self.index.insert(key.clone(), self.series.len());
                self.series.push(SeriesPoints {
                    key: key.clone(),
                    points: vec![point],
                });
            }
        }
    }

    fn finish(self) -> Batch {
        Batch {
            series: self.series,
            events: Vec::new(),
        }
    }
}

/// How busy a process is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Activity {
    Idle,
    Light,
    Busy,
}

#[derive(Clone, Debug)]
struct Process {
    keys: [SeriesKey; 6],
    /// Part of the node's fabric (systemd, kubelet, pause...): never exits in churn.
    system: bool,
    activity: Activity,
    /// Mean CPU ticks (1/100 s) per second.
    cpu_mean: f64,
    rss_pages: u64,
    threads: u32,
    fds: u32,
    /// Ticks seen so far (rates need a previous reading).
    seen: u32,
}

const PROC_METRICS: [&str; 6] = [
    "proc.cpu_pct",
    "proc.rss_bytes",
    "proc.threads",
    "proc.fds",
    "proc.read_bytes_per_s",
    "proc.write_bytes_per_s",
];

const CGROUP_METRICS: [&str; 7] = [
    "cgroup.mem_usage_bytes",
    "cgroup.mem_limit_bytes",
    "cgroup.cpu_pct",
    "cgroup.cpu_throttled_periods_per_s",
    "cgroup.cpu_throttled_pct",
    "cgroup.io_read_bytes_per_s",
    "cgroup.io_write_bytes_per_s",
];

#[derive(Clone, Debug)]
struct Cgroup {
    keys: [SeriesKey; 7],
    mem_pages: u64,
    limit_bytes: u64,
    /// Mean CPU use in percent of one core.
    cpu_mean: f64,
    /// Has a CPU quota it sometimes hits.
    throttles: bool,
    io_active: bool,
}

/// Host-level state (one `host` entity, two disks, one NIC, two filesystems).
#[derive(Clone, Debug)]
struct Host {
    keys: Vec<SeriesKey>,
    user: f64,
    system: f64,
    iowait: f64,
    mem_total: u64,
    mem_used_pages: u64,
    mem_cache_pages: u64,
    load: [f64; 3],
    psi_avg10: [f64; 6],
    disk_busy: [f64; 2],
    net_rx: f64,
    net_tx: f64,
    fs_used: [u64; 2],
}

const HOST_METRICS: [&str; 37] = [
    "cpu.usage_pct",
    "cpu.user_pct",
    "cpu.system_pct",
    "cpu.iowait_pct",
    "cpu.steal_pct",
    "cpu.count",
    "cpu.context_switches_per_s",
    "mem.total_bytes",
    "mem.used_bytes",
    "mem.available_bytes",
    "mem.used_pct",
    "swap.used_bytes",
    "load.1m",
    "load.5m",
    "load.15m",
    "proc.count",
    "proc.zombies",
    "proc.dropped",
    "proc.running",
    "proc.blocked",
    "cgroup.count",
    "cgroup.dropped",
    "psi.cpu.some_avg10",
    "psi.cpu.full_avg10",
    "psi.memory.some_avg10",
    "psi.memory.full_avg10",
    "psi.io.some_avg10",
    "psi.io.full_avg10",
    "psi.cpu.some_stall_pct",
    "psi.cpu.full_stall_pct",
    "psi.memory.some_stall_pct",
    "psi.memory.full_stall_pct",
    "psi.io.some_stall_pct",
    "psi.io.full_stall_pct",
    "disk.dropped",
    "net.dropped",
    "fs.dropped",
];
const DISKS: [&str; 2] = ["nvme0n1", "nvme1n1"];
const DISK_METRICS: [&str; 5] = [
    "disk.read_bytes_per_s",
    "disk.write_bytes_per_s",
    "disk.reads_per_s",
    "disk.writes_per_s",
    "disk.io_util_pct",
];
const NET_METRICS: [&str; 8] = [
    "net.rx_bytes_per_s",
    "net.tx_bytes_per_s",
    "net.rx_packets_per_s",
    "net.tx_packets_per_s",
    "net.rx_errors_per_s",
    "net.tx_errors_per_s",
    "net.rx_drops_per_s",
    "net.tx_drops_per_s",
];
const FILESYSTEMS: [&str; 2] = ["/", "/var/lib/containerd"];
const FS_METRICS: [&str; 5] = [
    "fs.size_bytes",
    "fs.used_bytes",
    "fs.avail_bytes",
    "fs.used_pct",
    "fs.inodes_used_pct",
];
const FS_SIZE: [u64; 2] = [107_374_182_400, 536_870_912_000];

const PAGE: u64 = 4096;
const NCPU: f64 = 16.0;

/// Long-running node daemons: (comm, cgroup).
const SYSTEM_PROCS: [(&str, &str); 16] = [
    ("systemd", "init.scope"),
    ("systemd-journal", "system.slice/systemd-journald.service"),
    ("systemd-udevd", "system.slice/systemd-udevd.service"),
    ("systemd-network", "system.slice/systemd-networkd.service"),
    ("systemd-resolve", "system.slice/systemd-resolved.service"),
    ("dbus-daemon", "system.slice/dbus.service"),
    ("chronyd", "system.slice/chrony.service"),
    ("sshd", "system.slice/ssh.service"),
    ("cron", "system.slice/cron.service"),
    ("rsyslogd", "system.slice/rsyslog.service"),
    ("multipathd", "system.slice/multipathd.service"),
    (
        "agetty",
        "system.slice/system-getty.slice/getty@tty1.service",
    ),
    ("containerd", "system.slice/containerd.service"),
    ("kubelet", "system.slice/kubelet.service"),
    ("node-agent", "system.slice/scarlet.service"),
    (
        "systemd",
        "user.slice/user-1000.slice/user@1000.service/init.scope",
    ),
];

/// What pods run: (name, comms of the app container's processes).
const APPS: [(&str, &[&str]); 14] = [
    ("kube-proxy", &["kube-proxy"]),
    (
        "calico-node",
        &["calico-node", "calico-node", "calico-node", "bird", "bird6"],
    ),
    ("coredns", &["coredns"]),
    (
        "nginx-ingress",
        &[
            "nginx-ingress-c",
            "nginx",
            "nginx",
            "nginx",
            "nginx",
            "nginx",
        ],
    ),
    (
        "postgres",
        &[
            "postgres", "postgres", "postgres", "postgres", "postgres", "postgres", "postgres",
            "postgres",
        ],
    ),
    ("redis", &["redis-server"]),
    ("api-gateway", &["envoy", "pilot-agent"]),
    ("orders", &["java"]),
    ("payments", &["java"]),
    ("web", &["node", "node"]),
    (
        "worker",
        &["python3", "celery", "celery", "celery", "celery"],
    ),
    (
        "search",
        &["gunicorn", "gunicorn", "gunicorn", "gunicorn", "gunicorn"],
    ),
    ("fluent-bit", &["fluent-bit"]),
    ("node-exporter", &["node_exporter"]),
];

/// Short-lived commands that appear under churn: (comm, spawned by kubelet rather than an app).
const EPHEMERAL: [(&str, bool); 12] = [
    ("sh", false),
    ("bash", false),
    ("curl", false),
    ("python3", false),
    ("grep", false),
    ("sleep", false),
    ("runc", true),
    ("iptables", true),
    ("ip6tables", true),
    ("du", true),
    ("mount", true),
    ("containerd-shim", true),
];

/// A node's metric stream, tick by tick. Deterministic for a given [`StreamConfig`].
pub struct NodeStream {
    rng: Rng,
    cfg: StreamConfig,
    tick: i64,
    prev_ts: i64,
    host: Host,
    procs: Vec<Process>,
    cgroups: Vec<Cgroup>,
    /// Container scopes (cgroup paths) processes may live in.
    scopes: Vec<String>,
    next_pid: u32,
}

fn proc_keys(pid: u32, comm: &str, cgroup: &str) -> [SeriesKey; 6] {
    let entity = format!("process/{pid}");
    PROC_METRICS.map(|m| {
        SeriesKey::new(entity.clone(), m)
            .with_label("comm", comm)
            .with_label("cgroup", cgroup)
    })
}

fn pod_uuid(rng: &mut Rng) -> String {
    // systemd spells the pod UID with underscores in slice names.
    format!(
        "{}_{}_{}_{}_{}",
        rng.hex(8),
        rng.hex(4),
        rng.hex(4),
        rng.hex(4),
        rng.hex(12)
    )
}

impl NodeStream {
    /// A new stream; nothing is generated until asked.
    pub fn new(cfg: StreamConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let mut host_keys = Vec::new();
        for m in HOST_METRICS {
            host_keys.push(SeriesKey::new("host", m));
        }
        for d in DISKS {
            for m in DISK_METRICS {
                host_keys.push(SeriesKey::new(format!("disk/{d}"), m));
            }
        }
        for m in NET_METRICS {
            host_keys.push(SeriesKey::new("net/eth0", m));
        }
        for f in FILESYSTEMS {
            for m in FS_METRICS {
                host_keys.push(SeriesKey::new(format!("fs/{f}"), m));
            }
        }
        let host = Host {
            keys: host_keys,
            user: 22.0,
            system: 6.0,
            iowait: 0.8,
            mem_total: 67_430_326_272,
            mem_used_pages: 5_400_000,
            mem_cache_pages: 6_100_000,
            load: [3.1, 2.8, 2.5],
            psi_avg10: [1.2, 0.0, 0.1, 0.0, 0.4, 0.1],
            disk_busy: [6.0, 1.0],
            net_rx: 4.0e6,
            net_tx: 2.5e6,
            fs_used: [31_457_280_000, 187_904_819_200],
        };

        let mut stream = NodeStream {
            rng: Rng::new(0),
            cfg: cfg.clone(),
            tick: 0,
            prev_ts: cfg.start_ms - 1000,
            host,
            procs: Vec::new(),
            cgroups: Vec::new(),
            scopes: Vec::new(),
            next_pid: 1,
        };

        // Cgroups: the kubepods hierarchy, one pod slice + pause scope + app scope per pod,
        // and the busiest system services.
        let mut cgroup_paths: Vec<(String, u64, f64, bool)> = vec![
            ("kubepods.slice".into(), 60 << 30, 180.0, false),
            (
                "kubepods.slice/kubepods-burstable.slice".into(),
                60 << 30,
                120.0,
                false,
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice".into(),
                60 << 30,
                15.0,
                false,
            ),
            ("system.slice".into(), 60 << 30, 25.0, false),
            (
                "system.slice/containerd.service".into(),
                60 << 30,
                8.0,
                false,
            ),
            ("system.slice/kubelet.service".into(), 60 << 30, 9.0, false),
            (
                "system.slice/systemd-journald.service".into(),
                60 << 30,
                1.0,
                false,
            ),
            ("user.slice".into(), 60 << 30, 0.2, false),
        ];
        let mut app_scopes = Vec::new();
        for (pod_idx, (_, comms)) in APPS.iter().enumerate().take(cfg.pods) {
            let qos = match pod_idx % 3 {
                0 => "kubepods.slice".to_string(),
                1 => "kubepods.slice/kubepods-burstable.slice".to_string(),
                _ => "kubepods.slice/kubepods-besteffort.slice".to_string(),
            };
            let qos_name = match pod_idx % 3 {
                0 => "kubepods".to_string(),
                1 => "kubepods-burstable".to_string(),
                _ => "kubepods-besteffort".to_string(),
            };
            let pod = format!("{qos}/{qos_name}-pod{}.slice", pod_uuid(&mut rng));
            let limit = [256u64 << 20, 512 << 20, 1 << 30, 2 << 30, 4 << 30][rng.below(5) as usize];
            let cpu = rng.uniform(0.5, 40.0) * comms.len() as f64;
            let throttles = rng.chance(0.3);
            cgroup_paths.push((pod.clone(), limit, cpu, throttles));
            let pause = format!("{pod}/cri-containerd-{}.scope", rng.hex(64));
            cgroup_paths.push((pause.clone(), limit, 0.0, false));
            let app = format!("{pod}/cri-containerd-{}.scope", rng.hex(64));
            cgroup_paths.push((app.clone(), limit, cpu, throttles));
            app_scopes.push((pause, app, *comms));
        }
        for (path, limit, cpu_mean, throttles) in cgroup_paths {
            let entity = format!("cgroup/{path}");
            let keys = CGROUP_METRICS.map(|m| SeriesKey::new(entity.clone(), m));
            let mem_pages = (limit / PAGE) / 8 + rng.below(limit / PAGE / 4);
            let io_active = cpu_mean > 1.0 && rng.chance(0.5);
            stream.cgroups.push(Cgroup {
                keys,
                mem_pages,
                limit_bytes: limit,
                cpu_mean,
                throttles,
                io_active,
            });
        }

        // Processes: system daemons, then per pod a shim, a pause and the app's processes,
        // then (to reach the top-N count) more app workers, as a busy node has.
        let mut pid = 1u32;
        let mut add =
            |stream: &mut NodeStream, rng: &mut Rng, comm: &str, cgroup: &str, system: bool| {
                let activity = match rng.below(10) {
                    0..=5 => Activity::Idle,
                    6..=8 => Activity::Light,
                    _ => Activity::Busy,
                };
                let cpu_mean = match activity {
                    Activity::Idle => 0.05,
                    Activity::Light => rng.uniform(0.5, 4.0),
                    Activity::Busy => rng.uniform(8.0, 120.0),
                };
                let rss_pages = match activity {
                    Activity::Idle => rng.range(300, 8_000) as u64,
                    Activity::Light => rng.range(2_000, 60_000) as u64,
                    Activity::Busy => rng.range(20_000, 600_000) as u64,
                };
                stream.procs.push(Process {
                    keys: proc_keys(pid, comm, cgroup),
                    system,
                    activity,
                    cpu_mean,
                    rss_pages,
                    threads: rng.range(1, if activity == Activity::Busy { 120 } else { 16 }) as u32,
                    fds: rng.range(4, if activity == Activity::Busy { 400 } else { 64 }) as u32,
                    seen: 1,
                });
                pid += rng.range(1, 300) as u32;
            };
        for (comm, cgroup) in SYSTEM_PROCS {
            add(&mut stream, &mut rng, comm, cgroup, true);
        }
        for (pause, app, comms) in &app_scopes {
            add(
                &mut stream,
                &mut rng,
                "containerd-shim",
                "system.slice/containerd.service",
                true,
            );
            add(&mut stream, &mut rng, "pause", pause, true);
            for comm in comms.iter() {
                add(&mut stream, &mut rng, comm, app, false);
            }
        }
        while stream.procs.len() < cfg.processes {
            let (_, app, comms) = rng.pick(&app_scopes).clone();
            let comm = *rng.pick(comms);
            add(&mut stream, &mut rng, comm, &app, false);
        }
        stream.procs.truncate(cfg.processes);
        stream.scopes = app_scopes.into_iter().map(|(_, app, _)| app).collect();
        stream.next_pid = pid;
        stream.rng = rng;
        stream
    }

    /// Series per tick in the steady state (host + processes × 6 + cgroups × 7).
    pub fn series_per_tick(&self) -> usize {
        self.host.keys.len()
            + self.procs.len() * PROC_METRICS.len()
            + self.cgroups.len() * CGROUP_METRICS.len()
    }

    /// The next `batch_secs` ticks as one batch.
    pub fn next_batch(&mut self, batch_secs: u32) -> Batch {
        let mut batcher = Batcher::default();
        for _ in 0..batch_secs {
            self.emit_tick(&mut batcher);
        }
        batcher.finish()
    }

    /// The next `n` batches of `batch_secs` ticks each.
    pub fn batches(&mut self, n: usize, batch_secs: u32) -> Vec<Batch> {
        (0..n).map(|_| self.next_batch(batch_secs)).collect()
    }

    fn emit_tick(&mut self, out: &mut Batcher) {
        let rng = &mut self.rng;
        let ts = self.cfg.start_ms + self.tick * 1000 + rng.range(-3, 3);
        let dt = (ts - self.prev_ts) as f64 / 1000.0;
        self.prev_ts = ts;
        self.tick += 1;

        // Churn first: exits and new pids, both seen by this tick's scan.
        if self.cfg.churn_per_tick > 0.0 {
            let before = self.procs.len();
            let p = self.cfg.churn_per_tick;
            self.procs.retain(|pr| pr.system || !rng.chance(p));
            for _ in self.procs.len()..before {
                let (comm, from_kubelet) = *rng.pick(&EPHEMERAL);
                let cgroup = if from_kubelet {
                    "system.slice/kubelet.service"
                } else {
                    rng.pick(&self.scopes).as_str()
                };
                self.next_pid += rng.range(1, 40) as u32;
                let light = rng.chance(0.3);
                self.procs.push(Process {
                    keys: proc_keys(self.next_pid, comm, cgroup),
                    system: false,
                    activity: if light {
                        Activity::Light
                    } else {
                        Activity::Idle
                    },
                    cpu_mean: if light { rng.uniform(1.0, 30.0) } else { 0.3 },
                    rss_pages: rng.range(200, 4_000) as u64,
                    threads: rng.range(1, 4) as u32,
                    fds: rng.range(3, 12) as u32,
                    seen: 0,
                });
            }
        }

        // Host.
        let h = &mut self.host;
        let mut vals: Vec<f64> = Vec::with_capacity(h.keys.len());
        h.user = (h.user + rng.uniform(-2.0, 2.0)).clamp(3.0, 85.0);
        h.system = (h.system + rng.uniform(-0.6, 0.6)).clamp(1.0, 20.0);
        h.iowait = (h.iowait + rng.uniform(-0.3, 0.3)).clamp(0.0, 8.0);
        let steal = if rng.chance(0.1) {
            rng.uniform(0.0, 0.2)
        } else {
            0.0
        };
        let (user, system, iowait, steal) = (
            round2(h.user),
            round2(h.system),
            round2(h.iowait),
            round2(steal),
        );
        vals.push(round2(h.user + h.system + h.iowait + steal));
        vals.extend([user, system, iowait, steal, NCPU]);
        let ctx_switches = (rng.range(12_000, 24_000) as f64 * dt).round();
        vals.push((ctx_switches / dt).round());
        let drift = rng.range(-400, 400);
        h.mem_used_pages = h.mem_used_pages.saturating_add_signed(drift);
        h.mem_cache_pages = h.mem_cache_pages.saturating_add_signed(rng.range(-50, 80));
        let used = h.mem_used_pages * PAGE;
        let available = h.mem_total - used - (h.mem_cache_pages * PAGE) / 8;
        vals.extend([h.mem_total as f64, used as f64, available as f64]);
        vals.push(round2(used as f64 * 100.0 / h.mem_total as f64));
        vals.push(0.0);
        let runnable = (h.user + h.system) / 100.0 * NCPU;
        for (idx, tau) in [60.0f64, 300.0, 900.0].into_iter().enumerate() {
            let alpha = (-dt / tau).exp();
            h.load[idx] = h.load[idx] * alpha + runnable * (1.0 - alpha);
            vals.push(round2(h.load[idx]));
        }
        let procs_total = self.procs.len() as f64 + 112.0;
        vals.extend([
            procs_total,
            0.0,
            0.0,
            rng.range(1, 6) as f64,
            if rng.chance(0.1) { 1.0 } else { 0.0 },
        ]);
        vals.extend([self.cgroups.len() as f64, 0.0]);
        for avg in h.psi_avg10.iter_mut() {
            // avg10 is an exponential average the kernel prints with two decimals.
            let burst = if rng.chance(0.05) {
                rng.uniform(0.0, 6.0)
            } else {
                0.0
            };
            *avg = *avg * 0.905 + burst * 0.095;
            vals.push(round2(*avg));
        }
        for _ in 0..6 {
            let stall_us = if rng.chance(0.3) {
                rng.range(0, 40_000)
            } else {
                0
            };
            vals.push(round2((stall_us as f64 / 1e6 / dt * 100.0).min(100.0)));
        }
        vals.extend([0.0, 0.0, 0.0]);
        for busy in h.disk_busy.iter_mut() {
            *busy = (*busy + rng.uniform(-1.0, 1.0)).clamp(0.2, 60.0);
            let reads = if rng.chance(0.2) { rng.range(1, 40) } else { 0 };
            let writes = rng.range(10, 200);
            let read_sectors = reads * rng.range(8, 256);
            let write_sectors = writes * rng.range(8, 64);
            let busy_ms = (*busy * 10.0 * dt).round();
            vals.push((read_sectors as f64 / dt * 512.0).round());
            vals.push((write_sectors as f64 / dt * 512.0).round());
            vals.push(round2(reads as f64 / dt));
            vals.push(round2(writes as f64 / dt));
            vals.push(round2((busy_ms / dt / 10.0).min(100.0)));
        }
        h.net_rx = (h.net_rx * rng.uniform(0.9, 1.1)).clamp(1e5, 1e9);
        h.net_tx = (h.net_tx * rng.uniform(0.9, 1.1)).clamp(1e5, 1e9);
        // Counter deltas over the real interval, then rates as the agent computes them.
        let rx_bytes = (h.net_rx * dt).round();
        let tx_bytes = (h.net_tx * dt).round();
        vals.push((rx_bytes / dt).round());
        vals.push((tx_bytes / dt).round());
        vals.push(((rx_bytes / 900.0).round() / dt).round());
        vals.push(((tx_bytes / 700.0).round() / dt).round());
        vals.extend([0.0, 0.0]);
        let rx_drops = if rng.chance(0.02) { rng.range(1, 5) } else { 0 };
        vals.push(round2(rx_drops as f64 / dt));
        vals.push(0.0);
        for (idx, used) in h.fs_used.iter_mut().enumerate() {
            if rng.chance(0.4) {
                *used = used.saturating_add_signed(rng.range(-64, 256) * PAGE as i64);
            }
            let size = FS_SIZE[idx];
            let avail = size - *used - size / 20;
            vals.extend([size as f64, *used as f64, avail as f64]);
            vals.push(round2(*used as f64 * 100.0 / (*used + avail) as f64));
            vals.push(round2(
                0.8 + idx as f64 * 3.1 + (*used % 1_000_000) as f64 / 1e8,
            ));
        }
        debug_assert_eq!(vals.len(), h.keys.len());
        for (key, value) in h.keys.iter().zip(vals) {
            out.push(key, Point { ts_ms: ts, value });
        }

        // Processes.
        for p in &mut self.procs {
            let (rss_p, thr_p, fd_p, read_p, write_p) = match p.activity {
                Activity::Idle => (0.02, 0.001, 0.005, 0.0, 0.02),
                Activity::Light => (0.15, 0.005, 0.03, 0.05, 0.2),
                Activity::Busy => (0.5, 0.02, 0.15, 0.3, 0.6),
            };
            let cpu_ticks = match p.activity {
                Activity::Idle => u64::from(rng.chance(p.cpu_mean)),
                _ => (p.cpu_mean * rng.uniform(0.5, 1.5) * dt).round() as u64,
            };
            if rng.chance(rss_p) {
                let pages = rng.range(1, 64);
                p.rss_pages = if rng.chance(0.55) {
                    p.rss_pages + pages as u64
                } else {
                    p.rss_pages.saturating_sub(pages as u64).max(100)
                };
            }
            if rng.chance(thr_p) {
                p.threads = if rng.chance(0.5) {
                    p.threads + 1
                } else {
                    p.threads.saturating_sub(1).max(1)
                };
            }
            if rng.chance(fd_p) {
                let n = rng.range(1, 3) as u32;
                p.fds = if rng.chance(0.5) {
                    p.fds + n
                } else {
                    p.fds.saturating_sub(n).max(3)
                };
            }
            let read = if rng.chance(read_p) {
                rng.range(1, 64) * PAGE as i64
            } else {
                0
            };
            let write = if rng.chance(write_p) {
                rng.range(1, 32) * PAGE as i64
            } else {
                0
            };
            let point = |value: f64| Point { ts_ms: ts, value };
            if p.seen > 0 {
                out.push(&p.keys[0], point(round2(cpu_ticks as f64 / dt)));
            }
            out.push(&p.keys[1], point((p.rss_pages * PAGE) as f64));
            out.push(&p.keys[2], point(f64::from(p.threads)));
            out.push(&p.keys[3], point(f64::from(p.fds)));
            if p.seen > 0 {
                out.push(&p.keys[4], point((read as f64 / dt).round()));
                out.push(&p.keys[5], point((write as f64 / dt).round()));
            }
            p.seen += 1;
        }

        // Cgroups.
        for c in &mut self.cgroups {
            if c.cpu_mean > 0.0 && rng.chance(0.6) {
                let pages = rng.range(-256, 300);
                c.mem_pages = c
                    .mem_pages
                    .saturating_add_signed(pages)
                    .clamp(64, c.limit_bytes / PAGE);
            }
            let cpu_ns = (c.cpu_mean * rng.uniform(0.6, 1.4) * 1e7 * dt).round()
                + rng.range(0, 200_000) as f64;
            let throttled = c.throttles && rng.chance(0.15);
            let periods = if throttled { rng.range(1, 20) } else { 0 };
            let throttled_ns = if throttled {
                rng.range(100_000, 50_000_000)
            } else {
                0
            };
            let io_read = if c.io_active && rng.chance(0.1) {
                rng.range(1, 256) * PAGE as i64
            } else {
                0
            };
            let io_write = if c.io_active && rng.chance(0.5) {
                rng.range(1, 512) * PAGE as i64
            } else {
                0
            };
            let vals = [
                (c.mem_pages * PAGE) as f64,
                c.limit_bytes as f64,
                round2(cpu_ns / dt / 1e7),
                round2(periods as f64 / dt),
                round2(throttled_ns as f64 / dt / 1e7),
                (io_read as f64 / dt).round(),
                (io_write as f64 / dt).round(),
            ];
            for (key, value) in c.keys.iter().zip(vals) {
                out.push(key, Point { ts_ms: ts, value });
            }
        }
    }
}

/// Per-variant setup shared by the benches: a named stream configuration.
pub fn variants(seed: u64) -> [(&'static str, StreamConfig); 2] {
    [
        ("steady", StreamConfig::steady(seed)),
        ("churn", StreamConfig::churn(seed)),
    ]
}

/// A QUIC client config presenting a node certificate and trusting only `ca`, as the
/// agent's `ship::tls::client_config` builds it (from PEM text rather than files).
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.context("bad CA PEM")?)
            .context("CA certificate rejected")?;
    }
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("bad node certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("bad node key PEM")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .context("node certificate and key do not match")?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("TLS config unusable for QUIC")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            20_000,
        ))));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A simulated agent: one node identity, one QUIC endpoint.
pub struct SimAgent {
    /// Node name (the certificate's common name).
    pub node: String,
    /// Protocol version said in `Hello`: [`wire::PROTOCOL_VERSION`] (batches rewritten at
    /// send time into the connection form, as the agent does), or 1 (self-contained).
    pub protocol: u16,
    endpoint: quinn::Endpoint,
}

/// The agent's sender half of one connection: rewrites spooled (self-contained) payloads
/// into what the connection speaks, and learns from acks which definitions are known.
/// Shared by the simulated agents of the benches.
#[derive(Debug)]
pub struct Sender {
    dict: std::sync::Mutex<Option<SenderDict>>,
}

impl Sender {
    /// For a connection whose `HelloAck` said `version`.
    pub fn new(version: u16) -> Self {
        Sender {
            dict: std::sync::Mutex::new(
                (version >= wire::DICTIONARY_VERSION).then(SenderDict::default),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SenderDict>> {
        self.dict.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Batch` frame for `seq`, built at send time as the agent builds it, and the
    /// length of the payload in it.
    pub fn frame(
        &self,
        node: &str,
        session: u64,
        seq: u64,
        self_contained: &[u8],
    ) -> (Vec<u8>, usize) {
        let payload = match self.lock().as_mut() {
            // Our own payloads always decode; fall back to sending them as they are.
            Some(d) => d
                .encode(seq, self_contained)
                .unwrap_or_else(|_| self_contained.to_vec()),
            None => self_contained.to_vec(),
        };
        let len = payload.len();
        let frame = wire::encode_frame(&Frame::Batch(BatchFrame {
            node: node.to_string(),
            session,
            seq,
            payload,
        }));
        (frame, len)
    }

    /// `seq` was acked.
    pub fn acked(&self, seq: u64) {
        if let Some(d) = self.lock().as_mut() {
            d.on_ack(seq);
        }
    }

    /// `seq` was refused.
    pub fn refused(&self, seq: u64) {
        if let Some(d) = self.lock().as_mut() {
            d.on_refused(seq);
        }
    }
}

/// What one agent session measured.
#[derive(Clone, Debug)]
pub struct SessionStats {
    /// Batches acked.
    pub acked: usize,
    /// Samples in the acked batches.
    pub samples: usize,
    /// When the first batch was written (after the handshake and the start gate).
    pub started: Instant,
    /// When the last ack was read.
    pub finished: Instant,
    /// Per batch: from its frame being handed to QUIC to its ack arriving.
    pub ack_latencies: Vec<Duration>,
}

/// A batch ready to send: the codec payload and how many samples it holds.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// `common::codec::encode_batch` output.
    pub payload: Vec<u8>,
    /// Samples in it.
    pub samples: usize,
}

impl SimAgent {
    /// An agent for `node` with its own client endpoint and certificate.
    pub fn new(node: &str, cfg: quinn::ClientConfig) -> anyhow::Result<Self> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(cfg);
        Ok(SimAgent {
            node: node.to_string(),
            protocol: wire::PROTOCOL_VERSION,
            endpoint,
        })
    }

    /// One session, as node-agent/src/ship/client.rs runs it: connect, `Hello` →
    /// `HelloAck`, then `batches` as `Batch` frames with seq 1.. pipelined up to `window`
    /// unacked, acks read concurrently. Each frame is built when it is sent (protocol 2:
    /// the connection form depends on what was acked), as the agent does; sending starts
    /// once every session sharing `gate` has its `HelloAck`.
    pub async fn session(
        &self,
        aggregator: SocketAddr,
        session: u64,
        batches: &[Prepared],
        window: usize,
        gate: &tokio::sync::Barrier,
    ) -> anyhow::Result<SessionStats> {
        let conn = self
            .endpoint
            .connect(aggregator, "localhost")?
            .await
            .context("QUIC connect")?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Hello {
            protocol_version: self.protocol,
            node: self.node.clone(),
            agent_version: "bench".into(),
            boot_id: format!("boot-{session:016x}"),
            session,
            capabilities: vec!["host".into(), "process".into(), "cgroup".into()],
        };
        send.write_all(&wire::encode_frame(&Frame::Hello(hello)))
            .await?;
        let sender = match read_frame(&mut recv).await? {
            Some(Frame::HelloAck(ack)) => Sender::new(ack.protocol_version.min(self.protocol)),
            other => anyhow::bail!("expected HelloAck, got {other:?}"),
        };

        let sent_at: Vec<std::sync::OnceLock<Instant>> = (0..batches.len())
            .map(|_| std::sync::OnceLock::new())
            .collect();
        let window = tokio::sync::Semaphore::new(window);
        gate.wait().await;
        let started = Instant::now();
        let writer = async {
            for (idx, b) in batches.iter().enumerate() {
                window.acquire().await?.forget();
                let (bytes, _) = sender.frame(&self.node, session, idx as u64 + 1, &b.payload);
                let _ = sent_at[idx].set(Instant::now());
                send.write_all(&bytes).await?;
            }
            anyhow::Ok(())
        };
        let reader = async {
            let mut stats = SessionStats {
                acked: 0,
                samples: 0,
                started,
                finished: started,
                ack_latencies: Vec::with_capacity(batches.len()),
            };
            while stats.acked < batches.len() {
                match read_frame(&mut recv).await? {
                    Some(Frame::Ack { seq, .. }) => {
                        let idx = seq.checked_sub(1).context("ack for seq 0")? as usize;
                        let sent = sent_at
                            .get(idx)
                            .and_then(|s| s.get())
                            .context("ack for a batch never sent")?;
                        sender.acked(seq);
                        stats.ack_latencies.push(sent.elapsed());
                        stats.samples += batches[idx].samples;
                        stats.acked += 1;
                        window.add_permits(1);
                    }
                    other => anyhow::bail!("expected Ack, got {other:?}"),
                }
            }
            stats.finished = Instant::now();
            anyhow::Ok(stats)
        };
        let (w, r) = tokio::join!(writer, reader);
        w?;
        let stats = r?;
        let _ = send.finish();
        conn.close(quinn::VarInt::from_u32(0), b"bench done");
        Ok(stats)
    }

    /// Waits until the endpoint's connections are closed.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
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
        None => anyhow::bail!("short frame"),
    }
}

/// `p` in `0..=1` of a set of durations (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped_like_a_node() {
        let a = NodeStream::new(StreamConfig::steady(7)).batches(2, 5);
        let b = NodeStream::new(StreamConfig::steady(7)).batches(2, 5);
        assert_eq!(a, b);
        let stream = NodeStream::new(StreamConfig::steady(7));
        let per_tick = stream.series_per_tick();
        assert!((1500..1700).contains(&per_tick), "{per_tick}");
        // Steady: every series has every tick, all sharing one timestamp vector.
        assert_eq!(a[0].series.len(), per_tick);
        assert_eq!(a[0].n_samples(), per_tick * 5);
        let ts: Vec<i64> = a[0].series[0].points.iter().map(|p| p.ts_ms).collect();
        assert!(
            a[0].series
                .iter()
                .all(|s| s.points.iter().map(|p| p.ts_ms).eq(ts.iter().copied()))
        );
        for w in ts.windows(2) {
            assert!((994..=1006).contains(&(w[1] - w[0])), "{ts:?}");
        }
        // Values are rounded as the agent rounds them.
        for s in &a[0].series {
            for p in &s.points {
                assert_eq!(round2(p.value), p.value, "{:?}", s.key);
                if s.key.metric.contains("bytes") {
                    assert_eq!(p.value.fract(), 0.0, "{:?}", s.key);
                }
            }
        }
    }

    #[test]
    fn churn_replaces_processes() {
        let mut stream = NodeStream::new(StreamConfig::churn(3));
        let first = stream.next_batch(5);
        let later = stream.batches(4, 5).pop().unwrap();
        let pids = |b: &Batch| -> std::collections::BTreeSet<String> {
            b.series
                .iter()
                .filter(|s| s.key.entity.starts_with("process/"))
                .map(|s| s.key.entity.clone())
                .collect()
        };
        let (a, b) = (pids(&first), pids(&later));
        let gone = a.difference(&b).count();
        assert!(
            gone > 5 && gone < 60,
            "{gone} of {} processes gone",
            a.len()
        );
        // Some series are partial: processes that exited or appeared mid-batch.
        assert!(later.series.iter().any(|s| s.points.len() < 5));
    }
}
