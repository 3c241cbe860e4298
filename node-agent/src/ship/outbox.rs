//! The outbox: encoded batches waiting for their ack. Sans-IO: the client drives it.
//!
//! Invariants: seqs are handed out from 1 upward without gaps; entries stay in seq order;
//! the bytes held never exceed the budget after a push (the oldest batches are shed, and
//! every shed batch and sample is counted); an entry leaves only when acked, nacked,
//! covered by the aggregator's resume point, or shed.

use std::collections::VecDeque;

/// One encoded batch.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Position in the session.
    pub seq: u64,
    /// Codec payload.
    pub payload: Vec<u8>,
    /// Samples inside (for loss accounting).
    pub n_samples: usize,
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
}

/// Bounded queue of unacked batches.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    next_seq: u64,
    /// Highest seq written on the current connection (`0`: none yet).
    sent_through: u64,
    losses: Losses,
}

impl Outbox {
    /// An empty outbox holding at most `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> Self {
        Outbox { entries: VecDeque::new(), bytes: 0, max_bytes, next_seq: 1, sent_through: 0, losses: Losses::default() }
    }

    /// Queues a payload and returns its seq. Sheds the oldest batches if over budget; the
    /// new batch itself is always kept (the newest data is the most useful).
    pub fn push(&mut self, payload: Vec<u8>, n_samples: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += payload.len();
        self.entries.push_back(Entry { seq, payload, n_samples });
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.payload.len();
                self.losses.shed_batches += 1;
                self.losses.shed_samples += old.n_samples as u64;
            }
        }
        seq
    }

    /// The next batch to write on the connection, if the window allows one more in flight.
    pub fn next_to_send(&mut self, window: usize) -> Option<&Entry> {
        let in_flight = self.entries.iter().take_while(|e| e.seq <= self.sent_through).count();
        if in_flight >= window {
            return None;
        }
        let sent_through = self.sent_through;
        let entry = self.entries.iter().find(|e| e.seq > sent_through)?;
        self.sent_through = entry.seq;
        Some(entry)
    }

    /// The aggregator holds `seq` durably: forget it (and anything older still here,
    /// since acks come in order).
    pub fn handle_ack(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.payload.len();
            }
        }
    }

    /// The aggregator will never accept `seq`: drop it and count it.
    pub fn handle_nack(&mut self, seq: u64) {
        if let Some(idx) = self.entries.iter().position(|e| e.seq == seq)
            && let Some(e) = self.entries.remove(idx)
        {
            self.bytes -= e.payload.len();
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

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        assert_eq!(o.losses(), Losses { shed_batches: 3, shed_samples: 21, nacked_batches: 0 });
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
}
