//! The outbox: encoded batches waiting for their ack. Sans-IO: the client drives it.
//!
//! Invariants: seqs are handed out from 1 upward without gaps; entries stay in seq order;
//! the bytes held never exceed the budget after a push (the oldest batches are shed, and
//! every shed batch and sample is counted); an entry leaves only when acked, nacked,
//! covered by the aggregator's resume point, or shed.

use std::collections::VecDeque;
use std::path::Path;

use crate::ship::spool::{Loc, Recovered, Spool, SpoolError};

/// One batch waiting for its ack.
#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    n_samples: usize,
    len: usize,
    /// In memory while within the memory budget (always, without a spool).
    payload: Option<Vec<u8>>,
    /// On disk, with a spool.
    loc: Option<Loc>,
}

/// A batch to write on the connection.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Its seq.
    pub seq: u64,
    /// Codec payload.
    pub payload: Vec<u8>,
}

/// What has been lost or refused so far (monotonic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Batches shed because the budget was full.
    pub shed_batches: u64,
    /// Samples in those.
    pub shed_samples: u64,
    /// Batches the aggregator refused as undecodable.
    pub nacked_batches: u64,
    /// Batches whose spooled copy could not be read back (disk damage).
    pub unreadable_batches: u64,
    /// Appends the spool refused (disk full or failing): kept in memory only.
    pub spool_write_errors: u64,
}

/// Budgets.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Payload bytes kept in memory.
    pub memory_bytes: usize,
    /// Bytes on disk (with a spool).
    pub spool_bytes: u64,
}

/// Queue of unacked batches: in memory, and on disk when a spool is configured.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    mem_bytes: usize,
    budget: Budget,
    spool: Option<Spool>,
    next_seq: u64,
    /// Highest seq written on the current connection (`0`: none yet).
    sent_through: u64,
    losses: Losses,
}

