//! The store's in-memory state: dedup marks, node registry, hot Arrow data, and the data
//! being flushed. Sans-IO: the WAL committer and replay feed it entries in WAL order, and
//! it decides (deterministically, from that order alone) what is new and what is a resend.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::store::schema::{DecodedBatch, Table};
use crate::wal::WalEntry;

/// Sessions remembered per node for dedup. An agent restart starts a new session; older
/// ones can only matter while their batches may still be resent, which is the last few.
pub const SESSIONS_PER_NODE: usize = 8;

/// Nodes remembered in the registry; past this, new nodes are still ingested but not listed.
pub const MAX_NODES: usize = 100_000;

/// Small hot batches are merged once this many pile up (keeps queries fast).
const COMPACT_AFTER: usize = 256;

/// Batches with at least this many rows are kept as they are: merging them would copy
/// megabytes under the state lock for no gain to queries, and concatenating their
/// per-batch string dictionaries duplicates every string (measured: the merge of 5 s
/// batches from 1000 nodes was the largest heap consumer of the aggregator).
const SMALL_BATCH_ROWS: usize = 1024;

/// Highest seq stored for one agent session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionMark {
    /// Agent session id.
    pub session: u64,
    /// Highest seq applied.
    pub max_seq: u64,
    /// When it last moved (aggregator ms), for eviction.
    pub last_seen_ms: i64,
}

/// What the aggregator knows of a node (the `nodes` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// Agent version at last hello.
    pub agent_version: String,
    /// Host boot id at last hello.
    pub boot_id: String,
    /// Current session.
    pub session: u64,
    /// Collectors reported at last hello.
    pub capabilities: Vec<String>,
    /// First hello, aggregator ms.
    pub first_seen_ms: i64,
    /// Last hello or batch, aggregator ms.
    pub last_seen_ms: i64,
    /// Batches stored.
    pub batches: u64,
    /// Samples stored.
    pub samples: u64,
}

/// Rows of every table, as Arrow batches.
#[derive(Clone, Debug, Default)]
pub struct TableData {
    /// Per table: large batches (as they came, or merged from small ones), then the
    /// recent small ones.
    pub batches: BTreeMap<Table, Vec<RecordBatch>>,
    /// Small batches at the end of each list since the last merge.
    recent: BTreeMap<Table, usize>,
    /// Row count over all tables.
    pub rows: usize,
    /// Arrow memory over all tables (`RecordBatch::get_array_memory_size`).
    pub bytes: usize,
}

impl TableData {
    fn push(&mut self, table: Table, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        let list = self.batches.entry(table).or_default();
        let recent = self.recent.entry(table).or_default();
        if batch.num_rows() >= SMALL_BATCH_ROWS {
            // Before the run of small ones, which stays at the end to be merged (row order
            // in memory means nothing to queries).
            list.insert(list.len() - *recent, batch);
            return;
        }
        list.push(batch);
        *recent += 1;
        if *recent >= COMPACT_AFTER {
            let tail = list.split_off(list.len() - *recent);
            let before: usize = tail.iter().map(RecordBatch::get_array_memory_size).sum();
            match concat_batches(&table.schema(), &tail) {
                Ok(merged) => {
                    self.bytes = self.bytes - before + merged.get_array_memory_size();
                    list.push(merged);
                }
                // Cannot happen with batches of one schema; keep them unmerged if it does.
                Err(_) => list.extend(tail),
            }
            *recent = 0;
        }
    }

    /// Batches of one table.
    pub fn table(&self, table: Table) -> &[RecordBatch] {
        self.batches.get(&table).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Hot data frozen at a WAL rotation, on its way to Parquet.
#[derive(Clone, Debug)]
pub struct Frozen {
    /// WAL segments up to this id hold exactly this data (plus what was flushed before).
    pub through_segment: u64,
    /// The rows.
    pub data: TableData,
    /// Dedup marks as of the freeze (what the manifest must record with these files).
    pub sessions: Vec<(String, SessionMark)>,
    /// Registry as of the freeze.
    pub nodes: Vec<NodeInfo>,
}

/// What applying a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New data, stored.
    Stored {
        /// Samples added.
        samples: usize,
    },
    /// Already stored earlier (a resend); nothing changed.
    Duplicate,
}

/// The state. One instance per aggregator, behind a mutex.
#[derive(Debug, Default)]
pub struct StoreState {
    sessions: HashMap<String, Vec<SessionMark>>,
    nodes: BTreeMap<String, NodeInfo>,
    /// Not yet frozen.
    pub hot: TableData,
    /// Frozen, not yet in Parquet (queries still read these).
    pub flushing: Vec<Frozen>,
    /// Parquet files listed by the manifest. Swapped in the same critical section that
    /// drops their [`Frozen`] set, so a query never sees rows twice or not at all.
    pub files: crate::store::files::FileList,
}

impl StoreState {
    /// Starts from what the manifest recorded.
    pub fn from_manifest(sessions: Vec<(String, SessionMark)>, nodes: Vec<NodeInfo>) -> Self {
        let mut state = StoreState::default();
        for (node, mark) in sessions {
            state.sessions.entry(node).or_default().push(mark);
        }
        for info in nodes {
            state.nodes.insert(info.node.clone(), info);
        }
        state
    }

