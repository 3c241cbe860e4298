//! Codec benchmark: bytes per sample on the wire, and encode/decode throughput.
//!
//! Run: `cargo bench -p benches --bench codec`.
//!
//! First prints a table of compressed bytes per sample for 1 s, 5 s (the agent's default)
//! and 10 s batches of the steady and churn streams (criterion tracks time, not size),
//! next to a naive baseline: postcard of the plain `Batch` + zstd at the same level. Then
//! criterion measures encode and decode throughput in samples per second.
//!
//! A second table puts the same samples next to Prometheus remote-write 1.0 (protobuf
//! `WriteRequest`, snappy; `benches::remote_write`), one request per batch interval.
//!
//! The first table is what travels on a protocol-2 connection: the connection form
//! (`common::dict`), measured over the real sequence of one connection (the first batch
//! carries every definition, each batch acked before the next, as at the agent's pace),
//! every payload resolved back by a `ReceiverDict` and checked against the original.

use std::hint::black_box;
use std::time::Duration;

use benches::{NodeStream, StreamConfig, remote_write, variants};
use common::codec;
use common::dict::{ReceiverDict, SenderDict};
use common::model::{Batch, SeriesPoints};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Seconds of stream per size measurement: long enough for churn to matter.
const STREAM_SECS: u32 = 120;
/// The node name the remote-write labels carry.
const NODE: &str = "bench-node-1";
/// Targets of the "lossless, efficient delivery" issue.
const TARGET_BYTES_PER_SAMPLE: f64 = 1.0;
const TARGET_RATIO_VS_REMOTE_WRITE: f64 = 5.0;
/// zstd level of the baseline; the codec uses 3 too.
const BASELINE_ZSTD_LEVEL: i32 = 3;

fn baseline_encode(batch: &Batch) -> Vec<u8> {
    let raw = postcard::to_allocvec(batch).expect("postcard of an in-memory batch");
    zstd::bulk::compress(&raw, BASELINE_ZSTD_LEVEL).expect("zstd in memory")
}

fn baseline_decode(payload: &[u8]) -> Batch {
    let raw = zstd::bulk::decompress(payload, codec::MAX_DECODED_LEN).expect("baseline payload");
    postcard::from_bytes(&raw).expect("baseline payload")
}

/// The batch with its keys but no points: what the per-batch series dictionary costs.
fn keys_only(batch: &Batch) -> Batch {
    let series = batch
        .series
        .iter()
        .map(|s| SeriesPoints {
            key: s.key.clone(),
            points: Vec::new(),
        })
        .collect();
    Batch {
        series,
        events: Vec::new(),
    }
}

fn batches(cfg: StreamConfig, batch_secs: u32) -> Vec<Batch> {
    NodeStream::new(cfg).batches((STREAM_SECS / batch_secs) as usize, batch_secs)
}

/// What one connection sends for `list`: each batch's wire payload, in order. Every batch is
/// acked before the next is sent (the agent's pace: acks take milliseconds, batches come
/// every few seconds), and every payload is resolved back and compared.
fn connection_payloads(list: &[Batch]) -> Vec<Vec<u8>> {
    let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            let seq = i as u64 + 1;
            let payload = tx
                .encode(seq, &codec::encode_batch(b))
                .expect("own payload");
            let back = rx.decode(&payload).expect("connection form resolves");
            assert_eq!(&back.batch, b, "connection form changed batch {seq}");
            tx.on_ack(seq);
            payload
        })
        .collect()
}

