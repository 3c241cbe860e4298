//! The batch codec: a [`Batch`] as a compact columnar payload, in two forms.
//!
//! Layout before compression (docs/wire.md has the full grammar):
//!
//! ```text
//! format 1, self-contained (what the agent spools, what the aggregator's WAL holds):
//!   u8 1
//!   strings    varint n, n × (varint len, utf-8 bytes)      every distinct text once
//!   series     varint n, n × (entity idx, metric idx, varint n_labels, n_labels × (key idx, value idx))
//!   body
//! format 2, connection form (protocol 2 on the wire; `crate::dict` holds the state):
//!   u8 2
//!   strings    as above, the texts of the definitions only
//!   defs       varint n, n × (id gap, entity idx, metric idx, varint n_labels, n_labels × (key idx, value idx))
//!   ids        varint n, n × id gap                         the batch's series, in column order
//!   body
//! body (both forms):
//!   ts groups  varint n, n × (varint count, zigzag first, zigzag delta, zigzag delta-of-delta...)
//!   columns    per series: varint group idx, u8 value kind, kind-specific value bytes
//!   events     varint len, postcard Vec<Event>
//! ```
//!
//! Series sampled at the same instants share one timestamp group, so a host with two
//! thousand series sampled together pays for its timestamps once. Values are stored as
//! scaled integers with delta + zigzag varints when every value of the series is exactly
//! `n / 10^k` (collectors round to a fixed precision, so this is the common case), and as
//! Gorilla XOR bit streams otherwise. The whole thing is then zstd-compressed.
//!
//! The two forms share the body byte for byte, so turning one into the other (agent at
//! send time, aggregator before its WAL) rewrites only the key part: the values are never
//! re-encoded.
//!
//! Decoding is bounds-checked everywhere: counts are checked against the bytes left before
//! anything is allocated, and the decompressed size is capped by [`MAX_DECODED_LEN`].

use std::collections::HashMap;

use thiserror::Error;

use crate::model::{Batch, Event, Point, SeriesKey, SeriesPoints};

/// First byte of a self-contained payload (after decompression).
pub const FORMAT_VERSION: u8 = 1;

/// First byte of a connection-form payload: series named by connection-local ids
/// (`crate::dict`). Only valid on a protocol-2 connection.
pub const FORMAT_CONNECTION: u8 = 2;

/// Largest decompressed payload accepted. Protects against zstd bombs.
pub const MAX_DECODED_LEN: usize = 64 * 1024 * 1024;

/// zstd level of what the agent sends: 3 is zstd's default and costs little CPU on the node.
pub const ZSTD_LEVEL: i32 = 3;

const KIND_GORILLA: u8 = 0;
const KIND_SCALED: u8 = 1;

/// Largest decimal scale tried for the scaled-integer encoding.
const MAX_SCALE: u8 = 6;

/// Why a payload could not be decoded.
#[derive(Debug, Error, PartialEq)]
pub enum CodecError {
    /// zstd failed, or the payload would decompress past [`MAX_DECODED_LEN`].
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The bytes end before the structure does.
    #[error("payload truncated while reading {0}")]
    Truncated(&'static str),
    /// A field holds an impossible value.
    #[error("invalid payload: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> CodecError {
    CodecError::Invalid(msg.into())
}

/// Encodes and compresses a batch (self-contained form).
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    compress(&encode_uncompressed(batch), ZSTD_LEVEL)
}

/// Decompresses and decodes a self-contained batch.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, CodecError> {
    let raw = decompress(payload)?;
    decode_uncompressed(&raw)
}

/// zstd at `level`. Any level decodes the same.
pub fn compress(raw: &[u8], level: i32) -> Vec<u8> {
    // zstd on an in-memory buffer only fails on allocation failure; fall back to storing
    // raw would need a flag, so an empty result is impossible in practice.
    zstd::bulk::compress(raw, level).unwrap_or_default()
}

