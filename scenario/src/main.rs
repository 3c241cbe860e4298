//! `scenario-service`: one microservice of a fault scenario (`cargo xtask scenario`).
//!
//! ```text
//! scenario-service --name NAME --listen ADDR [--call NAME=ADDR]... --log FILE
//!                  --data-dir DIR [--io-dir DIR] [--crash-after-s SECS]
//! ```
//!
//! A small HTTP/1.1 server (std, one thread per connection, `Connection: close`). Every
//! request other than the admin ones (`GET /work` from the load generator or a caller) does
//! a little CPU work, writes a small record into its data dir, calls each downstream
//! (`GET /work`) in turn and answers 200, or 502 when a downstream failed, 500 when it
//! failed itself. One log line per request goes to `--log`:
//!
//! ```text
//! 2026-05-01T12:00:00.123Z INFO checkout GET /work status=200 latency_ms=3.2
//! 2026-05-01T12:00:00.456Z ERROR checkout GET /work status=502 latency_ms=4.0 error="downstream payments: status 500"
//! ```
//!
//! Admin endpoints inject faults on this process only (docs/scenarios.md):
//! `POST /admin/fault?kind=K&secs=S[&threads=N][&mb_per_s=N][&cap_mb=N][&delay_ms=N]
//! [&loss_pct=N][&error_pct=N]`, `POST /admin/clear`, `POST /admin/crash`, `GET /healthz`.
//! Kinds: `cpu_hog` (spinning threads), `mem_leak` (allocated and touched memory growing to
//! a cap), `error_burst` (requests fail with 500 and log ERROR), `slow_io` (fsync-heavy
//! writes in `--io-dir`, also one synchronous write + fsync per request), `disk_fill` (a
//! file in `--data-dir` grows until the file system is full: requests then fail to write
//! their record), `net_delay` / `net_loss` (the in-process stand-in for `tc netem` on
//! kernels without it: each accepted connection waits `delay_ms`, or `loss_pct` % of them
//! are closed unanswered).
//!
//! The process name (`comm`, what the agent and RCA see) is set to `--name` at start, on
//! the main thread before any other thread exists, so every thread carries it too.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// Most connections served at once; past it a request gets 503 at once.
const MAX_CONNECTIONS: usize = 256;
/// Timeouts of a downstream call.
const CALL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request head we read.
const MAX_HEAD: usize = 16 * 1024;

