//! The programs. All are raw tracepoints (`BPF_PROG_TYPE_RAW_TRACEPOINT`): no tracefs, no
//! kprobes, and nothing for the loader to resolve in the kernel's BTF at attach time
//! (`tp_btf` needs a parsed vmlinux BTF for every load: tens of MiB of peak RSS).
//!
//! Kernel structs are read with `bpf_probe_read_kernel` at offsets the loader found in the
//! running kernel's BTF and wrote into [`OFFSETS`] (read-only data, so the verifier sees
//! constants). Each program is a thin wrapper around a `try_*` function; a failed kernel
//! read skips the record and counts `READ_FAILED`.
//!
//! | program                   | tracepoint            | output                         |
//! |---------------------------|-----------------------|--------------------------------|
//! | `sched_process_exec`      | `sched_process_exec`  | [`ExecEvent`] on `PROC_EVENTS` |
//! | `sched_process_exit`      | `sched_process_exit`  | [`ExitEvent`] on `PROC_EVENTS` |
//! | `mark_victim`             | `mark_victim`         | [`OomEvent`] on `PROC_EVENTS`  |
//! | `inet_sock_set_state`     | `inet_sock_set_state` | [`TcpEvent`] on `TCP_EVENTS`   |
//! | `tcp_receive_reset`       | `tcp_receive_reset`   | flag in `TCP_SOCKS`            |
//! | `tcp_send_reset`          | `tcp_send_reset`      | flag in `TCP_SOCKS`            |
//! | `sched_wakeup(_new)`      | `sched_wakeup(_new)`  | `RUNQ_START`                   |
//! | `sched_switch`            | `sched_switch`        | `RUNQ_HIST` per cgroup         |
//! | `block_rq_issue`          | `block_rq_issue`      | `BIO_START`                    |
//! | `block_rq_complete`       | `block_rq_complete`   | `BIO_HIST` per device and op   |

use core::mem::MaybeUninit;
use core::ptr;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    bpf_probe_read_kernel_str_bytes,
};
use aya_ebpf::macros::{map, raw_tracepoint};
use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::RawTracePointContext;
use ebpf_common::{
    BioKey, COMM_LEN, ExecEvent, ExitEvent, KernelOffsets, Log2Hist, OomEvent, TcpEvent,
    TcpSockState, drop_reason, kind, log2_slot, tcp_flag,
};

/// Struct offsets, written by the loader before the programs load.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

/// exec/exit/OOM records, drained continuously by a user-space thread. 512 KiB: ~2400
/// exec records, over a second of 1,000 execs/s (exec + exit) while that thread waits for
/// a CPU.
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// TCP connect/close records, drained continuously. 1 MiB: ~8000 records, half a second
/// of 5,000 connections/s (3 records each); 256 KiB overflowed under that storm on 2 CPUs.
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Kernel-side losses by `drop_reason`, per CPU.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Live TCP sockets we saw open, by `struct sock` address. LRU: a socket whose close we
/// missed is evicted instead of leaking.
#[map]
static TCP_SOCKS: LruHashMap<u64, TcpSockState> = LruHashMap::with_max_entries(16384, 0);

/// Thread id → when it became runnable (ns). LRU for threads that exit while queued.
#[map]
static RUNQ_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// cgroup id → run-queue latency histogram (µs). User space evicts idle cgroups.
#[map]
static RUNQ_HIST: HashMap<u64, Log2Hist> = HashMap::with_max_entries(4096, 0);

/// `struct request` address → issue time (ns).
#[map]
static BIO_START: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// (device, op) → block I/O latency histogram (µs).
#[map]
static BIO_HIST: HashMap<BioKey, Log2Hist> = HashMap::with_max_entries(512, 0);

/// A zero histogram to insert from (too big for the 512-byte stack).
static ZERO_HIST: Log2Hist = Log2Hist::ZERO;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const BPF_NOEXIST: u64 = 1;
const REQ_OP_MASK: u32 = 0xff;

/// One offset from [`OFFSETS`], as a byte count.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a plain read of a field of a static; volatile so that the compiler does
        // not fold the zero it was compiled with.
        unsafe { ptr::read_volatile(&raw const OFFSETS.$field) as usize }
    };
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(p) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and programs do not nest here.
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, offset: usize) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// `task->cgroups->dfl_cgrp->kn->id`: the cgroup v2 id of any task (not only `current`).
#[inline(always)]
fn task_cgroup_id(task: *const u8) -> Result<u64, i32> {
    let cset: *const u8 = read(task, off!(task_cgroups))?;
    let cgrp: *const u8 = read(cset, off!(css_set_dfl_cgrp))?;
    let kn: *const u8 = read(cgrp, off!(cgroup_kn))?;
    read(kn, off!(kernfs_node_id))
}

