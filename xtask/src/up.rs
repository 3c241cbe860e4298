//! `cargo xtask up`: local mode. One aggregator and one node agent for this host, on
//! loopback, with a fresh development PKI, until Ctrl-C.
//!
//! Steps: setup, build both binaries, PKI under `<data-dir>/pki`, start the aggregator and
//! wait for its `/healthz`, start the agent and wait for its `/healthz`, print where to
//! query, then wait for Ctrl-C / SIGTERM / `--duration` / a child dying. Stopping goes in
//! reverse start order so the agent can still deliver what it holds: SIGTERM the agent and
//! wait (20 s, then SIGKILL), then SIGTERM the aggregator and wait (30 s, then SIGKILL).
//!
//! Children run in their own process group, so the terminal's Ctrl-C reaches only xtask,
//! which then stops them in order; they also get SIGTERM if xtask itself dies.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::{certs, cmd, setup};

/// How often the wait loops look at children, health endpoints and the stop flag.
const POLL: Duration = Duration::from_millis(200);
const AGGREGATOR_READY_WITHIN: Duration = Duration::from_secs(60);
const AGENT_READY_WITHIN: Duration = Duration::from_secs(30);
const AGENT_STOP_GRACE: Duration = Duration::from_secs(20);
const AGGREGATOR_STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Where the PKI, the logs and the aggregator's data go [default: data/ in the workspace root].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Aggregator HTTP port (SQL API, /healthz) on 127.0.0.1.
    #[arg(long, value_name = "N", default_value_t = 8000)]
    http_port: u16,
    /// Aggregator QUIC ingest port (UDP) on 127.0.0.1.
    #[arg(long, value_name = "N", default_value_t = 4433)]
    quic_port: u16,
    /// Node agent metrics port (/metrics, /healthz) on 127.0.0.1.
    #[arg(long, value_name = "N", default_value_t = 9001)]
    metrics_port: u16,
    /// Stop by itself after this many seconds of running [default: run until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Node name of this host's agent [default: the hostname].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Build and run the debug profile instead of release.
    #[arg(long)]
    debug: bool,
}

/// Set from the SIGINT/SIGTERM handler; the wait loops poll it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// A child we started, with where its output goes.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    stop_grace: Duration,
    /// Set once the child has been reaped.
    exited: Option<ExitStatus>,
}

/// Why the run ended when it ended well.
enum Ending {
    Signal,
    DurationElapsed,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    setup::run()?;

