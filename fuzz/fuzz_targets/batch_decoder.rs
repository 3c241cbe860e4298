//! `common::codec::decode_batch` (zstd + payload) and `decode_uncompressed` (payload only)
//! on arbitrary bytes.
//!
//! Checks: never panics; whatever decodes re-encodes to a payload that decodes to the same
//! batch (values compared bit for bit, so NaN and -0.0 count), and encoding that batch
//! again gives the same bytes (the encoder is deterministic and the decoder loses nothing
//! the encoder needs).

#![no_main]

use common::codec::{decode_batch, decode_uncompressed, encode_batch, encode_uncompressed};
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
});

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
