//! Per-cgroup series (services, containers, pods) from the cgroup filesystem, v2 or v1.
//!
//! Mode: `cgroup.controllers` at `cgroup_root` means v2 (unified); otherwise v1, with one
//! directory per hierarchy (`cpu,cpuacct`, `memory`, `blkio`, or symlinks to them). On a
//! hybrid host (v1 controllers plus an empty `unified` v2 tree) the v1 hierarchies are read,
//! since that is where the controllers are.
//!
//! Entity `cgroup/<path relative to the root>`, the root itself being `cgroup/`. All values
//! are hierarchical (a cgroup includes its descendants), in both modes.
//!
//! Budget: the tree is walked breadth first to depth [`MAX_DEPTH`], at most `max_cgroups`
//! cgroups, and only every [`RESCAN_INTERVAL`]; between walks only the known cgroups' files
//! are read. Empty cgroups are skipped (v2: `populated 0` in `cgroup.events`; v1: a leaf
//! with an empty `cgroup.procs`). What the bounds leave out is counted in `cgroup.dropped`.
//! Per-cgroup state lives only for tracked cgroups and goes when they vanish.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::model::SeriesKey;

use super::{
    CollectConfig, CollectError, Collector, ParseError, parse_u64_field, per_s, read_file, round2,
    set_path,
};

/// Deepest level walked (the root is 0). Kubernetes pods sit at depth 3–4, containers 4–5.
pub const MAX_DEPTH: usize = 8;
/// How often the tree is walked for new and removed cgroups.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// cgroup v1 reports "no limit" as a huge page-rounded value (`PAGE_COUNTER_MAX` pages).
const V1_UNLIMITED: u64 = 1 << 62;

const CPUACCT: u8 = 1;
const CPU: u8 = 2;
const MEMORY: u8 = 4;
const BLKIO: u8 = 8;

/// CPU usage and throttling, normalised to nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCpuStat {
    /// Total CPU time (v2 only; v1 has it in `cpuacct.usage`).
    pub usage_ns: Option<u64>,
    /// Enforcement periods elapsed (only with a CPU quota, and the cpu controller enabled).
    pub nr_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: Option<u64>,
    /// Total time throttled.
    pub throttled_ns: Option<u64>,
}

/// Parses a v2 `cpu.stat` (`usage_usec`, `nr_periods`, `nr_throttled`, `throttled_usec`, ..).
/// `usage_usec` is required; the throttling lines exist only with the cpu controller.
pub fn parse_cgroup_v2_cpu_stat(text: &str) -> Result<CgroupCpuStat, ParseError> {
    let mut res = CgroupCpuStat::default();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "usage_usec" => res.usage_ns = Some(parse_u64_field(val, key)?.saturating_mul(1000)),
            "nr_periods" => res.nr_periods = Some(parse_u64_field(val, key)?),
            "nr_throttled" => res.nr_throttled = Some(parse_u64_field(val, key)?),
            "throttled_usec" => {
                res.throttled_ns = Some(parse_u64_field(val, key)?.saturating_mul(1000));
            }
            _ => {}
        }
    }
    if res.usage_ns.is_none() {
        return Err(ParseError::new("cpu.stat without usage_usec"));
    }
    Ok(res)
}

/// Parses a v1 `cpu.stat` (`nr_periods`, `nr_throttled`, `throttled_time` in ns). Usage is
/// not in it (see `cpuacct.usage`).
pub fn parse_cgroup_v1_cpu_stat(text: &str) -> Result<CgroupCpuStat, ParseError> {
    let mut res = CgroupCpuStat::default();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "nr_periods" => res.nr_periods = Some(parse_u64_field(val, key)?),
            "nr_throttled" => res.nr_throttled = Some(parse_u64_field(val, key)?),
            "throttled_time" => res.throttled_ns = Some(parse_u64_field(val, key)?),
            _ => {}
        }
    }
    if res.nr_periods.is_none() || res.nr_throttled.is_none() || res.throttled_ns.is_none() {
        return Err(ParseError::new(
            "cpu.stat without nr_periods/nr_throttled/throttled_time",
        ));
    }
    Ok(res)
}

/// Bytes read and written, summed over devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoBytes {
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub write: u64,
}

/// Parses a v2 `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device.
/// An empty file (no I/O yet) is zero.
pub fn parse_cgroup_v2_io_stat(text: &str) -> Result<IoBytes, ParseError> {
    let mut res = IoBytes::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next() else { continue };
        if !dev.contains(':') {
            return Err(ParseError::new(format!(
                "io.stat line without a device: {line:?}"
            )));
        }
        for tok in it {
            let Some((key, val)) = tok.split_once('=') else {
                return Err(ParseError::new(format!(
                    "io.stat field without '=': {tok:?}"
                )));
            };
            match key {
                "rbytes" => res.read = res.read.saturating_add(parse_u64_field(val, key)?),
                "wbytes" => res.write = res.write.saturating_add(parse_u64_field(val, key)?),
                _ => {}
            }
        }
    }
    Ok(res)
}

/// Parses a v1 `blkio.throttle.io_service_bytes[_recursive]`: `8:0 Read 123` lines per
/// device and operation, then `Total N`.
pub fn parse_blkio_service_bytes(text: &str) -> Result<IoBytes, ParseError> {
    let mut res = IoBytes::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(_dev), Some(op), Some(val)) => {
                let val = parse_u64_field(val, "blkio bytes")?;
                match op {
                    "Read" => res.read = res.read.saturating_add(val),
                    "Write" => res.write = res.write.saturating_add(val),
                    _ => {}
                }
            }
            (Some("Total"), Some(val), None) => {
                parse_u64_field(val, "blkio total")?;
            }
            (None, _, _) => {}
            _ => return Err(ParseError::new(format!("odd blkio line {line:?}"))),
        }
    }
    Ok(res)
}

