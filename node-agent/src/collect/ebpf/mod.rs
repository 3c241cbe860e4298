//! Kernel telemetry through eBPF (aya): the collectors that read what the programs in
//! `ebpf/` gather. Part of `collect/`: they run once per tick like the procfs collectors,
//! append samples, and hand over events through [`Collector::drain_events`].
//!
//! - `ebpf_process`: `process.exec`, `process.exit` and `oom.kill` events.
//! - `ebpf_tcp`: `tcp.connect` and `tcp.close` events.
//! - `ebpf_runq`: run-queue latency per cgroup (`sched.runq_latency_*`).
//! - `ebpf_bio`: block I/O latency per device and operation (`disk.io_latency_*`).
//!
//! The two event collectors drain their ring buffer continuously, each on its own thread
//! that waits on the ring buffer's fd (`poll`) and moves decoded records into a bounded
//! [`queue`]; `collect` takes them from there once per tick. A full queue drops and counts
//! (`proc_queue_full`, `tcp_queue_full`) instead of letting the ring buffer overflow.
//!
//! Every record and series is attributed to its cgroup, container and pod
//! ([`attribution`]). Kernel-side losses are counted per reason in the `DROPS` map and
//! shown as `ebpf.dropped_total` samples and `agent_ebpf_events_dropped_total`
//! ([`EVENTS_DROPPED`]), beside the queues' losses. Each probe fails alone ([`loader`]); `docs/ebpf.md` has the
//! programs, maps, bounds, capabilities and degradation rules.

pub mod attribution;
pub mod btf;
pub mod events;
pub mod hist;
pub mod loader;
pub mod queue;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use common::model::{Event, SeriesKey};
use ebpf_common::{BioKey, Log2Hist, drop_reason};
use prometheus::IntCounterVec;

use self::attribution::{CgroupInfo, CgroupPaths, attribute, pick_v1_path};
use self::events::Record;
use self::loader::{Family, LoadError};
use self::queue::{BoundedQueue, Bounds};
use super::{CollectConfig, CollectError, Collector};

/// Most events one collector hands over per tick (15,000 records/s at a 1 s tick fit four
/// times over); the rest wait in the queue.
pub const MAX_EVENTS_PER_TICK: usize = 65_536;
/// The queue between a ring buffer's drain thread and its collector holds decoded records
/// (fixed size, about 220 bytes each), at most this many: 65,536 records or 8 MiB,
/// whichever comes first (about 38,000 records, 2.5 s of 15,000 records/s). A record that
/// does not fit is dropped and counted (`proc_queue_full`, `tcp_queue_full`).
pub const QUEUE_BOUNDS: Bounds = Bounds {
    max_items: 65_536,
    max_bytes: 8 << 20,
};
/// How long a drain thread waits on its ring buffer at most before it looks at the ring
/// anyway (a missed wakeup costs no more than this) and checks for shutdown.
const POLL_TIMEOUT_MS: i32 = 100;
/// Records a drain thread decodes before it takes the queue's lock once for all of them.
const DRAIN_BATCH: usize = 256;
/// A histogram entry unchanged for this many ticks is removed from its kernel map (its
/// cgroup or device is probably gone); the map stays bounded by live ones.
pub const IDLE_TICKS_BEFORE_EVICT: u32 = 60;

/// `agent_ebpf_events_dropped_total{reason}`: records and samples the kernel side lost.
/// Register it in the agent's registry (`telemetry.rs`).
pub static EVENTS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        prometheus::Opts::new(
            "agent_ebpf_events_dropped_total",
            "eBPF records lost in the kernel (ring buffer or map full, failed reads), by reason.",
        ),
        &["reason"],
    )
    .expect("static metric definition")
});

