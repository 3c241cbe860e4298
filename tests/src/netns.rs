//! Fault injection for the end-to-end tests: a network namespace joined to the host by a
//! veth pair (link down to partition it; `tc netem`, or where the kernel lacks netem an
//! in-process UDP relay, to make it lossy and slow), a size-limited tmpfs (to fill a disk),
//! processes started inside a namespace, and the agent's counters read at a moment when
//! they are exact.
//!
//! Everything made here is undone by a `Drop` guard, also when a test fails: namespaces
//! (with their veth pair) are deleted and tmpfs mounts unmounted. All traffic stays on the
//! veth pair between the host and a namespace this module created.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Aggregator, Pki, Proc, bin_dir, get};

/// Whether this process may create namespaces, veth pairs, qdiscs and mounts. When it may
/// not, prints `skipped: needs root for <what>` (the test then returns without failing).
pub fn privileged(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "tc", "mount", "umount"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if root && tools {
        return true;
    }
    let why = if root {
        "ip, tc, mount and umount"
    } else {
        "root"
    };
    println!("skipped: needs {why} for {what}");
    false
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace with a veth pair to the host: the host end has `host_addr`, the
/// namespace end `ns_addr`, on a /30 of 10.201.0.0/16. Deleted on drop.
pub struct NetNs {
    /// Namespace name (`ip netns`).
    pub name: String,
    /// Host end of the veth pair.
    pub host_if: String,
    /// Namespace end of the veth pair.
    pub ns_if: String,
    /// Address of the host end.
    pub host_addr: Ipv4Addr,
    /// Address of the namespace end.
    pub ns_addr: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and the link, both up.
    pub fn create() -> anyhow::Result<NetNs> {
        let tag: u32 = rand::random::<u32>() & 0x00ff_ffff;
        let (third, fourth) = ((tag >> 8) as u8, ((tag & 0x3f) as u8) * 4);
        let ns = NetNs {
            name: format!("adv-e2e-{}-{tag:06x}", std::process::id()),
            host_if: format!("advh{tag:06x}"),
            ns_if: format!("advn{tag:06x}"),
            host_addr: Ipv4Addr::new(10, 201, third, fourth + 1),
            ns_addr: Ipv4Addr::new(10, 201, third, fourth + 2),
        };
        // From here on, drop cleans up whatever part was made.
        sh("ip", &["netns", "add", &ns.name])?;
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns.ns_if,
            ],
        )?;
        sh("ip", &["link", "set", &ns.ns_if, "netns", &ns.name])?;
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/30", ns.host_addr),
                "dev",
                &ns.host_if,
            ],
        )?;
        sh("ip", &["link", "set", &ns.host_if, "up"])?;
        sh(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_addr),
                "dev",
                &ns.ns_if,
            ],
        )?;
        sh("ip", &["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Whether this kernel has `tc netem` (`CONFIG_NET_SCH_NETEM`); probed on the host end.
    pub fn has_netem(&self) -> bool {
        let ok = sh(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                &self.host_if,
                "root",
                "netem",
                "delay",
                "1ms",
            ],
        )
        .is_ok();
        if ok {
            let _ = sh("tc", &["qdisc", "del", "dev", &self.host_if, "root"]);
        }
        ok
    }

    /// The same `netem` settings on both ends of the link (so both directions), e.g.
    /// `["loss", "20%", "delay", "200ms"]`.
    pub fn netem(&self, spec: &[&str]) -> anyhow::Result<()> {
        let mut host = vec!["qdisc", "replace", "dev", &self.host_if, "root", "netem"];
        host.extend(spec);
        sh("tc", &host)?;
        let mut inner = vec![
            "-n",
            &self.name,
            "qdisc",
            "replace",
            "dev",
            &self.ns_if,
            "root",
            "netem",
        ];
        inner.extend(spec);
        sh("tc", &inner)
    }

    /// Cuts the link: the host end goes down, so both ends lose carrier and nothing passes
    /// either way (what pulling the cable does).
    pub fn partition(&self) -> anyhow::Result<()> {
        sh("ip", &["link", "set", &self.host_if, "down"])
    }

    /// Undoes [`NetNs::partition`] and [`NetNs::netem`]: the link is up and clean again.
    pub fn heal(&self) -> anyhow::Result<()> {
        let _ = Command::new("tc")
            .args(["qdisc", "del", "dev", &self.host_if, "root"])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("tc")
            .args(["-n", &self.name, "qdisc", "del", "dev", &self.ns_if, "root"])
            .stderr(Stdio::null())
            .status();
        sh("ip", &["link", "set", &self.host_if, "up"])
    }

    /// Starts `program` (a path) inside the namespace, output to `log`, killed on drop.
    pub fn spawn(&self, program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
        let netns =
            std::fs::File::open(format!("/run/netns/{}", self.name)).context("namespace handle")?;
        let fd = netns.as_raw_fd();
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: setns(2) is async-signal-safe; `fd` stays open until spawn returns
        // (`netns` lives to the end of this function).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} in {}", program.display(), self.name))?;
        drop(netns);
        Ok(Proc { child, log })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the host end.
        let _ = sh("ip", &["netns", "del", &self.name]);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Loss and delay for a [`UdpRelay`], changeable while it runs.
#[derive(Debug, Default)]
struct Impairment {
    /// Packets dropped per million, each direction.
    loss_ppm: AtomicU32,
    /// Added one-way delay, each direction.
    delay_ms: AtomicU64,
}

/// A UDP relay in this process between one client (the agent) and one server (the
/// aggregator) that drops and delays packets both ways: what `netem loss .. delay ..` does
/// on a link, for kernels built without netem (`CONFIG_NET_SCH_NETEM`). The agent dials
/// [`UdpRelay::addr`]; the aggregator sees the relay as the client. Stops on drop.
pub struct UdpRelay {
    /// Where the client sends.
    pub addr: SocketAddr,
    impairment: Arc<Impairment>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpRelay {
    /// Listens on `listen` (port 0: any) and forwards to `server`.
    pub fn start(listen: SocketAddr, server: SocketAddr) -> anyhow::Result<UdpRelay> {
        let front = UdpSocket::bind(listen).context("relay front socket")?;
        let back = UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).context("relay back socket")?;
        back.connect(server)?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
        }
        let addr = front.local_addr()?;
        let impairment = Arc::new(Impairment::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (front, back) = (Arc::new(front), Arc::new(back));
        let mut threads = Vec::new();

        // One delay line per direction: packets leave in arrival order once their time comes.
        let (to_server, up_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let (to_client, down_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        {
            let (back, stop) = (back.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                delay_line(up_rx, &stop, |p| back.send(p).map(|_| ()))
            }));
        }
        {
            let (front, stop, client) = (front.clone(), stop.clone(), client.clone());
            threads.push(std::thread::spawn(move || {
                delay_line(down_rx, &stop, |p| {
                    match *client.lock().unwrap_or_else(|e| e.into_inner()) {
                        Some(to) => front.send_to(p, to).map(|_| ()),
                        None => Ok(()),
                    }
                })
            }));
        }
        {
            let (front, stop, imp, client) = (
                front.clone(),
                stop.clone(),
                impairment.clone(),
                client.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    if let Some(due) = imp.admit() {
                        let _ = to_server.send((due, buf[..n].to_vec()));
                    }
                }
            }));
        }
        {
            let (back, stop, imp) = (back.clone(), stop.clone(), impairment.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = back.recv(&mut buf) else { continue };
                    if let Some(due) = imp.admit() {
                        let _ = to_client.send((due, buf[..n].to_vec()));
                    }
                }
            }));
        }
        Ok(UdpRelay {
            addr,
            impairment,
            stop,
            threads,
        })
    }

    /// Drops `loss_pct` percent of the packets and delays the rest by `delay`, each way.
    pub fn impair(&self, loss_pct: f64, delay: Duration) {
        self.impairment
            .loss_ppm
            .store((loss_pct * 10_000.0) as u32, Ordering::Relaxed);
        self.impairment
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Passes everything at once again.
    pub fn clear(&self) {
        self.impair(0.0, Duration::ZERO);
    }
}

