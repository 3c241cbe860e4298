//! Harness for the end-to-end tests: real `aggregator` and `node-agent` processes, real
//! certificates, real QUIC on loopback, and a hand-driven protocol client for the cases
//! the real agent would never produce (wrong identity, hostile frames, exact resends).

pub mod netns;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::pki;
use common::wire::{self, Frame};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Builds the two binaries once per test process and returns the target directory.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "aggregator", "-p", "node-agent"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/e2e-… → target/debug
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf()
    })
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "adv-e2e-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A port free right now on 127.0.0.1 (TCP and UDP).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Certificate files of one PKI.
#[derive(Clone, Debug)]
pub struct Pki {
    /// Directory holding everything.
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA with an aggregator certificate and one certificate per node.
    pub fn generate(dir: &Path, nodes: &[&str]) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = pki::new_ca("e2e test CA")?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        let agg = pki::issue_aggregator(&ca, &["localhost", "127.0.0.1"])?;
        std::fs::write(dir.join("aggregator.pem"), &agg.cert_pem)?;
        std::fs::write(dir.join("aggregator-key.pem"), &agg.key_pem)?;
        for node in nodes {
            let pair = pki::issue_node(&ca, node)?;
            std::fs::write(dir.join(format!("{node}.pem")), &pair.cert_pem)?;
            std::fs::write(dir.join(format!("{node}-key.pem")), &pair.key_pem)?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// `ca.pem`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Node certificate path.
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pem"))
    }

    /// Node key path.
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}-key.pem"))
    }
}

/// A child process killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGTERM and waits (up to `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "process did not exit within {limit:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no questions asked.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(bin: &str, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = Command::new(bin_dir().join(bin))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {bin}"))?;
    Ok(Proc { child, log })
}

