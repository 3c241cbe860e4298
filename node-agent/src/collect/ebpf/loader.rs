//! Loading the embedded eBPF object: kernel offsets from BTF, map creation, and one
//! load + attach per program, each failing alone.
//!
//! Outcomes, each with exactly one log line:
//! - the agent was built without the programs, the kernel has no BTF, or the object cannot
//!   be loaded at all (no `CAP_BPF`/`CAP_PERFMON`, no eBPF): one collector `ebpf` that
//!   reports the cause as unavailable (the run loop logs it once and sets
//!   `agent_collector_up{collector="ebpf"} 0`);
//! - a family whose programs all fail (say the kernel lacks `block_rq_issue`): its
//!   collector reports unavailable likewise;
//! - a family with some programs attached (say `mark_victim` missing): the collector runs,
//!   and the loader logs one warning per missing program.

use std::io;

use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};
use ebpf_common::KernelOffsets;

use super::btf::Btf;

/// The object `node-agent/build.rs` built (empty when the toolchain was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ebpf"));

/// Where the kernel's BTF lives.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The fix for missing privileges, in every message that needs it.
pub const CAPS_HINT: &str = "needs CAP_BPF and CAP_PERFMON (or root): run the agent as root, \
     or grant them (systemd AmbientCapabilities=CAP_BPF CAP_PERFMON; Kubernetes \
     securityContext.capabilities.add [BPF, PERFMON])";

/// A collector family: the programs that feed one collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// exec, exit, OOM kill → `ebpf_process`.
    Process,
    /// TCP connect/close → `ebpf_tcp`.
    Tcp,
    /// Run-queue latency → `ebpf_runq`.
    Runq,
    /// Block I/O latency → `ebpf_bio`.
    Bio,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [Family::Process, Family::Tcp, Family::Runq, Family::Bio];

    /// The collector's name.
    pub fn collector_name(self) -> &'static str {
        match self {
            Family::Process => "ebpf_process",
            Family::Tcp => "ebpf_tcp",
            Family::Runq => "ebpf_runq",
            Family::Bio => "ebpf_bio",
        }
    }
}

/// One program: its function name in the object (= the raw tracepoint), its family,
/// whether the family needs it, and the struct members it reads.
struct ProgramSpec {
    name: &'static str,
    family: Family,
    /// The family works without it (it only adds detail).
    optional: bool,
    members: &'static [Field],
}

/// A struct member the programs read: (struct, path, where it goes, byte size wanted).
/// A size of 0 accepts any size.
type Field = (
    &'static str,
    &'static str,
    fn(&mut KernelOffsets) -> &mut u32,
    u32,
);

const TASK_TGID: Field = ("task_struct", "tgid", |o| &mut o.task_tgid, 4);
const TASK_PID: Field = ("task_struct", "pid", |o| &mut o.task_pid, 4);
const TASK_PARENT: Field = ("task_struct", "real_parent", |o| &mut o.task_real_parent, 8);
const TASK_COMM: Field = ("task_struct", "comm", |o| &mut o.task_comm, 16);
const TASK_START: Field = ("task_struct", "start_time", |o| &mut o.task_start_time, 8);
const TASK_EXIT_CODE: Field = ("task_struct", "exit_code", |o| &mut o.task_exit_code, 4);
const TASK_CGROUPS: Field = ("task_struct", "cgroups", |o| &mut o.task_cgroups, 8);
const CSS_DFL: Field = ("css_set", "dfl_cgrp", |o| &mut o.css_set_dfl_cgrp, 8);
const CGROUP_KN: Field = ("cgroup", "kn", |o| &mut o.cgroup_kn, 8);
const KN_ID: Field = ("kernfs_node", "id", |o| &mut o.kernfs_node_id, 8);
const BPRM_FILENAME: Field = ("linux_binprm", "filename", |o| &mut o.binprm_filename, 8);
const SK_FAMILY: Field = ("sock", "__sk_common.skc_family", |o| &mut o.sk_family, 2);
const SK_SPORT: Field = ("inet_sock", "inet_sport", |o| &mut o.sk_sport, 2);
const SK_DPORT: Field = ("sock", "__sk_common.skc_dport", |o| &mut o.sk_dport, 2);
const SK_SADDR: Field = (
    "sock",
    "__sk_common.skc_rcv_saddr",
    |o| &mut o.sk_rcv_saddr,
    4,
);
const SK_DADDR: Field = ("sock", "__sk_common.skc_daddr", |o| &mut o.sk_daddr, 4);
const SK_V6_SADDR: Field = (
    "sock",
    "__sk_common.skc_v6_rcv_saddr",
    |o| &mut o.sk_v6_rcv_saddr,
    16,
);
const SK_V6_DADDR: Field = (
    "sock",
    "__sk_common.skc_v6_daddr",
    |o| &mut o.sk_v6_daddr,
    16,
);
const SK_PROTOCOL: Field = ("sock", "sk_protocol", |o| &mut o.sk_protocol, 2);
const TCP_RX: Field = (
    "tcp_sock",
    "bytes_received",
    |o| &mut o.tcp_bytes_received,
    8,
);
const TCP_ACKED: Field = ("tcp_sock", "bytes_acked", |o| &mut o.tcp_bytes_acked, 8);
const TCP_RETRANS: Field = ("tcp_sock", "total_retrans", |o| &mut o.tcp_total_retrans, 4);
const TCP_SRTT: Field = ("tcp_sock", "srtt_us", |o| &mut o.tcp_srtt_us, 4);
const RQ_Q: Field = ("request", "q", |o| &mut o.rq_q, 8);
const RQ_FLAGS: Field = ("request", "cmd_flags", |o| &mut o.rq_cmd_flags, 4);
const Q_DISK: Field = ("request_queue", "disk", |o| &mut o.q_disk, 8);
const DISK_MAJOR: Field = ("gendisk", "major", |o| &mut o.disk_major, 4);
const DISK_MINOR: Field = ("gendisk", "first_minor", |o| &mut o.disk_first_minor, 4);

