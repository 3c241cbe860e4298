//! Types shared by the eBPF programs (`ebpf/`) and the node agent's loader
//! (`node-agent/src/collect/ebpf/`): ring-buffer records, map keys and values, and the
//! kernel struct offsets the loader reads from BTF and hands to the programs.
//!
//! Every type is `#[repr(C)]`, `Copy`, free of padding the compiler could leave
//! uninitialised (padding is spelled out as `_pad` fields), and aligned to at most 8 bytes
//! (the ring buffer's record alignment). The `user` feature adds `aya::Pod` impls so user
//! space can read maps and set globals; the eBPF side builds without it.
//!
//! **Invariant:** a layout change here changes both sides at once (they are built from this
//! crate in one `cargo build`), so there is no versioning: the agent only loads the object
//! embedded in its own binary.

#![no_std]

/// Length of `task_struct::comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd file name kept (`linux_binprm::filename`, NUL-terminated, truncated).
pub const FILENAME_LEN: usize = 160;
/// Slots of a [`Log2Hist`]: slot `i` counts values in `[2^i, 2^(i+1))` (slot 0: `[0, 2)`),
/// the last slot everything above.
pub const LOG2_SLOTS: usize = 32;

/// The `kind` field: the first `u32` of every ring-buffer record.
pub mod kind {
    /// [`super::ExecEvent`].
    pub const EXEC: u32 = 1;
    /// [`super::ExitEvent`].
    pub const EXIT: u32 = 2;
    /// [`super::OomEvent`].
    pub const OOM_KILL: u32 = 3;
    /// [`super::TcpEvent`]: an active open finished (established or failed).
    pub const TCP_CONNECT: u32 = 4;
    /// [`super::TcpEvent`]: a connection closed.
    pub const TCP_CLOSE: u32 = 5;
}

/// Indexes of the `DROPS` per-CPU counter array: why a record or sample was lost in the
/// kernel. User space sums the CPUs.
pub mod drop_reason {
    /// `PROC_EVENTS` ring buffer full: an exec/exit/OOM record was lost.
    pub const PROC_RING_FULL: u32 = 0;
    /// `TCP_EVENTS` ring buffer full: a connect/close record was lost.
    pub const TCP_RING_FULL: u32 = 1;
    /// `TCP_SOCKS` insert failed: a connection will close without its start.
    pub const TCP_MAP_FULL: u32 = 2;
    /// `RUNQ_START` insert failed: one run-queue latency sample lost.
    pub const RUNQ_START_FULL: u32 = 3;
    /// `RUNQ_HIST` full: a new cgroup's run-queue latency sample lost.
    pub const RUNQ_HIST_FULL: u32 = 4;
    /// `BIO_START` insert failed: one block I/O latency sample lost.
    pub const BIO_START_FULL: u32 = 5;
    /// `BIO_HIST` full: a new device's block I/O latency sample lost.
    pub const BIO_HIST_FULL: u32 = 6;
    /// A kernel read (`bpf_probe_read_kernel`) failed: the record was skipped.
    pub const READ_FAILED: u32 = 7;
    /// Number of reasons (the array's size).
    pub const COUNT: u32 = 8;
    /// Names for logs, metrics and samples, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "proc_ring_full",
        "tcp_ring_full",
        "tcp_map_full",
        "runq_start_full",
        "runq_hist_full",
        "bio_start_full",
        "bio_hist_full",
        "read_failed",
    ];
}

/// Flags of [`TcpEvent::flags`].
pub mod tcp_flag {
    /// We saw the active open (`SYN_SENT`): this side connected.
    pub const ACTIVE: u32 = 1;
    /// We saw the passive open (`SYN_RECV` → `ESTABLISHED`): this side accepted.
    pub const PASSIVE: u32 = 2;
    /// An RST was received on this socket.
    pub const RESET_RX: u32 = 4;
    /// An RST was sent on this socket.
    pub const RESET_TX: u32 = 8;
    /// The connection was never established (`SYN_SENT` → `CLOSE`).
    pub const FAILED: u32 = 16;
    /// The connection was open before we started: its start (and maybe pid) is unknown.
    pub const UNKNOWN_START: u32 = 32;
}

/// A process called `execve` (raw tracepoint `sched_process_exec`). Sent on `PROC_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// [`kind::EXEC`].
    pub kind: u32,
    /// Thread-group id (the user-visible pid).
    pub pid: u32,
    /// The parent's thread-group id (`real_parent->tgid`).
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the event.
    pub ts_ns: u64,
    /// cgroup v2 id (inode of the cgroup directory) of the process.
    pub cgroup_id: u64,
    /// New `comm` (NUL-padded).
    pub comm: [u8; COMM_LEN],
    /// Path passed to exec (NUL-terminated, truncated to [`FILENAME_LEN`] - 1 bytes).
    pub filename: [u8; FILENAME_LEN],
}

