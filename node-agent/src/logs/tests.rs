//! Behaviour tests for log mining, formats, tailing and the analyzer.

use std::io::Write;

use super::formats::{Stream, flatten_json, parse_cri, parse_docker};
use super::*;

fn mine(lines: &[&str]) -> (Vec<MatchResult>, TemplateMiner) {
    let mut m = TemplateMiner::new(MinerConfig::default());
    let res = lines.iter().map(|l| m.add(l)).collect();
    (res, m)
}

#[test]
fn groups_lines_that_differ_only_in_variables() {
    let (r, m) = mine(&[
        "Connected to 10.0.0.1 port 443",
        "Connected to 10.0.0.7 port 8080",
        "Disconnected from 10.0.0.7 port 8080",
    ]);
    assert_eq!(r[0].template_id, r[1].template_id);
    assert_eq!(r[1].template, "Connected to <*> port <*>");
    assert!(r[0].is_new && !r[1].is_new);
    assert_ne!(r[2].template_id, r[0].template_id);
    assert_eq!(m.len(), 2);
}

#[test]
fn generalises_words_and_keeps_ids_stable() {
    let (r, m) = mine(&[
        "Accepted password for root from 10.1.1.1 port 22 ssh2",
        "Accepted password for alice from 10.1.1.2 port 2222 ssh2",
        "Accepted password for bob from 10.1.1.3 port 22 ssh2",
        "session opened for user root by (uid=0)",
        "session opened for user alice by (uid=1000)",
    ]);
    assert_eq!(r[0].template_id, r[2].template_id);
    assert_eq!(
        r[2].template,
        "Accepted password for <*> from <*> port <*> <*>"
    );
    assert_eq!(r[3].template_id, r[4].template_id);
    assert_eq!(r[4].template, "session opened for user <*> by (uid=<*>)");
    assert_eq!(
        m.template(r[0].template_id).as_deref(),
        Some("Accepted password for <*> from <*> port <*> <*>")
    );
}

#[test]
fn separates_different_events_of_the_same_shape() {
    let (r, _) = mine(&[
        "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 terminating",
        "081109 203807 222 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block blk_-6952295868487656571 terminating",
        "081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.73.220:50010 is added to blk_7128370237687728475 size 67108864",
        "081109 204015 308 INFO dfs.DataNode$PacketResponder: Received block blk_8229193803249955061 of size 67108864 from /10.251.106.10",
        "081109 204106 329 INFO dfs.DataNode$PacketResponder: Received block blk_-6670958622368987959 of size 67108864 from /10.251.106.50",
    ]);
    assert_eq!(r[0].template_id, r[1].template_id);
    assert_eq!(r[3].template_id, r[4].template_id);
    assert_ne!(r[0].template_id, r[2].template_id);
    assert_ne!(r[0].template_id, r[3].template_id);
    assert_eq!(
        r[4].template,
        "<*> <*> <*> INFO dfs.DataNode$PacketResponder: Received block blk_<*> of size <*> from <*>"
    );
}

#[test]
fn miner_is_bounded_and_counts_evictions() {
    let cfg = MinerConfig {
        max_templates: 5,
        ..MinerConfig::default()
    };
    let mut m = TemplateMiner::new(cfg);
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut ids = Vec::new();
    for w in words {
        ids.push(m.add(&format!("{w} {w} {w} happened")).template_id);
    }
    assert_eq!(m.len(), 5);
    assert_eq!(m.evictions(), 3);
    // Ids are never reused, and an evicted pattern comes back as a new template.
    let again = m.add("alpha alpha alpha happened");
    assert!(again.is_new && again.template_id > *ids.last().unwrap_or(&0));
    // Over-long lines are cut.
    let mut m = TemplateMiner::new(MinerConfig {
        max_line_len: 10,
        ..MinerConfig::default()
    });
    let r = m.add(&"x".repeat(1000));
    assert_eq!(r.template.len(), 10);
    assert_eq!(m.truncated_lines(), 1);
    assert_eq!(m.add("").template, "");
}