/// The headline: the protocol-2 connection form against the self-contained (protocol 1)
/// form and remote-write, same samples.
fn print_connection_form() {
    println!();
    println!(
        "Wire bytes per sample, protocol 2 (connection-scoped series dictionary), {STREAM_SECS} s of a realistic node stream (seed 1):"
    );
    println!(
        "{:<7} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7}  targets: conn <= {TARGET_BYTES_PER_SAMPLE} B/sample, ratio >= {TARGET_RATIO_VS_REMOTE_WRITE}x",
        "stream",
        "batch",
        "samples",
        "v1",
        "conn",
        "conn",
        "1st batch",
        "rw+snappy",
        "ratio",
        "rw Prom",
        "ratio"
    );
    println!(
        "{:<7} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7}",
        "", "", "", "B/sample", "B/sample", "steady", "bytes", "B/sample", "", "B/sample", ""
    );
    for (name, cfg) in variants(1) {
        for batch_secs in [1u32, 5, 10] {
            let list = batches(cfg.clone(), batch_secs);
            let samples: usize = list.iter().map(Batch::n_samples).sum();
            let v1: usize = list.iter().map(|b| codec::encode_batch(b).len()).sum();
            let conn = connection_payloads(&list);
            let conn_bytes: usize = conn.iter().map(Vec::len).sum();
            let first = conn[0].len();
            let later_samples = samples - list[0].n_samples();
            let (rw, rw_prom) = remote_write_bytes(&list);
            let per = |bytes: usize| bytes as f64 / samples as f64;
            let ratio = rw as f64 / conn_bytes as f64;
            let verdict = if per(conn_bytes) <= TARGET_BYTES_PER_SAMPLE
                && ratio >= TARGET_RATIO_VS_REMOTE_WRITE
            {
                "ok"
            } else {
                "MISSES TARGET"
            };
            println!(
                "{:<7} {:>4}s {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>9.3} {:>6.1}x {:>9.3} {:>6.1}x  {verdict}",
                name,
                batch_secs,
                samples,
                per(v1),
                per(conn_bytes),
                (conn_bytes - first) as f64 / later_samples as f64,
                first,
                per(rw),
                ratio,
                per(rw_prom),
                rw_prom as f64 / conn_bytes as f64,
            );
        }
    }
    println!(
        "  v1: self-contained payloads (protocol 1; what the spool and the WAL hold); conn: the connection form"
    );
    println!(
        "    over one connection's {STREAM_SECS} s, first batch (all definitions) included; conn steady: without the first batch"
    );
    println!(
        "  rw+snappy / rw Prom: Prometheus remote-write as in the table below; ratio = rw / conn; verdict on conn vs rw+snappy"
    );
    println!();
}

fn print_sizes() {
    println!();
    println!(
        "Bytes per sample, {STREAM_SECS} s of a realistic node stream (seed 1), compressed payload bytes / samples:"
    );
    println!(
        "{:<7} {:>5} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>6}",
        "stream",
        "batch",
        "series",
        "samples",
        "codec",
        "raw col.",
        "payload",
        "keys",
        "values",
        "postcard+zstd",
        "ratio"
    );
    println!(
        "{:<7} {:>5} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13} {:>6}",
        "",
        "",
        "/batch",
        "",
        "B/sample",
        "B/sample",
        "B/batch",
        "B/batch",
        "B/sample",
        "B/sample",
        ""
    );
    for (name, cfg) in variants(1) {
        for batch_secs in [1u32, 5, 10] {
            let list = batches(cfg.clone(), batch_secs);
            let samples: usize = list.iter().map(Batch::n_samples).sum();
            let series: usize = list.iter().map(|b| b.series.len()).sum::<usize>() / list.len();
            let codec_bytes: usize = list.iter().map(|b| codec::encode_batch(b).len()).sum();
            let raw_bytes: usize = list
                .iter()
                .map(|b| codec::encode_uncompressed(b).len())
                .sum();
            let base_bytes: usize = list.iter().map(|b| baseline_encode(b).len()).sum();
            let key_bytes: usize = list
                .iter()
                .map(|b| codec::encode_batch(&keys_only(b)).len())
                .sum();
            let per = |bytes: usize| bytes as f64 / samples as f64;
            println!(
                "{:<7} {:>4}s {:>6} {:>8} {:>9.3} {:>9.3} {:>9} {:>9} {:>9.3} {:>13.3} {:>5.1}x",
                name,
                batch_secs,
                series,
                samples,
                per(codec_bytes),
                per(raw_bytes),
                codec_bytes / list.len(),
                key_bytes / list.len(),
                per(codec_bytes.saturating_sub(key_bytes)),
                per(base_bytes),
                base_bytes as f64 / codec_bytes as f64,
            );
        }
    }
    println!("  codec: codec::encode_batch bytes per sample (the wire payload, before framing)");
    println!(
        "  raw col.: the columnar layout before zstd; payload: mean compressed bytes per batch"
    );
    println!(
        "  keys: the same batch with no points (its series dictionary alone); values: codec minus keys"
    );
    println!(
        "  postcard+zstd: naive baseline (postcard of the Batch, zstd level {BASELINE_ZSTD_LEVEL}); ratio = baseline / codec"
    );
    println!();
}

