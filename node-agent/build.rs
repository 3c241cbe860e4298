//! Builds the eBPF programs (`ebpf/`) for bpfel with aya-build and leaves the object in
//! `OUT_DIR/ebpf`, which `collect::ebpf` embeds with `include_bytes_aligned!`.
//!
//! The agent must build for everyone, with or without the eBPF toolchain (nightly with
//! `rust-src`, and `bpf-linker`). When a piece is missing, or the eBPF build fails, this
//! prints one `cargo:warning=` naming the fix and writes an **empty** object: the agent then
//! runs without its eBPF collectors and says so at start ("agent built without eBPF
//! programs"). `SCARLET_EBPF=0` skips the eBPF build on purpose; `SCARLET_EBPF=require` makes
//! a failed eBPF build fail the agent's build (for CI jobs that must ship the programs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const EBPF_PACKAGE: &str = "ebpf";
/// The file naming the pinned nightly that builds the eBPF programs (`rustup run <it> ..`).
/// Pinned because bpf-linker links with LLVM 22: a newer nightly emits LLVM 23 bitcode
/// that it cannot read ("Invalid record"). `cargo xtask setup` installs the same one.
const TOOLCHAIN_FILE: &str = "../ebpf/TOOLCHAIN";

fn main() {
    println!("cargo:rerun-if-env-changed=SCARLET_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed={TOOLCHAIN_FILE}");
    // Installing bpf-linker later (`cargo xtask setup`) must rebuild us: it lands here.
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        let bin = home.join("bin");
        if bin.is_dir() {
            println!("cargo:rerun-if-changed={}", bin.display());
        }
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join(EBPF_PACKAGE);
    let mode = std::env::var("SCARLET_EBPF").unwrap_or_default();

    let res = if mode == "0" {
        Err("SCARLET_EBPF=0".to_string())
    } else {
        build(&object)
    };
    if let Err(why) = res {
        if mode == "require" {
            panic!("eBPF programs could not be built and SCARLET_EBPF=require: {why}");
        }
        println!(
            "cargo:warning=node-agent: building without eBPF programs ({why}); \
             run `cargo xtask setup` to install the eBPF toolchain"
        );
        // An empty object: the loader reports "built without eBPF programs" at run time.
        std::fs::write(&object, b"").expect("write empty eBPF object to OUT_DIR");
    }
}

/// Checks the toolchain pieces, then builds the `ebpf` package with aya-build.
fn build(object: &Path) -> Result<(), String> {
    let toolchain = std::fs::read_to_string(TOOLCHAIN_FILE)
        .map_err(|e| format!("cannot read {TOOLCHAIN_FILE}: {e}"))?;
    let toolchain = toolchain.trim();
    if let Some(missing) = missing_tool(toolchain) {
        return Err(missing);
    }
    let metadata = aya_build_metadata()?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| format!("package `{EBPF_PACKAGE}` not in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or("ebpf manifest path has no parent")?
        .to_string();
    // A stale object from an earlier successful build must not survive a failed one.
    let _ = std::fs::remove_file(object);
    let ebpf = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(toolchain))
        .map_err(|e| format!("aya-build failed: {e:#}"))?;
    if !object.exists() {
        // AYA_BUILD_SKIP=1 makes aya-build return Ok without an object.
        return Err("aya-build produced no object (AYA_BUILD_SKIP set?)".to_string());
    }
    Ok(())
}

fn aya_build_metadata() -> Result<cargo_metadata::Metadata, String> {
    cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .map_err(|e| format!("cargo metadata failed: {e}"))
}

/// The first missing piece of the eBPF toolchain, as a sentence, or `None`.
fn missing_tool(toolchain: &str) -> Option<String> {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if runs("bpf-linker", &["--version"]).is_none() {
        return Some("bpf-linker not found on PATH".to_string());
    }
    match runs(
        "rustup",
        &["component", "list", "--toolchain", toolchain, "--installed"],
    ) {
        None => Some(format!("rustup or the {toolchain} toolchain is missing")),
        Some(list) if !list.lines().any(|l| l.starts_with("rust-src")) => {
            Some(format!("rust-src is not installed for {toolchain}"))
        }
        Some(_) => None,
    }
}
