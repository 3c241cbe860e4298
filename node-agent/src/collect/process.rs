//! Per-process series from `/proc/[pid]`: CPU, memory, threads, open files, disk I/O.
//!
//! Entity `process/<pid>`, labels `comm=<name>` and `cgroup=<path>` (the process's cgroup
//! relative to the cgroup root, left out for the root cgroup). Host-level counts go on the
//! `host` entity: `proc.count`, `proc.zombies`, `proc.dropped`.
//!
//! Budget: per tick, every pid costs one read of `stat`; only the top `max_processes` by
//! (cpu %, rss) also cost `io` and an fd count, and only those get series. The rest are
//! counted in `proc.dropped`. Kernel threads (`PF_KTHREAD`) and zombies get no series: they
//! have no memory, files or I/O of their own, and a host has hundreds of kernel threads.
//! Per-pid state exists only for live pids and is pruned every tick. Known kernel threads
//! are re-checked only every [`KTHREAD_RECHECK_TICKS`] ticks.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Instant;

use common::model::SeriesKey;

use super::{
    CollectConfig, CollectError, Collector, ParseError, is_vanished_or_denied, parse_u64_field,
    per_s, read_file, round2, set_path,
};

/// `PF_KTHREAD` in the `flags` field of /proc/pid/stat.
const PF_KTHREAD: u64 = 0x0020_0000;
/// A kernel thread's `stat` is re-read only this often (in ticks). Big hosts have hundreds
/// of kernel threads (several per CPU), and they are never emitted: this halves the reads
/// there. The cost: if a kernel thread exits and a user process gets its pid (pid numbers
/// wrap only after `pid_max`), that process is missed for up to this many ticks.
const KTHREAD_RECHECK_TICKS: u64 = 30;
/// `statfs(2)` type of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// The fields we use from /proc/[pid]/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidStat<'a> {
    /// Process id.
    pub pid: u32,
    /// Command name (at most 15 bytes, may contain spaces and parentheses).
    pub comm: &'a str,
    /// State letter: R, S, D, Z, T, I, X...
    pub state: char,
    /// Kernel `PF_*` flags.
    pub flags: u64,
    /// User CPU time, clock ticks.
    pub utime: u64,
    /// System CPU time, clock ticks.
    pub stime: u64,
    /// Number of threads.
    pub num_threads: u64,
    /// Start time after boot, clock ticks: with the pid, identifies a process across pid reuse.
    pub starttime: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

/// Parses /proc/[pid]/stat. The command name is taken up to the *last* `)`, since it may
/// itself contain `)` and spaces.
pub fn parse_pid_stat(text: &str) -> Result<PidStat<'_>, ParseError> {
    let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
        return Err(ParseError::new("no (comm) in stat"));
    };
    if close < open {
        return Err(ParseError::new("unbalanced (comm) in stat"));
    }
    let pid = text[..open]
        .trim()
        .parse::<u32>()
        .map_err(|_| ParseError::new(format!("bad pid {:?}", &text[..open])))?;
    let comm = &text[open + 1..close];
    // Field 3 (state) is index 0 here; we need up to field 24 (rss), index 21.
    let mut f = [""; 22];
    let mut n_fields = 0;
    for (idx, tok) in text[close + 1..].split_whitespace().take(22).enumerate() {
        f[idx] = tok;
        n_fields += 1;
    }
    if n_fields < 22 {
        return Err(ParseError::new(format!(
            "stat has {} fields after comm, need 22",
            n_fields
        )));
    }
    let mut state_chars = f[0].chars();
    let (Some(state), None) = (state_chars.next(), state_chars.next()) else {
        return Err(ParseError::new(format!("bad state {:?}", f[0])));
    };
    Ok(PidStat {
        pid,
        comm,
        state,
        flags: parse_u64_field(f[6], "flags")?,
        utime: parse_u64_field(f[11], "utime")?,
        stime: parse_u64_field(f[12], "stime")?,
        num_threads: parse_u64_field(f[17], "num_threads")?,
        starttime: parse_u64_field(f[19], "starttime")?,
        rss_pages: parse_u64_field(f[21], "rss")?,
    })
}