/// Ours against Prometheus remote-write for the very same samples, batched alike.
fn print_remote_write() {
    println!(
        "Ours vs Prometheus remote-write 1.0 (protobuf WriteRequest + snappy, one request per batch), {STREAM_SECS} s, seed 1:"
    );
    println!(
        "{:<7} {:>5} {:>8} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7}  targets: ours <= {TARGET_BYTES_PER_SAMPLE} B/sample, ratio >= {TARGET_RATIO_VS_REMOTE_WRITE}x",
        "stream", "batch", "samples", "ours", "rw+snappy", "rw raw", "ratio", "rw Prom", "ratio"
    );
    println!(
        "{:<7} {:>5} {:>8} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7}",
        "", "", "", "B/sample", "B/sample", "B/sample", "", "B/sample", ""
    );
    for (name, cfg) in variants(1) {
        for batch_secs in [1u32, 5, 10] {
            let list = batches(cfg.clone(), batch_secs);
            let samples: usize = list.iter().map(Batch::n_samples).sum();
            let ours: usize = list.iter().map(|b| codec::encode_batch(b).len()).sum();
            let (rw, rw_prom) = remote_write_bytes(&list);
            let rw_raw: usize = list
                .iter()
                .map(|b| remote_write::encode_write_request(NODE, b).len())
                .sum();
            let per = |bytes: usize| bytes as f64 / samples as f64;
            let ratio = rw as f64 / ours as f64;
            let verdict =
                if per(ours) <= TARGET_BYTES_PER_SAMPLE && ratio >= TARGET_RATIO_VS_REMOTE_WRITE {
                    "ok"
                } else {
                    "MISSES TARGET"
                };
            println!(
                "{:<7} {:>4}s {:>8} {:>9.3} {:>9.3} {:>9.3} {:>6.1}x {:>9.3} {:>6.1}x  {verdict}",
                name,
                batch_secs,
                samples,
                per(ours),
                per(rw),
                per(rw_raw),
                ratio,
                per(rw_prom),
                rw_prom as f64 / ours as f64,
            );
        }
    }
    println!(
        "  rw+snappy: what remote-write sends (HTTP headers not counted); rw raw: the protobuf before snappy"
    );
    println!(
        "  rw+snappy groups each series' samples of the batch under one label set (most favourable to remote-write)"
    );
    println!(
        "  rw Prom: as Prometheus's queue manager sends them: one TimeSeries per sample, <= {} samples per request",
        remote_write::MAX_SAMPLES_PER_SEND
    );
    println!(
        "  ratio = rw / ours; labels: __name__, entity, the series' labels, node={NODE:?}; verdict on rw+snappy"
    );
    println!();
}

/// Why ours is above 1 B/sample at 5 s, and what would bring it under, measured on the same
/// batches: encoder-only changes (the format stays; any zstd level and any series order
/// decode the same) and a per-session series dictionary (a format change).
fn print_what_if() {
    println!("What-if at each batch size, same {STREAM_SECS} s streams (B/sample):");
    println!(
        "{:<7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "stream", "batch", "ours", "zstd 19", "sorted", "sorted+19", "no keys"
    );
    for (name, cfg) in variants(1) {
        for batch_secs in [1u32, 5, 10] {
            let list = batches(cfg.clone(), batch_secs);
            let samples: usize = list.iter().map(Batch::n_samples).sum();
            let per = |bytes: usize| bytes as f64 / samples as f64;
            let level = |b: &Batch, l: i32| {
                zstd::bulk::compress(&codec::encode_uncompressed(b), l)
                    .expect("zstd in memory")
                    .len()
            };
            let sorted: Vec<Batch> = list
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    b.series.sort_by(|x, y| {
                        (&x.key.metric, &x.key.entity).cmp(&(&y.key.metric, &y.key.entity))
                    });
                    b
                })
                .collect();
            let ours: usize = list.iter().map(|b| codec::encode_batch(b).len()).sum();
            let l19: usize = list.iter().map(|b| level(b, 19)).sum();
            let s3: usize = sorted.iter().map(|b| level(b, 3)).sum();
            let s19: usize = sorted.iter().map(|b| level(b, 19)).sum();
            let keys: usize = list
                .iter()
                .map(|b| codec::encode_batch(&keys_only(b)).len())
                .sum();
            println!(
                "{:<7} {:>4}s {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11.3}",
                name,
                batch_secs,
                per(ours),
                per(l19),
                per(s3),
                per(s19),
                per(ours.saturating_sub(keys)),
            );
        }
    }
    println!("  zstd 19: the same raw layout at zstd level 19 instead of 3 (encoder-only)");
    println!("  sorted: series ordered by (metric, entity) before encoding, zstd 3 (encoder-only)");
    println!(
        "  no keys: codec minus the batch's series dictionary: the floor a per-connection dictionary"
    );
    println!("    approaches when steady (protocol 2 adds the ids and new series' definitions)");
    println!();
}