/// The eBPF collectors: one per family that loaded, a disabled one per family that did
/// not, or a single disabled `ebpf` collector when nothing could be loaded. Never fails:
/// degradation shows as `Unavailable` from `collect`, which the run loop logs once.
pub fn collectors(cfg: &CollectConfig) -> Vec<Box<dyn Collector>> {
    let loaded = match loader::load() {
        Ok(l) => l,
        Err(e) => {
            return vec![Box::new(Disabled {
                name: "ebpf",
                detail: e.to_string(),
            })];
        }
    };
    build(cfg, loaded).unwrap_or_else(|e| {
        vec![Box::new(Disabled {
            name: "ebpf",
            detail: e.to_string(),
        })]
    })
}

fn build(
    cfg: &CollectConfig,
    loaded: loader::Loaded,
) -> Result<Vec<Box<dyn Collector>>, LoadError> {
    let loader::Loaded { mut ebpf, families } = loaded;
    let map_err =
        |name: &str, e: &dyn std::fmt::Display| LoadError::Object(format!("eBPF map {name}: {e}"));
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| LoadError::Object(format!("eBPF map {name} missing from the object")))
    };
    let drops = PerCpuArray::<MapData, u64>::try_from(take(&mut ebpf, "DROPS")?)
        .map_err(|e| map_err("DROPS", &e))?;
    let shared = Arc::new(Shared {
        drops: Mutex::new(DropCounter {
            map: drops,
            last: [0; drop_reason::COUNT as usize],
        }),
        cgroups: Mutex::new(CgroupPaths::new(&cfg.cgroup_root)),
        proc_root: cfg.proc_root.clone(),
        scope: cfg.scope_cgroup.as_deref().and_then(super::normalize_scope),
        wall_offset_ns: wall_minus_monotonic_ns(),
        object: Mutex::new(None),
    });
    let mut res: Vec<Box<dyn Collector>> = Vec::new();
    let mut first = true;
    for (family, outcome) in families {
        let name = family.collector_name();
        let programs = match outcome {
            Ok(p) => p,
            Err(detail) => {
                res.push(Box::new(Disabled { name, detail }));
                continue;
            }
        };
        tracing::info!(collector = name, programs = ?programs, "eBPF programs attached");
        let mut reasons: Vec<u32> = match family {
            Family::Process => vec![drop_reason::PROC_RING_FULL],
            Family::Tcp => vec![drop_reason::TCP_RING_FULL, drop_reason::TCP_MAP_FULL],
            Family::Runq => vec![drop_reason::RUNQ_START_FULL, drop_reason::RUNQ_HIST_FULL],
            Family::Bio => vec![drop_reason::BIO_START_FULL, drop_reason::BIO_HIST_FULL],
        };
        if first {
            reasons.push(drop_reason::READ_FAILED);
            first = false;
        }
        let base = Base {
            name,
            shared: shared.clone(),
            drop_reasons: reasons,
        };
        let collector: Box<dyn Collector> = match family {
            Family::Process | Family::Tcp => {
                let (map, queue_reason) = if family == Family::Process {
                    ("PROC_EVENTS", "proc_queue_full")
                } else {
                    ("TCP_EVENTS", "tcp_queue_full")
                };
                let ring =
                    RingBuf::try_from(take(&mut ebpf, map)?).map_err(|e| map_err(map, &e))?;
                match Drain::start(name, ring, QUEUE_BOUNDS) {
                    Ok(drain) => Box::new(EventsCollector {
                        base,
                        drain,
                        queue_reason,
                        queue_dropped_last: 0,
                        records: Vec::new(),
                        pending: Vec::new(),
                        cgroup_cache: HashMap::new(),
                    }),
                    Err(e) => Box::new(Disabled {
                        name,
                        detail: format!("cannot start the {map} drain thread: {e}"),
                    }),
                }
            }
            Family::Runq => {
                let map =
                    BpfHashMap::<MapData, u64, Log2Hist>::try_from(take(&mut ebpf, "RUNQ_HIST")?)
                        .map_err(|e| map_err("RUNQ_HIST", &e))?;
                Box::new(RunqCollector {
                    base,
                    hists: HistState::new(map),
                    max_cgroups: cfg.max_cgroups,
                })
            }
            Family::Bio => {
                let map =
                    BpfHashMap::<MapData, BioKey, Log2Hist>::try_from(take(&mut ebpf, "BIO_HIST")?)
                        .map_err(|e| map_err("BIO_HIST", &e))?;
                Box::new(BioCollector {
                    base,
                    hists: HistState::new(map),
                    sys_root: cfg.sys_root.clone(),
                    names: HashMap::new(),
                })
            }
        };
        res.push(collector);
    }
    // The programs stay attached as long as the object lives: every collector shares it.
    *shared.object.lock().unwrap_or_else(|e| e.into_inner()) = Some(ebpf);
    Ok(res)
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC now, ns: turns kernel timestamps into wall time.
/// Taken once at load (NTP steps later shift event times by the step).
fn wall_minus_monotonic_ns() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the struct we pass.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    let wall = read(libc::CLOCK_REALTIME);
    wall - mono
}

