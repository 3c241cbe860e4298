//! Behaviour tests for log mining, formats, tailing and the analyzer.

use std::io::Write;

use super::formats::{Stream, flatten_json, parse_cri, parse_docker};
use super::pipeline;
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
fn key_value_words_are_parameters_not_routes() {
    // klog structured lines: the value of `key="word"` varies per line of one event.
    let (r, _) = mine(&[
        r#"I1012 00:00:30.146279    8917 eviction_manager.go:366] "Eviction manager: attempting to reclaim" resourceName="memory""#,
        r#"W1012 00:00:31.146279    8918 eviction_manager.go:366] "Eviction manager: attempting to reclaim" resourceName="nodefs""#,
        r#"W1012 00:00:32.146279    8919 kubelet.go:2430] "SyncLoop UPDATE" source="api" pods=["default/web-1"]"#,
    ]);
    assert_eq!(r[0].template_id, r[1].template_id);
    assert!(
        r[1].template.ends_with("resourceName=<*>"),
        "{}",
        r[1].template
    );
    assert_ne!(r[0].template_id, r[2].template_id);
}

#[test]
fn masked_headers_neither_join_nor_split_messages() {
    // Same header shape, different messages: the masked header must not make them alike.
    let (r, _) = mine(&[
        "2024-05-01 00:00:02.440  INFO 1 --- [nio-8080-exec-78] c.e.shop.UserService : Fetched user 11756 in 513 ms",
        "2024-05-01 00:00:03.440  INFO 1 --- [nio-8080-exec-7] c.e.shop.OrderController : Inventory reserved for order 1234: 1,2,3",
        "2024-05-01 00:00:04.440  INFO 1 --- [nio-8080-exec-9] c.e.shop.UserService : Fetched user 12 in 5 ms",
    ]);
    assert_ne!(r[0].template_id, r[1].template_id);
    assert_eq!(r[0].template_id, r[2].template_id);
}