/// Parses v2 `memory.max`: `max` is no limit (`None`).
pub fn parse_memory_max(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        other => parse_u64_field(other, "memory.max").map(Some),
    }
}

/// Parses v1 `memory.limit_in_bytes`: the huge "unlimited" value is `None`.
pub fn parse_v1_memory_limit(text: &str) -> Result<Option<u64>, ParseError> {
    let val = parse_u64_field(text, "memory.limit_in_bytes")?;
    Ok((val < V1_UNLIMITED).then_some(val))
}

/// Parses v2 `cgroup.events` for `populated`: whether the subtree has any process.
pub fn parse_cgroup_populated(text: &str) -> Result<bool, ParseError> {
    for line in text.lines() {
        if let Some(val) = line.strip_prefix("populated ") {
            return match val.trim() {
                "0" => Ok(false),
                "1" => Ok(true),
                other => Err(ParseError::new(format!("bad populated value {other:?}"))),
            };
        }
    }
    Err(ParseError::new("cgroup.events without populated"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V2,
    V1,
}

/// One mounted hierarchy: the v2 root, or a v1 controller directory.
#[derive(Debug)]
struct Hierarchy {
    dir: PathBuf,
    /// Which of CPUACCT, CPU, MEMORY, BLKIO it carries (all for v2).
    controllers: u8,
}

/// Everything read from one cgroup in one tick.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    usage_ns: Option<u64>,
    cpu: CgroupCpuStat,
    mem_usage: Option<u64>,
    mem_limit: Option<u64>,
    io: Option<IoBytes>,
}

struct Tracked {
    rel: String,
    entity: String,
    /// Bit i: hierarchy i has this cgroup.
    hier_mask: u8,
    prev: Option<(Instant, Sample)>,
}

/// Outcome of reading one file of one cgroup.
enum Read<T> {
    Got(T),
    /// Not there (cgroup removed, or the controller not enabled for it).
    Missing,
    /// Unreadable or malformed: reported, the cgroup's other files still count.
    Failed(CollectError),
}

/// Per-cgroup CPU, throttling, memory and I/O, for v2 and v1 hosts.
pub struct CgroupCollector {
    root: PathBuf,
    max_cgroups: usize,
    mode: Option<Mode>,
    hierarchies: Vec<Hierarchy>,
    tracked: Vec<Tracked>,
    n_dropped: usize,
    scanned_at: Option<Instant>,
    buf: String,
    scratch: PathBuf,
    /// `--scope-cgroup`: the walk starts at this subtree instead of the root.
    scope: Option<String>,
}

impl CgroupCollector {
    /// A collector reading `cfg.cgroup_root`. Nothing is read until the first tick.
    pub fn new(cfg: &CollectConfig) -> Self {
        CgroupCollector {
            root: cfg.cgroup_root.clone(),
            max_cgroups: cfg.max_cgroups,
            mode: None,
            hierarchies: Vec::new(),
            tracked: Vec::new(),
            n_dropped: 0,
            scanned_at: None,
            buf: String::with_capacity(1024),
            scratch: PathBuf::new(),
            scope: cfg.scope_cgroup.as_deref().and_then(super::normalize_scope),
        }
    }

    /// Finds out v2 or v1, and the v1 hierarchies.
    fn detect(&mut self) -> Result<(), CollectError> {
        if self.root.join("cgroup.controllers").is_file() {
            self.hierarchies = vec![Hierarchy {
                dir: self.root.clone(),
                controllers: CPUACCT | CPU | MEMORY | BLKIO,
            }];
            self.mode = Some(Mode::V2);
            tracing::info!(root = %self.root.display(), "cgroup v2 (unified) detected");
            return Ok(());
        }
        let entries = fs::read_dir(&self.root).map_err(|e| CollectError::Unavailable {
            what: "cgroup filesystem",
            detail: format!("cannot list {}: {e}", self.root.display()),
        })?;
        let mut found: Vec<Hierarchy> = Vec::new();
        let mut claimed = 0u8;
        let mut names: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        // Deterministic: `cpu` before `cpu,cpuacct` before `cpuacct`.
        names.sort();
        for (name, path) in names {
            let mask = name.split(',').fold(0u8, |m, c| {
                m | match c {
                    "cpuacct" => CPUACCT,
                    "cpu" => CPU,
                    "memory" => MEMORY,
                    "blkio" => BLKIO,
                    _ => 0,
                }
            });
            // `is_dir` follows the `cpu -> cpu,cpuacct` symlinks.
            if mask == 0 || !path.is_dir() {
                continue;
            }
            let dir = fs::canonicalize(&path).unwrap_or(path);
            match found.iter_mut().find(|h| h.dir == dir) {
                Some(h) => h.controllers |= mask & !claimed,
                None if mask & !claimed != 0 => {
                    found.push(Hierarchy {
                        dir,
                        controllers: mask & !claimed,
                    });
                }
                None => {}
            }
            claimed |= mask;
        }
        if found.is_empty() {
            return Err(CollectError::Unavailable {
                what: "cgroup filesystem",
                detail: format!(
                    "{} has neither cgroup.controllers (v2) nor cpu/cpuacct/memory/blkio (v1)",
                    self.root.display()
                ),
            });
        }
        tracing::info!(root = %self.root.display(), hierarchies = ?found, "cgroup v1 detected");
        self.hierarchies = found;
        self.mode = Some(Mode::V1);
        Ok(())
    }

    /// Walks the tree breadth first and replaces the tracked list, keeping the previous
    /// samples of cgroups that are still there.
    fn rescan(&mut self) {
        let v2 = self.mode == Some(Mode::V2);
        let all_hier = (1u8 << self.hierarchies.len().min(7)) - 1;
        // Scoped: walk only the subtree (depth still counts from the root). A scope that
        // does not exist (yet) is simply empty: the walk finds nothing and tries again later.
        let start = self.scope.clone().unwrap_or_default();
        let start_depth = if start.is_empty() {
            0
        } else {
            start.split('/').count()
        };
        let mut queue = VecDeque::from([(start, all_hier, start_depth)]);
        let mut found: Vec<(String, u8)> = Vec::new();
        let mut n_dropped = 0;
        let mut children: BTreeMap<String, u8> = BTreeMap::new();
        while let Some((rel, mut mask, depth)) = queue.pop_front() {
            if found.len() >= self.max_cgroups {
                n_dropped += 1;
                continue;
            }
            if v2 && !rel.is_empty() {
                let path = set_path(&mut self.scratch, &self.root, &[&rel, "cgroup.events"]);
                match read_file(&mut self.buf, path) {
                    // Nobody in the subtree: no series, and no need to look further down.
                    Ok(()) if parse_cgroup_populated(&self.buf) == Ok(false) => continue,
                    Ok(()) => {}
                    Err(_) => continue, // removed meanwhile
                }
            }
            children.clear();
            let mut has_children = 0u8;
            for (idx, hier) in self.hierarchies.iter().enumerate() {
                let bit = 1u8 << idx;
                if mask & bit == 0 {
                    continue;
                }
                let dir = set_path(&mut self.scratch, &hier.dir, &[&rel]);
                let Ok(entries) = fs::read_dir(dir) else {
                    mask &= !bit;
                    continue;
                };
                for entry in entries.filter_map(Result::ok) {
                    // d_type from readdir: no extra stat per entry.
                    if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    *children.entry(name).or_default() |= bit;
                    has_children |= bit;
                }
            }
            if !v2 && !rel.is_empty() {
                // A v1 leaf without processes measures nothing (systemd leaves many behind).
                for (idx, hier) in self.hierarchies.iter().enumerate() {
                    let bit = 1u8 << idx;
                    if mask & bit == 0 || has_children & bit != 0 {
                        continue;
                    }
                    let path = set_path(&mut self.scratch, &hier.dir, &[&rel, "cgroup.procs"]);
                    if read_file(&mut self.buf, path).is_err() || self.buf.trim().is_empty() {
                        mask &= !bit;
                    }
                }
            }
            if mask == 0 {
                continue;
            }
            for (name, child_mask) in &children {
                if depth >= MAX_DEPTH {
                    n_dropped += 1;
                    continue;
                }
                let child = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                queue.push_back((child, *child_mask & mask, depth + 1));
            }
            found.push((rel, mask));
        }

        let mut old: HashMap<String, Tracked> =
            self.tracked.drain(..).map(|t| (t.rel.clone(), t)).collect();
        self.tracked = found
            .into_iter()
            .map(|(rel, hier_mask)| match old.remove(&rel) {
                Some(t) => Tracked { hier_mask, ..t },
                None => Tracked {
                    entity: format!("cgroup/{rel}"),
                    rel,
                    hier_mask,
                    prev: None,
                },
            })
            .collect();
        self.n_dropped = n_dropped;
    }

    /// Reads one cgroup's files. Returns the sample, whether every file was missing (the
    /// cgroup is gone), and the first error.
    fn read_sample(&mut self, idx: usize) -> (Sample, bool, Option<CollectError>) {
        let Self {
            hierarchies,
            tracked,
            buf,
            scratch,
            mode,
            ..
        } = self;
        let t = &tracked[idx];
        let mut s = Sample::default();
        let mut tally = Tally::default();
        for (h_idx, hier) in hierarchies.iter().enumerate() {
            if t.hier_mask & (1 << h_idx) == 0 {
                continue;
            }
            let mut r = Reader {
                buf: &mut *buf,
                scratch: &mut *scratch,
                dir: &hier.dir,
                rel: &t.rel,
                tally: &mut tally,
            };
            if *mode == Some(Mode::V2) {
                if let Some(cpu) = r.read("cpu.stat", parse_cgroup_v2_cpu_stat) {
                    s.usage_ns = cpu.usage_ns;
                    s.cpu = cpu;
                }
                s.mem_usage = r.read("memory.current", |t| parse_u64_field(t, "memory.current"));
                s.mem_limit = r.read("memory.max", parse_memory_max).flatten();
                s.io = r.read("io.stat", parse_cgroup_v2_io_stat);
                continue;
            }
            if hier.controllers & CPUACCT != 0 {
                s.usage_ns = r.read("cpuacct.usage", |t| parse_u64_field(t, "cpuacct.usage"));
            }
            if hier.controllers & CPU != 0
                && let Some(cpu) = r.read("cpu.stat", parse_cgroup_v1_cpu_stat)
            {
                s.cpu = cpu;
            }
            if hier.controllers & MEMORY != 0 {
                s.mem_usage = r.read("memory.usage_in_bytes", |t| {
                    parse_u64_field(t, "memory.usage_in_bytes")
                });
                s.mem_limit = r
                    .read("memory.limit_in_bytes", parse_v1_memory_limit)
                    .flatten();
            }
            if hier.controllers & BLKIO != 0 {
                // The recursive file matches v2's hierarchical io.stat; old kernels lack it.
                let file = "blkio.throttle.io_service_bytes_recursive";
                s.io = match r.read_raw(file, parse_blkio_service_bytes) {
                    Read::Missing => {
                        r.read("blkio.throttle.io_service_bytes", parse_blkio_service_bytes)
                    }
                    other => r.tally.take(other),
                };
            }
        }
        // Nothing readable: gone, if its directory is gone too (checked only in this case).
        let vanished = tally.n_got == 0
            && tally.first_err.is_none()
            && !hierarchies.iter().enumerate().any(|(h_idx, h)| {
                t.hier_mask & (1 << h_idx) != 0 && set_path(scratch, &h.dir, &[&t.rel]).is_dir()
            });
        (s, vanished, tally.first_err)
    }
}

/// What the reads of one cgroup in one tick came to.
#[derive(Default)]
struct Tally {
    n_got: usize,
    first_err: Option<CollectError>,
}

impl Tally {
    fn take<T>(&mut self, r: Read<T>) -> Option<T> {
        match r {
            Read::Got(v) => {
                self.n_got += 1;
                Some(v)
            }
            Read::Missing => None,
            Read::Failed(e) => {
                self.first_err.get_or_insert(e);
                None
            }
        }
    }
}

/// Reads files of one cgroup in one hierarchy into the collector's reused buffers.
struct Reader<'a> {
    buf: &'a mut String,
    scratch: &'a mut PathBuf,
    dir: &'a Path,
    rel: &'a str,
    tally: &'a mut Tally,
}