    let profile = if args.debug { "debug" } else { "release" };
    let mut build = cmd::cargo();
    build.arg("build");
    if !args.debug {
        build.arg("--release");
    }
    build.args(["-p", "aggregator", "-p", "node-agent"]);
    cmd::run(&mut build)?;
    let bin_dir = target_dir()?.join(profile);
    let aggregator_bin = bin_dir.join("aggregator");
    let agent_bin = bin_dir.join("node-agent");
    for bin in [&aggregator_bin, &agent_bin] {
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    println!("xtask: using binaries in {}", bin_dir.display());

    let data_dir = match &args.data_dir {
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("bad --data-dir {}", dir.display()))?
        }
        None => cmd::repo_root().join("data"),
    };
    let node = match &args.node {
        Some(node) => node.clone(),
        None => hostname()?,
    };
    let store_dir = data_dir.join("aggregator");
    let agent_dir = data_dir.join("node-agent");
    let log_dir = data_dir.join("logs");
    for dir in [&store_dir, &agent_dir, &log_dir] {
        println!("xtask: creating {}", dir.display());
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let pki = certs::ensure(&data_dir.join("pki"), std::slice::from_ref(&node))?;
    let (node_cert, node_key) = pki.node(&node);

    catch_stop_signals()?;
    let mut procs = Vec::new();

    let outcome = (|| {
        let mut aggregator = Command::new(&aggregator_bin);
        aggregator
            .arg("serve")
            .arg("--data-dir")
            .arg(&store_dir)
            .args(["--http-listen", &format!("127.0.0.1:{}", args.http_port)])
            .args(["--quic-listen", &format!("127.0.0.1:{}", args.quic_port)])
            .arg("--ca")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.aggregator_cert)
            .arg("--key")
            .arg(&pki.aggregator_key)
            .current_dir(&store_dir);
        let log = log_dir.join("aggregator.log");
        procs.push(spawn("aggregator", aggregator, log, AGGREGATOR_STOP_GRACE)?);
        let url = format!("http://127.0.0.1:{}/healthz", args.http_port);
        if !wait_ready(&mut procs, &url, AGGREGATOR_READY_WITHIN)? {
            return Ok(Ending::Signal);
        }

        let mut agent = Command::new(&agent_bin);
        agent
            .arg("run")
            .args(["--aggregator", &format!("127.0.0.1:{}", args.quic_port)])
            .args(["--server-name", "localhost"])
            .arg("--ca")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&node_cert)
            .arg("--key")
            .arg(&node_key)
            .args(["--node", &node])
            .args(["--interval-secs", "1", "--batch-secs", "5"])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", args.metrics_port),
            ])
            // The crash-safe spool of unacked batches lives under data/ too.
            .arg("--spool-dir")
            .arg(agent_dir.join("spool"))
            .current_dir(&agent_dir);
        let log = log_dir.join("node-agent.log");
        procs.push(spawn("node-agent", agent, log, AGENT_STOP_GRACE)?);
        let url = format!("http://127.0.0.1:{}/healthz", args.metrics_port);
        if !wait_ready(&mut procs, &url, AGENT_READY_WITHIN)? {
            return Ok(Ending::Signal);
        }

        print_where_to_query(args, &node, &log_dir);
        wait_for_end(&mut procs, args.duration.map(Duration::from_secs))
    })();

    match &outcome {
        Ok(Ending::Signal) => println!("xtask: caught a stop signal; stopping"),
        Ok(Ending::DurationElapsed) => println!("xtask: --duration elapsed; stopping"),
        Err(e) => println!("xtask: {e:#}; stopping"),
    }
    let stopped = stop_all(&mut procs);
    outcome?;
    stopped?;
    println!(
        "xtask: stopped cleanly; data and logs are in {}",
        data_dir.display()
    );
    Ok(())
}

/// Cargo's target directory (it may be moved by `CARGO_TARGET_DIR` or config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let mut metadata = cmd::cargo();
    metadata.args(["metadata", "--format-version", "1", "--no-deps"]);
    let out = metadata
        .output()
        .context("could not run `cargo metadata`")?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("`cargo metadata` printed bad JSON")?;
    let dir = json["target_directory"]
        .as_str()
        .context("`cargo metadata` gave no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn hostname() -> anyhow::Result<String> {
    let path = "/proc/sys/kernel/hostname";
    let name = fs::read_to_string(path).with_context(|| format!("could not read {path}"))?;
    let name = name.trim();
    if name.is_empty() {
        bail!("{path} is empty; pass --node NAME");
    }
    Ok(name.to_string())
}

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

/// Start `cmd` with its stdout and stderr going to `log` (truncated).
fn spawn(
    name: &'static str,
    mut cmd: Command,
    log: PathBuf,
    stop_grace: Duration,
) -> anyhow::Result<Proc> {
    let out = File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("could not reopen {}", log.display()))?;
    // NO_COLOR: the logs are files, and ANSI colour codes make them hard to read.
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the
    // kernel SIGTERM the child if xtask dies without stopping it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    println!("xtask: starting {name}: `{}`", cmd::display(&cmd));
    println!("xtask: {name} log: {}", log.display());
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {name}"))?;
    Ok(Proc {
        name,
        child,
        log,
        stop_grace,
        exited: None,
    })
}

/// Wait for the last started process to answer 200 on `url`. `Ok(false)` means a stop
/// signal came first; any child exiting or the time running out is an error.
fn wait_ready(procs: &mut [Proc], url: &str, limit: Duration) -> anyhow::Result<bool> {
    let name = procs.last().map_or("?", |p| p.name);
    println!(
        "xtask: waiting for {name} at {url} (up to {} s)",
        limit.as_secs()
    );
    let http = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .proxy(None)
        .build()
        .new_agent();
    let deadline = Instant::now() + limit;
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(false);
        }
        check_children(procs)?;
        if matches!(http.get(url).call(), Ok(resp) if resp.status() == 200) {
            println!("xtask: {name} is ready");
            return Ok(true);
        }
        if Instant::now() >= deadline {
            bail!("{name} was not ready within {} s", limit.as_secs());
        }
        thread::sleep(POLL);
    }
}

