//! The store: WAL-backed, hot in Arrow, cold in Parquet, read through DataFusion.
//!
//! Data path: ingest hands [`Store::ingest`] a validated batch → the WAL committer makes it
//! durable → [`state::StoreState`] applies it in WAL order (dedup by `(node, session,
//! seq)`) into hot Arrow batches → [`Store::flush`] freezes hot data at a WAL rotation,
//! writes it as Parquet, records the files in the manifest and drops the covered WAL
//! segments. Queries see hot + frozen + Parquet through one DataFusion table per kind.
//!
//! Durability promises and the order of every fsync are in docs/DURABILITY.md.

pub mod files;
pub mod schema;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::codec;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, ViewTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use thiserror::Error;

use crate::metrics::Metrics;
use crate::wal::{self, Apply, Committer, WalEntry, WalError};
use files::{FilesError, Manifest};
use schema::{DecodedBatch, Table};
use state::{Applied, StoreState};

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Root of everything on disk.
    pub data_dir: PathBuf,
    /// Hot data is flushed to Parquet at least this often.
    pub flush_interval: Duration,
    /// ...or as soon as this many rows are held in memory,
    pub max_hot_rows: usize,
    /// ...or this many bytes of Arrow data (hot plus being flushed).
    pub max_hot_bytes: usize,
    /// Appends that may wait for the WAL before senders wait too.
    pub wal_queue: usize,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        StoreConfig {
            data_dir,
            flush_interval: Duration::from_secs(60),
            max_hot_rows: 4_000_000,
            max_hot_bytes: 256 * 1024 * 1024,
            wal_queue: 1024,
        }
    }
}

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// WAL trouble.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Parquet / manifest trouble.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// Directory setup.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A background task died.
    #[error("background task failed: {0}")]
    Task(String),
}

/// What recovery found at start.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// WAL segments replayed.
    pub segments: usize,
    /// Batches re-applied (duplicates excluded).
    pub batches: usize,
    /// Samples re-applied.
    pub samples: usize,
    /// Torn or corrupt segment tails seen (never acked data).
    pub torn_tails: usize,
    /// Parquet leftovers of a crashed flush, removed.
    pub orphans_removed: usize,
}

/// Applies committed WAL entries to the shared state (runs on the committer thread).
struct Applier {
    state: Arc<Mutex<StoreState>>,
}

impl Apply for Applier {
    type Decoded = Option<DecodedBatch>;
    type Outcome = Applied;

    fn apply(&mut self, entry: &WalEntry, decoded: Option<DecodedBatch>) -> Applied {
        lock(&self.state).apply(entry, decoded)
    }

    fn on_rotate(&mut self, closed_segment: u64) {
        lock(&self.state).freeze(closed_segment);
    }
}

/// A poisoned lock means a panic mid-update elsewhere; the state is still the best we
/// have, and refusing every later request would lose more.
fn lock(state: &Mutex<StoreState>) -> MutexGuard<'_, StoreState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: StoreConfig,
    state: Arc<Mutex<StoreState>>,
    committer: Committer<Applier>,
    manifest: tokio::sync::Mutex<Manifest>,
    metrics: Metrics,
    flush_wanted: tokio::sync::Notify,
    /// Signalled after every flush attempt, for ingest waiting for memory.
    flushed: tokio::sync::Notify,
}

