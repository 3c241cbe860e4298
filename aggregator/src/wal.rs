//! Write-ahead log: the first place an accepted batch lands, and the reason an ack is honest.
//!
//! Data path: ingest → **wal** → store (hot Arrow) → Parquet. A batch is acked only after
//! the segment holding it has been `fsync`ed (docs/DURABILITY.md). Many connections share
//! one fsync (group commit): the [`Committer`] thread writes every request waiting in its
//! queue, syncs once, then applies them to the store in WAL order and answers them all.
//!
//! On disk: `wal/<20-digit segment id>.wal`, each a sequence of records
//! `u32 LE length | u32 LE crc32(body) | body`, body = postcard [`WalEntry`]. Segments are
//! only ever appended to by one process; a new process starts a new segment.
//!
//! Recovery ([`read_segment`]) stops at the first record that is short or fails its
//! checksum: that is the torn tail of a write that was never acked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Largest WAL record body accepted on replay (a batch frame is at most 16 MiB).
const MAX_RECORD_LEN: usize = 32 * 1024 * 1024;

/// Bytes written before the committer stops draining its queue and syncs.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// One durable thing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WalEntry {
    /// A node said hello (kept so the `nodes` table survives restarts).
    Hello {
        /// Node name (from its certificate).
        node: String,
        /// Agent version.
        agent_version: String,
        /// Host boot id.
        boot_id: String,
        /// Agent session.
        session: u64,
        /// Collector capabilities.
        capabilities: Vec<String>,
        /// Aggregator wall time, ms.
        received_ms: i64,
    },
    /// An accepted batch, exactly as it came off the wire.
    Batch {
        /// Node name.
        node: String,
        /// Agent session.
        session: u64,
        /// Seq within the session.
        seq: u64,
        /// Aggregator wall time, ms.
        received_ms: i64,
        /// Codec payload (`common::codec`).
        payload: Vec<u8>,
    },
}

/// WAL failures.
#[derive(Debug, Error)]
pub enum WalError {
    /// The disk said no (full, read-only, gone).
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The committer thread is gone (shutdown or an earlier fatal error).
    #[error("WAL committer stopped")]
    Stopped,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes one record (header + body).
pub fn encode_record(entry: &WalEntry) -> Vec<u8> {
    let body = postcard::to_allocvec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// What a segment held.
#[derive(Debug, Default)]
pub struct SegmentScan {
    /// Records up to the first bad one, in order.
    pub entries: Vec<WalEntry>,
    /// Bytes that decoded cleanly (where a torn tail would be cut).
    pub valid_len: usize,
    /// Why reading stopped early, if it did.
    pub stopped: Option<String>,
}

/// Parses a segment's bytes. Sans-IO so torn and corrupt tails are unit-tested.
pub fn read_segment(bytes: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + 8) else {
            scan.stopped = Some(format!("torn header at byte {pos}"));
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_LEN {
            scan.stopped = Some(format!("record length {len} at byte {pos} is impossible"));
            break;
        }
        let Some(body) = bytes.get(pos + 8..pos + 8 + len) else {
            scan.stopped = Some(format!("torn record at byte {pos}"));
            break;
        };
        if crc32fast::hash(body) != crc {
            scan.stopped = Some(format!("checksum mismatch at byte {pos}"));
            break;
        }
        match postcard::from_bytes::<WalEntry>(body) {
            Ok(entry) => scan.entries.push(entry),
            Err(e) => {
                scan.stopped = Some(format!("undecodable record at byte {pos}: {e}"));
                break;
            }
        }
        pos += 8 + len;
        scan.valid_len = pos;
    }
    scan
}

/// Segment file name for an id.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// Ids of the segments in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(id) = stem.parse::<u64>() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// fsync a directory so a created, renamed or removed entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What the committer does with records once they are durable, in WAL order.
pub trait Apply: Send + 'static {
    /// Extra data travelling with a record (decoded Arrow batches), handed back at apply.
    type Decoded: Send + 'static;
    /// What the requester gets back.
    type Outcome: Send + 'static;
    /// Called once per record, after its fsync, in WAL order.
    fn apply(&mut self, entry: &WalEntry, decoded: Self::Decoded) -> Self::Outcome;
    /// Called right after a segment closes, before any record of the next one is applied.
    fn on_rotate(&mut self, closed_segment: u64);
}

