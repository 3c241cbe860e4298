//! Ring-buffer records → [`Event`]s (sans-IO).
//!
//! [`decode`] checks a record's kind and length and copies it out (records are not trusted
//! to be aligned); [`to_event`] renders it with a wall-clock time and the cgroup it belongs
//! to. Kinds: `process.exec`, `process.exit`, `oom.kill`, `tcp.connect`, `tcp.close`;
//! attributes are listed in `docs/ebpf.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::model::{Event, Severity};
use ebpf_common::{ExecEvent, ExitEvent, OomEvent, TcpEvent, kind, tcp_flag};

use super::attribution::CgroupInfo;

/// One decoded ring-buffer record.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    /// `process.exec`.
    Exec(ExecEvent),
    /// `process.exit`.
    Exit(ExitEvent),
    /// `oom.kill`.
    Oom(OomEvent),
    /// `tcp.connect` or `tcp.close`.
    Tcp(TcpEvent),
}

impl Record {
    /// Kernel time of the record (CLOCK_MONOTONIC ns).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Record::Exec(e) => e.ts_ns,
            Record::Exit(e) => e.ts_ns,
            Record::Oom(e) => e.ts_ns,
            Record::Tcp(e) => e.ts_ns,
        }
    }

    /// The process the record is about (0 when unknown).
    pub fn pid(&self) -> u32 {
        match self {
            Record::Exec(e) => e.pid,
            Record::Exit(e) => e.pid,
            Record::Oom(e) => e.pid,
            Record::Tcp(e) => e.pid,
        }
    }

    /// Its cgroup v2 id (0 when unknown).
    pub fn cgroup_id(&self) -> u64 {
        match self {
            Record::Exec(e) => e.cgroup_id,
            Record::Exit(e) => e.cgroup_id,
            Record::Oom(e) => e.cgroup_id,
            Record::Tcp(e) => e.cgroup_id,
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T is a #[repr(C)] integer-only (Pod) type, so any
    // bytes are a valid T; read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record; `None` for an unknown kind or a short record.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    match read::<u32>(bytes)? {
        kind::EXEC => read(bytes).map(Record::Exec),
        kind::EXIT => read(bytes).map(Record::Exit),
        kind::OOM_KILL => read(bytes).map(Record::Oom),
        kind::TCP_CONNECT | kind::TCP_CLOSE => read(bytes).map(Record::Tcp),
        _ => None,
    }
}