#[test]
fn cri_lines_parse_and_partials_join() {
    let l = parse_cri("2024-01-01T00:00:00.000000000Z stdout F hello world").expect("cri");
    assert_eq!(
        (l.stream, l.partial, l.message),
        (Stream::Stdout, false, "hello world")
    );
    assert!(
        parse_cri("2024-01-01T00:00:00Z stderr P ")
            .is_some_and(|l| l.partial && l.message.is_empty())
    );
    assert!(parse_cri("hello world").is_none());
    assert!(parse_cri("2024-01-01T00:00:00Z stdin F x").is_none());

    let mut a = Assembler::new(LogFormat::Auto, 1024);
    assert_eq!(
        a.push(1, "2024-01-01T00:00:00.1Z stdout P part one, "),
        None
    );
    let err = a
        .push(2, "2024-01-01T00:00:00.2Z stderr F an error")
        .expect("stderr is separate");
    assert_eq!(
        (err.text.as_str(), err.parts.as_slice()),
        ("an error", &[2][..])
    );
    assert_eq!(
        a.push(3, "2024-01-01T00:00:00.3Z stdout P part two, "),
        None
    );
    let joined = a
        .push(4, "2024-01-01T00:00:00.4Z stdout F end")
        .expect("joined");
    assert_eq!(joined.text, "part one, part two, end");
    assert_eq!(joined.parts, vec![1, 3, 4]);
    assert_eq!(joined.stream, Some(Stream::Stdout));
    // Bounded: an endless partial message is cut and flagged.
    let mut a = Assembler::new(LogFormat::Cri, 8);
    assert_eq!(a.push(1, "2024-01-01T00:00:00Z stdout P 0123456789"), None);
    let m = a
        .push(2, "2024-01-01T00:00:00Z stdout F abc")
        .expect("message");
    assert_eq!((m.text.as_str(), m.truncated), ("01234567", true));
    // Unfinished partials come out at the end.
    let mut a = Assembler::new(LogFormat::Cri, 100);
    assert_eq!(a.push(7, "2024-01-01T00:00:00Z stdout P dangling"), None);
    assert_eq!(
        a.flush().first().map(|m| m.text.clone()),
        Some("dangling".to_string())
    );
}