impl Outbox {
    /// An in-memory outbox holding at most `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> Self {
        Outbox {
            entries: VecDeque::new(),
            mem_bytes: 0,
            budget: Budget {
                memory_bytes: max_bytes,
                spool_bytes: 0,
            },
            spool: None,
            next_seq: 1,
            sent_through: 0,
            losses: Losses::default(),
        }
    }

    /// An outbox backed by the spool in `dir`: everything the spool held is queued again
    /// and seqs continue after every seq a previous run may have used. Returns the spool's session id
    /// (stable across restarts) and what recovery found.
    pub fn with_spool(dir: &Path, budget: Budget) -> Result<(Self, Recovered), SpoolError> {
        let (spool, recovered) = Spool::open(dir)?;
        let mut outbox = Outbox::new(budget.memory_bytes);
        outbox.budget = budget;
        for f in &recovered.found {
            outbox.entries.push_back(Entry {
                seq: f.seq,
                n_samples: f.n_samples,
                len: f.loc.len as usize,
                payload: None,
                loc: Some(f.loc),
            });
        }
        outbox.next_seq = spool.next_seq();
        outbox.spool = Some(spool);
        Ok((outbox, recovered))
    }

    /// Queues a payload and returns its seq. With a spool, the batch is on disk (fsynced)
    /// when this returns. Sheds the oldest batches if over budget; the new batch itself is
    /// always kept (the newest data is the most useful).
    pub fn push(&mut self, payload: Vec<u8>, n_samples: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let loc = match self
            .spool
            .as_mut()
            .map(|s| s.append(seq, n_samples, &payload))
        {
            Some(Ok(loc)) => Some(loc),
            Some(Err(e)) => {
                self.losses.spool_write_errors += 1;
                tracing::warn!(error = %e, seq, "spool append failed; batch kept in memory only");
                None
            }
            None => None,
        };
        self.mem_bytes += payload.len();
        self.entries.push_back(Entry {
            seq,
            n_samples,
            len: payload.len(),
            payload: Some(payload),
            loc,
        });
        self.enforce_budget();
        seq
    }

    fn enforce_budget(&mut self) {
        // Disk: drop whole oldest segments.
        let spool_budget = self.budget.spool_bytes;
        while let Some(spool) = self.spool.as_mut()
            && spool.bytes() > spool_budget
        {
            match spool.shed_oldest() {
                Ok(Some(last)) => {
                    while self
                        .entries
                        .front()
                        .is_some_and(|e| e.seq <= last && e.loc.is_some())
                    {
                        if let Some(e) = self.entries.pop_front() {
                            self.shed(e);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete a spool segment");
                    break;
                }
            }
        }
        // Memory: payloads that are on disk just leave memory; others are shed.
        let mut idx = 0;
        while self.mem_bytes > self.budget.memory_bytes && idx + 1 < self.entries.len() {
            let e = &mut self.entries[idx];
            if e.payload.is_some() && e.loc.is_some() {
                e.payload = None;
                self.mem_bytes -= e.len;
                idx += 1;
            } else if e.payload.is_some() {
                if let Some(e) = self.entries.remove(idx) {
                    self.shed(e);
                }
            } else {
                idx += 1;
            }
        }
    }

    fn shed(&mut self, e: Entry) {
        if e.payload.is_some() {
            self.mem_bytes -= e.len;
        }
        self.losses.shed_batches += 1;
        self.losses.shed_samples += e.n_samples as u64;
    }

    fn forget(&mut self, e: &Entry) {
        if e.payload.is_some() {
            self.mem_bytes -= e.len;
        }
    }

    /// The next batch to write on the connection, if the window allows one more in flight.
    pub fn next_to_send(&mut self, window: usize) -> Option<Outgoing> {
        loop {
            let in_flight = self
                .entries
                .iter()
                .take_while(|e| e.seq <= self.sent_through)
                .count();
            if in_flight >= window {
                return None;
            }
            let sent_through = self.sent_through;
            let idx = self.entries.iter().position(|e| e.seq > sent_through)?;
            let entry = &self.entries[idx];
            let payload = match (&entry.payload, entry.loc, &self.spool) {
                (Some(p), _, _) => Ok(p.clone()),
                (None, Some(loc), Some(spool)) => spool.read(loc),
                _ => Err(SpoolError::Damaged {
                    path: "memory".into(),
                    offset: 0,
                }),
            };
            match payload {
                Ok(payload) => {
                    self.sent_through = entry.seq;
                    return Some(Outgoing {
                        seq: entry.seq,
                        payload,
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, seq = entry.seq, "spooled batch unreadable; dropped");
                    if let Some(bad) = self.entries.remove(idx) {
                        self.forget(&bad);
                        self.losses.unreadable_batches += 1;
                        self.losses.shed_samples += bad.n_samples as u64;
                    }
                }
            }
        }
    }

    /// The aggregator holds `seq` durably: forget it (and anything older still here,
    /// since acks come in order).
    pub fn handle_ack(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            if let Some(e) = self.entries.pop_front() {
                self.forget(&e);
            }
        }
        if let Some(spool) = self.spool.as_mut()
            && let Err(e) = spool.release_through(seq)
        {
            tracing::warn!(error = %e, "cannot delete an acked spool segment");
        }
    }

    /// The aggregator will never accept `seq`: drop it and count it.
    pub fn handle_nack(&mut self, seq: u64) {
        if let Some(idx) = self.entries.iter().position(|e| e.seq == seq)
            && let Some(e) = self.entries.remove(idx)
        {
            self.forget(&e);
            self.losses.nacked_batches += 1;
        }
    }

    /// A new connection: the aggregator's resume point says what it already holds, and
    /// everything else is to be sent again.
    pub fn handle_connected(&mut self, durable_through: Option<u64>) {
        if let Some(seq) = durable_through {
            self.handle_ack(seq);
        }
        self.sent_through = 0;
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes held on disk.
    pub fn spool_bytes(&self) -> u64 {
        self.spool.as_ref().map(Spool::bytes).unwrap_or(0)
    }

    /// Losses so far.
    pub fn losses(&self) -> Losses {
        self.losses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(outbox: &mut Outbox, window: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(e) = outbox.next_to_send(window) {
            out.push(e.seq);
        }
        out
    }

    #[test]
    fn sends_in_order_within_the_window_and_acks_free_it() {
        let mut o = Outbox::new(1 << 20);
        for _ in 0..5 {
            o.push(vec![0; 10], 1);
        }
        assert_eq!(sent(&mut o, 3), vec![1, 2, 3]);
        o.handle_ack(2);
        assert_eq!(sent(&mut o, 3), vec![4, 5]);
        assert_eq!(o.len(), 3);
        assert_eq!(o.bytes(), 30);
    }

    #[test]
    fn reconnect_resends_everything_unacked_after_the_resume_point() {
        let mut o = Outbox::new(1 << 20);
        for _ in 0..4 {
            o.push(vec![1; 4], 2);
        }
        assert_eq!(sent(&mut o, 10), vec![1, 2, 3, 4]);
        o.handle_ack(1);
        // Connection lost; the aggregator had made 2 durable but its ack never arrived.
        o.handle_connected(Some(2));
        assert_eq!(sent(&mut o, 10), vec![3, 4]);
    }

    #[test]
    fn budget_sheds_oldest_and_counts() {
        let mut o = Outbox::new(25);
        for _ in 0..5 {
            o.push(vec![0; 10], 7);
        }
        assert_eq!(o.bytes(), 20);
        assert_eq!(o.len(), 2);
        assert_eq!((o.losses().shed_batches, o.losses().shed_samples), (3, 21));
        assert_eq!(sent(&mut o, 10), vec![4, 5]);
    }

    #[test]
    fn an_oversized_batch_is_kept_alone() {
        let mut o = Outbox::new(5);
        o.push(vec![0; 3], 1);
        o.push(vec![0; 50], 1);
        assert_eq!(o.len(), 1);
        assert_eq!(sent(&mut o, 10), vec![2]);
    }

    #[test]
    fn nack_drops_only_that_batch() {
        let mut o = Outbox::new(1 << 20);
        for _ in 0..3 {
            o.push(vec![0; 1], 1);
        }
        sent(&mut o, 10);
        o.handle_nack(2);
        o.handle_ack(3);
        assert!(o.is_empty());
        assert_eq!(o.losses().nacked_batches, 1);
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("outbox-test-{tag}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn spooled_batches_come_back_after_a_restart_with_seqs_continuing() {
        let dir = temp_dir("restart");
        let budget = Budget {
            memory_bytes: 25,
            spool_bytes: 1 << 30,
        };
        let (mut o, _) = Outbox::with_spool(&dir, budget).unwrap();
        for i in 0..5u8 {
            o.push(vec![i; 10], 3);
        }
        // Memory holds only the newest two payloads; nothing was shed.
        assert_eq!(o.bytes(), 20);
        assert_eq!(o.losses().shed_batches, 0);
        assert_eq!(sent(&mut o, 2), vec![1, 2]);
        o.handle_ack(2);
        drop(o);
        let (mut o, rec) = Outbox::with_spool(&dir, budget).unwrap();
        assert_eq!(
            rec.found.len(),
            5,
            "acked batches stay until their segment is released"
        );
        // The aggregator's resume point skips what it already holds.
        o.handle_connected(Some(2));
        let got: Vec<(u64, Vec<u8>)> = std::iter::from_fn(|| o.next_to_send(10))
            .map(|e| (e.seq, e.payload))
            .collect();
        assert_eq!(
            got,
            vec![(3, vec![2; 10]), (4, vec![3; 10]), (5, vec![4; 10])]
        );
        // New seqs continue after the previous run's reservation (seq 1 reserved through
        // 1 + SEQ_RESERVE), never reusing one it may have sent.
        let seq = o.push(vec![9; 10], 1);
        assert_eq!(seq, 1 + crate::ship::spool::SEQ_RESERVE + 1);
    }

    #[test]
    fn spool_budget_sheds_whole_oldest_segments_and_counts() {
        let dir = temp_dir("budget");
        let seg = crate::ship::spool::SEGMENT_BYTES as usize;
        let budget = Budget {
            memory_bytes: 1 << 20,
            spool_bytes: (seg * 2) as u64,
        };
        let (mut o, _) = Outbox::with_spool(&dir, budget).unwrap();
        for _ in 0..12 {
            o.push(vec![1; seg / 2], 100);
        }
        assert!(o.spool_bytes() <= budget.spool_bytes);
        assert!(o.losses().shed_batches >= 6, "{:?}", o.losses());
        assert_eq!(o.losses().shed_samples, o.losses().shed_batches * 100);
        let first = o.next_to_send(100).unwrap().seq;
        assert_eq!(
            first as usize,
            o.losses().shed_batches as usize + 1,
            "oldest shed first, no gaps after"
        );
    }
}