/// Decompresses a payload, refusing to grow past [`MAX_DECODED_LEN`].
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(payload)
        .map_err(|e| CodecError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    // Read one byte past the limit so an oversized payload is detected, not truncated.
    decoder
        .take(MAX_DECODED_LEN as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Decompress(e.to_string()))?;
    if out.len() > MAX_DECODED_LEN {
        return Err(CodecError::Decompress(format!(
            "payload decompresses past the {MAX_DECODED_LEN}-byte limit"
        )));
    }
    Ok(out)
}

/// The self-contained payload before compression. Public for benchmarks and fuzzing.
pub fn encode_uncompressed(batch: &Batch) -> Vec<u8> {
    let keys: Vec<&SeriesKey> = batch.series.iter().map(|s| &s.key).collect();
    let mut out = Vec::with_capacity(64 + batch.n_samples() * 2);
    out.push(FORMAT_VERSION);
    put_key_table(&mut out, &keys, None);
    put_body(&mut out, batch);
    out
}

/// Decodes a payload produced by [`encode_uncompressed`]. Public for fuzzing.
pub fn decode_uncompressed(raw: &[u8]) -> Result<Batch, CodecError> {
    let parts = split_self_contained(raw)?;
    decode_body(parts.keys, parts.body)
}

/// A self-contained (format 1) payload cut in two: its series keys, and the body bytes.
#[derive(Debug, PartialEq)]
pub struct SelfContained<'a> {
    /// The batch's series keys, in column order.
    pub keys: Vec<SeriesKey>,
    /// Timestamp groups, columns and events, undecoded.
    pub body: &'a [u8],
}

/// Reads the key part of an uncompressed format-1 payload; the body is left undecoded
/// (and unchecked: [`decode_body`] checks it).
pub fn split_self_contained(raw: &[u8]) -> Result<SelfContained<'_>, CodecError> {
    let mut r = Reader { buf: raw, pos: 0 };
    let version = r.byte("format version")?;
    if version == FORMAT_CONNECTION {
        return Err(invalid(
            "connection-form payload (format 2) needs the connection's series dictionary",
        ));
    }
    if version != FORMAT_VERSION {
        return Err(invalid(format!("unknown format version {version}")));
    }
    let (keys, _) = read_key_table(&mut r, false)?;
    Ok(SelfContained {
        keys,
        body: &raw[r.pos..],
    })
}

/// The bytes of the key table of an uncompressed format-1 payload (between the version
/// byte and the body), found without decoding a key. Two payloads with equal key-table
/// bytes name the same series in the same order: the agent's batches mostly do, one after
/// the other, and the send-time rewrite then reuses what it made of the previous one.
pub fn self_contained_key_table(raw: &[u8]) -> Result<&[u8], CodecError> {
    let mut r = Reader { buf: raw, pos: 0 };
    if r.byte("format version")? != FORMAT_VERSION {
        return Err(invalid("not a self-contained (format 1) payload"));
    }
    let n_strings = r.count("string count", 1)?;
    for _ in 0..n_strings {
        let len = r.count("string length", 1)?;
        r.take(len, "string bytes")?;
    }
    let n_series = r.count("series count", 3)?;
    for _ in 0..n_series {
        r.varint("entity index")?;
        r.varint("metric index")?;
        let n_labels = r.count("label count", 2)?;
        for _ in 0..n_labels {
            r.varint("label key")?;
            r.varint("label value")?;
        }
    }
    Ok(&raw[1..r.pos])
}

/// An uncompressed format-1 payload from a key table (as [`self_contained_key_table`]
/// returns it) and a body.
pub fn join_self_contained_table(table: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + table.len() + body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(table);
    out.extend_from_slice(body);
    out
}

/// An uncompressed format-1 payload from keys and a body taken from either form.
pub fn join_self_contained(keys: &[&SeriesKey], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + keys.len() * 16 + body.len());
    out.push(FORMAT_VERSION);
    put_key_table(&mut out, keys, None);
    out.extend_from_slice(body);
    out
}

/// A connection-form (format 2) payload cut apart.
#[derive(Debug, PartialEq)]
pub struct ConnectionForm<'a> {
    /// Definitions carried by this batch: id → key.
    pub defs: Vec<(u32, SeriesKey)>,
    /// The batch's series as ids, in column order.
    pub ids: Vec<u32>,
    /// Timestamp groups, columns and events, undecoded.
    pub body: &'a [u8],
}

