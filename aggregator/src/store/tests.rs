//! Store tests without a server: ingest, flush, reopen, crash leftovers.

use std::path::PathBuf;

use common::model::{Batch, Point, SeriesKey, SeriesPoints};
use datafusion::arrow::array::{Array, Int64Array};

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("store-test-{tag}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn batch(seq: u64) -> Batch {
    Batch {
        series: (0..5)
            .map(|i| SeriesPoints {
                key: SeriesKey::new("host", format!("m{i}")),
                points: (0..3)
                    .map(|p| Point {
                        ts_ms: 1_795_000_000_000 + (seq * 3 + p) as i64 * 1000,
                        value: p as f64,
                    })
                    .collect(),
            })
            .collect(),
        events: vec![],
    }
}

async fn ingest(store: &Store, session: u64, seq: u64) -> Applied {
    let b = batch(seq);
    let decoded = schema::to_arrow("n1", &b).unwrap();
    let entry = WalEntry::Batch {
        node: "n1".into(),
        session,
        seq,
        received_ms: 0,
        payload: codec::encode_batch(&b),
    };
    store.ingest(entry, decoded).await.unwrap()
}

async fn count(store: &Store, sql: &str) -> i64 {
    let ctx = store.session_context().unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn open(dir: &std::path::Path) -> (Store, RecoveryReport) {
    Store::open(StoreConfig::new(dir.to_path_buf()), Metrics::new()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_whether_flushed_or_only_in_the_wal() {
    let dir = temp_dir("reopen");
    let (store, _) = open(&dir);
    for seq in 1..=4 {
        assert_eq!(
            ingest(&store, 1, seq).await,
            Applied::Stored { samples: 15 }
        );
    }
    assert_eq!(store.flush().await.unwrap(), 60);
    for seq in 5..=6 {
        ingest(&store, 1, seq).await;
    }
    assert_eq!(count(&store, "SELECT count(*) FROM samples").await, 90);
    drop(store);

    let (store, report) = open(&dir);
    assert_eq!(report.batches, 2, "only the unflushed batches are replayed");
    assert_eq!(count(&store, "SELECT count(*) FROM samples").await, 90);
    // Resends of flushed and of replayed batches are both recognised.
    assert_eq!(ingest(&store, 1, 2).await, Applied::Duplicate);
    assert_eq!(ingest(&store, 1, 6).await, Applied::Duplicate);
    assert_eq!(ingest(&store, 1, 7).await, Applied::Stored { samples: 15 });
    assert_eq!(store.durable_through("n1", 1), Some(7));
    assert_eq!(count(&store, "SELECT count(*) FROM samples").await, 105);
    // Queries span hot and Parquet rows in one table.
    assert_eq!(
        count(
            &store,
            "SELECT count(DISTINCT ts) FROM samples WHERE metric = 'm0'"
        )
        .await,
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_cleaned_at_start() {
    let dir = temp_dir("leftovers");
    let (store, _) = open(&dir);
    for seq in 1..=3 {
        ingest(&store, 9, seq).await;
    }
    store.flush().await.unwrap();
    drop(store);
    // A crashed flush left a Parquet file the manifest never listed.
    let orphan =
        dir.join("tables/samples/date=2026-01-01/hour=00/part-00000000000000000099.parquet");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"half-written").unwrap();
    // And a WAL segment already covered by the manifest was not deleted yet.
    let manifest = files::load_manifest(&dir).unwrap();
    let stale = wal::segment_path(&dir.join("wal"), manifest.flushed_through_segment);
    std::fs::write(
        &stale,
        wal::encode_record(&WalEntry::Batch {
            node: "n1".into(),
            session: 9,
            seq: 1,
            received_ms: 0,
            payload: codec::encode_batch(&batch(1)),
        }),
    )
    .unwrap();

    let (store, report) = open(&dir);
    assert_eq!(report.orphans_removed, 1);
    assert!(!orphan.exists());
    assert!(!stale.exists());
    assert_eq!(count(&store, "SELECT count(*) FROM samples").await, 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_loses_only_the_torn_record() {
    let dir = temp_dir("torn");
    let (store, _) = open(&dir);
    for seq in 1..=3 {
        ingest(&store, 4, seq).await;
    }
    drop(store);
    // Cut the last record in half, as a crash mid-write would.
    let wal_dir = dir.join("wal");
    let last = *wal::list_segments(&wal_dir).unwrap().last().unwrap();
    let path = wal::segment_path(&wal_dir, last);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);

    let (store, report) = open(&dir);
    assert_eq!(report.torn_tails, 1);
    assert_eq!(count(&store, "SELECT count(*) FROM samples").await, 30);
    // The torn batch was never acked; its resend is accepted.
    assert_eq!(ingest(&store, 4, 3).await, Applied::Stored { samples: 15 });
}