/// Storage I/O of a process from /proc/[pid]/io, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidIo {
    /// Bytes this process caused to be fetched from storage.
    pub read_bytes: u64,
    /// Bytes this process caused to be sent to storage (page cache dirtied).
    pub write_bytes: u64,
}

/// Parses /proc/[pid]/io; `read_bytes` and `write_bytes` are required.
pub fn parse_pid_io(text: &str) -> Result<PidIo, ParseError> {
    let (mut read_bytes, mut write_bytes) = (None, None);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("read_bytes:") {
            read_bytes = Some(parse_u64_field(v, "read_bytes")?);
        } else if let Some(v) = line.strip_prefix("write_bytes:") {
            write_bytes = Some(parse_u64_field(v, "write_bytes")?);
        }
    }
    match (read_bytes, write_bytes) {
        (Some(read_bytes), Some(write_bytes)) => Ok(PidIo {
            read_bytes,
            write_bytes,
        }),
        _ => Err(ParseError::new("io without read_bytes/write_bytes")),
    }
}

/// The cgroup a process belongs to, from /proc/[pid]/cgroup, relative to the cgroup root
/// (no leading `/`); `None` for the root cgroup.
///
/// Prefers the unified (v2) line `0::/path`; on v1 or hybrid hosts where that is the root,
/// the `name=systemd` line, then the first other line that is not the root.
pub fn parse_pid_cgroup(text: &str) -> Option<&str> {
    let mut systemd = None;
    let mut other = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let rel = path.trim().trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            return Some(rel);
        } else if controllers == "name=systemd" {
            systemd = systemd.or(Some(rel));
        } else {
            other = other.or(Some(rel));
        }
    }
    systemd.or(other)
}