impl Store {
    /// Opens (or creates) the store in `cfg.data_dir`, replaying the WAL.
    pub fn open(cfg: StoreConfig, metrics: Metrics) -> Result<(Store, RecoveryReport), StoreError> {
        let wal_dir = cfg.data_dir.join("wal");
        for dir in [&cfg.data_dir, &wal_dir, &cfg.data_dir.join("tables")] {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let manifest = files::load_manifest(&cfg.data_dir)?;
        let mut report = RecoveryReport {
            orphans_removed: files::remove_orphans(&cfg.data_dir, &manifest)?,
            ..Default::default()
        };
        let mut state =
            StoreState::from_manifest(manifest.sessions.clone(), manifest.nodes.clone());
        state.files = Arc::new(manifest.files.clone());

        let segments = wal::list_segments(&wal_dir)?;
        for &id in &segments {
            let path = wal::segment_path(&wal_dir, id);
            if id <= manifest.flushed_through_segment {
                // Already in Parquet: a crash came between the manifest and this delete.
                std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            let scan = wal::read_segment(&bytes);
            if let Some(why) = &scan.stopped {
                report.torn_tails += 1;
                tracing::warn!(segment = id, reason = %why, valid_bytes = scan.valid_len, "WAL segment ends early; later bytes were never acked");
            }
            report.segments += 1;
            for entry in scan.entries {
                let decoded = decode_entry(&entry);
                if let Applied::Stored { samples } = state.apply(&entry, decoded)
                    && matches!(entry, WalEntry::Batch { .. })
                {
                    report.batches += 1;
                    report.samples += samples;
                }
            }
        }
        let next_segment = segments
            .last()
            .copied()
            .unwrap_or(0)
            .max(manifest.flushed_through_segment)
            + 1;
        let state = Arc::new(Mutex::new(state));
        let (committer, _done) = Committer::start(
            wal_dir,
            next_segment,
            Applier {
                state: state.clone(),
            },
            cfg.wal_queue,
        )?;
        metrics.hot_rows.set(lock(&state).rows_in_memory() as i64);
        let store = Store {
            inner: Arc::new(Inner {
                cfg,
                state,
                committer,
                manifest: tokio::sync::Mutex::new(manifest),
                metrics,
                flush_wanted: tokio::sync::Notify::new(),
                flushed: tokio::sync::Notify::new(),
            }),
        };
        Ok((store, report))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// Highest seq of `(node, session)` already durable.
    pub fn durable_through(&self, node: &str, session: u64) -> Option<u64> {
        lock(&self.inner.state).durable_through(node, session)
    }

    /// Makes a hello durable (for the `nodes` table).
    pub async fn record_hello(&self, entry: WalEntry) -> Result<(), StoreError> {
        self.inner.committer.append(entry, None).await?;
        Ok(())
    }

    /// Makes a batch durable and visible. Returns once it is both: the caller may ack.
    pub async fn ingest(
        &self,
        entry: WalEntry,
        decoded: DecodedBatch,
    ) -> Result<Applied, StoreError> {
        self.submit(entry, decoded).await?.wait().await
    }

    /// Queues a batch in WAL order; the result resolves once it is durable and visible.
    pub async fn submit(
        &self,
        entry: WalEntry,
        decoded: DecodedBatch,
    ) -> Result<IngestPending, StoreError> {
        let pending = self.inner.committer.submit(entry, Some(decoded)).await?;
        Ok(IngestPending {
            pending,
            store: self.clone(),
        })
    }
}

/// A batch on its way into the store.
pub struct IngestPending {
    pending: wal::Pending<Applied>,
    store: Store,
}

impl IngestPending {
    /// Waits until the batch is durable and visible.
    pub async fn wait(self) -> Result<Applied, StoreError> {
        let applied = self.pending.wait().await?;
        self.store.after_apply();
        Ok(applied)
    }
}

impl Store {
    fn after_apply(&self) {
        let (rows, bytes) = {
            let st = lock(&self.inner.state);
            (st.rows_in_memory(), st.bytes_in_memory())
        };
        self.inner.metrics.hot_rows.set(rows as i64);
        if rows >= self.inner.cfg.max_hot_rows || bytes >= self.inner.cfg.max_hot_bytes {
            self.inner.flush_wanted.notify_one();
        }
    }

    /// Returns once the Arrow data in memory (hot plus being flushed) is under 1.5× its
    /// bound, asking for a flush meanwhile. Ingest calls this before submitting a batch,
    /// so a flusher slower than the nodes slows their acks instead of growing memory.
    pub async fn wait_for_room(&self) {
        let limit = self
            .inner
            .cfg
            .max_hot_bytes
            .saturating_add(self.inner.cfg.max_hot_bytes / 2);
        loop {
            let flushed = self.inner.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if lock(&self.inner.state).bytes_in_memory() < limit {
                return;
            }
            self.inner.flush_wanted.notify_one();
            flushed.await;
        }
    }

    /// Writes everything in memory to Parquet and drops the WAL segments it covered.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let mut manifest = self.inner.manifest.lock().await;
        let nothing_new = {
            let st = lock(&self.inner.state);
            st.hot.rows == 0 && st.flushing.is_empty()
        };
        if nothing_new {
            return Ok(0);
        }
        self.inner.committer.rotate().await?;
        let frozen_sets = lock(&self.inner.state).flushing.clone();
        let mut rows = 0;
        for frozen in frozen_sets {
            let data_dir = self.inner.cfg.data_dir.clone();
            let data = frozen.data.clone();
            let segment = frozen.through_segment;
            let new_files = tokio::task::spawn_blocking(
                move || -> Result<Vec<files::FileEntry>, FilesError> {
                    let mut out = Vec::new();
                    for table in Table::ALL {
                        out.extend(files::write_table(
                            &data_dir,
                            table,
                            data.table(table),
                            segment,
                        )?);
                    }
                    Ok(out)
                },
            )
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;

            let mut next = manifest.clone();
            next.version = 1;
            next.files.extend(new_files);
            next.flushed_through_segment = segment;
            next.sessions = frozen.sessions.clone();
            next.nodes = frozen.nodes.clone();
            let data_dir = self.inner.cfg.data_dir.clone();
            let to_store = next.clone();
            tokio::task::spawn_blocking(move || files::store_manifest(&data_dir, &to_store))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;

            {
                let mut st = lock(&self.inner.state);
                st.flushing.retain(|f| f.through_segment != segment);
                st.files = Arc::new(next.files.clone());
            }
            *manifest = next;
            rows += frozen.data.rows;
            self.inner.metrics.flushes.inc();
            self.inner
                .metrics
                .flushed_rows
                .inc_by(frozen.data.rows as u64);

            let wal_dir = self.inner.cfg.data_dir.join("wal");
            for id in wal::list_segments(&wal_dir)?
                .into_iter()
                .filter(|&id| id <= segment)
            {
                let path = wal::segment_path(&wal_dir, id);
                std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
            }
        }
        self.inner
            .metrics
            .hot_rows
            .set(lock(&self.inner.state).rows_in_memory() as i64);
        self.inner
            .metrics
            .parquet_files
            .set(manifest.files.len() as i64);
        Ok(rows)
    }

    /// Flushes every `flush_interval`, or early when hot data passes its bound; returns
    /// when `shutdown` fires (after one last flush).
    pub async fn run_flusher(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.cfg.flush_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.flush_wanted.notified() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(e) = self.flush().await {
                self.inner.metrics.flush_errors.inc();
                tracing::error!(error = %e, "flush to Parquet failed; data stays in memory and in the WAL, will retry");
            }
            self.inner.flushed.notify_waiters();
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final flush failed; the WAL still holds the data");
        }
    }

    /// A DataFusion context with every table registered over current data.
    pub fn session_context(&self) -> Result<SessionContext, DataFusionError> {
        let (hot, files, nodes) = {
            let st = lock(&self.inner.state);
            let mut hot: Vec<(Table, Vec<_>)> = Vec::new();
            for table in Table::ALL {
                let mut batches: Vec<_> = st.hot.table(table).to_vec();
                for f in &st.flushing {
                    batches.extend(f.data.table(table).iter().cloned());
                }
                hot.push((table, batches));
            }
            (hot, st.files.clone(), st.nodes())
        };
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2);
        let ctx = SessionContext::new_with_config(config);
        for (table, batches) in hot {
            let provider = self.table_provider(table, batches, &files)?;
            ctx.register_table(table.name(), provider)?;
        }
        let nodes = schema::nodes_batch(&nodes)?;
        ctx.register_table(
            "nodes",
            Arc::new(MemTable::try_new(
                schema::nodes_schema(),
                vec![vec![nodes]],
            )?),
        )?;
        Ok(ctx)
    }

