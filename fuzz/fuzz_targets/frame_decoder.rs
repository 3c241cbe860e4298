//! `common::wire::decode_frame` on arbitrary bytes, read as a stream of frames.
//!
//! Checks: never panics; `peek_frame_len` agrees with `decode_frame`; a decoded frame uses
//! at most the bytes given; re-encoding it gives bytes that decode to the same frame and
//! are no longer than the input's (postcard's canonical form is the shortest); every
//! strict prefix of a frame is "incomplete", never an error.

#![no_main]

use common::wire::{MAX_FRAME_LEN, WireError, decode_frame, encode_frame, peek_frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let peeked = peek_frame_len(rest);
        match decode_frame(rest) {
            Ok(None) => {
                match peeked {
                    Ok(None) => assert!(rest.len() < 4, "incomplete with a whole prefix"),
                    Ok(Some(len)) => {
                        assert!(rest.len() < 4 + len, "incomplete though the body is there")
                    }
                    Err(e) => panic!("peek refused ({e}) what decode called incomplete"),
                }
                return;
            }
            Ok(Some((frame, used))) => {
                assert!(
                    (4..=rest.len()).contains(&used),
                    "used {used} of {}",
                    rest.len()
                );
                assert_eq!(peeked, Ok(Some(used - 4)));
                let again = encode_frame(&frame);
                let (back, n) = decode_frame(&again)
                    .expect("a re-encoded frame decodes")
                    .expect("a re-encoded frame is complete");
                assert_eq!(back, frame, "round trip changed the frame");
                assert_eq!(n, again.len());
                assert!(
                    again.len() <= used,
                    "canonical encoding longer than the input's"
                );
                for cut in [0, 3, 4, used / 2, used - 1] {
                    if cut < used {
                        assert_eq!(
                            decode_frame(&rest[..cut]),
                            Ok(None),
                            "prefix of {cut} bytes"
                        );
                    }
                }
                pos += used;
            }
            Err(WireError::TooLarge { len, max }) => {
                assert!(len > max && max == MAX_FRAME_LEN);
                assert!(peeked.is_err());
                return;
            }
            Err(WireError::Malformed(_)) => {
                assert!(matches!(peeked, Ok(Some(_))));
                return;
            }
        }
    }
});