fn bench_codec(c: &mut Criterion) {
    print_connection_form();
    print_sizes();
    print_remote_write();
    print_what_if();
    let mut group = c.benchmark_group("codec");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, cfg) in variants(1) {
        // One minute of 5 s batches per iteration, so the figure averages over batches.
        let list = NodeStream::new(cfg).batches(12, 5);
        let samples: usize = list.iter().map(Batch::n_samples).sum();
        let payloads: Vec<Vec<u8>> = list.iter().map(codec::encode_batch).collect();
        group.throughput(Throughput::Elements(samples as u64));
        group.bench_function(format!("encode/{name}/5s"), |b| {
            b.iter(|| {
                for batch in &list {
                    black_box(codec::encode_batch(black_box(batch)));
                }
            })
        });
        group.bench_function(format!("decode/{name}/5s"), |b| {
            b.iter(|| {
                for payload in &payloads {
                    black_box(codec::decode_batch(black_box(payload)).expect("own payload"));
                }
            })
        });
        // Protocol 2, steady state: the agent's send-time rewrite of spooled payloads, and
        // the aggregator's resolution (records + the self-contained WAL copy).
        let mut tx = SenderDict::default();
        let mut seq = 0u64;
        let mut conn = Vec::new();
        for p in &payloads {
            seq += 1;
            conn.push(tx.encode(seq, p).expect("own payload"));
            tx.on_ack(seq);
        }
        group.bench_function(format!("conn_encode/{name}/5s"), |b| {
            b.iter(|| {
                for payload in &payloads {
                    seq += 1;
                    black_box(tx.encode(seq, black_box(payload)).expect("own payload"));
                    tx.on_ack(seq);
                }
            })
        });
        let mut rx = ReceiverDict::default();
        for p in &conn {
            rx.decode(p).expect("own payload");
        }
        // Steady payloads (the second round) carry no definitions.
        let steady: Vec<Vec<u8>> = payloads
            .iter()
            .map(|p| {
                seq += 1;
                let out = tx.encode(seq, p).expect("own payload");
                tx.on_ack(seq);
                out
            })
            .collect();
        group.bench_function(format!("conn_resolve/{name}/5s"), |b| {
            b.iter(|| {
                for payload in &steady {
                    black_box(rx.decode(black_box(payload)).expect("own payload"));
                }
            })
        });
        if name == "steady" {
            let base: Vec<Vec<u8>> = list.iter().map(baseline_encode).collect();
            group.bench_function(format!("baseline_encode/{name}/5s"), |b| {
                b.iter(|| {
                    for batch in &list {
                        black_box(baseline_encode(black_box(batch)));
                    }
                })
            });
            group.bench_function(format!("baseline_decode/{name}/5s"), |b| {
                b.iter(|| {
                    for payload in &base {
                        black_box(baseline_decode(black_box(payload)));
                    }
                })
            });
        }
    }
    group.finish();
}

/// Remote-write bytes of `list`: one `WriteRequest` per batch (the favourable reading), and
/// what Prometheus's queue manager really sends (requests of at most
/// `MAX_SAMPLES_PER_SEND` samples).
fn remote_write_bytes(list: &[Batch]) -> (usize, usize) {
    let one_per_batch = list
        .iter()
        .map(|b| remote_write::encode(NODE, b).len())
        .sum();
    let as_prometheus = list
        .iter()
        .flat_map(|b| {
            remote_write::encode_as_queue_manager(NODE, b, remote_write::MAX_SAMPLES_PER_SEND)
        })
        .map(|r| r.len())
        .sum();
    (one_per_batch, as_prometheus)
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
