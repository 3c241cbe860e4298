//! `cargo xtask scenario run FILE.yaml --out RESULT.json`: one fault scenario end to end on
//! this machine, scored against the aggregator's root-cause ranking.
//!
//! Steps: build the release binaries (aggregator, node-agent, scenario-service); clean the
//! leftovers of an earlier run; a dev PKI with one certificate per node; a bridge and one
//! network namespace + cgroup subtree + data tmpfs per node ([`env`]); the aggregator in the
//! root namespace (QUIC on the bridge address, HTTP on loopback); one real node agent per
//! node inside its namespace, scoped to its node's cgroups (`--scope-cgroup`); the services
//! inside their node's namespace and cgroup; steady load on the entry ([`load`]). After
//! `fault.after_s` the fault goes on the target; the aggregator is polled every second for
//! the incident that opened after the fault and for its RCA ([`api`]). The run ends
//! `fault.settle_s` after the first ranking but not before `fault.observe_s` after the
//! fault began (the ranking is scored as it stands then), or at `timeout_s`; the fault
//! stops there or after `duration_s`. RESULT.json and a one-line summary follow;
//! everything made is removed on exit, on error and on Ctrl-C. Format and reading:
//! `docs/scenarios.md`.

pub mod api;
pub mod env;
pub mod load;
pub mod spec;
pub mod suite;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use self::env::{BRIDGE_ADDR, CGROUP_BASE, Env};
use self::spec::{FaultKind, Scenario};
use crate::{certs, cmd};

const POLL: Duration = Duration::from_secs(1);
/// Services on a node listen on consecutive ports from here.
const FIRST_SERVICE_PORT: u16 = 8100;
/// Where the `slow_io` files go: a real disk (the data tmpfs would make fsync free).
const IO_BASE: &str = "/var/tmp/ado-scenario";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Run one scenario file and write its result.
    Run(RunArgs),
    /// Remove what a crashed run left behind (namespaces, links, mounts, cgroups).
    Clean,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The scenario (YAML, docs/scenarios.md).
    file: PathBuf,
    /// Where to write the result (JSON).
    #[arg(long, value_name = "RESULT.json")]
    out: PathBuf,
    /// Use the binaries already built in target/release (no cargo build).
    #[arg(long)]
    no_build: bool,
    /// Take aggregator, node-agent and scenario-service from this directory (no build).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.what {
        What::Clean => {
            require_root()?;
            env::clean_stale();
            Ok(())
        }
        What::Run(a) => {
            let scenario = Scenario::load(&a.file)?;
            require_root()?;
            catch_stop_signals()?;
            let bins = if let Some(dir) = &a.bin_dir {
                Bins::locate_in(dir)?
            } else if a.no_build {
                Bins::locate()?
            } else {
                Bins::build()?
            };
            let result = run_one(&scenario, &bins)?;
            write_result(&a.out, &result)?;
            println!("{}", summary(&result));
            Ok(())
        }
    }
}

pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("scenarios need root (network namespaces, cgroups, mounts)");
    }
    Ok(())
}

pub fn write_result(path: &Path, result: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(result)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// `scenario NAME: fault KIND on TARGET → top-1 X (hit), RCA after N s`.
pub fn summary(r: &Value) -> String {
    let top = r["ranking"]
        .get(0)
        .and_then(|e| e["target"].as_str())
        .unwrap_or("-");
    let secs = r["time_to_rca_s"]
        .as_f64()
        .map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "-".into());
    let mut line = format!(
        "scenario {}: {} on {} -> top-1 {top} (top1 {}, top3 {}), time to RCA {secs}",
        r["name"].as_str().unwrap_or("?"),
        r["fault"]["kind"].as_str().unwrap_or("?"),
        r["fault"]["target"].as_str().unwrap_or("?"),
        r["top1"].as_bool().unwrap_or(false),
        r["top3"].as_bool().unwrap_or(false),
    );
    if let Some(e) = r["error"].as_str() {
        line.push_str(&format!(", error: {e}"));
    }
    line
}

/// The three programs a run starts.
pub struct Bins {
    pub aggregator: PathBuf,
    pub agent: PathBuf,
    pub service: PathBuf,
    /// Whether this node-agent has `--log-file` (log tailing).
    agent_logs: bool,
    /// Whether its `--log-file` takes `COMM=PATH` (attributes the file to the service).
    agent_log_owner: bool,
}