/// A thread-group leader exited (raw tracepoint `sched_process_exit`). Sent on `PROC_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// [`kind::EXIT`].
    pub kind: u32,
    /// Thread-group id.
    pub pid: u32,
    /// Parent's thread-group id.
    pub ppid: u32,
    /// `task_struct::exit_code` as the kernel keeps it: `(status & 0xff) << 8` for an exit,
    /// the signal number (plus `0x80` for a core dump) for a kill.
    pub exit_code: u32,
    /// `bpf_ktime_get_ns()` at the event.
    pub ts_ns: u64,
    /// `task_struct::start_time` (CLOCK_MONOTONIC ns): the lifetime is `ts_ns - start_ns`.
    pub start_ns: u64,
    /// cgroup v2 id of the process.
    pub cgroup_id: u64,
    /// `comm` at exit.
    pub comm: [u8; COMM_LEN],
}

/// The OOM killer chose a victim (raw tracepoint `mark_victim`). Sent on `PROC_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    /// [`kind::OOM_KILL`].
    pub kind: u32,
    /// The victim's thread-group id.
    pub pid: u32,
    /// The victim's uid (the tracepoint's second argument).
    pub uid: u32,
    /// The thread-group id of the task whose allocation triggered the OOM killer.
    pub trigger_pid: u32,
    /// `bpf_ktime_get_ns()` at the event.
    pub ts_ns: u64,
    /// cgroup v2 id of the victim.
    pub cgroup_id: u64,
    /// The victim's `comm`.
    pub comm: [u8; COMM_LEN],
    /// The triggering task's `comm`.
    pub trigger_comm: [u8; COMM_LEN],
}

/// A TCP connection opened (actively) or closed (raw tracepoint `inet_sock_set_state`). Sent on
/// `TCP_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    /// [`kind::TCP_CONNECT`] or [`kind::TCP_CLOSE`].
    pub kind: u32,
    /// Thread-group id of the owning process, 0 when unknown (a passive open that the
    /// process never closed itself, or a connection older than the agent).
    pub pid: u32,
    /// `bpf_ktime_get_ns()` at the event.
    pub ts_ns: u64,
    /// cgroup v2 id of the owning process (0 when unknown).
    pub cgroup_id: u64,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// The TCP state the socket left (`TCP_*` numbering of `include/net/tcp_states.h`).
    pub old_state: u16,
    /// [`tcp_flag`] bits.
    pub flags: u32,
    /// `tcp_sock::total_retrans` at close (0 on connect).
    pub retransmits: u32,
    /// Local address: 4 bytes for IPv4 (rest zero), 16 for IPv6; network byte order.
    pub saddr: [u8; 16],
    /// Remote address, like `saddr`.
    pub daddr: [u8; 16],
    /// `comm` of the owning process (empty when unknown).
    pub comm: [u8; COMM_LEN],
    /// `SYN_SENT` → `ESTABLISHED` (or → `CLOSE` when failed), ns; 0 for passive opens.
    pub connect_latency_ns: u64,
    /// `ESTABLISHED` → `CLOSE`, ns (close only; 0 when the start is unknown).
    pub duration_ns: u64,
    /// `tcp_sock::bytes_acked` at close: bytes sent and acknowledged.
    pub bytes_sent: u64,
    /// `tcp_sock::bytes_received` at close.
    pub bytes_received: u64,
    /// `tcp_sock::srtt_us >> 3` at close: smoothed RTT, µs.
    pub srtt_us: u32,
    /// Padding (zero).
    pub _pad: u32,
}

/// What the `TCP_SOCKS` map keeps per socket (keyed by the `struct sock` address) between
/// state changes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpSockState {
    /// When the open began (`SYN_SENT`, or `ESTABLISHED` for passive opens), ns.
    pub start_ns: u64,
    /// When it became `ESTABLISHED`, ns (0 until then).
    pub established_ns: u64,
    /// cgroup v2 id of the owner (0 while unknown).
    pub cgroup_id: u64,
    /// Owner's thread-group id (0 while unknown).
    pub pid: u32,
    /// [`tcp_flag`] bits.
    pub flags: u32,
    /// Owner's `comm`.
    pub comm: [u8; COMM_LEN],
}

/// A log2 histogram as kept in a kernel map: `slots[i]` counts values in `[2^i, 2^(i+1))`
/// µs (slot 0 also counts 0), the last slot everything at or above `2^(LOG2_SLOTS-1)`.
/// Counters only grow; user space takes differences between reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    /// Counts per slot.
    pub slots: [u64; LOG2_SLOTS],
    /// Sum of all values, µs (for the mean).
    pub sum_us: u64,
}

impl Log2Hist {
    /// All zero.
    pub const ZERO: Log2Hist = Log2Hist {
        slots: [0; LOG2_SLOTS],
        sum_us: 0,
    };
}

/// The slot of a value in a [`Log2Hist`]: `floor(log2(v))`, 0 for 0 and 1, capped at the
/// last slot.
#[inline(always)]
pub fn log2_slot(v: u64) -> usize {
    if v < 2 {
        return 0;
    }
    let slot = 63 - v.leading_zeros() as usize;
    if slot >= LOG2_SLOTS {
        LOG2_SLOTS - 1
    } else {
        slot
    }
}

