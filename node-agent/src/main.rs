//! `node-agent`: command-line entry. Everything else lives in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_agent::collect::CollectConfig;
use node_agent::detect::{self, DetectConfig};
use node_agent::logs::{self, LogFormat, MinerConfig};
use node_agent::run::AgentConfig;

#[derive(Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Scarlet, the Auto-DevOps node agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Sample this host and ship to the aggregator.
    Run(RunArgs),
    /// Score a `timestamp,value` CSV with the agent's streaming anomaly detector.
    Detect(DetectArgs),
    /// Mine log templates from a file with the agent's template miner.
    Logs(LogsArgs),
}

#[derive(Parser)]
struct DetectArgs {
    /// Input CSV: `timestamp,value` rows (ISO-8601 or unix seconds), optional header.
    #[arg(long)]
    input: PathBuf,
    /// Output CSV: `timestamp,value,anomaly_score`, one row per input row.
    #[arg(long)]
    output: PathBuf,
    /// Detector settings, JSON (see docs/detection.md); defaults otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Parser)]
struct LogsArgs {
    /// Input log file.
    #[arg(long)]
    input: PathBuf,
    /// Output CSV: `line_number,template_id,template`, one row per input line.
    #[arg(long)]
    output: PathBuf,
    /// Line format: auto, plain, cri or docker.
    #[arg(long, default_value = "auto")]
    format: LogFormat,
    /// Miner settings, JSON (see docs/detection.md); defaults otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Parser)]
struct RunArgs {
    /// Aggregator QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    aggregator: SocketAddr,
    /// Name in the aggregator's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// This node's certificate (PEM); its common name is the node name.
    #[arg(long)]
    cert: PathBuf,
    /// This node's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Node name; defaults to the hostname. Must match the certificate.
    #[arg(long)]
    node: Option<String>,
    /// Sampling interval, seconds (down to 1).
    #[arg(long, default_value_t = 1.0)]
    interval_secs: f64,
    /// Seconds of samples per batch.
    #[arg(long, default_value_t = 5.0)]
    batch_secs: f64,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9001")]
    metrics_listen: SocketAddr,
    /// Most bytes of unacked batch payloads kept in memory. Without a spool, the oldest
    /// batches are shed past it (counted); with one, they stay on disk only.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_outbox_bytes: usize,
    /// Crash-safe spool for unacked batches (created if missing). `none` keeps them in
    /// memory only.
    #[arg(long, default_value = "/var/lib/auto-devops/spool")]
    spool_dir: PathBuf,
    /// Most bytes the spool may take on disk; the oldest segments are shed past it (counted).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_spool_bytes: u64,
    /// procfs root (e.g. /host/proc in a container).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// sysfs root.
    #[arg(long, default_value = "/sys")]
    sys_root: PathBuf,
    /// cgroup filesystem root.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Most processes with their own series.
    #[arg(long, default_value_t = 512)]
    max_processes: usize,
    /// Most cgroups with their own series.
    #[arg(long, default_value_t = 512)]
    max_cgroups: usize,
    /// Watch only this cgroup subtree (relative to the cgroup root, e.g. `ado-scenario/n1`):
    /// processes, cgroups and eBPF events outside it are left out, host-wide totals stay.
    /// For several agents sharing one kernel (the scenario harness, docs/scenarios.md).
    #[arg(long, value_name = "PATH")]
    scope_cgroup: Option<String>,
    /// Do not load the eBPF collectors.
    #[arg(long)]
    no_ebpf: bool,
    /// Turn off on-node anomaly detection.
    #[arg(long)]
    no_detect: bool,
    /// Detector settings (JSON, the same file `node-agent detect --config` takes).
    #[arg(long)]
    detect_config: Option<PathBuf>,
    /// Most series with detector state (least recently updated evicted past it).
    #[arg(long, default_value_t = 20_000)]
    max_detected_series: usize,
    /// Directory scanned for container logs (repeatable): the pods layout
    /// `<ns>_<pod>_<uid>/<container>/<n>.log`, `/var/log/containers` links, or any `*.log`.
    /// Defaults to /var/log/pods and /var/log/containers; `none` scans nothing.
    #[arg(long, value_name = "DIR")]
    log_dir: Vec<PathBuf>,
    /// Plain log file to follow as well (repeatable), whether it exists yet or not.
    /// `COMM=PATH` says which process writes it (its command name): the file's samples
    /// and anomalies then carry `comm=COMM` and count for that process, not the host.
    #[arg(long, value_name = "[COMM=]PATH")]
    log_file: Vec<String>,
    /// Log tailing and mining settings (JSON, see docs/detection.md).
    #[arg(long, value_name = "FILE")]
    log_config: Option<PathBuf>,
    /// Do not tail or mine any logs.
    #[arg(long)]
    no_logs: bool,
    /// Seconds to keep delivering after SIGTERM.
    #[arg(long, default_value_t = 10)]
    drain_grace_secs: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Detect(args) => return detect_file(&args),
        Command::Logs(args) => return logs_file(&args),
    };
    anyhow::ensure!(
        args.interval_secs >= 0.1,
        "--interval-secs must be at least 0.1"
    );
    anyhow::ensure!(
        args.batch_secs >= args.interval_secs,
        "--batch-secs must be at least --interval-secs"
    );
    let logs = log_inputs(&args)?;
    let node = match args.node {
        Some(n) => n,
        None => hostname()?,
    };
    let cfg = AgentConfig {
        node,
        aggregator: args.aggregator,
        server_name: args.server_name,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        interval: Duration::from_secs_f64(args.interval_secs),
        batch_interval: Duration::from_secs_f64(args.batch_secs),
        metrics_listen: args.metrics_listen,
        max_outbox_bytes: args.max_outbox_bytes,
        spool_dir: (args.spool_dir.as_os_str() != "none").then_some(args.spool_dir),
        max_spool_bytes: args.max_spool_bytes,
        collect: CollectConfig {
            proc_root: args.proc_root,
            sys_root: args.sys_root,
            cgroup_root: args.cgroup_root,
            max_processes: args.max_processes,
            max_cgroups: args.max_cgroups,
            scope_cgroup: args.scope_cgroup,
        },
        drain_grace: Duration::from_secs(args.drain_grace_secs),
        detect: if args.no_detect {
            None
        } else {
            Some(load_detect_config(args.detect_config.as_deref())?)
        },
        max_detected_series: args.max_detected_series,
        ebpf: !args.no_ebpf,
        logs,
    };
    // One thread is plenty for a 1 s loop and one connection, and keeps the agent light.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(node_agent::run::run(cfg, wait_for_signal()))
}

/// The log collector's inputs from the flags; `None` with `--no-logs`. Logs are reported
/// once per batch, so an interval's records leave in the batch closed on the same tick.
fn log_inputs(args: &RunArgs) -> anyhow::Result<Option<logs::LogInputs>> {
    if args.no_logs {
        return Ok(None);
    }
    let cfg: logs::LogConfig = match &args.log_config {
        Some(path) => read_json(path)?,
        None => logs::LogConfig::default(),
    };
    cfg.validate()
        .with_context(|| "invalid log config (--log-config)")?;
    let dirs = if args.log_dir.is_empty() {
        vec![
            PathBuf::from("/var/log/pods"),
            PathBuf::from("/var/log/containers"),
        ]
    } else {
        args.log_dir
            .iter()
            .filter(|d| d.as_os_str() != "none")
            .cloned()
            .collect()
    };
    let files: Vec<(PathBuf, Option<String>)> =
        args.log_file.iter().map(|f| split_log_file(f)).collect();
    Ok(Some(logs::LogInputs {
        dirs,
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        file_owners: files
            .into_iter()
            .filter_map(|(p, c)| c.map(|c| (p, c)))
            .collect(),
        interval: Duration::from_secs_f64(args.batch_secs),
        tick: Duration::from_secs_f64(args.interval_secs),
        cfg,
    }))
}

/// `--log-file [COMM=]PATH`: the path and the writer's command name. A `COMM` is 1 to 15
/// bytes without `/` (a process name), so a path holding `=` (`/var/log/a=b.log`) stays
/// a path.
fn split_log_file(arg: &str) -> (PathBuf, Option<String>) {
    match arg.split_once('=') {
        Some((comm, path))
            if !comm.is_empty() && comm.len() <= 15 && !comm.contains('/') && !path.is_empty() =>
        {
            (PathBuf::from(path), Some(comm.to_string()))
        }
        _ => (PathBuf::from(arg), None),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn load_detect_config(
    path: Option<&std::path::Path>,
) -> anyhow::Result<node_agent::detect::DetectConfig> {
    use anyhow::Context;
    let Some(path) = path else {
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg: node_agent::detect::DetectConfig = serde_json::from_str(&text)
        .with_context(|| format!("bad detector config {}", path.display()))?;
    cfg.validate()
        .with_context(|| format!("bad detector config {}", path.display()))?;
    Ok(cfg)
}

/// `node-agent detect`: the backtest of `node_agent::detect::backtest`, on files.
fn detect_file(args: &DetectArgs) -> anyhow::Result<()> {
    let cfg: DetectConfig = match &args.config {
        Some(path) => read_json(path)?,
        None => DetectConfig::default(),
    };
    cfg.validate().with_context(|| "invalid detector config")?;
    let text = read_text(&args.input)?;
    let rows = detect::backtest::parse_csv(&text)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let scores = detect::backtest::score_rows(&rows, &cfg);
    write_output(&args.output, |out| {
        detect::backtest::write_csv(&rows, &scores, out)
    })
}

/// `node-agent logs`: the template miner of `node_agent::logs`, on files.
fn logs_file(args: &LogsArgs) -> anyhow::Result<()> {
    let cfg: MinerConfig = match &args.config {
        Some(path) => read_json(path)?,
        None => MinerConfig::default(),
    };
    anyhow::ensure!(
        cfg.similarity.is_finite() && (0.0..=1.0).contains(&cfg.similarity),
        "invalid miner config: similarity must be in [0, 1]"
    );
    // Logs are not always valid UTF-8: bad bytes become U+FFFD rather than an error.
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let (rows, miner) = logs::backtest::mine_text(&text, args.format, &cfg);
    write_output(&args.output, |out| {
        logs::backtest::write_csv(&rows, &miner, out)
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {} (JSON)", path.display()))
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 text (bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

fn write_output(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    write(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    anyhow::ensure!(!name.is_empty(), "empty hostname; pass --node");
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_may_name_their_writer() {
        assert_eq!(
            split_log_file("payments=/var/log/p.log"),
            (PathBuf::from("/var/log/p.log"), Some("payments".into()))
        );
        assert_eq!(
            split_log_file("/var/log/a=b.log"),
            (PathBuf::from("/var/log/a=b.log"), None)
        );
        assert_eq!(split_log_file("app.log"), (PathBuf::from("app.log"), None));
        assert_eq!(split_log_file("=x.log"), (PathBuf::from("=x.log"), None));
    }
}
