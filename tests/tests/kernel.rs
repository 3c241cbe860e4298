//! eBPF telemetry end to end: real programs on this kernel, through the real agent and
//! aggregator, read back with SQL. Needs root (CAP_BPF + CAP_PERFMON); without it the test
//! says so and checks the agent degrades instead.

use std::io::{Read, Write};
use std::time::Duration;

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
    Ok(())
}
