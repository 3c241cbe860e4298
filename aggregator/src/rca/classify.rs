//! Metric name -> what kind of evidence it is. Part of the RCA engine: [`super::score`]
//! weighs a series by its class, since saturation of a component's own resources
//! points at that component, while latency and errors also show up in its callers.
//!
//! Names come from our agent (`cpu.usage_pct`, `mem.used_bytes`, `psi.io.some_avg10`)
//! and from public datasets (`cartservice_cpu`, `latency-90`,
//! `container_memory_working_set_bytes`), so matching is by keyword, case-insensitive,
//! on tokens (split at anything not a letter or digit) for short keywords that would
//! otherwise match inside other words (`up` in `backup`, `io` in `ratio`), and on
//! substrings for long ones.

/// The class of a metric, as the scorer uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricClass {
    Cpu,
    Memory,
    Disk,
    /// Network-level saturation: retransmits, loss, RTT, connects.
    Network,
    /// Request latency: reported as kind `network`, but a symptom that propagates.
    Latency,
    Errors,
    Crash,
    Unknown,
}

impl MetricClass {
    /// The `Candidate::kind` string.
    pub fn kind(self) -> &'static str {
        match self {
            MetricClass::Cpu => "cpu",
            MetricClass::Memory => "memory",
            MetricClass::Disk => "disk",
            MetricClass::Network | MetricClass::Latency => "network",
            MetricClass::Errors => "errors",
            MetricClass::Crash => "crash",
            MetricClass::Unknown => "unknown",
        }
    }

    /// Resources a component saturates itself (evidence of being the cause when they
    /// rise). Latency, errors and unknown metrics are symptoms that travel upstream.
    pub fn is_resource(self) -> bool {
        matches!(
            self,
            MetricClass::Cpu | MetricClass::Memory | MetricClass::Disk | MetricClass::Network
        )
    }
}

// Order matters: the first class with a match wins. Crash first (`restart_count`),
// then resources (so `net.rx_errors` is network and `disk.read_latency` is disk), then
// errors, then latency.
const CRASH_TOKENS: &[&str] = &["up", "exit", "exited", "oomkilled"];
// `refused`: connections refused at a listening port, i.e. nothing listens there any
// more (the process is down).
const CRASH_SUBSTR: &[&str] = &["restart", "crash", "terminated", "refused"];
const MEM_TOKENS: &[&str] = &["mem", "rss", "oom", "swap", "heap", "gc"];
const MEM_SUBSTR: &[&str] = &[
    "memory",
    "working_set",
    "workingset",
    "pgfault",
    "pgmajfault",
];
const CPU_TOKENS: &[&str] = &["cpu", "runq", "load", "load1", "load5", "load15"];
const CPU_SUBSTR: &[&str] = &["throttl", "run_queue", "runqueue", "cpu_", "_cpu"];
const DISK_TOKENS: &[&str] = &[
    "disk", "io", "fs", "read", "write", "reads", "writes", "iops",
];
const DISK_SUBSTR: &[&str] = &[
    "fsync",
    "blkio",
    "iowait",
    "diskio",
    "filesystem",
    "block_io",
];
const NET_TOKENS: &[&str] = &[
    "net", "rtt", "tcp", "udp", "loss", "rx", "tx", "drop", "drops",
];
const NET_SUBSTR: &[&str] = &["retrans", "packet", "connect", "network", "bandwidth"];
const ERR_TOKENS: &[&str] = &[
    "5xx", "4xx", "fail", "failed", "failure", "failures", "status",
];
const ERR_SUBSTR: &[&str] = &["error", "exception", "fault", "timeout"];
const LAT_TOKENS: &[&str] = &["lat", "rt", "p50", "p90", "p95", "p99", "delay", "duration"];
const LAT_SUBSTR: &[&str] = &[
    "latency",
    "response_time",
    "responsetime",
    "delay",
    "duration",
];

/// Classifies a metric name (case-insensitive).
pub fn classify_metric(name: &str) -> MetricClass {
    let lower = name.to_ascii_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let has = |toks: &[&str], subs: &[&str]| {
        tokens.iter().any(|t| toks.contains(t)) || subs.iter().any(|s| lower.contains(s))
    };
    // Latency in a disk or network name (`disk.read_latency`) stays with the resource,
    // but a plain `latency` must not become network-saturation evidence: check the
    // resources first, with latency words only deciding among the symptoms.
    if has(CRASH_TOKENS, CRASH_SUBSTR) {
        MetricClass::Crash
    } else if has(MEM_TOKENS, MEM_SUBSTR) {
        MetricClass::Memory
    } else if has(CPU_TOKENS, CPU_SUBSTR) {
        MetricClass::Cpu
    } else if has(DISK_TOKENS, DISK_SUBSTR) {
        MetricClass::Disk
    } else if has(NET_TOKENS, NET_SUBSTR) {
        MetricClass::Network
    } else if has(ERR_TOKENS, ERR_SUBSTR) {
        MetricClass::Errors
    } else if has(LAT_TOKENS, LAT_SUBSTR) {
        MetricClass::Latency
    } else {
        MetricClass::Unknown
    }
}

/// True when a *fall* of this metric means more pressure (`mem.available_bytes`,
/// `cpu.idle_pct`), so the scorer flips the direction before judging saturation.
pub fn inverted(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["avail", "free", "idle", "headroom"]
        .iter()
        .any(|s| lower.contains(s))
}

/// Maps an event kind (and, for `anomaly` / `anomaly_low`, the first word of its
/// detail, the metric) to a class and whether it is cause evidence (not explained by callees).
pub fn classify_event(kind: &str, detail: &str) -> (MetricClass, bool) {
    let k = kind.to_ascii_lowercase();
    if k.contains("oom") {
        (MetricClass::Memory, true)
    } else if k.contains("crash")
        || k.contains("restart")
        || k.contains("exit")
        || k.contains("kill")
        || k.contains("refused")
    {
        (MetricClass::Crash, true)
    } else if k.contains("error") || k.contains("fail") {
        (MetricClass::Errors, false)
    } else {
        // An anomaly's detail starts with the metric name; the rest (entity paths,
        // free text) would match keywords that say nothing about the metric.
        let c = if k.contains("anomal") {
            classify_metric(detail.split_whitespace().next().unwrap_or(""))
        } else {
            classify_metric(&k)
        };
        // An anomaly event on a resource counts like the resource series would: rising,
        // it is cause evidence; `anomaly_low` (below what was expected: a caller idling
        // while it waits, a callee that gets fewer requests) is a symptom, as a falling
        // series is.
        let low = k.ends_with("_low");
        (c, !low && (c.is_resource() || c == MetricClass::Crash))
    }
}

/// Weight of an event kind: how strongly it points at its component.
pub fn event_weight(kind: &str) -> f64 {
    let k = kind.to_ascii_lowercase();
    if k.contains("oom") {
        0.95
    } else if k.contains("crash") {
        0.9
    } else if k.contains("restart")
        || k.contains("exit")
        || k.contains("kill")
        || k.contains("refused")
    {
        0.8
    } else if k.contains("exhausted") {
        // A resource that ran out, in the component's own words (`disk_exhausted` from
        // "No space left on device" in its log): nearly as sure as an OOM kill.
        0.85
    } else if k.contains("error") || k.contains("fail") {
        0.7
    } else {
        0.5
    }
}
