//! Collectors: the first stage of the node agent's data path.
//!
//! Each [`Collector`] samples one part of the host (procfs totals, processes, cgroups) once
//! per tick and appends `(SeriesKey, value)` pairs; the caller stamps them with the tick's
//! wall time and hands them on to detection and the shipper. Collectors never touch the
//! network and never read the clock: the caller passes the tick's monotonic instant, which
//! is all that rates need.
//!
//! Every file format is parsed by a plain function over `&str` (sans-IO), so the parsers are
//! tested on text samples; the collectors only read files into reused buffers and keep the
//! previous counters needed for rates. Values are rounded for the wire codec: percentages
//! to 2 decimals ([`round2`]), byte rates to whole numbers, counts are integers already.
//!
//! The metric names and entities are listed in `docs/metrics.md`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::model::{Event, SeriesKey};

pub mod cgroup;
pub mod ebpf;
pub mod host;
pub mod logs;
pub mod process;

pub use cgroup::CgroupCollector;
pub use host::HostCollector;
pub use logs::LogCollector;
pub use process::ProcessCollector;

/// Where collectors read from; tests point these at fixture trees.
#[derive(Clone, Debug)]
pub struct CollectConfig {
    /// procfs mount, normally `/proc` (`/host/proc` in a container).
    pub proc_root: PathBuf,
    /// sysfs mount, normally `/sys`.
    pub sys_root: PathBuf,
    /// cgroup filesystem root, normally `/sys/fs/cgroup` (v2 or a v1 tmpfs of controllers).
    pub cgroup_root: PathBuf,
    /// At most this many processes get per-process series each tick (top by cpu, then rss).
    pub max_processes: usize,
    /// At most this many cgroups get series (breadth first from the root).
    pub max_cgroups: usize,
    /// Only this cgroup subtree (path relative to the cgroup root, e.g. `ado-scenario/n1`):
    /// processes, cgroups and eBPF events outside it are left out; host-wide totals stay.
    /// For several "nodes" sharing one kernel (the scenario harness). `None`: everything.
    pub scope_cgroup: Option<String>,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            max_processes: 512,
            max_cgroups: 512,
            scope_cgroup: None,
        }
    }
}

/// `--scope-cgroup` as given (`/ado-scenario/n1/`, `ado-scenario/n1`) → the relative form
/// the collectors compare with (`ado-scenario/n1`); `None` for empty or `/` (no scoping).
pub fn normalize_scope(raw: &str) -> Option<String> {
    let rel = raw.trim().trim_matches('/');
    (!rel.is_empty()).then(|| rel.to_string())
}

/// Whether a cgroup (relative path, `None` or `""` for the root) is `scope` or below it.
/// Component-wise: scope `a/n1` holds `a/n1` and `a/n1/x`, not `a/n10`.
pub fn in_scope(scope: &str, cgroup: Option<&str>) -> bool {
    let Some(path) = cgroup.map(|c| c.trim_matches('/')) else {
        return false;
    };
    path.strip_prefix(scope)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One source of samples, called once per tick from a single thread.
pub trait Collector: Send {
    /// Stable short name: "host", "process", "cgroup". Shown on /metrics and in the hello.
    fn name(&self) -> &'static str;

    /// Appends this interval's values. `mono` is a monotonic instant of this tick, used for
    /// rates. The first call emits no rates (no previous sample).
    ///
    /// A failing source does not stop the others: whatever was appended to `out` is valid
    /// even when the call returns an error, and the error is the first one met this tick.
    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError>;

    /// Moves the events gathered by the last `collect` into `out` (call it after
    /// `collect`, every tick). Only event sources (the eBPF collectors) have any.
    fn drain_events(&mut self, _out: &mut Vec<Event>) {}
}

/// Why a collector could not read (part of) its sources this tick.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What we tried to read.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file was read but its contents were not in the expected format.
    #[error("cannot parse {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The facility this collector needs is absent on this host (e.g. no cgroup filesystem).
    /// It may appear later (the collector keeps looking), but usually it will not.
    #[error("{what} unavailable: {detail}")]
    Unavailable {
        /// The facility.
        what: &'static str,
        /// Why we think so.
        detail: String,
    },
}

