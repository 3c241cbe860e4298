//! End to end: real binaries, real certificates, real QUIC on loopback.
//!
//! What stands in for what: nothing. The aggregator and node agent are the release
//! binaries' debug builds; the "hostile" and "exact resend" cases use `RawClient`, which
//! speaks the same wire protocol frame by frame so it can misbehave on purpose.

use std::time::Duration;

use common::codec;
use common::wire::{BatchFrame, Frame};
use e2e::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn agent_samples_are_queryable_and_survive_a_clean_restart() -> anyhow::Result<()> {
    let dir = temp_dir("basic");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let mut agg = Aggregator::start(
        &pki,
        &dir.join("data"),
        http,
        quic,
        &["--flush-interval-secs", "3"],
    )?;
    let mut agent = start_agent(
        &pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent.log"),
        &["--batch-secs", "1"],
    )?;

    let host_sql = "SELECT metric, count(*), min(value), max(value) FROM samples \
                    WHERE node = 'node-a' AND entity = 'host' AND metric IN ('cpu.usage_pct', 'mem.used_bytes') \
                    GROUP BY metric ORDER BY metric";
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agg.sql(host_sql).ok()?;
        (rows.len() == 2 && rows.iter().all(|r| r[1].as_i64().unwrap_or(0) >= 2)).then_some(rows)
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no cpu+mem samples within 20 s; agent log:\n{}",
            agent.log_text()
        )
    })?;
    let cpu = &rows[0];
    assert_eq!(cpu[0], "cpu.usage_pct");
    assert!(
        cpu[2].as_f64().unwrap() >= 0.0 && cpu[3].as_f64().unwrap() <= 100.0,
        "cpu out of range: {cpu:?}"
    );
    let mem = &rows[1];
    assert!(
        mem[2].as_f64().unwrap() > 1e6,
        "used memory implausible: {mem:?}"
    );

    // Processes are attributed, and the node registered itself.
    assert!(agg.count("SELECT count(*) FROM samples WHERE entity LIKE 'process/%' AND metric = 'proc.rss_bytes'")? > 0);
    let nodes = agg.sql("SELECT node, capabilities FROM nodes")?;
    assert_eq!(nodes[0][0], "node-a");
    assert!(nodes[0][1].as_str().unwrap().contains("host"));
    // The agent's own health endpoints.
    assert_eq!(get(mport, "/healthz")?.trim(), "ok");
    assert!(metric_value(mport, "agent_batches_acked_total", "") >= 1.0);

    // Clean stop: agent first (drains), then the aggregator (flushes). Nothing lost.
    assert!(
        agent.terminate(Duration::from_secs(20))?.success(),
        "agent exit"
    );
    let before = agg.count("SELECT count(*) FROM samples")?;
    let built = metric_value(mport, "agent_samples_built_total", "");
    assert!(built.is_nan() || built > 0.0);
    assert!(
        agg.proc.terminate(Duration::from_secs(30))?.success(),
        "aggregator exit"
    );
    let agg2 = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    assert_eq!(agg2.count("SELECT count(*) FROM samples")?, before);
    assert_eq!(
        agg2.count("SELECT count(*) FROM events WHERE kind = 'agent.started'")?,
        1
    );
    Ok(())
}