/// Reads the definitions and ids of an uncompressed format-2 payload; the body is left
/// undecoded.
pub fn split_connection_form(raw: &[u8]) -> Result<ConnectionForm<'_>, CodecError> {
    let mut r = Reader { buf: raw, pos: 0 };
    let version = r.byte("format version")?;
    if version != FORMAT_CONNECTION {
        return Err(invalid(format!(
            "format version {version} is not the connection form"
        )));
    }
    let (keys, def_ids) = read_key_table(&mut r, true)?;
    let defs = def_ids.into_iter().zip(keys).collect();
    let n = r.count("series id count", 1)?;
    let mut ids = Vec::with_capacity(n);
    let mut prev = -1i64;
    for _ in 0..n {
        let id = read_id(&mut r, &mut prev, "series id")?;
        ids.push(id);
    }
    Ok(ConnectionForm {
        defs,
        ids,
        body: &raw[r.pos..],
    })
}

/// An uncompressed format-2 payload. `defs` are written in the order given; ids as gaps
/// from the previous one, so the usual ascending runs cost a zero byte each before zstd.
pub fn join_connection_form(defs: &[(u32, &SeriesKey)], ids: &[u32], body: &[u8]) -> Vec<u8> {
    let keys: Vec<&SeriesKey> = defs.iter().map(|(_, k)| *k).collect();
    let def_ids: Vec<u32> = defs.iter().map(|(id, _)| *id).collect();
    let mut out = Vec::with_capacity(16 + keys.len() * 16 + ids.len() + body.len());
    out.push(FORMAT_CONNECTION);
    put_key_table(&mut out, &keys, Some(&def_ids));
    put_varint(&mut out, ids.len() as u64);
    let mut prev = -1i64;
    for &id in ids {
        put_id(&mut out, &mut prev, id);
    }
    out.extend_from_slice(body);
    out
}

/// Decodes a body (either form) whose columns belong to `keys`, in order. Trailing bytes
/// are an error.
pub fn decode_body(keys: Vec<SeriesKey>, body: &[u8]) -> Result<Batch, CodecError> {
    let mut r = Reader { buf: body, pos: 0 };
    let n_groups = r.count("timestamp group count", 1)?;
    let mut groups: Vec<Vec<i64>> = Vec::with_capacity(n_groups);
    for _ in 0..n_groups {
        let n = r.count("timestamp count", 1)?;
        let mut ts = Vec::with_capacity(n);
        let mut prev = 0i64;
        let mut prev_delta = 0i64;
        for idx in 0..n {
            let v = unzigzag(r.varint("timestamp")?);
            let t = match idx {
                0 => v,
                1 => {
                    prev_delta = v;
                    prev.wrapping_add(v)
                }
                _ => {
                    prev_delta = prev_delta.wrapping_add(v);
                    prev.wrapping_add(prev_delta)
                }
            };
            ts.push(t);
            prev = t;
        }
        groups.push(ts);
    }

    // Each column takes at least 3 bytes (group index, kind, scale or length).
    if keys.len().saturating_mul(3) > r.remaining() {
        return Err(CodecError::Truncated("columns"));
    }
    let mut series = Vec::with_capacity(keys.len());
    for key in keys {
        let group_idx = r.varint("timestamp group index")? as usize;
        let ts = groups
            .get(group_idx)
            .ok_or_else(|| invalid(format!("timestamp group {group_idx} out of range")))?;
        let values = decode_values(&mut r, ts.len())?;
        let points = ts
            .iter()
            .zip(values)
            .map(|(&ts_ms, value)| Point { ts_ms, value })
            .collect();
        series.push(SeriesPoints { key, points });
    }

    let events_len = r.count("events length", 1)?;
    let events_bytes = r.take(events_len, "events")?;
    let events: Vec<Event> =
        postcard::from_bytes(events_bytes).map_err(|e| invalid(format!("events: {e}")))?;
    if r.pos != body.len() {
        return Err(invalid(format!("{} trailing bytes", body.len() - r.pos)));
    }
    Ok(Batch { series, events })
}