#[test]
fn access_log_lines_are_one_event() {
    let (r, _) = mine(&[
        r#"10.0.0.1 - - [10/Oct/2023:00:01:56 +0000] "GET /index.html HTTP/1.1" 200 512 "-" "curl/8.4.0""#,
        r#"10.0.0.2 - alice [10/Oct/2023:00:01:57 +0000] "POST /api/v1/users HTTP/1.1" 201 12 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)""#,
        r#"10.0.0.3 - bob [10/Oct/2023:00:01:58 +0000] "DELETE /x HTTP/1.1" 404 0 "-" "kube-probe/1.28""#,
        r#"2023/10/10 00:01:59 [error] 12#12: *3 connect() failed (111: Connection refused) while connecting to upstream"#,
    ]);
    assert_eq!(r[0].template_id, r[1].template_id);
    assert_eq!(r[0].template_id, r[2].template_id);
    assert_eq!(
        r[2].template,
        r#"<*> <*> <*> [<*> <*>] "<*>" <*> <*> "<*>" "<*>""#
    );
    assert_ne!(r[0].template_id, r[3].template_id);
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
        max_lag_bytes: 0,
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
        max_lag_bytes: 0,
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

/// A unique scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "scarlet-logs-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Scratch(dir)
    }

    fn file(&self, rel: &str, data: &str) -> std::path::PathBuf {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        write(&path, data, true);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn origins_come_from_kubelet_and_docker_paths() {
    let o = Origin::from_pod_dir("shop_cart-7d9f_5f3c-11ee-9a1b", "server").expect("pod dir");
    assert_eq!(o.entity, "log/pod/5f3c-11ee-9a1b/server");
    assert_eq!(
        o.labels(),
        [
            ("container".to_string(), "server".to_string()),
            ("namespace".to_string(), "shop".to_string()),
            ("pod".to_string(), "cart-7d9f".to_string()),
        ]
    );
    assert!(
        o.attrs()
            .iter()
            .any(|(k, v)| k == "pod_uid" && v == "5f3c-11ee-9a1b")
    );
    for bad in ["shop_cart", "a_b_c_d", "_pod_uid", "ns__uid"] {
        assert!(Origin::from_pod_dir(bad, "c").is_none(), "{bad}");
    }
    let o = Origin::from_container_link(&format!("cart-7d9f_shop_server-{CID}.log"))
        .expect("container link");
    assert_eq!(o.entity, format!("log/container/{CID}"));
    assert_eq!(o.namespace.as_deref(), Some("shop"));
    assert_eq!(o.container.as_deref(), Some("server"));
    assert!(Origin::from_container_link("pod_ns_c-nothex.log").is_none());
    assert!(Origin::from_container_link("syslog.log").is_none());
    assert!(Origin::from_docker(CID, &format!("{CID}-json.log")).is_some());
    assert!(Origin::from_docker("abc", "abc-json.log").is_none());
    let o = Origin::file(std::path::Path::new("/var/log/app.log"));
    assert_eq!(o.entity, "log/file/var/log/app.log");
    assert_eq!(o.path.as_deref(), Some("/var/log/app.log"));
    assert!(o.labels().is_empty());
}

#[test]
fn discovery_follows_each_file_once_and_skips_rotated_ones() {
    let s = Scratch::new("discover");
    let pod = s.file("pods/shop_cart_uid-1/server/0.log", "");
    s.file("pods/shop_cart_uid-1/server/1.log", "");
    s.file("pods/shop_cart_uid-1/server/0.log.20240101-000000", "");
    s.file("pods/shop_cart_uid-1/server/0.log.20240101-000000.gz", "");
    std::fs::create_dir_all(s.0.join("containers")).expect("dir");
    // The kubelet's link into the pods layout: the same file, not followed twice.
    std::os::unix::fs::symlink(
        &pod,
        s.0.join(format!("containers/cart_shop_server-{CID}.log")),
    )
    .expect("symlink");
    let other = s.file(&format!("containers/web_shop_nginx-{}.log", &CID[..12]), "");
    let docker = s.file(&format!("docker/{CID}/{CID}-json.log"), "");
    let plain = s.file("docker/app.log", "");
    let nested = s.file("docker/sub/dir/more/deep.log", "");
    let dirs = [
        s.0.join("pods"),
        s.0.join("containers"),
        s.0.join("docker"),
        s.0.join("missing"),
    ];
    let found = discover::scan(&dirs, &Default::default(), 1000);
    assert!(!found.incomplete);
    let got: Vec<(String, String)> = found
        .files
        .iter()
        .map(|(p, o)| {
            let rel = p.strip_prefix(&s.0).expect("under scratch");
            (rel.display().to_string(), o.entity.clone())
        })
        .collect();
    let want = [
        (
            "pods/shop_cart_uid-1/server/0.log".to_string(),
            "log/pod/uid-1/server".to_string(),
        ),
        (
            "pods/shop_cart_uid-1/server/1.log".to_string(),
            "log/pod/uid-1/server".to_string(),
        ),
        (
            other.strip_prefix(&s.0).expect("rel").display().to_string(),
            format!("log/container/{}", &CID[..12]),
        ),
        (
            "docker/app.log".to_string(),
            format!(
                "log/file/{}",
                plain.display().to_string().trim_start_matches('/')
            ),
        ),
        (
            docker
                .strip_prefix(&s.0)
                .expect("rel")
                .display()
                .to_string(),
            format!("log/container/{CID}"),
        ),
    ];
    let mut want = want.to_vec();
    // Scan order is by name: the Docker id sorts before app.log.
    want.swap(3, 4);
    assert_eq!(got, want);
    // Three levels deep at most.
    assert!(!found.files.iter().any(|(p, _)| p == &nested));
    // Excluded (a --log-file) and bounded walks.
    let exclude = [std::fs::canonicalize(&pod).expect("canonical")]
        .into_iter()
        .collect();
    let found = discover::scan(&dirs[..1], &exclude, 1000);
    assert_eq!(found.files.len(), 1);
    assert!(discover::scan(&dirs, &Default::default(), 3).incomplete);
}

#[test]
fn tailer_jumps_ahead_when_lagging() {
    let s = Scratch::new("lag");
    let path = s.file("app.log", "");
    let cfg = TailConfig {
        max_bytes_per_poll: 1 << 20,
        max_line_len: 64,
        from_start: true,
        max_lag_bytes: 100,
    };
    let mut t = FileTailer::new(&path, cfg);
    let mut out = Vec::new();
    t.poll(&mut out).expect("poll");
    write(&path, &"old line\n".repeat(50), true);
    t.poll(&mut out).expect("poll");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((t.stats().skips, t.stats().skipped_bytes), (1, 450));
    // The line the jump landed in is skipped to its newline; then all is normal again.
    write(&path, "tail of a line\nfresh\n", true);
    t.poll(&mut out).expect("poll");
    assert_eq!(out, ["fresh"]);
}

fn inputs(dirs: Vec<std::path::PathBuf>, files: Vec<std::path::PathBuf>) -> LogInputs {
    let mut cfg = LogConfig::default();
    cfg.analyzer.new_template_grace_lines = 20;
    LogInputs {
        dirs,
        files,
        file_owners: Vec::new(),
        interval: std::time::Duration::from_secs(2),
        tick: std::time::Duration::from_secs(1),
        cfg,
    }
}

type Values = Vec<(common::model::SeriesKey, f64)>;

fn value(values: &Values, metric: &str, template: Option<&str>) -> Option<f64> {
    values
        .iter()
        .find(|(k, _)| {
            k.metric == metric
                && template.is_none_or(|t| k.labels.iter().any(|(n, v)| n == "template" && v == t))
        })
        .map(|(_, v)| *v)
}

#[test]
fn interval_records_are_bounded_and_attributed() {
    let origin = Origin::from_pod_dir("ns_pod_uid", "c").expect("origin");
    let mut cfg = LogConfig {
        max_template_series: 2,
        ..LogConfig::default()
    };
    cfg.sample_bytes = 8;
    let mut a = LogAnalyzer::new(AnalyzerConfig::default());
    for i in 0..10 {
        a.handle_line(1_000, &format!("GET /a {i}"));
    }
    for i in 0..5 {
        a.handle_line(1_000, &format!("connection reset by peer {i}"));
    }
    a.handle_line(1_000, "ERROR boom");
    a.handle_line(1_000, "WARN slow");
    let report = a.poll_interval(2_000);
    let (mut values, mut events) = (Vec::new(), Vec::new());
    let mut budget = 2;
    let dropped = pipeline::interval_records(
        &origin,
        &report,
        a.miner().len(),
        &cfg,
        &mut budget,
        &mut values,
        &mut events,
    );
    assert_eq!(value(&values, "log.lines", None), Some(17.0));
    assert_eq!(value(&values, "log.errors", None), Some(1.0));
    assert_eq!(value(&values, "log.templates", None), Some(4.0));
    assert_eq!(value(&values, "log.template.count", Some("1")), Some(10.0));
    assert_eq!(value(&values, "log.template.count", Some("2")), Some(5.0));
    assert_eq!(
        value(&values, "log.template.count", Some("other")),
        Some(2.0)
    );
    assert_eq!(values.len(), 6);
    assert!(values.iter().all(|(k, _)| k.entity == "log/pod/uid/c"
        && k.labels.iter().any(|(n, v)| n == "pod" && v == "pod")));
    // Four new templates, budget for two.
    assert_eq!((events.len(), dropped, budget), (2, 2, 0));
    let e = &events[0];
    assert_eq!(e.kind, "log.template.new");
    let attr = |k: &str| {
        e.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(attr("template_id"), Some("1"));
    assert_eq!(attr("count"), Some("10"));
    assert_eq!(attr("sample_1"), Some("GET /a 0"));
    assert_eq!(attr("template"), Some("GET <*> "), "cut to sample_bytes");
    assert_eq!(attr("namespace"), Some("ns"));
    assert!(e.attrs.windows(2).all(|w| w[0].0 < w[1].0), "sorted attrs");
}

#[test]
fn pipeline_tails_mines_and_reports_anomalies_per_source() {
    use std::time::Duration;
    let s = Scratch::new("pipeline");
    let pods = s.0.join("pods");
    let cri = |msg: &str| format!("2024-01-01T00:00:00.000000000Z stdout F {msg}\n");
    let old = s.file(
        "pods/shop_cart_uid-1/server/0.log",
        &cri("history, never read"),
    );
    let plain = s.0.join("app.log");
    let mut p = LogPipeline::new(inputs(vec![pods.clone()], vec![plain.clone()]));
    let t0 = std::time::Instant::now();
    let (mut values, mut events) = (Values::new(), Vec::new());
    assert!(p.tick(t0, 1_000, &mut values, &mut events).is_empty());
    assert_eq!(p.stats().files_followed, 2);
    assert!(values.is_empty() && events.is_empty());

    // Steady INFO lines in the container log, a plain file appearing later.
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&cri(&format!("INFO served request {i} in {}ms", i % 7)));
    }
    write(&old, &text, true);
    write(&plain, "hello from the app\n", true);
    assert!(
        p.tick(t0 + Duration::from_secs(1), 2_000, &mut values, &mut events)
            .is_empty()
    );
    assert!(values.is_empty(), "interval not over yet");
    assert!(
        p.tick(t0 + Duration::from_secs(2), 3_000, &mut values, &mut events)
            .is_empty()
    );
    let pod = "log/pod/uid-1/server";
    let get = |values: &Values, entity: &str, metric: &str| {
        values
            .iter()
            .find(|(k, _)| k.entity == entity && k.metric == metric)
            .map(|(_, v)| *v)
    };
    assert_eq!(get(&values, pod, "log.lines"), Some(30.0));
    assert_eq!(get(&values, pod, "log.errors"), Some(0.0));
    let file_entity = format!(
        "log/file/{}",
        plain.display().to_string().trim_start_matches('/')
    );
    assert_eq!(
        get(&values, &file_entity, "log.lines"),
        Some(1.0),
        "{values:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "log.template.new" && e.entity == pod)
    );
    assert!(!events.iter().any(|e| e.kind == "anomaly"), "{events:?}");
    assert_eq!(p.stats().lines_read, 31);

    // A new container appears (read from its start), and the first one bursts errors.
    s.file("pods/shop_web_uid-2/nginx/0.log", &cri("started"));
    let mut burst = String::new();
    for i in 0..40 {
        burst.push_str(&cri(&format!("ERROR lost connection to db-{i}: timeout")));
    }
    write(&old, &burst, true);
    values.clear();
    events.clear();
    // Not yet rescanned (every 10 s): the new container waits; the new template of the
    // burst is an anomaly at once, the burst itself when the interval closes.
    p.tick(t0 + Duration::from_secs(3), 4_000, &mut values, &mut events);
    let anomalies: Vec<_> = events.iter().filter(|e| e.kind == "anomaly").collect();
    assert_eq!(anomalies.len(), 1, "{events:?}");
    let attr = |e: &common::model::Event, k: &str| {
        e.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(attr(anomalies[0], "detector"), "log.new_template");
    assert_eq!(attr(anomalies[0], "metric"), "log.template.count");
    assert_eq!(attr(anomalies[0], "pod_uid"), "uid-1");
    assert!(
        anomalies[0].message.contains("new log pattern"),
        "{}",
        anomalies[0].message
    );
    events.clear();
    p.tick(t0 + Duration::from_secs(4), 5_000, &mut values, &mut events);
    let burst: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "anomaly" && attr(e, "detector") == "log.error_burst")
        .collect();
    assert_eq!(burst.len(), 1, "{events:?}");
    let b = burst[0];
    assert_eq!(
        (b.entity.as_str(), attr(b, "metric").as_str()),
        (pod, "log.errors")
    );
    assert_eq!(attr(b, "value"), "40");
    assert!(attr(b, "labels").contains("pod=cart"), "{b:?}");
    assert!(
        b.message
            .starts_with("log/pod/uid-1/server log.errors: 40 error-level lines")
    );
    assert!(b.message.contains("ERROR lost connection"), "{}", b.message);
    assert_eq!(get(&values, pod, "log.errors"), Some(40.0));
    values.clear();
    p.tick(
        t0 + Duration::from_secs(12),
        6_000,
        &mut values,
        &mut events,
    );
    assert_eq!(
        p.stats().files_followed,
        3,
        "rescan found the new container"
    );
    // Read from its start on the tick it was found (which also closed an interval).
    assert_eq!(
        get(&values, "log/pod/uid-2/nginx", "log.lines"),
        Some(1.0),
        "{values:?}"
    );

    // The container goes away: one more interval, then its source is dropped.
    std::fs::remove_dir_all(s.0.join("pods/shop_web_uid-2")).expect("rm");
    p.tick(
        t0 + Duration::from_secs(24),
        8_000,
        &mut values,
        &mut events,
    );
    assert_eq!(p.stats().files_followed, 2);
    p.tick(
        t0 + Duration::from_secs(26),
        9_000,
        &mut values,
        &mut events,
    );
    assert_eq!(p.stats().sources, 2);
}

