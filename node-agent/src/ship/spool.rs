//! The spool: unacked batches on disk, so an agent crash or a reboot loses nothing.
//!
//! Layout in the spool directory: `session` (this spool's agent session id, decimal, made
//! once), `seq_reserved` (the highest seq this spool may have handed out, decimal) and
//! segments `<id>.spool`, each a run of records
//! `u32 LE body_len | u32 LE crc32(body) | body`, body = `u64 LE seq | u32 LE n_samples |
//! payload`. Appends go to the newest segment and are `fdatasync`ed before `append`
//! returns (one fsync per batch, i.e. per `--batch-secs`). Segments rotate at
//! [`SEGMENT_BYTES`].
//!
//! Promises (docs/DURABILITY.md, "Node spool"):
//! - a batch whose `append` returned is on disk and is replayed after a crash until acked;
//! - seqs never repeat within a session, across restarts too: seqs are reserved in blocks
//!   of [`SEQ_RESERVE`] in `seq_reserved` (written and fsynced before the first append
//!   past the block), and a reopened spool continues after the reservation. The highest
//!   seq on disk alone is not enough: a damaged newest segment keeps only its valid prefix,
//!   and a batch whose append failed lives in memory only, yet both may have been acked.
//!   Seqs skipped this way are harmless: dedup keeps the highest seq per session;
//! - a torn tail (crash mid-append) is cut off; a record that fails its checksum anywhere
//!   else quarantines the segment: its bytes are copied to `quarantine/`, the valid prefix
//!   is kept, and the loss is counted. The agent always starts.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Segment size at which a new segment starts.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Seqs reserved at a time in `seq_reserved`: one small fsynced write per this many
/// batches (about 5.7 hours at 5 s batches).
pub const SEQ_RESERVE: u64 = 4096;

/// Largest record body accepted when reading (a batch frame is at most 16 MiB).
const MAX_BODY: usize = 17 * 1024 * 1024;

const HEADER: usize = 8;
const BODY_PREFIX: usize = 12;

/// Spool failures.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// The disk refused.
    #[error("spool I/O error on {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A record read back does not match what was written.
    #[error("spool record at {path}:{offset} is damaged")]
    Damaged {
        /// Segment.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Segment id.
    pub segment: u64,
    /// Offset of the record header.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// A record found at open.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Batch seq.
    pub seq: u64,
    /// Samples in it.
    pub n_samples: usize,
    /// Where it is.
    pub loc: Loc,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Session id of this spool.
    pub session: u64,
    /// Records, oldest first.
    pub found: Vec<Found>,
    /// Segments quarantined because of damage.
    pub quarantined: usize,
    /// Bytes cut or quarantined (records after a torn or damaged one).
    pub lost_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    bytes: u64,
    last_seq: u64,
}

/// The on-disk half of the outbox.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    active: Option<File>,
    bytes: u64,
    /// Seqs up to this are reserved on disk (`seq_reserved`).
    seq_reserved: u64,
}

/// A record found by [`scan_segment`]: `(seq, n_samples, offset of its header in the
/// segment, payload length)`.
pub type ScannedRecord = (u64, usize, u64, u32);