/// Writes a string table and then one entry per key (preceded by its id gap when `ids`
/// is given): the key part of both forms.
fn put_key_table(out: &mut Vec<u8>, keys: &[&SeriesKey], ids: Option<&[u32]>) {
    let mut strings = StringTable::default();
    let mut refs = Vec::with_capacity(keys.len());
    for key in keys {
        let entity = strings.intern(&key.entity);
        let metric = strings.intern(&key.metric);
        let labels: Vec<(u32, u32)> = key
            .labels
            .iter()
            .map(|(k, v)| (strings.intern(k), strings.intern(v)))
            .collect();
        refs.push((entity, metric, labels));
    }
    put_varint(out, strings.list.len() as u64);
    for s in &strings.list {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    put_varint(out, refs.len() as u64);
    let mut prev = -1i64;
    for (idx, (entity, metric, labels)) in refs.iter().enumerate() {
        if let Some(id) = ids.and_then(|ids| ids.get(idx)) {
            put_id(out, &mut prev, *id);
        }
        put_varint(out, u64::from(*entity));
        put_varint(out, u64::from(*metric));
        put_varint(out, labels.len() as u64);
        for (k, v) in labels {
            put_varint(out, u64::from(*k));
            put_varint(out, u64::from(*v));
        }
    }
}

/// Reads what [`put_key_table`] wrote; the ids are empty unless `with_ids`.
fn read_key_table(
    r: &mut Reader<'_>,
    with_ids: bool,
) -> Result<(Vec<SeriesKey>, Vec<u32>), CodecError> {
    let n_strings = r.count("string count", 1)?;
    let mut strings = Vec::with_capacity(n_strings);
    for _ in 0..n_strings {
        let len = r.count("string length", 1)?;
        let bytes = r.take(len, "string bytes")?;
        let s = std::str::from_utf8(bytes).map_err(|_| invalid("string is not UTF-8"))?;
        strings.push(s);
    }
    // Keys copy their strings: a long string named by many series would multiply, so the
    // text materialised over all keys is capped like a decompressed payload.
    let mut budget = MAX_DECODED_LEN;
    let mut string = |idx: u64| -> Result<String, CodecError> {
        let s = strings
            .get(idx as usize)
            .ok_or_else(|| invalid(format!("string index {idx} out of range")))?;
        budget = budget
            .checked_sub(s.len())
            .ok_or_else(|| invalid("series keys expand past the decoded-size limit"))?;
        Ok(s.to_string())
    };

    let min_entry = if with_ids { 4 } else { 3 };
    let n_series = r.count("series count", min_entry)?;
    let mut keys = Vec::with_capacity(n_series);
    let mut ids = Vec::with_capacity(if with_ids { n_series } else { 0 });
    let mut prev = -1i64;
    for _ in 0..n_series {
        if with_ids {
            ids.push(read_id(r, &mut prev, "definition id")?);
        }
        let entity = string(r.varint("entity index")?)?;
        let metric = string(r.varint("metric index")?)?;
        let n_labels = r.count("label count", 2)?;
        let mut labels = Vec::with_capacity(n_labels);
        for _ in 0..n_labels {
            let k = string(r.varint("label key")?)?;
            let v = string(r.varint("label value")?)?;
            labels.push((k, v));
        }
        keys.push(SeriesKey {
            entity,
            metric,
            labels,
        });
    }
    Ok((keys, ids))
}

/// An id as the zigzag gap from the previous one minus one: ascending runs write zeros.
fn put_id(out: &mut Vec<u8>, prev: &mut i64, id: u32) {
    let id = i64::from(id);
    put_varint(out, zigzag(id - *prev - 1));
    *prev = id;
}

fn read_id(r: &mut Reader<'_>, prev: &mut i64, what: &'static str) -> Result<u32, CodecError> {
    let gap = unzigzag(r.varint(what)?);
    let id = prev
        .checked_add(1)
        .and_then(|p| p.checked_add(gap))
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| invalid(format!("{what} outside 0..2^32")))?;
    *prev = i64::from(id);
    Ok(id)
}

