//! The same samples as Prometheus remote-write 1.0 would carry them: a protobuf
//! `prometheus.WriteRequest`, snappy block-compressed, one request per batch.
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }
//! ```
//!
//! Hand-encoded (the messages are tiny, no prost): proto3 rules as Prometheus's generated
//! code applies them, so a value of +0.0 (all bits zero) or a zero timestamp is
//! omitted, and labels are
//! sorted by name. A series `SeriesKey { entity, metric, labels }` of node `n` becomes
//! `{__name__="<metric with '.' → '_'>", entity="<entity>", <labels>…, node="<n>"}`.
//!
//! [`encode`] groups each series' samples of the batch under one label set: the most
//! favourable reading of remote-write 1.0. [`encode_as_queue_manager`] is what Prometheus's
//! queue manager really sends: one `TimeSeries` per sample, requests of at most
//! `max_samples_per_send` (2,000 by default). Neither adds the `job`/`instance` target
//! labels a scrape would, so both are conservative.

use common::model::{Batch, SeriesKey};

/// Prometheus metric-name form of one of our metric names: `proc.cpu_pct` →
/// `proc_cpu_pct` (anything outside `[a-zA-Z0-9_:]` becomes `_`, a leading digit gets `_`).
pub fn metric_name(metric: &str) -> String {
    let mut out = String::with_capacity(metric.len() + 1);
    if metric.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(metric.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// The label set of `key` on node `node`, sorted by name, `__name__` first.
pub fn labels(node: &str, key: &SeriesKey) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(key.labels.len() + 3);
    out.push(("__name__".to_string(), metric_name(&key.metric)));
    out.push(("entity".to_string(), key.entity.clone()));
    out.push(("node".to_string(), node.to_string()));
    for (k, v) in &key.labels {
        out.push((k.clone(), v.clone()));
    }
    out.sort();
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Tag byte of field `field` with wire type `wire` (fields here are all below 16).
fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

const LEN: u8 = 2;
const VARINT: u8 = 0;
const FIXED64: u8 = 1;

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(tag(field, LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn bytes_len(bytes: usize) -> usize {
    1 + varint_len(bytes as u64) + bytes
}

fn label_len(name: &str, value: &str) -> usize {
    // proto3: an empty string is the default and is omitted.
    let part = |s: &str| if s.is_empty() { 0 } else { bytes_len(s.len()) };
    part(name) + part(value)
}

fn sample_len(value: f64, ts_ms: i64) -> usize {
    let v = if value.to_bits() == 0 { 0 } else { 9 };
    let t = if ts_ms == 0 {
        0
    } else {
        1 + varint_len(ts_ms as u64)
    };
    v + t
}

/// One `TimeSeries`, appended to `out` as field 1 of a `WriteRequest`.
pub fn put_timeseries(out: &mut Vec<u8>, labels: &[(String, String)], samples: &[(f64, i64)]) {
    let body: usize = labels
        .iter()
        .map(|(n, v)| bytes_len(label_len(n, v)))
        .sum::<usize>()
        + samples
            .iter()
            .map(|&(v, t)| bytes_len(sample_len(v, t)))
            .sum::<usize>();
    out.push(tag(1, LEN));
    put_varint(out, body as u64);
    for (name, value) in labels {
        out.push(tag(1, LEN));
        put_varint(out, label_len(name, value) as u64);
        if !name.is_empty() {
            put_bytes(out, 1, name.as_bytes());
        }
        if !value.is_empty() {
            put_bytes(out, 2, value.as_bytes());
        }
    }
    for &(value, ts_ms) in samples {
        out.push(tag(2, LEN));
        put_varint(out, sample_len(value, ts_ms) as u64);
        if value.to_bits() != 0 {
            out.push(tag(1, FIXED64));
            out.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        if ts_ms != 0 {
            out.push(tag(2, VARINT));
            // int64 is encoded as the two's-complement u64 (negative → 10 bytes).
            put_varint(out, ts_ms as u64);
        }
    }
}

/// The uncompressed `WriteRequest` protobuf of `batch` from `node`: one `TimeSeries` per
/// series of the batch, its samples in time order.
pub fn encode_write_request(node: &str, batch: &Batch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut samples = Vec::new();
    for s in &batch.series {
        samples.clear();
        samples.extend(s.points.iter().map(|p| (p.value, p.ts_ms)));
        put_timeseries(&mut out, &labels(node, &s.key), &samples);
    }
    out
}

/// What remote-write puts on the wire for `batch`: the `WriteRequest`, snappy
/// block-compressed (`Content-Encoding: snappy`), HTTP headers not counted.
pub fn encode(node: &str, batch: &Batch) -> Vec<u8> {
    let raw = encode_write_request(node, batch);
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy of an in-memory buffer below 4 GiB")
}

/// Prometheus's default `queue_config.max_samples_per_send`.
pub const MAX_SAMPLES_PER_SEND: usize = 2000;

/// What Prometheus's remote-write queue manager really sends for the samples of `batch`:
/// it queues samples as they are scraped and turns each into its own `TimeSeries` (labels
/// repeated for every sample), in scrape order (tick by tick), at most `max_per_request`
/// samples per `WriteRequest`, each request snappy-compressed on its own. The bytes of
/// every request.
pub fn encode_as_queue_manager(node: &str, batch: &Batch, max_per_request: usize) -> Vec<Vec<u8>> {
    let labels: Vec<Vec<(String, String)>> =
        batch.series.iter().map(|s| labels(node, &s.key)).collect();
    let mut queue: Vec<(i64, usize, f64)> = batch
        .series
        .iter()
        .enumerate()
        .flat_map(|(idx, s)| s.points.iter().map(move |p| (p.ts_ms, idx, p.value)))
        .collect();
    queue.sort_by_key(|&(ts, idx, _)| (ts, idx));
    let mut encoder = snap::raw::Encoder::new();
    queue
        .chunks(max_per_request.max(1))
        .map(|chunk| {
            let mut raw = Vec::new();
            for &(ts, idx, value) in chunk {
                put_timeseries(&mut raw, &labels[idx], &[(value, ts)]);
            }
            encoder
                .compress_vec(&raw)
                .expect("snappy of an in-memory buffer below 4 GiB")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use common::model::{Point, SeriesPoints};

    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn names_as_prometheus_spells_them() {
        assert_eq!(metric_name("proc.cpu_pct"), "proc_cpu_pct");
        assert_eq!(metric_name("psi.cpu.some_avg10"), "psi_cpu_some_avg10");
        assert_eq!(metric_name("load.1m"), "load_1m");
        assert_eq!(metric_name("1x-y"), "_1x_y");
    }

    #[test]
    fn known_bytes() {
        // WriteRequest{timeseries: [{labels: [{__name__, "up"}],
        //   samples: [{1.0, 1000}, {0.0, 2000}]}]}, checked by hand against the proto.
        let mut out = Vec::new();
        put_timeseries(
            &mut out,
            &[("__name__".into(), "up".into())],
            &[(1.0, 1000), (0.0, 2000)],
        );
        let mut want = vec![0x0a, 0x23]; // timeseries (field 1), 35 bytes
        want.extend([0x0a, 0x0e]); // labels (field 1), 14 bytes
        want.extend([0x0a, 0x08]);
        want.extend(b"__name__");
        want.extend([0x12, 0x02]);
        want.extend(b"up");
        want.extend([0x12, 0x0c, 0x09]); // samples (field 2), 12 bytes; value fixed64
        want.extend(1.0f64.to_le_bytes()); // 00 00 00 00 00 00 f0 3f
        want.extend([0x10, 0xe8, 0x07]); // timestamp 1000
        // value 0.0 is proto3's default: omitted; timestamp 2000 = d0 0f.
        want.extend([0x12, 0x03, 0x10, 0xd0, 0x0f]);
        assert_eq!(out, want);
        assert_eq!(out[21..29], [0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
    }

    #[test]
    fn batch_request_labels_sorted_and_snappy_round_trips() {
        let key = SeriesKey::new("process/42", "proc.cpu_pct")
            .with_label("comm", "nginx")
            .with_label("cgroup", "kubepods.slice");
        assert_eq!(
            labels("n1", &key)
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["__name__", "cgroup", "comm", "entity", "node"]
        );
        let batch = Batch {
            series: vec![SeriesPoints {
                key: key.clone(),
                points: vec![
                    Point {
                        ts_ms: 1_750_000_000_000,
                        value: 2.5,
                    },
                    Point {
                        ts_ms: -5,
                        value: -0.0,
                    },
                ],
            }],
            events: Vec::new(),
        };
        let raw = encode_write_request("n1", &batch);
        let mut want = Vec::new();
        put_timeseries(
            &mut want,
            &labels("n1", &key),
            &[(2.5, 1_750_000_000_000), (-0.0, -5)],
        );
        assert_eq!(raw, want);
        // Negative int64: ten varint bytes. -0.0 is not the default (its bits are not 0).
        assert!(raw.ends_with(&[
            0x12, 0x14, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x10, 0xfb, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x01
        ]));
        // As the queue manager sends it: one sample per TimeSeries, in time order.
        let requests = encode_as_queue_manager("n1", &batch, 1);
        assert_eq!(requests.len(), 2);
        let first = snap::raw::Decoder::new()
            .decompress_vec(&requests[0])
            .expect("snappy");
        let mut want = Vec::new();
        put_timeseries(&mut want, &labels("n1", &key), &[(-0.0, -5)]);
        assert_eq!(first, want);
        let compressed = encode("n1", &batch);
        let back = snap::raw::Decoder::new()
            .decompress_vec(&compressed)
            .expect("snappy");
        assert_eq!(back, raw);
    }
}