    /// Highest seq of `(node, session)` already stored.
    pub fn durable_through(&self, node: &str, session: u64) -> Option<u64> {
        self.sessions
            .get(node)?
            .iter()
            .find(|m| m.session == session)
            .map(|m| m.max_seq)
    }

    /// Applies one WAL entry. `decoded` carries the Arrow form of a batch entry; `None`
    /// for hellos (and for batches that are known duplicates).
    pub fn apply(&mut self, entry: &WalEntry, decoded: Option<DecodedBatch>) -> Applied {
        match entry {
            WalEntry::Hello {
                node,
                agent_version,
                boot_id,
                session,
                capabilities,
                received_ms,
            } => {
                if let Some(info) = self.nodes.get_mut(node) {
                    info.agent_version = agent_version.clone();
                    info.boot_id = boot_id.clone();
                    info.session = *session;
                    info.capabilities = capabilities.clone();
                    info.last_seen_ms = *received_ms;
                } else if self.nodes.len() < MAX_NODES {
                    self.nodes.insert(
                        node.clone(),
                        NodeInfo {
                            node: node.clone(),
                            agent_version: agent_version.clone(),
                            boot_id: boot_id.clone(),
                            session: *session,
                            capabilities: capabilities.clone(),
                            first_seen_ms: *received_ms,
                            last_seen_ms: *received_ms,
                            batches: 0,
                            samples: 0,
                        },
                    );
                }
                Applied::Stored { samples: 0 }
            }
            WalEntry::Batch {
                node,
                session,
                seq,
                received_ms,
                ..
            } => {
                if self
                    .durable_through(node, *session)
                    .is_some_and(|max| *seq <= max)
                {
                    return Applied::Duplicate;
                }
                self.mark(node, *session, *seq, *received_ms);
                let Some(decoded) = decoded else {
                    return Applied::Stored { samples: 0 };
                };
                if let Some(info) = self.nodes.get_mut(node) {
                    info.batches += 1;
                    info.samples += decoded.n_samples as u64;
                    info.last_seen_ms = *received_ms;
                }
                if let Some(rb) = decoded.samples {
                    self.hot.push(Table::Samples, rb);
                }
                if let Some(rb) = decoded.events {
                    self.hot.push(Table::Events, rb);
                }
                for (table, rb) in decoded.derived {
                    self.hot.push(table, rb);
                }
                Applied::Stored {
                    samples: decoded.n_samples,
                }
            }
        }
    }

    fn mark(&mut self, node: &str, session: u64, seq: u64, now_ms: i64) {
        let marks = self.sessions.entry(node.to_string()).or_default();
        if let Some(mark) = marks.iter_mut().find(|m| m.session == session) {
            mark.max_seq = mark.max_seq.max(seq);
            mark.last_seen_ms = now_ms;
            return;
        }
        if marks.len() >= SESSIONS_PER_NODE {
            // Forget the session that has been quiet longest.
            if let Some(idx) = marks
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| m.last_seen_ms)
                .map(|(i, _)| i)
            {
                marks.swap_remove(idx);
            }
        }
        marks.push(SessionMark {
            session,
            max_seq: seq,
            last_seen_ms: now_ms,
        });
    }

    /// Moves hot data into a [`Frozen`] set covering WAL segments up to `through_segment`.
    pub fn freeze(&mut self, through_segment: u64) {
        let data = std::mem::take(&mut self.hot);
        self.flushing.push(Frozen {
            through_segment,
            data,
            sessions: self.session_marks(),
            nodes: self.nodes(),
        });
    }