/// Timestamp groups, columns and events: the part both forms share.
fn put_body(out: &mut Vec<u8>, batch: &Batch) {
    // Timestamp groups: identical timestamp vectors are stored once.
    let mut groups: Vec<Vec<i64>> = Vec::new();
    let mut group_of: HashMap<Vec<i64>, u32> = HashMap::new();
    let mut series_group = Vec::with_capacity(batch.series.len());
    for s in &batch.series {
        let ts: Vec<i64> = s.points.iter().map(|p| p.ts_ms).collect();
        let idx = match group_of.get(&ts) {
            Some(&idx) => idx,
            None => {
                let idx = groups.len() as u32;
                group_of.insert(ts.clone(), idx);
                groups.push(ts);
                idx
            }
        };
        series_group.push(idx);
    }
    put_varint(out, groups.len() as u64);
    for ts in &groups {
        put_varint(out, ts.len() as u64);
        let mut prev = 0i64;
        let mut prev_delta = 0i64;
        for (idx, &t) in ts.iter().enumerate() {
            match idx {
                0 => put_varint(out, zigzag(t)),
                1 => {
                    prev_delta = t.wrapping_sub(prev);
                    put_varint(out, zigzag(prev_delta));
                }
                _ => {
                    let delta = t.wrapping_sub(prev);
                    put_varint(out, zigzag(delta.wrapping_sub(prev_delta)));
                    prev_delta = delta;
                }
            }
            prev = t;
        }
    }
    for (s, group) in batch.series.iter().zip(&series_group) {
        put_varint(out, u64::from(*group));
        encode_values(out, &s.points);
    }
    let events = postcard::to_allocvec(&batch.events).unwrap_or_default();
    put_varint(out, events.len() as u64);
    out.extend_from_slice(&events);
}

/// Picks the smaller of the scaled-integer and Gorilla encodings for one series.
fn encode_values(out: &mut Vec<u8>, points: &[Point]) {
    if let Some(scale) = common_scale(points) {
        out.push(KIND_SCALED);
        out.push(scale);
        let factor = 10f64.powi(scale as i32);
        let mut prev = 0i64;
        for p in points {
            let n = (p.value * factor).round() as i64;
            put_varint(out, zigzag(n.wrapping_sub(prev)));
            prev = n;
        }
        return;
    }
    out.push(KIND_GORILLA);
    let mut bits = BitWriter::default();
    gorilla_encode(&mut bits, points.iter().map(|p| p.value));
    let bytes = bits.finish();
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(&bytes);
}

/// The smallest decimal scale `k` at which every value is exactly `n / 10^k` with `n`
/// a safe integer, checked by decoding it back bit for bit.
fn common_scale(points: &[Point]) -> Option<u8> {
    const SAFE: f64 = 9_007_199_254_740_992.0; // 2^53
    'scale: for scale in 0..=MAX_SCALE {
        let factor = 10f64.powi(scale as i32);
        for p in points {
            let scaled = (p.value * factor).round();
            if !scaled.is_finite() || scaled.abs() >= SAFE {
                return None;
            }
            // Exactly the decoder's arithmetic, so -0.0 and friends fall back to Gorilla.
            let n = scaled as i64 as f64;
            let back = if scale == 0 { n } else { n / factor };
            if back.to_bits() != p.value.to_bits() {
                continue 'scale;
            }
        }
        return Some(scale);
    }
    None
}

fn decode_values(r: &mut Reader<'_>, n: usize) -> Result<Vec<f64>, CodecError> {
    match r.byte("value kind")? {
        KIND_SCALED => {
            let scale = r.byte("value scale")?;
            if scale > MAX_SCALE {
                return Err(invalid(format!("value scale {scale} above {MAX_SCALE}")));
            }
            // Each value takes at least one byte.
            if r.remaining() < n {
                return Err(CodecError::Truncated("scaled values"));
            }
            let factor = 10f64.powi(scale as i32);
            let mut values = Vec::with_capacity(n);
            let mut prev = 0i64;
            for _ in 0..n {
                prev = prev.wrapping_add(unzigzag(r.varint("scaled value")?));
                let v = prev as f64;
                values.push(if scale == 0 { v } else { v / factor });
            }
            Ok(values)
        }
        KIND_GORILLA => {
            let len = r.count("gorilla length", 1)?;
            let bytes = r.take(len, "gorilla bits")?;
            // Each value takes at least one bit; the first takes 64.
            if n > 0 && (bytes.len() * 8) < 64 + (n - 1) {
                return Err(CodecError::Truncated("gorilla bits"));
            }
            gorilla_decode(bytes, n)
        }
        other => Err(invalid(format!("unknown value kind {other}"))),
    }
}

