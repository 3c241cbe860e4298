//! `aggregator rca` through the real binary: CSV in, ranking JSON out, exit code 2 and
//! no output file on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rca-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// frontend -> checkout -> payments, 15 min of 1 s samples; payments' CPU jumps at
/// 10 min, latency climbs the chain a second or two later.
fn incident_csv() -> String {
    let t0: i64 = 1_714_556_000; // unix seconds
    let mut out = String::from(
        "timestamp,payments:cpu.usage_pct,payments:http.latency_ms,checkout:http.latency_ms,frontend:http.latency_ms,frontend:http.errors_per_s\n",
    );
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    for i in 0..900i64 {
        let step = |at: i64, d: f64| if i >= at { d } else { 0.0 };
        out.push_str(&format!(
            "{},{:.2},{:.2},{:.2},{:.2},{:.2}\n",
            t0 + i,
            20.0 + 4.0 * noise() + step(600, 75.0),
            20.0 + 2.0 * noise() + step(601, 60.0),
            50.0 + 5.0 * noise() + step(602, 65.0),
            80.0 + 8.0 * noise() + step(603, 70.0),
            (0.5 + noise()).max(0.0) + step(605, 4.0),
        ));
    }
    out
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run aggregator")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn ranks_an_incident_from_csv() {
    let dir = tempdir("ok");
    let series = dir.join("series.csv");
    let graph = dir.join("edges.csv");
    let out = dir.join("out.json");
    std::fs::write(&series, incident_csv()).expect("write");
    std::fs::write(
        &graph,
        "caller,callee\nfrontend,checkout\ncheckout,payments\n",
    )
    .expect("write");

    let o = run(&[
        "rca",
        "--series",
        s(&series),
        "--graph",
        s(&graph),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("out written")).expect("json");
    assert_eq!(v["ranking"][0]["target"], "payments", "{v:#}");
    assert_eq!(v["ranking"][0]["kind"], "cpu");
    assert_eq!(v["ranking"][1]["kind"], "dependency");
    assert_eq!(v["components_considered"], 3);
    let onset = v["onset_ms"].as_i64().expect("onset");
    assert!((onset - 1_714_556_600_000).abs() <= 5_000, "{onset}");
    assert!(
        v["ranking"][0]["explanation"]
            .as_str()
            .is_some_and(|e| e.starts_with("payments is the most likely cause"))
    );

    // An explicit window, as RFC 3339, gives the same root and that onset.
    let o = run(&[
        "rca",
        "--series",
        s(&series),
        "--from",
        "2024-05-01T09:43:00Z",
        "--to",
        "1714556900000",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("out written")).expect("json");
    assert_eq!(v["ranking"][0]["target"], "payments", "{v:#}");
    assert_eq!(v["onset_ms"], 1_714_556_580_000i64);
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = tempdir("bad");
    let out = dir.join("out.json");
    let cases: [(&str, &str); 4] = [
        (
            "timestamp,a:cpu\n1,2\n2,3,4\n",
            "line 3: expected 2 fields, found 3",
        ),
        (
            "timestamp,a:cpu\n1,lots\n",
            "line 2, column 2 (a:cpu): not a number",
        ),
        ("", "empty input"),
        ("timestamp,a:cpu\n1,1e999\n", "out of range"),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let series = dir.join(format!("bad{i}.csv"));
        std::fs::write(&series, text).expect("write");
        let o = run(&["rca", "--series", s(&series), "--out", s(&out)]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(message), "{text:?}: {stderr}");
        assert!(stderr.contains(s(&series)), "names the file: {stderr}");
        assert!(!out.exists(), "nothing written for {text:?}");
    }
    let series = dir.join("good.csv");
    std::fs::write(&series, incident_csv()).expect("write");
    let graph = dir.join("edges.csv");
    std::fs::write(&graph, "a,b\nc\n").expect("write");
    for args in [
        vec!["--graph", s(&graph)],
        vec!["--from", "yesterday"],
        vec!["--to", "1714556900"],
        vec!["--from", "1714556900", "--to", "1714556000"],
    ] {
        let mut all = vec!["rca", "--series", s(&series), "--out", s(&out)];
        all.extend(args.iter());
        let o = run(&all);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.exists(), "nothing written for {args:?}");
    }
    let missing = dir.join("missing.csv");
    let o = run(&["rca", "--series", s(&missing), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
}