impl CollectError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        CollectError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parse(path: &Path, err: ParseError) -> Self {
        CollectError::Parse {
            path: path.to_path_buf(),
            detail: err.0,
        }
    }
}

/// A parser's complaint about malformed text. The collector adds the file path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(detail: impl Into<String>) -> Self {
        ParseError(detail.into())
    }
}

/// The collectors the agent runs by default: host totals, processes, cgroups.
pub fn default_collectors(cfg: &CollectConfig) -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(HostCollector::new(cfg)),
        Box::new(ProcessCollector::new(cfg)),
        Box::new(CgroupCollector::new(cfg)),
    ]
}

/// The default collectors plus the eBPF ones ([`ebpf::collectors`]). Loading eBPF never
/// fails the agent: what cannot load shows as an unavailable collector.
pub fn collectors_with_ebpf(cfg: &CollectConfig) -> Vec<Box<dyn Collector>> {
    let mut res = default_collectors(cfg);
    res.extend(ebpf::collectors(cfg));
    res
}

/// Rounds a percentage (or any ratio-like value) to 2 decimals, as the codec expects.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Reads a whole file into `buf` (cleared first), reusing its allocation.
pub(crate) fn read_file(buf: &mut String, path: &Path) -> io::Result<()> {
    buf.clear();
    // `File::read_to_string` first asks for the size (statx + lseek), which procfs and
    // cgroupfs report as 0 anyway; reading through `Take` saves those two syscalls per file.
    File::open(path)?.take(u64::MAX).read_to_string(buf)?;
    Ok(())
}

/// Sets a reused `PathBuf` to `root/a/b/..` without allocating once warm.
pub(crate) fn set_path<'a>(buf: &'a mut PathBuf, root: &Path, parts: &[&str]) -> &'a Path {
    buf.as_mut_os_string().clear();
    buf.push(root);
    for part in parts {
        buf.push(part);
    }
    buf
}

/// Per-second rate of a monotonic counter; `None` when the counter went backwards (reset,
/// wrap, pid reuse) or no time passed.
pub(crate) fn per_s(prev: u64, cur: u64, dt_s: f64) -> Option<f64> {
    if cur < prev || dt_s <= 0.0 {
        return None;
    }
    Some((cur - prev) as f64 / dt_s)
}

/// Parses an unsigned decimal field, naming it in the error.
pub(crate) fn parse_u64_field(text: &str, what: &str) -> Result<u64, ParseError> {
    text.trim().parse::<u64>().map_err(|_| {
        ParseError(format!(
            "{what}: expected an unsigned integer, got {text:?}"
        ))
    })
}

/// True when an I/O error means "the thing is gone or hidden", which collectors skip
/// silently: a process or cgroup that vanished mid-read, or a file we may not read.
pub(crate) fn is_vanished_or_denied(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || err.raw_os_error() == Some(libc::ESRCH)
}