/// Key of the `BIO_HIST` map: a device and an operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BioKey {
    /// Kernel `dev_t`: `major << 20 | minor`.
    pub dev: u32,
    /// 0 read, 1 write, 2 anything else (flush, discard, ...).
    pub op: u32,
}

/// Byte offsets of the kernel struct fields the programs read, found in the running
/// kernel's BTF by the loader and written into the programs' `OFFSETS` global before
/// loading (a poor man's CO-RE: aya-ebpf has no field relocations). A program is only
/// attached when every offset it needs was found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.start_time`.
    pub task_start_time: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `task_struct.__state` (`state` before 5.14).
    pub task_state: u32,
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`.
    pub kernfs_node_id: u32,
    /// `linux_binprm.filename`.
    pub binprm_filename: u32,
    /// `sock.__sk_common.skc_family`.
    pub sk_family: u32,
    /// `inet_sock.inet_sport` (local port, network order; unlike `skc_num` it survives
    /// until the socket is freed, so the close still has it).
    pub sk_sport: u32,
    /// `sock.__sk_common.skc_dport` (remote port, network order).
    pub sk_dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr`.
    pub sk_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`.
    pub sk_v6_daddr: u32,
    /// `sock.sk_protocol` (a `u16` since 5.6).
    pub sk_protocol: u32,
    /// `tcp_sock.bytes_received`.
    pub tcp_bytes_received: u32,
    /// `tcp_sock.bytes_acked`.
    pub tcp_bytes_acked: u32,
    /// `tcp_sock.total_retrans`.
    pub tcp_total_retrans: u32,
    /// `tcp_sock.srtt_us`.
    pub tcp_srtt_us: u32,
    /// `request.q`.
    pub rq_q: u32,
    /// `request.cmd_flags`.
    pub rq_cmd_flags: u32,
    /// `request_queue.disk`.
    pub q_disk: u32,
    /// `gendisk.major`.
    pub disk_major: u32,
    /// `gendisk.first_minor`.
    pub disk_first_minor: u32,
    /// Padding (zero), keeps the size a multiple of 8.
    pub _pad: u32,
}

impl KernelOffsets {
    /// All zero: the value compiled into the programs, replaced by the loader.
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_pid: 0,
        task_tgid: 0,
        task_real_parent: 0,
        task_comm: 0,
        task_start_time: 0,
        task_exit_code: 0,
        task_state: 0,
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        binprm_filename: 0,
        sk_family: 0,
        sk_sport: 0,
        sk_dport: 0,
        sk_rcv_saddr: 0,
        sk_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_v6_daddr: 0,
        sk_protocol: 0,
        tcp_bytes_received: 0,
        tcp_bytes_acked: 0,
        tcp_total_retrans: 0,
        tcp_srtt_us: 0,
        rq_q: 0,
        rq_cmd_flags: 0,
        q_disk: 0,
        disk_major: 0,
        disk_first_minor: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], made only of integers and integer arrays, with
    // explicit padding fields, so every bit pattern is valid and there are no uninit bytes.
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for OomEvent {}
    unsafe impl aya::Pod for TcpEvent {}
    unsafe impl aya::Pod for TcpSockState {}
    unsafe impl aya::Pod for Log2Hist {}
    unsafe impl aya::Pod for BioKey {}
    unsafe impl aya::Pod for KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn log2_slots() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 0);
        assert_eq!(log2_slot(2), 1);
        assert_eq!(log2_slot(3), 1);
        assert_eq!(log2_slot(4), 2);
        assert_eq!(log2_slot(1023), 9);
        assert_eq!(log2_slot(1024), 10);
        assert_eq!(log2_slot(u64::MAX), LOG2_SLOTS - 1);
    }

    /// No implicit padding: the sizes are the sums of the fields, and every record fits the
    /// ring buffer's 8-byte alignment.
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(
            size_of::<ExecEvent>(),
            4 * 4 + 8 * 2 + COMM_LEN + FILENAME_LEN
        );
        assert_eq!(size_of::<ExitEvent>(), 4 * 4 + 8 * 3 + COMM_LEN);
        assert_eq!(size_of::<OomEvent>(), 4 * 4 + 8 * 2 + 2 * COMM_LEN);
        assert_eq!(
            size_of::<TcpEvent>(),
            4 * 2 + 8 * 2 + 2 * 4 + 4 * 2 + 16 * 2 + COMM_LEN + 8 * 4 + 4 * 2
        );
        assert_eq!(size_of::<TcpSockState>(), 8 * 3 + 4 * 2 + COMM_LEN);
        assert_eq!(size_of::<Log2Hist>(), 8 * (LOG2_SLOTS + 1));
        assert_eq!(size_of::<KernelOffsets>(), 4 * 30);
        for align in [
            align_of::<ExecEvent>(),
            align_of::<ExitEvent>(),
            align_of::<OomEvent>(),
            align_of::<TcpEvent>(),
        ] {
            assert!(align <= 8);
        }
        assert_eq!(size_of::<ExecEvent>() % 8, 0);
        assert_eq!(size_of::<TcpEvent>() % 8, 0);
    }
}