    /// All dedup marks.
    pub fn session_marks(&self) -> Vec<(String, SessionMark)> {
        let mut out: Vec<_> = self
            .sessions
            .iter()
            .flat_map(|(node, marks)| marks.iter().map(move |m| (node.clone(), m.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.session.cmp(&b.1.session)));
        out
    }

    /// The registry, by node name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }

    /// Rows held in memory (hot + being flushed).
    pub fn rows_in_memory(&self) -> usize {
        self.hot.rows + self.flushing.iter().map(|f| f.data.rows).sum::<usize>()
    }

    /// Arrow bytes held in memory (hot + being flushed).
    pub fn bytes_in_memory(&self) -> usize {
        self.hot.bytes + self.flushing.iter().map(|f| f.data.bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::to_arrow;
    use common::model::{Batch, Point, SeriesKey, SeriesPoints};

    fn entry(session: u64, seq: u64) -> (WalEntry, Option<DecodedBatch>) {
        entry_with_points(session, seq, 1)
    }

    fn entry_with_points(
        session: u64,
        seq: u64,
        points: usize,
    ) -> (WalEntry, Option<DecodedBatch>) {
        let batch = Batch {
            series: vec![SeriesPoints {
                key: SeriesKey::new("host", "cpu.usage_pct"),
                points: (0..points)
                    .map(|i| Point {
                        ts_ms: seq as i64 * 1_000_000 + i as i64,
                        value: 1.0,
                    })
                    .collect(),
            }],
            events: vec![],
        };
        let decoded = to_arrow("n1", &batch).unwrap();
        let entry = WalEntry::Batch {
            node: "n1".into(),
            session,
            seq,
            received_ms: seq as i64,
            payload: vec![],
        };
        (entry, Some(decoded))
    }

    #[test]
    fn resends_are_dropped_new_seqs_kept() {
        let mut state = StoreState::default();
        for seq in [1, 2, 3, 2, 3, 4, 1] {
            let (e, d) = entry(5, seq);
            state.apply(&e, d);
        }
        assert_eq!(state.hot.rows, 4);
        assert_eq!(state.durable_through("n1", 5), Some(4));
        assert_eq!(state.durable_through("n1", 6), None);
    }

    #[test]
    fn sessions_are_independent_and_bounded() {
        let mut state = StoreState::default();
        for session in 0..(SESSIONS_PER_NODE as u64 + 3) {
            let (e, d) = entry(session, 1);
            assert_eq!(state.apply(&e, d), Applied::Stored { samples: 1 });
        }
        assert_eq!(state.session_marks().len(), SESSIONS_PER_NODE);
        // The oldest sessions were forgotten; the newest are remembered.
        assert_eq!(
            state.durable_through("n1", SESSIONS_PER_NODE as u64 + 2),
            Some(1)
        );
        assert_eq!(state.durable_through("n1", 0), None);
    }

    #[test]
    fn freeze_moves_hot_and_snapshots_marks() {
        let mut state = StoreState::default();
        let (e, d) = entry(1, 1);
        state.apply(&e, d);
        state.freeze(7);
        assert_eq!(state.hot.rows, 0);
        assert_eq!(state.flushing.len(), 1);
        assert_eq!(state.flushing[0].through_segment, 7);
        assert_eq!(state.flushing[0].sessions[0].1.max_seq, 1);
        let (e, d) = entry(1, 2);
        state.apply(&e, d);
        // The frozen snapshot does not see later batches.
        assert_eq!(state.flushing[0].sessions[0].1.max_seq, 1);
        assert_eq!(state.rows_in_memory(), 2);
    }

    #[test]
    fn many_small_batches_are_merged() {
        let mut state = StoreState::default();
        for seq in 1..=(COMPACT_AFTER as u64 * 2 + 5) {
            let (e, d) = entry(1, seq);
            state.apply(&e, d);
        }
        assert_eq!(state.hot.rows, COMPACT_AFTER * 2 + 5);
        assert_eq!(state.hot.table(Table::Samples).len(), 2 + 5);
    }

    #[test]
    fn large_batches_are_kept_and_small_ones_still_merge_around_them() {
        let mut state = StoreState::default();
        let mut seq = 0;
        for round in 0..COMPACT_AFTER {
            seq += 1;
            let (e, d) = entry(1, seq);
            state.apply(&e, d);
            if round % 64 == 0 {
                seq += 1;
                let (e, d) = entry_with_points(1, seq, SMALL_BATCH_ROWS);
                state.apply(&e, d);
            }
        }
        let batches = state.hot.table(Table::Samples);
        // Four large batches as they came, and the 256 small ones merged into one.
        assert_eq!(batches.len(), 5);
        assert!(
            batches[..4]
                .iter()
                .all(|b| b.num_rows() == SMALL_BATCH_ROWS)
        );
        assert_eq!(batches[4].num_rows(), COMPACT_AFTER);
        assert_eq!(state.hot.rows, 4 * SMALL_BATCH_ROWS + COMPACT_AFTER);
        let held: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        assert_eq!(state.hot.bytes, held);
    }
}