#[test]
fn pipeline_survives_hostile_bytes_within_its_budgets() {
    use std::time::Duration;
    let s = Scratch::new("hostile");
    let path = s.file("junk.log", "");
    let mut inputs = inputs(vec![], vec![path.clone()]);
    inputs.cfg.max_line_len = 100;
    inputs.cfg.max_bytes_per_tick = 4096;
    let mut p = LogPipeline::new(inputs);
    let t0 = std::time::Instant::now();
    let (mut values, mut events) = (Values::new(), Vec::new());
    p.tick(t0, 0, &mut values, &mut events);
    let mut junk: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    junk.extend_from_slice(b"\n\xff\xfe invalid utf8 \xc3\n{\"log\":\"unterminated\n");
    junk.extend(std::iter::repeat_n(b'x', 10_000));
    junk.extend_from_slice(b"\n\x1b[31mERROR\x1b[0m colour\r\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&junk))
        .expect("write");
    for i in 1..10 {
        p.tick(
            t0 + Duration::from_secs(i),
            i as i64 * 1000,
            &mut values,
            &mut events,
        );
    }
    let st = p.stats();
    assert_eq!(st.bytes_read, junk.len() as u64);
    assert!(st.lines_truncated >= 2, "{st:?}");
    assert!(st.lines_read >= 5, "{st:?}");
    let lines: f64 = values
        .iter()
        .filter(|(k, _)| k.metric == "log.lines")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(lines, st.messages as f64);
}