/// Parses one segment's bytes: records up to the first bad one, and where that was.
/// Sans-IO for unit tests.
pub fn scan_segment(bytes: &[u8]) -> (Vec<ScannedRecord>, usize, Option<String>) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(h) = bytes.get(pos..pos + HEADER) else {
            return (out, pos, Some("torn header".into()));
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if !(BODY_PREFIX..=MAX_BODY).contains(&len) {
            return (out, pos, Some(format!("impossible record length {len}")));
        }
        let Some(body) = bytes.get(pos + HEADER..pos + HEADER + len) else {
            return (out, pos, Some("torn record".into()));
        };
        if crc32fast::hash(body) != crc {
            return (out, pos, Some("checksum mismatch".into()));
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or([0; 8]));
        let n_samples = u32::from_le_bytes(body[8..12].try_into().unwrap_or([0; 4])) as usize;
        out.push((seq, n_samples, pos as u64, (len - BODY_PREFIX) as u32));
        pos += HEADER + len;
    }
    (out, pos, None)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spool"))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers what it holds.
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut rec = Recovered {
            session: load_or_create_session(dir)?,
            ..Default::default()
        };
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".spool")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let n_ids = ids.len();
        for (idx, id) in ids.into_iter().enumerate() {
            let path = segment_path(dir, id);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let (records, valid, stopped) = scan_segment(&bytes);
            if let Some(why) = stopped {
                let is_torn_tail = idx + 1 == n_ids && why.starts_with("torn");
                rec.lost_bytes += (bytes.len() - valid) as u64;
                if is_torn_tail {
                    tracing::warn!(segment = %path.display(), cut_bytes = bytes.len() - valid, "spool: torn tail from a crash mid-append cut off");
                } else {
                    let qdir = dir.join("quarantine");
                    fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
                    let qpath = qdir.join(format!("{id:020}.spool.{}", std::process::id()));
                    fs::write(&qpath, &bytes).map_err(io_err(&qpath))?;
                    rec.quarantined += 1;
                    tracing::error!(segment = %path.display(), reason = %why, kept_records = records.len(), lost_bytes = bytes.len() - valid, copy = %qpath.display(), "spool: damaged segment quarantined");
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid as u64).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            if records.is_empty() && idx + 1 < n_ids {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let last_seq = records.last().map(|r| r.0).unwrap_or(0);
            for (seq, n_samples, offset, len) in records {
                rec.found.push(Found {
                    seq,
                    n_samples,
                    loc: Loc {
                        segment: id,
                        offset,
                        len,
                    },
                });
            }
            segments.push_back(Segment {
                id,
                bytes: valid as u64,
                last_seq,
            });
        }
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let seq_reserved = load_seq_reserved(dir);
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                segments,
                active: None,
                bytes,
                seq_reserved,
            },
            rec,
        ))
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Highest seq on disk (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.segments.iter().map(|s| s.last_seq).max().unwrap_or(0)
    }

    /// The first seq that is safe to hand out: past every seq on disk and every seq a
    /// previous run may have used (its reservation).
    pub fn next_seq(&self) -> u64 {
        self.last_seq().max(self.seq_reserved) + 1
    }

    /// Makes sure `seq` is covered by the reservation on disk before a record carrying it
    /// is written.
    fn reserve(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.seq_reserved {
            return Ok(());
        }
        let upto = seq.saturating_add(SEQ_RESERVE);
        write_durably(&self.dir, "seq_reserved", &format!("{upto}\n"))?;
        self.seq_reserved = upto;
        Ok(())
    }

    /// Appends a batch and fsyncs it.
    pub fn append(
        &mut self,
        seq: u64,
        n_samples: usize,
        payload: &[u8],
    ) -> Result<Loc, SpoolError> {
        self.reserve(seq)?;
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => s.bytes >= SEGMENT_BYTES,
        };
        if need_new || self.active.is_none() {
            let id = if need_new {
                self.segments.back().map(|s| s.id + 1).unwrap_or(1)
            } else {
                self.segments.back().map(|s| s.id).unwrap_or(1)
            };
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if need_new {
                sync_dir(&self.dir)?;
                self.segments.push_back(Segment {
                    id,
                    bytes: 0,
                    last_seq: 0,
                });
            }
            self.active = Some(file);
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no active segment"),
            });
        };
        let mut body = Vec::with_capacity(BODY_PREFIX + payload.len());
        body.extend_from_slice(&seq.to_le_bytes());
        body.extend_from_slice(&(n_samples as u32).to_le_bytes());
        body.extend_from_slice(payload);
        let mut rec = Vec::with_capacity(HEADER + body.len());
        rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        rec.extend_from_slice(&body);
        let path = segment_path(&self.dir, seg.id);
        let res = file.write_all(&rec).and_then(|()| file.sync_data());
        if let Err(e) = res {
            // A partial record may be on disk: truncate back and drop the handle so the
            // next append reopens cleanly.
            let _ = file.set_len(seg.bytes);
            self.active = None;
            return Err(SpoolError::Io { path, source: e });
        }
        let loc = Loc {
            segment: seg.id,
            offset: seg.bytes,
            len: payload.len() as u32,
        };
        seg.bytes += rec.len() as u64;
        seg.last_seq = seq;
        self.bytes += rec.len() as u64;
        Ok(loc)
    }

    /// Reads a payload back, verifying its checksum.
    pub fn read(&self, loc: Loc) -> Result<Vec<u8>, SpoolError> {
        let path = segment_path(&self.dir, loc.segment);
        let mut f = File::open(&path).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(loc.offset)).map_err(io_err(&path))?;
        let mut rec = vec![0u8; HEADER + BODY_PREFIX + loc.len as usize];
        f.read_exact(&mut rec).map_err(io_err(&path))?;
        let crc = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        if crc32fast::hash(&rec[HEADER..]) != crc {
            return Err(SpoolError::Damaged {
                path,
                offset: loc.offset,
            });
        }
        Ok(rec.split_off(HEADER + BODY_PREFIX))
    }

    /// Deletes segments whose records are all at or below `seq`, except the newest.
    pub fn release_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last_seq <= seq) {
            if let Some(s) = self.segments.pop_front() {
                self.remove(s)?;
            }
        }
        Ok(())
    }

    /// Deletes the oldest segment (unless it is the only one) and returns the highest seq
    /// it held, so the caller can shed those batches.
    pub fn shed_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        if self.segments.len() <= 1 {
            return Ok(None);
        }
        let Some(s) = self.segments.pop_front() else {
            return Ok(None);
        };
        let last = s.last_seq;
        self.remove(s)?;
        Ok(Some(last))
    }

    fn remove(&mut self, s: Segment) -> Result<(), SpoolError> {
        let path = segment_path(&self.dir, s.id);
        fs::remove_file(&path).map_err(io_err(&path))?;
        self.bytes -= s.bytes;
        Ok(())
    }
}

