//! Log mining, end to end: the real agent follows a plain log file (`--log-file`); steady
//! INFO lines, then a burst of a new ERROR template, must give anomaly rows (new template
//! and error burst) in the aggregator's `anomalies` table within one batch interval plus
//! slack, with readable explanations, and the `log.*` samples and `log.template.new`
//! events must arrive too.
//!
//! Own test binary, so it does not share the machine with the other end-to-end tests.

use std::io::Write;
use std::time::{Duration, Instant};

use e2e::*;

/// Batch (and log reporting) interval given to the agent.
const BATCH_SECS: u64 = 2;

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file");
    f.write_all(text.as_bytes()).expect("append");
}

fn text(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("")
}

#[test]
fn error_burst_in_a_log_file_is_an_anomaly_within_one_interval() -> anyhow::Result<()> {
    let dir = temp_dir("logs");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    let log = dir.join("app.log");
    // A short learning period, so the test need not write a thousand lines first.
    let cfg = dir.join("logs.json");
    std::fs::write(&cfg, r#"{"analyzer": {"new_template_grace_lines": 100}}"#)?;
    let (log_arg, cfg_arg) = (log.display().to_string(), cfg.display().to_string());
    let batch = BATCH_SECS.to_string();
    let mut agent = start_agent(
        &pki,
        "node-a",
        "node-a",
        quic,
        mport,
        dir.join("agent.log"),
        &[
            "--interval-secs",
            "1",
            "--batch-secs",
            batch.as_str(),
            "--no-ebpf",
            // Only our file: the host's own container logs are not this test's business.
            "--log-dir",
            "none",
            "--log-file",
            log_arg.as_str(),
            "--log-config",
            cfg_arg.as_str(),
        ],
    )?;
    let followed = wait_for(Duration::from_secs(15), || {
        (metric_value(mport, "agent_log_files_followed", "") >= 1.0).then_some(())
    });
    assert!(followed.is_some(), "agent log:\n{}", agent.log_text());

    // Steady INFO traffic: one template, many values.
    let mut steady = 0;
    for round in 0..16 {
        let mut chunk = String::new();
        for i in 0..25 {
            chunk.push_str(&format!(
                "2026-01-01T00:00:{:02}Z INFO served GET /api/items/{} in {} ms\n",
                round % 60,
                round * 25 + i,
                (i * 7) % 50
            ));
            steady += 1;
        }
        append(&log, &chunk);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(agent.running(), "agent died: {}", agent.log_text());

    // The burst: a template never seen, at error level, all at once.
    let mut burst = String::new();
    for i in 0..50 {
        burst.push_str(&format!(
            "2026-01-01T00:01:00Z ERROR payment gateway refused charge {i}: upstream connect timeout\n"
        ));
    }
    append(&log, &burst);
    let burst_at = Instant::now();
    let sql = "SELECT entity, metric, detector, score, explanation, labels, value \
               FROM anomalies WHERE entity LIKE 'log/%' ORDER BY ts";
    let rows = wait_for(Duration::from_secs(BATCH_SECS + 6), || {
        let rows = agg.sql(sql).ok()?;
        let detectors: Vec<&str> = rows.iter().map(|r| text(&r[2])).collect();
        (detectors.contains(&"log.error_burst") && detectors.contains(&"log.new_template"))
            .then_some(rows)
    });
    let Some(rows) = rows else {
        panic!(
            "no log anomalies within {} s of the burst; rows: {:?}; agent log:\n{}",
            BATCH_SECS + 6,
            agg.sql(sql),
            agent.log_text()
        );
    };
    eprintln!("log anomalies after {:?}: {rows:#?}", burst_at.elapsed());
    let entity = format!("log/file/{}", log_arg.trim_start_matches('/'));
    for r in &rows {
        assert_eq!(text(&r[0]), entity, "{r:?}");
        let score = r[3].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&score), "{r:?}");
    }
    let burst_row = rows
        .iter()
        .find(|r| text(&r[2]) == "log.error_burst")
        .expect("burst row");
    assert_eq!(text(&burst_row[1]), "log.errors");
    assert_eq!(burst_row[6].as_f64(), Some(50.0), "{burst_row:?}");
    let explanation = text(&burst_row[4]);
    assert!(
        explanation.contains("50 error-level lines") && explanation.contains("payment gateway"),
        "explanation: {explanation}"
    );
    let new_row = rows
        .iter()
        .find(|r| text(&r[2]) == "log.new_template")
        .expect("new-template row");
    assert_eq!(text(&new_row[1]), "log.template.count");
    assert!(text(&new_row[5]).starts_with("template="), "{new_row:?}");
    let explanation = text(&new_row[4]);
    assert!(
        explanation.contains("new log pattern") && explanation.contains("ERROR payment gateway"),
        "explanation: {explanation}"
    );
    // The HTTP API lists them too.
    let api: serde_json::Value = serde_json::from_str(&get(http, "/api/v1/anomalies?limit=100")?)?;
    let listed = api["anomalies"]
        .as_array()
        .map(|a| a.iter().filter(|x| text(&x["entity"]) == entity).count())
        .unwrap_or(0);
    assert!(listed >= 2, "{api}");

    // Per-interval samples: every line counted once, the errors, the template counts.
    let sums = wait_for(Duration::from_secs(BATCH_SECS + 6), || {
        let rows = agg
            .sql(&format!(
                "SELECT metric, sum(value) FROM samples WHERE entity = '{entity}' GROUP BY metric"
            ))
            .ok()?;
        let get = |m: &str| {
            rows.iter()
                .find(|r| text(&r[0]) == m)
                .and_then(|r| r[1].as_f64())
        };
        let lines = get("log.lines")?;
        (lines >= (steady + 50) as f64).then(|| {
            (
                lines,
                get("log.errors"),
                get("log.template.count"),
                get("log.templates"),
            )
        })
    });
    let Some((lines, errors, per_template, templates)) = sums else {
        panic!(
            "log.* samples incomplete: {:?}",
            agg.sql(&format!(
                "SELECT metric, labels, sum(value) FROM samples WHERE entity = '{entity}' GROUP BY metric, labels"
            ))
        );
    };
    assert_eq!(lines, (steady + 50) as f64);
    assert_eq!(errors, Some(50.0));
    assert_eq!(per_template, Some(lines));
    assert!(templates.is_some_and(|t| t >= 2.0), "{templates:?}");
    let new_events = agg.count(&format!(
        "SELECT count(*) FROM events WHERE kind = 'log.template.new' AND entity = '{entity}' \
         AND attrs LIKE '%sample_1=%ERROR payment gateway%'"
    ))?;
    assert_eq!(new_events, 1);

    // The agent's own account of it.
    assert!(metric_value(mport, "agent_log_lines_read_total", "") >= (steady + 50) as f64);
    assert!(metric_value(mport, "agent_log_templates", "") >= 2.0);
    assert_eq!(
        metric_value(mport, "agent_log_anomalies_total", "error_burst"),
        1.0
    );
    agent.terminate(Duration::from_secs(20))?;
    Ok(())
}