const CGROUP_CHAIN: [Field; 4] = [TASK_CGROUPS, CSS_DFL, CGROUP_KN, KN_ID];
const TCP_FIELDS: &[Field] = &[
    SK_PROTOCOL,
    SK_FAMILY,
    SK_SPORT,
    SK_DPORT,
    SK_SADDR,
    SK_DADDR,
    SK_V6_SADDR,
    SK_V6_DADDR,
    TCP_RX,
    TCP_ACKED,
    TCP_RETRANS,
    TCP_SRTT,
];

const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "sched_process_exec",
        family: Family::Process,
        optional: false,
        members: &[TASK_TGID, TASK_PARENT, BPRM_FILENAME],
    },
    ProgramSpec {
        name: "sched_process_exit",
        family: Family::Process,
        optional: false,
        members: &[TASK_TGID, TASK_PARENT, TASK_EXIT_CODE, TASK_START],
    },
    ProgramSpec {
        name: "mark_victim",
        family: Family::Process,
        optional: true,
        members: &[
            TASK_TGID,
            TASK_COMM,
            CGROUP_CHAIN[0],
            CGROUP_CHAIN[1],
            CGROUP_CHAIN[2],
            CGROUP_CHAIN[3],
        ],
    },
    ProgramSpec {
        name: "inet_sock_set_state",
        family: Family::Tcp,
        optional: false,
        members: TCP_FIELDS,
    },
    ProgramSpec {
        name: "tcp_receive_reset",
        family: Family::Tcp,
        optional: true,
        members: &[],
    },
    ProgramSpec {
        name: "tcp_send_reset",
        family: Family::Tcp,
        optional: true,
        members: &[],
    },
    ProgramSpec {
        name: "sched_wakeup",
        family: Family::Runq,
        optional: false,
        members: &[TASK_PID],
    },
    ProgramSpec {
        name: "sched_wakeup_new",
        family: Family::Runq,
        optional: false,
        members: &[TASK_PID],
    },
    ProgramSpec {
        name: "sched_switch",
        family: Family::Runq,
        optional: false,
        members: &[
            TASK_PID,
            CGROUP_CHAIN[0],
            CGROUP_CHAIN[1],
            CGROUP_CHAIN[2],
            CGROUP_CHAIN[3],
        ],
    },
    ProgramSpec {
        name: "block_rq_issue",
        family: Family::Bio,
        optional: false,
        members: &[],
    },
    ProgramSpec {
        name: "block_rq_complete",
        family: Family::Bio,
        optional: false,
        members: &[RQ_Q, RQ_FLAGS, Q_DISK, DISK_MAJOR, DISK_MINOR],
    },
];

/// Fills `offsets` with the members `fields` name; the first missing one is the error.
fn resolve_fields(btf: &Btf, fields: &[Field], offsets: &mut KernelOffsets) -> Result<(), String> {
    for (strukt, path, slot, size) in fields {
        let m = btf.member(strukt, path).map_err(|e| e.to_string())?;
        if *size != 0 && m.size != *size {
            return Err(format!(
                "{strukt}.{path} is {} bytes in this kernel, expected {size}",
                m.size
            ));
        }
        *slot(offsets) = m.offset;
    }
    Ok(())
}

/// `task_struct.__state` (5.14+) or `.state`: read as a u32 (little-endian low half).
fn resolve_task_state(btf: &Btf, offsets: &mut KernelOffsets) -> Result<(), String> {
    let m = btf
        .member("task_struct", "__state")
        .or_else(|_| btf.member("task_struct", "state"))
        .map_err(|e| e.to_string())?;
    offsets.task_state = m.offset;
    Ok(())
}

/// What loading produced: the object with its attached programs, and per family either
/// the programs that attached or why none did.
pub struct Loaded {
    /// The object; dropping it detaches everything.
    pub ebpf: Ebpf,
    /// Per family: `Ok(attached program names)` or `Err(reason)`.
    pub families: Vec<(Family, Result<Vec<&'static str>, String>)>,
}

/// Why nothing could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `cargo build` ran without the eBPF toolchain.
    #[error(
        "agent built without eBPF programs: run `cargo xtask setup` (nightly rust-src, \
         bpf-linker) and rebuild"
    )]
    BuiltWithout,
    /// No `/sys/kernel/btf/vmlinux` (or unreadable).
    #[error(
        "cannot read kernel BTF {VMLINUX_BTF} ({0}): needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(String),
    /// Map creation or object parsing failed.
    #[error("{0}")]
    Object(String),
}

