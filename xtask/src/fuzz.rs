//! `cargo xtask fuzz [--secs N] [TARGET]`: run the fuzz targets in `fuzz/` (cargo-fuzz,
//! libFuzzer) for N seconds each and report per target.
//!
//! Needs the nightly toolchain and cargo-fuzz; cargo-fuzz is installed from crates.io when
//! missing (`cargo install cargo-fuzz --locked`). Before running, seed inputs made from valid
//! encodings are written into each target's corpus (`fuzz/corpus/<target>/seed-*`), so the
//! fuzzer starts from real frames, batches and spool segments rather than from nothing.
//! A crash leaves its input in `fuzz/artifacts/<target>/`; the summary names it and the
//! command that replays it. How to run and read it: `docs/testing.md`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};
use common::codec;
use common::model::{Batch, Event, Point, SeriesKey, SeriesPoints, Severity};
use common::wire::{self, BatchFrame, Frame, Hello, HelloAck};

use crate::cmd;

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["frame_decoder", "batch_decoder", "spool_reader"];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of fuzzing per target (libFuzzer `-max_total_time`), not counting the build.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Run only this target (default: all of them, one after the other).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

/// What one target's run came to.
struct Outcome {
    target: String,
    ok: bool,
    status: String,
    stats: Stats,
    artifacts: Vec<PathBuf>,
}

#[derive(Default)]
struct Stats {
    runs: Option<String>,
    last_status_line: Option<String>,
    crash_lines: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = cmd::repo_root();
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!("no fuzz project at {}", fuzz_dir.display());
    }
    ensure_tools()?;
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    for t in &targets {
        let n = write_seeds(&fuzz_dir.join("corpus").join(t), t)?;
        println!("xtask: fuzz: wrote {n} seed inputs into fuzz/corpus/{t}");
    }

    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_target(&root, t, args.secs)?);
    }

    println!("xtask: fuzz: summary ({} s per target)", args.secs);
    let mut failed = Vec::new();
    for o in &outcomes {
        let verdict = if o.ok { "ok" } else { "FAILED" };
        println!(
            "xtask: fuzz:   {:<14} {verdict:<7} {} | {}",
            o.target,
            o.stats.runs.as_deref().unwrap_or("runs: ?"),
            o.stats
                .last_status_line
                .as_deref()
                .unwrap_or("no status line"),
        );
        if !o.ok {
            println!("xtask: fuzz:     exit: {}", o.status);
            for line in &o.stats.crash_lines {
                println!("xtask: fuzz:     {line}");
            }
            for a in &o.artifacts {
                println!(
                    "xtask: fuzz:     input: {} (replay: cargo +nightly fuzz run {} {})",
                    a.display(),
                    o.target,
                    a.display()
                );
            }
            failed.push(o.target.clone());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    println!("xtask: fuzz: no crashes");
    Ok(())
}

/// A `cargo` through the rustup proxy (so `+nightly` works), without the variables
/// `cargo run` gave us that would pin the stable toolchain.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .current_dir(cmd::repo_root())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

fn ensure_tools() -> anyhow::Result<()> {
    if !cmd::succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        bail!(
            "the nightly toolchain is missing (cargo-fuzz needs it): `rustup toolchain install nightly`"
        );
    }
    println!("xtask: fuzz: nightly toolchain ok");
    let has_fuzz = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_fuzz {
        println!("xtask: fuzz: cargo-fuzz ok");
        return Ok(());
    }
    println!("xtask: fuzz: cargo-fuzz missing; installing it from crates.io");
    cmd::run(Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").args([
        "install",
        "cargo-fuzz",
        "--locked",
    ]))?;
    Ok(())
}

fn run_target(root: &Path, target: &str, secs: u64) -> anyhow::Result<Outcome> {
    let artifacts_dir = root.join("fuzz").join("artifacts").join(target);
    let started = SystemTime::now();
    let mut c = nightly_cargo();
    c.args(["fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={secs}"))
        // A decoder stuck on one input for 10 s is a bug too: report it as a timeout.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        // The agent's build script would build the eBPF programs; the fuzz targets do not
        // need them.
        .env("SCARLET_EBPF", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let line = cmd::display(&c);
    println!(
        "xtask: fuzz: {target}: running `{line}` (SCARLET_EBPF=0) for {secs} s after the build"
    );
    let clock = Instant::now();
    let mut child = c
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut stats = Stats::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            note(&mut stats, &line);
            // libFuzzer prints a line per new corpus entry: keep the log readable.
            if !(line.contains("\tNEW ") || line.contains("\tREDUCE ")) {
                eprintln!("{line}");
            }
        }
    }
    let status = child.wait()?;
    println!(
        "xtask: fuzz: {target}: finished in {:.0} s ({status})",
        clock.elapsed().as_secs_f64()
    );
    let artifacts = new_files(&artifacts_dir, started);
    Ok(Outcome {
        target: target.to_string(),
        ok: status.success() && artifacts.is_empty(),
        status: status.to_string(),
        stats,
        artifacts,
    })
}

