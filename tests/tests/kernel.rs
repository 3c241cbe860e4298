//! eBPF telemetry end to end: real programs on this kernel, through the real agent and
//! aggregator, read back with SQL. Needs root (CAP_BPF + CAP_PERFMON); without it the test
//! says so and checks the agent degrades instead.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use e2e::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn exec_and_tcp_records_reach_their_tables() -> anyhow::Result<()> {
    let dir = temp_dir("kernel");
    let pki = Pki::generate(&dir.join("pki"), &["node-k"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    let mut agent = start_agent(
        &pki,
        "node-k",
        "node-k",
        quic,
        mport,
        dir.join("agent.log"),
        &["--batch-secs", "1", "--no-detect"],
    )?;
    // Wait until the agent is up and its collectors are loaded.
    wait_for(Duration::from_secs(30), || {
        (agg.count("SELECT count(*) FROM samples").ok()? > 0).then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("agent never delivered; log:\n{}", agent.log_text()))?;
    if !is_root() || metric_value(mport, "agent_collector_up", "ebpf_process") < 1.0 {
        // CI installs the toolchain and runs as root: there a skip would hide a broken build.
        assert!(
            !(is_root() && std::env::var("SCARLET_REQUIRE_EBPF").is_ok_and(|v| v == "1")),
            "SCARLET_REQUIRE_EBPF=1 but ebpf_process is not running; log:\n{}",
            agent.log_text()
        );
        eprintln!(
            "skipped: eBPF collectors not running here (needs root with CAP_BPF + CAP_PERFMON and an agent built with bpf-linker); log:\n{}",
            agent.log_text()
        );
        assert!(agent.running());
        return Ok(());
    }

    // N execs of /bin/true from this process: N rows with comm 'true' and our pid as parent.
    let n = 25;
    for _ in 0..n {
        assert!(std::process::Command::new("/bin/true").status()?.success());
    }
    let me = std::process::id();
    let execs = format!(
        "SELECT count(*) FROM process_events WHERE kind = 'process.exec' AND comm = 'true' AND ppid = {me}"
    );
    let got = wait_for(Duration::from_secs(20), || {
        let c = agg.count(&execs).ok()?;
        (c >= n).then_some(c)
    });
    assert_eq!(
        got,
        Some(n),
        "exec rows for /bin/true; agent log:\n{}",
        agent.log_text()
    );
    assert!(agg.count("SELECT count(*) FROM process_events WHERE kind = 'process.exec' AND comm = 'true' AND cgroup IS NOT NULL AND cgroup <> ''")? >= n);

    // A loopback TCP connection between two processes we know.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        s.write_all(b"world")?;
        Ok(())
    });
    let mut client = std::process::Command::new("python3")
        .args(["-c", &format!("import socket\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'hello')\nprint(s.recv(5))\ns.close()")])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let client_pid = client.id();
    assert!(client.wait()?.success());
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread"))??;
    let q = format!(
        "SELECT pid, connect_latency_us FROM tcp_connections WHERE kind = 'tcp.connect' AND daddr = '127.0.0.1' AND dport = {port}"
    );
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agg.sql(&q).ok()?;
        (!rows.is_empty()).then_some(rows)
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no tcp.connect row for port {port}; log:\n{}",
            agent.log_text()
        )
    })?;
    assert_eq!(
        rows[0][0].as_i64(),
        Some(client_pid as i64),
        "connect attributed to the client: {rows:?}"
    );
    assert!(
        rows[0][1].as_i64().unwrap_or(-1) >= 0,
        "connect latency: {rows:?}"
    );
    // Both ends' closes are recorded: the client's (out) and the server's, this process (in).
    let closes = format!(
        "SELECT pid, direction FROM tcp_connections WHERE kind = 'tcp.close' AND ((dport = {port}) OR (sport = {port})) ORDER BY direction"
    );
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agg.sql(&closes).ok()?;
        (rows.len() >= 2).then_some(rows)
    })
    .ok_or_else(|| anyhow::anyhow!("closes missing: {:?}", agg.sql(&closes)))?;
    let pids: Vec<i64> = rows.iter().filter_map(|r| r[0].as_i64()).collect();
    assert!(
        pids.contains(&(client_pid as i64)) && pids.contains(&(me as i64)),
        "both ends' pids: {rows:?}"
    );

    pod_layout_is_attributed_to_its_pod_and_container(&agg, &agent)?;
    oom_kill_in_a_memory_limited_cgroup_is_recorded(&agg, &agent)?;
    Ok(())
}

