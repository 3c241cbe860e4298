//! `cargo xtask setup`: make a fresh Debian 12 machine with only a Rust toolchain able to
//! build, run local mode and run the tests.
//!
//! What is needed is the table [`REQUIREMENTS`]: one row per tool with how to check for it,
//! how to install it and why we need it. A run checks every row, installs only the missing
//! ones (one `apt-get update`, then one `apt-get install` for all missing packages) and checks
//! them again. When nothing is missing it runs no package manager at all, so `up`, `test`
//! and `ci` call it every time.

use std::process::Command;

use anyhow::bail;

use crate::cmd;

/// How to tell that a requirement is there.
enum Check {
    /// This program with these arguments starts and exits 0.
    Program(&'static str, &'static [&'static str]),
    /// This cargo subcommand (run through `$CARGO`) starts and exits 0.
    Cargo(&'static [&'static str]),
}

/// How to install a requirement that is missing.
enum Install {
    /// Debian packages, through `apt-get install`.
    Apt(&'static [&'static str]),
    /// A component of the active toolchain, through `rustup component add`.
    RustupComponent(&'static str),
}

/// One prerequisite: a row of the table.
struct Requirement {
    name: &'static str,
    check: Check,
    install: Install,
    why: &'static str,
}

/// What the build, local mode and tests need today. Add a row when an issue needs a tool.
const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "cc",
        check: Check::Program("cc", &["--version"]),
        install: Install::Apt(&["build-essential"]),
        why: "C compiler for zstd-sys and ring",
    },
    Requirement {
        name: "clippy",
        check: Check::Cargo(&["clippy", "--version"]),
        install: Install::RustupComponent("clippy"),
        why: "lints in `cargo xtask test` and CI",
    },
    Requirement {
        name: "rustfmt",
        check: Check::Cargo(&["fmt", "--version"]),
        install: Install::RustupComponent("rustfmt"),
        why: "format check in `cargo xtask test` and CI",
    },
];

/// EBPF_REQUIREMENTS: rows the eBPF collectors will add when the `ebpf` crate lands. Left
/// empty on purpose until then (nothing here is installed today). Expected rows:
/// - `bpf-linker`: check `bpf-linker --version`; install `cargo install bpf-linker`
///   (needs a new `Install` variant); links the bpfel objects.
/// - `rust-src` for nightly: check `rustup component list --toolchain nightly --installed`;
///   install `rustup component add rust-src --toolchain nightly`; `-Z build-std=core`.
/// - `llvm-22-dev`: check `llvm-config-22 --version`; install apt `llvm-22-dev`; bpf-linker
///   links against it.
const EBPF_REQUIREMENTS: &[Requirement] = &[];

impl Check {
    fn passes(&self) -> bool {
        match self {
            Check::Program(program, args) => cmd::succeeds(program, args),
            Check::Cargo(args) => {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
                cmd::succeeds(&cargo, args)
            }
        }
    }
}

/// Check every requirement and install the missing ones.
pub fn run() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for req in REQUIREMENTS.iter().chain(EBPF_REQUIREMENTS) {
        let ok = req.check.passes();
        let state = if ok { "ok" } else { "missing" };
        println!("xtask: setup: {:<8} {state:<8} ({})", req.name, req.why);
        if !ok {
            missing.push(req);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let apt_packages: Vec<&str> = missing
        .iter()
        .filter_map(|req| match req.install {
            Install::Apt(pkgs) => Some(pkgs),
            Install::RustupComponent(_) => None,
        })
        .flatten()
        .copied()
        .collect();
    let components: Vec<&str> = missing
        .iter()
        .filter_map(|req| match req.install {
            Install::RustupComponent(c) => Some(c),
            Install::Apt(_) => None,
        })
        .collect();

    if !apt_packages.is_empty() {
        install_apt(&apt_packages)?;
    }
    if !components.is_empty() {
        cmd::run(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&components),
        )?;
    }

    let still_missing: Vec<&str> = missing
        .iter()
        .filter(|req| !req.check.passes())
        .map(|req| req.name)
        .collect();
    if !still_missing.is_empty() {
        bail!("still missing after install: {}", still_missing.join(", "));
    }
    println!(
        "xtask: setup: installed {}",
        missing
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `apt-get update` once, then install all `packages` in one go (through `sudo` when we
/// are not root).
fn install_apt(packages: &[&str]) -> anyhow::Result<()> {
    if !cmd::succeeds("apt-get", &["--version"]) {
        bail!(
            "apt-get not found; install these packages by hand: {}",
            packages.join(" ")
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let apt = |args: &[&str]| {
        let mut c = if is_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    cmd::run(&mut apt(&["update"]))?;
    cmd::run(apt(&["install", "-y", "--no-install-recommends"]).args(packages))?;
    Ok(())
}