#[inline(always)]
fn task_tgid(task: *const u8) -> Result<u32, i32> {
    read(task, off!(task_tgid))
}

#[inline(always)]
fn parent_tgid(task: *const u8) -> Result<u32, i32> {
    let parent: *const u8 = read(task, off!(task_real_parent))?;
    task_tgid(parent)
}

/// Adds `value_us` to the histogram at `key`, creating it when absent.
#[inline(always)]
fn hist_add<K>(map: &HashMap<K, Log2Hist>, key: &K, value_us: u64, full_reason: u32) {
    let mut p = map.get_ptr_mut(key);
    if p.is_none() {
        // BPF_NOEXIST: another CPU may have created it meanwhile; then the lookup finds it.
        let _ = map.insert(key, &ZERO_HIST, BPF_NOEXIST);
        p = map.get_ptr_mut(key);
    }
    let Some(p) = p else {
        count_drop(full_reason);
        return;
    };
    let slot = log2_slot(value_us);
    // SAFETY: `p` points into a live map value; the slot index is below LOG2_SLOTS.
    unsafe {
        atomic_add(&raw mut (*p).slots[slot], 1);
        atomic_add(&raw mut (*p).sum_us, value_us);
    }
}

/// `*p += v` as one BPF atomic add (`lock xadd`): several CPUs update the same histogram.
/// (`AtomicU64::fetch_add` is not offered for bpf targets: they have no compare-and-swap.)
///
/// # Safety
/// `p` must point to a live, 8-byte aligned `u64` in a map value.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's promise; the instruction touches only `*p`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Processes

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            count_drop(drop_reason::READ_FAILED);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_exec(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm); p == current.
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let ppid = parent_tgid(task)?;
    let filename: *const u8 = read(bprm, off!(binprm_filename))?;
    let Some(mut entry) = PROC_EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(drop_reason::PROC_RING_FULL);
        return Ok(());
    };
    let ev: &mut MaybeUninit<ExecEvent> = &mut entry;
    let ev = ev.as_mut_ptr();
    // SAFETY: `ev` is the reserved record; every field is written before submit.
    unsafe {
        (*ev).kind = kind::EXEC;
        (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev).ppid = ppid;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).ts_ns = now_ns();
        (*ev).cgroup_id = current_cgroup_id();
        (*ev).comm = current_comm();
        let name = &mut *(&raw mut (*ev).filename);
        if bpf_probe_read_kernel_str_bytes(filename, name).is_err() {
            name[0] = 0;
        }
    }
    entry.submit(0);
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_sched_process_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            count_drop(drop_reason::READ_FAILED);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_exit(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (struct task_struct *p[, bool group_dead]); p == current. Only the thread-group
    // leader's exit is reported (the process, not each thread).
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    if tid != tgid {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(0);
    let exit_code: i32 = read(task, off!(task_exit_code))?;
    let start_ns: u64 = read(task, off!(task_start_time))?;
    let ppid = parent_tgid(task)?;
    let Some(mut entry) = PROC_EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(drop_reason::PROC_RING_FULL);
        return Ok(());
    };
    entry.write(ExitEvent {
        kind: kind::EXIT,
        pid: tgid,
        ppid,
        exit_code: exit_code as u32,
        ts_ns: now_ns(),
        start_ns,
        cgroup_id: current_cgroup_id(),
        comm: current_comm(),
    });
    entry.submit(0);
    Ok(())
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim(ctx: RawTracePointContext) -> i32 {
    match try_mark_victim(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            count_drop(drop_reason::READ_FAILED);
            0
        }
    }
}

#[inline(always)]
fn try_mark_victim(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (struct task_struct *task, uid_t uid); runs in the allocating task, not the victim.
    let task: *const u8 = ctx.arg(0);
    let uid: u32 = ctx.arg(1);
    let pid = task_tgid(task)?;
    let comm: [u8; COMM_LEN] = read(task, off!(task_comm))?;
    let cgroup_id = task_cgroup_id(task)?;
    let Some(mut entry) = PROC_EVENTS.reserve::<OomEvent>(0) else {
        count_drop(drop_reason::PROC_RING_FULL);
        return Ok(());
    };
    entry.write(OomEvent {
        kind: kind::OOM_KILL,
        pid,
        uid,
        trigger_pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        ts_ns: now_ns(),
        cgroup_id,
        comm,
        trigger_comm: current_comm(),
    });
    entry.submit(0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// TCP

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            count_drop(drop_reason::READ_FAILED);
            0
        }
    }
}