/// The cgroup v2 tree the eBPF programs report ids from: `/sys/fs/cgroup` on a pure v2
/// host, `/sys/fs/cgroup/unified` on a systemd hybrid one (this machine: v1 controllers,
/// an empty v2 tree beside them).
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|r| r.join("cgroup.controllers").exists())
}

/// The memory limit file of a cgroup: v2's `memory.max` where the v2 tree has the memory
/// controller, else the v1 memory hierarchy's `memory.limit_in_bytes`.
fn memory_cgroup_root() -> Option<(PathBuf, &'static str)> {
    if let Some(root) = v2_root()
        && std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
    {
        return Some((root, "memory.max"));
    }
    let v1 = PathBuf::from("/sys/fs/cgroup/memory");
    v1.join("memory.limit_in_bytes")
        .exists()
        .then_some((v1, "memory.limit_in_bytes"))
}

/// The same relative cgroup made in one or more hierarchies for one test, removed (with
/// its children) on drop. Processes must have left it by then; they are ours and short-lived.
struct TestCgroup {
    /// The leaf in each hierarchy.
    leaves: Vec<PathBuf>,
    /// Directories made, outermost first.
    made: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes `rel` (and its missing parents) under each of `roots`.
    fn create(roots: &[PathBuf], rel: &str) -> anyhow::Result<TestCgroup> {
        let mut cg = TestCgroup {
            leaves: Vec::new(),
            made: Vec::new(),
        };
        for root in roots {
            let mut dir = root.clone();
            for part in rel.split('/') {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)
                        .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
                    cg.made.push(dir.clone());
                }
            }
            cg.leaves.push(dir);
        }
        Ok(cg)
    }

    /// Runs `script` with `sh -c` after moving the shell into this cgroup in every
    /// hierarchy (so what it execs starts there).
    fn run(&self, script: &str) -> anyhow::Result<std::process::Child> {
        let moves: Vec<String> = self
            .leaves
            .iter()
            .map(|l| format!("echo $$ > {}", l.join("cgroup.procs").display()))
            .collect();
        Ok(std::process::Command::new("sh")
            .args(["-c", &format!("{} && {script}", moves.join(" && "))])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // The kernel may need a moment to let go of an exited (OOM-killed) task.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A process in a cgroup laid out the way the kubelet's cgroupfs driver lays out pods
/// (`kubepods/besteffort/pod<uid>/<container id>`) is attributed to that pod and container,
/// from the path alone (no API server: none runs here).
fn pod_layout_is_attributed_to_its_pod_and_container(
    agg: &Aggregator,
    agent: &Proc,
) -> anyhow::Result<()> {
    let uid = format!("6f1c2a3b-4d5e-4f60-8a9b-{:012x}", std::process::id());
    let container = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xc0ffee);
    let Some(root) = v2_root() else {
        eprintln!("skipped pod attribution: no cgroup v2 tree on this host");
        return Ok(());
    };
    let cg = TestCgroup::create(
        &[root],
        &format!("kubepods/besteffort/pod{uid}/{container}"),
    )?;
    // `exec /bin/sleep` so the exec event is born in the pod's cgroup.
    let mut child = cg.run("exec /bin/sleep 1")?;
    assert!(child.wait()?.success());
    let q = format!(
        "SELECT pod_uid, container_id, cgroup FROM process_events \
         WHERE kind = 'process.exec' AND comm = 'sleep' AND pod_uid = '{uid}'"
    );
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agg.sql(&q).ok()?;
        (!rows.is_empty()).then_some(rows)
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no exec row attributed to pod {uid}: {:?}; agent log:\n{}",
            agg.sql("SELECT comm, cgroup, pod_uid, container_id FROM process_events WHERE comm = 'sleep'"),
            agent.log_text()
        )
    })?;
    assert_eq!(rows[0][1].as_str(), Some(container.as_str()), "{rows:?}");
    assert!(
        rows[0][2]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("pod{uid}/{container}"))),
        "{rows:?}"
    );
    drop(cg);
    Ok(())
}