impl Impairment {
    /// `None`: this packet is lost; else when it may leave.
    fn admit(&self) -> Option<Instant> {
        let loss = self.loss_ppm.load(Ordering::Relaxed);
        if loss > 0 && rand::random_range(0..1_000_000u32) < loss {
            return None;
        }
        Some(Instant::now() + Duration::from_millis(self.delay_ms.load(Ordering::Relaxed)))
    }
}

fn delay_line(
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    send: impl Fn(&[u8]) -> std::io::Result<()>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A send error is a lost packet, as on a real link.
        let _ = send(&packet);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A tmpfs of a fixed size mounted on a fresh directory; unmounted (lazily, so a process
/// still holding files there cannot block it) on drop.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts `size` (as `mount -o size=`, e.g. `8m`) on `path` (created).
    pub fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let path_text = path.display().to_string();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &path_text,
            ],
        )?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes `name` with zeros until the file system refuses (ENOSPC); returns its size.
    pub fn fill(&self, name: &str) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join(name))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts an aggregator whose QUIC endpoint listens on `quic` (HTTP stays on 127.0.0.1).
pub fn start_aggregator_on(
    pki: &Pki,
    data_dir: &Path,
    http_port: u16,
    quic: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<Aggregator> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--http-listen".into(),
        format!("127.0.0.1:{http_port}"),
        "--quic-listen".into(),
        quic.to_string(),
        "--ca".into(),
        pki.ca().display().to_string(),
        "--cert".into(),
        pki.dir.join("aggregator.pem").display().to_string(),
        "--key".into(),
        pki.dir.join("aggregator-key.pem").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = data_dir.with_extension(format!("aggregator-{}.log", rand::random::<u16>()));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = Command::new(bin_dir().join("aggregator"))
        .args(&args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("cannot start aggregator")?;
    let mut proc = Proc { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(http_port, "/healthz").is_err() {
        if !proc.running() || Instant::now() > deadline {
            bail!(
                "aggregator did not become healthy; log:\n{}",
                proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Aggregator {
        proc,
        http_port,
        quic_port: quic.port(),
        data_dir: data_dir.to_path_buf(),
    })
}

/// Arguments of `node-agent run` for `node` shipping to `aggregator`, serving `/metrics` on
/// `metrics`, spooling in `spool`, one batch a second, with a long drain so a clean stop
/// delivers everything.
pub fn agent_args(
    pki: &Pki,
    node: &str,
    aggregator: SocketAddr,
    metrics: SocketAddr,
    spool: &Path,
) -> Vec<String> {
    [
        "run",
        "--aggregator",
        &aggregator.to_string(),
        "--ca",
        &pki.ca().display().to_string(),
        "--cert",
        &pki.node_cert(node).display().to_string(),
        "--key",
        &pki.node_key(node).display().to_string(),
        "--node",
        node,
        "--metrics-listen",
        &metrics.to_string(),
        "--spool-dir",
        &spool.display().to_string(),
        "--batch-secs",
        "1",
        "--drain-grace-secs",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts a node agent on the host with [`agent_args`].
pub fn start_agent_on_host(
    pki: &Pki,
    node: &str,
    aggregator: SocketAddr,
    metrics: SocketAddr,
    spool: &Path,
    log: PathBuf,
) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = Command::new(bin_dir().join("node-agent"))
        .args(agent_args(pki, node, aggregator, metrics, spool))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("cannot start node-agent")?;
    Ok(Proc { child, log })
}

/// `/metrics` of the agent at `addr` (3 s timeout: during a partition it cannot answer).
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .new_agent();
    let mut resp = agent.get(&format!("http://{addr}/metrics")).call()?;
    Ok(resp.body_mut().read_to_string()?)
}

/// Sum of the samples of `name` in a Prometheus text scrape (`None`: not there).
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// One metric of the agent at `addr`, if it answers.
pub fn agent_metric(addr: SocketAddr, name: &str) -> Option<f64> {
    metric_in(&scrape(addr).ok()?, name)
}

/// What the agent says it made and lost, read at its clean stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgentTotals {
    /// `agent_samples_built_total`: samples encoded into batches.
    pub built: u64,
    /// `agent_samples_shed_total`: samples of batches shed by the budget.
    pub shed: u64,
    /// `agent_batches_nacked_total`: batches the aggregator refused (samples not counted).
    pub nacked_batches: u64,
    /// The agent process's peak resident memory (`VmHWM`), KiB, just before the stop.
    pub peak_rss_kib: u64,
}

/// `VmHWM` of a process, KiB (0 if unreadable).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Stops the agent cleanly (SIGTERM; it drains) at a moment its counters are final, and
/// returns them.
///
/// The agent's `/metrics` goes away with it, so the counters must be read just before the
/// signal, and nothing may be built between the read and the stop. With `--batch-secs` equal
/// to the interval the batcher is empty between ticks and a stop builds nothing more, so
/// this waits until `agent_samples_built_total` has just moved (a tick was shipped, the next
/// is about a second away), reads everything from that scrape and signals at once.
pub fn stop_agent_counting(
    agent: &mut Proc,
    metrics: SocketAddr,
    limit: Duration,
) -> anyhow::Result<AgentTotals> {
    let read = || -> Option<(String, f64)> {
        let text = scrape(metrics).ok()?;
        let built = metric_in(&text, "agent_samples_built_total")?;
        Some((text, built))
    };
    let (_, first) = read().context("agent /metrics does not answer")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        std::thread::sleep(Duration::from_millis(10));
        if let Some((text, built)) = read()
            && built != first
        {
            break text;
        }
        if Instant::now() > deadline {
            bail!("agent_samples_built_total did not move in 10 s");
        }
    };
    let peak_rss_kib = peak_rss_kib(agent.child.id());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let totals = AgentTotals {
        peak_rss_kib,
        built: metric_in(&text, "agent_samples_built_total").unwrap_or(0.0) as u64,
        shed: metric_in(&text, "agent_samples_shed_total").unwrap_or(0.0) as u64,
        nacked_batches: metric_in(&text, "agent_batches_nacked_total").unwrap_or(0.0) as u64,
    };
    let status = agent.terminate(limit)?;
    if !status.success() {
        bail!("agent exited with {status}; log:\n{}", agent.log_text());
    }
    Ok(totals)
}

/// Duplicate rows of `node` (same ts, entity, metric, labels more than once).
pub fn duplicates(agg: &Aggregator, node: &str) -> anyhow::Result<i64> {
    agg.count(&format!(
        "SELECT count(*) FROM (SELECT ts, entity, metric, labels FROM samples WHERE node = '{node}' \
         GROUP BY ts, entity, metric, labels HAVING count(*) > 1)"
    ))
}

/// Rows of `node` in `samples`.
pub fn stored(agg: &Aggregator, node: &str) -> anyhow::Result<i64> {
    agg.count(&format!(
        "SELECT count(*) FROM samples WHERE node = '{node}'"
    ))
}

/// Latest value of the agent's own `agent.shed_samples` as the aggregator stored it.
pub fn reported_shed(agg: &Aggregator, node: &str) -> anyhow::Result<i64> {
    let rows = agg.sql(&format!(
        "SELECT value FROM samples WHERE node = '{node}' AND entity = 'agent' AND metric = 'agent.shed_samples' \
         ORDER BY ts DESC LIMIT 1"
    ))?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0) as i64)
}

/// `FAULT_<NAME>` from the environment as seconds, else `default`.
pub fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
