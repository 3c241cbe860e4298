//! `aggregator`: wires ingest, store and API together. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator::ingest::{self, IngestLimits};
use aggregator::metrics::Metrics;
use aggregator::query::QueryLimits;
use aggregator::store::{Store, StoreConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// Batches decoded on several threads and freed on another (the WAL committer) fragment
/// glibc's per-thread arenas; jemalloc returns that memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "aggregator",
    version,
    about = "Auto-DevOps aggregator: QUIC ingest, Parquet store, SQL API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the aggregator.
    Serve(ServeArgs),
    /// Offline root-cause ranking from CSV files (docs/rca.md). Exit code 2 on bad input.
    Rca(RcaArgs),
}

#[derive(Parser)]
struct RcaArgs {
    /// Wide CSV: `timestamp` then one column per series, named `component:metric`.
    #[arg(long)]
    series: PathBuf,
    /// Call graph CSV: `caller,callee` lines (optional header).
    #[arg(long)]
    graph: Option<PathBuf>,
    /// Start of the incident window (unix s or ms, or RFC 3339); default: detected.
    #[arg(long)]
    from: Option<String>,
    /// End of the incident window; default: the end of the data.
    #[arg(long)]
    to: Option<String>,
    /// Where to write the ranking (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Parser)]
struct ServeArgs {
    /// Where the WAL, Parquet files and manifest live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// HTTP API, web and /metrics.
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_listen: SocketAddr,
    /// QUIC ingest (UDP).
    #[arg(long, default_value = "0.0.0.0:4433")]
    quic_listen: SocketAddr,
    /// CA certificate that signs node certificates (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// This aggregator's certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// This aggregator's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Flush hot data to Parquet at least this often (seconds).
    #[arg(long, default_value_t = 60)]
    flush_interval_secs: u64,
    /// Flush early once this many rows are in memory.
    #[arg(long, default_value_t = 4_000_000)]
    max_hot_rows: usize,
    /// Flush early once this many MiB of Arrow data are in memory.
    #[arg(long, default_value_t = 256)]
    max_hot_mib: usize,
    /// Most node connections at once; more are refused.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Correlate new anomalies into incidents (and run RCA) this often (seconds).
    #[arg(long, default_value_t = 5)]
    correlate_interval_secs: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Rca(args) => {
            // Bad input is the user's to fix: a clear message and exit code 2, like
            // clap's own usage errors, and no output file.
            if let Err(e) = rca_offline(&args) {
                eprintln!("aggregator rca: {e:#}");
                std::process::exit(2);
            }
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

/// `aggregator rca`: the same engine as the online path, fed from CSV files.
fn rca_offline(args: &RcaArgs) -> anyhow::Result<()> {
    use aggregator::rca;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let series = rca::parse_wide_csv(&read(&args.series)?)
        .with_context(|| format!("{}", args.series.display()))?;
    let edges = match &args.graph {
        Some(p) => rca::parse_edges_csv(&read(p)?).with_context(|| format!("{}", p.display()))?,
        None => Vec::new(),
    };
    let ts =
        |flag: &str, v: &str| rca::parse_timestamp(v).with_context(|| format!("--{flag} {v:?}"));
    let window = match (&args.from, &args.to) {
        (None, None) => None,
        (None, Some(_)) => anyhow::bail!("--to needs --from"),
        (Some(from), to) => {
            let from = ts("from", from)?;
            let to = match to {
                Some(t) => ts("to", t)?,
                None => series
                    .iter()
                    .filter_map(|s| s.points.last().map(|p| p.0))
                    .max()
                    .unwrap_or(from),
            };
            anyhow::ensure!(from <= to, "--from is after --to");
            Some((from, to))
        }
    };
    let input = rca::RcaInput {
        series,
        edges,
        window,
        events: Vec::new(),
    };
    let ranking = rca::rank(&input, &rca::RcaConfig::default());
    let json = serde_json::to_vec_pretty(&ranking)?;
    // Write beside the target and rename, so a reader never sees half a file.
    let tmp = args.out.with_extension("json.tmp");
    std::fs::write(&tmp, &json).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &args.out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", args.out.display()));
    }
    match ranking.ranking.first() {
        Some(c) => println!(
            "{}: {} ({}, score {:.2}) of {} components",
            args.out.display(),
            c.target,
            c.kind,
            c.score,
            ranking.components_considered
        ),
        None => println!("{}: no anomaly found", args.out.display()),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let mut cfg = StoreConfig::new(args.data_dir.clone());
    cfg.flush_interval = Duration::from_secs(args.flush_interval_secs.max(1));
    cfg.max_hot_rows = args.max_hot_rows;
    cfg.max_hot_bytes = args.max_hot_mib.saturating_mul(1024 * 1024);
    let (store, report) = Store::open(cfg, metrics.clone())
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        replayed_segments = report.segments,
        replayed_batches = report.batches,
        replayed_samples = report.samples,
        torn_tails = report.torn_tails,
        orphans_removed = report.orphans_removed,
        "store open"
    );

    let quic_config = ingest::tls::server_config(&args.ca, &args.cert, &args.key)?;
    let endpoint = ingest::bind(args.quic_listen, quic_config)?;
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", args.http_listen))?;
    let hub = aggregator::correlate::Hub::new(Default::default(), 1024);
    let app = aggregator::api::router_with_hub(
        store.clone(),
        metrics.clone(),
        QueryLimits::default(),
        hub.clone(),
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limits = IngestLimits {
        max_connections: args.max_connections,
        ..Default::default()
    };
    let ingest_task = tokio::spawn(ingest::run(
        endpoint.clone(),
        store.clone(),
        metrics.clone(),
        limits,
        shutdown_rx.clone(),
    ));
    let flusher = tokio::spawn(store.clone().run_flusher(shutdown_rx.clone()));
    let correlator = tokio::spawn(
        aggregator::correlate::Driver::new(
            store.clone(),
            hub,
            aggregator::correlate::DriverConfig {
                interval: Duration::from_secs(args.correlate_interval_secs.max(1)),
                ..Default::default()
            },
        )
        .run(shutdown_rx.clone()),
    );
    let mut http_shutdown = shutdown_rx.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.changed().await;
            })
            .await
    });
    tracing::info!(http = %args.http_listen, quic = %args.quic_listen, "aggregator ready");

    wait_for_signal().await?;
    tracing::info!("shutting down: closing ingest, flushing to Parquet");
    let _ = shutdown_tx.send(true);
    let _ = ingest_task.await;
    endpoint.wait_idle().await;
    let _ = flusher.await;
    let _ = correlator.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
