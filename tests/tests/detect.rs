//! On-node anomaly detection, end to end: a real CPU hog and a real memory leak on this
//! host must show up in `GET /api/v1/anomalies` within 30 s, with an explanation.
//!
//! Own test binary, so it does not share the machine with the other end-to-end tests
//! (cargo runs test binaries one after another).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn anomalies_since(http: u16, since_ms: i64) -> Vec<serde_json::Value> {
    let Ok(body) = get(
        http,
        &format!("/api/v1/anomalies?since={since_ms}&limit=1000"),
    ) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["anomalies"].as_array().cloned().unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn wait_for_anomaly(
    http: u16,
    since: i64,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    let found = wait_for(Duration::from_secs(30), || {
        anomalies_since(http, since).into_iter().find(|a| pred(a))
    });
    match found {
        Some(a) => {
            eprintln!("{what}: detected after {:?}: {a}", started.elapsed());
            a
        }
        None => panic!(
            "{what}: no anomaly within 30 s; got {:#?}",
            anomalies_since(http, since)
        ),
    }
}

#[test]
fn cpu_hog_and_memory_leak_are_reported_with_explanations() -> anyhow::Result<()> {
    let dir = temp_dir("detect");
    let pki = Pki::generate(&dir.join("pki"), &["node-a"])?;
    let (http, quic, mport) = (free_port(), free_port(), free_port());
    let _agg = Aggregator::start(&pki, &dir.join("data"), http, quic, &[])?;
    // A short warm-up so the test does not wait a minute for the detectors to learn.
    let cfg = dir.join("detect.json");
    std::fs::write(&cfg, r#"{"warmup": 20}"#)?;
    let cfg_arg = cfg.display().to_string();
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
            "1",
            "--detect-config",
            cfg_arg.as_str(),
        ],
    )?;
    std::thread::sleep(Duration::from_secs(30));
    assert!(agent.running(), "agent died: {}", agent.log_text());

    // CPU hog: one busy loop per core.
    let since = now_ms();
    let hogs: Vec<Kill> = (0..2)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .map(Kill)
        })
        .collect::<Result<_, _>>()?;
    let a = wait_for_anomaly(http, since, "cpu hog", |a| {
        let m = a["metric"].as_str().unwrap_or("");
        a["entity"] == "host"
            && (m.starts_with("cpu.")
                || m.starts_with("psi.cpu")
                || m.starts_with("load.")
                || m == "proc.running")
    });
    assert!(
        a["explanation"].as_str().unwrap_or("").len() > 20,
        "explanation too thin: {a}"
    );
    assert!((0.0..=1.0).contains(&a["score"].as_f64().unwrap_or(-1.0)));
    drop(hogs);
    std::thread::sleep(Duration::from_secs(5));

    // Memory leak: a process growing by ~40 MB a second.
    let since = now_ms();
    let _leak = Kill(
        Command::new("python3")
            .args(["-c", "import time\nheld = []\nwhile True:\n    held.append(bytearray(8_000_000))\n    time.sleep(0.2)"])
            .spawn()?,
    );
    let a = wait_for_anomaly(http, since, "memory leak", |a| {
        let m = a["metric"].as_str().unwrap_or("");
        a["entity"] == "host" && (m.starts_with("mem.") || m.starts_with("psi.memory"))
    });
    assert!(
        a["explanation"].as_str().unwrap_or("").len() > 20,
        "explanation too thin: {a}"
    );
    Ok(())
}
