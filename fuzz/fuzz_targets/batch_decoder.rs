//! `common::codec::decode_batch` (zstd + payload) and `decode_uncompressed` (payload only)
//! on arbitrary bytes, and the same bytes as connection-form payloads (protocol 2) through
//! `common::dict::ReceiverDict`, alone and as two batches of one connection.
//!
//! Checks: never panics; whatever decodes re-encodes to a payload that decodes to the same
//! batch (values compared bit for bit, so NaN and -0.0 count), and encoding that batch
//! again gives the same bytes (the encoder is deterministic and the decoder loses nothing
//! the encoder needs). A resolved connection-form batch has a self-contained copy (what
//! the WAL stores) that decodes to the same records, and what an agent's `SenderDict`
//! would send for those records resolves back to them on a fresh connection.

#![no_main]

use common::codec::{decode_batch, decode_uncompressed, encode_batch, encode_uncompressed};
use common::dict::{ReceiverDict, SenderDict};
use common::model::Batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_uncompressed(data) {
        check_round_trip(&batch);
    }
    if let Ok(batch) = decode_batch(data) {
        check_round_trip(&batch);
        let back = decode_batch(&encode_batch(&batch)).expect("a re-compressed batch decodes");
        assert_same(&batch, &back);
    }
    check_connection_form(data);
    // Two batches of one connection: what the first defines, the second may use.
    if let Some((&cut, rest)) = data.split_first() {
        let (a, b) = rest.split_at(usize::from(cut).min(rest.len()));
        let mut rx = ReceiverDict::default();
        let _ = rx.decode_uncompressed(a);
        if let Ok(r) = rx.decode_uncompressed(b) {
            check_resolved(&r.batch, r.self_contained.as_deref());
        }
    }
});

fn check_connection_form(data: &[u8]) {
    let mut rx = ReceiverDict::default();
    let Ok(r) = rx.decode_uncompressed(data) else {
        return;
    };
    check_resolved(&r.batch, r.self_contained.as_deref());
    // What an agent sends for these records on a fresh connection resolves back to them.
    let mut tx = SenderDict::default();
    if let Some(conn) = tx
        .encode_uncompressed(1, &encode_uncompressed(&r.batch))
        .expect("a self-contained payload of our own splits")
    {
        let back = ReceiverDict::default()
            .decode_uncompressed(&conn)
            .expect("the connection form of decoded records resolves");
        assert_same(&r.batch, &back.batch);
    }
}

fn check_resolved(batch: &Batch, self_contained: Option<&[u8]>) {
    if let Some(wal) = self_contained {
        let back = decode_uncompressed(wal).expect("the WAL copy of a resolved batch decodes");
        assert_same(batch, &back);
    }
    check_round_trip(batch);
}

fn check_round_trip(batch: &Batch) {
    let raw = encode_uncompressed(batch);
    let back = decode_uncompressed(&raw).expect("a re-encoded batch decodes");
    assert_same(batch, &back);
    assert_eq!(
        encode_uncompressed(&back),
        raw,
        "encoding is not stable across a round trip"
    );
}

fn assert_same(a: &Batch, b: &Batch) {
    assert_eq!(a.series.len(), b.series.len(), "series count");
    for (x, y) in a.series.iter().zip(&b.series) {
        assert_eq!(x.key, y.key, "series key");
        assert_eq!(x.points.len(), y.points.len(), "point count of {:?}", x.key);
        for (p, q) in x.points.iter().zip(&y.points) {
            assert_eq!(p.ts_ms, q.ts_ms, "timestamp of {:?}", x.key);
            assert_eq!(
                p.value.to_bits(),
                q.value.to_bits(),
                "value of {:?} at {}: {} vs {}",
                x.key,
                p.ts_ms,
                p.value,
                q.value
            );
        }
    }
    assert_eq!(a.events, b.events, "events");
}