/// A NUL-terminated C string from a fixed buffer, lossily as UTF-8.
fn c_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn signal_name(sig: u32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

fn tcp_state_name(state: u16) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn addr(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// Renders a record as an event at `ts_ms` (wall clock), attributed to `cgroup` when known.
pub fn to_event(rec: &Record, ts_ms: i64, cgroup: Option<&CgroupInfo>) -> Event {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| attrs.push((k.to_string(), v));
    let pid = rec.pid();
    if pid != 0 {
        add("pid", pid.to_string());
    }
    if let Some(cg) = cgroup {
        add("cgroup", format!("/{}", cg.path));
        for (k, v) in cg.attribution.labels() {
            add(k, v);
        }
    }
    let entity = if pid != 0 {
        format!("process/{pid}")
    } else {
        "host".to_string()
    };
    let (kind, severity, message) = match rec {
        Record::Exec(e) => {
            let comm = c_str(&e.comm);
            let filename = c_str(&e.filename);
            let msg = format!("exec {filename} (pid {}, ppid {}, {comm})", e.pid, e.ppid);
            add("comm", comm);
            add("filename", filename);
            add("ppid", e.ppid.to_string());
            add("uid", e.uid.to_string());
            ("process.exec", Severity::Info, msg)
        }
        Record::Exit(e) => {
            let comm = c_str(&e.comm);
            let lifetime_ms = e.ts_ns.saturating_sub(e.start_ns) / 1_000_000;
            let sig = e.exit_code & 0x7f;
            let core = e.exit_code & 0x80 != 0;
            let (msg, severity) = if sig == 0 {
                let code = (e.exit_code >> 8) & 0xff;
                add("exit_code", code.to_string());
                (
                    format!(
                        "pid {} ({comm}) exited with code {code} after {lifetime_ms} ms",
                        e.pid
                    ),
                    Severity::Info,
                )
            } else {
                let name = signal_name(sig)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("signal {sig}"));
                add("signal", sig.to_string());
                if core {
                    add("core_dumped", "true".to_string());
                }
                // Crashes and kills are worth a look; the polite stop signals are not.
                let severity = if core || matches!(sig, 4 | 6 | 7 | 8 | 9 | 11) {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let dumped = if core { " (core dumped)" } else { "" };
                (
                    format!(
                        "pid {} ({comm}) killed by {name}{dumped} after {lifetime_ms} ms",
                        e.pid
                    ),
                    severity,
                )
            };
            add("comm", comm);
            add("lifetime_ms", lifetime_ms.to_string());
            add("ppid", e.ppid.to_string());
            ("process.exit", severity, msg)
        }
        Record::Oom(e) => {
            let comm = c_str(&e.comm);
            let trigger = c_str(&e.trigger_comm);
            let msg = format!(
                "OOM killer chose pid {} ({comm}); triggered by pid {} ({trigger})",
                e.pid, e.trigger_pid
            );
            add("comm", comm);
            add("trigger_comm", trigger);
            add("trigger_pid", e.trigger_pid.to_string());
            add("uid", e.uid.to_string());
            ("oom.kill", Severity::Critical, msg)
        }
        Record::Tcp(e) => {
            let local = endpoint(addr(e.family, &e.saddr), e.sport);
            let remote = endpoint(addr(e.family, &e.daddr), e.dport);
            let comm = c_str(&e.comm);
            if !comm.is_empty() {
                add("comm", comm);
            }
            add("daddr", addr(e.family, &e.daddr).to_string());
            add("dport", e.dport.to_string());
            add("saddr", addr(e.family, &e.saddr).to_string());
            add("sport", e.sport.to_string());
            add("srtt_us", e.srtt_us.to_string());
            add("old_state", tcp_state_name(e.old_state).to_string());
            let reset = if e.flags & tcp_flag::RESET_RX != 0 {
                "received"
            } else if e.flags & tcp_flag::RESET_TX != 0 {
                "sent"
            } else {
                "none"
            };
            add("reset", reset.to_string());
            if e.kind == kind::TCP_CONNECT {
                let latency_us = e.connect_latency_ns / 1000;
                add("latency_us", latency_us.to_string());
                if e.flags & tcp_flag::FAILED != 0 {
                    let why = if e.flags & tcp_flag::RESET_RX != 0 {
                        "refused"
                    } else {
                        "failed"
                    };
                    add("result", why.to_string());
                    let msg = format!("connect {local} -> {remote} {why} after {latency_us} µs");
                    ("tcp.connect", Severity::Warning, msg)
                } else {
                    add("result", "ok".to_string());
                    let msg = format!("connect {local} -> {remote} in {latency_us} µs");
                    ("tcp.connect", Severity::Info, msg)
                }
            } else {
                let direction = if e.flags & tcp_flag::ACTIVE != 0 {
                    "out"
                } else if e.flags & tcp_flag::PASSIVE != 0 {
                    "in"
                } else {
                    "unknown"
                };
                add("direction", direction.to_string());
                add("bytes_sent", e.bytes_sent.to_string());
                add("bytes_received", e.bytes_received.to_string());
                add("retransmits", e.retransmits.to_string());
                let duration = if e.flags & tcp_flag::UNKNOWN_START == 0 {
                    let ms = e.duration_ns / 1_000_000;
                    add("duration_ms", ms.to_string());
                    format!(" after {ms} ms")
                } else {
                    String::new()
                };
                let msg = format!(
                    "close {local} -> {remote}{duration}: sent {} B, received {} B, {} retransmits",
                    e.bytes_sent, e.bytes_received, e.retransmits
                );
                let severity = if reset != "none" || e.retransmits > 0 {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                ("tcp.close", severity, msg)
            }
        }
    };
    attrs.sort();
    Event {
        ts_ms,
        entity,
        kind: kind.to_string(),
        severity,
        message,
        attrs,
    }
}

#[cfg(test)]
mod tests {
    use ebpf_common::{COMM_LEN, FILENAME_LEN};

    use super::*;
    use crate::collect::ebpf::attribution::attribute;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a Pod value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut res = [0; COMM_LEN];
        res[..s.len()].copy_from_slice(s.as_bytes());
        res
    }

    fn attr<'a>(ev: &'a Event, key: &str) -> Option<&'a str> {
        ev.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn exec_record_round_trips_with_attribution() {
        let mut filename = [0u8; FILENAME_LEN];
        filename[..9].copy_from_slice(b"/bin/true");
        let rec = ExecEvent {
            kind: kind::EXEC,
            pid: 42,
            ppid: 7,
            uid: 1000,
            ts_ns: 5,
            cgroup_id: 99,
            comm: comm("true"),
            filename,
        };
        let Some(Record::Exec(got)) = decode(&bytes(&rec)) else {
            panic!("not an exec record");
        };
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let path = format!("system.slice/docker-{id}.scope");
        let cg = CgroupInfo {
            attribution: attribute(&path),
            path,
        };
        let ev = to_event(&Record::Exec(got), 1_700_000_000_000, Some(&cg));
        assert_eq!(ev.kind, "process.exec");
        assert_eq!(ev.entity, "process/42");
        assert_eq!(attr(&ev, "comm"), Some("true"));
        assert_eq!(attr(&ev, "filename"), Some("/bin/true"));
        assert_eq!(attr(&ev, "ppid"), Some("7"));
        assert_eq!(attr(&ev, "container_id"), Some(id));
        assert_eq!(attr(&ev, "runtime"), Some("docker"));
        assert!(
            ev.attrs.windows(2).all(|w| w[0].0 <= w[1].0),
            "attrs sorted"
        );
    }

    #[test]
    fn short_and_unknown_records_are_skipped() {
        assert!(decode(&[]).is_none());
        assert!(decode(&kind::EXEC.to_le_bytes()).is_none());
        assert!(decode(&77u32.to_le_bytes()).is_none());
    }

    #[test]
    fn exit_codes_and_signals() {
        let mut rec = ExitEvent {
            kind: kind::EXIT,
            pid: 3,
            ppid: 1,
            exit_code: 2 << 8,
            ts_ns: 2_000_000_000,
            start_ns: 500_000_000,
            cgroup_id: 0,
            comm: comm("sh"),
        };
        let ev = to_event(&Record::Exit(rec), 0, None);
        assert_eq!(attr(&ev, "exit_code"), Some("2"));
        assert_eq!(attr(&ev, "lifetime_ms"), Some("1500"));
        assert_eq!(ev.severity, Severity::Info);
        rec.exit_code = 0x80 | 11;
        let ev = to_event(&Record::Exit(rec), 0, None);
        assert_eq!(attr(&ev, "signal"), Some("11"));
        assert_eq!(attr(&ev, "core_dumped"), Some("true"));
        assert_eq!(ev.severity, Severity::Warning);
        assert!(ev.message.contains("SIGSEGV"), "{}", ev.message);
    }

    #[test]
    fn tcp_connect_and_close() {
        let mut rec = TcpEvent {
            kind: kind::TCP_CONNECT,
            pid: 10,
            ts_ns: 0,
            cgroup_id: 0,
            family: 2,
            sport: 40000,
            dport: 80,
            old_state: 2,
            flags: tcp_flag::ACTIVE,
            retransmits: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: comm("curl"),
            connect_latency_ns: 1_500_000,
            duration_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            srtt_us: 100,
            _pad: 0,
        };
        let ev = to_event(&Record::Tcp(rec), 0, None);
        assert_eq!(ev.kind, "tcp.connect");
        assert_eq!(attr(&ev, "daddr"), Some("10.1.2.3"));
        assert_eq!(attr(&ev, "latency_us"), Some("1500"));
        assert_eq!(attr(&ev, "result"), Some("ok"));
        rec.flags |= tcp_flag::FAILED | tcp_flag::RESET_RX;
        let ev = to_event(&Record::Tcp(rec), 0, None);
        assert_eq!(attr(&ev, "result"), Some("refused"));
        assert_eq!(ev.severity, Severity::Warning);

        rec.kind = kind::TCP_CLOSE;
        rec.flags = tcp_flag::PASSIVE;
        rec.pid = 0;
        rec.family = 10;
        rec.daddr = Ipv6Addr::LOCALHOST.octets();
        rec.duration_ns = 3_000_000_000;
        rec.bytes_sent = 10;
        rec.bytes_received = 20;
        let ev = to_event(&Record::Tcp(rec), 0, None);
        assert_eq!(ev.kind, "tcp.close");
        assert_eq!(ev.entity, "host");
        assert_eq!(attr(&ev, "direction"), Some("in"));
        assert_eq!(attr(&ev, "duration_ms"), Some("3000"));
        assert_eq!(attr(&ev, "daddr"), Some("::1"));
        assert!(ev.message.contains("[::1]:80"), "{}", ev.message);
    }

    #[test]
    fn oom_kill_is_critical() {
        let rec = OomEvent {
            kind: kind::OOM_KILL,
            pid: 5,
            uid: 0,
            trigger_pid: 6,
            ts_ns: 0,
            cgroup_id: 0,
            comm: comm("hog"),
            trigger_comm: comm("alloc"),
        };
        let Some(rec) = decode(&bytes(&rec)) else {
            panic!("not decoded")
        };
        let ev = to_event(&rec, 0, None);
        assert_eq!(ev.kind, "oom.kill");
        assert_eq!(ev.severity, Severity::Critical);
        assert_eq!(attr(&ev, "trigger_pid"), Some("6"));
    }
}
