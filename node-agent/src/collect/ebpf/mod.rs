//! Kernel telemetry through eBPF (aya): the collectors that read what the programs in
//! `ebpf/` gather. Part of `collect/`: they run once per tick like the procfs collectors,
//! append samples, and hand over events through [`Collector::drain_events`].
//!
//! - `ebpf_process`: `process.exec`, `process.exit` and `oom.kill` events.
//! - `ebpf_tcp`: `tcp.connect` and `tcp.close` events.
//! - `ebpf_runq`: run-queue latency per cgroup (`sched.runq_latency_*`).
//! - `ebpf_bio`: block I/O latency per device and operation (`disk.io_latency_*`).
//!
//! Every record and series is attributed to its cgroup, container and pod
//! ([`attribution`]). Kernel-side losses are counted per reason in the `DROPS` map and
//! shown as `ebpf.dropped_total` samples and `agent_ebpf_events_dropped_total`
//! ([`EVENTS_DROPPED`]). Each probe fails alone ([`loader`]); `docs/ebpf.md` has the
//! programs, maps, bounds, capabilities and degradation rules.

pub mod attribution;
pub mod btf;
pub mod events;
pub mod hist;
pub mod loader;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use common::model::{Event, SeriesKey};
use ebpf_common::{BioKey, Log2Hist, drop_reason};
use prometheus::IntCounterVec;

use self::attribution::{CgroupInfo, CgroupPaths, attribute, pick_v1_path};
use self::loader::{Family, LoadError};
use super::{CollectConfig, CollectError, Collector};

/// Most events one collector hands over per tick; the rest wait in the ring buffer (which
/// drops, and counts, when it fills).
pub const MAX_EVENTS_PER_TICK: usize = 4096;
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
                let map = if family == Family::Process {
                    "PROC_EVENTS"
                } else {
                    "TCP_EVENTS"
                };
                let ring =
                    RingBuf::try_from(take(&mut ebpf, map)?).map_err(|e| map_err(map, &e))?;
                Box::new(EventsCollector {
                    base,
                    ring,
                    pending: Vec::new(),
                })
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
            if total > *last {
                EVENTS_DROPPED
                    .with_label_values(&[name])
                    .inc_by(total - *last);
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

/// Drains a ring buffer into events (`ebpf_process`, `ebpf_tcp`).
struct EventsCollector {
    base: Base,
    ring: RingBuf<MapData>,
    pending: Vec<Event>,
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
        while self.pending.len() < MAX_EVENTS_PER_TICK {
            let Some(item) = self.ring.next() else {
                break;
            };
            let rec = events::decode(&item);
            drop(item);
            let Some(rec) = rec else {
                continue;
            };
            let cgroup = shared.cgroup(rec.cgroup_id(), rec.pid(), mono);
            if !shared.keeps(cgroup.as_ref()) {
                continue;
            }
            self.pending.push(events::to_event(
                &rec,
                shared.wall_ms(rec.ts_ns()),
                cgroup.as_ref(),
            ));
        }
        shared.report_drops(&self.base.drop_reasons, out)
    }

    fn drain_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.pending);
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