enum Request<D, O> {
    Append {
        record: Vec<u8>,
        entry: WalEntry,
        decoded: D,
        reply: oneshot::Sender<Result<O, WalError>>,
    },
    Rotate {
        reply: oneshot::Sender<Result<u64, WalError>>,
    },
}

/// Handle to the group-commit thread. Cheap to clone.
pub struct Committer<A: Apply> {
    tx: mpsc::Sender<Request<A::Decoded, A::Outcome>>,
}

impl<A: Apply> Clone for Committer<A> {
    fn clone(&self) -> Self {
        Committer {
            tx: self.tx.clone(),
        }
    }
}

impl<A: Apply> Committer<A> {
    /// Starts the thread writing new segment `first_segment` in `dir`. `queue` bounds how
    /// many appends may wait; senders then wait too (backpressure to the network).
    /// Returns the handle and a receiver that yields once the thread has exited.
    pub fn start(
        dir: PathBuf,
        first_segment: u64,
        applier: A,
        queue: usize,
    ) -> Result<(Self, std_mpsc::Receiver<()>), WalError> {
        let writer = SegmentWriter::create(dir, first_segment)?;
        let (tx, rx) = mpsc::channel(queue);
        let (done_tx, done_rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("wal-committer".into())
            .spawn(move || {
                run_committer(writer, applier, rx);
                let _ = done_tx.send(());
            })
            .map_err(|source| WalError::Io {
                path: PathBuf::from("wal-committer thread"),
                source,
            })?;
        Ok((Committer { tx }, done_rx))
    }

    /// Appends `entry`, waits until it is durable and applied, and returns what apply said.
    pub async fn append(
        &self,
        entry: WalEntry,
        decoded: A::Decoded,
    ) -> Result<A::Outcome, WalError> {
        self.submit(entry, decoded).await?.wait().await
    }

    /// Queues `entry` and returns once it has its place in the WAL order; the returned
    /// [`Pending`] resolves when it is durable and applied. Lets one connection pipeline
    /// many batches while keeping their order.
    pub async fn submit(
        &self,
        entry: WalEntry,
        decoded: A::Decoded,
    ) -> Result<Pending<A::Outcome>, WalError> {
        let record = encode_record(&entry);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Append {
                record,
                entry,
                decoded,
                reply,
            })
            .await
            .map_err(|_| WalError::Stopped)?;
        Ok(Pending { rx })
    }

    /// Closes the current segment and starts the next; returns the closed segment's id.
    /// Everything applied before this call lives in segments up to that id.
    pub async fn rotate(&self) -> Result<u64, WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Rotate { reply })
            .await
            .map_err(|_| WalError::Stopped)?;
        rx.await.map_err(|_| WalError::Stopped)?
    }
}

/// An append in the WAL queue.
pub struct Pending<O> {
    rx: oneshot::Receiver<Result<O, WalError>>,
}

impl<O> Pending<O> {
    /// Waits until the entry is durable and applied.
    pub async fn wait(self) -> Result<O, WalError> {
        self.rx.await.map_err(|_| WalError::Stopped)?
    }
}

struct SegmentWriter {
    dir: PathBuf,
    id: u64,
    path: PathBuf,
    file: File,
}

impl SegmentWriter {
    fn create(dir: PathBuf, id: u64) -> Result<Self, WalError> {
        let path = segment_path(&dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&dir)?;
        Ok(SegmentWriter {
            dir,
            id,
            path,
            file,
        })
    }
}

