//! `cargo xtask bench <what>`: the project's benchmarks behind one command.
//!
//! - `agent`: the agent overhead harness ([`agent`]): CPU and memory of a real node agent
//!   shipping to a real aggregator, side by side with Prometheus node_exporter and Netdata
//!   measured in the same run on the same load. Writes `target/bench-agent.json`.
//! - `codec`, `ingest`: the criterion benches in `benches/benches/` (`cargo bench`).
//! - `detect`: the anomaly detectors' quality report (`benches` binary `detect-quality`).
//! - `ebpf-loss`: an event storm (process execs and loopback TCP connections at set rates)
//!   against a real agent with its eBPF collectors: generated vs stored, drops per reason,
//!   agent CPU and RSS ([`ebpf_loss`]). Writes `target/bench-ebpf-loss.json`.
//! - `ingest-nodes`: N simulated agents (10, 100, 1000) over real QUIC against the real
//!   aggregator process: samples/s, ack latency, aggregator RSS and CPU ([`ingest_nodes`]).
//!   Writes `target/bench-ingest-nodes.json`.
//! - `rca`: every fault scenario in `scenarios/` end to end, scored against the RCA ranking
//!   (top-1 / top-3 hits, time from fault to RCA). Writes `target/bench-rca.json`
//!   (`crate::scenario::suite`, docs/scenarios.md).
//!
//! Extra arguments of `codec`, `ingest` and `detect` go to the bench program itself, e.g.
//! `cargo xtask bench codec -- --sample-size 10` or a criterion filter.
//! Figures and how to read them: `docs/benchmarks.md`.

mod agent;
mod daemon;
mod ebpf_loss;
mod ingest_nodes;
mod peers;
mod procfs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Agent overhead: CPU and RSS of node-agent beside node_exporter and Netdata.
    Agent(agent::Args),
    /// Codec throughput and bytes per sample (`cargo bench -p benches --bench codec`).
    Codec(Passthrough),
    /// Ingest over QUIC into the aggregator (`cargo bench -p benches --bench ingest`).
    Ingest(Passthrough),
    /// Detector quality (`cargo run --release -p benches --bin detect-quality`).
    Detect(Passthrough),
    /// eBPF event loss under a storm of process execs and TCP connections (needs root).
    EbpfLoss(ebpf_loss::Args),
    /// Many-node ingest: N agents over QUIC against the aggregator process (RSS, samples/s).
    IngestNodes(ingest_nodes::Args),
    /// Root-cause ranking quality over the fault scenarios in scenarios/ (needs root).
    Rca(crate::scenario::suite::Args),
}

#[derive(clap::Args)]
struct Passthrough {
    /// Arguments for the bench program (criterion's options and filters, for example).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.what {
        What::Agent(args) => agent::run(args),
        What::IngestNodes(args) => ingest_nodes::run(args),
        What::EbpfLoss(args) => ebpf_loss::run(args),
        What::Rca(args) => crate::scenario::suite::run(args),
        What::Codec(pass) => cargo_bench("codec", &pass.args),
        What::Ingest(pass) => cargo_bench("ingest", &pass.args),
        What::Detect(pass) => {
            let mut run = cmd::cargo();
            run.args([
                "run",
                "--release",
                "-p",
                "benches",
                "--bin",
                "detect-quality",
            ]);
            if !pass.args.is_empty() {
                run.arg("--").args(&pass.args);
            }
            cmd::run(&mut run)
        }
    }
}

fn cargo_bench(bench: &str, args: &[String]) -> anyhow::Result<()> {
    let mut run = cmd::cargo();
    run.args(["bench", "-p", "benches", "--bench", bench]);
    if !args.is_empty() {
        run.arg("--").args(args);
    }
    cmd::run(&mut run)
}

/// Set from the SIGINT/SIGTERM handler; long loops poll it through [`check_interrupted`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn Ctrl-C and SIGTERM into an error at the next check, so that the guards stop what
/// the bench started instead of the process dying with them still running.
fn catch_stop_signals() -> anyhow::Result<()> {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if unsafe { libc::signal(signal, handler) } == libc::SIG_ERR {
            bail!("could not install a handler for signal {signal}");
        }
    }
    Ok(())
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// An HTTP client for loopback: no proxy, a timeout, and statuses left to the caller.
fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .new_agent()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Task};

    fn bench(argv: &[&str]) -> What {
        let full = ["cargo xtask", "bench"].iter().chain(argv);
        match Cli::try_parse_from(full).map(|cli| cli.task) {
            Ok(Task::Bench(args)) => args.what,
            Ok(_) => panic!("`bench {argv:?}` parsed as another task"),
            Err(e) => panic!("`bench {argv:?}` did not parse: {e}"),
        }
    }

    #[test]
    fn bench_programs_get_the_extra_arguments() {
        let pass = |argv: &[&str]| match bench(argv) {
            What::Codec(p) | What::Ingest(p) | What::Detect(p) => p.args,
            What::Agent(_) | What::Rca(_) | What::IngestNodes(_) | What::EbpfLoss(_) => {
                panic!("not a passthrough bench")
            }
        };
        assert!(pass(&["codec"]).is_empty());
        assert_eq!(
            pass(&["codec", "--sample-size", "10"]),
            ["--sample-size", "10"]
        );
        assert_eq!(
            pass(&["ingest", "--", "--sample-size", "10"]),
            ["--sample-size", "10"]
        );
        assert_eq!(pass(&["detect", "--seed", "3"]), ["--seed", "3"]);
    }

    #[test]
    fn ingest_nodes_options_parse() {
        let What::IngestNodes(args) =
            bench(&["ingest-nodes", "--nodes", "10,1000", "--", "--no-probe"])
        else {
            panic!("not the ingest-nodes bench");
        };
        assert_eq!(args.nodes, [10, 1000]);
        assert_eq!(args.secs, 30);
        assert_eq!(args.modes, ["realtime", "max"]);
        assert_eq!(args.args, ["--no-probe"]);
    }

    #[test]
    fn agent_options_parse() {
        let What::Agent(args) = bench(&[
            "agent",
            "--secs",
            "20",
            "--no-peers",
            "--agent-arg=--max-processes=0",
        ]) else {
            panic!("not the agent bench");
        };
        assert_eq!(args.secs, 20);
        assert_eq!(args.interval_secs, 1);
        assert!(args.no_peers);
        assert_eq!(args.agent_args, ["--max-processes=0"]);
        let full = ["cargo xtask", "bench", "agent", "--interval-secs", "0"];
        assert!(Cli::try_parse_from(full).is_err());
    }
}