/// Fixture trees for the collectors' tests: a unique directory under the system temp dir,
/// removed on drop.
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use common::model::SeriesKey;

    pub(crate) struct TempTree {
        root: PathBuf,
    }

    impl TempTree {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!(
                "node-agent-collect-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            TempTree { root }
        }

        pub(crate) fn path(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        pub(crate) fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.root.join(rel)).unwrap();
        }

        pub(crate) fn write(&self, rel: &str, text: &str) {
            let path = self.root.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, text).unwrap();
        }

        pub(crate) fn remove(&self, rel: &str) {
            let path = self.root.join(rel);
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// `(entity, metric) -> value`, asserting that no key appears twice.
    pub(crate) fn values(out: &[(SeriesKey, f64)]) -> HashMap<(&str, &str), f64> {
        let mut res = HashMap::new();
        for (k, v) in out {
            let prev = res.insert((k.entity.as_str(), k.metric.as_str()), *v);
            assert!(prev.is_none(), "duplicate series {k:?}");
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn round2_rounds_half_away_from_zero() {
        assert_eq!(round2(12.345_678), 12.35);
        assert_eq!(round2(0.004), 0.0);
        assert_eq!(round2(99.995_1), 100.0);
    }

    #[test]
    fn per_s_rejects_backwards_counters() {
        assert_eq!(per_s(100, 300, 2.0), Some(100.0));
        assert_eq!(per_s(300, 100, 2.0), None);
        assert_eq!(per_s(1, 2, 0.0), None);
    }

    #[test]
    fn scope_matches_whole_components_only() {
        assert_eq!(
            normalize_scope("/ado-scenario/n1/"),
            Some("ado-scenario/n1".into())
        );
        assert_eq!(normalize_scope(" / "), None);
        let scope = "ado-scenario/n1";
        assert!(in_scope(scope, Some("ado-scenario/n1")));
        assert!(in_scope(scope, Some("ado-scenario/n1/frontend")));
        assert!(in_scope(scope, Some("/ado-scenario/n1/frontend/")));
        assert!(!in_scope(scope, Some("ado-scenario/n10/frontend")));
        assert!(!in_scope(scope, Some("ado-scenario")));
        assert!(!in_scope(scope, Some("")));
        assert!(!in_scope(scope, None));
    }

    #[test]
    fn parse_u64_field_errors_name_the_field() {
        assert_eq!(parse_u64_field(" 42\n", "x"), Ok(42));
        let err = parse_u64_field("4x2", "memory.current").unwrap_err();
        assert!(err.0.contains("memory.current"), "{err}");
    }

    /// The real machine, end to end: every default collector, two ticks.
    #[test]
    fn default_collectors_on_this_machine() {
        let cfg = CollectConfig::default();
        let mut collectors = default_collectors(&cfg);
        let names: Vec<_> = collectors.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["host", "process", "cgroup"]);

        let t0 = Instant::now();
        let mut out = Vec::new();
        for c in &mut collectors {
            // Errors are allowed on odd hosts, but the series below must still appear.
            let _ = c.collect(t0, &mut out);
        }
        // Burn some CPU so that our own process shows a non-zero cpu delta.
        let spin_until = Instant::now() + Duration::from_millis(300);
        let mut x = 0u64;
        while Instant::now() < spin_until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let t1 = Instant::now();
        out.clear();
        let mut errors = Vec::new();
        for c in &mut collectors {
            if let Err(err) = c.collect(t1, &mut out) {
                errors.push(format!("{}: {err}", c.name()));
            }
        }
        let got = testutil::values(&out);
        let get = |entity: &str, metric: &str| got.get(&(entity, metric)).copied();

        let usage = get("host", "cpu.usage_pct").expect("host cpu.usage_pct");
        assert!((0.0..=100.0).contains(&usage), "cpu.usage_pct {usage}");
        let total = get("host", "mem.total_bytes").expect("host mem.total_bytes");
        let used = get("host", "mem.used_bytes").expect("host mem.used_bytes");
        assert!(used > 0.0 && used < total, "mem used {used} of {total}");
        assert!(get("host", "load.1m").is_some());
        assert!(get("host", "proc.count").expect("proc.count") >= 2.0);

        let me = format!("process/{}", std::process::id());
        let rss = get(&me, "proc.rss_bytes").expect("our own process is emitted");
        assert!(rss > 1_000_000.0, "rss {rss}");
        let cpu = get(&me, "proc.cpu_pct").expect("our own cpu_pct after two ticks");
        assert!(cpu > 10.0, "we spun for 300 ms, cpu_pct {cpu}");
        let threads = get(&me, "proc.threads").expect("proc.threads");
        assert!(threads >= 1.0);
        let n_proc_entities = out
            .iter()
            .filter(|(k, _)| k.entity.starts_with("process/"))
            .count();
        assert!(n_proc_entities > 0);

        // The root cgroup exists on every Linux host with a cgroup filesystem.
        assert!(
            get("cgroup/", "cgroup.cpu_pct").is_some(),
            "errors: {errors:?}"
        );
        assert!(
            !errors.iter().any(|e| e.starts_with("host")),
            "errors: {errors:?}"
        );
    }
}
