//! Host totals from procfs: CPU, memory, load, disks, filesystems, network, pressure (PSI).
//!
//! Sources, all under `proc_root` unless noted: `stat`, `meminfo`, `loadavg`, `diskstats`
//! (whole disks only, recognised by a `sys_root/block/<dev>` entry), `self/mounts` with
//! `statvfs(3)` on each real local filesystem, `net/dev`, and `pressure/{cpu,memory,io}`.
//! Entities: `host`, `disk/<dev>`, `fs/<mountpoint>`, `net/<iface>`.
//!
//! Each source fails alone: a missing or malformed file costs only its own series.
//! Disks, interfaces and filesystems are capped (see the `MAX_*` constants); what is over a
//! cap is counted in `disk.dropped`, `net.dropped`, `fs.dropped`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::model::SeriesKey;

use super::{
    CollectConfig, CollectError, Collector, ParseError, parse_u64_field, per_s, read_file, round2,
    set_path,
};

/// At most this many disks get series.
pub const MAX_DISKS: usize = 128;
/// At most this many network interfaces get series (a Kubernetes node has one veth per pod).
pub const MAX_IFACES: usize = 512;
/// At most this many filesystems get series.
pub const MAX_FILESYSTEMS: usize = 128;
/// The mount table is re-read this often, not every tick: it is long on Kubernetes nodes
/// (one bind mount per volume) and mounts change rarely.
pub const MOUNTS_REFRESH: Duration = Duration::from_secs(10);

/// Filesystem types that hold no user data (or are views of other filesystems), skipped.
const VIRTUAL_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "nfsd",
];

/// Network filesystems, skipped: `statvfs` on an unreachable server blocks the collector,
/// and their capacity belongs to another host anyway. `fuse.*` is skipped for the same
/// reason (sshfs, s3fs, lxcfs); `fuseblk` (ntfs-3g on a local disk) is kept.
const NETWORK_FS: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "glusterfs",
    "lustre",
    "ncpfs",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
];

/// Series per interface, in the order of `NetState::prev`; the first two are byte rates.
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

/// Aggregate CPU time from the `cpu ` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Normal user time (guest time included, as the kernel reports it).
    pub user: u64,
    /// Niced user time.
    pub nice: u64,
    /// Kernel time.
    pub system: u64,
    /// Idle.
    pub idle: u64,
    /// Idle while waiting for I/O.
    pub iowait: u64,
    /// Hard interrupts.
    pub irq: u64,
    /// Soft interrupts.
    pub softirq: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

impl CpuTimes {
    /// All time, guest excluded (it is already inside `user`/`nice`).
    pub fn total(&self) -> u64 {
        self.user
            .saturating_add(self.nice)
            .saturating_add(self.system)
            .saturating_add(self.idle)
            .saturating_add(self.iowait)
            .saturating_add(self.irq)
            .saturating_add(self.softirq)
            .saturating_add(self.steal)
    }
}

/// What we use from /proc/stat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// The aggregate `cpu ` line.
    pub cpu: CpuTimes,
    /// Number of `cpuN` lines (online CPUs).
    pub n_cpus: u64,
    /// Context switches since boot.
    pub ctxt: Option<u64>,
    /// Runnable tasks now.
    pub procs_running: Option<u64>,
    /// Tasks blocked on I/O now (uninterruptible sleep).
    pub procs_blocked: Option<u64>,
}

/// Parses /proc/stat. The aggregate `cpu ` line is required; the rest is optional.
pub fn parse_proc_stat(text: &str) -> Result<ProcStat, ParseError> {
    let mut res = ProcStat::default();
    let mut found_cpu = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cpu") {
            if rest.starts_with(' ') {
                res.cpu = parse_cpu_fields(rest)?;
                found_cpu = true;
            } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
                res.n_cpus += 1;
            }
        } else if let Some(rest) = line.strip_prefix("ctxt ") {
            res.ctxt = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("procs_running ") {
            res.procs_running = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("procs_blocked ") {
            res.procs_blocked = rest.trim().parse().ok();
        }
    }
    if !found_cpu {
        return Err(ParseError::new("no aggregate `cpu` line"));
    }
    Ok(res)
}

fn parse_cpu_fields(rest: &str) -> Result<CpuTimes, ParseError> {
    let mut vals = [0u64; 8];
    let mut n_vals = 0;
    for (idx, tok) in rest.split_whitespace().take(8).enumerate() {
        vals[idx] = parse_u64_field(tok, "cpu line")?;
        n_vals += 1;
    }
    // user nice system idle exist on every kernel; iowait.. steal are newer.
    if n_vals < 4 {
        return Err(ParseError::new(format!(
            "cpu line has {n_vals} fields, need at least 4"
        )));
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = vals;
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
    })
}

/// What we use from /proc/meminfo, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`, or `MemFree + Buffers + Cached` on kernels before 3.14.
    pub available: u64,
    /// `SwapTotal` (0 without swap).
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// Parses /proc/meminfo (`Key:   123 kB` lines). `MemTotal` and `MemFree` are required.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    let (mut total, mut available, mut free, mut buffers, mut cached) = (None, None, None, 0, 0);
    let (mut swap_total, mut swap_free) = (0, 0);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" | "MemAvailable" | "MemFree" | "Buffers" | "Cached" | "SwapTotal"
            | "SwapFree" => key,
            _ => continue,
        };
        let rest = rest.trim();
        let (num, mult) = match rest.strip_suffix("kB") {
            Some(num) => (num.trim_end(), 1024),
            None => (rest, 1),
        };
        let val = parse_u64_field(num, slot)?.saturating_mul(mult);
        match slot {
            "MemTotal" => total = Some(val),
            "MemAvailable" => available = Some(val),
            "MemFree" => free = Some(val),
            "Buffers" => buffers = val,
            "Cached" => cached = val,
            "SwapTotal" => swap_total = val,
            _ => swap_free = val,
        }
    }
    let total = total.ok_or_else(|| ParseError::new("no MemTotal"))?;
    let free = free.ok_or_else(|| ParseError::new("no MemFree"))?;
    let available = available
        .unwrap_or(free.saturating_add(buffers).saturating_add(cached))
        .min(total);
    Ok(MemInfo {
        total,
        available,
        swap_total,
        swap_free: swap_free.min(swap_total),
    })
}

/// The three load averages from /proc/loadavg.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadAvg {
    /// 1-minute load average.
    pub one: f64,
    /// 5-minute load average.
    pub five: f64,
    /// 15-minute load average.
    pub fifteen: f64,
}

