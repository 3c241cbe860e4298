//! `cargo xtask e2e <suite>`: end-to-end suites that take longer than `cargo xtask test`.
//!
//! - `faults`: the fault-injection tests (`tests/tests/faults.rs`: network partition, lossy
//!   link, aggregator disk full, corrupted spool) with the full 60 s partition
//!   (`FAULT_PARTITION_SECS=60`, unless already set), one test at a time. They need root
//!   (network namespaces, tc netem, tmpfs mounts); without it each test says "skipped".
//!
//! Extra arguments go to the test binary, e.g. `cargo xtask e2e faults -- --nocapture` or a
//! test name filter. How to run and read them: `docs/testing.md`.

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Fault injection with the full 60 s partition (`cargo test -p e2e --test faults`).
    Faults(Passthrough),
}

#[derive(clap::Args)]
struct Passthrough {
    /// Arguments for the test binary (a test name filter, `--nocapture`, ...).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.what {
        What::Faults(pass) => {
            let secs = std::env::var("FAULT_PARTITION_SECS").unwrap_or_else(|_| "60".into());
            println!("xtask: e2e: faults with FAULT_PARTITION_SECS={secs}");
            let mut test = cmd::cargo();
            test.env("FAULT_PARTITION_SECS", &secs)
                .args(["test", "-p", "e2e", "--test", "faults", "--"])
                .arg("--test-threads=1")
                .args(pass.args.iter().filter(|a| *a != "--"));
            cmd::run(&mut test)
        }
    }
}