/// Records the calling process as the socket's owner: only called from transitions made
/// in process context (`connect`, `close`, `shutdown`).
#[inline(always)]
fn owner_now(st: &mut TcpSockState) {
    st.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    st.cgroup_id = current_cgroup_id();
    st.comm = current_comm();
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let protocol: u16 = read(sk, off!(sk_protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let key = sk as u64;
    let now = now_ns();
    match new {
        TCP_SYN_SENT => {
            // connect(): process context.
            let mut st = TcpSockState {
                start_ns: now,
                established_ns: 0,
                cgroup_id: 0,
                pid: 0,
                flags: tcp_flag::ACTIVE,
                comm: [0; COMM_LEN],
            };
            owner_now(&mut st);
            if TCP_SOCKS.insert(key, st, 0).is_err() {
                count_drop(drop_reason::TCP_MAP_FULL);
            }
        }
        TCP_ESTABLISHED if old == TCP_SYN_SENT => {
            // Softirq: the owner was recorded at SYN_SENT.
            if let Some(st) = TCP_SOCKS.get_ptr_mut(key) {
                // SAFETY: a live map value; only this socket's transitions touch it, and
                // the kernel serialises those under the socket lock.
                let st = unsafe { &mut *st };
                st.established_ns = now;
                emit_tcp(sk, kind::TCP_CONNECT, old, st, now)?;
            }
        }
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            // Passive open, softirq: the owner is unknown until it closes the socket.
            let st = TcpSockState {
                start_ns: now,
                established_ns: now,
                cgroup_id: 0,
                pid: 0,
                flags: tcp_flag::PASSIVE,
                comm: [0; COMM_LEN],
            };
            if TCP_SOCKS.insert(key, st, 0).is_err() {
                count_drop(drop_reason::TCP_MAP_FULL);
            }
        }
        TCP_FIN_WAIT1 | TCP_LAST_ACK => {
            // close()/shutdown() by the owner: process context.
            if let Some(st) = TCP_SOCKS.get_ptr_mut(key) {
                // SAFETY: as above.
                let st = unsafe { &mut *st };
                if st.pid == 0 {
                    owner_now(st);
                }
            }
        }
        TCP_CLOSE => {
            if old == TCP_LISTEN {
                return Ok(());
            }
            let kind = if old == TCP_SYN_SENT {
                kind::TCP_CONNECT
            } else {
                kind::TCP_CLOSE
            };
            match TCP_SOCKS.get_ptr_mut(key) {
                Some(st) => {
                    // SAFETY: as above.
                    let st = unsafe { &mut *st };
                    if old == TCP_SYN_SENT {
                        st.flags |= tcp_flag::FAILED;
                    }
                    let res = emit_tcp(sk, kind, old, st, now);
                    let _ = TCP_SOCKS.remove(key);
                    res?;
                }
                None => {
                    // Opened before we attached (or evicted): report what we can.
                    let mut st = TcpSockState {
                        start_ns: 0,
                        established_ns: 0,
                        cgroup_id: 0,
                        pid: 0,
                        flags: tcp_flag::UNKNOWN_START,
                        comm: [0; COMM_LEN],
                    };
                    emit_tcp(sk, kind, old, &mut st, now)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn emit_tcp(sk: *const u8, kind: u32, old: i32, st: &TcpSockState, now: u64) -> Result<(), i32> {
    let family: u16 = read(sk, off!(sk_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let sport: u16 = read(sk, off!(sk_sport))?;
    let dport: u16 = read(sk, off!(sk_dport))?;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = read(sk, off!(sk_rcv_saddr))?;
        let d: [u8; 4] = read(sk, off!(sk_daddr))?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else {
        saddr = read(sk, off!(sk_v6_rcv_saddr))?;
        daddr = read(sk, off!(sk_v6_daddr))?;
    }
    let closing = kind == kind::TCP_CLOSE;
    let (retransmits, bytes_sent, bytes_received, srtt) = if closing {
        (
            read::<u32>(sk, off!(tcp_total_retrans))?,
            read::<u64>(sk, off!(tcp_bytes_acked))?,
            read::<u64>(sk, off!(tcp_bytes_received))?,
            read::<u32>(sk, off!(tcp_srtt_us))? >> 3,
        )
    } else {
        (0, 0, 0, read::<u32>(sk, off!(tcp_srtt_us))? >> 3)
    };
    let connect_latency_ns = if st.flags & tcp_flag::ACTIVE != 0 && st.start_ns != 0 {
        let end = if st.established_ns != 0 {
            st.established_ns
        } else {
            now
        };
        end.saturating_sub(st.start_ns)
    } else {
        0
    };
    let duration_ns = if closing && st.established_ns != 0 {
        now.saturating_sub(st.established_ns)
    } else {
        0
    };
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count_drop(drop_reason::TCP_RING_FULL);
        return Ok(());
    };
    entry.write(TcpEvent {
        kind,
        pid: st.pid,
        ts_ns: now,
        cgroup_id: st.cgroup_id,
        family,
        sport: u16::from_be(sport),
        dport: u16::from_be(dport),
        old_state: old as u16,
        flags: st.flags,
        retransmits,
        saddr,
        daddr,
        comm: st.comm,
        connect_latency_ns,
        duration_ns,
        bytes_sent,
        bytes_received,
        srtt_us: srtt,
        _pad: 0,
    });
    entry.submit(0);
    Ok(())
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    // (struct sock *sk)
    let sk: *const u8 = ctx.arg(0);
    mark_tcp(sk, tcp_flag::RESET_RX);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    // (const struct sock *sk, const struct sk_buff *skb, ...); sk may be NULL.
    let sk: *const u8 = ctx.arg(0);
    mark_tcp(sk, tcp_flag::RESET_TX);
    0
}

#[inline(always)]
fn mark_tcp(sk: *const u8, flag: u32) {
    if sk.is_null() {
        return;
    }
    if let Some(st) = TCP_SOCKS.get_ptr_mut(sk as u64) {
        // SAFETY: a live map value; a lost race only loses a flag.
        unsafe { (*st).flags |= flag };
    }
}

// ---------------------------------------------------------------------------------------
// Run-queue latency

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    // (struct task_struct *p)
    let task: *const u8 = ctx.arg(0);
    let _ = runq_enqueue(task);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let _ = runq_enqueue(task);
    0
}

#[inline(always)]
fn runq_enqueue(task: *const u8) -> Result<(), i32> {
    let tid: u32 = read(task, off!(task_pid))?;
    if tid == 0 {
        return Ok(());
    }
    if RUNQ_START.insert(tid, now_ns(), 0).is_err() {
        count_drop(drop_reason::RUNQ_START_FULL);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let _ = try_sched_switch(&ctx);
    0
}

#[inline(always)]
fn try_sched_switch(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (bool preempt, struct task_struct *prev, struct task_struct *next[, unsigned int
    // prev_state]); prev's state is read from the task, which every kernel version has.
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // TASK_RUNNING is 0: prev was preempted and goes back to the run queue now.
    let prev_state: u32 = read(prev, off!(task_state))?;
    if prev_state == 0 {
        runq_enqueue(prev)?;
    }
    let tid: u32 = read(next, off!(task_pid))?;
    if tid == 0 {
        return Ok(());
    }
    // SAFETY: the value is copied out at once.
    let Some(start) = (unsafe { RUNQ_START.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = RUNQ_START.remove(tid);
    let delta_us = now_ns().saturating_sub(start) / 1000;
    let cgroup_id = task_cgroup_id(next)?;
    hist_add(
        &RUNQ_HIST,
        &cgroup_id,
        delta_us,
        drop_reason::RUNQ_HIST_FULL,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Block I/O latency

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    // (struct request *rq)
    let rq: *const u8 = ctx.arg(0);
    if BIO_START.insert(rq as u64, now_ns(), 0).is_err() {
        count_drop(drop_reason::BIO_START_FULL);
    }
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    if try_block_rq_complete(&ctx).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

#[inline(always)]
fn try_block_rq_complete(ctx: &RawTracePointContext) -> Result<(), i32> {
    // (struct request *rq, blk_status_t error, unsigned int nr_bytes)
    let rq: *const u8 = ctx.arg(0);
    let key = rq as u64;
    // SAFETY: the value is copied out at once.
    let Some(start) = (unsafe { BIO_START.get(key) }).copied() else {
        return Ok(());
    };
    let _ = BIO_START.remove(key);
    let delta_us = now_ns().saturating_sub(start) / 1000;
    let q: *const u8 = read(rq, off!(rq_q))?;
    let disk: *const u8 = read(q, off!(q_disk))?;
    if disk.is_null() {
        return Ok(());
    }
    let major: i32 = read(disk, off!(disk_major))?;
    let minor: i32 = read(disk, off!(disk_first_minor))?;
    let cmd_flags: u32 = read(rq, off!(rq_cmd_flags))?;
    let op = match cmd_flags & REQ_OP_MASK {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    let key = BioKey {
        dev: ((major as u32) << 20) | (minor as u32 & 0xfffff),
        op,
    };
    hist_add(&BIO_HIST, &key, delta_us, drop_reason::BIO_HIST_FULL);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