/// The errno behind an error, looking through its sources.
fn errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        cur = e.source();
    }
    None
}

/// A one-line cause and fix for a failed bpf() call.
pub fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let detail = err.to_string();
    let detail = detail
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    match errno(err) {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("permission denied ({detail}): {CAPS_HINT}")
        }
        Some(libc::ENOSYS) => {
            "this kernel has no eBPF (bpf() returned ENOSYS): needs CONFIG_BPF_SYSCALL=y"
                .to_string()
        }
        _ => detail,
    }
}

/// Reads BTF, loads the object with the offsets filled in, and loads and attaches every
/// program whose members and tracepoint exist.
pub fn load() -> Result<Loaded, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::BuiltWithout);
    }
    // Offsets: a program whose members are missing is not loaded (its reason is kept).
    // The programs are raw tracepoints and read kernel structs through these offsets, so
    // attaching them needs no BTF of our own: `tp_btf` needed an `aya::Btf` of the kernel
    // passed to every load, a second parsed copy beside the one `EbpfLoader::new()` always
    // makes (aya 0.14), and the two were most of the agent's peak memory.
    let mut offsets = KernelOffsets::default();
    let mut skip: Vec<(&'static str, String)> = Vec::new();
    {
        let raw = std::fs::read(VMLINUX_BTF).map_err(|e| LoadError::NoBtf(e.to_string()))?;
        let btf = Btf::parse(&raw).map_err(|e| LoadError::NoBtf(e.to_string()))?;
        let state = resolve_task_state(&btf, &mut offsets);
        for spec in PROGRAMS {
            let mut res = resolve_fields(&btf, spec.members, &mut offsets);
            if res.is_ok() && spec.name == "sched_switch" {
                res = state.clone();
            }
            if res.is_ok() && !btf.has_tracepoint(spec.name) {
                res = Err(format!("this kernel has no tracepoint {}", spec.name));
            }
            if let Err(why) = res {
                skip.push((spec.name, why));
            }
        }
    }
    trim_heap();

    // Locked memory: kernels before 5.11 charge maps to RLIMIT_MEMLOCK. Best effort.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other effect on memory.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", &offsets, true)
        .load(OBJECT)
        .map_err(|e| LoadError::Object(format!("cannot load the eBPF object: {}", explain(&e))))?;

    let mut families: Vec<(Family, Result<Vec<&'static str>, String>)> =
        Family::ALL.iter().map(|&f| (f, Ok(Vec::new()))).collect();
    let mut first_failure: Vec<(Family, String)> = Vec::new();
    for spec in PROGRAMS {
        let res = match skip.iter().find(|(name, _)| *name == spec.name) {
            Some((_, why)) => Err(why.clone()),
            None => attach(&mut ebpf, spec.name),
        };
        let slot = families
            .iter_mut()
            .find(|(f, _)| *f == spec.family)
            .map(|(_, r)| r)
            .expect("every family is listed");
        match res {
            Ok(()) => {
                if let Ok(names) = slot {
                    names.push(spec.name);
                }
            }
            Err(why) => {
                if spec.optional {
                    tracing::warn!(
                        collector = spec.family.collector_name(),
                        program = spec.name,
                        reason = %why,
                        "eBPF program not attached; the collector runs without it"
                    );
                } else {
                    if !first_failure.iter().any(|(f, _)| *f == spec.family) {
                        first_failure.push((spec.family, format!("program {}: {why}", spec.name)));
                    }
                }
            }
        }
    }
    // A family missing a required program is disabled, and its other programs detached:
    // nobody would read what they collect.
    for (family, why) in first_failure {
        if let Some((_, slot)) = families.iter_mut().find(|(f, _)| *f == family) {
            if let Ok(names) = slot {
                for name in names.iter() {
                    let program = ebpf.program_mut(name).and_then(|p| {
                        let p: Option<&mut RawTracePoint> = p.try_into().ok();
                        p
                    });
                    if let Some(program) = program {
                        let _ = program.unload();
                    }
                }
            }
            *slot = Err(why);
        }
    }
    trim_heap();
    Ok(Loaded { ebpf, families })
}

/// Hands freed heap back to the kernel, so what loading needed for a moment does not
/// stay in the agent's RSS for its whole life.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn attach(ebpf: &mut Ebpf, name: &'static str) -> Result<(), String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name} in the object"))?;
    let program: &mut RawTracePoint = program.try_into().map_err(|e| explain(&e))?;
    if let Err(e) = program.load() {
        if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
            tracing::debug!(program = name, log = %verifier_log, "verifier log");
        }
        return Err(match errno(&e) {
            Some(libc::EPERM) | Some(libc::EACCES) => explain(&e),
            _ => {
                let text = e.to_string();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                format!(
                    "the kernel refused it: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            }
        });
    }
    program.attach(name).map_err(|e| explain(&e))?;
    Ok(())
}