fn run_committer<A: Apply>(
    mut writer: SegmentWriter,
    mut applier: A,
    mut rx: mpsc::Receiver<Request<A::Decoded, A::Outcome>>,
) {
    type Pending<D, O> = (WalEntry, D, oneshot::Sender<Result<O, WalError>>);
    while let Some(first) = rx.blocking_recv() {
        let mut group: Vec<Pending<A::Decoded, A::Outcome>> = Vec::new();
        let mut buf = Vec::new();
        let mut rotate = None;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Append {
                    record,
                    entry,
                    decoded,
                    reply,
                } => {
                    buf.extend_from_slice(&record);
                    group.push((entry, decoded, reply));
                }
                Request::Rotate { reply } => {
                    rotate = Some(reply);
                    break;
                }
            }
            if buf.len() >= MAX_GROUP_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }

        if !group.is_empty() {
            let written = writer
                .file
                .write_all(&buf)
                .and_then(|()| writer.file.sync_data())
                .map_err(|e| e.to_string());
            match written {
                Ok(()) => {
                    for (entry, decoded, reply) in group {
                        let outcome = applier.apply(&entry, decoded);
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(msg) => {
                    tracing::error!(path = %writer.path.display(), error = %msg, "WAL write failed; batches not acked");
                    for (_, _, reply) in group {
                        let _ = reply.send(Err(WalError::Io {
                            path: writer.path.clone(),
                            source: io::Error::other(msg.clone()),
                        }));
                    }
                    // A failed write may have left a partial record: continue in a fresh
                    // segment so later records are not hidden behind a torn one.
                    if let Err(e) = rotate_segment(&mut writer, &mut applier) {
                        tracing::error!(error = %e, "cannot open a new WAL segment");
                    }
                }
            }
        }

        if let Some(reply) = rotate {
            let _ = reply.send(rotate_segment(&mut writer, &mut applier));
        }
    }
    let _ = writer.file.sync_all();
}

fn rotate_segment<A: Apply>(writer: &mut SegmentWriter, applier: &mut A) -> Result<u64, WalError> {
    writer.file.sync_all().map_err(io_err(&writer.path))?;
    let closed = writer.id;
    let next = SegmentWriter::create(writer.dir.clone(), closed + 1)?;
    *writer = next;
    applier.on_rotate(closed);
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> WalEntry {
        WalEntry::Batch {
            node: "n1".into(),
            session: 9,
            seq,
            received_ms: 5,
            payload: vec![seq as u8; 10],
        }
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        for seq in 1..=3 {
            bytes.extend(encode_record(&batch(seq)));
        }
        let scan = read_segment(&bytes);
        assert_eq!(scan.entries, vec![batch(1), batch(2), batch(3)]);
        assert_eq!(scan.valid_len, bytes.len());
        assert!(scan.stopped.is_none());
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_whole_record() {
        let mut bytes = Vec::new();
        bytes.extend(encode_record(&batch(1)));
        let whole = bytes.len();
        bytes.extend(encode_record(&batch(2)));
        for cut in whole + 1..bytes.len() {
            let scan = read_segment(&bytes[..cut]);
            assert_eq!(scan.entries, vec![batch(1)], "cut at {cut}");
            assert_eq!(scan.valid_len, whole);
            assert!(scan.stopped.is_some());
        }
    }

    #[test]
    fn flipped_bit_stops_at_the_damaged_record() {
        let mut bytes = encode_record(&batch(1));
        let second = bytes.len();
        bytes.extend(encode_record(&batch(2)));
        bytes.extend(encode_record(&batch(3)));
        bytes[second + 12] ^= 0x40;
        let scan = read_segment(&bytes);
        assert_eq!(scan.entries, vec![batch(1)]);
        assert!(scan.stopped.unwrap().contains("checksum"));
    }

    struct Count(Vec<u64>, Vec<u64>);
    impl Apply for Count {
        type Decoded = ();
        type Outcome = usize;
        fn apply(&mut self, entry: &WalEntry, _: ()) -> usize {
            if let WalEntry::Batch { seq, .. } = entry {
                self.0.push(*seq);
            }
            self.0.len()
        }
        fn on_rotate(&mut self, closed: u64) {
            self.1.push(closed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committer_writes_applies_in_order_and_rotates() {
        let dir = std::env::temp_dir().join(format!("wal-test-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let (wal, _done) = Committer::start(dir.clone(), 1, Count(vec![], vec![]), 16).unwrap();
        let mut handles = Vec::new();
        for seq in 1..=20 {
            let wal = wal.clone();
            handles.push(tokio::spawn(async move {
                wal.append(batch(seq), ()).await.unwrap()
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(wal.rotate().await.unwrap(), 1);
        wal.append(batch(21), ()).await.unwrap();
        drop(wal);
        assert_eq!(list_segments(&dir).unwrap(), vec![1, 2]);
        let first = read_segment(&fs::read(segment_path(&dir, 1)).unwrap());
        assert_eq!(first.entries.len(), 20);
        assert!(first.stopped.is_none());
        let second = read_segment(&fs::read(segment_path(&dir, 2)).unwrap());
        assert_eq!(second.entries, vec![batch(21)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
