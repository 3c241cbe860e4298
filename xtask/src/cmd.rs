//! Running other programs: the workspace root, cargo through `$CARGO`, and one printed line
//! per command so that a log of any task reads as the list of what it did.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The workspace root: xtask's own manifest directory is `<root>/xtask`.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A cargo command run from the workspace root. `cargo xtask` sets `$CARGO` to the cargo
/// that runs us, so the same toolchain builds everything else.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(repo_root());
    cmd
}

/// The command line as a person would type it (program name without its directory).
pub fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut res = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for arg in cmd.get_args() {
        res.push(' ');
        res.push_str(&arg.to_string_lossy());
    }
    res
}

/// Print the command, run it with inherited stdio, and fail unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    println!("xtask: running `{line}`");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether `program args..` can be started and exits 0 (its output is discarded).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