/// Parses /proc/loadavg (`0.52 0.41 0.30 2/345 6789`).
pub fn parse_loadavg(text: &str) -> Result<LoadAvg, ParseError> {
    let mut it = text.split_whitespace().map(|tok| {
        tok.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ParseError::new(format!("bad load average {tok:?}")))
    });
    let mut next = || {
        it.next()
            .unwrap_or_else(|| Err(ParseError::new("truncated loadavg")))
    };
    Ok(LoadAvg {
        one: next()?,
        five: next()?,
        fifteen: next()?,
    })
}

/// One line of /proc/diskstats, the fields we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskStat<'a> {
    /// Kernel device name (`sda`, `nvme0n1`, `dm-0`).
    pub name: &'a str,
    /// Reads completed.
    pub reads: u64,
    /// 512-byte sectors read.
    pub sectors_read: u64,
    /// Writes completed.
    pub writes: u64,
    /// 512-byte sectors written.
    pub sectors_written: u64,
    /// Milliseconds spent doing I/O (the device was busy).
    pub io_ms: u64,
}

/// Parses /proc/diskstats, one item per non-empty line.
pub fn parse_diskstats(text: &str) -> impl Iterator<Item = Result<DiskStat<'_>, ParseError>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|line| {
        let mut f = [""; 13];
        let mut n_fields = 0;
        for (idx, tok) in line.split_whitespace().take(13).enumerate() {
            f[idx] = tok;
            n_fields += 1;
        }
        if n_fields < 13 {
            return Err(ParseError::new(format!(
                "diskstats line has {n_fields} fields: {line:?}"
            )));
        }
        Ok(DiskStat {
            name: f[2],
            reads: parse_u64_field(f[3], "reads")?,
            sectors_read: parse_u64_field(f[5], "sectors read")?,
            writes: parse_u64_field(f[7], "writes")?,
            sectors_written: parse_u64_field(f[9], "sectors written")?,
            io_ms: parse_u64_field(f[12], "io ms")?,
        })
    })
}

/// One interface line of /proc/net/dev, the fields we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDev<'a> {
    /// Interface name.
    pub iface: &'a str,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drops: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Outgoing packets dropped.
    pub tx_drops: u64,
}

/// Parses /proc/net/dev, one item per interface (the two header lines are skipped).
pub fn parse_net_dev(text: &str) -> impl Iterator<Item = Result<NetDev<'_>, ParseError>> {
    text.lines()
        .filter(|l| !l.contains('|') && !l.trim().is_empty())
        .map(|line| {
            let (iface, rest) = line
                .split_once(':')
                .ok_or_else(|| ParseError::new(format!("net/dev line without ':': {line:?}")))?;
            let mut f = [0u64; 16];
            let mut n_fields = 0;
            for (idx, tok) in rest.split_whitespace().take(16).enumerate() {
                f[idx] = parse_u64_field(tok, "net/dev counter")?;
                n_fields += 1;
            }
            if n_fields < 16 {
                return Err(ParseError::new(format!(
                    "net/dev line has {n_fields} counters: {line:?}"
                )));
            }
            Ok(NetDev {
                iface: iface.trim(),
                rx_bytes: f[0],
                rx_packets: f[1],
                rx_errors: f[2],
                rx_drops: f[3],
                tx_bytes: f[8],
                tx_packets: f[9],
                tx_errors: f[10],
                tx_drops: f[11],
            })
        })
}

/// One line of /proc/self/mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry<'a> {
    /// What is mounted (`/dev/sda1`, `server:/export`, `tmpfs`).
    pub source: Cow<'a, str>,
    /// Where, with the kernel's octal escapes (`\040` for a space) decoded.
    pub mountpoint: Cow<'a, str>,
    /// Filesystem type.
    pub fstype: &'a str,
}

/// Parses /proc/self/mounts, one item per non-empty line.
pub fn parse_mounts(text: &str) -> impl Iterator<Item = Result<MountEntry<'_>, ParseError>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|line| {
        let mut it = line.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some(source), Some(mountpoint), Some(fstype)) if !fstype.is_empty() => {
                Ok(MountEntry {
                    source: unescape_mount(source),
                    mountpoint: unescape_mount(mountpoint),
                    fstype,
                })
            }
            _ => Err(ParseError::new(format!(
                "mounts line has under 3 fields: {line:?}"
            ))),
        }
    })
}

/// Decodes the `\ooo` escapes the kernel uses for space, tab, newline and backslash.
fn unescape_mount(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let octal = bytes
            .get(idx + 1..idx + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[idx], octal) {
            (b'\\', Some(d)) => {
                let val = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                // Values over 255 cannot be a byte: keep the text as it was.
                match u8::try_from(val) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[idx..idx + 4]),
                }
                idx += 4;
            }
            (b, _) => {
                out.push(b);
                idx += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// One line of a PSI file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PsiLine {
    /// Share of the last 10 s stalled, percent.
    pub avg10: f64,
    /// Share of the last 60 s stalled, percent.
    pub avg60: f64,
    /// Share of the last 300 s stalled, percent.
    pub avg300: f64,
    /// Total stall time since boot, microseconds.
    pub total_us: u64,
}

