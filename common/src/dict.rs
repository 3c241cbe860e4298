//! The connection-scoped series dictionary of protocol 2 (docs/wire.md, "Series
//! dictionary").
//!
//! Both ends start empty on every QUIC connection, so nothing about it is persisted: an
//! agent or aggregator restart, or any reconnect, starts over with the keys in full. The
//! agent keeps spooling self-contained (format 1) batches; its [`SenderDict`] rewrites each
//! one at send time into the connection form (format 2), which names series by ids it
//! assigns on first use and carries the key of every id whose definition is not yet
//! *acked* on this connection: a definition counts as acked once a batch that carried it
//! is acked. Pipelined batches therefore repeat a definition until one of them is acked,
//! and a batch that is refused or never answered leaves its definitions pending for the
//! next ones. The aggregator's [`ReceiverDict`] learns the definitions and turns each batch
//! back into the self-contained form before anything downstream sees it.
//!
//! Sans-IO: no sockets, no clock; the QUIC drivers feed it payloads, acks and refusals.
//! Bounded: both ends cap the number of ids and the key bytes ([`Limits`]); a sender whose
//! dictionary is full says so ([`SenderDict::is_full`]) and its connection is replaced by
//! a fresh one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use thiserror::Error;

use crate::codec::{self, CodecError};
use crate::model::{Batch, SeriesKey};

/// zstd level of the self-contained copy the aggregator writes to its WAL: the fastest,
/// since it is compressed on the ingest path and read back only on replay.
pub const WAL_ZSTD_LEVEL: i32 = 1;

/// Bounds of one connection's dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Ids are `0..max_series`.
    pub max_series: u32,
    /// Sum of [`key_cost`] over the defined ids.
    pub max_key_bytes: usize,
}

impl Limits {
    /// What the aggregator accepts per connection; beyond it the connection is closed.
    pub const RECEIVER: Limits = Limits {
        max_series: 65_536,
        max_key_bytes: 16 << 20,
    };
    /// What the agent uses per connection: half the receiver's, so the two never disagree
    /// about whether a definition fits.
    pub const SENDER: Limits = Limits {
        max_series: 32_768,
        max_key_bytes: 8 << 20,
    };
}

/// Estimated memory a dictionary entry holds: the text plus the string and vector headers.
/// Both ends count with this function.
pub fn key_cost(key: &SeriesKey) -> usize {
    const KEY_OVERHEAD: usize = 96;
    const LABEL_OVERHEAD: usize = 48;
    KEY_OVERHEAD
        + key.entity.len()
        + key.metric.len()
        + key
            .labels
            .iter()
            .map(|(k, v)| LABEL_OVERHEAD + k.len() + v.len())
            .sum::<usize>()
}