/// What the eBPF collectors share: the object (kept alive), the drop counters and the
/// cgroup resolver (one tree walk serves all).
struct Shared {
    drops: Mutex<DropCounter>,
    cgroups: Mutex<CgroupPaths>,
    proc_root: PathBuf,
    /// `--scope-cgroup`: events and per-cgroup series outside this subtree are dropped.
    scope: Option<String>,
    wall_offset_ns: i64,
    object: Mutex<Option<Ebpf>>,
}

struct DropCounter {
    map: PerCpuArray<MapData, u64>,
    last: [u64; drop_reason::COUNT as usize],
}

impl Shared {
    /// The cgroup of a record: by id in the v2 tree, else (v1 hosts, root cgroup) by the
    /// live process's `/proc/<pid>/cgroup`.
    fn cgroup(&self, id: u64, pid: u32, now: Instant) -> Option<CgroupInfo> {
        let resolved = {
            let mut paths = self.cgroups.lock().unwrap_or_else(|e| e.into_inner());
            paths.resolve(id, now).cloned()
        };
        if resolved.as_ref().is_some_and(|c| !c.path.is_empty()) || pid == 0 {
            return resolved;
        }
        let from_proc = std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup")))
            .ok()
            .and_then(|text| {
                let path = pick_v1_path(&text)?.trim_start_matches('/').to_string();
                Some(CgroupInfo {
                    attribution: attribute(&path),
                    path,
                })
            });
        from_proc.or(resolved)
    }

    /// Whether a record attributed to `cgroup` is kept under `--scope-cgroup`.
    fn keeps(&self, cgroup: Option<&CgroupInfo>) -> bool {
        scope_keeps(self.scope.as_deref(), cgroup)
    }

    fn wall_ms(&self, ts_ns: u64) -> i64 {
        (ts_ns as i64 + self.wall_offset_ns) / 1_000_000
    }

    /// Emits `ebpf.dropped_total{reason}` for `reasons` and adds the increase to
    /// [`EVENTS_DROPPED`].
    fn report_drops(
        &self,
        reasons: &[u32],
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let mut d = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        for &reason in reasons {
            let values = d
                .map
                .get(&reason, 0)
                .map_err(|e| CollectError::Unavailable {
                    what: "eBPF DROPS map",
                    detail: e.to_string(),
                })?;
            let total: u64 = values.iter().sum();
            let name = drop_reason::NAMES[reason as usize];
            let last = &mut d.last[reason as usize];
            // Every reason is shown, at 0 too: "nothing lost" is visible on /metrics.
            let counter = EVENTS_DROPPED.with_label_values(&[name]);
            if total > *last {
                counter.inc_by(total - *last);
            }
            *last = total;
            out.push((
                SeriesKey::new("host", "ebpf.dropped_total").with_label("reason", name),
                total as f64,
            ));
        }
        Ok(())
    }
}