impl Reader<'_> {
    fn read_raw<T>(
        &mut self,
        file: &str,
        parse: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Read<T> {
        let path = set_path(self.scratch, self.dir, &[self.rel, file]);
        match read_file(self.buf, path) {
            Ok(()) => match parse(self.buf) {
                Ok(v) => Read::Got(v),
                Err(e) => Read::Failed(CollectError::parse(path, e)),
            },
            // ENODEV: a cgroup being removed. EACCES: not ours to read; skip, don't complain.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) || err.raw_os_error() == Some(libc::ENODEV) =>
            {
                Read::Missing
            }
            Err(err) => Read::Failed(CollectError::io(path, err)),
        }
    }

    fn read<T>(&mut self, file: &str, parse: impl Fn(&str) -> Result<T, ParseError>) -> Option<T> {
        let r = self.read_raw(file, parse);
        self.tally.take(r)
    }
}

fn emit(out: &mut Vec<(SeriesKey, f64)>, entity: &str, metric: &'static str, value: f64) {
    out.push((SeriesKey::new(entity, metric), value));
}

/// Appends one cgroup's series: gauges always, rates when there is a previous sample.
fn emit_sample(
    out: &mut Vec<(SeriesKey, f64)>,
    entity: &str,
    cur: &Sample,
    prev: Option<(f64, &Sample)>,
) {
    if let Some(v) = cur.mem_usage {
        emit(out, entity, "cgroup.mem_usage_bytes", v as f64);
    }
    if let Some(v) = cur.mem_limit {
        emit(out, entity, "cgroup.mem_limit_bytes", v as f64);
    }
    let Some((dt_s, p)) = prev else { return };
    let rate = |a: Option<u64>, b: Option<u64>| per_s(a?, b?, dt_s);
    // ns of CPU per s of wall time / 1e7 = percent of one core.
    if let Some(r) = rate(p.usage_ns, cur.usage_ns) {
        emit(out, entity, "cgroup.cpu_pct", round2(r / 1e7));
    }
    // Throttling exists only under a CPU quota; without one, nr_periods stays 0 and we
    // spare two always-zero series per cgroup.
    if cur.cpu.nr_periods.is_some_and(|n| n > 0) {
        if let Some(r) = rate(p.cpu.nr_throttled, cur.cpu.nr_throttled) {
            emit(out, entity, "cgroup.cpu_throttled_periods_per_s", round2(r));
        }
        if let Some(r) = rate(p.cpu.throttled_ns, cur.cpu.throttled_ns) {
            emit(out, entity, "cgroup.cpu_throttled_pct", round2(r / 1e7));
        }
    }
    if let (Some(a), Some(b)) = (p.io, cur.io) {
        if let Some(r) = per_s(a.read, b.read, dt_s) {
            emit(out, entity, "cgroup.io_read_bytes_per_s", r.round());
        }
        if let Some(r) = per_s(a.write, b.write, dt_s) {
            emit(out, entity, "cgroup.io_write_bytes_per_s", r.round());
        }
    }
}

