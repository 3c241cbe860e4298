//! `cargo xtask`: the project's chores, written in Rust so that cargo is all they need.
//!
//! `.cargo/config.toml` aliases `cargo xtask` to `cargo run --package xtask --`. Each task
//! lives in its own module; this file only parses the command line and dispatches. Every
//! step a task takes prints one line saying what it does, prefixed `xtask:`.
//!
//! - `setup`: check (and install what is missing) what building, local mode and tests need.
//! - `certs`: write a development PKI (CA, aggregator, one certificate per node).
//! - `up`: local mode: build, make PKI, run the aggregator and one node agent for this host.
//! - `test`: what the README's test command runs: tests, clippy, rustfmt.
//! - `ci`: what `.ci/run` calls: every check, with a timing line per step.
//! - `bench`: benchmarks: agent overhead beside peer agents, codec, ingest, detection.
//! - `fuzz`: the cargo-fuzz targets in `fuzz/` for N seconds each.
//! - `e2e`: long end-to-end suites (`faults`: partition, lossy link, disk full, bad spool).
//! - `scenario`: one fault scenario (services in namespaces, real agents, a fault) scored
//!   against the aggregator's root-cause ranking (`docs/scenarios.md`).

mod bench;
mod certs;
mod ci;
mod cmd;
mod e2e;
mod fuzz;
mod scenario;
mod setup;
mod test;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Auto-DevOps project chores",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check the build and test prerequisites and install the missing ones (apt, rustup).
    Setup,
    /// Write a development PKI: CA, aggregator certificate, one client certificate per node.
    Certs(certs::Args),
    /// Local mode: build, make PKI, run the aggregator and a node agent for this host.
    Up(up::Args),
    /// Run setup, the workspace tests, clippy and rustfmt (what the README's test command runs).
    Test(test::Args),
    /// Everything `test` checks, with a timing line per step (what `.ci/run` calls).
    Ci,
    /// Benchmarks: agent overhead beside node_exporter and Netdata, codec, ingest, detect.
    Bench(bench::Args),
    /// Fuzz the decoders (wire frames, batch codec, agent spool) with cargo-fuzz.
    Fuzz(fuzz::Args),
    /// Long end-to-end suites: `faults` (partition, lossy link, disk full, corrupted spool).
    E2e(e2e::Args),
    /// Fault scenarios: `run FILE.yaml --out RESULT.json` scores the RCA on one (docs/scenarios.md).
    Scenario(scenario::Args),
}

fn main() -> ExitCode {
    let res = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Certs(args) => certs::run(&args),
        Task::Up(args) => up::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Ci => ci::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::E2e(args) => e2e::run(&args),
        Task::Scenario(args) => scenario::run(&args),
    };
    // Print the error chain ourselves: anyhow's `main` would add a backtrace whenever
    // RUST_BACKTRACE is set, which says nothing useful about a failed chore.
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cargo_test_args(argv: &[&str]) -> (bool, Vec<String>) {
        let full = ["cargo xtask", "test"].iter().chain(argv);
        match Cli::try_parse_from(full).map(|cli| cli.task) {
            Ok(Task::Test(args)) => (args.quick, args.cargo_test_args),
            _ => panic!("`test {argv:?}` did not parse as the test task"),
        }
    }

    #[test]
    fn test_task_forwards_extra_arguments_to_cargo_test() {
        assert_eq!(cargo_test_args(&[]), (false, vec![]));
        assert_eq!(cargo_test_args(&["--quick"]), (true, vec![]));
        let (quick, args) = cargo_test_args(&["--quick", "-p", "common", "--", "--nocapture"]);
        assert!(quick);
        assert_eq!(args, ["-p", "common", "--", "--nocapture"]);
        // A leading `--` ends xtask's own options, so the test binaries' `--` comes second.
        let (_, args) = cargo_test_args(&["--", "--", "--nocapture"]);
        assert_eq!(args, ["--", "--nocapture"]);
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