impl Bins {
    pub fn build() -> anyhow::Result<Bins> {
        let mut build = cmd::cargo();
        build.args([
            "build",
            "--release",
            "-p",
            "aggregator",
            "-p",
            "node-agent",
            "-p",
            "scenario-service",
        ]);
        cmd::run(&mut build)?;
        Bins::locate()
    }

    pub fn locate() -> anyhow::Result<Bins> {
        Bins::locate_in(&target_dir().join("release"))
    }

    /// The three binaries in `dir`.
    pub fn locate_in(dir: &Path) -> anyhow::Result<Bins> {
        let bins = Bins {
            aggregator: dir.join("aggregator"),
            agent: dir.join("node-agent"),
            service: dir.join("scenario-service"),
            agent_logs: false,
            agent_log_owner: false,
        };
        for b in [&bins.aggregator, &bins.agent, &bins.service] {
            if !b.is_file() {
                bail!("{} is missing: build it (or drop --no-build)", b.display());
            }
        }
        let help = std::process::Command::new(&bins.agent)
            .args(["run", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Ok(Bins {
            agent_logs: help.contains("--log-file"),
            agent_log_owner: help.contains("[COMM=]PATH"),
            ..bins
        })
    }
}

/// `$CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => cmd::repo_root().join(d),
        None => cmd::repo_root().join("target"),
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM become an error at the next check, so the cleanup guards run.
pub fn catch_stop_signals() -> anyhow::Result<()> {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if unsafe { libc::signal(signal, handler) } == libc::SIG_ERR {
            bail!("could not install a handler for signal {signal}");
        }
    }
    Ok(())
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A free UDP (QUIC) port on the bridge address, and a free TCP port on loopback.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let quic = UdpSocket::bind((BRIDGE_ADDR, 0))?.local_addr()?.port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok((quic, http))
}

/// How to (re)start one service.
struct ServicePlan {
    name: String,
    node: String,
    netns: String,
    cgroup: String,
    addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
}

/// A service that exited and waits for its restart.
struct Down {
    since: Instant,
    status: String,
}

/// One scenario on a fresh environment; the result object (errors after the environment
/// is up are reported in it, with `"error"`, rather than failing the run).
pub fn run_one(s: &Scenario, bins: &Bins) -> anyhow::Result<Value> {
    println!(
        "xtask: scenario: {} ({} nodes, {} services, {} on {})",
        s.name,
        s.nodes.len(),
        s.services.len(),
        s.fault.kind.as_str(),
        s.fault.target
    );
    env::clean_stale();
    let run_dir = target_dir().join("scenario").join(&s.name);
    let _ = std::fs::remove_dir_all(&run_dir);
    let log_dir = run_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let pki = certs::ensure(&run_dir.join("pki"), &s.nodes)?;

    let mut env = Env::create(&s.nodes, s.disk_mb)?;
    let _ = std::fs::remove_dir_all(IO_BASE);

    // Aggregator: root namespace, QUIC on the bridge, HTTP on loopback.
    let (quic_port, http_port) = free_ports()?;
    let quic = SocketAddr::V4(SocketAddrV4::new(BRIDGE_ADDR, quic_port));
    let agg_args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        run_dir.join("aggregator").display().to_string(),
        "--http-listen".into(),
        format!("127.0.0.1:{http_port}"),
        "--quic-listen".into(),
        quic.to_string(),
        "--ca".into(),
        pki.ca.display().to_string(),
        "--cert".into(),
        pki.aggregator_cert.display().to_string(),
        "--key".into(),
        pki.aggregator_key.display().to_string(),
    ];
    println!("xtask: scenario: aggregator QUIC {quic}, HTTP 127.0.0.1:{http_port}");
    let agg = env.spawn(
        "aggregator",
        &bins.aggregator,
        &agg_args,
        None,
        None,
        &log_dir.join("aggregator.log"),
    )?;
    env.aggregator = Some(agg);
    let api = api::Api::new(http_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !api.healthy() {
        check_interrupted()?;
        if Instant::now() > deadline || !env.aggregator.as_mut().is_some_and(|a| a.running()) {
            bail!(
                "the aggregator did not become healthy; log:\n{}",
                tail(&log_dir.join("aggregator.log"), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Services' addresses first: callers need their callees'.
    let mut per_node_port: HashMap<&str, u16> = HashMap::new();
    let mut addrs: HashMap<&str, SocketAddr> = HashMap::new();
    for svc in &s.services {
        let node = env.node(&svc.node)?;
        let port = per_node_port.entry(&svc.node).or_insert(FIRST_SERVICE_PORT);
        addrs.insert(
            &svc.name,
            SocketAddr::V4(SocketAddrV4::new(node.addr, *port)),
        );
        *port += 1;
    }

    // Agents: one per node, inside the node's namespace, scoped to its cgroups.
    let detect_cfg = run_dir.join("detect.json");
    std::fs::write(
        &detect_cfg,
        json!({ "warmup": s.detector_warmup }).to_string(),
    )?;
    let mut agent_idx = Vec::new();
    for node in &s.nodes {
        let n = env.node(node)?;
        let (cert, key) = pki.node(node);
        let (netns, scope) = (n.netns.clone(), n.scope());
        let mut args: Vec<String> = [
            "run",
            "--aggregator",
            &quic.to_string(),
            "--server-name",
            "localhost",
            "--ca",
            &pki.ca.display().to_string(),
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "--node",
            node,
            "--interval-secs",
            "1",
            "--batch-secs",
            "1",
            "--metrics-listen",
            "127.0.0.1:9001",
            "--spool-dir",
            &run_dir.join(format!("spool-{node}")).display().to_string(),
            "--scope-cgroup",
            &scope,
            "--detect-config",
            &detect_cfg.display().to_string(),
            "--drain-grace-secs",
            "2",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if bins.agent_logs {
            args.extend(["--log-dir".to_string(), "none".to_string()]);
            for svc in s.services.iter().filter(|v| &v.node == node) {
                let path = log_dir.join(format!("{}.log", svc.name));
                args.push("--log-file".into());
                // The service's process name is its name: its log counts for it.
                args.push(if bins.agent_log_owner {
                    format!("{}={}", svc.name, path.display())
                } else {
                    path.display().to_string()
                });
            }
        }
        let p = env.spawn(
            &format!("agent-{node}"),
            &bins.agent,
            &args,
            Some(&netns),
            Some(&format!("{CGROUP_BASE}/agent-{node}")),
            &log_dir.join(format!("agent-{node}.log")),
        )?;
        agent_idx.push(env.procs.len());
        env.procs.push(p);
    }

    // Services.
    let mut plans = Vec::new();
    for svc in &s.services {
        let n = env.node(&svc.node)?;
        let addr = addrs[svc.name.as_str()];
        let mut args: Vec<String> = vec![
            "--name".into(),
            svc.name.clone(),
            "--listen".into(),
            addr.to_string(),
            "--log".into(),
            log_dir
                .join(format!("{}.log", svc.name))
                .display()
                .to_string(),
            "--data-dir".into(),
            n.data.join(&svc.name).display().to_string(),
            "--io-dir".into(),
            Path::new(IO_BASE)
                .join(&svc.node)
                .join(&svc.name)
                .display()
                .to_string(),
        ];
        for c in &svc.calls {
            args.push("--call".into());
            args.push(format!("{c}={}", addrs[c.as_str()]));
        }
        plans.push(ServicePlan {
            name: svc.name.clone(),
            node: svc.node.clone(),
            netns: n.netns.clone(),
            cgroup: format!("{}/{}", n.scope(), svc.name),
            addr,
            args,
            log: log_dir.join(format!("{}.stdout", svc.name)),
        });
    }
    let mut svc_idx: HashMap<String, usize> = HashMap::new();
    for p in &plans {
        let proc = env.spawn(
            &p.name,
            &bins.service,
            &p.args,
            Some(&p.netns),
            Some(&p.cgroup),
            &p.log,
        )?;
        svc_idx.insert(p.name.clone(), env.procs.len());
        env.procs.push(proc);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in &plans {
        while !matches!(load::post(p.addr, "/healthz"), Ok((200, _))) {
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!(
                    "service {} on {} did not answer on {}; log:\n{}",
                    p.name,
                    p.node,
                    p.addr,
                    tail(&p.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "xtask: scenario: {} services up; load {} rps on {}; fault in {} s",
        plans.len(),
        s.load.rps,
        s.load.entry,
        s.fault.after_s
    );

    let mut run = Running {
        s,
        plans: &plans,
        svc_idx,
        agent_idx,
        down: HashMap::new(),
        crash_until: None,
        restarts: 0,
        bins,
    };
    let load = load::LoadGen::start(addrs[s.load.entry.as_str()], s.load.rps);
    let outcome = run.drive(&mut env, &api, &load);
    let (before, during) = load.stop();
    let mut result = match outcome {
        Ok(r) => r,
        Err(e) => {
            check_interrupted()?;
            json!({ "error": format!("{e:#}"), "ranking": [] })
        }
    };
    let obj = result.as_object_mut().context("result object")?;
    obj.insert("name".into(), json!(s.name));
    if let Some(d) = &s.description {
        obj.insert("description".into(), json!(d));
    }
    obj.insert("fault".into(), serde_json::to_value(&s.fault)?);
    obj.insert("expected".into(), json!(s.fault.accepted()));
    obj.insert(
        "load".into(),
        json!({ "rps": s.load.rps, "entry": s.load.entry, "before_fault": before, "during_fault": during }),
    );
    obj.insert("restarts".into(), json!(run.restarts));
    obj.insert("logs".into(), json!(log_dir.display().to_string()));
    drop(env);
    let _ = std::fs::remove_dir_all(IO_BASE);
    Ok(result)
}

struct Running<'a> {
    s: &'a Scenario,
    plans: &'a [ServicePlan],
    svc_idx: HashMap<String, usize>,
    agent_idx: Vec<usize>,
    down: HashMap<String, Down>,
    /// crash_loop: restarted processes crash again until then.
    crash_until: Option<Instant>,
    restarts: u64,
    bins: &'a Bins,
}

impl Running<'_> {
    /// Restarts services that exited (after 1 s), fails when an agent died.
    fn supervise(&mut self, env: &mut Env) -> anyhow::Result<()> {
        check_interrupted()?;
        for &i in &self.agent_idx {
            if !env.procs[i].running() {
                bail!(
                    "{} exited; log:\n{}",
                    env.procs[i].name,
                    tail(&env.procs[i].log, 30)
                );
            }
        }
        for p in self.plans {
            let i = self.svc_idx[&p.name];
            if env.procs[i].running() {
                continue;
            }
            let status = env.procs[i]
                .child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let down = self.down.entry(p.name.clone()).or_insert_with(|| {
                println!("xtask: scenario: {} exited ({status})", p.name);
                Down {
                    since: Instant::now(),
                    status,
                }
            });
            if down.since.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let mut args = p.args.clone();
            if self.crash_until.is_some_and(|t| Instant::now() < t) {
                let after = self.s.fault.crash_after_s.unwrap_or(3.0);
                args.extend(["--crash-after-s".into(), after.to_string()]);
            }
            println!(
                "xtask: scenario: restarting {} (exited {})",
                p.name, down.status
            );
            let proc = env.spawn(
                &p.name,
                &self.bins.service,
                &args,
                Some(&p.netns),
                Some(&p.cgroup),
                &p.log,
            )?;
            env.procs[i] = proc;
            self.down.remove(&p.name);
            self.restarts += 1;
        }
        Ok(())
    }

    fn sleep(&mut self, env: &mut Env, d: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.supervise(env)?;
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(200)));
        }
        Ok(())
    }

    fn target(&self) -> &ServicePlan {
        let t = &self.s.fault.target;
        // check() made sure the target is a service.
        self.plans
            .iter()
            .find(|p| &p.name == t)
            .unwrap_or(&self.plans[0])
    }

    /// Turns the fault on; whether it went through netem (else through the service).
    fn inject(&mut self, env: &mut Env) -> anyhow::Result<&'static str> {
        let scenario: &Scenario = self.s;
        let f = &scenario.fault;
        let t = self.target();
        let (addr, node) = (t.addr, t.node.clone());
        let secs = f.duration_s;
        let admin = |q: String| -> anyhow::Result<()> {
            match load::post(addr, &format!("/admin/fault?{q}")) {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => bail!("fault injection answered {status}: {body}"),
                Err(e) => bail!("fault injection failed: {e}"),
            }
        };
        match f.kind {
            FaultKind::CrashLoop => {
                self.crash_until = Some(Instant::now() + Duration::from_secs(secs));
                // The process dies at once; the supervisor restarts it into a crash loop.
                let _ = load::post(addr, "/admin/crash");
                Ok("service")
            }
            FaultKind::NetDelay | FaultKind::NetLoss if env::has_netem() => {
                let n = env.node(&node)?;
                let delay = format!("{}ms", f.delay_ms.unwrap_or(200));
                let loss = format!("{}%", f.loss_pct.unwrap_or(30));
                let spec: Vec<&str> = if f.kind == FaultKind::NetDelay {
                    vec!["delay", &delay]
                } else {
                    vec!["loss", &loss]
                };
                env::netem(n, &spec)?;
                Ok("netem")
            }
            FaultKind::NetDelay => {
                let mut q = f.admin_query(secs);
                if f.delay_ms.is_none() {
                    q.push_str("&delay_ms=200");
                }
                admin(q)?;
                Ok("service")
            }
            FaultKind::NetLoss => {
                let mut q = f.admin_query(secs);
                if f.loss_pct.is_none() {
                    q.push_str("&loss_pct=30");
                }
                admin(q)?;
                Ok("service")
            }
            _ => {
                admin(f.admin_query(secs))?;
                Ok("service")
            }
        }
    }

    fn clear(&mut self, env: &mut Env, via: &str) {
        self.crash_until = None;
        let t = self.target();
        let (addr, node) = (t.addr, t.node.clone());
        if via == "netem"
            && let Ok(n) = env.node(&node)
        {
            env::netem_clear(n);
        }
        let _ = load::post(addr, "/admin/clear");
    }

    /// Steady load, the fault, the polling; the result's incident, ranking and timings.
    fn drive(
        &mut self,
        env: &mut Env,
        api: &api::Api,
        load: &load::LoadGen,
    ) -> anyhow::Result<Value> {
        let scenario: &Scenario = self.s;
        let f = &scenario.fault;
        self.sleep(env, Duration::from_secs(f.after_s))?;
        let fault_start_ms = now_ms();
        let fault_start = Instant::now();
        load.fault_started();
        let via = self.inject(env)?;
        println!(
            "xtask: scenario: fault {} on {} (via {via}) for up to {} s",
            f.kind.as_str(),
            f.target,
            f.duration_s
        );
        let accepted = f.accepted();
        let timeout = Duration::from_secs(self.s.timeout_s);
        let mut fault_on = true;
        let mut incident: Option<Value> = None;
        let mut incident_opened_ms = None;
        let mut first_rca_ms: Option<i64> = None;
        // (top-1 target, when it first became that).
        let mut stable: Option<(String, i64)> = None;
        // Every change of the top-1, as the rankings came in.
        let mut history: Vec<Value> = Vec::new();
        let observe = Duration::from_secs(f.observe_s.min(self.s.timeout_s));
        let mut api_missing = false;
        let mut last_error = None;
        let mut settle_until: Option<Instant> = None;
        loop {
            self.sleep(env, POLL)?;
            let elapsed = fault_start.elapsed();
            if fault_on && elapsed >= Duration::from_secs(f.duration_s) {
                self.clear(env, via);
                fault_on = false;
                println!("xtask: scenario: fault duration over");
            }
            match api.incidents(fault_start_ms - 120_000) {
                Ok(api::Incidents::Missing) => {
                    if !api_missing {
                        println!("xtask: scenario: the aggregator has no incidents API (404)");
                    }
                    api_missing = true;
                }
                Ok(api::Incidents::List(list)) => {
                    api_missing = false;
                    if let Some(inc) = api::pick_incident(&list, fault_start_ms, &accepted)
                        && let Some(id) = api::id_of(inc)
                    {
                        let detail = api.incident(&id).ok().flatten().unwrap_or(inc.clone());
                        if incident_opened_ms.is_none() {
                            incident_opened_ms = api::ms_field(&detail, "opened_at_ms");
                            println!(
                                "xtask: scenario: incident {id} (components {:?})",
                                api::components(&detail)
                            );
                        }
                        let ranking = api::ranking(&detail);
                        if let Some(top) = ranking
                            .first()
                            .and_then(|e| e["target"].as_str())
                            .map(str::to_string)
                        {
                            let at = detail
                                .get("rca")
                                .and_then(|r| api::ms_field(r, "computed_at_ms"))
                                .unwrap_or_else(now_ms);
                            if first_rca_ms.is_none() {
                                first_rca_ms = Some(at);
                                settle_until =
                                    Some(Instant::now() + Duration::from_secs(f.settle_s));
                                println!("xtask: scenario: RCA in, top-1 {top}");
                            }
                            if stable.as_ref().is_none_or(|(t, _)| *t != top) {
                                if stable.is_some() {
                                    println!("xtask: scenario: top-1 now {top}");
                                }
                                history.push(json!({
                                    "at_ms": at,
                                    "after_fault_s": (at - fault_start_ms) as f64 / 1000.0,
                                    "top1": top,
                                }));
                                stable = Some((top, at));
                            }
                        }
                        incident = Some(detail);
                    }
                }
                Err(e) => last_error = Some(format!("{e:#}")),
            }
            if (settle_until.is_some_and(|t| Instant::now() >= t) && elapsed >= observe)
                || elapsed >= timeout
            {
                break;
            }
        }
        if fault_on {
            self.clear(env, via);
        }

        let ranking = incident.as_ref().map(api::ranking).unwrap_or_default();
        let hit_at = ranking.iter().position(|e| {
            e["target"]
                .as_str()
                .is_some_and(|t| api::names_one_of(t, &accepted))
        });
        let first_anomaly_ms = incident
            .as_ref()
            .and_then(|i| api::ms_field(i, "first_anomaly_ms"))
            .or_else(|| api.first_anomaly_ms(fault_start_ms, None));
        let rca_done_ms = stable.as_ref().map(|(_, at)| *at);
        let mut res = json!({
            "incident_id": incident.as_ref().and_then(api::id_of),
            "ranking": ranking,
            "timings": {
                "fault_start_ms": fault_start_ms,
                "first_anomaly_ms": first_anomaly_ms,
                "first_target_anomaly_ms": api.first_anomaly_ms(fault_start_ms, Some(&f.target)),
                "incident_opened_ms": incident_opened_ms,
                "first_rca_ms": first_rca_ms,
                "rca_done_ms": rca_done_ms,
            },
            "time_to_rca_s": rca_done_ms.map(|t| (t - fault_start_ms) as f64 / 1000.0),
            "top1_history": history,
            "hit_rank": hit_at.map(|i| i + 1),
            "top1": hit_at == Some(0),
            "top3": hit_at.is_some_and(|i| i < 3),
            "fault_via": via,
        });
        let error = if api_missing {
            Some("the aggregator has no incidents API (GET /api/v1/incidents is 404)".to_string())
        } else if incident.is_none() {
            Some(match last_error {
                Some(e) => format!("no incident after the fault; last API error: {e}"),
                None => format!(
                    "no incident opened within {} s of the fault",
                    self.s.timeout_s
                ),
            })
        } else if first_rca_ms.is_none() {
            Some(format!(
                "incident without an RCA ranking within {} s of the fault",
                self.s.timeout_s
            ))
        } else {
            None
        };
        if let Some(e) = error {
            res["error"] = json!(e);
        }
        Ok(res)
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the suite parses and passes the checks.
    #[test]
    fn the_suite_files_are_valid() {
        let dir = cmd::repo_root().join("scenarios");
        let mut n = 0;
        let mut kinds = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                assert_eq!(
                    path.file_stem().and_then(|s| s.to_str()),
                    Some(s.name.as_str()),
                    "file name = scenario name"
                );
                kinds.insert(s.fault.kind.as_str());
                n += 1;
            }
        }
        assert!(n >= 24, "{n} scenarios");
        assert_eq!(kinds.len(), 8, "every fault kind: {kinds:?}");
    }

    #[test]
    fn summaries_read_well() {
        let r = json!({"name": "x", "fault": {"kind": "cpu_hog", "target": "payments"},
            "ranking": [{"target": "payments@n3"}], "top1": true, "top3": true, "time_to_rca_s": 12.34});
        assert_eq!(
            summary(&r),
            "scenario x: cpu_hog on payments -> top-1 payments@n3 (top1 true, top3 true), time to RCA 12.3 s"
        );
    }
}
