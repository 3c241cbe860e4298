//! The peer agents measured beside ours: Prometheus node_exporter and Netdata, both as
//! Debian packages them (installed with apt when missing), started by us on loopback ports
//! with their default collectors.
//!
//! - node_exporter collects only when scraped, so the harness scrapes its `/metrics` every
//!   interval, as a Prometheus server would (the scraper's own cost is not counted).
//! - Netdata collects on its own clock (`-t`) and stores what it collects in its own
//!   database; it runs in the foreground as root, with its cache, lib, log and user-config
//!   directories in the bench's temporary directory, the stock config and plugins of the
//!   package, the web server on 127.0.0.1 only, no registry and no anonymous statistics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::daemon::Daemon;

pub const NODE_EXPORTER_BIN: &str = "/usr/bin/prometheus-node-exporter";
pub const NETDATA_BIN: &str = "/usr/sbin/netdata";

/// A peer program from a Debian package.
pub struct Peer {
    pub name: &'static str,
    pub package: &'static str,
    pub bin: &'static str,
}

pub const NODE_EXPORTER: Peer = Peer {
    name: "node_exporter",
    package: "prometheus-node-exporter",
    bin: NODE_EXPORTER_BIN,
};

pub const NETDATA: Peer = Peer {
    name: "netdata",
    package: "netdata",
    bin: NETDATA_BIN,
};

/// Install the peers whose binaries are missing: one `apt-get update`, then one
/// `apt-get install` per package so that one failure does not stop the other. Returns,
/// per peer in order, why it cannot be measured (None: it is there).
pub fn ensure_installed(peers: &[&Peer], log_dir: &Path) -> Vec<Option<String>> {
    let missing: Vec<&Peer> = peers
        .iter()
        .copied()
        .filter(|p| !Path::new(p.bin).is_file())
        .collect();
    let mut why_not: Vec<(&str, String)> = Vec::new();
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let apt = |args: &[&str]| {
            let mut c = if is_root {
                Command::new("apt-get")
            } else {
                let mut c = Command::new("sudo");
                c.args(["-n", "apt-get"]);
                c
            };
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        let log = log_dir.join("apt.log");
        match run_logged(&mut apt(&["update"]), &log) {
            Err(e) => {
                for p in &missing {
                    why_not.push((p.name, format!("apt-get update failed: {e:#}")));
                }
            }
            Ok(()) => {
                for p in &missing {
                    println!(
                        "xtask: bench: installing Debian package {} (for {}, {} is missing)",
                        p.package, p.name, p.bin
                    );
                    let res = run_logged(
                        apt(&["install", "-y", "--no-install-recommends"]).arg(p.package),
                        &log,
                    );
                    match res {
                        Err(e) => why_not.push((p.name, format!("apt-get install failed: {e:#}"))),
                        Ok(()) if !Path::new(p.bin).is_file() => why_not.push((
                            p.name,
                            format!("{} installed but {} is missing", p.package, p.bin),
                        )),
                        Ok(()) => println!("xtask: bench: installed {}", p.package),
                    }
                }
            }
        }
    }
    peers
        .iter()
        .map(|p| {
            why_not
                .iter()
                .find(|(name, _)| *name == p.name)
                .map(|(_, why)| why.clone())
        })
        .collect()
}

/// Run `cmd` with its output appended to `log`; on failure the error holds the last line.
fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let line = crate::cmd::display(cmd);
    println!(
        "xtask: bench: running `{line}` (output in {})",
        log.display()
    );
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    let mut file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    std::io::Write::write_all(&mut file, &text)?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&text);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{} ({last})", out.status);
    }
    Ok(())
}

/// The first line a program prints for `flag` (its version), or "?".
pub fn version(bin: &Path, flag: &str) -> String {
    let Ok(out) = Command::new(bin).arg(flag).output() else {
        return "?".into();
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("?")
        .to_string()
}

/// Start node_exporter on 127.0.0.1:`port` with its default collectors.
pub fn start_node_exporter(port: u16, dir: &Path) -> anyhow::Result<Daemon> {
    let mut cmd = Command::new(NODE_EXPORTER_BIN);
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(dir);
    let mut daemon = Daemon::spawn(
        "node_exporter",
        cmd,
        &dir.join("node_exporter.log"),
        Duration::from_secs(10),
    )?;
    daemon.wait_ready(
        &format!("http://127.0.0.1:{port}/metrics"),
        Duration::from_secs(30),
    )?;
    Ok(daemon)
}

/// Start Netdata in the foreground on 127.0.0.1:`port`, collecting every `interval_secs`,
/// with its writable directories under `dir/netdata`.
pub fn start_netdata(port: u16, interval_secs: u64, dir: &Path) -> anyhow::Result<Daemon> {
    let root = dir.join("netdata");
    let sub = |name: &str| -> anyhow::Result<PathBuf> {
        let path = root.join(name);
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(path)
    };
    let (config, log, cache, lib, lock) = (
        sub("etc")?,
        sub("log")?,
        sub("cache")?,
        sub("lib")?,
        sub("lock")?,
    );
    // Netdata runs its anonymous-statistics script unless this file exists in the user
    // config directory (or DO_NOT_TRACK is set; we do both). There is no network anyway.
    fs::write(config.join(".opt-out-from-anonymous-statistics"), "")?;
    let conf = format!(
        "# Written by `cargo xtask bench agent`: defaults, but local and in a temp dir.\n\
         [global]\n\
         \trun as user = root\n\
         [directories]\n\
         \tconfig = {config}\n\
         \tstock config = /usr/lib/netdata/conf.d\n\
         \tlog = {log}\n\
         \tcache = {cache}\n\
         \tlib = {lib}\n\
         \tlock = {lock}\n\
         \thome = {root}\n\
         \tplugins = /usr/lib/netdata/plugins.d\n\
         \tweb = /usr/share/netdata/web\n\
         [web]\n\
         \tbind to = 127.0.0.1:{port}\n\
         [registry]\n\
         \tenabled = no\n",
        config = config.display(),
        log = log.display(),
        cache = cache.display(),
        lib = lib.display(),
        lock = lock.display(),
        root = root.display(),
    );
    let conf_path = root.join("netdata.conf");
    fs::write(&conf_path, conf)
        .with_context(|| format!("could not write {}", conf_path.display()))?;

    let mut cmd = Command::new(NETDATA_BIN);
    cmd.arg("-D")
        .arg("-c")
        .arg(&conf_path)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", "root", "-t", &interval_secs.to_string()])
        .env("DO_NOT_TRACK", "1")
        .current_dir(&root);
    let mut daemon = Daemon::spawn(
        "netdata",
        cmd,
        &dir.join("netdata.log"),
        Duration::from_secs(20),
    )?;
    daemon
        .wait_ready(
            &format!("http://127.0.0.1:{port}/api/v1/info"),
            Duration::from_secs(60),
        )
        .with_context(|| format!("netdata did not start; see {}", log.display()))?;
    Ok(daemon)
}

/// Peer processes already running before we start ours (a packaged service, say): they
/// load the machine during the run, so the report mentions them.
pub fn already_running() -> Vec<String> {
    let mut res = Vec::new();
    for p in super::procfs::snapshot() {
        let Ok(comm) = fs::read_to_string(format!("/proc/{}/comm", p.pid)) else {
            continue;
        };
        let comm = comm.trim();
        if comm == "netdata" || comm.starts_with("prometheus-nod") || comm == "node_exporter" {
            res.push(format!("{comm} (pid {})", p.pid));
        }
    }
    res
}
