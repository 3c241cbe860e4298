//! The load generator: `rps` requests per second of `GET /work` to the entry service, from
//! worker threads in xtask (root namespace, through the bridge). Requests are scheduled on
//! a fixed timetable, so a slow service does not slow the offered load until every worker
//! is busy; counts are kept per phase (before the fault, during it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

const WORKERS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Requests of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseStats {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Median and 99th percentile latency, ms (of the answered requests).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Default)]
struct Phase {
    ok: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
}

impl Phase {
    fn stats(&self) -> PhaseStats {
        let mut l = self.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if l.is_empty() {
                0.0
            } else {
                let i = ((l.len() - 1) as f64 * p).round() as usize;
                (l[i.min(l.len() - 1)] * 10.0).round() / 10.0
            }
        };
        PhaseStats {
            requests: self.ok + self.errors,
            ok: self.ok,
            errors: self.errors,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        }
    }
}

pub struct LoadGen {
    stop: Arc<AtomicBool>,
    /// 0 before the fault, 1 from the fault on.
    phase: Arc<AtomicU64>,
    phases: Arc<Mutex<[Phase; 2]>>,
    threads: Vec<JoinHandle<()>>,
}

impl LoadGen {
    pub fn start(target: SocketAddr, rps: f64) -> LoadGen {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU64::new(0));
        let phases = Arc::new(Mutex::new([Phase::default(), Phase::default()]));
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rps);
        let threads = (0..WORKERS)
            .map(|_| {
                let (stop, phase, phases, next) =
                    (stop.clone(), phase.clone(), phases.clone(), next.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let slot = next.fetch_add(1, Ordering::Relaxed);
                        let due = start + period.mul_f64(slot as f64);
                        // Sleep in short steps so that a stop is seen promptly.
                        loop {
                            let now = Instant::now();
                            if now >= due || stop.load(Ordering::Relaxed) {
                                break;
                            }
                            std::thread::sleep((due - now).min(Duration::from_millis(200)));
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let late = Instant::now().saturating_duration_since(due);
                        if late > Duration::from_secs(2) {
                            // Far behind (every worker was stuck): skip the missed slots.
                            let now_slot =
                                (start.elapsed().as_secs_f64() / period.as_secs_f64()) as u64;
                            next.fetch_max(now_slot, Ordering::Relaxed);
                        }
                        let t = Instant::now();
                        let ok = matches!(get(target), Ok(200));
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        let p = phase.load(Ordering::Relaxed).min(1) as usize;
                        let mut phases = phases.lock().unwrap_or_else(|e| e.into_inner());
                        if ok {
                            phases[p].ok += 1;
                        } else {
                            phases[p].errors += 1;
                        }
                        if phases[p].latencies_ms.len() < 200_000 {
                            phases[p].latencies_ms.push(ms);
                        }
                    }
                })
            })
            .collect();
        LoadGen {
            stop,
            phase,
            phases,
            threads,
        }
    }

    /// From now on, requests count in the fault phase.
    pub fn fault_started(&self) {
        self.phase.store(1, Ordering::Relaxed);
    }

    /// Stops the workers; (before the fault, during the fault).
    pub fn stop(mut self) -> (PhaseStats, PhaseStats) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        (phases[0].stats(), phases[1].stats())
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One `GET /work`; the status.
fn get(target: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET /work HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    let mut r = BufReader::new(s.take(64 * 1024));
    r.read_line(&mut line)?;
    // Read the rest so the server's close is clean.
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))
}

/// `POST path` on a service's admin endpoint; the status and body.
pub fn post(target: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&target, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.take(64 * 1024).read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}