impl Collector for CgroupCollector {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        if self.mode.is_none() {
            self.detect()?;
        }
        if self
            .scanned_at
            .is_none_or(|at| mono.saturating_duration_since(at) >= RESCAN_INTERVAL)
        {
            self.rescan();
            self.scanned_at = Some(mono);
        }
        let mut first_err = None;
        let mut n_vanished = 0;
        for idx in 0..self.tracked.len() {
            let (sample, vanished, err) = self.read_sample(idx);
            if let Some(err) = err {
                first_err.get_or_insert(err);
            }
            let t = &mut self.tracked[idx];
            if vanished {
                // Removed since the last walk: forget it now rather than at the next walk.
                t.hier_mask = 0;
                n_vanished += 1;
                continue;
            }
            let prev = t
                .prev
                .as_ref()
                .map(|(at, s)| (mono.saturating_duration_since(*at).as_secs_f64(), s));
            emit_sample(out, &t.entity, &sample, prev);
            t.prev = Some((mono, sample));
        }
        if n_vanished > 0 {
            self.tracked.retain(|t| t.hier_mask != 0);
        }
        emit(out, "host", "cgroup.count", self.tracked.len() as f64);
        emit(out, "host", "cgroup.dropped", self.n_dropped as f64);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collect::testutil::{TempTree, values};

