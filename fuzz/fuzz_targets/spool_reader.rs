//! The node agent's spool recovery on arbitrary bytes.
//!
//! 1. `scan_segment` (sans-IO) on the whole input and on each segment: never panics; the valid prefix is the
//!    records found, back to back; it stops early only with a reason.
//! 2. The input as 1 to 3 segment files in a fresh spool directory, then `Spool::open`:
//!    never panics and never fails on a writable directory; every record it reports reads
//!    back; an append then succeeds; a reopen finds the same records plus the new one and
//!    nothing damaged (recovery left the spool clean).
//!
//! Input layout for 2: byte 0 = flags (bit 0: fix up the CRCs so the fuzzer can explore
//! record structure behind the checksum; bits 1..: segment count − 1, modulo 3), then per
//! extra segment a u16 LE length and its bytes, then the last segment's bytes.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use node_agent::ship::spool::{Spool, scan_segment};

const HEADER: usize = 8;
const BODY_PREFIX: usize = 12;

fuzz_target!(|data: &[u8]| {
    check_scan(data);

    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let n_segments = 1 + usize::from(flags >> 1) % 3;
    let mut segments = Vec::new();
    for _ in 1..n_segments {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(tail.len());
        segments.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    segments.push(rest.to_vec());
    for s in &mut segments {
        if flags & 1 == 1 {
            fix_checksums(s);
        }
        check_scan(s);
    }

    let dir = work_dir();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("spool dir");
    // A session file up front: creating one costs fsyncs on every run.
    fs::write(dir.join("session"), "7\n").expect("session file");
    for (idx, s) in segments.iter().enumerate() {
        fs::write(dir.join(format!("{:020}.spool", idx + 1)), s).expect("segment file");
    }

    let (mut spool, rec) = Spool::open(dir).expect("open must not fail on a writable directory");
    assert_eq!(rec.session, 7);
    for f in &rec.found {
        let payload = spool
            .read(f.loc)
            .expect("a record found at open reads back");
        assert_eq!(payload.len(), f.loc.len as usize);
    }
    let next = spool.last_seq().wrapping_add(1);
    let loc = spool
        .append(next, 1, b"fuzz")
        .expect("append after recovery");
    assert_eq!(spool.read(loc).expect("read the append"), b"fuzz");
    drop(spool);

    let (_, again) = Spool::open(dir).expect("reopen");
    assert_eq!(
        (again.quarantined, again.lost_bytes),
        (0, 0),
        "recovery left damage behind"
    );
    assert_eq!(again.found.len(), rec.found.len() + 1);
    assert_eq!(
        &again.found[..rec.found.len()],
        &rec.found[..],
        "records changed across a reopen"
    );
    assert_eq!(again.found.last().map(|f| f.seq), Some(next));
});

fn check_scan(bytes: &[u8]) {
    let (records, valid, stopped) = scan_segment(bytes);
    assert!(valid <= bytes.len());
    assert_eq!(
        stopped.is_none(),
        valid == bytes.len(),
        "stopped early without a reason, or the reverse"
    );
    let mut pos = 0u64;
    for &(_, _, offset, len) in &records {
        assert_eq!(offset, pos, "records are back to back");
        pos += (HEADER + BODY_PREFIX) as u64 + u64::from(len);
    }
    assert_eq!(pos, valid as u64, "the valid prefix is exactly the records");
}

/// Rewrites each record's CRC to match its body, as far as the lengths make sense.
fn fix_checksums(s: &mut [u8]) {
    let mut pos = 0;
    while let Some(h) = s.get(pos..pos + HEADER) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < BODY_PREFIX || pos + HEADER + len > s.len() {
            return;
        }
        let crc = crc32(&s[pos + HEADER..pos + HEADER + len]);
        s[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos += HEADER + len;
    }
}

/// CRC-32 (IEEE), as `crc32fast::hash` computes it.
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

/// One directory per fuzzing process, on tmpfs when there is one (fsyncs are free there).
fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("adv-fuzz-spool-{}", std::process::id()))
    })
}