/// Picks the lines worth repeating in the summary out of libFuzzer's stderr.
fn note(stats: &mut Stats, line: &str) {
    if line.starts_with('#') && line.contains("cov:") {
        stats.last_status_line = line
            .split_once(|c: char| c.is_whitespace())
            .map(|(n, rest)| {
                format!(
                    "{n} {}",
                    rest.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            });
    } else if line.starts_with("Done ") && line.contains(" runs in ") {
        stats.runs = Some(line.trim().to_string());
    } else if (line.contains("panicked at")
        || line.starts_with("==")
        || line.contains("ERROR: libFuzzer")
        || line.contains("SUMMARY:")
        || (stats
            .crash_lines
            .last()
            .is_some_and(|l| l.contains("panicked at"))
            && stats.crash_lines.len() < 20))
        && stats.crash_lines.len() < 20
    {
        stats.crash_lines.push(line.trim().to_string());
    }
}

/// Files in `dir` modified since `since` (a crash's input, a timeout's, an OOM's).
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------
// Seeds: valid encodings (and a few near misses) for each target.

/// Writes `seed-*` files for `target` into `dir`; returns how many.
pub fn write_seeds(dir: &Path, target: &str) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let seeds = match target {
        "frame_decoder" => frame_seeds(),
        "batch_decoder" => batch_seeds(),
        "spool_reader" => spool_seeds(),
        other => bail!("unknown fuzz target {other}"),
    };
    for (name, bytes) in &seeds {
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(seeds.len())
}

fn sample_batches() -> Vec<(&'static str, Batch)> {
    let t0 = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    let ts = |n: usize| (0..n).map(move |i| t0 + i as i64 * 1000);
    let series = |entity: &str, metric: &str, values: &[f64]| SeriesPoints {
        key: SeriesKey::new(entity, metric),
        points: ts(values.len())
            .zip(values)
            .map(|(ts_ms, &value)| Point { ts_ms, value })
            .collect(),
    };
    let mut labelled = series("process/1234", "proc.rss_bytes", &[1.5e6, 1.5e6, 1.6e6]);
    labelled.key.labels = vec![
        ("comm".into(), "postgres".into()),
        ("user".into(), "root".into()),
    ];
    let odd_ts = SeriesPoints {
        key: SeriesKey::new("host", "odd.ts"),
        points: [t0, t0 - 5, t0 + 1_000_000, i64::MIN, i64::MAX]
            .iter()
            .map(|&ts_ms| Point { ts_ms, value: 1.0 })
            .collect(),
    };
    vec![
        (
            "empty",
            Batch {
                series: vec![],
                events: vec![],
            },
        ),
        (
            "scaled",
            Batch {
                series: vec![
                    series("host", "cpu.usage_pct", &[12.5, 13.25, 99.99, 0.0, 100.0]),
                    series("host", "mem.used_bytes", &[1e9, 1.1e9, 1.2e9, 1.2e9, 1.0e9]),
                ],
                events: vec![],
            },
        ),
        (
            "gorilla",
            Batch {
                series: vec![
                    series(
                        "host",
                        "load1",
                        &[0.1 + 0.2, std::f64::consts::PI, 1e-300, 2.5e300],
                    ),
                    series(
                        "host",
                        "special",
                        &[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0],
                    ),
                ],
                events: vec![],
            },
        ),
        (
            "labels-events",
            Batch {
                series: vec![labelled, odd_ts],
                events: vec![Event {
                    ts_ms: t0,
                    entity: "host".into(),
                    kind: "agent.started".into(),
                    severity: Severity::Info,
                    message: "node agent 0.1.0 started".into(),
                    attrs: vec![("session".into(), "42".into())],
                }],
            },
        ),
    ]
}

fn frame_seeds() -> Vec<(String, Vec<u8>)> {
    let payload = codec::encode_batch(&sample_batches()[1].1);
    let frames = [
        (
            "hello",
            Frame::Hello(Hello {
                protocol_version: wire::PROTOCOL_VERSION,
                node: "node-a".into(),
                agent_version: "0.1.0".into(),
                boot_id: "5b1f0c3e-0000-4000-8000-000000000000".into(),
                session: 0x1234_5678_9abc_def0,
                capabilities: vec![
                    "host".into(),
                    "process".into(),
                    "cgroup:off:no cgroupfs".into(),
                ],
            }),
        ),
        (
            "hello-ack",
            Frame::HelloAck(HelloAck {
                protocol_version: 1,
                durable_through: Some(41),
            }),
        ),
        (
            "hello-ack-none",
            Frame::HelloAck(HelloAck {
                protocol_version: 1,
                durable_through: None,
            }),
        ),
        (
            "reject",
            Frame::Reject {
                reason: "certificate is for \"node-b\"".into(),
            },
        ),
        (
            "batch",
            Frame::Batch(BatchFrame {
                node: "node-a".into(),
                session: 7,
                seq: 1,
                payload,
            }),
        ),
        (
            "ack",
            Frame::Ack {
                session: 7,
                seq: u64::MAX,
            },
        ),
        (
            "nack",
            Frame::Nack {
                session: 7,
                seq: 3,
                reason: "decompression failed".into(),
            },
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|(name, f)| (name.to_string(), wire::encode_frame(f)))
        .collect();
    let stream: Vec<u8> = out.iter().flat_map(|(_, b)| b.clone()).collect();
    out.push(("stream".into(), stream));
    out
}

fn batch_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, b) in sample_batches() {
        out.push((format!("{name}.raw"), codec::encode_uncompressed(&b)));
        out.push((format!("{name}.zst"), codec::encode_batch(&b)));
    }
    out
}

