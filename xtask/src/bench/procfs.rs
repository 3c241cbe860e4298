//! What the agent harness reads from `/proc`: CPU time and memory of a process and of the
//! processes it started (Netdata's plugins), measured the same way for every program.
//!
//! CPU is clock ticks of user + system time from `/proc/<pid>/stat`, which covers every
//! thread of a process. A process tree is followed by sampling it every second
//! ([`TreeCpu`]): the time of children that exit between two samples reaches the parent's
//! `cutime`/`cstime` when it reaps them, and only the part not yet counted is added, so
//! short-lived helpers count too and nothing counts twice. Memory is `VmRSS` and `VmHWM`
//! from `/proc/<pid>/status`.
//!
//! The parsers are plain functions over the file text, tested below; [`snapshot`] and
//! [`memory_kib`] do the reading.

use std::collections::HashMap;
use std::fs;

/// The fields of `/proc/<pid>/stat` the harness uses. Times are in clock ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Start time after boot: with the pid, it names a process even if the pid is reused.
    pub start_ticks: u64,
    /// utime + stime: this process, all its threads.
    pub own_ticks: u64,
    /// cutime + cstime: children it has waited for.
    pub child_ticks: u64,
}

/// Parse one `/proc/<pid>/stat`. The command name sits in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    // After `)`: state(0) ppid(1) pgrp(2) … utime(11) stime(12) cutime(13) cstime(14) … starttime(19).
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let num = |idx: usize| fields.get(idx)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: num(19)?,
        own_ticks: num(11)? + num(12)?,
        // cutime and cstime are signed in the kernel's format; they are never negative.
        child_ticks: num(13)? + num(14)?,
    })
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Every process now (threads are not listed: `/proc` shows thread-group leaders only).
/// Processes that exit while we read are skipped.
pub fn snapshot() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    })
    .collect()
}

/// `root` and all its descendants in `all` (empty if `root` is gone).
pub fn tree(all: &[ProcStat], root: i32) -> Vec<&ProcStat> {
    let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut res: Vec<&ProcStat> = all.iter().filter(|p| p.pid == root).collect();
    let mut idx = 0;
    while idx < res.len() {
        let pid = res[idx].pid;
        if let Some(kids) = children.get(&pid) {
            // Only pid 0 is its own parent in /proc's view; guard against a loop anyway.
            res.extend(kids.iter().filter(|k| k.pid != pid));
        }
        idx += 1;
    }
    res
}

/// `VmRSS` and `VmHWM` of `pid`, KiB (None once it is gone or for a zombie).
pub fn memory_kib(pid: i32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        parse_status_kib(&status, "VmRSS")?,
        parse_status_kib(&status, "VmHWM")?,
    ))
}

/// The command name of `pid` (`/proc/<pid>/comm`), or "?".
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// CPU ticks a process tree used since the first sample.
pub struct TreeCpu {
    /// Each process of the last sample by (pid, start): parent, own and child ticks then.
    last: HashMap<(i32, u64), (i32, u64, u64)>,
    ticks: u64,
}

impl TreeCpu {
    /// Start counting from this sample of the tree.
    pub fn new(members: &[&ProcStat]) -> TreeCpu {
        let mut res = TreeCpu {
            last: HashMap::new(),
            ticks: 0,
        };
        res.remember(members);
        res
    }

    /// Add what the tree used since the last sample.
    pub fn update(&mut self, members: &[&ProcStat]) {
        let now: HashMap<(i32, u64), &ProcStat> = members
            .iter()
            .map(|p| ((p.pid, p.start_ticks), *p))
            .collect();
        // Processes gone since the last sample, by parent: the parent's child ticks now
        // include their whole lives, of which their last sample is counted already.
        let mut counted_by_parent: HashMap<i32, u64> = HashMap::new();
        for (key, &(ppid, own, child)) in &self.last {
            if !now.contains_key(key) {
                *counted_by_parent.entry(ppid).or_default() += own + child;
            }
        }
        for p in members {
            match self.last.get(&(p.pid, p.start_ticks)) {
                Some(&(_, own, child)) => {
                    let counted = counted_by_parent.get(&p.pid).copied().unwrap_or(0);
                    self.ticks += p.own_ticks.saturating_sub(own);
                    self.ticks += p.child_ticks.saturating_sub(child).saturating_sub(counted);
                }
                // Started since the last sample: all of its life is new.
                None => self.ticks += p.own_ticks + p.child_ticks,
            }
        }
        self.remember(members);
    }

    fn remember(&mut self, members: &[&ProcStat]) {
        self.last = members
            .iter()
            .map(|p| ((p.pid, p.start_ticks), (p.ppid, p.own_ticks, p.child_ticks)))
            .collect();
    }

    /// Ticks used since the first sample.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Busy and total jiffies of all CPUs from `/proc/stat` (busy = total − idle − iowait).
pub fn host_cpu_jiffies() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_host_cpu(&stat)
}

fn parse_host_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = vals.iter().take(8).sum();
    let idle = vals.get(3)? + vals.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, own: u64, child: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgrp: ppid,
            start_ticks: 1000 + pid as u64,
            own_ticks: own,
            child_ticks: child,
        }
    }

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 4 0 123456 1000000 300 18446744073709551615";
        let got = parse_stat(text).expect("parses");
        assert_eq!(
            got,
            ProcStat {
                pid: 4242,
                ppid: 1,
                pgrp: 4242,
                start_ticks: 123456,
                own_ticks: 300,
                child_ticks: 10,
            }
        );
        assert_eq!(parse_stat("12 (cut short) S 1 2"), None);
    }

    #[test]
    fn reads_status_values() {
        let text = "Name:\tnetdata\nVmHWM:\t   51234 kB\nVmRSS:\t   48000 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(48000));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(51234));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn tree_follows_descendants_only() {
        let all = [
            stat(1, 0, 0, 0),
            stat(10, 1, 0, 0),
            stat(11, 10, 0, 0),
            stat(12, 11, 0, 0),
            stat(20, 1, 0, 0),
        ];
        let pids: Vec<i32> = tree(&all, 10).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 11, 12]);
        assert!(tree(&all, 99).is_empty());
    }

    #[test]
    fn tree_cpu_counts_exited_children_once() {
        let s0 = [stat(10, 1, 100, 0), stat(11, 10, 50, 0)];
        let mut cpu = TreeCpu::new(&s0.iter().collect::<Vec<_>>());
        // Both run 5 ticks; a new child 12 appears having used 3.
        let s1 = [stat(10, 1, 105, 0), stat(11, 10, 55, 0), stat(12, 10, 3, 0)];
        cpu.update(&s1.iter().collect::<Vec<_>>());
        assert_eq!(cpu.ticks(), 13);
        // 11 ran 2 more ticks and exited (57 reaped into 10's child time); 12 ran 1 more and
        // exited too (4); a helper nobody saw ran 6 and was reaped. 10 ran 1 tick.
        let s2 = [stat(10, 1, 106, 57 + 4 + 6)];
        cpu.update(&s2.iter().collect::<Vec<_>>());
        assert_eq!(cpu.ticks(), 13 + 1 + 2 + 1 + 6);
    }

    #[test]
    fn host_cpu_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_host_cpu(stat), Some((160, 980)));
    }
}