/// A PSI file (/proc/pressure/* or a cgroup's *.pressure).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Psi {
    /// Some tasks stalled.
    pub some: Option<PsiLine>,
    /// All non-idle tasks stalled (absent for CPU on older kernels).
    pub full: Option<PsiLine>,
}

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`, and a `full` line.
pub fn parse_psi(text: &str) -> Result<Psi, ParseError> {
    let mut res = Psi::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let kind = it.next().unwrap_or_default();
        let (mut avg10, mut avg60, mut avg300, mut total_us) = (None, None, None, None);
        for tok in it {
            let (key, val) = tok
                .split_once('=')
                .ok_or_else(|| ParseError::new(format!("PSI field without '=': {tok:?}")))?;
            let as_pct = || {
                val.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| ParseError::new(format!("bad PSI {key} {val:?}")))
            };
            match key {
                "avg10" => avg10 = Some(as_pct()?),
                "avg60" => avg60 = Some(as_pct()?),
                "avg300" => avg300 = Some(as_pct()?),
                "total" => total_us = Some(parse_u64_field(val, "PSI total")?),
                _ => {}
            }
        }
        let (Some(avg10), Some(avg60), Some(avg300), Some(total_us)) =
            (avg10, avg60, avg300, total_us)
        else {
            return Err(ParseError::new(format!("incomplete PSI line {line:?}")));
        };
        let parsed = PsiLine {
            avg10,
            avg60,
            avg300,
            total_us,
        };
        match kind {
            "some" => res.some = Some(parsed),
            "full" => res.full = Some(parsed),
            _ => return Err(ParseError::new(format!("unknown PSI line kind {kind:?}"))),
        }
    }
    if res.some.is_none() {
        return Err(ParseError::new("no `some` line"));
    }
    Ok(res)
}

/// Filesystem usage in bytes, as `df` computes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FsUsage {
    /// Total size.
    pub size_bytes: u64,
    /// Used: size minus free blocks (blocks reserved for root count as free here).
    pub used_bytes: u64,
    /// Available to unprivileged users.
    pub avail_bytes: u64,
    /// `used / (used + avail)`: what `df` shows; reaches 100 when users can no longer write.
    pub used_pct: f64,
    /// Used inodes in percent, when the filesystem has a fixed inode count.
    pub inodes_used_pct: Option<f64>,
}

/// Computes usage from `statvfs` fields (block counts in `frsize` units).
pub fn fs_usage(
    blocks: u64,
    bfree: u64,
    bavail: u64,
    frsize: u64,
    files: u64,
    ffree: u64,
) -> FsUsage {
    let size_bytes = blocks.saturating_mul(frsize);
    let used_bytes = blocks.saturating_sub(bfree).saturating_mul(frsize);
    let avail_bytes = bavail.saturating_mul(frsize);
    let denom = used_bytes.saturating_add(avail_bytes);
    let used_pct = if denom == 0 {
        0.0
    } else {
        round2(used_bytes as f64 * 100.0 / denom as f64)
    };
    let inodes_used_pct =
        (files > 0).then(|| round2(files.saturating_sub(ffree) as f64 * 100.0 / files as f64));
    FsUsage {
        size_bytes,
        used_bytes,
        avail_bytes,
        used_pct,
        inodes_used_pct,
    }
}

fn statvfs(path: &CString) -> io::Result<FsUsage> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for one statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types are u32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let usage = fs_usage(
        u64::from(st.f_blocks),
        u64::from(st.f_bfree),
        u64::from(st.f_bavail),
        u64::from(st.f_frsize),
        u64::from(st.f_files),
        u64::from(st.f_ffree),
    );
    Ok(usage)
}

#[derive(Clone, Copy)]
struct DiskPrev {
    mono: Instant,
    stat: (u64, u64, u64, u64, u64),
}

struct DiskState {
    /// Whole disk, not loop/ram: decided once, when the name first appears.
    wanted: bool,
    entity: String,
    prev: Option<DiskPrev>,
    generation: u64,
}

struct NetState {
    entity: String,
    prev: Option<(Instant, [u64; 8])>,
    generation: u64,
}

struct Filesystem {
    path: CString,
    entity: String,
    device: String,
    fstype: String,
}

/// Per-PSI-resource state: whether the file is readable, and the last totals.
struct PsiState {
    resource: &'static str,
    path: PathBuf,
    available: bool,
    prev: Option<(Instant, u64, Option<u64>)>,
    names: PsiNames,
}

struct PsiNames {
    some_avg10: &'static str,
    some_stall: &'static str,
    /// None for CPU: system-wide CPU `full` is always zero.
    full: Option<(&'static str, &'static str)>,
}

/// Host totals: `/proc/stat`, `meminfo`, `loadavg`, `diskstats`, mounts, `net/dev`, PSI.
pub struct HostCollector {
    stat_path: PathBuf,
    meminfo_path: PathBuf,
    loadavg_path: PathBuf,
    diskstats_path: PathBuf,
    mounts_path: PathBuf,
    net_dev_path: PathBuf,
    sys_block: PathBuf,
    buf: String,
    scratch: PathBuf,
    generation: u64,
    prev_stat: Option<(Instant, ProcStat)>,
    disks: HashMap<String, DiskState>,
    nets: HashMap<String, NetState>,
    filesystems: Vec<Filesystem>,
    n_fs_dropped: usize,
    mounts_read_at: Option<Instant>,
    psi: [PsiState; 3],
}

impl HostCollector {
    /// A collector reading below `cfg.proc_root` and `cfg.sys_root`.
    pub fn new(cfg: &CollectConfig) -> Self {
        let proc_root = &cfg.proc_root;
        let psi = |resource: &'static str, names: PsiNames| PsiState {
            resource,
            path: proc_root.join("pressure").join(resource),
            available: true,
            prev: None,
            names,
        };
        HostCollector {
            stat_path: proc_root.join("stat"),
            meminfo_path: proc_root.join("meminfo"),
            loadavg_path: proc_root.join("loadavg"),
            diskstats_path: proc_root.join("diskstats"),
            mounts_path: proc_root.join("self/mounts"),
            net_dev_path: proc_root.join("net/dev"),
            sys_block: cfg.sys_root.join("block"),
            buf: String::with_capacity(4096),
            scratch: PathBuf::new(),
            generation: 0,
            prev_stat: None,
            disks: HashMap::new(),
            nets: HashMap::new(),
            filesystems: Vec::new(),
            n_fs_dropped: 0,
            mounts_read_at: None,
            psi: [
                psi(
                    "cpu",
                    PsiNames {
                        some_avg10: "psi.cpu.some_avg10",
                        some_stall: "psi.cpu.some_stall_pct",
                        full: None,
                    },
                ),
                psi(
                    "memory",
                    PsiNames {
                        some_avg10: "psi.memory.some_avg10",
                        some_stall: "psi.memory.some_stall_pct",
                        full: Some(("psi.memory.full_avg10", "psi.memory.full_stall_pct")),
                    },
                ),
                psi(
                    "io",
                    PsiNames {
                        some_avg10: "psi.io.some_avg10",
                        some_stall: "psi.io.some_stall_pct",
                        full: Some(("psi.io.full_avg10", "psi.io.full_stall_pct")),
                    },
                ),
            ],
        }
    }

    fn collect_stat(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.stat_path)
            .map_err(|e| CollectError::io(&self.stat_path, e))?;
        let cur =
            parse_proc_stat(&self.buf).map_err(|e| CollectError::parse(&self.stat_path, e))?;
        host(out, "cpu.count", cur.n_cpus as f64);
        if let Some(n) = cur.procs_running {
            host(out, "proc.running", n as f64);
        }
        if let Some(n) = cur.procs_blocked {
            host(out, "proc.blocked", n as f64);
        }
        if let Some((prev_mono, prev)) = self.prev_stat {
            let (p, c) = (prev.cpu, cur.cpu);
            let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
            let d_total = d(p.total(), c.total());
            // A total that did not grow means no time passed (or a reset): no percentages.
            if d_total > 0.0 {
                let pct = |x: f64| round2((x * 100.0 / d_total).clamp(0.0, 100.0));
                let d_idle = d(p.idle, c.idle) + d(p.iowait, c.iowait);
                host(out, "cpu.usage_pct", pct(d_total - d_idle));
                host(
                    out,
                    "cpu.user_pct",
                    pct(d(p.user, c.user) + d(p.nice, c.nice)),
                );
                host(
                    out,
                    "cpu.system_pct",
                    pct(d(p.system, c.system) + d(p.irq, c.irq) + d(p.softirq, c.softirq)),
                );
                host(out, "cpu.iowait_pct", pct(d(p.iowait, c.iowait)));
                host(out, "cpu.steal_pct", pct(d(p.steal, c.steal)));
            }
            let dt_s = mono.saturating_duration_since(prev_mono).as_secs_f64();
            if let (Some(a), Some(b)) = (prev.ctxt, cur.ctxt)
                && let Some(rate) = per_s(a, b, dt_s)
            {
                host(out, "cpu.context_switches_per_s", rate.round());
            }
        }
        self.prev_stat = Some((mono, cur));
        Ok(())
    }

    fn collect_meminfo(&mut self, out: &mut Vec<(SeriesKey, f64)>) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.meminfo_path)
            .map_err(|e| CollectError::io(&self.meminfo_path, e))?;
        let mem =
            parse_meminfo(&self.buf).map_err(|e| CollectError::parse(&self.meminfo_path, e))?;
        let used = mem.total - mem.available;
        host(out, "mem.total_bytes", mem.total as f64);
        host(out, "mem.available_bytes", mem.available as f64);
        host(out, "mem.used_bytes", used as f64);
        if mem.total > 0 {
            host(
                out,
                "mem.used_pct",
                round2(used as f64 * 100.0 / mem.total as f64),
            );
        }
        host(out, "swap.total_bytes", mem.swap_total as f64);
        host(
            out,
            "swap.used_bytes",
            (mem.swap_total - mem.swap_free) as f64,
        );
        Ok(())
    }

    fn collect_loadavg(&mut self, out: &mut Vec<(SeriesKey, f64)>) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.loadavg_path)
            .map_err(|e| CollectError::io(&self.loadavg_path, e))?;
        let load =
            parse_loadavg(&self.buf).map_err(|e| CollectError::parse(&self.loadavg_path, e))?;
        host(out, "load.1m", round2(load.one));
        host(out, "load.5m", round2(load.five));
        host(out, "load.15m", round2(load.fifteen));
        Ok(())
    }

    fn collect_disks(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.diskstats_path)
            .map_err(|e| CollectError::io(&self.diskstats_path, e))?;
        let generation = self.generation;
        let mut n_dropped = 0;
        let mut first_err = None;
        for item in parse_diskstats(&self.buf) {
            let d = match item {
                Ok(d) => d,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            if !self.disks.contains_key(d.name) {
                if self.disks.len() >= MAX_DISKS {
                    n_dropped += 1;
                    continue;
                }
                // Whole disks have /sys/block/<dev>; partitions don't. Names with '/'
                // (cciss/c0d0) appear there with '!'.
                let sys_name = d.name.replace('/', "!");
                let wanted = !d.name.starts_with("loop")
                    && !d.name.starts_with("ram")
                    && set_path(&mut self.scratch, &self.sys_block, &[&sys_name]).exists();
                let state = DiskState {
                    wanted,
                    entity: format!("disk/{}", d.name),
                    prev: None,
                    generation,
                };
                self.disks.insert(d.name.to_string(), state);
            }
            let Some(state) = self.disks.get_mut(d.name) else {
                continue;
            };
            state.generation = generation;
            let cur = (
                d.reads,
                d.sectors_read,
                d.writes,
                d.sectors_written,
                d.io_ms,
            );
            let prev = state.prev.replace(DiskPrev { mono, stat: cur });
            // Devices that never did any I/O (unused zram, empty card readers) cost no series.
            if !state.wanted || (d.reads == 0 && d.writes == 0) {
                continue;
            }
            let Some(prev) = prev else { continue };
            let dt_s = mono.saturating_duration_since(prev.mono).as_secs_f64();
            let (p_reads, p_sread, p_writes, p_swritten, p_io_ms) = prev.stat;
            let entity = &state.entity;
            if let Some(r) = per_s(p_sread, d.sectors_read, dt_s) {
                push(out, entity, "disk.read_bytes_per_s", (r * 512.0).round());
            }
            if let Some(r) = per_s(p_swritten, d.sectors_written, dt_s) {
                push(out, entity, "disk.write_bytes_per_s", (r * 512.0).round());
            }
            if let Some(r) = per_s(p_reads, d.reads, dt_s) {
                push(out, entity, "disk.reads_per_s", round2(r));
            }
            if let Some(r) = per_s(p_writes, d.writes, dt_s) {
                push(out, entity, "disk.writes_per_s", round2(r));
            }
            if let Some(r) = per_s(p_io_ms, d.io_ms, dt_s) {
                // ms busy per second of wall time, / 10 = percent.
                push(
                    out,
                    entity,
                    "disk.io_util_pct",
                    round2((r / 10.0).min(100.0)),
                );
            }
        }
        self.disks.retain(|_, s| s.generation == generation);
        host(out, "disk.dropped", n_dropped as f64);
        match first_err {
            Some(e) => Err(CollectError::parse(&self.diskstats_path, e)),
            None => Ok(()),
        }
    }

    fn collect_net(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.net_dev_path)
            .map_err(|e| CollectError::io(&self.net_dev_path, e))?;
        let generation = self.generation;
        let mut n_dropped = 0;
        let mut first_err = None;
        for item in parse_net_dev(&self.buf) {
            let n = match item {
                Ok(n) => n,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            // Loopback and interfaces that never carried a byte (down, unused) cost nothing.
            if n.iface == "lo" || (n.rx_bytes == 0 && n.tx_bytes == 0) {
                continue;
            }
            if !self.nets.contains_key(n.iface) {
                if self.nets.len() >= MAX_IFACES {
                    n_dropped += 1;
                    continue;
                }
                let state = NetState {
                    entity: format!("net/{}", n.iface),
                    prev: None,
                    generation,
                };
                self.nets.insert(n.iface.to_string(), state);
            }
            let Some(state) = self.nets.get_mut(n.iface) else {
                continue;
            };
            state.generation = generation;
            let cur = [
                n.rx_bytes,
                n.tx_bytes,
                n.rx_packets,
                n.tx_packets,
                n.rx_errors,
                n.tx_errors,
                n.rx_drops,
                n.tx_drops,
            ];
            let Some((prev_mono, prev)) = state.prev.replace((mono, cur)) else {
                continue;
            };
            let dt_s = mono.saturating_duration_since(prev_mono).as_secs_f64();
            for (idx, metric) in NET_METRICS.iter().enumerate() {
                if let Some(r) = per_s(prev[idx], cur[idx], dt_s) {
                    // Byte rates are whole numbers; packet, error and drop rates keep 2
                    // decimals so that one error in a 10 s interval is not rounded away.
                    let val = if idx < 2 { r.round() } else { round2(r) };
                    push(out, &state.entity, metric, val);
                }
            }
        }
        self.nets.retain(|_, s| s.generation == generation);
        host(out, "net.dropped", n_dropped as f64);
        match first_err {
            Some(e) => Err(CollectError::parse(&self.net_dev_path, e)),
            None => Ok(()),
        }
    }

    fn refresh_mounts(&mut self) -> Result<(), CollectError> {
        read_file(&mut self.buf, &self.mounts_path)
            .map_err(|e| CollectError::io(&self.mounts_path, e))?;
        self.filesystems.clear();
        self.n_fs_dropped = 0;
        for entry in parse_mounts(&self.buf) {
            // A line we cannot read is skipped: one odd mount must not hide the others.
            let Ok(m) = entry else { continue };
            if VIRTUAL_FS.contains(&m.fstype)
                || NETWORK_FS.contains(&m.fstype)
                || m.fstype.starts_with("fuse.")
            {
                continue;
            }
            // Bind mounts repeat a device: keep its first (outermost) mount.
            if self.filesystems.iter().any(|f| f.device == m.source) {
                continue;
            }
            if self.filesystems.len() >= MAX_FILESYSTEMS {
                self.n_fs_dropped += 1;
                continue;
            }
            let Ok(path) = CString::new(m.mountpoint.as_bytes()) else {
                continue;
            };
            self.filesystems.push(Filesystem {
                path,
                entity: format!("fs/{}", m.mountpoint),
                device: m.source.into_owned(),
                fstype: m.fstype.to_string(),
            });
        }
        Ok(())
    }

    fn collect_filesystems(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let stale = self
            .mounts_read_at
            .is_none_or(|at| mono.saturating_duration_since(at) >= MOUNTS_REFRESH);
        let mut res = Ok(());
        if stale {
            res = self.refresh_mounts();
            self.mounts_read_at = Some(mono);
        }
        for fs in &self.filesystems {
            // Unmounted since the last refresh, or hidden from us: skip, it is not an error.
            let usage = match statvfs(&fs.path) {
                Ok(u) => u,
                Err(err) => {
                    tracing::debug!(path = ?fs.path, %err, "statvfs failed");
                    continue;
                }
            };
            if usage.size_bytes == 0 {
                continue;
            }
            let key = |metric: &str| {
                SeriesKey::new(fs.entity.clone(), metric)
                    .with_label("device", fs.device.clone())
                    .with_label("fstype", fs.fstype.clone())
            };
            out.push((key("fs.size_bytes"), usage.size_bytes as f64));
            out.push((key("fs.used_bytes"), usage.used_bytes as f64));
            out.push((key("fs.avail_bytes"), usage.avail_bytes as f64));
            out.push((key("fs.used_pct"), usage.used_pct));
            if let Some(pct) = usage.inodes_used_pct {
                out.push((key("fs.inodes_used_pct"), pct));
            }
        }
        host(out, "fs.dropped", self.n_fs_dropped as f64);
        res
    }

    fn collect_psi(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        let mut res = Ok(());
        for state in &mut self.psi {
            if !state.available {
                continue;
            }
            if let Err(err) = read_file(&mut self.buf, &state.path) {
                // No PSI (kernel without CONFIG_PSI, or booted with psi=0): not an error.
                tracing::info!(resource = state.resource, path = %state.path.display(), %err,
                    "pressure stall information unavailable, skipping its series");
                state.available = false;
                continue;
            }
            let psi = match parse_psi(&self.buf) {
                Ok(p) => p,
                Err(e) => {
                    if res.is_ok() {
                        res = Err(CollectError::parse(&state.path, e));
                    }
                    continue;
                }
            };
            let Some(some) = psi.some else { continue };
            host(out, state.names.some_avg10, round2(some.avg10));
            let full = state.names.full.zip(psi.full);
            if let Some((names, full)) = full {
                host(out, names.0, round2(full.avg10));
            }
            let cur = (mono, some.total_us, full.map(|(_, f)| f.total_us));
            if let Some((prev_mono, p_some, p_full)) = state.prev.replace(cur) {
                let dt_us = mono.saturating_duration_since(prev_mono).as_secs_f64() * 1e6;
                // Stall µs per µs of wall time, in percent: the exact version of avg10 for
                // this interval.
                if let Some(r) = per_s(p_some, some.total_us, dt_us) {
                    host(out, state.names.some_stall, round2((r * 100.0).min(100.0)));
                }
                if let (Some((names, full)), Some(p_full)) = (full, p_full)
                    && let Some(r) = per_s(p_full, full.total_us, dt_us)
                {
                    host(out, names.1, round2((r * 100.0).min(100.0)));
                }
            }
        }
        res
    }
}

fn host(out: &mut Vec<(SeriesKey, f64)>, metric: &'static str, value: f64) {
    out.push((SeriesKey::new("host", metric), value));
}

fn push(out: &mut Vec<(SeriesKey, f64)>, entity: &str, metric: &'static str, value: f64) {
    out.push((SeriesKey::new(entity, metric), value));
}

impl Collector for HostCollector {
    fn name(&self) -> &'static str {
        "host"
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        self.generation += 1;
        let results = [
            self.collect_stat(mono, out),
            self.collect_meminfo(out),
            self.collect_loadavg(out),
            self.collect_disks(mono, out),
            self.collect_filesystems(mono, out),
            self.collect_net(mono, out),
            self.collect_psi(mono, out),
        ];
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::collect::testutil::{TempTree, values};

    const STAT: &str = "cpu  28738 0 3160 28871 247 0 31 52 0 0
cpu0 14144 0 1395 14922 40 0 6 26 0 0
cpu1 14593 0 1764 13948 206 0 24 25 0 0
intr 1361045 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 2289462
btime 1767000000
processes 4977
procs_running 3
procs_blocked 1
softirq 463853 0 89234 4 0 0 0 35 0 0 374580
";

    const MEMINFO: &str = "MemTotal:       24684084 kB
MemFree:        23164100 kB
MemAvailable:   24001724 kB
Buffers:            8480 kB
Cached:          1018976 kB
SwapCached:            0 kB
Active:           435928 kB
SwapTotal:       2097148 kB
SwapFree:        1048574 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    const DISKSTATS: &str = "   7       0 loop0 12 0 24 0 0 0 0 0 0 4 0 0 0 0 0 0 0
 254       0 vda 7192 4012 2187682 9380 1638 25680 1332896 5527 0 3384 15140 3424 31 50608 229 64 2
 254       1 vda1 7000 4012 2180000 9300 1600 25680 1332000 5500 0 3300 15000 0 0 0 0 0 0
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 77583901    3892    0    0    0     0          0         0   284798    2251    0    0    0     0       0          0
";

    const PSI_CPU: &str = "some avg10=8.19 avg60=4.81 avg300=2.21 total=10374307
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
";

    #[test]
    fn proc_stat_real_sample() {
        let s = parse_proc_stat(STAT).unwrap();
        assert_eq!(
            s.cpu,
            CpuTimes {
                user: 28738,
                nice: 0,
                system: 3160,
                idle: 28871,
                iowait: 247,
                irq: 0,
                softirq: 31,
                steal: 52
            }
        );
        assert_eq!(s.n_cpus, 2);
        assert_eq!(s.ctxt, Some(2289462));
        assert_eq!(s.procs_running, Some(3));
        assert_eq!(s.procs_blocked, Some(1));
        assert_eq!(s.cpu.total(), 28738 + 3160 + 28871 + 247 + 31 + 52);
    }

    #[test]
    fn proc_stat_old_kernel_four_fields() {
        let s = parse_proc_stat("cpu 1 2 3 4\n").unwrap();
        assert_eq!(s.cpu.idle, 4);
        assert_eq!(s.cpu.iowait, 0);
        assert_eq!(s.n_cpus, 0);
    }

    #[test]
    fn proc_stat_malformed() {
        assert!(parse_proc_stat("").is_err());
        assert!(
            parse_proc_stat("cpu0 1 2 3 4\n").is_err(),
            "per-cpu lines only"
        );
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err(), "truncated");
        assert!(parse_proc_stat("cpu  1 2 x 4\n").is_err(), "not a number");
        assert!(parse_proc_stat("cpu  1 2 -3 4\n").is_err(), "negative");
        // A broken optional line is ignored, not fatal.
        assert_eq!(
            parse_proc_stat("cpu  1 2 3 4\nctxt what\n").unwrap().ctxt,
            None
        );
    }

    #[test]
    fn meminfo_real_sample() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24684084 * 1024);
        assert_eq!(m.available, 24001724 * 1024);
        assert_eq!(m.swap_total, 2097148 * 1024);
        assert_eq!(m.swap_free, 1048574 * 1024);
    }

    #[test]
    fn meminfo_without_memavailable_falls_back() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n")
                .unwrap();
        assert_eq!(m.available, 150 * 1024);
        assert_eq!(m.swap_total, 0);
    }

    #[test]
    fn meminfo_malformed() {
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err(), "no MemTotal");
        assert!(parse_meminfo("MemTotal: 10 kB\n").is_err(), "no MemFree");
        assert!(parse_meminfo("MemTotal: ten kB\nMemFree: 1 kB\n").is_err());
        assert!(
            parse_meminfo("MemTotal:       2468").is_err(),
            "truncated: no MemFree"
        );
        // Unknown or odd lines are ignored.
        assert!(parse_meminfo("garbage\nMemTotal: 10 kB\nMemFree: 1 kB\nFoo: bar\n").is_ok());
    }

    #[test]
    fn loadavg_parses_and_rejects_garbage() {
        let l = parse_loadavg("1.94 0.91 0.36 3/100 4924\n").unwrap();
        assert_eq!(
            l,
            LoadAvg {
                one: 1.94,
                five: 0.91,
                fifteen: 0.36
            }
        );
        assert!(parse_loadavg("1.94 0.91").is_err());
        assert!(parse_loadavg("1.94 x 0.36 3/100 1").is_err());
        assert!(parse_loadavg("NaN 1 1").is_err());
        assert!(parse_loadavg("").is_err());
    }

    #[test]
    fn diskstats_real_sample() {
        let disks: Vec<_> = parse_diskstats(DISKSTATS)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(disks.len(), 4);
        assert_eq!(
            disks[1],
            DiskStat {
                name: "vda",
                reads: 7192,
                sectors_read: 2187682,
                writes: 1638,
                sectors_written: 1332896,
                io_ms: 3384
            }
        );
        // Kernels before 4.18 have only 14 fields: still fine.
        let old = "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n";
        assert_eq!(parse_diskstats(old).next().unwrap().unwrap().io_ms, 10);
    }

    #[test]
    fn diskstats_malformed_lines_are_errors_not_panics() {
        let text = "   8 0 sda 1 2 3\n 8 1 sdb 1 2 3 4 5 6 7 8 9 x 11\n\n";
        let res: Vec<_> = parse_diskstats(text).collect();
        assert_eq!(res.len(), 2);
        assert!(res.iter().all(Result::is_err));
    }

    #[test]
    fn net_dev_real_sample() {
        let nets: Vec<_> = parse_net_dev(NET_DEV).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            nets.iter().map(|n| n.iface).collect::<Vec<_>>(),
            ["lo", "ifb0", "eth0"]
        );
        assert_eq!(nets[2].rx_bytes, 77583901);
        assert_eq!(nets[2].rx_packets, 3892);
        assert_eq!(nets[2].tx_bytes, 284798);
        assert_eq!(nets[2].tx_packets, 2251);
        // Old kernels glue a wide counter to the colon.
        let glued = "eth1:123456789012 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n";
        let n = parse_net_dev(glued).next().unwrap().unwrap();
        assert_eq!(
            (n.iface, n.rx_bytes, n.rx_errors, n.tx_bytes, n.tx_drops),
            ("eth1", 123456789012, 2, 8, 11)
        );
    }

    #[test]
    fn net_dev_malformed() {
        let res: Vec<_> = parse_net_dev("eth0: 1 2 3\nwhat\n").collect();
        assert_eq!(res.len(), 2);
        assert!(res.iter().all(Result::is_err));
    }

    #[test]
    fn mounts_decode_escapes() {
        let text = "/dev/vda / ext4 rw,relatime 0 0\n\
                    /dev/sdb1 /mnt/my\\040disk\\134x xfs rw 0 0\n\
                    bad\n";
        let res: Vec<_> = parse_mounts(text).collect();
        assert_eq!(res.len(), 3);
        let m = res[1].as_ref().unwrap();
        assert_eq!(m.mountpoint, "/mnt/my disk\\x");
        assert_eq!(m.fstype, "xfs");
        assert_eq!(res[0].as_ref().unwrap().source, "/dev/vda");
        assert!(res[2].is_err());
        // A broken escape stays as text.
        assert_eq!(unescape_mount("/a\\09"), "/a\\09");
        assert_eq!(unescape_mount("/a\\777"), "/a\\777");
    }

    #[test]
    fn psi_real_sample() {
        let p = parse_psi(PSI_CPU).unwrap();
        assert_eq!(
            p.some,
            Some(PsiLine {
                avg10: 8.19,
                avg60: 4.81,
                avg300: 2.21,
                total_us: 10374307
            })
        );
        assert_eq!(p.full.unwrap().total_us, 0);
        // Kernels before 5.13 have no `full` line for CPU.
        let old = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!(old.full, None);
    }

    #[test]
    fn psi_malformed() {
        assert!(parse_psi("").is_err());
        assert!(
            parse_psi("some avg10=0.00 avg60=0.00\n").is_err(),
            "truncated"
        );
        assert!(parse_psi("some avg10=x avg60=0.00 avg300=0.00 total=0\n").is_err());
        assert!(parse_psi("some avg10=1 avg60=0 avg300=0 total=-1\n").is_err());
        assert!(parse_psi("most avg10=1 avg60=0 avg300=0 total=1\n").is_err());
        assert!(parse_psi("some avg10 avg60=0 avg300=0 total=1\n").is_err());
    }

    #[test]
    fn fs_usage_matches_df() {
        // 1000 blocks of 4 KiB, 300 free of which 250 available to users.
        let u = fs_usage(1000, 300, 250, 4096, 100, 25);
        assert_eq!(u.size_bytes, 4_096_000);
        assert_eq!(u.used_bytes, 700 * 4096);
        assert_eq!(u.avail_bytes, 250 * 4096);
        assert_eq!(u.used_pct, 73.68); // 700 / 950
        assert_eq!(u.inodes_used_pct, Some(75.0));
        let empty = fs_usage(0, 0, 0, 4096, 0, 0);
        assert_eq!((empty.used_pct, empty.inodes_used_pct), (0.0, None));
    }

    fn proc_fixture(tree: &TempTree, stat: &str, disk: &str, net: &str, with_psi: bool) {
        tree.write("proc/stat", stat);
        tree.write("proc/meminfo", MEMINFO);
        tree.write("proc/loadavg", "0.50 0.25 0.125 1/50 100\n");
        tree.write("proc/diskstats", disk);
        tree.write("proc/net/dev", net);
        tree.mkdir("sys/block/vda");
        tree.mkdir("sys/block/loop0");
        tree.mkdir("sys/block/zram0");
        let data = tree.path("data");
        tree.mkdir("data");
        let mounts = format!(
            "proc /proc proc rw 0 0\n\
             tmpfs /run tmpfs rw 0 0\n\
             /dev/vda {} ext4 rw 0 0\n\
             /dev/vda /bind/again ext4 rw 0 0\n\
             srv:/x /nfs nfs4 rw 0 0\n",
            data.display()
        );
        tree.write("proc/self/mounts", &mounts);
        if with_psi {
            tree.write("proc/pressure/cpu", PSI_CPU);
            tree.write(
                "proc/pressure/memory",
                "some avg10=1.50 avg60=0.00 avg300=0.00 total=1000\n\
                 full avg10=0.50 avg60=0.00 avg300=0.00 total=500\n",
            );
            tree.write(
                "proc/pressure/io",
                "some avg10=0.00 avg60=0.16 avg300=0.25 total=1955493\n\
                 full avg10=0.00 avg60=0.15 avg300=0.23 total=1745820\n",
            );
        }
    }

    fn cfg(tree: &TempTree) -> CollectConfig {
        CollectConfig {
            proc_root: tree.path("proc"),
            sys_root: tree.path("sys"),
            cgroup_root: tree.path("cgroup"),
            max_processes: 16,
            max_cgroups: 16,
            scope_cgroup: None,
        }
    }

    #[test]
    fn host_collector_rates_over_two_ticks() {
        let tree = TempTree::new("host");
        proc_fixture(&tree, STAT, DISKSTATS, NET_DEV, true);
        let mut c = HostCollector::new(&cfg(&tree));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        let first = values(&out);
        assert_eq!(
            first.get(&("host", "mem.used_bytes")),
            Some(&((24684084.0 - 24001724.0) * 1024.0))
        );
        assert_eq!(
            first.get(&("host", "swap.used_bytes")),
            Some(&(1048574.0 * 1024.0))
        );
        assert_eq!(first.get(&("host", "mem.used_pct")), Some(&2.76));
        assert_eq!(first.get(&("host", "load.15m")), Some(&0.13));
        assert_eq!(first.get(&("host", "cpu.count")), Some(&2.0));
        assert_eq!(first.get(&("host", "proc.blocked")), Some(&1.0));
        assert_eq!(first.get(&("host", "psi.cpu.some_avg10")), Some(&8.19));
        assert_eq!(first.get(&("host", "psi.memory.full_avg10")), Some(&0.5));
        assert!(
            !first.contains_key(&("host", "psi.cpu.full_avg10")),
            "system CPU full is always 0"
        );
        assert!(
            !first.contains_key(&("host", "cpu.usage_pct")),
            "no rate on the first tick"
        );
        assert!(!first.contains_key(&("disk/vda", "disk.read_bytes_per_s")));

        // The filesystem: one entity for the device despite the bind mount; tmpfs, proc and
        // NFS skipped.
        let fs: Vec<_> = out
            .iter()
            .filter(|(k, _)| k.entity.starts_with("fs/"))
            .collect();
        let fs_entity = format!("fs/{}", tree.path("data").display());
        assert!(fs.iter().all(|(k, _)| k.entity == fs_entity), "{fs:?}");
        let size = fs
            .iter()
            .find(|(k, _)| k.metric == "fs.size_bytes")
            .map(|(_, v)| *v);
        assert!(size.is_some_and(|s| s > 0.0), "{fs:?}");
        assert_eq!(fs[0].0.labels_text(), "device=/dev/vda,fstype=ext4");

        // Two seconds later: 100 ticks more CPU, of which 50 user, 10 system, 30 idle, 10 iowait.
        let stat2 = STAT
            .replacen(
                "cpu  28738 0 3160 28871 247 0 31 52 0 0",
                "cpu  28788 0 3170 28901 257 0 31 52 0 0",
                1,
            )
            .replace("ctxt 2289462", "ctxt 2291462");
        let disk2 = DISKSTATS.replace(
            "vda 7192 4012 2187682 9380 1638 25680 1332896 5527 0 3384",
            "vda 7392 4012 2191682 9380 1738 25680 1333896 5527 0 4384",
        );
        let net2 = NET_DEV.replace(
            "eth0: 77583901    3892    0    0",
            "eth0: 77783901    4892    3    0",
        );
        proc_fixture(&tree, &stat2, &disk2, &net2, true);
        tree.write(
            "proc/pressure/memory",
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=201000\n\
             full avg10=0.50 avg60=0.00 avg300=0.00 total=50500\n",
        );
        out.clear();
        c.collect(t0 + Duration::from_secs(2), &mut out).unwrap();
        let v = values(&out);
        let get = |e: &'static str, m: &'static str| v.get(&(e, m)).copied();
        assert_eq!(get("host", "cpu.usage_pct"), Some(60.0));
        assert_eq!(get("host", "cpu.user_pct"), Some(50.0));
        assert_eq!(get("host", "cpu.system_pct"), Some(10.0));
        assert_eq!(get("host", "cpu.iowait_pct"), Some(10.0));
        assert_eq!(get("host", "cpu.steal_pct"), Some(0.0));
        assert_eq!(get("host", "cpu.context_switches_per_s"), Some(1000.0));
        // 4000 sectors in 2 s = 1_024_000 B/s; 1000 sectors written = 256_000 B/s.
        assert_eq!(get("disk/vda", "disk.read_bytes_per_s"), Some(1_024_000.0));
        assert_eq!(get("disk/vda", "disk.write_bytes_per_s"), Some(256_000.0));
        assert_eq!(get("disk/vda", "disk.reads_per_s"), Some(100.0));
        assert_eq!(get("disk/vda", "disk.writes_per_s"), Some(50.0));
        assert_eq!(get("disk/vda", "disk.io_util_pct"), Some(50.0));
        assert!(!v.keys().any(|(e, _)| *e == "disk/vda1"), "partition");
        assert!(!v.keys().any(|(e, _)| *e == "disk/loop0"), "loop device");
        assert!(!v.keys().any(|(e, _)| *e == "disk/zram0"), "never did I/O");
        assert_eq!(get("net/eth0", "net.rx_bytes_per_s"), Some(100_000.0));
        assert_eq!(get("net/eth0", "net.tx_bytes_per_s"), Some(0.0));
        assert_eq!(get("net/eth0", "net.rx_packets_per_s"), Some(500.0));
        assert_eq!(get("net/eth0", "net.rx_errors_per_s"), Some(1.5));
        assert!(!v.keys().any(|(e, _)| *e == "net/lo" || *e == "net/ifb0"));
        // 200_000 µs stalled in 2 s = 10 %; full 50_000 µs = 2.5 %.
        assert_eq!(get("host", "psi.memory.some_stall_pct"), Some(10.0));
        assert_eq!(get("host", "psi.memory.full_stall_pct"), Some(2.5));
        assert_eq!(get("host", "psi.io.full_stall_pct"), Some(0.0));
        assert_eq!(get("host", "disk.dropped"), Some(0.0));
    }

    #[test]
    fn missing_psi_is_skipped_and_broken_sources_fail_alone() {
        let tree = TempTree::new("host-nopsi");
        proc_fixture(&tree, STAT, DISKSTATS, NET_DEV, false);
        tree.write("proc/meminfo", "MemTotal: garbage\n");
        let mut c = HostCollector::new(&cfg(&tree));
        let mut out = Vec::new();
        let err = c.collect(Instant::now(), &mut out).unwrap_err();
        assert!(
            matches!(&err, CollectError::Parse { path, .. } if path.ends_with("meminfo")),
            "{err}"
        );
        let v: HashMap<_, _> = values(&out);
        assert!(!v.keys().any(|(_, m)| m.starts_with("psi.")));
        assert!(!v.keys().any(|(_, m)| m.starts_with("mem.")));
        assert!(
            v.contains_key(&("host", "load.1m")),
            "other sources still report"
        );
        assert!(v.contains_key(&("host", "cpu.count")));
        assert!(c.psi.iter().all(|p| !p.available));
    }

    #[test]
    fn counter_reset_gives_no_rate() {
        let tree = TempTree::new("host-reset");
        proc_fixture(&tree, STAT, DISKSTATS, NET_DEV, true);
        let mut c = HostCollector::new(&cfg(&tree));
        let t0 = Instant::now();
        let mut out = Vec::new();
        c.collect(t0, &mut out).unwrap();
        // eth0 re-created: counters restart from small values.
        let net2 = NET_DEV.replace("eth0: 77583901    3892", "eth0: 100    1");
        proc_fixture(&tree, STAT, DISKSTATS, &net2, true);
        out.clear();
        c.collect(t0 + Duration::from_secs(1), &mut out).unwrap();
        let v = values(&out);
        assert!(!v.contains_key(&("net/eth0", "net.rx_bytes_per_s")));
        assert_eq!(v.get(&("net/eth0", "net.tx_bytes_per_s")), Some(&0.0));
        // No time passed in /proc/stat: no CPU percentages rather than NaN.
        assert!(!v.contains_key(&("host", "cpu.usage_pct")));
    }
}