/// The scoping rule of [`Shared::keeps`]: no scope keeps everything; with one, only records
/// whose cgroup resolved to a path in the subtree (an unresolved cgroup is dropped).
fn scope_keeps(scope: Option<&str>, cgroup: Option<&CgroupInfo>) -> bool {
    match scope {
        None => true,
        Some(scope) => super::in_scope(scope, cgroup.map(|c| c.path.as_str())),
    }
}

/// What every eBPF collector has.
struct Base {
    name: &'static str,
    shared: Arc<Shared>,
    drop_reasons: Vec<u32>,
}

/// A collector whose programs could not be loaded: reports why, every tick, as
/// unavailable (logged once by the run loop).
struct Disabled {
    name: &'static str,
    detail: String,
}

impl Collector for Disabled {
    fn name(&self) -> &'static str {
        self.name
    }

    fn collect(
        &mut self,
        _mono: Instant,
        _out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        Err(CollectError::Unavailable {
            what: "eBPF",
            detail: self.detail.clone(),
        })
    }
}

/// A ring buffer's drain thread and the queue it fills. Dropping it stops the thread
/// (within [`POLL_TIMEOUT_MS`]) and joins it; the ring buffer goes with the thread.
struct Drain {
    queue: Arc<Mutex<BoundedQueue<Record>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drain {
    fn start(name: &'static str, ring: RingBuf<MapData>, bounds: Bounds) -> std::io::Result<Drain> {
        let queue = Arc::new(Mutex::new(BoundedQueue::new(bounds)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queue, stop) = (queue.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("{name}-drain"))
                .spawn(move || drain_loop(name, ring, &queue, &stop))?
        };
        Ok(Drain {
            queue,
            stop,
            thread: Some(thread),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, BoundedQueue<Record>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The drain thread: wait for the ring buffer to be readable (or the timeout), decode
/// everything in it, push it into the queue; until `stop`.
fn drain_loop(
    name: &'static str,
    mut ring: RingBuf<MapData>,
    queue: &Mutex<BoundedQueue<Record>>,
    stop: &AtomicBool,
) {
    let fd = ring.as_raw_fd();
    let mut batch: Vec<Record> = Vec::with_capacity(DRAIN_BATCH);
    let mut poll_failed = false;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and the ring buffer (owner of the fd) outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                if !poll_failed {
                    tracing::warn!(collector = name, error = %err, "poll on the eBPF ring buffer failed; reading it every 100 ms instead");
                    poll_failed = true;
                }
                std::thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS as u64));
            }
        }
        // Read even after a timeout: the kernel skips the wakeup when it thinks we are
        // still behind, and this is cheap when the ring is empty.
        loop {
            while batch.len() < DRAIN_BATCH {
                let Some(item) = ring.next() else { break };
                let rec = events::decode(&item);
                drop(item);
                if let Some(rec) = rec {
                    batch.push(rec);
                }
            }
            let full = batch.len() == DRAIN_BATCH;
            if !batch.is_empty() {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                for rec in batch.drain(..) {
                    q.push(rec, size_of::<Record>());
                }
            }
            if !full {
                break;
            }
        }
    }
}

/// Events from a ring buffer's drain queue (`ebpf_process`, `ebpf_tcp`).
struct EventsCollector {
    base: Base,
    drain: Drain,
    /// The `reason` label of this queue's losses.
    queue_reason: &'static str,
    queue_dropped_last: u64,
    /// Reused: the records taken from the queue this tick.
    records: Vec<Record>,
    pending: Vec<Event>,
    /// (cgroup id, pid) → cgroup, for this tick only: a busy process sends many records,
    /// and on a v1 host each lookup may read `/proc/<pid>/cgroup`.
    cgroup_cache: HashMap<(u64, u32), Option<CgroupInfo>>,
}