#[test]
fn agent_with_a_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let dir = temp_dir("wrongca");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let rogue = Pki::generate(&dir.join("rogue"), &["node-a"])?;
    // The rogue agent trusts the real aggregator (same CA file) but presents a rogue cert.
    std::fs::copy(pki.ca(), rogue.dir.join("trust.pem"))?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    let mut args_pki = rogue.clone();
    args_pki.dir = rogue.dir.clone();
    std::fs::copy(pki.ca(), rogue.ca())?;
    let mut agent = start_agent(
        &args_pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent.log"),
        &["--batch-secs", "1"],
    )?;
    let refused = wait_for(Duration::from_secs(15), || {
        (agg.metric("aggregator_connections_total", "refused_tls") >= 1.0).then_some(())
    });
    assert!(
        refused.is_some(),
        "aggregator did not count a TLS refusal; log:\n{}",
        agg.proc.log_text()
    );
    assert!(agent.running(), "the agent must keep running and retrying");
    assert!(metric_value(mport, "agent_connect_failures_total", "") >= 1.0);
    assert_eq!(agg.count("SELECT count(*) FROM samples")?, 0);
    assert_eq!(get(http, "/healthz")?.trim(), "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_speak_for_another() -> anyhow::Result<()> {
    let dir = temp_dir("identity");
    let pki = Pki::generate(&dir.join("pki"), &["node-a", "node-b"])?;
    let (http, quic) = (free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;

    // Hello naming another node: refused with a reason.
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    match c.hello("node-b", 1).await? {
        Some(Frame::Reject { reason }) => {
            assert!(reason.contains("certificate is for \"node-a\""), "{reason}")
        }
        other => panic!("expected Reject, got {other:?}"),
    }

    // Honest hello, then a batch claiming node-b: the connection is closed, nothing stored.
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    assert!(matches!(
        c.hello("node-a", 2).await?,
        Some(Frame::HelloAck(_))
    ));
    let payload = codec::encode_batch(&test_batch(now_ms(), 3, 2, "spoof"));
    c.send(&Frame::Batch(BatchFrame {
        node: "node-b".into(),
        session: 2,
        seq: 1,
        payload,
    }))
    .await?;
    let reason = c.closed_reason().await;
    assert!(reason.contains("authenticated as"), "{reason}");
    assert_eq!(agg.count("SELECT count(*) FROM samples")?, 0);
    assert_eq!(get(http, "/healthz")?.trim(), "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_bad_sql_get_clear_errors() -> anyhow::Result<()> {
    let dir = temp_dir("hostile");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic) = (free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;

    // An absurd length prefix instead of a hello.
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    c.send_raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await?;
    let reason = c.closed_reason().await;
    assert!(reason.contains("exceeds"), "{reason}");

    // A well-framed batch whose payload is garbage: Nack, connection stays usable.
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    assert!(matches!(
        c.hello("node-a", 7).await?,
        Some(Frame::HelloAck(_))
    ));
    c.send(&Frame::Batch(BatchFrame {
        node: "node-a".into(),
        session: 7,
        seq: 1,
        payload: vec![0x28, 0xb5, 0x2f, 0xfd, 9, 9, 9],
    }))
    .await?;
    match c.recv().await? {
        Some(Frame::Nack { seq: 1, reason, .. }) => {
            assert!(reason.contains("decompression"), "{reason}")
        }
        other => panic!("expected Nack, got {other:?}"),
    }
    let payload = codec::encode_batch(&test_batch(now_ms(), 2, 3, "ok"));
    c.send(&Frame::Batch(BatchFrame {
        node: "node-a".into(),
        session: 7,
        seq: 2,
        payload,
    }))
    .await?;
    assert_eq!(c.recv().await?, Some(Frame::Ack { session: 7, seq: 2 }));
    // Garbage body with a valid length prefix.
    c.send_raw(&[3, 0, 0, 0, 0xee, 0xee, 0xee]).await?;
    let reason = c.closed_reason().await;
    assert!(reason.contains("malformed"), "{reason}");
    assert_eq!(agg.count("SELECT count(*) FROM samples")?, 6);

    // Bad SQL: 400 with a message, never a 500, and the server stays up.
    for (sql, needle) in [
        ("SELEC 1", "SELEC"),
        ("SELECT nope FROM samples", "nope"),
        ("DROP TABLE samples", "only queries"),
        ("INSERT INTO samples VALUES (1)", "only queries"),
        ("COPY samples TO '/tmp/x.parquet'", "only queries"),
        ("SELECT * FROM '/etc/passwd'", ""),
    ] {
        let (status, body) = post_sql(http, sql)?;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(needle),
            "{sql}: {body}"
        );
    }
    assert_eq!(get(http, "/healthz")?.trim(), "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_batches_survive_sigkill_and_resends_are_not_duplicated() -> anyhow::Result<()> {
    let dir = temp_dir("sigkill");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic) = (free_port(), free_port());
    let data = dir.join("data");
    let mut agg = Aggregator::start(&pki, &data, http, quic, &["--flush-interval-secs", "2"])?;

    let session = 42;
    let t0 = now_ms();
    let batches: Vec<Vec<u8>> = (0..40)
        .map(|i| codec::encode_batch(&test_batch(t0 + i * 10_000, 25, 4, "kill")))
        .collect();
    let expected = 40 * 25 * 4;
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    assert!(matches!(
        c.hello("node-a", session).await?,
        Some(Frame::HelloAck(_))
    ));
    for (i, payload) in batches.iter().enumerate() {
        c.send(&Frame::Batch(BatchFrame {
            node: "node-a".into(),
            session,
            seq: i as u64 + 1,
            payload: payload.clone(),
        }))
        .await?;
        // Half-way, give the flusher time to move some data to Parquet.
        if i == 20 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }
    for i in 0..40u64 {
        assert_eq!(
            c.recv().await?,
            Some(Frame::Ack {
                session,
                seq: i + 1
            })
        );
    }
    agg.proc.kill9();
    drop(c);

    let agg = Aggregator::start(&pki, &data, http, quic, &[])?;
    assert_eq!(
        agg.count("SELECT count(*) FROM samples WHERE metric LIKE 'test.kill.%'")?,
        expected
    );

    // The agent never saw the acks (say): it reconnects and sends everything again.
    let mut c = RawClient::connect(&pki, &pki, "node-a", quic).await?;
    match c.hello("node-a", session).await? {
        Some(Frame::HelloAck(ack)) => assert_eq!(ack.durable_through, Some(40)),
        other => panic!("expected HelloAck, got {other:?}"),
    }
    for (i, payload) in batches.iter().enumerate() {
        c.send(&Frame::Batch(BatchFrame {
            node: "node-a".into(),
            session,
            seq: i as u64 + 1,
            payload: payload.clone(),
        }))
        .await?;
    }
    for i in 0..40u64 {
        assert_eq!(
            c.recv().await?,
            Some(Frame::Ack {
                session,
                seq: i + 1
            })
        );
    }
    assert_eq!(
        agg.count("SELECT count(*) FROM samples WHERE metric LIKE 'test.kill.%'")?,
        expected
    );
    assert_eq!(
        agg.count("SELECT count(*) FROM (SELECT ts, metric, count(*) AS n FROM samples GROUP BY ts, metric HAVING count(*) > 1)")?,
        0
    );
    Ok(())
}

#[test]
fn real_agent_rides_through_an_aggregator_sigkill_without_duplicates() -> anyhow::Result<()> {
    let dir = temp_dir("agentkill");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let data = dir.join("data");
    let mut agg = Aggregator::start(&pki, &data, http, quic, &["--flush-interval-secs", "2"])?;
    let mut agent = start_agent(
        &pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent.log"),
        &["--batch-secs", "1"],
    )?;
    wait_for(Duration::from_secs(20), || {
        (agg.count("SELECT count(*) FROM samples").ok()? > 0).then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("no data before the kill"))?;
    std::thread::sleep(Duration::from_secs(3));
    agg.proc.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let agg = Aggregator::start(&pki, &data, http, quic, &["--flush-interval-secs", "2"])?;
    // The agent reconnects by itself and delivers what piled up meanwhile. It notices the
    // old connection is gone only at its 20 s idle timeout (the new process cannot send a
    // stateless reset the agent would accept), so allow that plus backoff and a busy CI
    // machine.
    let acked_before = metric_value(mport, "agent_batches_acked_total", "");
    wait_for(Duration::from_secs(60), || {
        (metric_value(mport, "agent_batches_acked_total", "") > acked_before + 2.0).then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("agent did not resume; log:\n{}", agent.log_text()))?;
    assert!(agent.terminate(Duration::from_secs(20))?.success());
    let dups = agg.count(
        "SELECT count(*) FROM (SELECT ts, entity, metric, labels, count(*) FROM samples GROUP BY ts, entity, metric, labels HAVING count(*) > 1)",
    )?;
    assert_eq!(dups, 0, "duplicate rows after resend");
    // Every tick the agent built is there: no gap around the kill.
    let built = agg.count("SELECT count(DISTINCT ts) FROM samples WHERE entity = 'host' AND metric = 'mem.used_bytes'")?;
    assert!(built >= 5, "only {built} ticks stored");
    Ok(())
}

#[test]
fn agent_sigkill_during_an_outage_loses_nothing_thanks_to_the_spool() -> anyhow::Result<()> {
    let dir = temp_dir("spool");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let data = dir.join("data");
    let spool = dir.join("agent-spool");
    let spool_arg = spool.display().to_string();
    let agent_args = ["--batch-secs", "1", "--spool-dir", spool_arg.as_str()];
    let mut agg = Aggregator::start(&pki, &data, http, quic, &[])?;
    let mut agent = start_agent(
        &pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent1.log"),
        &agent_args,
    )?;
    wait_for(Duration::from_secs(20), || {
        (agg.count("SELECT count(*) FROM samples").ok()? > 0).then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("no data before the outage"))?;

    // Outage: the aggregator goes away; the agent spools. Then the agent dies too.
    agg.proc.kill9();
    let outage_start = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    agent.kill9();
    let outage_end = now_ms();

    let agg = Aggregator::start(&pki, &data, http, quic, &[])?;
    let mut agent = start_agent(
        &pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent2.log"),
        &agent_args,
    )?;
    let during = format!(
        "SELECT count(DISTINCT ts) FROM samples WHERE entity = 'host' AND metric = 'mem.used_bytes' \
         AND ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
        outage_start + 1500,
        outage_end - 1500
    );
    let got = wait_for(Duration::from_secs(30), || {
        let n = agg.count(&during).ok()?;
        (n >= 2).then_some(n)
    });
    assert!(
        got.is_some(),
        "ticks from the outage never arrived; agent log:\n{}",
        agent.log_text()
    );
    assert!(agent.terminate(Duration::from_secs(20))?.success());
    let dups = agg.count(
        "SELECT count(*) FROM (SELECT ts, entity, metric, labels FROM samples GROUP BY ts, entity, metric, labels HAVING count(*) > 1)",
    )?;
    assert_eq!(dups, 0);
    // One session throughout: the spool keeps it across agent restarts.
    assert_eq!(agg.count("SELECT count(DISTINCT session) FROM nodes")?, 1);
    Ok(())
}