#[test]
fn docker_json_and_app_json_lines() {
    let d = parse_docker(
        r#"{"log":"GET /healthz 200\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}"#,
    )
    .expect("docker");
    assert_eq!(
        (d.message.as_str(), d.partial, d.stream),
        ("GET /healthz 200", false, Stream::Stdout)
    );
    let mut a = Assembler::new(LogFormat::Auto, 1024);
    assert_eq!(
        a.push(1, r#"{"log":"long li","stream":"stderr","time":"t"}"#),
        None
    );
    let m = a
        .push(2, r#"{"log":"ne done\n","stream":"stderr","time":"t"}"#)
        .expect("joined");
    assert_eq!(
        (m.text.as_str(), m.stream),
        ("long line done", Some(Stream::Stderr))
    );
    // App JSON inside Docker JSON is flattened, time keys dropped, keys sorted.
    let inner =
        r#"{\"level\":\"info\",\"msg\":\"user logged in\",\"user\":\"alice\",\"ts\":1700000000}"#;
    let m = a
        .push(
            3,
            &format!(r#"{{"log":"{inner}\n","stream":"stdout","time":"t"}}"#),
        )
        .expect("message");
    assert_eq!(m.text, "user logged in level=info user=alice");
    assert_eq!(
        flatten_json(r#"{"a":1,"b":"x y"}"#).as_deref(),
        Some(r#"a=1 b="x y""#)
    );
    assert_eq!(flatten_json("not json"), None);
    assert_eq!(flatten_json("[1,2]"), None);
}

#[test]
fn backtest_writes_one_row_per_line_with_quoting() {
    let text = "\
2024-01-01T00:00:00Z stdout P Connected to 10.0.0.1,
2024-01-01T00:00:01Z stdout F  port 443
2024-01-01T00:00:02Z stdout F Connected to 10.0.0.2, port 80
plain \"quoted\" line

";
    let mut out = Vec::new();
    let n = backtest::run(text, LogFormat::Auto, &MinerConfig::default(), &mut out).expect("run");
    assert_eq!(n, 5);
    let csv = String::from_utf8(out).expect("utf8");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "line_number,template_id,template");
    assert_eq!(rows[1], "1,1,\"Connected to <*>, port <*>\"");
    assert_eq!(rows[2], "2,1,\"Connected to <*>, port <*>\"");
    assert_eq!(rows[3], "3,1,\"Connected to <*>, port <*>\"");
    assert_eq!(rows[4], "4,2,\"plain \"\"quoted\"\" line\"");
    assert_eq!(rows[5], "5,3,");
}

fn write(path: &std::path::Path, data: &str, append: bool) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .expect("open");
    f.write_all(data.as_bytes()).expect("write");
}

#[test]
fn tailer_follows_appends_truncation_and_rotation() {
    let dir = std::env::temp_dir().join(format!("scarlet-tail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("app.log");
    let _ = std::fs::remove_file(&path);
    let cfg = TailConfig {
        max_bytes_per_poll: 1 << 20,
        max_line_len: 32,
        from_start: false,
    };
    let mut t = FileTailer::new(&path, cfg);
    let mut out = Vec::new();
    // Missing file: nothing, no error.
    assert_eq!(t.poll(&mut out).expect("poll"), 0);
    write(&path, "one\ntwo\nthr", true);
    // Appeared after the first poll: read from its start; a partial line waits.
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["one", "two"]);
    write(&path, "ee\r\nfour\n", true);
    out.clear();
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["three", "four"]);
    // Over-long line: its head is kept, the rest skipped.
    write(&path, &format!("{}\nfive\n", "x".repeat(100)), true);
    out.clear();
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["x".repeat(32), "five".to_string()]);
    assert_eq!(t.stats().truncated_lines, 1);
    // copytruncate: the file shrinks under the offset.
    write(&path, "after truncate\n", false);
    out.clear();
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["after truncate"]);
    assert_eq!(t.stats().truncations, 1);
    // Rename + recreate: the rest of the old file (even without newline), then the new one.
    write(&path, "last old line", true);
    std::fs::rename(&path, dir.join("app.log.1")).expect("rename");
    out.clear();
    t.poll(&mut out).expect("poll");
    assert!(out.is_empty(), "{out:?}");
    write(&path, "new file line\n", true);
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["last old line", "new file line"]);
    assert_eq!(t.stats().rotations, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tailer_caps_bytes_per_poll_and_set_caps_files() {
    let dir = std::env::temp_dir().join(format!("scarlet-tail-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("big.log");
    write(&path, &"0123456789\n".repeat(100), false);
    let cfg = TailConfig {
        max_bytes_per_poll: 110,
        max_line_len: 64,
        from_start: true,
    };
    let mut t = FileTailer::new(&path, cfg.clone());
    let mut out = Vec::new();
    assert_eq!(t.poll(&mut out).expect("poll"), 10);
    assert_eq!(t.offset(), 110);
    let mut polls = 1;
    while t.poll(&mut out).expect("poll") > 0 {
        polls += 1;
    }
    assert_eq!((out.len(), polls), (100, 10));
    // From the end: existing content is skipped.
    let mut t = FileTailer::new(
        &path,
        TailConfig {
            from_start: false,
            ..cfg.clone()
        },
    );
    out.clear();
    assert_eq!(t.poll(&mut out).expect("poll"), 0);
    let mut set = TailSet::new(cfg, 2);
    assert!(
        set.add(dir.join("a")).is_ok()
            && set.add(dir.join("b")).is_ok()
            && set.add(dir.join("a")).is_ok()
    );
    assert!(set.add(dir.join("c")).is_err());
    assert_eq!(set.rejected(), 1);
    let mut lines = Vec::new();
    assert!(set.poll(&mut lines).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn analyzer_reports_counts_new_templates_and_error_bursts() {
    let cfg = AnalyzerConfig {
        new_template_grace_lines: 40,
        ..AnalyzerConfig::default()
    };
    let mut a = LogAnalyzer::new(cfg);
    let mut t = 0i64;
    for interval in 0..10 {
        for i in 0..30 {
            a.handle_line(t, &format!("GET /api/items/{i} 200 {}ms", i * 3));
            t += 100;
        }
        a.handle_line(t, "ERROR failed to reach db at 10.0.0.5:5432");
        let r = a.poll_interval(t);
        assert_eq!(r.lines, 31);
        assert_eq!(r.error_lines, 1);
        assert!(
            r.anomalies.is_empty(),
            "interval {interval}: {:?}",
            r.anomalies
        );
        if interval == 0 {
            assert_eq!(r.new_templates.len(), 2);
            assert_eq!(r.new_templates[0].samples.len(), 3);
            assert_eq!(r.counts[0].count, 30);
        }
    }
    // A new pattern and a burst of errors.
    a.handle_line(t, "WARN disk /dev/sda1 is 91% full");
    for _ in 0..40 {
        a.handle_line(t, "ERROR failed to reach db at 10.0.0.5:5432");
    }
    let r = a.poll_interval(t + 1000);
    let kinds: Vec<_> = r.anomalies.iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        [LogAnomalyKind::NewTemplate, LogAnomalyKind::ErrorBurst],
        "{:?}",
        r.anomalies
    );
    assert!(
        r.anomalies[1].score > 0.9
            && r.anomalies[1]
                .explanation
                .starts_with("40 error-level lines")
    );
    assert_eq!(r.anomalies[0].samples, ["WARN disk /dev/sda1 is 91% full"]);
    // A burst that goes on is not reported again.
    for _ in 0..40 {
        a.handle_line(t, "ERROR failed to reach db at 10.0.0.5:5432");
    }
    assert!(a.poll_interval(t + 2000).anomalies.is_empty());
}

#[test]
fn error_lines_are_recognised() {
    for l in [
        "2024-01-01 ERROR something",
        "E0102 15:04:05.000000    1 kubelet.go:123] failed",
        "panic: runtime error: index out of range",
        "java.lang.NullPointerException: boom",
        "Traceback (most recent call last):",
        "level=error msg=x",
        r#"{"level":"error","msg":"x"}"#,
        "2024/01/01 00:00:00 [error] 12#0: upstream timed out",
    ] {
        assert!(analyzer::is_error_line(l), "{l}");
    }
    for l in [
        "INFO all good",
        "errors=0",
        "I0102 15:04:05 kubelet.go:1] ok",
        "no error found",
    ] {
        assert!(!analyzer::is_error_line(l), "{l}");
    }
}