    fn table_provider(
        &self,
        table: Table,
        batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
        files: &[files::FileEntry],
    ) -> Result<Arc<dyn TableProvider>, DataFusionError> {
        let schema = table.schema();
        // Two partitions so both cores scan hot data.
        let mut parts = vec![Vec::new(), Vec::new()];
        for (idx, b) in batches.into_iter().enumerate() {
            parts[idx % 2].push(b);
        }
        let hot: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema.clone(), parts)?);
        let paths = files::table_files(&self.inner.cfg.data_dir, files, table);
        if paths.is_empty() {
            return Ok(hot);
        }
        let urls = paths
            .iter()
            .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        let cold: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config)?);
        let plan = LogicalPlanBuilder::scan(
            format!("{}_hot", table.name()),
            provider_as_source(hot),
            None,
        )?
        .union(
            LogicalPlanBuilder::scan(
                format!("{}_parquet", table.name()),
                provider_as_source(cold),
                None,
            )?
            .build()?,
        )?
        .build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

/// Decodes a WAL batch entry's payload into Arrow (replay path). Entries were validated
/// before they were written, so a failure here means bit rot past the checksum: skip it.
fn decode_entry(entry: &WalEntry) -> Option<DecodedBatch> {
    let WalEntry::Batch {
        node, payload, seq, ..
    } = entry
    else {
        return None;
    };
    match codec::decode_batch(payload)
        .map_err(|e| e.to_string())
        .and_then(|b| schema::to_arrow(node, &b).map_err(|e| e.to_string()))
    {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            tracing::error!(node = %node, seq, error = %e, "WAL batch no longer decodes; skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests;
