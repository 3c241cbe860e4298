//! `cargo xtask bench ingest-nodes`: N simulated agents over real QUIC on loopback against
//! the real `aggregator` binary in its own process; samples/s acked, ack latency,
//! aggregator RSS and CPU for each N. The load generator is the `benches` binary
//! `ingest-nodes` (benches/src/bin/ingest_nodes.rs); this builds both in release and runs
//! it. Writes `target/bench-ingest-nodes.json`; figures in docs/benchmarks.md.

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    /// Simulated node counts, one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub nodes: Vec<usize>,
    /// Seconds of the real-time phase (one 5 s batch per node per 5 s).
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Phases: `realtime` (the load N nodes make) and `max` (back to back).
    #[arg(long, value_delimiter = ',', default_value = "realtime,max")]
    pub modes: Vec<String>,
    /// More options for the generator (`--distinct`, `--max-batches`, `--handshakes`,
    /// `--no-probe`, `--out`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "aggregator",
        "--bin",
        "aggregator",
        "-p",
        "benches",
        "--bin",
        "ingest-nodes",
    ]);
    cmd::run(&mut build)?;
    let nodes: Vec<String> = args.nodes.iter().map(|n| n.to_string()).collect();
    let mut run = cmd::cargo();
    run.args([
        "run",
        "--release",
        "-q",
        "-p",
        "benches",
        "--bin",
        "ingest-nodes",
        "--",
    ]);
    run.arg("--nodes").arg(nodes.join(","));
    run.arg("--secs").arg(args.secs.to_string());
    run.arg("--modes").arg(args.modes.join(","));
    run.args(&args.args);
    cmd::run(&mut run)
}