    /// `cpu.stat` of a v2 cgroup with the cpu controller enabled (Linux 6.x).
    const V2_CPU_STAT: &str = "usage_usec 326805678
user_usec 294157054
system_usec 32648623
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 120
nr_throttled 7
throttled_usec 81234
nr_bursts 0
burst_usec 0
";

    fn v2_cpu(usage_usec: u64, nr_periods: u64, nr_throttled: u64, throttled_usec: u64) -> String {
        format!(
            "usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 1\nnice_usec 0\n\
             nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_usec {throttled_usec}\n\
             nr_bursts 0\nburst_usec 0\n"
        )
    }

    fn v1_cpu(nr_periods: u64, nr_throttled: u64, throttled_ns: u64) -> String {
        format!(
            "nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_time {throttled_ns}\n\
             nr_bursts 0\nburst_time 0\n"
        )
    }

    fn cfg(tree: &TempTree, max_cgroups: usize) -> CollectConfig {
        CollectConfig {
            proc_root: tree.path("proc"),
            sys_root: tree.path("sys"),
            cgroup_root: tree.path("cg"),
            max_processes: 16,
            max_cgroups,
            scope_cgroup: None,
        }
    }

    #[test]
    fn v2_cpu_stat_real_and_minimal() {
        let c = parse_cgroup_v2_cpu_stat(V2_CPU_STAT).unwrap();
        assert_eq!(
            c,
            CgroupCpuStat {
                usage_ns: Some(326_805_678_000),
                nr_periods: Some(120),
                nr_throttled: Some(7),
                throttled_ns: Some(81_234_000)
            }
        );
        // Without the cpu controller, only the usage lines are there.
        let c = parse_cgroup_v2_cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!((c.usage_ns, c.nr_periods), (Some(5000), None));
    }

    #[test]
    fn v2_cpu_stat_malformed() {
        assert!(parse_cgroup_v2_cpu_stat("").is_err());
        assert!(
            parse_cgroup_v2_cpu_stat("user_usec 3\n").is_err(),
            "no usage"
        );
        assert!(parse_cgroup_v2_cpu_stat("usage_usec x\n").is_err());
        assert!(parse_cgroup_v2_cpu_stat("usage_usec 1\nnr_throttled -1\n").is_err());
    }

    #[test]
    fn v1_cpu_stat_parses_and_rejects() {
        // This machine's /sys/fs/cgroup/cpu/cpu.stat.
        let text = "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n";
        let c = parse_cgroup_v1_cpu_stat(text).unwrap();
        assert_eq!(c.throttled_ns, Some(0));
        assert_eq!(
            parse_cgroup_v1_cpu_stat(&v1_cpu(5, 2, 9))
                .unwrap()
                .throttled_ns,
            Some(9)
        );
        assert!(
            parse_cgroup_v1_cpu_stat("nr_periods 1\n").is_err(),
            "truncated"
        );
        assert!(
            parse_cgroup_v1_cpu_stat("nr_periods 1\nnr_throttled 1\nthrottled_time z\n").is_err()
        );
    }

    #[test]
    fn io_stat_sums_devices() {
        let text = "8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
                    253:0 rbytes=100 wbytes=200 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(
            parse_cgroup_v2_io_stat(text),
            Ok(IoBytes {
                read: 1_459_300,
                write: 314_773_704
            })
        );
        assert_eq!(parse_cgroup_v2_io_stat(""), Ok(IoBytes::default()));
        assert!(parse_cgroup_v2_io_stat("8:0 rbytes=x\n").is_err());
        assert!(parse_cgroup_v2_io_stat("8:0 rbytes\n").is_err());
        assert!(parse_cgroup_v2_io_stat("rbytes=1\n").is_err());
    }