/// Label values are rendered as `k=v,k2=v2`: keep `,` `=` and control characters out.
fn label_value(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c == ',' || c == '=' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

struct PidState {
    starttime: u64,
    generation: u64,
    entity: String,
    comm: String,
    /// `None` until read (lazily, for emitted processes only); re-read after an exec.
    cgroup: Option<Option<String>>,
    prev_cpu: Option<(Instant, u64)>,
    prev_io: Option<(Instant, PidIo)>,
    /// /proc/pid/io was refused once: don't try again for this process.
    io_denied: bool,
}

/// A pid known to be a kernel thread: its `stat` is not re-read every tick.
struct KthreadSeen {
    /// Tick of the last `stat` read.
    checked_at: u64,
    /// Last tick it was listed in /proc.
    seen_at: u64,
}

#[derive(Clone, Copy)]
struct Candidate {
    pid: u32,
    cpu_pct: Option<f64>,
    rss_bytes: u64,
    threads: u64,
}

impl Candidate {
    /// Descending by cpu %, then by rss.
    fn rank_cmp(&self, other: &Candidate) -> std::cmp::Ordering {
        let (a, b) = (self.cpu_pct.unwrap_or(0.0), other.cpu_pct.unwrap_or(0.0));
        b.total_cmp(&a).then(other.rss_bytes.cmp(&self.rss_bytes))
    }
}

/// Per-process series for the busiest `max_processes` processes.
pub struct ProcessCollector {
    proc_root: PathBuf,
    max_processes: usize,
    clk_tck: f64,
    page_size: u64,
    /// On procfs since Linux 6.2, `stat` of /proc/pid/fd gives the fd count in `st_size`:
    /// one syscall instead of listing the directory.
    fd_count_from_size: Option<bool>,
    buf: String,
    scratch: PathBuf,
    generation: u64,
    pids: HashMap<u32, PidState>,
    kthreads: HashMap<u32, KthreadSeen>,
    candidates: Vec<Candidate>,
    /// `--scope-cgroup`: only processes whose cgroup is this subtree get series.
    scope: Option<String>,
}

impl ProcessCollector {
    /// A collector reading `cfg.proc_root`.
    pub fn new(cfg: &CollectConfig) -> Self {
        // SAFETY: sysconf has no preconditions.
        let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        ProcessCollector {
            proc_root: cfg.proc_root.clone(),
            max_processes: cfg.max_processes,
            clk_tck: if clk_tck > 0 { clk_tck as f64 } else { 100.0 },
            page_size: u64::try_from(page_size)
                .ok()
                .filter(|p| *p > 0)
                .unwrap_or(4096),
            fd_count_from_size: None,
            buf: String::with_capacity(1024),
            scratch: PathBuf::new(),
            generation: 0,
            pids: HashMap::new(),
            kthreads: HashMap::new(),
            candidates: Vec::new(),
            scope: cfg.scope_cgroup.as_deref().and_then(super::normalize_scope),
        }
    }

    fn is_procfs(&self) -> bool {
        let Ok(path) = CString::new(self.proc_root.as_os_str().as_bytes()) else {
            return false;
        };
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for one statfs.
        let rc = unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return false;
        }
        // SAFETY: statfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)] // f_type's type varies by target and libc
        let f_type = st.f_type as i64;
        f_type == PROC_SUPER_MAGIC
    }

    /// Open file descriptors of `pid`, `None` when we may not look (or it vanished).
    fn count_fds(&mut self, pid: &str, from_size: bool) -> Option<u64> {
        let path = set_path(&mut self.scratch, &self.proc_root, &[pid, "fd"]);
        if from_size {
            let n = fs::metadata(path).ok()?.len();
            if n > 0 {
                return Some(n);
            }
            // 0 is either a process without files or a kernel before 6.2: count.
        }
        let mut n = 0;
        for entry in fs::read_dir(path).ok()? {
            if entry.is_ok() {
                n += 1;
            }
        }
        Some(n)
    }

    /// Reads `stat` of every pid, updating state and filling `self.candidates`.
    /// Returns (processes, zombies).
    fn scan(&mut self, mono: Instant) -> Result<(u64, u64), CollectError> {
        let dir =
            fs::read_dir(&self.proc_root).map_err(|e| CollectError::io(&self.proc_root, e))?;
        let generation = self.generation;
        let (mut n_procs, mut n_zombies) = (0, 0);
        self.candidates.clear();
        for entry in dir {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if let Some(k) = self.kthreads.get_mut(&pid)
                && generation - k.checked_at < KTHREAD_RECHECK_TICKS
            {
                k.seen_at = generation;
                n_procs += 1;
                continue;
            }
            let path = set_path(&mut self.scratch, &self.proc_root, &[name, "stat"]);
            // Gone between readdir and open, or hidden (hidepid): races are normal, skip.
            if let Err(err) = read_file(&mut self.buf, path) {
                if !is_vanished_or_denied(&err) {
                    tracing::debug!(pid, %err, "cannot read stat");
                }
                continue;
            }
            let st = match parse_pid_stat(&self.buf) {
                Ok(st) => st,
                Err(err) => {
                    // A truncated read of a dying process; not worth failing the tick.
                    tracing::debug!(pid, %err, "cannot parse stat");
                    continue;
                }
            };
            n_procs += 1;
            if st.flags & PF_KTHREAD != 0 {
                let seen = KthreadSeen {
                    checked_at: generation,
                    seen_at: generation,
                };
                self.kthreads.insert(pid, seen);
                continue;
            }
            // Was a kernel thread, now a user process: the pid was reused.
            self.kthreads.remove(&pid);
            if st.state == 'Z' || st.state == 'X' {
                n_zombies += 1;
                continue;
            }
            let state = self.pids.entry(pid).or_insert_with(|| PidState {
                starttime: st.starttime,
                generation,
                entity: format!("process/{pid}"),
                comm: label_value(st.comm),
                cgroup: None,
                prev_cpu: None,
                prev_io: None,
                io_denied: false,
            });
            if state.starttime != st.starttime {
                // The pid was reused by a new process: forget the old one's counters.
                *state = PidState {
                    starttime: st.starttime,
                    generation,
                    entity: std::mem::take(&mut state.entity),
                    comm: label_value(st.comm),
                    cgroup: None,
                    prev_cpu: None,
                    prev_io: None,
                    io_denied: false,
                };
            } else if state.comm != st.comm && state.comm != label_value(st.comm) {
                // exec: new name, and perhaps a new cgroup (container runtimes move the
                // process before exec).
                state.comm = label_value(st.comm);
                state.cgroup = None;
            }
            state.generation = generation;
            let cpu_ticks = st.utime.saturating_add(st.stime);
            let cpu_pct = state.prev_cpu.and_then(|(prev_mono, prev_ticks)| {
                let dt_s = mono.saturating_duration_since(prev_mono).as_secs_f64();
                per_s(prev_ticks, cpu_ticks, dt_s).map(|r| round2(r * 100.0 / self.clk_tck))
            });
            state.prev_cpu = Some((mono, cpu_ticks));
            let cand = Candidate {
                pid,
                cpu_pct,
                rss_bytes: st.rss_pages.saturating_mul(self.page_size),
                threads: st.num_threads,
            };
            // Scoped (`--scope-cgroup`): the cgroup is needed before ranking, so it is read
            // here (once per process, again after an exec) instead of lazily in `emit`.
            if let Some(scope) = &self.scope {
                if state.cgroup.is_none() {
                    let path = set_path(&mut self.scratch, &self.proc_root, &[name, "cgroup"]);
                    state.cgroup = Some(match read_file(&mut self.buf, path) {
                        Ok(()) => parse_pid_cgroup(&self.buf).map(label_value),
                        Err(_) => None,
                    });
                }
                if !super::in_scope(scope, state.cgroup.as_ref().and_then(|c| c.as_deref())) {
                    continue;
                }
            }
            self.candidates.push(cand);
        }
        self.pids.retain(|_, s| s.generation == generation);
        self.kthreads.retain(|_, k| k.seen_at == generation);
        Ok((n_procs, n_zombies))
    }

    fn emit(
        &mut self,
        mono: Instant,
        cand: Candidate,
        from_size: bool,
        out: &mut Vec<(SeriesKey, f64)>,
    ) {
        let mut pid_buf = itoa_buf();
        let pid_str = fmt_u32(&mut pid_buf, cand.pid);
        let Some(state) = self.pids.get(&cand.pid) else {
            return;
        };
        let need_cgroup = state.cgroup.is_none();
        let want_io = !state.io_denied;

        let cgroup = if need_cgroup {
            let path = set_path(&mut self.scratch, &self.proc_root, &[pid_str, "cgroup"]);
            match read_file(&mut self.buf, path) {
                Ok(()) => Some(parse_pid_cgroup(&self.buf).map(label_value)),
                Err(_) => Some(None),
            }
        } else {
            None
        };
        let io = if want_io {
            let path = set_path(&mut self.scratch, &self.proc_root, &[pid_str, "io"]);
            match read_file(&mut self.buf, path) {
                Ok(()) => Some(parse_pid_io(&self.buf).ok()),
                // Permission denied (not root, or another user's process): skip quietly
                // and don't try again for this process.
                Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => None,
                Err(_) => Some(None),
            }
        } else {
            Some(None)
        };
        let n_fds = self.count_fds(pid_str, from_size);

        let Some(state) = self.pids.get_mut(&cand.pid) else {
            return;
        };
        if let Some(cgroup) = cgroup {
            state.cgroup = Some(cgroup);
        }
        let mut io_rates = None;
        match io {
            None => state.io_denied = true,
            Some(Some(cur)) => {
                if let Some((prev_mono, prev)) = state.prev_io.replace((mono, cur)) {
                    let dt_s = mono.saturating_duration_since(prev_mono).as_secs_f64();
                    io_rates = Some((
                        per_s(prev.read_bytes, cur.read_bytes, dt_s),
                        per_s(prev.write_bytes, cur.write_bytes, dt_s),
                    ));
                }
            }
            Some(None) => state.prev_io = None,
        }

        let key = |metric: &'static str| {
            let key =
                SeriesKey::new(state.entity.clone(), metric).with_label("comm", state.comm.clone());
            match &state.cgroup {
                Some(Some(cg)) => key.with_label("cgroup", cg.clone()),
                _ => key,
            }
        };
        if let Some(pct) = cand.cpu_pct {
            out.push((key("proc.cpu_pct"), pct));
        }
        out.push((key("proc.rss_bytes"), cand.rss_bytes as f64));
        out.push((key("proc.threads"), cand.threads as f64));
        if let Some(n) = n_fds {
            out.push((key("proc.fds"), n as f64));
        }
        if let Some((read, write)) = io_rates {
            if let Some(r) = read {
                out.push((key("proc.read_bytes_per_s"), r.round()));
            }
            if let Some(w) = write {
                out.push((key("proc.write_bytes_per_s"), w.round()));
            }
        }
    }
}