impl Collector for EventsCollector {
    fn name(&self) -> &'static str {
        self.base.name
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let shared = &self.base.shared;
        let room = MAX_EVENTS_PER_TICK.saturating_sub(self.pending.len());
        let dropped = {
            let mut q = self.drain.queue();
            q.pop_into(room, &mut self.records);
            q.dropped()
        };
        self.cgroup_cache.clear();
        for rec in self.records.drain(..) {
            let cgroup = self
                .cgroup_cache
                .entry((rec.cgroup_id(), rec.pid()))
                .or_insert_with(|| shared.cgroup(rec.cgroup_id(), rec.pid(), mono));
            if !shared.keeps(cgroup.as_ref()) {
                continue;
            }
            self.pending.push(events::to_event(
                &rec,
                shared.wall_ms(rec.ts_ns()),
                cgroup.as_ref(),
            ));
        }
        // A burst should not keep its peak allocation.
        if self.cgroup_cache.capacity() > 1024 {
            self.cgroup_cache = HashMap::new();
        }
        if self.records.capacity() > 4096 {
            self.records = Vec::new();
        }
        let counter = EVENTS_DROPPED.with_label_values(&[self.queue_reason]);
        if dropped > self.queue_dropped_last {
            counter.inc_by(dropped - self.queue_dropped_last);
        }
        self.queue_dropped_last = dropped;
        out.push((
            SeriesKey::new("host", "ebpf.dropped_total").with_label("reason", self.queue_reason),
            dropped as f64,
        ));
        shared.report_drops(&self.base.drop_reasons, out)
    }

    fn drain_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.pending);
        if self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
    }
}

/// One interval of a histogram map: the non-empty differences, and the interval in seconds.
type Interval<K> = (Vec<(K, Log2Hist)>, Option<f64>);

/// Last reads of a kernel histogram map, for per-tick differences and idle eviction.
struct HistState<K> {
    map: BpfHashMap<MapData, K, Log2Hist>,
    prev: HashMap<K, (Log2Hist, u32)>,
    last_mono: Option<Instant>,
}

impl<K: aya::Pod + Eq + std::hash::Hash> HistState<K> {
    fn new(map: BpfHashMap<MapData, K, Log2Hist>) -> Self {
        HistState {
            map,
            prev: HashMap::new(),
            last_mono: None,
        }
    }

    /// This interval's non-empty histograms and its length in seconds (`None` on the first
    /// call, which only records the baseline).
    fn poll(&mut self, mono: Instant) -> Result<Interval<K>, CollectError> {
        let mut res = Vec::new();
        let mut seen = Vec::new();
        for item in self.map.iter() {
            let (key, cur) = item.map_err(|e| CollectError::Unavailable {
                what: "eBPF histogram map",
                detail: e.to_string(),
            })?;
            let prev = self.prev.get(&key).map(|(h, _)| h);
            let d = hist::delta(&cur, prev);
            let idle = if hist::count(&d) == 0 {
                self.prev.get(&key).map_or(0, |(_, idle)| idle + 1)
            } else {
                res.push((key, d));
                0
            };
            self.prev.insert(key, (cur, idle));
            seen.push(key);
        }
        // Forget entries gone from the map; evict the idle ones from it.
        self.prev.retain(|k, _| seen.contains(k));
        let idle: Vec<K> = self
            .prev
            .iter()
            .filter(|(_, (_, idle))| *idle >= IDLE_TICKS_BEFORE_EVICT)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            let _ = self.map.remove(&key);
            self.prev.remove(&key);
        }
        let dt = self
            .last_mono
            .map(|t| mono.saturating_duration_since(t).as_secs_f64());
        self.last_mono = Some(mono);
        match dt {
            Some(dt) if dt > 0.0 => Ok((res, Some(dt))),
            _ => Ok((Vec::new(), None)),
        }
    }
}

fn emit_summary(
    out: &mut Vec<(SeriesKey, f64)>,
    key: &SeriesKey,
    prefix: &str,
    rate_metric: &str,
    s: &hist::Summary,
    dt: f64,
) {
    let with = |metric: String| SeriesKey {
        metric,
        ..key.clone()
    };
    out.push((with(format!("{prefix}_p50_us")), s.p50_us));
    out.push((with(format!("{prefix}_p99_us")), s.p99_us));
    out.push((with(format!("{prefix}_mean_us")), s.mean_us));
    out.push((
        with(rate_metric.to_string()),
        super::round2(s.count as f64 / dt),
    ));
}