fn spool_record(seq: u64, n_samples: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&n_samples.to_le_bytes());
    body.extend_from_slice(payload);
    let mut rec = Vec::new();
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// Spool seeds in the `spool_reader` input layout: a flags byte (bit 0: fix CRCs; bits 1..:
/// segments − 1), a u16 length before each segment but the last, then the segments.
fn spool_seeds() -> Vec<(String, Vec<u8>)> {
    let payloads: Vec<Vec<u8>> = sample_batches()
        .iter()
        .map(|(_, b)| codec::encode_batch(b))
        .collect();
    let segment = |first_seq: u64| -> Vec<u8> {
        payloads
            .iter()
            .enumerate()
            .flat_map(|(i, p)| spool_record(first_seq + i as u64, 10 + i as u32, p))
            .collect()
    };
    let one = segment(1);
    let two = segment(1 + payloads.len() as u64);
    let with = |flags: u8, segs: &[&[u8]]| -> Vec<u8> {
        let mut out = vec![flags];
        for (i, s) in segs.iter().enumerate() {
            if i + 1 < segs.len() {
                out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            }
            out.extend_from_slice(s);
        }
        out
    };
    let mut torn = one.clone();
    torn.truncate(one.len() - 7);
    let mut flipped = one.clone();
    let mid = one.len() / 2;
    flipped[mid] ^= 0xff;
    vec![
        ("one-segment".into(), with(0, &[&one])),
        ("two-segments".into(), with(2, &[&one, &two])),
        ("three-segments-fixcrc".into(), with(5, &[&one, &two, &one])),
        ("torn-tail".into(), with(2, &[&one, &torn])),
        ("damaged-oldest".into(), with(2, &[&flipped, &two])),
        ("damaged-newest".into(), with(0, &[&flipped])),
        ("empty".into(), vec![0]),
    ]
}

/// CRC-32 (IEEE), as the spool's `crc32fast::hash` computes it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn seeds_are_valid_encodings() {
        for (name, bytes) in frame_seeds() {
            let (_, used) = wire::decode_frame(&bytes).unwrap().unwrap();
            assert!(used <= bytes.len(), "{name}");
        }
        for (name, bytes) in batch_seeds() {
            let res = if name.ends_with(".raw") {
                codec::decode_uncompressed(&bytes)
            } else {
                codec::decode_batch(&bytes)
            };
            assert!(res.is_ok(), "{name}: {res:?}");
        }
        let segs = spool_seeds();
        assert!(segs.iter().all(|(_, b)| !b.is_empty()));
    }
}