fn itoa_buf() -> [u8; 10] {
    [0; 10]
}

/// Formats a u32 into a stack buffer (pid path components without a heap allocation).
fn fmt_u32(buf: &mut [u8; 10], mut n: u32) -> &str {
    let mut idx = buf.len();
    loop {
        idx -= 1;
        buf[idx] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[idx..]).unwrap_or("0")
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        self.generation += 1;
        let from_size = match self.fd_count_from_size {
            Some(v) => v,
            None => *self.fd_count_from_size.insert(self.is_procfs()),
        };
        let (n_procs, n_zombies) = self.scan(mono)?;
        let mut candidates = std::mem::take(&mut self.candidates);
        let n_dropped = candidates.len().saturating_sub(self.max_processes);
        if n_dropped > 0 {
            if self.max_processes > 0 {
                candidates.select_nth_unstable_by(self.max_processes - 1, Candidate::rank_cmp);
            }
            candidates.truncate(self.max_processes);
        }
        for cand in &candidates {
            self.emit(mono, *cand, from_size, out);
        }
        self.candidates = candidates;
        out.push((SeriesKey::new("host", "proc.count"), n_procs as f64));
        out.push((SeriesKey::new("host", "proc.zombies"), n_zombies as f64));
        out.push((SeriesKey::new("host", "proc.dropped"), n_dropped as f64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collect::testutil::{TempTree, values};

    /// `cat /proc/self/stat` on Linux 6.18.
    const STAT_CAT: &str = "8812 (cat) R 8806 8806 4134 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 41181 3133440 414 18446744073709551615 94245829447680 94245829467561 140737482363024 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94245829483568 94245829485184 94246227939328 140737482365663 140737482365683 140737482365683 140737482366955 0\n";
    const STAT_KTHREADD: &str = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
    const IO: &str = "rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";

    #[test]
    fn pid_stat_real_sample() {
        let st = parse_pid_stat(STAT_CAT).unwrap();
        assert_eq!(
            st,
            PidStat {
                pid: 8812,
                comm: "cat",
                state: 'R',
                flags: 4194304,
                utime: 0,
                stime: 0,
                num_threads: 1,
                starttime: 41181,
                rss_pages: 414
            }
        );
        let k = parse_pid_stat(STAT_KTHREADD).unwrap();
        assert_ne!(k.flags & PF_KTHREAD, 0);
        assert_eq!(st.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn pid_stat_comm_with_spaces_and_parens() {
        let text = STAT_CAT.replace("(cat)", "(evil) R 1 (x)");
        let st = parse_pid_stat(&text).unwrap();
        assert_eq!(st.comm, "evil) R 1 (x");
        assert_eq!(st.rss_pages, 414);
    }

    #[test]
    fn pid_stat_malformed() {
        assert!(parse_pid_stat("").is_err());
        assert!(parse_pid_stat("12 cat R 1 2 3").is_err(), "no parens");
        assert!(parse_pid_stat(")12 (cat R").is_err(), "unbalanced");
        assert!(parse_pid_stat("x (cat) R 1 2 3").is_err(), "bad pid");
        // Truncated mid-line (a read racing with exit).
        assert!(parse_pid_stat(&STAT_CAT[..60]).is_err());
        let bad_rss = STAT_CAT.replace(" 3133440 414 ", " 3133440 -4 ");
        assert!(parse_pid_stat(&bad_rss).is_err());
        let bad_state = STAT_CAT.replace("(cat) R", "(cat) RR");
        assert!(parse_pid_stat(&bad_state).is_err());
    }

    #[test]
    fn pid_io_parses_and_rejects() {
        assert_eq!(
            parse_pid_io(IO),
            Ok(PidIo {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        assert!(parse_pid_io("rchar: 1\n").is_err());
        assert!(parse_pid_io("read_bytes: x\nwrite_bytes: 1\n").is_err());
        assert!(parse_pid_io("").is_err());
    }

    #[test]
    fn pid_cgroup_prefers_unified_then_systemd() {
        assert_eq!(
            parse_pid_cgroup("0::/system.slice/ssh.service\n"),
            Some("system.slice/ssh.service")
        );
        assert_eq!(parse_pid_cgroup("0::/\n"), None);
        // This machine: hybrid, unified at root, memory controller elsewhere.
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/84bc\n1:cpu:/\n0::/\n";
        assert_eq!(parse_pid_cgroup(hybrid), Some("process_api/84bc"));
        let v1 = "4:memory:/docker/abc\n1:name=systemd:/docker/abc-sd\n";
        assert_eq!(parse_pid_cgroup(v1), Some("docker/abc-sd"));
        assert_eq!(parse_pid_cgroup("garbage\n::\n"), None);
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(label_value("a,b=c\td"), "a_b_c_d");
        assert_eq!(label_value("kworker/0:1"), "kworker/0:1");
    }

    #[test]
    fn fmt_u32_formats() {
        let mut buf = itoa_buf();
        assert_eq!(fmt_u32(&mut buf, 0), "0");
        assert_eq!(fmt_u32(&mut buf, 4_294_967_295), "4294967295");
        assert_eq!(fmt_u32(&mut buf, 1234), "1234");
    }

    /// `pid (comm) S ...` with the given times, rss and starttime.
    fn stat_line(
        pid: u32,
        comm: &str,
        state: char,
        flags: u64,
        ticks: (u64, u64),
        rss: u64,
        start: u64,
    ) -> String {
        format!(
            "{pid} ({comm}) {state} 1 1 1 0 -1 {flags} 0 0 0 0 {} {} 0 0 20 0 3 0 {start} 1000 {rss} 18446744073709551615 0\n",
            ticks.0, ticks.1
        )
    }

    fn write_proc(tree: &TempTree, pid: u32, stat: &str, io: Option<&str>, n_fds: usize) {
        tree.write(&format!("proc/{pid}/stat"), stat);
        if let Some(io) = io {
            tree.write(&format!("proc/{pid}/io"), io);
        }
        tree.write(
            &format!("proc/{pid}/cgroup"),
            "0::/system.slice/app.service\n",
        );
        for fd in 0..n_fds {
            tree.write(&format!("proc/{pid}/fd/{fd}"), "");
        }
    }

    fn cfg(tree: &TempTree, max_processes: usize) -> CollectConfig {
        CollectConfig {
            proc_root: tree.path("proc"),
            sys_root: tree.path("sys"),
            cgroup_root: tree.path("cgroup"),
            max_processes,
            max_cgroups: 16,
            scope_cgroup: None,
        }
    }

    #[test]
    fn process_collector_over_two_ticks() {
        let tree = TempTree::new("proc");
        tree.write("proc/meminfo", "not a pid\n");
        write_proc(
            &tree,
            2,
            &stat_line(2, "kthreadd", 'S', 0x208040, (0, 5), 0, 25),
            None,
            0,
        );
        write_proc(
            &tree,
            10,
            &stat_line(10, "web server", 'S', 0x400100, (100, 50), 1000, 500),
            Some(IO),
            3,
        );
        write_proc(
            &tree,
            11,
            &stat_line(11, "gone", 'Z', 0x400100, (1, 1), 0, 600),
            None,
            0,
        );
        write_proc(
            &tree,
            12,
            &stat_line(12, "idle", 'S', 0x400100, (5, 5), 10, 700),
            None,
            1,
        );
        let mut c = ProcessCollector::new(&cfg(&tree, 16));
        let (tck, page) = (c.clk_tck, c.page_size as f64);
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        let v = values(&out);
        assert_eq!(v.get(&("host", "proc.count")), Some(&4.0));
        assert_eq!(v.get(&("host", "proc.zombies")), Some(&1.0));
        assert_eq!(v.get(&("host", "proc.dropped")), Some(&0.0));
        assert_eq!(
            v.get(&("process/10", "proc.rss_bytes")),
            Some(&(1000.0 * page))
        );
        assert_eq!(v.get(&("process/10", "proc.threads")), Some(&3.0));
        assert_eq!(v.get(&("process/10", "proc.fds")), Some(&3.0));
        assert!(
            !v.contains_key(&("process/10", "proc.cpu_pct")),
            "no rate on the first tick"
        );
        assert!(
            !v.keys()
                .any(|(e, _)| *e == "process/2" || *e == "process/11")
        );
        let labels = out
            .iter()
            .find(|(k, _)| k.entity == "process/10")
            .map(|(k, _)| k.labels_text());
        assert_eq!(
            labels.as_deref(),
            Some("cgroup=system.slice/app.service,comm=web server")
        );

        // One second later: pid 10 used half a core and did 1 MiB of reads.
        let half = (tck / 2.0) as u64;
        write_proc(
            &tree,
            10,
            &stat_line(10, "web server", 'S', 0x400100, (100 + half, 50), 1000, 500),
            Some(&IO.replace("read_bytes: 4096", "read_bytes: 1052672")),
            3,
        );
        tree.remove("proc/12");
        out.clear();
        c.collect(t0 + Duration::from_secs(1), &mut out).unwrap();
        let v = values(&out);
        assert_eq!(
            v.get(&("process/10", "proc.cpu_pct")),
            Some(&round2(half as f64 * 100.0 / tck))
        );
        assert_eq!(
            v.get(&("process/10", "proc.read_bytes_per_s")),
            Some(&1_048_576.0)
        );
        assert_eq!(v.get(&("process/10", "proc.write_bytes_per_s")), Some(&0.0));
        assert!(!v.keys().any(|(e, _)| *e == "process/12"));
        assert_eq!(v.get(&("host", "proc.count")), Some(&3.0));
        // State only for live user processes.
        let mut live: Vec<_> = c.pids.keys().copied().collect();
        live.sort();
        assert_eq!(live, [10]);
        assert_eq!(c.kthreads.keys().collect::<Vec<_>>(), [&2]);

        // The kernel thread's stat is not read again (here: made unreadable) but still counted;
        // once it leaves /proc, its entry goes too.
        tree.write("proc/2/stat", "garbage");
        out.clear();
        c.collect(t0 + Duration::from_secs(2), &mut out).unwrap();
        assert_eq!(values(&out).get(&("host", "proc.count")), Some(&3.0));
        tree.remove("proc/2");
        out.clear();
        c.collect(t0 + Duration::from_secs(3), &mut out).unwrap();
        assert_eq!(values(&out).get(&("host", "proc.count")), Some(&2.0));
        assert!(c.kthreads.is_empty());
    }

    #[test]
    fn pid_reuse_resets_rates() {
        let tree = TempTree::new("proc-reuse");
        write_proc(
            &tree,
            10,
            &stat_line(10, "a", 'S', 0, (100, 0), 10, 500),
            Some(IO),
            0,
        );
        let mut c = ProcessCollector::new(&cfg(&tree, 16));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        // Same pid, new process (later start time, fewer ticks).
        write_proc(
            &tree,
            10,
            &stat_line(10, "b", 'S', 0, (3, 0), 10, 900),
            Some(IO),
            0,
        );
        out.clear();
        c.collect(t0 + Duration::from_secs(1), &mut out).unwrap();
        let v = values(&out);
        assert!(!v.contains_key(&("process/10", "proc.cpu_pct")));
        assert!(!v.contains_key(&("process/10", "proc.read_bytes_per_s")));
        assert!(
            out.iter()
                .any(|(k, _)| k.entity == "process/10" && k.labels_text().contains("comm=b"))
        );
    }

    #[test]
    fn only_the_top_processes_are_emitted() {
        let tree = TempTree::new("proc-top");
        // cpu ticks grow by pid*10 per tick, rss equal: the cpu ranking decides.
        for pid in 20..26u32 {
            write_proc(
                &tree,
                pid,
                &stat_line(pid, "w", 'R', 0, (0, 0), 100, 1),
                None,
                0,
            );
        }
        let mut c = ProcessCollector::new(&cfg(&tree, 2));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        assert_eq!(values(&out).get(&("host", "proc.dropped")), Some(&4.0));
        for pid in 20..26u32 {
            let ticks = u64::from(pid) * 10;
            write_proc(
                &tree,
                pid,
                &stat_line(pid, "w", 'R', 0, (ticks, 0), 100, 1),
                None,
                0,
            );
        }
        out.clear();
        c.collect(t0 + Duration::from_secs(1), &mut out).unwrap();
        let mut entities: Vec<_> = out
            .iter()
            .filter(|(k, _)| k.entity.starts_with("process/"))
            .map(|(k, _)| k.entity.as_str())
            .collect();
        entities.sort();
        entities.dedup();
        assert_eq!(entities, ["process/24", "process/25"]);
        assert_eq!(values(&out).get(&("host", "proc.dropped")), Some(&4.0));
        // All six keep state, so the next tick can rank them again.
        assert_eq!(c.pids.len(), 6);
    }

    #[test]
    fn malformed_or_vanishing_pids_are_skipped() {
        let tree = TempTree::new("proc-bad");
        write_proc(&tree, 30, "30 (trunc", None, 0);
        tree.mkdir("proc/31"); // no stat at all: vanished
        write_proc(
            &tree,
            32,
            &stat_line(32, "ok", 'S', 0, (1, 1), 10, 5),
            None,
            0,
        );
        let mut c = ProcessCollector::new(&cfg(&tree, 16));
        let mut out = Vec::new();
        c.collect(Instant::now(), &mut out).unwrap();
        let v = values(&out);
        assert_eq!(v.get(&("host", "proc.count")), Some(&1.0));
        assert!(v.contains_key(&("process/32", "proc.rss_bytes")));
        assert!(
            !v.contains_key(&("process/32", "proc.read_bytes_per_s")),
            "no io file"
        );
    }

    #[test]
    fn scope_keeps_only_processes_in_the_subtree() {
        let tree = TempTree::new("proc-scope");
        for pid in [40u32, 41, 42, 43] {
            write_proc(
                &tree,
                pid,
                &stat_line(pid, "svc", 'S', 0, (1, 1), 10, 5),
                None,
                0,
            );
        }
        tree.write("proc/41/cgroup", "0::/ado-scenario/n1/frontend\n");
        tree.write("proc/42/cgroup", "0::/ado-scenario/n10/frontend\n");
        // v1 hybrid host: the unified line is the root, the systemd one names the cgroup.
        tree.write("proc/43/cgroup", "1:name=systemd:/ado-scenario/n1\n0::/\n");
        let mut c = ProcessCollector::new(&CollectConfig {
            scope_cgroup: Some("/ado-scenario/n1/".into()),
            ..cfg(&tree, 16)
        });
        let mut out = Vec::new();
        c.collect(Instant::now(), &mut out).unwrap();
        let v = values(&out);
        assert!(v.contains_key(&("process/41", "proc.rss_bytes")));
        assert!(v.contains_key(&("process/43", "proc.rss_bytes")));
        assert!(!v.contains_key(&("process/40", "proc.rss_bytes")));
        assert!(!v.contains_key(&("process/42", "proc.rss_bytes")));
        // Host-wide counts are not scoped.
        assert_eq!(v.get(&("host", "proc.count")), Some(&4.0));
    }

    #[test]
    fn missing_proc_root_is_an_error() {
        let tree = TempTree::new("proc-none");
        let mut c = ProcessCollector::new(&cfg(&tree, 16));
        let err = c.collect(Instant::now(), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CollectError::Io { .. }), "{err}");
    }
}