/// A process that outgrows its cgroup's `memory.max` is killed by the OOM killer, and the
/// kill is a row of `process_events` naming the victim and its cgroup.
fn oom_kill_in_a_memory_limited_cgroup_is_recorded(
    agg: &Aggregator,
    agent: &Proc,
) -> anyhow::Result<()> {
    let name = format!("ado-e2e-oom-{}", std::process::id());
    let (Some((mem_root, limit_file)), Some(v2)) = (memory_cgroup_root(), v2_root()) else {
        eprintln!("skipped OOM kill: no memory cgroup controller or no cgroup v2 tree");
        return Ok(());
    };
    // The limit lives where the memory controller is; the v2 tree (the same one on a pure
    // v2 host) is where the programs read the victim's cgroup from.
    let mut roots = vec![mem_root.clone()];
    if v2 != mem_root {
        roots.push(v2);
    }
    let cg = TestCgroup::create(&roots, &name)?;
    let limited = mem_root.join(&name);
    std::fs::write(limited.join(limit_file), "16M").context("set the memory limit")?;
    // Without swap to spill into, the limit is hit at once (the file is absent when the
    // kernel has no swap accounting: then there is nothing to turn off).
    let _ = std::fs::write(limited.join("memory.swap.max"), "0");
    // `tail` looks for the last newline of an endless stream without one: it buffers it all.
    let mut hog = cg.run("exec tail /dev/zero")?;
    let status = hog.wait()?;
    assert!(
        !status.success(),
        "tail /dev/zero was supposed to be OOM-killed"
    );
    // On a pure v2 host the victim's cgroup is the limited one and must be named. On a
    // hybrid host (this machine) the v2 id the program reads for an OOM victim does not
    // resolve to our unified cgroup yet (a known gap, docs/ebpf.md): the kill itself, with
    // the victim's name, must still be recorded.
    let pure_v2 = memory_cgroup_root().is_some_and(|(root, _)| Some(root) == v2_root());
    let cgroup_filter = if pure_v2 {
        format!("AND cgroup LIKE '%{name}%'")
    } else {
        String::new()
    };
    let q = format!(
        "SELECT comm, cgroup, severity FROM process_events \
         WHERE kind = 'oom.kill' AND comm = 'tail' {cgroup_filter}"
    );
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agg.sql(&q).ok()?;
        (!rows.is_empty()).then_some(rows)
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no oom.kill row for cgroup {name} (tail exited with {status}): {:?}; agent log:\n{}",
            agg.sql("SELECT kind, comm, cgroup FROM process_events WHERE kind = 'oom.kill'"),
            agent.log_text()
        )
    })?;
    assert_eq!(rows[0][0].as_str(), Some("tail"), "{rows:?}");
    assert_eq!(rows[0][2].as_str(), Some("critical"), "{rows:?}");
    drop(cg);
    Ok(())
}

/// The agent started without CAP_BPF/CAP_PERFMON (as root, under `setpriv` with every
/// capability dropped) keeps running, host metrics still flow, and each disabled eBPF
/// collector says once why, naming the fix.
#[test]
fn agent_without_bpf_capabilities_runs_on_with_host_metrics() -> anyhow::Result<()> {
    if !is_root() || !privileged_tool("setpriv") {
        eprintln!("skipped: needs root and setpriv to drop capabilities");
        return Ok(());
    }
    let dir = temp_dir("kernel-nocaps");
    let pki = Pki::generate(&dir.join("pki"), &["node-u"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    let log = dir.join("agent.log");
    let out = std::fs::File::create(&log)?;
    let child = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
        ])
        .arg(bin_dir().join("node-agent"))
        .args([
            "run",
            "--aggregator",
            &format!("127.0.0.1:{quic}"),
            "--ca",
            &pki.ca().display().to_string(),
            "--cert",
            &pki.node_cert("node-u").display().to_string(),
            "--key",
            &pki.node_key("node-u").display().to_string(),
            "--node",
            "node-u",
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
            "--spool-dir",
            &dir.join("spool").display().to_string(),
            "--batch-secs",
            "1",
            "--no-detect",
        ])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let mut agent = Proc { child, log };
    let host_cpu = "SELECT count(*) FROM samples WHERE node = 'node-u' AND entity = 'host' AND metric = 'cpu.usage_pct'";
    let got = wait_for(Duration::from_secs(30), || {
        (agg.count(host_cpu).ok()? >= 2).then_some(())
    });
    assert!(
        got.is_some(),
        "host metrics did not flow without capabilities; log:\n{}",
        agent.log_text()
    );
    assert!(agent.running(), "agent exited; log:\n{}", agent.log_text());
    let text = agent.log_text();
    let hints = text.matches("needs CAP_BPF and CAP_PERFMON").count();
    assert!(hints >= 1, "no capability hint in the log:\n{text}");
    // One line per disabled collector, not one per tick: the eBPF collectors are few.
    assert!(
        hints <= 8,
        "{hints} capability lines: the message repeats\n{text}"
    );
    let metrics = get(mport, "/metrics")?;
    let down: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("agent_collector_up{") && l.contains("ebpf"))
        .collect();
    assert!(
        !down.is_empty() && down.iter().all(|l| l.ends_with(" 0")),
        "the eBPF collectors must show as down on /metrics: {down:?}"
    );
    agent.terminate(Duration::from_secs(20))?;
    Ok(())
}

/// Whether `tool` is on PATH (runs `tool --version`).
fn privileged_tool(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