/// A running aggregator.
pub struct Aggregator {
    /// Process.
    pub proc: Proc,
    /// HTTP port.
    pub http_port: u16,
    /// QUIC port.
    pub quic_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl Aggregator {
    /// Starts one and waits for `/healthz`.
    pub fn start(
        pki: &Pki,
        data_dir: &Path,
        http_port: u16,
        quic_port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Aggregator> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--quic-listen".into(),
            format!("127.0.0.1:{quic_port}"),
            "--ca".into(),
            pki.ca().display().to_string(),
            "--cert".into(),
            pki.dir.join("aggregator.pem").display().to_string(),
            "--key".into(),
            pki.dir.join("aggregator-key.pem").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = data_dir.with_extension(format!("aggregator-{}.log", rand::random::<u16>()));
        let mut proc = spawn("aggregator", &args, log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(http_port, "/healthz").is_err() {
            if !proc.running() || Instant::now() > deadline {
                bail!(
                    "aggregator did not become healthy; log:\n{}",
                    proc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Aggregator {
            proc,
            http_port,
            quic_port,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// `POST /api/v1/sql`, expecting 200; returns the rows.
    pub fn sql(&self, sql: &str) -> anyhow::Result<Vec<Vec<serde_json::Value>>> {
        let (status, body) = post_sql(self.http_port, sql)?;
        if status != 200 {
            bail!("SQL {sql:?} answered {status}: {body}");
        }
        let rows = body["rows"]
            .as_array()
            .context("rows")?
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect();
        Ok(rows)
    }

    /// A single integer from a `SELECT count(*) ...`.
    pub fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let rows = self.sql(sql)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_i64())
            .with_context(|| format!("no integer from {sql:?}"))
    }

    /// The value of one metric on `/metrics` (sum over label sets matching `filter`).
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        metric_value(self.http_port, name, filter)
    }
}

/// Sum of the samples of `name` whose line contains `filter`, from `/metrics` on `port`.
pub fn metric_value(port: u16, name: &str, filter: &str) -> f64 {
    let Ok(text) = get(port, "/metrics") else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Plain GET on 127.0.0.1.
pub fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{port}{path}")).call()?;
    Ok(resp.body_mut().read_to_string()?)
}

/// `POST /api/v1/sql` returning status and JSON body, whatever the status.
pub fn post_sql(port: u16, sql: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut resp = agent
        .post(&format!("http://127.0.0.1:{port}/api/v1/sql"))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "sql": sql }).to_string())?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    Ok((status, body))
}

/// Starts a real node agent.
pub fn start_agent(
    pki: &Pki,
    cert_node: &str,
    node: &str,
    quic_port: u16,
    metrics_port: u16,
    log: PathBuf,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--aggregator".into(),
        format!("127.0.0.1:{quic_port}"),
        "--ca".into(),
        pki.ca().display().to_string(),
        "--cert".into(),
        pki.node_cert(cert_node).display().to_string(),
        "--key".into(),
        pki.node_key(cert_node).display().to_string(),
        "--node".into(),
        node.into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    if !extra.contains(&"--spool-dir") {
        // Each agent its own spool, next to its log, unless the test picks one.
        args.push("--spool-dir".into());
        args.push(log.with_extension("spool").display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn("node-agent", &args, log)
}

/// Polls `f` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A hand-driven protocol client: speaks the wire protocol frame by frame.
pub struct RawClient {
    /// Endpoint (kept alive).
    pub endpoint: quinn::Endpoint,
    /// Connection.
    pub conn: quinn::Connection,
    /// Stream towards the aggregator.
    pub send: quinn::SendStream,
    /// Stream from the aggregator.
    pub recv: quinn::RecvStream,
}

impl RawClient {
    /// Connects with `cert_node`'s certificate from `pki`, trusting `trust`'s CA.
    pub async fn connect(
        pki: &Pki,
        trust: &Pki,
        cert_node: &str,
        quic_port: u16,
    ) -> anyhow::Result<RawClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(trust.ca())? {
            roots.add(c?)?;
        }
        let certs = CertificateDer::pem_file_iter(pki.node_cert(cert_node))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki.node_key(cert_node))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let addr: SocketAddr = format!("127.0.0.1:{quic_port}").parse()?;
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(RawClient {
            endpoint,
            conn,
            send,
            recv,
        })
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.send_raw(&wire::encode_frame(frame)).await
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one frame (`None`: stream or connection ended), waiting at most 10 s.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Frame>> {
        let read = async {
            let mut prefix = [0u8; 4];
            if self.recv.read_exact(&mut prefix).await.is_err() {
                return Ok(None);
            }
            let len = wire::peek_frame_len(&prefix)?.unwrap_or(0);
            let mut buf = vec![0u8; 4 + len];
            buf[..4].copy_from_slice(&prefix);
            if self.recv.read_exact(&mut buf[4..]).await.is_err() {
                return Ok(None);
            }
            Ok(wire::decode_frame(&buf)?.map(|(f, _)| f))
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .context("no frame within 10 s")?
    }

    /// Sends a hello for `node`/`session` and returns the answer.
    pub async fn hello(&mut self, node: &str, session: u64) -> anyhow::Result<Option<Frame>> {
        self.send(&Frame::Hello(wire::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            node: node.into(),
            agent_version: "e2e".into(),
            boot_id: "e2e".into(),
            session,
            capabilities: vec![],
        }))
        .await?;
        self.recv().await
    }

    /// Why the aggregator closed the connection, once it has.
    pub async fn closed_reason(&self) -> String {
        match tokio::time::timeout(Duration::from_secs(10), self.conn.closed()).await {
            Ok(reason) => reason.to_string(),
            Err(_) => "still open".into(),
        }
    }
}

/// A batch with `n_series` host series of `points` points each, timestamps from `t0_ms`.
pub fn test_batch(t0_ms: i64, n_series: usize, points: usize, tag: &str) -> common::model::Batch {
    use common::model::{Batch, Point, SeriesKey, SeriesPoints};
    Batch {
        series: (0..n_series)
            .map(|i| SeriesPoints {
                key: SeriesKey::new("host", format!("test.{tag}.{i}")),
                points: (0..points)
                    .map(|p| Point {
                        ts_ms: t0_ms + p as i64 * 1000,
                        value: (i * 1000 + p) as f64,
                    })
                    .collect(),
            })
            .collect(),
        events: vec![],
    }
}
