//! Parquet partitions and the manifest that says which of them exist.
//!
//! Layout under the data directory:
//! `tables/<table>/date=YYYY-MM-DD/hour=HH/part-<segment>.parquet` and `manifest.json`.
//! A file counts only once the manifest lists it; the manifest is replaced atomically
//! (write temp, fsync, rename, fsync dir), so a crash leaves either the old or the new
//! one. Files the manifest does not list are leftovers of a crashed flush and are removed
//! at start (docs/DURABILITY.md).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::schema::Table;
use crate::store::state::{NodeInfo, SessionMark};
use crate::wal::sync_dir;

/// Rows per Parquet row group: big enough to compress well, small enough to prune.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// File-level failures.
#[derive(Debug, Error)]
pub enum FilesError {
    /// Disk error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Parquet/Arrow refused the data.
    #[error("parquet error on {path}: {detail}")]
    Parquet {
        /// Where.
        path: PathBuf,
        /// What.
        detail: String,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest {path} is unreadable: {detail}")]
    Manifest {
        /// Where.
        path: PathBuf,
        /// What.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One Parquet file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Table name.
    pub table: String,
    /// Path relative to the data directory.
    pub path: String,
    /// Row count.
    pub rows: u64,
    /// Smallest `ts`, ms.
    pub min_ts_ms: i64,
    /// Largest `ts`, ms.
    pub max_ts_ms: i64,
}

/// The durable truth about what is in Parquet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    pub version: u32,
    /// WAL segments up to and including this id are fully in Parquet.
    pub flushed_through_segment: u64,
    /// Every live Parquet file.
    pub files: Vec<FileEntry>,
    /// Dedup marks as of `flushed_through_segment`.
    pub sessions: Vec<(String, SessionMark)>,
    /// Node registry as of `flushed_through_segment`.
    pub nodes: Vec<NodeInfo>,
}

/// Path of the manifest.
pub fn manifest_path(data_dir: &Path) -> PathBuf {
    data_dir.join("manifest.json")
}

/// Reads the manifest; a missing one is an empty store.
pub fn load_manifest(data_dir: &Path) -> Result<Manifest, FilesError> {
    let path = manifest_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| FilesError::Manifest {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest {
            version: 1,
            ..Default::default()
        }),
        Err(e) => Err(FilesError::Io { path, source: e }),
    }
}

/// Replaces the manifest atomically and durably.
pub fn store_manifest(data_dir: &Path, manifest: &Manifest) -> Result<(), FilesError> {
    let path = manifest_path(data_dir);
    let tmp = data_dir.join("manifest.json.tmp");
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| FilesError::Manifest {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    write_durably(&tmp, &bytes)?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(data_dir).map_err(|e| FilesError::Parquet {
        path: data_dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(())
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes one table's frozen batches as Parquet files, one per hour partition, named after
/// the WAL segment they flush. Each file is fsynced and renamed into place.
pub fn write_table(
    data_dir: &Path,
    table: Table,
    batches: &[RecordBatch],
    segment: u64,
) -> Result<Vec<FileEntry>, FilesError> {
    let perr = |detail: String| FilesError::Parquet {
        path: data_dir.to_path_buf(),
        detail,
    };
    // Rows by hour, batch by batch: a batch within one hour (nearly all of them) goes to
    // its file as it is, so a flush never holds a second copy of the hot data.
    let mut by_hour: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let ts = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| perr("ts column is not a timestamp".into()))?;
        let hour = |idx: usize| ts.value(idx).div_euclid(3_600_000);
        let (lo, hi) = ts
            .values()
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        if lo.div_euclid(3_600_000) == hi.div_euclid(3_600_000) {
            by_hour.entry(hour(0)).or_default().push(batch.clone());
            continue;
        }
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for idx in 0..ts.len() {
            rows.entry(hour(idx)).or_default().push(idx as u32);
        }
        for (h, idx) in rows {
            let part = take_record_batch(batch, &UInt32Array::from(idx))
                .map_err(|e| perr(e.to_string()))?;
            by_hour.entry(h).or_default().push(part);
        }
    }

    let mut entries = Vec::new();
    for (hour, parts) in by_hour {
        let (date, hh) = hour_partition(hour);
        let rel_dir = format!("tables/{}/date={date}/hour={hh:02}", table.name());
        let dir = data_dir.join(&rel_dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let name = format!("part-{segment:020}.parquet");
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(&name);
        write_parquet(&tmp, &table.schema(), &parts)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir).map_err(|e| FilesError::Parquet {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
        let mut span = (i64::MAX, i64::MIN);
        for part in &parts {
            if let Some(a) = part
                .column(0)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
            {
                for &t in a.values().iter() {
                    span = (span.0.min(t), span.1.max(t));
                }
            }
        }
        entries.push(FileEntry {
            table: table.name().to_string(),
            path: format!("{rel_dir}/{name}"),
            rows: parts.iter().map(|p| p.num_rows() as u64).sum(),
            min_ts_ms: span.0,
            max_ts_ms: span.1,
        });
    }
    Ok(entries)
}

fn write_parquet(path: &Path, schema: &SchemaRef, parts: &[RecordBatch]) -> Result<(), FilesError> {
    let perr = |detail: String| FilesError::Parquet {
        path: path.to_path_buf(),
        detail,
    };
    let file = File::create(path).map_err(io(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| perr(e.to_string()))?,
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| perr(e.to_string()))?;
    for part in parts {
        writer.write(part).map_err(|e| perr(e.to_string()))?;
    }
    let file = writer.into_inner().map_err(|e| perr(e.to_string()))?;
    file.sync_all().map_err(io(path))
}

/// `(YYYY-MM-DD, HH)` of an hour counted from the epoch (UTC).
pub fn hour_partition(hour: i64) -> (String, i64) {
    let days = hour.div_euclid(24);
    let hh = hour.rem_euclid(24);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), hh)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Removes Parquet files under `tables/` that the manifest does not list (crash leftovers).
/// Returns how many were removed.
pub fn remove_orphans(data_dir: &Path, manifest: &Manifest) -> Result<usize, FilesError> {
    let listed: std::collections::HashSet<PathBuf> = manifest
        .files
        .iter()
        .map(|f| data_dir.join(&f.path))
        .collect();
    let mut removed = 0;
    let mut stack = vec![data_dir.join("tables")];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(FilesError::Io {
                    path: dir,
                    source: e,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                stack.push(path);
            } else if !listed.contains(&path) {
                fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Absolute paths of one table's files.
pub fn table_files(data_dir: &Path, files: &[FileEntry], table: Table) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| f.table == table.name())
        .map(|f| data_dir.join(&f.path))
        .collect()
}

/// Shared, immutable list of files (swapped whole on every flush).
pub type FileList = Arc<Vec<FileEntry>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_partitions_are_utc_calendar_dates() {
        assert_eq!(hour_partition(0), ("1970-01-01".to_string(), 0));
        // 2026-11-22T20:00Z = 1_795_377_600 s.
        assert_eq!(
            hour_partition(1_795_377_600 / 3600),
            ("2026-11-22".to_string(), 20)
        );
        assert_eq!(hour_partition(-1), ("1969-12-31".to_string(), 23));
        // Leap day.
        assert_eq!(
            hour_partition(951_782_400 / 3600),
            ("2000-02-29".to_string(), 0)
        );
    }
}