/// Run-queue latency per cgroup (`ebpf_runq`).
struct RunqCollector {
    base: Base,
    hists: HistState<u64>,
    max_cgroups: usize,
}

impl Collector for RunqCollector {
    fn name(&self) -> &'static str {
        self.base.name
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let (mut rows, dt) = self.hists.poll(mono)?;
        if let Some(dt) = dt {
            // Bounded like the cgroup collector: the busiest cgroups first.
            rows.sort_by_key(|(_, h)| std::cmp::Reverse(hist::count(h)));
            rows.truncate(self.max_cgroups);
            for (cgroup_id, h) in rows {
                let Some(s) = hist::summarize(&h) else {
                    continue;
                };
                let shared = &self.base.shared;
                let info = shared.cgroup(cgroup_id, 0, mono);
                if !shared.keeps(info.as_ref()) {
                    continue;
                }
                let mut key = SeriesKey::new(
                    match &info {
                        Some(c) => format!("cgroup/{}", c.path),
                        None => format!("cgroup/id:{cgroup_id}"),
                    },
                    "",
                );
                if let Some(c) = &info {
                    for (k, v) in c.attribution.labels() {
                        key = key.with_label(k, v);
                    }
                }
                emit_summary(
                    out,
                    &key,
                    "sched.runq_latency",
                    "sched.runq_wakeups_per_s",
                    &s,
                    dt,
                );
            }
        }
        self.base.shared.report_drops(&self.base.drop_reasons, out)
    }
}

/// Block I/O latency per device and operation (`ebpf_bio`).
struct BioCollector {
    base: Base,
    hists: HistState<BioKey>,
    sys_root: PathBuf,
    names: HashMap<u32, String>,
}

impl BioCollector {
    /// `sda`, `nvme0n1`, ... from `/sys/dev/block/<major>:<minor>`; the numbers otherwise.
    fn device_name(&mut self, dev: u32) -> String {
        let (major, minor) = (dev >> 20, dev & 0xfffff);
        self.names
            .entry(dev)
            .or_insert_with(|| {
                let link = self.sys_root.join(format!("dev/block/{major}:{minor}"));
                std::fs::read_link(&link)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}

impl Collector for BioCollector {
    fn name(&self) -> &'static str {
        self.base.name
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let (rows, dt) = self.hists.poll(mono)?;
        if let Some(dt) = dt {
            for (key, h) in rows {
                let Some(s) = hist::summarize(&h) else {
                    continue;
                };
                let op = match key.op {
                    0 => "read",
                    1 => "write",
                    _ => "other",
                };
                let series = SeriesKey::new(format!("disk/{}", self.device_name(key.dev)), "")
                    .with_label("op", op);
                emit_summary(
                    out,
                    &series,
                    "disk.io_latency",
                    "disk.io_completed_per_s",
                    &s,
                    dt,
                );
            }
        }
        self.base.shared.report_drops(&self.base.drop_reasons, out)
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    fn info(path: &str) -> CgroupInfo {
        CgroupInfo {
            attribution: attribute(path),
            path: path.to_string(),
        }
    }

    #[test]
    fn scope_filters_records_by_cgroup_path() {
        let web = info("ado-scenario/n1/web");
        let other = info("ado-scenario/n2/web");
        assert!(scope_keeps(None, Some(&other)));
        assert!(scope_keeps(None, None));
        assert!(scope_keeps(Some("ado-scenario/n1"), Some(&web)));
        assert!(!scope_keeps(Some("ado-scenario/n1"), Some(&other)));
        assert!(!scope_keeps(Some("ado-scenario/n1"), Some(&info(""))));
        assert!(!scope_keeps(Some("ado-scenario/n1"), None));
    }
}