fn gorilla_encode(bits: &mut BitWriter, values: impl Iterator<Item = f64>) {
    let mut prev = 0u64;
    let mut prev_leading = u32::MAX;
    let mut prev_trailing = 0u32;
    for (idx, v) in values.enumerate() {
        let v = v.to_bits();
        if idx == 0 {
            bits.put(v, 64);
            prev = v;
            continue;
        }
        let xor = v ^ prev;
        prev = v;
        if xor == 0 {
            bits.put(0, 1);
            continue;
        }
        bits.put(1, 1);
        // Leading zeros are capped at 31 so they fit in 5 bits.
        let leading = xor.leading_zeros().min(31);
        let trailing = xor.trailing_zeros();
        if prev_leading != u32::MAX && leading >= prev_leading && trailing >= prev_trailing {
            // Fits in the previous window: reuse it.
            bits.put(0, 1);
            let width = 64 - prev_leading - prev_trailing;
            bits.put(xor >> prev_trailing, width);
        } else {
            bits.put(1, 1);
            let width = 64 - leading - trailing;
            bits.put(leading as u64, 5);
            // Width is 1..=64; store width-1 in 6 bits.
            bits.put((width - 1) as u64, 6);
            bits.put(xor >> trailing, width);
            prev_leading = leading;
            prev_trailing = trailing;
        }
    }
}

fn gorilla_decode(bytes: &[u8], n: usize) -> Result<Vec<f64>, CodecError> {
    let mut bits = BitReader { buf: bytes, pos: 0 };
    let mut values = Vec::with_capacity(n);
    let mut prev = 0u64;
    let mut leading = 0u32;
    let mut trailing = 0u32;
    let mut have_window = false;
    for idx in 0..n {
        if idx == 0 {
            prev = bits.get(64)?;
            values.push(f64::from_bits(prev));
            continue;
        }
        if bits.get(1)? == 0 {
            values.push(f64::from_bits(prev));
            continue;
        }
        if bits.get(1)? == 1 {
            leading = bits.get(5)? as u32;
            let width = bits.get(6)? as u32 + 1;
            if leading + width > 64 {
                return Err(invalid("gorilla window wider than 64 bits"));
            }
            trailing = 64 - leading - width;
            have_window = true;
        } else if !have_window {
            return Err(invalid("gorilla reuses a window before defining one"));
        }
        let width = 64 - leading - trailing;
        let xor = bits.get(width)? << trailing;
        prev ^= xor;
        values.push(f64::from_bits(prev));
    }
    Ok(values)
}

/// Borrows the keys' strings: a table is built and written in one go, on every send.
#[derive(Default)]
struct StringTable<'a> {
    list: Vec<&'a str>,
    index: HashMap<&'a str, u32>,
}

impl<'a> StringTable<'a> {
    fn intern(&mut self, s: &'a str) -> u32 {
        *self.index.entry(s).or_insert_with(|| {
            self.list.push(s);
            (self.list.len() - 1) as u32
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated(what));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    return Err(invalid(format!("{what}: varint overflows 64 bits")));
                }
                return Ok(v);
            }
        }
        Err(invalid(format!("{what}: varint longer than 10 bytes")))
    }

    /// A count of items that each take at least `min_bytes` bytes: refused when the rest
    /// of the buffer could not hold them, so a hostile count never drives an allocation.
    fn count(&mut self, what: &'static str, min_bytes: usize) -> Result<usize, CodecError> {
        let n = self.varint(what)?;
        let n = usize::try_from(n).map_err(|_| invalid(format!("{what} too large")))?;
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(CodecError::Truncated(what));
        }
        Ok(n)
    }
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    n_bits: u64,
}