struct Args {
    name: String,
    listen: SocketAddr,
    calls: Vec<(String, String)>,
    log: PathBuf,
    data_dir: PathBuf,
    io_dir: PathBuf,
    crash_after: Option<Duration>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut name = None;
    let mut listen = None;
    let mut calls = Vec::new();
    let mut log = None;
    let mut data_dir = None;
    let mut io_dir = None;
    let mut crash_after = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?.parse().context("bad --listen address")?),
            "--call" => {
                let v = value()?;
                let (n, a) = v
                    .split_once('=')
                    .with_context(|| format!("--call {v:?}: expected NAME=ADDR"))?;
                calls.push((n.to_string(), a.to_string()));
            }
            "--log" => log = Some(PathBuf::from(value()?)),
            "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
            "--io-dir" => io_dir = Some(PathBuf::from(value()?)),
            "--crash-after-s" => {
                let secs: f64 = value()?.parse().context("bad --crash-after-s")?;
                crash_after = Some(Duration::from_secs_f64(secs.max(0.0)));
            }
            "-h" | "--help" => {
                println!(
                    "usage: scenario-service --name NAME --listen ADDR [--call NAME=ADDR]... \
                     --log FILE --data-dir DIR [--io-dir DIR] [--crash-after-s SECS]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let name: String = name.context("--name is required")?;
    if name.is_empty() || name.len() > 15 {
        bail!("--name must be 1 to 15 bytes (it becomes the process name), got {name:?}");
    }
    let data_dir = data_dir.context("--data-dir is required")?;
    Ok(Args {
        listen: listen.context("--listen is required")?,
        log: log.context("--log is required")?,
        io_dir: io_dir.unwrap_or_else(|| data_dir.clone()),
        data_dir,
        name,
        calls,
        crash_after,
    })
}

/// Sets this thread's name, which for the main thread is the process's `comm`.
fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `buf`.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// The faults currently injected. Each has a deadline (ms since the epoch, 0 = off) or a
/// value; threads started for a fault stop at their deadline or at a clear.
#[derive(Default)]
struct Faults {
    /// Bumped by every clear and every new fault of a kind: old threads see it and stop.
    epoch: AtomicU64,
    error_until: AtomicU64,
    error_pct: AtomicU64,
    slow_io_until: AtomicU64,
    disk_full_until: AtomicU64,
    net_until: AtomicU64,
    delay_ms: AtomicU64,
    loss_pct: AtomicU64,
    leak: Mutex<Vec<Vec<u8>>>,
}

struct Service {
    name: String,
    calls: Vec<(String, String)>,
    data_dir: PathBuf,
    io_dir: PathBuf,
    log: Mutex<File>,
    faults: Faults,
    active: AtomicUsize,
    seq: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-05-01T12:00:00.123Z` for ms since the epoch.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

impl Service {
    fn log(&self, level: &str, text: &str) {
        let line = format!("{} {level} {} {text}\n", rfc3339(now_ms()), self.name);
        let mut f = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
    }

    fn active(&self, until: &AtomicU64) -> bool {
        now_ms() < until.load(Ordering::Relaxed)
    }

    /// One `GET /work`: own work, then the downstreams. Returns (status, error text).
    fn work(&self) -> (u16, Option<String>) {
        // A little CPU: what a real handler spends on parsing and serialising.
        let mut x = self.seq.fetch_add(1, Ordering::Relaxed);
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        if self.active(&self.faults.error_until) {
            let pct = self.faults.error_pct.load(Ordering::Relaxed);
            if x % 100 < pct {
                return (
                    500,
                    Some("internal error: injected failure processing request".into()),
                );
            }
        }
        // A small record in the data dir (on the node's small tmpfs): fails once it is full.
        let record = self.data_dir.join(format!("record-{}.dat", x % 16));
        if let Err(e) = fs::write(&record, [b'r'; 512]) {
            return (500, Some(format!("cannot write {}: {e}", record.display())));
        }
        if self.active(&self.faults.slow_io_until) {
            let path = self.io_dir.join(format!("sync-{}.dat", x % 8));
            let res = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(&[b's'; 4096])?;
                    f.sync_all()
                });
            if let Err(e) = res {
                return (500, Some(format!("cannot sync {}: {e}", path.display())));
            }
        }
        for (name, addr) in &self.calls {
            match call(addr) {
                Ok(200) => {}
                Ok(status) => return (502, Some(format!("downstream {name}: status {status}"))),
                Err(e) => return (502, Some(format!("downstream {name}: {e:#}"))),
            }
        }
        (200, None)
    }

    /// Starts fault `kind` for `secs` with the query's parameters.
    fn inject(self: &Arc<Self>, kind: &str, q: &HashMap<String, String>) -> Result<(), String> {
        let num = |k: &str, default: u64| -> Result<u64, String> {
            match q.get(k) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| format!("{k}: not a number: {v:?}")),
            }
        };
        let secs = num("secs", 60)?;
        let until = now_ms() + secs * 1000;
        let epoch = self.faults.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        match kind {
            "cpu_hog" => {
                let threads = num("threads", 2)?.clamp(1, 16);
                for _ in 0..threads {
                    let svc = self.clone();
                    thread::spawn(move || svc.spin(until, epoch));
                }
            }
            "mem_leak" => {
                let rate = num("mb_per_s", 20)?.clamp(1, 1024);
                let cap = num("cap_mb", 1024)?.clamp(1, 8192);
                let svc = self.clone();
                thread::spawn(move || svc.leak(until, epoch, rate, cap));
            }
            "error_burst" => {
                self.faults
                    .error_pct
                    .store(num("error_pct", 100)?.min(100), Ordering::Relaxed);
                self.faults.error_until.store(until, Ordering::Relaxed);
            }
            "slow_io" => {
                self.faults.slow_io_until.store(until, Ordering::Relaxed);
                for i in 0..num("threads", 2)?.clamp(1, 8) {
                    let svc = self.clone();
                    thread::spawn(move || svc.churn_io(until, epoch, i));
                }
            }
            "disk_fill" => {
                let rate = num("mb_per_s", 16)?.clamp(1, 1024);
                self.faults.disk_full_until.store(until, Ordering::Relaxed);
                let svc = self.clone();
                thread::spawn(move || svc.fill_disk(until, epoch, rate));
            }
            "net_delay" | "net_loss" => {
                self.faults
                    .delay_ms
                    .store(num("delay_ms", 0)?.min(30_000), Ordering::Relaxed);
                self.faults
                    .loss_pct
                    .store(num("loss_pct", 0)?.min(100), Ordering::Relaxed);
                self.faults.net_until.store(until, Ordering::Relaxed);
            }
            other => return Err(format!("unknown fault kind {other:?}")),
        }
        self.log(
            "INFO",
            &format!("admin: fault {kind} injected for {secs} s ({q:?})"),
        );
        Ok(())
    }

    fn clear(&self) {
        let f = &self.faults;
        f.epoch.fetch_add(1, Ordering::SeqCst);
        for a in [
            &f.error_until,
            &f.slow_io_until,
            &f.disk_full_until,
            &f.net_until,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        f.leak.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = fs::remove_file(self.data_dir.join("fill.bin"));
        for i in 0..8 {
            let _ = fs::remove_file(self.io_dir.join(format!("churn-{i}.dat")));
            let _ = fs::remove_file(self.io_dir.join(format!("sync-{i}.dat")));
        }
        self.log("INFO", "admin: faults cleared");
    }

    fn running(&self, until: u64, epoch: u64) -> bool {
        now_ms() < until && self.faults.epoch.load(Ordering::SeqCst) == epoch
    }

    fn spin(&self, until: u64, epoch: u64) {
        let mut x = 1u64;
        while self.running(until, epoch) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
            std::hint::black_box(x);
        }
    }

    fn leak(&self, until: u64, epoch: u64, mb_per_s: u64, cap_mb: u64) {
        let mut held = 0u64;
        while self.running(until, epoch) {
            if held < cap_mb {
                // Touch every page so the memory is really resident.
                let chunk = vec![0xa5u8; (mb_per_s as usize) << 20];
                self.faults
                    .leak
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(chunk);
                held += mb_per_s;
                if held >= cap_mb {
                    self.log("WARN", &format!("cache grew to {held} MiB"));
                }
            }
            thread::sleep(Duration::from_secs(1));
        }
        self.faults
            .leak
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn churn_io(&self, until: u64, epoch: u64, i: u64) {
        let path = self.io_dir.join(format!("churn-{i}.dat"));
        let Ok(mut f) = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
        else {
            self.log("ERROR", &format!("slow_io: cannot open {}", path.display()));
            return;
        };
        let block = vec![0x5au8; 256 * 1024];
        let mut written = 0u64;
        while self.running(until, epoch) {
            // Synchronous, fsync-heavy writes, wrapping at 128 MiB.
            if written >= 128 << 20 {
                written = 0;
                let _ = f.seek(SeekFrom::Start(0));
            }
            if f.write_all(&block).and_then(|()| f.sync_data()).is_err() {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            written += block.len() as u64;
        }
        drop(f);
        let _ = fs::remove_file(&path);
    }

    fn fill_disk(&self, until: u64, epoch: u64, mb_per_s: u64) {
        let path = self.data_dir.join("fill.bin");
        let Ok(mut f) = File::create(&path) else {
            self.log(
                "ERROR",
                &format!("disk_fill: cannot create {}", path.display()),
            );
            return;
        };
        let chunk = vec![0u8; 1 << 20];
        let mut full = false;
        while self.running(until, epoch) {
            if !full {
                for _ in 0..mb_per_s {
                    if let Err(e) = f.write_all(&chunk) {
                        self.log("ERROR", &format!("cannot write {}: {e}", path.display()));
                        full = true;
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_secs(1));
        }
        drop(f);
        let _ = fs::remove_file(&path);
    }
}

/// `GET /work` on `addr`; the status code.
fn call(addr: &str) -> anyhow::Result<u16> {
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, CALL_CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(CALL_IO_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_IO_TIMEOUT))?;
    write!(
        s,
        "GET /work HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(s.take(4096)).read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", line.trim()))?;
    Ok(status)
}

fn query(target: &str) -> (&str, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let map = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (path, map)
}

fn respond(s: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

fn serve(svc: &Arc<Service>, mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let start = Instant::now();
    let Ok(clone) = s.try_clone() else { return };
    let mut reader = BufReader::new(clone.take(MAX_HEAD as u64));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers (no request of ours has a body).
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        respond(&mut s, 400, "bad request line\n");
        return;
    };
    let (path, q) = query(target);
    // In-process network fault (stand-in for netem): delay or drop the connection. Not on
    // the admin and health paths, so the harness can still clear it.
    if !path.starts_with("/admin/") && path != "/healthz" && svc.active(&svc.faults.net_until) {
        let loss = svc.faults.loss_pct.load(Ordering::Relaxed);
        let roll = svc
            .seq
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(2_654_435_761)
            % 100;
        if loss > 0 && roll < loss {
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        let delay = svc.faults.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
    }
    match (method, path) {
        (_, "/healthz") => respond(&mut s, 200, "ok\n"),
        ("POST", "/admin/fault") => {
            let kind = q.get("kind").cloned().unwrap_or_default();
            match svc.inject(&kind, &q) {
                Ok(()) => respond(&mut s, 200, "injected\n"),
                Err(e) => respond(&mut s, 400, &format!("{e}\n")),
            }
        }
        ("POST", "/admin/clear") => {
            svc.clear();
            respond(&mut s, 200, "cleared\n");
        }
        ("POST", "/admin/crash") => {
            respond(&mut s, 200, "crashing\n");
            crash(svc, "admin crash requested");
        }
        _ => {
            let (status, err) = svc.work();
            respond(
                &mut s,
                status,
                if status == 200 { "ok\n" } else { "error\n" },
            );
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            match err {
                None => svc.log(
                    "INFO",
                    &format!("{method} {path} status={status} latency_ms={ms:.1}"),
                ),
                Some(e) => svc.log(
                    "ERROR",
                    &format!(
                        "{method} {path} status={status} latency_ms={ms:.1} error={:?}",
                        e
                    ),
                ),
            }
        }
    }
}

fn crash(svc: &Service, why: &str) -> ! {
    svc.log(
        "FATAL",
        &format!("panic: {why}: worker pool poisoned, exiting"),
    );
    std::process::exit(70);
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // Before any thread exists, so every later thread inherits the name.
    set_comm(&args.name);
    fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    fs::create_dir_all(&args.io_dir)
        .with_context(|| format!("cannot create {}", args.io_dir.display()))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("cannot open {}", args.log.display()))?;
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let svc = Arc::new(Service {
        name: args.name.clone(),
        calls: args.calls.clone(),
        data_dir: args.data_dir.clone(),
        io_dir: args.io_dir.clone(),
        log: Mutex::new(log),
        faults: Faults::default(),
        active: AtomicUsize::new(0),
        seq: AtomicU64::new(0),
    });
    svc.log(
        "INFO",
        &format!(
            "listening on {} calling [{}]",
            args.listen,
            args.calls
                .iter()
                .map(|(n, a)| format!("{n}={a}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    if let Some(after) = args.crash_after {
        let svc = svc.clone();
        thread::spawn(move || {
            thread::sleep(after);
            crash(&svc, "unrecoverable state after restart");
        });
    }
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        if svc.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            svc.active.fetch_sub(1, Ordering::SeqCst);
            respond(&mut s, 503, "busy\n");
            svc.log("WARN", "connection limit reached: 503");
            continue;
        }
        let worker = svc.clone();
        let spawned = thread::Builder::new().spawn(move || {
            serve(&worker, s);
            worker.active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // Thread creation failed (memory): the connection was dropped with the closure.
            svc.active.fetch_sub(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_epoch_and_a_leap_day() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn query_strings_split() {
        let (path, q) = query("/admin/fault?kind=cpu_hog&secs=5");
        assert_eq!(path, "/admin/fault");
        assert_eq!(q.get("kind").map(String::as_str), Some("cpu_hog"));
        assert_eq!(q.get("secs").map(String::as_str), Some("5"));
        assert!(query("/work").1.is_empty());
    }
}
