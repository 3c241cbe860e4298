//! A bounded set of series detectors, keyed by series.

use std::collections::HashMap;
use std::hash::Hash;

use super::config::DetectConfig;
use super::series::{Observation, SeriesDetector};

const NIL: u32 = u32::MAX;
/// Slots reserved at creation at most (about 54 MB of address space).
const PRESERVED_SLOTS: usize = 1 << 16;

struct Slot<K> {
    key: K,
    det: SeriesDetector,
    /// Neighbours in recency order (most recent at `head`).
    prev: u32,
    next: u32,
}

/// One [`SeriesDetector`] per key, at most `max_series` of them. A new key past the bound
/// takes the slot of the least recently updated series (O(1), an intrusive recency list),
/// and [`DetectorBank::evictions`] counts it: a re-appearing series starts a fresh warm-up.
pub struct DetectorBank<K: Hash + Eq + Clone> {
    cfg: DetectConfig,
    max_series: usize,
    index: HashMap<K, u32>,
    slots: Vec<Slot<K>>,
    head: u32,
    tail: u32,
    evictions: u64,
}

impl<K: Hash + Eq + Clone> DetectorBank<K> {
    /// An empty bank; `max_series` is at least 1.
    ///
    /// The slots and the index are reserved up front for the bound (up to
    /// `PRESERVED_SLOTS`): address space only, as pages become resident when a slot is
    /// first used, and growing by doubling would leave the outgrown copies resident in
    /// the allocator (half again the bank's size).
    pub fn new(cfg: DetectConfig, max_series: usize) -> Self {
        let max_series = max_series.clamp(1, (NIL - 1) as usize);
        let reserve = max_series.min(PRESERVED_SLOTS);
        DetectorBank {
            cfg,
            max_series,
            index: HashMap::with_capacity(reserve),
            slots: Vec::with_capacity(reserve),
            head: NIL,
            tail: NIL,
            evictions: 0,
        }
    }

    /// Scores one sample of the series `key` (creating its detector if needed).
    pub fn observe(&mut self, key: &K, ts_ms: i64, value: f64) -> Observation {
        let idx = match self.index.get(key) {
            Some(&idx) => {
                self.unlink(idx);
                idx
            }
            None if self.slots.len() < self.max_series => {
                self.slots.push(Slot {
                    key: key.clone(),
                    det: SeriesDetector::new(&self.cfg),
                    prev: NIL,
                    next: NIL,
                });
                let idx = (self.slots.len() - 1) as u32;
                self.index.insert(key.clone(), idx);
                idx
            }
            None => {
                let idx = self.tail;
                self.unlink(idx);
                let slot = &mut self.slots[idx as usize];
                self.index.remove(&slot.key);
                slot.key = key.clone();
                slot.det = SeriesDetector::new(&self.cfg);
                self.index.insert(key.clone(), idx);
                self.evictions += 1;
                idx
            }
        };
        self.push_front(idx);
        self.slots[idx as usize]
            .det
            .observe(&self.cfg, ts_ms, value)
    }

    /// Series currently tracked.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no series is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Series dropped to make room since the bank was created.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The settings every detector of the bank uses.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// The detector of `key`, if tracked.
    pub fn get(&self, key: &K) -> Option<&SeriesDetector> {
        self.index
            .get(key)
            .map(|&idx| &self.slots[idx as usize].det)
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = (self.slots[idx as usize].prev, self.slots[idx as usize].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        self.slots[idx as usize].prev = NIL;
        self.slots[idx as usize].next = NIL;
    }

    fn push_front(&mut self, idx: u32) {
        self.slots[idx as usize].next = self.head;
        match self.head {
            NIL => self.tail = idx,
            h => self.slots[h as usize].prev = idx,
        }
        self.head = idx;
    }
}