impl BitWriter {
    /// Appends the low `width` bits of `v`, most significant first.
    fn put(&mut self, v: u64, width: u32) {
        for i in (0..width).rev() {
            let bit = (v >> i) & 1;
            let byte_idx = (self.n_bits / 8) as usize;
            if byte_idx == self.bytes.len() {
                self.bytes.push(0);
            }
            if bit == 1 {
                self.bytes[byte_idx] |= 0x80 >> (self.n_bits % 8);
            }
            self.n_bits += 1;
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

struct BitReader<'a> {
    buf: &'a [u8],
    pos: u64,
}

impl BitReader<'_> {
    fn get(&mut self, width: u32) -> Result<u64, CodecError> {
        if self.pos + width as u64 > self.buf.len() as u64 * 8 {
            return Err(CodecError::Truncated("gorilla bits"));
        }
        let mut v = 0u64;
        for _ in 0..width {
            let byte = self.buf[(self.pos / 8) as usize];
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Severity;
    use proptest::prelude::*;

    fn series(entity: &str, metric: &str, points: &[(i64, f64)]) -> SeriesPoints {
        SeriesPoints {
            key: SeriesKey::new(entity, metric).with_label("comm", "nginx"),
            points: points
                .iter()
                .map(|&(ts_ms, value)| Point { ts_ms, value })
                .collect(),
        }
    }

    /// Same series, keys, timestamps, value bits and events.
    pub(crate) fn same_bits(a: &Batch, b: &Batch) -> bool {
        a.events == b.events
            && a.series.len() == b.series.len()
            && a.series.iter().zip(&b.series).all(|(x, y)| {
                x.key == y.key
                    && x.points.len() == y.points.len()
                    && x.points
                        .iter()
                        .zip(&y.points)
                        .all(|(p, q)| p.ts_ms == q.ts_ms && p.value.to_bits() == q.value.to_bits())
            })
    }

    #[test]
    fn round_trip_mixed_encodings() {
        let batch = Batch {
            series: vec![
                series(
                    "host",
                    "cpu.usage_pct",
                    &[(1000, 12.34), (2000, 12.5), (3000, 0.01)],
                ),
                series(
                    "host",
                    "mem.used_bytes",
                    &[(1000, 1e9), (2000, 1.5e9), (3000, 0.0)],
                ),
                series(
                    "process/1",
                    "odd",
                    &[(1000, std::f64::consts::PI), (2000, f64::NAN), (3000, -0.0)],
                ),
                series("process/2", "irregular", &[(5, 1.0), (17, f64::INFINITY)]),
                series("empty", "none", &[]),
            ],
            events: vec![Event {
                ts_ms: 1500,
                entity: "host".into(),
                kind: "agent.started".into(),
                severity: Severity::Info,
                message: "hello".into(),
                attrs: vec![("version".into(), "0.1.0".into())],
            }],
        };
        let decoded = decode_batch(&encode_batch(&batch)).unwrap();
        assert!(same_bits(&batch, &decoded), "{decoded:?}");
    }

    #[test]
    fn shared_timestamps_stored_once() {
        let ts: Vec<(i64, f64)> = (0..10)
            .map(|i| (1_700_000_000_000 + i * 1000, 1.0))
            .collect();
        let one = Batch {
            series: vec![series("host", "a", &ts)],
            events: vec![],
        };
        let many = Batch {
            series: (0..100)
                .map(|i| series("host", &format!("m{i}"), &ts))
                .collect(),
            events: vec![],
        };
        let per_series_one = encode_uncompressed(&one).len();
        let per_series_many = encode_uncompressed(&many).len() / 100;
        assert!(
            per_series_many < per_series_one,
            "{per_series_many} vs {per_series_one}"
        );
    }

    #[test]
    fn scaled_integers_chosen_for_rounded_values() {
        let mut out = Vec::new();
        let pts: Vec<Point> = [12.34, 12.35, 99.99]
            .iter()
            .map(|&value| Point { ts_ms: 0, value })
            .collect();
        encode_values(&mut out, &pts);
        assert_eq!(out[0], KIND_SCALED);
        assert_eq!(out[1], 2);
    }

    #[test]
    fn zstd_bomb_refused() {
        let zeros = vec![0u8; MAX_DECODED_LEN + 10];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(matches!(
            decode_batch(&bomb),
            Err(CodecError::Decompress(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let batch = Batch {
            series: vec![series("host", "cpu", &[(1, 1.5), (2, 2.25), (3, 3.125)])],
            events: vec![],
        };
        let raw = encode_uncompressed(&batch);
        for cut in 0..raw.len() {
            assert!(decode_uncompressed(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_count_does_not_allocate() {
        // Version, then a string count of 2^60.
        let mut raw = vec![FORMAT_VERSION];
        put_varint(&mut raw, 1 << 60);
        assert!(matches!(
            decode_uncompressed(&raw),
            Err(CodecError::Truncated(_))
        ));
    }

    #[test]
    fn keys_sharing_a_long_string_cannot_multiply_it() {
        // One 1 MiB string named by 100 series: 100 MiB of keys from ~1 MiB of input.
        let mut raw = vec![FORMAT_VERSION];
        put_varint(&mut raw, 1);
        put_varint(&mut raw, 1 << 20);
        raw.extend(std::iter::repeat_n(b'x', 1 << 20));
        put_varint(&mut raw, 100);
        for _ in 0..100 {
            raw.extend([0, 0, 0]);
        }
        raw.extend([0, 0]);
        assert!(matches!(
            decode_uncompressed(&raw),
            Err(CodecError::Invalid(why)) if why.contains("limit")
        ));
    }

    #[test]
    fn both_forms_share_the_body() {
        let batch = Batch {
            series: vec![series("host", "cpu", &[(1, 1.5), (2, 2.25)])],
            events: vec![],
        };
        let raw = encode_uncompressed(&batch);
        let parts = split_self_contained(&raw).unwrap();
        let key = &parts.keys[0];
        let conn = join_connection_form(&[(7, key)], &[7], parts.body);
        let form = split_connection_form(&conn).unwrap();
        assert_eq!(form.defs, vec![(7, key.clone())]);
        assert_eq!(form.ids, vec![7]);
        assert_eq!(form.body, parts.body);
        assert_eq!(join_self_contained(&[key], form.body), raw);
        for cut in 0..conn.len() {
            let cut = &conn[..cut];
            let ok = split_connection_form(cut)
                .and_then(|f| decode_body(vec![key.clone(); f.ids.len()], f.body));
            assert!(ok.is_err(), "cut at {}", cut.len());
        }
    }

    fn arb_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (0i64..100_000).prop_map(|n| n as f64 / 100.0),
            (0u64..1 << 40).prop_map(|n| n as f64),
            Just(f64::NAN),
            Just(0.0),
        ]
    }

    fn arb_series() -> impl Strategy<Value = SeriesPoints> {
        (
            "[a-z/0-9]{1,12}",
            "[a-z._]{1,12}",
            proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,6}"), 0..3),
            any::<i64>(),
            proptest::collection::vec((0i64..5_000, arb_value()), 0..40),
        )
            .prop_map(|(entity, metric, labels, start, steps)| {
                let mut key = SeriesKey::new(entity, metric);
                for (k, v) in labels {
                    key = key.with_label(k, v);
                }
                let mut ts = start;
                let points = steps
                    .into_iter()
                    .map(|(step, value)| {
                        ts = ts.wrapping_add(step);
                        Point { ts_ms: ts, value }
                    })
                    .collect();
                SeriesPoints { key, points }
            })
    }

    proptest! {
        #[test]
        fn round_trips_bit_exact(series in proptest::collection::vec(arb_series(), 0..12)) {
            let batch = Batch { series, events: vec![] };
            let decoded = decode_batch(&encode_batch(&batch)).unwrap();
            prop_assert!(same_bits(&batch, &decoded));
        }

        #[test]
        fn hostile_uncompressed_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_uncompressed(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(series in proptest::collection::vec(arb_series(), 1..4),
                                     flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut raw = encode_uncompressed(&Batch { series, events: vec![] });
            for (pos, val) in flips {
                let idx = pos % raw.len();
                raw[idx] ^= val;
            }
            let _ = decode_uncompressed(&raw);
        }

        #[test]
        fn hostile_compressed_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
        }
    }
}
