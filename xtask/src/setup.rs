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
    /// `rustup component list --toolchain <toolchain> --installed` lists this component.
    ToolchainComponent {
        toolchain: &'static str,
        component: &'static str,
    },
}

/// How to install a requirement that is missing.
enum Install {
    /// Debian packages, through `apt-get install`.
    Apt(&'static [&'static str]),
    /// A component of the active toolchain, through `rustup component add`.
    RustupComponent(&'static str),
    /// A component of another toolchain, installing that toolchain (minimal profile) when
    /// it is missing: `rustup toolchain install <toolchain> --profile minimal --component ..`.
    ToolchainComponent {
        toolchain: &'static str,
        component: &'static str,
    },
    /// A binary crate, through `cargo install <krate> <args>` with extra environment.
    Cargo {
        krate: &'static str,
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
    },
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
        name: "make",
        check: Check::Program("make", &["--version"]),
        install: Install::Apt(&["make"]),
        why: "builds jemalloc (tikv-jemalloc-sys), the aggregator's allocator",
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

/// The nightly that builds the eBPF programs, pinned in `ebpf/TOOLCHAIN` (read by
/// `node-agent/build.rs` too). Pinned, not `nightly`: bpf-linker links with LLVM 22, and a
/// newer nightly's LLVM 23 bitcode fails to link ("Invalid record"). Installing a dated
/// toolchain never touches the machine's own `nightly`.
pub const EBPF_TOOLCHAIN: &str = include_str!("../../ebpf/TOOLCHAIN").trim_ascii();

/// EBPF_REQUIREMENTS: what building the eBPF programs (`ebpf/`, built by
/// `node-agent/build.rs`) needs. Installed in this order: LLVM (apt), the pinned nightly with `rust-src`
/// (`-Z build-std=core` for bpfel), then bpf-linker (links against LLVM 22; takes a few
/// minutes once). These rows are soft: when one cannot be installed, setup says so and goes
/// on, and the agent builds without eBPF programs (its eBPF collectors report themselves
/// unavailable), so the rest of the project still builds and tests.
const EBPF_REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "llvm-22",
        check: Check::Program("llvm-config-22", &["--version"]),
        install: Install::Apt(&["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev"]),
        why: "LLVM 22 libraries that bpf-linker links against",
    },
    Requirement {
        name: "rust-src",
        check: Check::ToolchainComponent {
            toolchain: EBPF_TOOLCHAIN,
            component: "rust-src",
        },
        install: Install::ToolchainComponent {
            toolchain: EBPF_TOOLCHAIN,
            component: "rust-src",
        },
        why: "pinned nightly with core sources: the eBPF programs build core for bpfel",
    },
    Requirement {
        name: "bpf-linker",
        check: Check::Program("bpf-linker", &["--version"]),
        install: Install::Cargo {
            krate: "bpf-linker",
            args: &["--no-default-features", "--features", "llvm-22"],
            env: &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
        },
        why: "links the eBPF programs (bpfel objects with BTF)",
    },
];

impl Check {
    fn passes(&self) -> bool {
        match self {
            Check::Program(program, args) => cmd::succeeds(program, args),
            Check::Cargo(args) => {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
                cmd::succeeds(&cargo, args)
            }
            Check::ToolchainComponent {
                toolchain,
                component,
            } => Command::new("rustup")
                .args(["component", "list", "--installed", "--toolchain", toolchain])
                .stderr(std::process::Stdio::null())
                .output()
                .is_ok_and(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .any(|l| l.trim() == *component)
                }),
        }
    }
}

/// Check every requirement and install the missing ones.
pub fn run() -> anyhow::Result<()> {
    run_required()?;
    run_ebpf();
    Ok(())
}

/// The rows every build needs: installed together, and setup fails if one stays missing.
fn run_required() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for req in REQUIREMENTS {
        let ok = req.check.passes();
        let state = if ok { "ok" } else { "missing" };
        println!("xtask: setup: {:<10} {state:<8} ({})", req.name, req.why);
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
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    let components: Vec<&str> = missing
        .iter()
        .filter_map(|req| match req.install {
            Install::RustupComponent(c) => Some(c),
            _ => None,
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

/// The eBPF toolchain rows, one at a time in order (bpf-linker needs LLVM first). Soft: a
/// row that cannot be installed is reported and skipped, never fatal.
fn run_ebpf() {
    let mut installed = Vec::new();
    let mut failed = Vec::new();
    for req in EBPF_REQUIREMENTS {
        if req.check.passes() {
            println!("xtask: setup: {:<10} ok       ({})", req.name, req.why);
            continue;
        }
        println!("xtask: setup: {:<10} missing  ({})", req.name, req.why);
        let res = match &req.install {
            Install::Apt(pkgs) => install_apt(pkgs),
            Install::RustupComponent(c) => {
                cmd::run(Command::new("rustup").args(["component", "add", c]))
            }
            Install::ToolchainComponent {
                toolchain,
                component,
            } => cmd::run(Command::new("rustup").args([
                "toolchain",
                "install",
                toolchain,
                "--profile",
                "minimal",
                "--component",
                component,
            ])),
            Install::Cargo { krate, args, env } => {
                let mut c = cmd::cargo();
                c.args(["install", krate]).args(*args);
                for (k, v) in *env {
                    c.env(k, v);
                }
                cmd::run(&mut c)
            }
        };
        match res {
            Ok(()) if req.check.passes() => installed.push(req.name),
            Ok(()) => failed.push(format!(
                "{} (installed but its check still fails)",
                req.name
            )),
            Err(e) => failed.push(format!("{} ({e:#})", req.name)),
        }
    }
    if !installed.is_empty() {
        println!("xtask: setup: installed {}", installed.join(", "));
    }
    if !failed.is_empty() {
        println!(
            "xtask: setup: WARNING: eBPF toolchain incomplete: {}. The node agent builds \
             without eBPF programs until this is fixed.",
            failed.join("; ")
        );
    }
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