fn key_text_len(key: &SeriesKey) -> usize {
    key.entity.len()
        + key.metric.len()
        + key
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// The agent's half: ids assigned on this connection and which definitions are acked.
#[derive(Debug)]
pub struct SenderDict {
    limits: Limits,
    ids: HashMap<Arc<SeriesKey>, u32>,
    /// By id.
    keys: Vec<Arc<SeriesKey>>,
    /// By id: a batch that carried the definition was acked.
    acked: Vec<bool>,
    key_bytes: usize,
    /// Sent, not yet answered batches → the ids whose definitions they carried.
    in_flight: BTreeMap<u64, Vec<u32>>,
    full: bool,
    /// The key table of the last batch rewritten, and the ids it came to.
    last_table: Vec<u8>,
    last_ids: Vec<u32>,
}

impl Default for SenderDict {
    fn default() -> Self {
        SenderDict::new(Limits::SENDER)
    }
}

impl SenderDict {
    /// An empty dictionary, for a new connection.
    pub fn new(limits: Limits) -> Self {
        SenderDict {
            limits,
            ids: HashMap::new(),
            keys: Vec::new(),
            acked: Vec::new(),
            key_bytes: 0,
            in_flight: BTreeMap::new(),
            full: false,
            last_table: Vec::new(),
            last_ids: Vec::new(),
        }
    }

    /// The payload to send for batch `seq`, given its spooled self-contained payload: the
    /// connection form, or, when its new keys do not fit the dictionary any more, a copy
    /// of the self-contained payload (valid on any connection) and [`Self::is_full`]
    /// turns true. An error means the spooled payload itself does not decode.
    pub fn encode(&mut self, seq: u64, self_contained: &[u8]) -> Result<Vec<u8>, CodecError> {
        let raw = codec::decompress(self_contained)?;
        match self.encode_uncompressed(seq, &raw)? {
            Some(form) => Ok(codec::compress(&form, codec::ZSTD_LEVEL)),
            None => Ok(self_contained.to_vec()),
        }
    }

    /// [`Self::encode`] before compression: `Ok(None)` when the batch is to be sent
    /// self-contained.
    pub fn encode_uncompressed(
        &mut self,
        seq: u64,
        raw: &[u8],
    ) -> Result<Option<Vec<u8>>, CodecError> {
        let table = codec::self_contained_key_table(raw)?;
        let body = &raw[1 + table.len()..];
        // Unanswered from now on, even if it goes out self-contained.
        self.in_flight.entry(seq).or_default();
        // The same series as the last batch: same ids, no key to parse or hash.
        if self.last_ids.is_empty() || table != self.last_table.as_slice() {
            let Some(ids) = self.assign_ids(raw)? else {
                return Ok(None);
            };
            self.last_table.clear();
            self.last_table.extend_from_slice(table);
            self.last_ids = ids;
        }
        // Ascending, so the gaps are mostly zero; once each, should a key repeat.
        let mut defs: Vec<u32> = self
            .last_ids
            .iter()
            .copied()
            .filter(|&id| !self.acked[id as usize])
            .collect();
        defs.sort_unstable();
        defs.dedup();
        self.in_flight
            .entry(seq)
            .or_default()
            .extend_from_slice(&defs);
        let defs: Vec<(u32, &SeriesKey)> = defs
            .iter()
            .map(|&id| (id, self.keys[id as usize].as_ref()))
            .collect();
        Ok(Some(codec::join_connection_form(
            &defs,
            &self.last_ids,
            body,
        )))
    }

    /// The id of each key of a self-contained payload, in order, assigning new ones; all
    /// or nothing: `None` (and [`Self::is_full`]) when the new keys do not fit.
    fn assign_ids(&mut self, raw: &[u8]) -> Result<Option<Vec<u32>>, CodecError> {
        let parts = codec::split_self_contained(raw)?;
        let mut new_keys: HashSet<&SeriesKey> = HashSet::new();
        let mut new_bytes = 0usize;
        for key in &parts.keys {
            if !self.ids.contains_key(key) && new_keys.insert(key) {
                new_bytes += key_cost(key);
            }
        }
        if self.keys.len() + new_keys.len() > self.limits.max_series as usize
            || self.key_bytes + new_bytes > self.limits.max_key_bytes
        {
            self.full = true;
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(parts.keys.len());
        for key in parts.keys {
            let id = match self.ids.get(&key) {
                Some(&id) => id,
                None => {
                    // Fits: checked above against max_series, which is a u32.
                    let id = self.keys.len() as u32;
                    self.key_bytes += key_cost(&key);
                    let key = Arc::new(key);
                    self.ids.insert(key.clone(), id);
                    self.keys.push(key);
                    self.acked.push(false);
                    id
                }
            };
            ids.push(id);
        }
        Ok(Some(ids))
    }

    /// The aggregator acked `seq`: the definitions it carried are known there. Acks come in
    /// batch order, so a batch before `seq` still unanswered never will be: its definitions
    /// stay pending.
    pub fn on_ack(&mut self, seq: u64) {
        let later = self.in_flight.split_off(&seq);
        self.in_flight = later;
        if let Some(ids) = self.in_flight.remove(&seq) {
            for id in ids {
                if let Some(a) = self.acked.get_mut(id as usize) {
                    *a = true;
                }
            }
        }
    }

    /// The aggregator refused `seq` (or it will never be answered): its definitions stay
    /// pending.
    pub fn on_refused(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Batches sent on this connection and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.in_flight.len()
    }

    /// A batch did not fit: this connection should be replaced by a fresh one (once its
    /// batches in flight are answered) to start an empty dictionary.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Ids assigned.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No id assigned yet.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Ids whose definition is not acked yet.
    pub fn pending(&self) -> usize {
        self.acked.iter().filter(|a| !**a).count()
    }
}

/// Why a batch could not be resolved on this connection.
#[derive(Debug, Error, PartialEq)]
pub enum DictError {
    /// The payload is malformed: refuse this batch (it can never be accepted).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The batch names an id no batch on this connection has defined: the two ends
    /// disagree. The batch is fine and must not be dropped: a new connection (fresh
    /// dictionaries, every unacked batch resent with its definitions) heals it.
    #[error("series id {id} is not defined on this connection")]
    UnknownId {
        /// The id.
        id: u32,
    },
    /// An id was defined again with another key: protocol violation.
    #[error("series id {id} redefined with another key")]
    Redefined {
        /// The id.
        id: u32,
    },
    /// The dictionary would pass [`Limits::RECEIVER`]: protocol violation.
    #[error("series dictionary over its cap: {0}")]
    OverCap(String),
}

impl DictError {
    /// Whether the dictionary of this connection can no longer be trusted, so the
    /// connection must end (every variant but a malformed payload).
    pub fn ends_connection(&self) -> bool {
        !matches!(self, DictError::Codec(_))
    }
}

/// A batch resolved back to the self-contained form.
#[derive(Debug)]
pub struct Resolved {
    /// The records.
    pub batch: Batch,
    /// A self-contained payload of the same batch, when the input was the connection
    /// form (`None`: the input payload is self-contained already).
    pub self_contained: Option<Vec<u8>>,
    /// Definitions the batch carried.
    pub definitions: usize,
}

/// The aggregator's half: id → key for one connection.
///
/// Keys are kept packed: each distinct string once per connection, and a key as the
/// indices of its strings. An aggregator holds one of these per node, and the strings of
/// one node's keys repeat a lot (metric names, label names, process names): as
/// `SeriesKey`s, 1000 nodes' dictionaries were the largest part of the aggregator's heap.
#[derive(Debug)]
pub struct ReceiverDict {
    limits: Limits,
    /// Every distinct string of the defined keys, once.
    strings: Vec<Arc<str>>,
    string_ids: HashMap<Arc<str>, u32>,
    /// By id: `[entity, metric, label key, label value, ...]` as indices into `strings`;
    /// empty when undefined (a key always has two). Grows to the highest id defined
    /// (bounded by `limits.max_series`).
    table: Vec<Box<[u32]>>,
    live: usize,
    key_bytes: usize,
    /// The ids of the last batch resolved and the key table its self-contained copy got:
    /// a batch naming the same ids reuses it.
    last_ids: Vec<u32>,
    last_table: Vec<u8>,
}

impl Default for ReceiverDict {
    fn default() -> Self {
        ReceiverDict::new(Limits::RECEIVER)
    }
}

impl ReceiverDict {
    /// An empty dictionary, for a new connection.
    pub fn new(limits: Limits) -> Self {
        ReceiverDict {
            limits,
            strings: Vec::new(),
            string_ids: HashMap::new(),
            table: Vec::new(),
            live: 0,
            key_bytes: 0,
            last_ids: Vec::new(),
            last_table: Vec::new(),
        }
    }

    /// Ids defined.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Nothing defined yet.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Sum of [`key_cost`] over the defined ids.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Decodes a received payload of either form, learning its definitions. All or
    /// nothing: on error the dictionary is unchanged.
    pub fn decode(&mut self, payload: &[u8]) -> Result<Resolved, DictError> {
        let raw = codec::decompress(payload)?;
        let mut resolved = self.decode_uncompressed(&raw)?;
        resolved.self_contained = resolved
            .self_contained
            .map(|raw| codec::compress(&raw, WAL_ZSTD_LEVEL));
        Ok(resolved)
    }

    /// [`Self::decode`] before compression; `self_contained` is uncompressed too.
    pub fn decode_uncompressed(&mut self, raw: &[u8]) -> Result<Resolved, DictError> {
        if raw.first() != Some(&codec::FORMAT_CONNECTION) {
            return Ok(Resolved {
                batch: codec::decode_uncompressed(raw)?,
                self_contained: None,
                definitions: 0,
            });
        }
        let form = codec::split_connection_form(raw)?;
        let added = self.check_definitions(&form.defs)?;
        let mut text = 0usize;
        let mut keys: Vec<SeriesKey> = Vec::with_capacity(form.ids.len());
        for &id in &form.ids {
            let key = match added.get(&id) {
                Some(&idx) => form.defs[idx].1.clone(),
                None => self
                    .key(id)
                    .map(|packed| self.unpack(packed))
                    .ok_or(DictError::UnknownId { id })?,
            };
            // Keys are copied per batch: bound what a few ids naming long keys could make.
            text += key_text_len(&key);
            if text > codec::MAX_DECODED_LEN {
                return Err(CodecError::Invalid(
                    "series keys expand past the decoded-size limit".into(),
                )
                .into());
            }
            keys.push(key);
        }
        // Ids name the same keys for the connection's life, so the same ids give the
        // same key table.
        let self_contained = if !form.ids.is_empty() && form.ids == self.last_ids {
            codec::join_self_contained_table(&self.last_table, form.body)
        } else {
            let refs: Vec<&SeriesKey> = keys.iter().collect();
            let joined = codec::join_self_contained(&refs, form.body);
            self.last_table.clear();
            self.last_table
                .extend_from_slice(codec::self_contained_key_table(&joined)?);
            self.last_ids.clone_from(&form.ids);
            joined
        };
        let batch = codec::decode_body(keys, form.body)?;
        let definitions = form.defs.len();
        self.commit(form.defs, &added);
        Ok(Resolved {
            batch,
            self_contained: Some(self_contained),
            definitions,
        })
    }

    /// Learns the definitions of a batch that is not going to be stored (a duplicate of
    /// one already durable): it will be acked, and the agent then counts its definitions
    /// as known here. Returns how many it carried.
    pub fn learn(&mut self, payload: &[u8]) -> Result<usize, DictError> {
        let raw = codec::decompress(payload)?;
        if raw.first() != Some(&codec::FORMAT_CONNECTION) {
            return Ok(0);
        }
        let form = codec::split_connection_form(&raw)?;
        let added = self.check_definitions(&form.defs)?;
        let n = form.defs.len();
        self.commit(form.defs, &added);
        Ok(n)
    }

    /// Checks definitions against the table and the caps without changing anything.
    /// Returns the ids that are new, each with the index of its definition.
    fn check_definitions(
        &self,
        defs: &[(u32, SeriesKey)],
    ) -> Result<HashMap<u32, usize>, DictError> {
        let mut added: HashMap<u32, usize> = HashMap::new();
        let mut live = self.live;
        let mut bytes = self.key_bytes;
        for (idx, (id, key)) in defs.iter().enumerate() {
            if *id >= self.limits.max_series {
                return Err(DictError::OverCap(format!(
                    "id {id} is not below {}",
                    self.limits.max_series
                )));
            }
            let same = match (self.key(*id), added.get(id)) {
                (Some(packed), _) => Some(self.packed_eq(packed, key)),
                (None, Some(&i)) => Some(&defs[i].1 == key),
                (None, None) => None,
            };
            match same {
                Some(true) => {}
                Some(false) => return Err(DictError::Redefined { id: *id }),
                None => {
                    added.insert(*id, idx);
                    live += 1;
                    bytes += key_cost(key);
                    if bytes > self.limits.max_key_bytes {
                        return Err(DictError::OverCap(format!(
                            "{bytes} key bytes above {}",
                            self.limits.max_key_bytes
                        )));
                    }
                }
            }
        }
        debug_assert!(live <= self.limits.max_series as usize);
        Ok(added)
    }

    fn commit(&mut self, defs: Vec<(u32, SeriesKey)>, added: &HashMap<u32, usize>) {
        for (idx, (id, key)) in defs.into_iter().enumerate() {
            if added.get(&id) != Some(&idx) {
                continue;
            }
            let slot = id as usize;
            if self.table.len() <= slot {
                self.table.resize_with(slot + 1, Default::default);
            }
            self.key_bytes += key_cost(&key);
            self.live += 1;
            let packed = self.pack(&key);
            self.table[slot] = packed;
        }
    }

    /// The packed key of `id`, if defined.
    fn key(&self, id: u32) -> Option<&[u32]> {
        self.table
            .get(id as usize)
            .map(|k| &k[..])
            .filter(|k| !k.is_empty())
    }

    fn pack(&mut self, key: &SeriesKey) -> Box<[u32]> {
        let mut packed = Vec::with_capacity(2 + 2 * key.labels.len());
        packed.push(self.intern(&key.entity));
        packed.push(self.intern(&key.metric));
        for (k, v) in &key.labels {
            packed.push(self.intern(k));
            packed.push(self.intern(v));
        }
        packed.into_boxed_slice()
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&idx) = self.string_ids.get(s) {
            return idx;
        }
        // At most two strings per label of `max_series` keys of bounded bytes: fits a u32.
        let idx = self.strings.len() as u32;
        let s: Arc<str> = Arc::from(s);
        self.strings.push(s.clone());
        self.string_ids.insert(s, idx);
        idx
    }

    fn string(&self, idx: u32) -> &str {
        // Indices come from `pack` only.
        &self.strings[idx as usize]
    }

    fn unpack(&self, packed: &[u32]) -> SeriesKey {
        SeriesKey {
            entity: self.string(packed[0]).to_string(),
            metric: self.string(packed[1]).to_string(),
            labels: packed[2..]
                .chunks_exact(2)
                .map(|kv| {
                    (
                        self.string(kv[0]).to_string(),
                        self.string(kv[1]).to_string(),
                    )
                })
                .collect(),
        }
    }

    fn packed_eq(&self, packed: &[u32], key: &SeriesKey) -> bool {
        packed.len() == 2 + 2 * key.labels.len()
            && self.string(packed[0]) == key.entity
            && self.string(packed[1]) == key.metric
            && packed[2..]
                .chunks_exact(2)
                .zip(&key.labels)
                .all(|(kv, (k, v))| self.string(kv[0]) == k && self.string(kv[1]) == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::same_bits;
    use crate::model::{Point, SeriesPoints};
    use proptest::prelude::*;

    fn key(entity: &str, metric: &str) -> SeriesKey {
        SeriesKey::new(entity, metric).with_label("comm", "nginx")
    }

    fn batch(keys: &[SeriesKey], ts: i64) -> Batch {
        Batch {
            series: keys
                .iter()
                .enumerate()
                .map(|(i, k)| SeriesPoints {
                    key: k.clone(),
                    points: vec![
                        Point {
                            ts_ms: ts,
                            value: i as f64 * 1.5,
                        },
                        Point {
                            ts_ms: ts + 1000,
                            value: i as f64 + 0.25,
                        },
                    ],
                })
                .collect(),
            events: vec![],
        }
    }

    fn keys(n: usize, prefix: &str) -> Vec<SeriesKey> {
        (0..n)
            .map(|i| key(&format!("process/{prefix}{i}"), "cpu.usage_pct"))
            .collect()
    }

    /// Sends `b` as batch `seq` and returns the payload the aggregator gets.
    fn send(tx: &mut SenderDict, seq: u64, b: &Batch) -> Vec<u8> {
        tx.encode(seq, &codec::encode_batch(b)).expect("own batch")
    }

    fn defs_in(payload: &[u8]) -> usize {
        let raw = codec::decompress(payload).unwrap();
        codec::split_connection_form(&raw).unwrap().defs.len()
    }

    #[test]
    fn definitions_travel_until_acked() {
        let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
        let b1 = batch(&keys(10, "a"), 1000);
        let p1 = send(&mut tx, 1, &b1);
        assert_eq!(defs_in(&p1), 10);
        assert_eq!(tx.pending(), 10);
        // Pipelined: batch 2 leaves before batch 1 is acked, so it repeats them.
        let p2 = send(&mut tx, 2, &b1);
        assert_eq!(defs_in(&p2), 10);
        let r1 = rx.decode(&p1).unwrap();
        assert_eq!(r1.batch, b1);
        assert_eq!(r1.definitions, 10);
        assert_eq!(rx.decode(&p2).unwrap().batch, b1);
        tx.on_ack(1);
        tx.on_ack(2);
        assert_eq!(tx.pending(), 0);
        assert_eq!(tx.unanswered(), 0);
        // Steady state: no definitions, a new series brings only its own.
        let mut more = keys(10, "a");
        more.push(key("host", "load1"));
        let b3 = batch(&more, 3000);
        let p3 = send(&mut tx, 3, &b3);
        assert_eq!(defs_in(&p3), 1);
        let r3 = rx.decode(&p3).unwrap();
        assert_eq!(r3.batch, b3);
        // The WAL copy is self-contained and decodes alone.
        let wal = r3.self_contained.expect("connection form");
        assert_eq!(codec::decode_batch(&wal).unwrap(), b3);
        assert!(p3.len() < codec::encode_batch(&b3).len());
    }

    #[test]
    fn refused_or_unanswered_batches_leave_definitions_pending() {
        let mut tx = SenderDict::default();
        let b = batch(&keys(5, "a"), 0);
        send(&mut tx, 1, &b);
        tx.on_refused(1);
        assert_eq!(defs_in(&send(&mut tx, 2, &b)), 5);
        send(&mut tx, 3, &b);
        // Ack of 3 arrives while 2 is unanswered: 2 never will be; 3's definitions count.
        tx.on_ack(3);
        assert_eq!(tx.unanswered(), 0);
        assert_eq!(tx.pending(), 0);
        assert_eq!(defs_in(&send(&mut tx, 4, &b)), 0);
    }

    #[test]
    fn out_of_order_acks_are_conservative() {
        let mut tx = SenderDict::default();
        send(&mut tx, 1, &batch(&keys(3, "a"), 0));
        send(&mut tx, 2, &batch(&keys(3, "b"), 0));
        tx.on_ack(2);
        tx.on_ack(1); // late: 1 was given up when 2 was acked
        let both: Vec<SeriesKey> = keys(3, "a").into_iter().chain(keys(3, "b")).collect();
        assert_eq!(defs_in(&send(&mut tx, 3, &batch(&both, 0))), 3);
    }

    #[test]
    fn reconnect_starts_over() {
        let b = batch(&keys(4, "a"), 0);
        let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
        rx.decode(&send(&mut tx, 1, &b)).unwrap();
        tx.on_ack(1);
        // A new connection: both ends are new; the first batch carries everything again.
        let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
        let p = send(&mut tx, 2, &b);
        assert_eq!(defs_in(&p), 4);
        assert_eq!(rx.decode(&p).unwrap().batch, b);
    }

    #[test]
    fn unknown_id_is_typed_and_changes_nothing() {
        let b = batch(&keys(4, "a"), 0);
        let mut tx = SenderDict::default();
        let p1 = send(&mut tx, 1, &b);
        tx.on_ack(1);
        let mut more = keys(4, "a");
        more.push(key("host", "new"));
        let p2 = send(&mut tx, 2, &batch(&more, 0));
        // p2 defines id 4 but names 0..3 without defining them.
        let mut rx = ReceiverDict::default();
        assert_eq!(rx.decode(&p2).unwrap_err(), DictError::UnknownId { id: 0 });
        assert!(DictError::UnknownId { id: 0 }.ends_connection());
        assert!(
            rx.is_empty(),
            "id 4 must not be learned from a refused batch"
        );
        rx.decode(&p1).unwrap();
        assert_eq!(rx.decode(&p2).unwrap().batch, batch(&more, 0));
    }

    #[test]
    fn duplicates_teach_their_definitions() {
        let b = batch(&keys(4, "a"), 0);
        let mut tx = SenderDict::default();
        let p1 = send(&mut tx, 1, &b);
        let mut rx = ReceiverDict::default();
        assert_eq!(rx.learn(&p1).unwrap(), 4);
        tx.on_ack(1);
        assert_eq!(rx.decode(&send(&mut tx, 2, &b)).unwrap().batch, b);
        assert_eq!(rx.learn(&codec::encode_batch(&b)).unwrap(), 0);
    }

    #[test]
    fn self_contained_payloads_still_accepted() {
        let b = batch(&keys(3, "a"), 0);
        let mut rx = ReceiverDict::default();
        let r = rx.decode(&codec::encode_batch(&b)).unwrap();
        assert_eq!(r.batch, b);
        assert!(r.self_contained.is_none());
        // And a v1-only decoder refuses the connection form with a clear error.
        let p = send(&mut SenderDict::default(), 1, &b);
        let err = codec::decode_batch(&p).unwrap_err();
        assert!(err.to_string().contains("dictionary"), "{err}");
    }

    #[test]
    fn redefinition_with_another_key_is_refused() {
        let mut rx = ReceiverDict::default();
        let body = {
            let raw = codec::encode_uncompressed(&batch(&[], 0));
            codec::split_self_contained(&raw).unwrap().body.to_vec()
        };
        let (a, b) = (key("host", "a"), key("host", "b"));
        rx.decode_uncompressed(&codec::join_connection_form(&[(0, &a)], &[], &body))
            .unwrap();
        let again = codec::join_connection_form(&[(0, &a)], &[], &body);
        rx.decode_uncompressed(&again).unwrap();
        let other = codec::join_connection_form(&[(0, &b)], &[], &body);
        assert_eq!(
            rx.decode_uncompressed(&other).unwrap_err(),
            DictError::Redefined { id: 0 }
        );
        let twice = codec::join_connection_form(&[(1, &a), (1, &b)], &[], &body);
        assert_eq!(
            rx.decode_uncompressed(&twice).unwrap_err(),
            DictError::Redefined { id: 1 }
        );
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn receiver_caps_count_and_bytes() {
        let small = Limits {
            max_series: 4,
            max_key_bytes: 10_000,
        };
        let mut tx = SenderDict::new(Limits::RECEIVER);
        let p = send(&mut tx, 1, &batch(&keys(5, "a"), 0));
        let mut rx = ReceiverDict::new(small);
        let err = rx.decode(&p).unwrap_err();
        assert!(matches!(err, DictError::OverCap(_)), "{err}");
        assert!(err.ends_connection());
        let tiny = Limits {
            max_series: 100,
            max_key_bytes: 3 * key_cost(&keys(1, "a")[0]),
        };
        let mut rx = ReceiverDict::new(tiny);
        assert!(matches!(rx.decode(&p), Err(DictError::OverCap(_))));
        assert!(rx.is_empty());
    }

    #[test]
    fn full_sender_falls_back_to_self_contained() {
        let mut tx = SenderDict::new(Limits {
            max_series: 6,
            max_key_bytes: 1 << 20,
        });
        let mut rx = ReceiverDict::default();
        let b1 = batch(&keys(4, "a"), 0);
        rx.decode(&send(&mut tx, 1, &b1)).unwrap();
        assert!(!tx.is_full());
        let b2 = batch(&keys(4, "b"), 0);
        let p2 = send(&mut tx, 2, &b2);
        assert!(tx.is_full());
        assert_eq!(tx.len(), 4, "nothing assigned for a batch that did not fit");
        let r = rx.decode(&p2).unwrap();
        assert_eq!(r.batch, b2);
        assert!(r.self_contained.is_none());
        assert_eq!(tx.unanswered(), 2);
    }

    #[test]
    fn hostile_ids_refused_without_allocation() {
        let body = {
            let raw = codec::encode_uncompressed(&batch(&[], 0));
            codec::split_self_contained(&raw).unwrap().body.to_vec()
        };
        let k = key("host", "a");
        let mut rx = ReceiverDict::default();
        let far = codec::join_connection_form(&[(u32::MAX, &k)], &[], &body);
        assert!(matches!(
            rx.decode_uncompressed(&far),
            Err(DictError::OverCap(_))
        ));
        // A huge id count with no bytes behind it.
        let mut raw = vec![codec::FORMAT_CONNECTION, 0, 0];
        raw.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            rx.decode_uncompressed(&raw),
            Err(DictError::Codec(CodecError::Truncated(_)))
        ));
    }

    fn arb_batch() -> impl Strategy<Value = Batch> {
        proptest::collection::vec(
            (
                0u8..20,
                0u8..3,
                proptest::collection::vec(any::<f64>(), 0..4),
            ),
            0..20,
        )
        .prop_map(|series| {
            let mut seen = HashSet::new();
            Batch {
                series: series
                    .into_iter()
                    .filter(|(e, m, _)| seen.insert((*e, *m)))
                    .map(|(e, m, values)| SeriesPoints {
                        key: key(&format!("process/{e}"), &format!("m{m}")),
                        points: values
                            .into_iter()
                            .enumerate()
                            .map(|(i, value)| Point {
                                ts_ms: i as i64 * 1000,
                                value,
                            })
                            .collect(),
                    })
                    .collect(),
                events: vec![],
            }
        })
    }

    proptest! {
        /// Any sequence of batches with any pattern of acks and refusals resolves to the
        /// same records, as long as refused batches are not shown to the receiver.
        #[test]
        fn sequences_round_trip(batches in proptest::collection::vec((arb_batch(), 0u8..3), 1..12)) {
            let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
            for (i, (b, fate)) in batches.iter().enumerate() {
                let seq = i as u64 + 1;
                let raw = tx
                    .encode_uncompressed(seq, &codec::encode_uncompressed(b))
                    .unwrap()
                    .unwrap();
                match fate {
                    0 => {
                        let r = rx.decode_uncompressed(&raw).unwrap();
                        prop_assert!(same_bits(&r.batch, b));
                        let wal = codec::decode_uncompressed(&r.self_contained.unwrap()).unwrap();
                        prop_assert!(same_bits(&wal, b));
                        tx.on_ack(seq);
                    }
                    // Received and stored but the ack is lost with the connection: fine.
                    1 => {
                        rx.decode_uncompressed(&raw).unwrap();
                    }
                    _ => tx.on_refused(seq),
                }
            }
        }

        /// Each batch sent twice in a row (the second takes the same-series shortcut),
        /// the first acked or not: both resolve to the records, and the second carries
        /// definitions exactly when the first was not acked.
        #[test]
        fn repeated_series_sets_round_trip(batches in proptest::collection::vec((arb_batch(), any::<bool>()), 1..8)) {
            let (mut tx, mut rx) = (SenderDict::default(), ReceiverDict::default());
            let mut seq = 0;
            for (b, ack_first) in &batches {
                let mut carried = Vec::new();
                for round in 0..2 {
                    seq += 1;
                    let raw = tx
                        .encode_uncompressed(seq, &codec::encode_uncompressed(b))
                        .unwrap()
                        .unwrap();
                    let r = rx.decode_uncompressed(&raw).unwrap();
                    prop_assert!(same_bits(&r.batch, b));
                    let wal = codec::decode_uncompressed(&r.self_contained.unwrap()).unwrap();
                    prop_assert!(same_bits(&wal, b));
                    carried.push(r.definitions);
                    if round == 0 && *ack_first {
                        tx.on_ack(seq);
                    }
                }
                if *ack_first {
                    prop_assert_eq!(carried[1], 0);
                } else {
                    prop_assert_eq!(carried[1], carried[0]);
                }
            }
        }

        #[test]
        fn hostile_connection_form_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut raw = vec![codec::FORMAT_CONNECTION];
            raw.extend(bytes);
            let mut rx = ReceiverDict::default();
            let _ = rx.decode_uncompressed(&raw);
        }

        #[test]
        fn flipped_connection_form_never_panics(b in arb_batch(),
                                                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut tx = SenderDict::default();
            let mut raw = tx.encode_uncompressed(1, &codec::encode_uncompressed(&b)).unwrap().unwrap();
            for (pos, val) in flips {
                let idx = pos % raw.len();
                raw[idx] ^= val;
            }
            let mut rx = ReceiverDict::default();
            let _ = rx.decode_uncompressed(&raw);
            let _ = rx.learn(&codec::compress(&raw, 1));
        }
    }
}