/// Fail if any child has exited, saying which and showing the end of its log.
fn check_children(procs: &mut [Proc]) -> anyhow::Result<()> {
    for proc in procs.iter_mut() {
        if let Some(status) = proc.child.try_wait()? {
            proc.exited = Some(status);
            print_log_tail(&proc.log);
            return Err(anyhow!(
                "{} exited unexpectedly ({status}); its log is {}",
                proc.name,
                proc.log.display()
            ));
        }
    }
    Ok(())
}

fn print_log_tail(log: &Path) {
    const N_LINES: usize = 20;
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let first_idx = lines.len().saturating_sub(N_LINES);
    println!("xtask: last lines of {}:", log.display());
    for line in &lines[first_idx..] {
        println!("    {line}");
    }
}

fn print_where_to_query(args: &Args, node: &str, log_dir: &Path) {
    let port = args.http_port;
    println!();
    println!(
        "xtask: up: aggregator http://127.0.0.1:{port} (QUIC 127.0.0.1:{}/udp)",
        args.quic_port
    );
    println!(
        "xtask: up: node agent {node}: http://127.0.0.1:{}/metrics",
        args.metrics_port
    );
    println!("xtask: up: logs in {}", log_dir.display());
    println!("xtask: up: try (data arrives in batches every ~5 s):");
    println!(
        r#"  curl -s localhost:{port}/api/v1/sql -H 'content-type: application/json' -d '{{"sql":"SELECT metric, avg(value) FROM samples WHERE entity = '\''host'\'' GROUP BY metric"}}'"#
    );
    println!("xtask: up: Ctrl-C to stop");
    println!();
}

/// Wait for a stop signal, `duration` to pass, or a child to die (an error).
fn wait_for_end(procs: &mut [Proc], duration: Option<Duration>) -> anyhow::Result<Ending> {
    let deadline = duration.map(|d| Instant::now() + d);
    loop {
        if STOP.load(Ordering::SeqCst) {
            return Ok(Ending::Signal);
        }
        check_children(procs)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Ending::DurationElapsed);
        }
        thread::sleep(POLL);
    }
}

/// Stop the children in reverse start order. Fails if one needed SIGKILL or exited non-zero.
fn stop_all(procs: &mut [Proc]) -> anyhow::Result<()> {
    let mut unclean = Vec::new();
    for proc in procs.iter_mut().rev() {
        if proc.exited.is_some() {
            continue;
        }
        match stop(proc) {
            Ok(status) if status.success() => println!("xtask: {} exited ({status})", proc.name),
            Ok(status) => {
                println!(
                    "xtask: {} exited badly ({status}); see {}",
                    proc.name,
                    proc.log.display()
                );
                unclean.push(proc.name);
            }
            Err(e) => {
                println!("xtask: {}: {e:#}", proc.name);
                unclean.push(proc.name);
            }
        }
    }
    if !unclean.is_empty() {
        bail!("did not stop cleanly: {}", unclean.join(", "));
    }
    Ok(())
}

/// SIGTERM, wait up to the grace period, then SIGKILL (an error after the kill).
fn stop(proc: &mut Proc) -> anyhow::Result<ExitStatus> {
    let pid = libc::pid_t::try_from(proc.child.id()).context("pid out of range")?;
    println!(
        "xtask: stopping {} (SIGTERM, up to {} s)",
        proc.name,
        proc.stop_grace.as_secs()
    );
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child, so it
    // cannot have been reused.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == -1 {
        let err = std::io::Error::last_os_error();
        println!("xtask: SIGTERM to {} failed: {err}", proc.name);
    }
    let deadline = Instant::now() + proc.stop_grace;
    while Instant::now() < deadline {
        if let Some(status) = proc.child.try_wait()? {
            proc.exited = Some(status);
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "xtask: {} still running after {} s; SIGKILL",
        proc.name,
        proc.stop_grace.as_secs()
    );
    proc.child.kill().context("SIGKILL failed")?;
    let status = proc.child.wait()?;
    proc.exited = Some(status);
    bail!("had to be killed ({status})")
}
