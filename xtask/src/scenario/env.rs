//! The "cluster" of one scenario on this one machine: a bridge in the root namespace, one
//! network namespace per node joined to it by a veth pair, one cgroup subtree per node
//! (`ado-scenario/<node>/<service>` in every mounted hierarchy: v2, or the v1 controllers
//! and the unified tree of a hybrid host), one small tmpfs per node for the services' data,
//! and the processes started inside them.
//!
//! [`Env`] undoes everything on drop (processes first, then qdiscs, namespaces, links,
//! mounts and cgroups), also when the run fails or is interrupted; [`clean_stale`] removes
//! what a crashed earlier run left behind. Everything is named `adosc*` / `ado-scenario`
//! (the e2e tests use `adv*` and 10.201/16), so nothing else is touched.

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The bridge every node's veth joins; the aggregator listens on its address.
pub const BRIDGE: &str = "adosc-br0";
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PREFIX_LEN: u8 = 24;
/// The cgroup subtree (in every hierarchy) and the tmpfs mount base.
pub const CGROUP_BASE: &str = "ado-scenario";
pub const MOUNT_BASE: &str = "/run/ado-scenario";
const NETNS_PREFIX: &str = "adosc-";
const LINK_PREFIX: &str = "adosc";

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

fn sh_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The cgroup hierarchies to create the subtree in: the v2 root alone, or on a v1/hybrid
/// host the controllers the agent reads (cpu, cpuacct, memory, blkio, pids), the systemd
/// one and the unified tree (eBPF attributes by v2 cgroup id).
pub fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut res: Vec<PathBuf> = Vec::new();
    for name in [
        "cpu", "cpuacct", "memory", "blkio", "pids", "systemd", "unified",
    ] {
        let dir = root.join(name);
        if !dir.join("cgroup.procs").exists() {
            continue;
        }
        // `cpu` and `cpuacct` are often links to `cpu,cpuacct`: one directory, once.
        let dir = fs::canonicalize(&dir).unwrap_or(dir);
        if !res.contains(&dir) {
            res.push(dir);
        }
    }
    res
}

/// One node: its namespace, address, cgroup paths (relative) and data tmpfs.
pub struct Node {
    pub name: String,
    pub netns: String,
    pub host_if: String,
    pub ns_if: String,
    pub addr: Ipv4Addr,
    /// The node's tmpfs: each service's data dir is below it.
    pub data: PathBuf,
}

impl Node {
    /// `ado-scenario/<node>`: what the node's agent is scoped to.
    pub fn scope(&self) -> String {
        format!("{CGROUP_BASE}/{}", self.name)
    }
}

/// A child process we started (SIGTERM, then SIGKILL, on drop).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.running() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Everything one run made. Dropping it undoes all of it.
pub struct Env {
    pub nodes: Vec<Node>,
    hierarchies: Vec<PathBuf>,
    /// Cgroup directories made, relative (`ado-scenario/n1/web`), in creation order.
    cgroups: Vec<String>,
    mounts: Vec<PathBuf>,
    bridge: bool,
    /// Services and agents; stopped first on drop.
    pub procs: Vec<Proc>,
    /// The aggregator: stopped last.
    pub aggregator: Option<Proc>,
}