    #[test]
    fn blkio_sums_read_and_write() {
        let text = "8:0 Read 1234\n8:0 Write 5678\n8:0 Sync 6000\n8:0 Async 912\n8:0 Discard 0\n\
                    8:0 Total 6912\n8:16 Read 6\n8:16 Write 2\n8:16 Total 8\nTotal 6920\n";
        assert_eq!(
            parse_blkio_service_bytes(text),
            Ok(IoBytes {
                read: 1240,
                write: 5680
            })
        );
        // This machine: no I/O recorded.
        assert_eq!(
            parse_blkio_service_bytes("Total 0\n"),
            Ok(IoBytes::default())
        );
        assert!(parse_blkio_service_bytes("8:0 Read x\n").is_err());
        assert!(parse_blkio_service_bytes("8:0 Read\n").is_err());
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory_max("max\n"), Ok(None));
        assert_eq!(parse_memory_max("104857600\n"), Ok(Some(104_857_600)));
        assert!(parse_memory_max("lots\n").is_err());
        assert_eq!(parse_v1_memory_limit("9223372036854771712\n"), Ok(None));
        assert_eq!(parse_v1_memory_limit("536870912\n"), Ok(Some(536_870_912)));
        assert!(parse_v1_memory_limit("").is_err());
    }

    #[test]
    fn populated_flag() {
        assert_eq!(parse_cgroup_populated("populated 1\nfrozen 0\n"), Ok(true));
        assert_eq!(parse_cgroup_populated("populated 0\nfrozen 0\n"), Ok(false));
        assert!(parse_cgroup_populated("frozen 0\n").is_err());
        assert!(parse_cgroup_populated("populated yes\n").is_err());
    }

    fn v2_tree(tree: &TempTree) {
        tree.write(
            "cg/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        tree.write("cg/cpu.stat", &v2_cpu(10_000_000, 0, 0, 0));
        tree.write(
            "cg/io.stat",
            "8:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        tree.write("cg/system.slice/cgroup.events", "populated 1\nfrozen 0\n");
        tree.write("cg/system.slice/cpu.stat", &v2_cpu(5_000_000, 0, 0, 0));
        tree.write("cg/system.slice/memory.current", "73400320\n");
        tree.write("cg/system.slice/memory.max", "max\n");
        tree.write("cg/system.slice/io.stat", "");
        let ssh = "cg/system.slice/ssh.service";
        tree.write(&format!("{ssh}/cgroup.events"), "populated 1\nfrozen 0\n");
        tree.write(&format!("{ssh}/cpu.stat"), &v2_cpu(200_000, 10, 2, 5_000));
        tree.write(&format!("{ssh}/memory.current"), "5242880\n");
        tree.write(&format!("{ssh}/memory.max"), "104857600\n");
        tree.write(
            &format!("{ssh}/io.stat"),
            "8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n\
             8:16 rbytes=0 wbytes=8192 rios=0 wios=2 dbytes=0 dios=0\n",
        );
        let empty = "cg/system.slice/empty.service";
        tree.write(&format!("{empty}/cgroup.events"), "populated 0\nfrozen 0\n");
        tree.write(&format!("{empty}/cpu.stat"), &v2_cpu(1, 0, 0, 0));
    }

    #[test]
    fn v2_tree_over_two_ticks() {
        let tree = TempTree::new("cg-v2");
        v2_tree(&tree);
        let mut c = CgroupCollector::new(&cfg(&tree, 16));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        assert_eq!(c.mode, Some(Mode::V2));
        let v = values(&out);
        let ssh = "cgroup/system.slice/ssh.service";
        assert_eq!(v.get(&("host", "cgroup.count")), Some(&3.0));
        assert_eq!(v.get(&("host", "cgroup.dropped")), Some(&0.0));
        assert_eq!(v.get(&(ssh, "cgroup.mem_usage_bytes")), Some(&5_242_880.0));
        assert_eq!(
            v.get(&(ssh, "cgroup.mem_limit_bytes")),
            Some(&104_857_600.0)
        );
        assert_eq!(
            v.get(&("cgroup/system.slice", "cgroup.mem_usage_bytes")),
            Some(&73_400_320.0)
        );
        assert!(
            !v.contains_key(&("cgroup/system.slice", "cgroup.mem_limit_bytes")),
            "max"
        );
        assert!(
            !v.contains_key(&(ssh, "cgroup.cpu_pct")),
            "no rate on the first tick"
        );
        assert!(
            !v.keys().any(|(e, _)| e.contains("empty.service")),
            "not populated"
        );

        // Two seconds later: ssh used 1 s of CPU, was throttled 4 times for 100 ms in all,
        // read 2 MiB and wrote 1 MiB.
        let ssh_dir = "cg/system.slice/ssh.service";
        tree.write(
            &format!("{ssh_dir}/cpu.stat"),
            &v2_cpu(1_200_000, 30, 6, 105_000),
        );
        tree.write(
            &format!("{ssh_dir}/io.stat"),
            "8:0 rbytes=2101248 wbytes=0 rios=9 wios=0 dbytes=0 dios=0\n\
             8:16 rbytes=0 wbytes=1056768 rios=0 wios=9 dbytes=0 dios=0\n",
        );
        tree.write("cg/cpu.stat", &v2_cpu(13_000_000, 0, 0, 0));
        out.clear();
        c.collect(t0 + Duration::from_secs(2), &mut out).unwrap();
        let v = values(&out);
        assert_eq!(v.get(&(ssh, "cgroup.cpu_pct")), Some(&50.0));
        assert_eq!(
            v.get(&(ssh, "cgroup.cpu_throttled_periods_per_s")),
            Some(&2.0)
        );
        assert_eq!(v.get(&(ssh, "cgroup.cpu_throttled_pct")), Some(&5.0));
        assert_eq!(
            v.get(&(ssh, "cgroup.io_read_bytes_per_s")),
            Some(&1_048_576.0)
        );
        assert_eq!(
            v.get(&(ssh, "cgroup.io_write_bytes_per_s")),
            Some(&524_288.0)
        );
        assert_eq!(v.get(&("cgroup/", "cgroup.cpu_pct")), Some(&150.0));
        assert_eq!(
            v.get(&("cgroup/", "cgroup.io_read_bytes_per_s")),
            Some(&0.0)
        );
        assert_eq!(
            v.get(&("cgroup/system.slice", "cgroup.io_read_bytes_per_s")),
            Some(&0.0)
        );
        assert!(
            !v.contains_key(&("cgroup/", "cgroup.mem_usage_bytes")),
            "no memory.current at root"
        );
        assert!(
            !v.contains_key(&("cgroup/system.slice", "cgroup.cpu_throttled_pct")),
            "no quota, no throttling series"
        );

        // ssh.service stopped: its directory is gone before the next walk.
        tree.remove(ssh_dir);
        out.clear();
        c.collect(t0 + Duration::from_secs(3), &mut out).unwrap();
        let v = values(&out);
        assert!(!v.keys().any(|(e, _)| *e == ssh));
        assert_eq!(v.get(&("host", "cgroup.count")), Some(&2.0));
        assert_eq!(c.tracked.len(), 2);
    }

    #[test]
    fn v2_malformed_file_fails_alone() {
        let tree = TempTree::new("cg-v2-bad");
        v2_tree(&tree);
        tree.write("cg/system.slice/ssh.service/memory.current", "lots\n");
        let mut c = CgroupCollector::new(&cfg(&tree, 16));
        let mut out = Vec::new();
        let err = c.collect(Instant::now(), &mut out).unwrap_err();
        assert!(
            matches!(&err, CollectError::Parse { path, .. } if path.ends_with("memory.current")),
            "{err}"
        );
        let v = values(&out);
        let ssh = "cgroup/system.slice/ssh.service";
        assert_eq!(
            v.get(&(ssh, "cgroup.mem_limit_bytes")),
            Some(&104_857_600.0)
        );
        assert!(!v.contains_key(&(ssh, "cgroup.mem_usage_bytes")));
        assert!(v.contains_key(&("cgroup/system.slice", "cgroup.mem_usage_bytes")));
    }

    #[test]
    fn v2_bounds_count_what_is_dropped() {
        let tree = TempTree::new("cg-v2-bounds");
        tree.write("cg/cgroup.controllers", "cpu memory io\n");
        tree.write("cg/cpu.stat", &v2_cpu(1, 0, 0, 0));
        for n in 0..5 {
            tree.write(&format!("cg/s{n}/cgroup.events"), "populated 1\n");
            tree.write(&format!("cg/s{n}/cpu.stat"), &v2_cpu(1, 0, 0, 0));
        }
        let mut c = CgroupCollector::new(&cfg(&tree, 3));
        let mut out = Vec::new();
        c.collect(Instant::now(), &mut out).unwrap();
        let v = values(&out);
        assert_eq!(v.get(&("host", "cgroup.count")), Some(&3.0));
        assert_eq!(v.get(&("host", "cgroup.dropped")), Some(&3.0));
        // Breadth first: the root and the first children (sorted) are kept.
        let rels: Vec<_> = c.tracked.iter().map(|t| t.rel.as_str()).collect();
        assert_eq!(rels, ["", "s0", "s1"]);

        // Depth: a chain of 10 nested cgroups keeps depths 0..=MAX_DEPTH.
        let tree = TempTree::new("cg-v2-deep");
        tree.write("cg/cgroup.controllers", "cpu\n");
        tree.write("cg/cpu.stat", &v2_cpu(1, 0, 0, 0));
        let mut rel = String::from("cg");
        for n in 0..10 {
            rel.push_str(&format!("/d{n}"));
            tree.write(&format!("{rel}/cgroup.events"), "populated 1\n");
            tree.write(&format!("{rel}/cpu.stat"), &v2_cpu(1, 0, 0, 0));
        }
        let mut c = CgroupCollector::new(&cfg(&tree, 100));
        out.clear();
        c.collect(Instant::now(), &mut out).unwrap();
        assert_eq!(c.tracked.len(), MAX_DEPTH + 1);
        assert_eq!(c.n_dropped, 1);
    }

    fn v1_tree(tree: &TempTree) {
        // Like a systemd host: `cpu` and `cpuacct` are symlinks to the joint hierarchy, and
        // the hybrid `unified` v2 tree sits next to the controllers.
        tree.mkdir("cg/cpu,cpuacct");
        std::os::unix::fs::symlink("cpu,cpuacct", tree.path("cg/cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", tree.path("cg/cpuacct")).unwrap();
        tree.write("cg/unified/cgroup.controllers", "");
        tree.write("cg/systemd/cgroup.procs", "1\n");
        tree.write("cg/pids/cgroup.procs", "1\n");

        tree.write("cg/cpu,cpuacct/cgroup.procs", "1\n2\n");
        tree.write("cg/cpu,cpuacct/cpuacct.usage", "326319119690\n");
        tree.write("cg/cpu,cpuacct/cpu.stat", &v1_cpu(0, 0, 0));
        tree.write("cg/memory/cgroup.procs", "1\n");
        tree.write("cg/memory/memory.usage_in_bytes", "1151094784\n");
        tree.write("cg/memory/memory.limit_in_bytes", "9223372036854771712\n");
        tree.write("cg/blkio/cgroup.procs", "1\n");
        tree.write(
            "cg/blkio/blkio.throttle.io_service_bytes_recursive",
            "Total 0\n",
        );

        let abc = "docker/abc";
        tree.write(&format!("cg/cpu,cpuacct/{abc}/cgroup.procs"), "123\n");
        tree.write(
            &format!("cg/cpu,cpuacct/{abc}/cpuacct.usage"),
            "5000000000\n",
        );
        tree.write(
            &format!("cg/cpu,cpuacct/{abc}/cpu.stat"),
            &v1_cpu(100, 10, 50_000_000),
        );
        tree.write(&format!("cg/memory/{abc}/cgroup.procs"), "123\n");
        tree.write(
            &format!("cg/memory/{abc}/memory.usage_in_bytes"),
            "104857600\n",
        );
        tree.write(
            &format!("cg/memory/{abc}/memory.limit_in_bytes"),
            "536870912\n",
        );
        // Old kernel: no _recursive file.
        tree.write(&format!("cg/blkio/{abc}/cgroup.procs"), "123\n");
        tree.write(
            &format!("cg/blkio/{abc}/blkio.throttle.io_service_bytes"),
            "8:0 Read 4096\n8:0 Write 0\n8:0 Total 4096\nTotal 4096\n",
        );
        // A leaf nobody is in.
        tree.write("cg/memory/docker/idle/cgroup.procs", "");
        tree.write("cg/memory/docker/idle/memory.usage_in_bytes", "0\n");
    }

    #[test]
    fn v1_tree_over_two_ticks() {
        let tree = TempTree::new("cg-v1");
        v1_tree(&tree);
        let mut c = CgroupCollector::new(&cfg(&tree, 16));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        assert_eq!(c.mode, Some(Mode::V1));
        assert_eq!(c.hierarchies.len(), 3, "{:?}", c.hierarchies);
        let joint = c
            .hierarchies
            .iter()
            .find(|h| h.dir.ends_with("cpu,cpuacct"));
        assert_eq!(joint.map(|h| h.controllers), Some(CPU | CPUACCT));
        let v = values(&out);
        let abc = "cgroup/docker/abc";
        assert_eq!(
            v.get(&(abc, "cgroup.mem_usage_bytes")),
            Some(&104_857_600.0)
        );
        assert_eq!(
            v.get(&(abc, "cgroup.mem_limit_bytes")),
            Some(&536_870_912.0)
        );
        assert_eq!(
            v.get(&("cgroup/", "cgroup.mem_usage_bytes")),
            Some(&1_151_094_784.0)
        );
        assert!(
            !v.contains_key(&("cgroup/", "cgroup.mem_limit_bytes")),
            "unlimited"
        );
        assert!(!v.keys().any(|(e, _)| e.contains("idle")), "empty leaf");
        let mut rels: Vec<_> = c.tracked.iter().map(|t| t.rel.as_str()).collect();
        rels.sort();
        assert_eq!(rels, ["", "docker", "docker/abc"]);

        tree.write("cg/cpu,cpuacct/docker/abc/cpuacct.usage", "6000000000\n");
        tree.write(
            "cg/cpu,cpuacct/docker/abc/cpu.stat",
            &v1_cpu(120, 12, 250_000_000),
        );
        tree.write(
            "cg/blkio/docker/abc/blkio.throttle.io_service_bytes",
            "8:0 Read 4100096\n8:0 Write 0\n8:0 Total 4100096\nTotal 4100096\n",
        );
        tree.write("cg/cpu,cpuacct/cpuacct.usage", "326419119690\n");
        out.clear();
        c.collect(t0 + Duration::from_secs(2), &mut out).unwrap();
        let v = values(&out);
        assert_eq!(v.get(&(abc, "cgroup.cpu_pct")), Some(&50.0));
        assert_eq!(
            v.get(&(abc, "cgroup.cpu_throttled_periods_per_s")),
            Some(&1.0)
        );
        assert_eq!(v.get(&(abc, "cgroup.cpu_throttled_pct")), Some(&10.0));
        assert_eq!(
            v.get(&(abc, "cgroup.io_read_bytes_per_s")),
            Some(&2_048_000.0)
        );
        assert_eq!(v.get(&(abc, "cgroup.io_write_bytes_per_s")), Some(&0.0));
        assert_eq!(v.get(&("cgroup/", "cgroup.cpu_pct")), Some(&5.0));
        assert!(!v.contains_key(&("cgroup/", "cgroup.cpu_throttled_pct")));
    }

    #[test]
    fn scope_walks_only_the_subtree() {
        let tree = TempTree::new("cg-scope");
        v2_tree(&tree);
        for rel in ["cg/scen/n1/web", "cg/scen/n10/web"] {
            for (file, text) in [
                ("cgroup.events", "populated 1\nfrozen 0\n"),
                ("cpu.stat", v2_cpu(10, 0, 0, 0).as_str()),
                ("memory.current", "4096\n"),
            ] {
                tree.write(&format!("{rel}/{file}"), text);
            }
        }
        tree.write("cg/scen/cgroup.events", "populated 1\nfrozen 0\n");
        tree.write("cg/scen/n1/cgroup.events", "populated 1\nfrozen 0\n");
        tree.write("cg/scen/n10/cgroup.events", "populated 1\nfrozen 0\n");
        let mut c = CgroupCollector::new(&CollectConfig {
            scope_cgroup: Some("scen/n1".into()),
            ..cfg(&tree, 16)
        });
        let mut out = Vec::new();
        let _ = c.collect(Instant::now(), &mut out);
        let mut entities: Vec<_> = out
            .iter()
            .filter(|(k, _)| k.entity.starts_with("cgroup/"))
            .map(|(k, _)| k.entity.as_str())
            .collect();
        entities.sort();
        entities.dedup();
        // `scen/n1` itself has no files in this fixture (so no series); `scen/n10` is out.
        assert_eq!(entities, ["cgroup/scen/n1/web"]);
    }

    #[test]
    fn no_cgroup_filesystem_is_unavailable() {
        let tree = TempTree::new("cg-none");
        tree.mkdir("cg/systemd");
        let mut c = CgroupCollector::new(&cfg(&tree, 16));
        let err = c.collect(Instant::now(), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CollectError::Unavailable { .. }), "{err}");
        let err = CgroupCollector::new(&CollectConfig {
            cgroup_root: tree.path("nope"),
            ..cfg(&tree, 1)
        })
        .collect(Instant::now(), &mut Vec::new())
        .unwrap_err();
        assert!(matches!(err, CollectError::Unavailable { .. }), "{err}");
    }
}
