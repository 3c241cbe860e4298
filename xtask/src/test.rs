//! `cargo xtask test`: the one test command the README gives. Runs `setup`, then
//! `cargo test --workspace` (extra arguments are appended; a `-p` replaces `--workspace`),
//! then clippy with warnings denied and the rustfmt check. Every step runs even when an
//! earlier one failed, so one run shows all that is wrong; the task fails if any step
//! failed. `ci` runs the same steps.

use std::time::Instant;

use anyhow::bail;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Only run the tests: skip clippy and the rustfmt check.
    #[arg(long)]
    pub quick: bool,
    /// Extra arguments for `cargo test`, e.g. `-p common -- --nocapture`. A leading `--` ends
    /// xtask's own options, so with no cargo options write `cargo xtask test -- -- --nocapture`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO_TEST_ARGS"
    )]
    pub cargo_test_args: Vec<String>,
}

/// Which checks to run and how to report them.
pub struct Checks<'a> {
    /// Skip clippy and rustfmt.
    pub quick: bool,
    /// Appended to `cargo test --workspace`.
    pub cargo_test_args: &'a [String],
    /// Print how long each step took (CI logs).
    pub timings: bool,
    /// The real-kernel tests fail, instead of skipping, when the agent was built without
    /// its eBPF programs (CI, as root, after setup installed the toolchain: a skip there
    /// would hide a broken eBPF build). Passed to the tests as `SCARLET_REQUIRE_EBPF=1`.
    pub require_ebpf: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    run_checks(&Checks {
        quick: args.quick,
        cargo_test_args: &args.cargo_test_args,
        timings: false,
        require_ebpf: false,
    })
}

/// Run setup and then every check; fail if any check failed.
pub fn run_checks(checks: &Checks) -> anyhow::Result<()> {
    let start = Instant::now();
    setup::run()?;
    if checks.timings {
        println!(
            "xtask: timing: setup took {:.1}s",
            start.elapsed().as_secs_f64()
        );
    }

    let mut steps = Vec::new();
    let mut test = cmd::cargo();
    test.arg("test");
    // `--workspace` would override a `-p` given here, so it is only the default.
    if !selects_packages(checks.cargo_test_args) {
        test.arg("--workspace");
    }
    test.args(checks.cargo_test_args);
    if checks.require_ebpf {
        test.env("SCARLET_REQUIRE_EBPF", "1");
    }
    steps.push(test);
    if !checks.quick {
        let mut clippy = cmd::cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        steps.push(clippy);
        let mut fmt = cmd::cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        steps.push(fmt);
    }

    let mut failed = Vec::new();
    for mut step in steps {
        let step_start = Instant::now();
        let res = cmd::run(&mut step);
        let outcome = match &res {
            Ok(()) => "ok",
            Err(_) => "FAILED",
        };
        if checks.timings {
            println!(
                "xtask: timing: `{}` {outcome} in {:.1}s",
                cmd::display(&step),
                step_start.elapsed().as_secs_f64()
            );
        }
        if let Err(e) = res {
            println!("xtask: {e:#}");
            failed.push(cmd::display(&step));
        }
    }

    let total = start.elapsed().as_secs_f64();
    if !failed.is_empty() {
        bail!(
            "{} of the checks failed after {total:.1}s: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    println!("xtask: all checks passed in {total:.1}s");
    Ok(())
}

/// Whether cargo options in `args` (those before a `--`) choose the packages themselves.
fn selects_packages(args: &[String]) -> bool {
    args.iter().take_while(|a| *a != "--").any(|a| {
        a.starts_with("-p")
            || a.starts_with("--package")
            || a.starts_with("--manifest-path")
            || a == "--workspace"
            || a == "--all"
    })
}

#[cfg(test)]
mod tests {
    use super::selects_packages;

    fn selects(args: &[&str]) -> bool {
        selects_packages(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn package_options_replace_the_workspace_default() {
        assert!(!selects(&[]));
        assert!(!selects(&["--release", "--", "-p"]));
        assert!(selects(&["-p", "common"]));
        assert!(selects(&["-pcommon"]));
        assert!(selects(&["--package=common", "--", "--nocapture"]));
        assert!(selects(&["--workspace", "--exclude", "benches"]));
    }
}