impl Env {
    /// Bridge, then per node a namespace with a veth on the bridge, the node's cgroup
    /// directory and its tmpfs of `disk_mb` MiB.
    pub fn create(node_names: &[String], disk_mb: u64) -> anyhow::Result<Env> {
        let mut env = Env {
            nodes: Vec::new(),
            hierarchies: hierarchies(),
            cgroups: Vec::new(),
            mounts: Vec::new(),
            bridge: false,
            procs: Vec::new(),
            aggregator: None,
        };
        if env.hierarchies.is_empty() {
            bail!("no cgroup hierarchy found under /sys/fs/cgroup");
        }
        println!(
            "xtask: scenario: bridge {BRIDGE} {BRIDGE_ADDR}/{PREFIX_LEN}, cgroups in {}",
            env.hierarchies
                .iter()
                .map(|h| h.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        sh("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        env.bridge = true;
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{BRIDGE_ADDR}/{PREFIX_LEN}"),
                "dev",
                BRIDGE,
            ],
        )?;
        sh("ip", &["link", "set", BRIDGE, "up"])?;
        env.mkcg(CGROUP_BASE)?;
        for (i, name) in node_names.iter().enumerate() {
            let node = Node {
                name: name.clone(),
                netns: format!("{NETNS_PREFIX}{name}"),
                host_if: format!("{LINK_PREFIX}h{i}"),
                ns_if: format!("{LINK_PREFIX}n{i}"),
                addr: Ipv4Addr::new(10, 213, 0, 10 + i as u8),
                data: PathBuf::from(MOUNT_BASE).join(name),
            };
            env.add_node(&node, disk_mb)
                .with_context(|| format!("setting up node {name}"))?;
            env.nodes.push(node);
        }
        Ok(env)
    }

    fn add_node(&mut self, n: &Node, disk_mb: u64) -> anyhow::Result<()> {
        sh("ip", &["netns", "add", &n.netns])?;
        sh(
            "ip",
            &[
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if,
            ],
        )?;
        sh("ip", &["link", "set", &n.ns_if, "netns", &n.netns])?;
        sh("ip", &["link", "set", &n.host_if, "master", BRIDGE])?;
        sh("ip", &["link", "set", &n.host_if, "up"])?;
        let cidr = format!("{}/{PREFIX_LEN}", n.addr);
        sh(
            "ip",
            &["-n", &n.netns, "addr", "add", &cidr, "dev", &n.ns_if],
        )?;
        sh("ip", &["-n", &n.netns, "link", "set", &n.ns_if, "up"])?;
        sh("ip", &["-n", &n.netns, "link", "set", "lo", "up"])?;
        self.mkcg(&n.scope())?;
        fs::create_dir_all(&n.data)?;
        let data = n.data.display().to_string();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={disk_mb}m"),
                "tmpfs",
                &data,
            ],
        )?;
        self.mounts.push(n.data.clone());
        Ok(())
    }

    /// Makes `rel` in every hierarchy (and enables the v2 controllers for its children).
    pub fn mkcg(&mut self, rel: &str) -> anyhow::Result<()> {
        for h in &self.hierarchies {
            let dir = h.join(rel);
            fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            if h.join("cgroup.controllers").exists() {
                // Best effort: memory.current and io.stat need their controller enabled in
                // the parent. Harmless where it is refused (a controller busy elsewhere).
                let parent = dir.parent().unwrap_or(h);
                for c in ["+cpu", "+memory", "+io", "+pids"] {
                    let _ = fs::write(parent.join("cgroup.subtree_control"), c);
                }
            }
        }
        self.cgroups.push(rel.to_string());
        Ok(())
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// Starts `program args` inside `netns` (None: the root namespace) and inside cgroup
    /// `cgroup` (relative, made if missing) of every hierarchy, output to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        netns: Option<&str>,
        cgroup: Option<&str>,
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let ns_file = match netns {
            Some(ns) => Some(
                File::open(format!("/run/netns/{ns}"))
                    .with_context(|| format!("namespace {ns}"))?,
            ),
            None => None,
        };
        let mut cg_files = Vec::new();
        if let Some(cg) = cgroup {
            if !self.cgroups.iter().any(|c| c == cg) {
                self.mkcg(cg)?;
            }
            for h in &self.hierarchies {
                let path = h.join(cg).join("cgroup.procs");
                cg_files.push(
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?,
                );
            }
        }
        let ns_fd = ns_file.as_ref().map(|f| f.as_raw_fd());
        let cg_fds: Vec<i32> = cg_files.iter().map(|f| f.as_raw_fd()).collect();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: the terminal's Ctrl-C reaches only xtask, which then
            // stops everything in order.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (setns, write, prctl) on fds that stay open
        // until spawn returns; the buffers are static.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" to cgroup.procs moves the writing process: us, before exec.
                for &fd in &cg_fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with xtask rather than linger if it is killed outright.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        drop(cg_files);
        drop(ns_file);
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        println!("xtask: scenario: cleaning up");
        // Services and agents in parallel: SIGTERM all, then wait.
        for p in &mut self.procs {
            if p.running() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.procs.iter_mut().any(|p| p.running()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.procs.clear();
        if let Some(mut a) = self.aggregator.take() {
            a.stop(Duration::from_secs(10));
        }
        // Whatever is still in our cgroups (a grandchild) goes too.
        kill_cgroup_members(&self.hierarchies);
        for n in &self.nodes {
            sh_quiet("ip", &["netns", "del", &n.netns]);
            sh_quiet("ip", &["link", "del", &n.host_if]);
        }
        if self.bridge {
            sh_quiet("ip", &["link", "del", BRIDGE]);
        }
        for m in self.mounts.iter().rev() {
            sh_quiet("umount", &["-l", &m.display().to_string()]);
            let _ = fs::remove_dir(m);
        }
        let _ = fs::remove_dir(MOUNT_BASE);
        remove_cgroups(&self.hierarchies);
    }
}

/// SIGKILLs every process left in an `ado-scenario` cgroup.
fn kill_cgroup_members(hierarchies: &[PathBuf]) {
    for h in hierarchies {
        for dir in walk(&h.join(CGROUP_BASE)) {
            let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2); the pid is in a cgroup only this harness uses.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Every directory under `root` (itself included), deepest first.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut res = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            res.push(d);
        }
    }
    res.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    res
}