fn load_or_create_session(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join("session");
    if let Ok(text) = fs::read_to_string(&path)
        && let Ok(id) = text.trim().parse::<u64>()
    {
        return Ok(id);
    }
    let id: u64 = rand::random();
    write_durably(dir, "session", &format!("{id}\n"))?;
    Ok(id)
}

/// The reservation a previous run left (0 when there is none). An unreadable one is logged
/// and read as 0: the seqs on disk are then the only floor, as before reservations.
fn load_seq_reserved(dir: &Path) -> u64 {
    let path = dir.join("seq_reserved");
    let text = match fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        other => other.map_err(|e| e.to_string()),
    };
    match text.and_then(|t| {
        t.trim()
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())
    }) {
        Ok(reserved) => reserved,
        Err(why) => {
            tracing::error!(file = %path.display(), error = %why, "spool: seq reservation unreadable; continuing after the highest seq on disk");
            0
        }
    }
}

/// Replaces `dir/name` with `text` atomically: temp file, fsync, rename, fsync the directory.
fn write_durably(dir: &Path, name: &str, text: &str) -> Result<(), SpoolError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-test-{tag}-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn append_read_reopen() {
        let dir = temp_dir("basic");
        let (mut s, rec) = Spool::open(&dir).unwrap();
        assert!(rec.found.is_empty());
        let session = rec.session;
        let locs: Vec<Loc> = (1..=5)
            .map(|seq| s.append(seq, seq as usize * 10, &[seq as u8; 100]).unwrap())
            .collect();
        assert_eq!(s.read(locs[2]).unwrap(), vec![3u8; 100]);
        drop(s);
        let (s, rec) = Spool::open(&dir).unwrap();
        assert_eq!(rec.session, session, "session survives restarts");
        assert_eq!(
            rec.found.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(rec.found[4].n_samples, 50);
        assert_eq!(s.read(rec.found[4].loc).unwrap(), vec![5u8; 100]);
        assert_eq!(s.last_seq(), 5);
    }

    #[test]
    fn release_keeps_the_newest_segment_so_seqs_never_restart() {
        let dir = temp_dir("release");
        let (mut s, _) = Spool::open(&dir).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 2) as usize];
        for seq in 1..=5 {
            s.append(seq, 1, &big).unwrap();
        }
        assert!(s.segments.len() >= 2);
        s.release_through(5).unwrap();
        assert_eq!(s.segments.len(), 1);
        drop(s);
        let (s, rec) = Spool::open(&dir).unwrap();
        assert_eq!(s.last_seq(), 5);
        assert!(rec.found.iter().all(|f| f.seq == 5));
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = temp_dir("torn");
        let (mut s, _) = Spool::open(&dir).unwrap();
        for seq in 1..=3 {
            s.append(seq, 1, b"payload").unwrap();
        }
        drop(s);
        let path = segment_path(&dir, 1);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (mut s, rec) = Spool::open(&dir).unwrap();
        assert_eq!(rec.found.len(), 2);
        assert_eq!(rec.quarantined, 0);
        let loc = s.append(3, 1, b"again").unwrap();
        assert_eq!(s.read(loc).unwrap(), b"again");
        drop(s);
        let (_, rec) = Spool::open(&dir).unwrap();
        assert_eq!(
            rec.found.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn damaged_segment_is_quarantined_and_the_rest_kept() {
        let dir = temp_dir("damaged");
        let (mut s, _) = Spool::open(&dir).unwrap();
        let big = vec![1u8; (SEGMENT_BYTES / 2) as usize];
        for seq in 1..=6 {
            s.append(seq, 2, &big).unwrap();
        }
        drop(s);
        // Flip a byte inside the second record of the first segment.
        let path = segment_path(&dir, 1);
        let mut bytes = fs::read(&path).unwrap();
        let second = HEADER + BODY_PREFIX + big.len();
        bytes[second + HEADER + 40] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (_, rec) = Spool::open(&dir).unwrap();
        assert_eq!(rec.quarantined, 1);
        assert!(rec.lost_bytes > 0);
        let seqs: Vec<u64> = rec.found.iter().map(|f| f.seq).collect();
        assert_eq!(seqs[0], 1);
        assert!(!seqs.contains(&2));
        assert!(seqs.contains(&6), "later segments are untouched: {seqs:?}");
        assert_eq!(fs::read_dir(dir.join("quarantine")).unwrap().count(), 1);
    }

    #[test]
    fn damaged_newest_segment_never_lets_seqs_be_reused() {
        let dir = temp_dir("reuse");
        let (mut s, _) = Spool::open(&dir).unwrap();
        for seq in 1..=5 {
            s.append(seq, 1, b"payload").unwrap();
        }
        drop(s);
        // Damage the second record: only seq 1 survives, yet seqs 2..=5 may be acked.
        let path = segment_path(&dir, 1);
        let mut bytes = fs::read(&path).unwrap();
        let second = HEADER + BODY_PREFIX + b"payload".len();
        bytes[second + HEADER + 2] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (s, rec) = Spool::open(&dir).unwrap();
        assert_eq!(rec.quarantined, 1);
        assert_eq!(s.last_seq(), 1);
        assert!(
            s.next_seq() > 5,
            "next seq {} reuses a handed-out one",
            s.next_seq()
        );
    }

    #[test]
    fn reservation_is_on_disk_before_the_record_and_reopen_continues_after_it() {
        let dir = temp_dir("reserve");
        let (mut s, _) = Spool::open(&dir).unwrap();
        assert_eq!(s.next_seq(), 1, "a new spool starts at 1");
        s.append(1, 1, b"x").unwrap();
        let reserved: u64 = fs::read_to_string(dir.join("seq_reserved"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(reserved, 1 + SEQ_RESERVE);
        s.append(2, 1, b"y").unwrap();
        drop(s);
        let (mut s, _) = Spool::open(&dir).unwrap();
        let next = s.next_seq();
        assert_eq!(next, reserved + 1);
        s.append(next, 1, b"z").unwrap();
        drop(s);
        // A spool from before reservations (no file) falls back to the seqs on disk.
        fs::remove_file(dir.join("seq_reserved")).unwrap();
        let (s, _) = Spool::open(&dir).unwrap();
        assert_eq!(s.next_seq(), next + 1);
    }

    #[test]
    fn hostile_segment_bytes_never_panic() {
        for seed in 0..200u32 {
            let bytes: Vec<u8> = (0..(seed % 97))
                .map(|i| (i.wrapping_mul(seed).wrapping_add(7)) as u8)
                .collect();
            let _ = scan_segment(&bytes);
        }
    }
}