/// Removes the `ado-scenario` subtrees (a cgroup can be removed once empty; the kernel
/// needs a moment after its last process exits).
fn remove_cgroups(hierarchies: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = false;
        for h in hierarchies {
            for d in walk(&h.join(CGROUP_BASE)) {
                if fs::remove_dir(&d).is_err() && d.exists() {
                    left = true;
                }
            }
        }
        if !left || Instant::now() > deadline {
            if left {
                eprintln!("xtask: scenario: warning: some ado-scenario cgroups are still busy");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes what a crashed earlier run left: processes in the cgroups, namespaces, links,
/// mounts and cgroups, all by their scenario names.
pub fn clean_stale() {
    let hier = hierarchies();
    let mut found = false;
    if hier.iter().any(|h| h.join(CGROUP_BASE).exists()) {
        found = true;
        kill_cgroup_members(&hier);
    }
    // Agents of an old run are in `ado-scenario/agent-*` cgroups: killed above.
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(ns) = line.split_whitespace().next()
                && ns.starts_with(NETNS_PREFIX)
            {
                found = true;
                sh_quiet("ip", &["netns", "del", ns]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `12: adosch0@if11: <...>`
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(LINK_PREFIX) {
                found = true;
                sh_quiet("ip", &["link", "del", name]);
            }
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
        for line in mounts.lines() {
            if let Some(point) = line.split_whitespace().nth(1)
                && point.starts_with(MOUNT_BASE)
            {
                found = true;
                sh_quiet("umount", &["-l", point]);
            }
        }
    }
    if Path::new(MOUNT_BASE).exists() {
        for d in walk(Path::new(MOUNT_BASE)) {
            let _ = fs::remove_dir(d);
        }
    }
    remove_cgroups(&hier);
    if found {
        println!("xtask: scenario: removed leftovers of an earlier run");
    }
}

/// Whether `tc qdisc ... netem` works on this kernel (probed on a throwaway veth pair).
pub fn has_netem() -> bool {
    let (a, b) = ("adoscprobe0", "adoscprobe1");
    if sh("ip", &["link", "add", a, "type", "veth", "peer", "name", b]).is_err() {
        return false;
    }
    let ok = sh(
        "tc",
        &["qdisc", "add", "dev", a, "root", "netem", "delay", "1ms"],
    )
    .is_ok();
    sh_quiet("ip", &["link", "del", a]);
    ok
}

/// `tc netem` with `spec` on both ends of `node`'s link (both directions).
pub fn netem(node: &Node, spec: &[&str]) -> anyhow::Result<()> {
    let mut host = vec!["qdisc", "replace", "dev", &node.host_if, "root", "netem"];
    host.extend(spec);
    sh("tc", &host)?;
    let mut inner = vec![
        "-n",
        &node.netns,
        "qdisc",
        "replace",
        "dev",
        &node.ns_if,
        "root",
        "netem",
    ];
    inner.extend(spec);
    sh("tc", &inner)
}

/// Removes the qdiscs [`netem`] added.
pub fn netem_clear(node: &Node) {
    sh_quiet("tc", &["qdisc", "del", "dev", &node.host_if, "root"]);
    sh_quiet(
        "tc",
        &[
            "-n",
            &node.netns,
            "qdisc",
            "del",
            "dev",
            &node.ns_if,
            "root",
        ],
    );
}
