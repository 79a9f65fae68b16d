//! Recovery of multi-shard statements, on the real local WAL, meta store and
//! object store.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use quiver_api::{
    ConflictPolicy, CoordinatorApi, QueryApi, StatusCode, StreamingApi, WriteRequest,
};
use quiver_coordinator::{Coordinator, CoordinatorOptions};
use quiver_meta::{EmbeddedMeta, MetaStore, keys};
use quiver_query::{IndexCacheOptions, QueryNode};
use quiver_segment::{ObjectStoreConfig, WalRecord, WalRecordKind, open_object_store};
use quiver_types::{ColumnDef, ColumnType, PkEncoder, ShardId, TableSchema, Timestamp, shard_of};
use quiver_wal::{LocalWal, LocalWalOptions, Wal};

use crate::{StreamingNode, StreamingOptions};

struct Node {
    streaming: Arc<StreamingNode>,
    query: Arc<dyn QueryApi>,
    coordinator: Arc<dyn CoordinatorApi>,
    wal: Arc<dyn Wal>,
    meta: Arc<dyn MetaStore>,
}

async fn open(dir: &std::path::Path) -> Node {
    open_ticking(dir, Duration::from_millis(10)).await
}

async fn open_ticking(dir: &std::path::Path, tick_interval: Duration) -> Node {
    open_with(dir, tick_interval, 0).await
}

async fn open_with(
    dir: &std::path::Path,
    tick_interval: Duration,
    direct_seal_rows: usize,
) -> Node {
    let meta: Arc<dyn MetaStore> = Arc::new(EmbeddedMeta::open(dir.join("meta")).unwrap());
    let store = open_object_store(&ObjectStoreConfig::Local {
        root: dir.join("objects"),
    })
    .unwrap();
    let wal: Arc<dyn Wal> = Arc::new(
        LocalWal::open(LocalWalOptions::new(dir.join("wal"), 2))
            .await
            .unwrap(),
    );
    let query: Arc<dyn QueryApi> = QueryNode::new(
        store.clone(),
        IndexCacheOptions {
            dir: dir.join("index-cache"),
            capacity_bytes: 1 << 30,
            search_threads: 1,
            vector_dir: dir.join("vector-cache"),
        },
    )
    .unwrap();
    let coordinator: Arc<dyn CoordinatorApi> = Arc::new(
        Coordinator::open(
            meta.clone(),
            store.clone(),
            CoordinatorOptions {
                shards: 2,
                min_index_rows: 1000,
            },
            vec![query.clone()],
        )
        .await
        .unwrap(),
    );
    let streaming = StreamingNode::open(
        wal.clone(),
        meta.clone(),
        store,
        coordinator.clone(),
        StreamingOptions {
            seal_rows: 1_000_000,
            tick_interval,
            compaction_interval: Duration::ZERO,
            compaction_deleted_ratio: 0.2,
            direct_seal_rows,
        },
    )
    .await
    .unwrap();
    Node {
        streaming,
        query,
        coordinator,
        wal,
        meta,
    }
}

fn rows(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef)])
        .unwrap()
}

/// Every visible id of a table: growing rows and sealed segments.
async fn visible_ids(node: &Node, table: &str) -> Vec<i64> {
    let ts = node.streaming.applied_ts().await.unwrap();
    visible_ids_at(node, table, ts).await
}

async fn visible_ids_at(node: &Node, table: &str, ts: Timestamp) -> Vec<i64> {
    visible_ids_through(node, node.streaming.as_ref(), table, ts).await
}

/// Like [`visible_ids_at`], reading the shards through `streaming`.
async fn visible_ids_through(
    node: &Node,
    streaming: &dyn StreamingApi,
    table: &str,
    ts: Timestamp,
) -> Vec<i64> {
    let info = node.coordinator.table(table).unwrap();
    let mut ids = Vec::new();
    for shard in 0..2 {
        let snap = streaming.snapshot(&info, ShardId(shard), ts).await.unwrap();
        let mut batches = snap.growing;
        for seg in snap.sealed {
            batches.extend(
                node.query
                    .scan_segment(seg.segment, ts, &seg.deletes, None)
                    .await
                    .unwrap(),
            );
        }
        for b in batches {
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            ids.extend(col.values().iter().copied());
        }
    }
    ids.sort_unstable();
    ids
}

/// Ids whose keys land in shard 0 and in shard 1.
fn ids_by_shard() -> (Vec<i64>, Vec<i64>) {
    let batch = rows(&(1..=40).collect::<Vec<_>>());
    let enc = PkEncoder::new(&batch, &[0]);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let id = (i + 1) as i64;
        if shard_of(&enc.key(i), 2) == 0 {
            a.push(id)
        } else {
            b.push(id)
        }
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_shard_statement_durable_on_one_shard_only_is_dropped_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (shard0, shard1) = ids_by_shard();
    {
        let node = open(dir.path()).await;
        let info = create(&node, "t").await;
        // An acknowledged statement touching both shards.
        node.streaming
            .write(WriteRequest {
                table: info.clone(),
                delete_keys: None,
                insert: Some(rows(&[shard0[0], shard1[0]])),
                on_conflict: ConflictPolicy::Error,
            })
            .await
            .unwrap();
        // A statement that died after its shard-0 append: only that part is
        // in the log, as if the process was killed before the shard-1 append.
        let ts = node.coordinator.allocate_timestamp().await.unwrap();
        let orphan = WalRecord {
            table: info.id,
            ts,
            kind: WalRecordKind::Mutate {
                delete_keys: None,
                insert: Some(rows(&[shard0[1]])),
            },
            participants: vec![0, 1],
            decided: false,
        };
        node.wal
            .append(0, vec![orphan.encode().unwrap()])
            .await
            .unwrap();
    }
    // Let the first node's background tasks end before reopening the WAL.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let node = open(dir.path()).await;
    let mut expected = vec![shard0[0], shard1[0]];
    expected.sort_unstable();
    assert_eq!(visible_ids(&node, "t").await, expected);
    let aborted = node
        .meta
        .scan_prefix(keys::ABORTED_STATEMENTS)
        .await
        .unwrap();
    assert_eq!(aborted.len(), 1);

    // Shard 1 alone moves on and seals past the dead statement's timestamp,
    // while shard 0's log still holds the orphan: it must stay dropped.
    {
        let ch = node.streaming.shards.get(1).unwrap();
        ch.flush(&node.streaming.ctx).await.unwrap();
    }
    let shard1_flushed: quiver_types::Timestamp =
        quiver_meta::get_json(node.meta.as_ref(), &keys::channel_flushed_ts(1))
            .await
            .unwrap()
            .unwrap();
    assert!(shard1_flushed.0 > 0);
    drop(node);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let node = open(dir.path()).await;
    assert_eq!(visible_ids(&node, "t").await, expected);
}

async fn create(node: &Node, name: &str) -> quiver_api::TableInfo {
    let schema = TableSchema::try_new(
        vec![ColumnDef {
            default: None,
            name: "id".into(),
            ty: ColumnType::BigInt,
            nullable: false,
        }],
        &["id".into()],
    )
    .unwrap();
    node.coordinator
        .create_table(name, schema, false)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_two_tables_of_one_shard_is_replayed_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (shard0, _) = ids_by_shard();
    {
        let node = open(dir.path()).await;
        let a = create(&node, "a").await;
        let b = create(&node, "b").await;
        // An acknowledged commit: one record per table, both on shard 0.
        let write = |info: &quiver_api::TableInfo, id: i64| WriteRequest {
            table: info.clone(),
            delete_keys: None,
            insert: Some(rows(&[id])),
            on_conflict: ConflictPolicy::Error,
        };
        node.streaming
            .commit(vec![write(&a, shard0[0]), write(&b, shard0[0])])
            .await
            .unwrap();
        // A commit that died after only its first record reached the log.
        let ts = node.coordinator.allocate_timestamp().await.unwrap();
        let torn = WalRecord {
            table: a.id,
            ts,
            kind: WalRecordKind::Mutate {
                delete_keys: None,
                insert: Some(rows(&[shard0[1]])),
            },
            participants: vec![0, 0],
            decided: false,
        };
        node.wal
            .append(0, vec![torn.encode().unwrap()])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let node = open(dir.path()).await;
    assert_eq!(visible_ids(&node, "a").await, vec![shard0[0]]);
    assert_eq!(visible_ids(&node, "b").await, vec![shard0[0]]);
}

/// A proxy whose catalog copy lags (the table was dropped, or dropped and
/// created again, through another proxy) is refused instead of writing rows
/// nobody will see or reading a dropped table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_replaced_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path()).await;
    let old = create(&node, "t").await;
    node.coordinator.drop_table("t", false).await.unwrap();
    let new = create(&node, "t").await;
    assert_ne!(old.id, new.id);
    let write = |info: &quiver_api::TableInfo| WriteRequest {
        table: info.clone(),
        delete_keys: None,
        insert: Some(rows(&[1])),
        on_conflict: ConflictPolicy::Error,
    };
    let err = node.streaming.write(write(&old)).await.unwrap_err();
    assert_eq!(err.code, StatusCode::UndefinedTable, "{}", err.message);
    let err = node
        .streaming
        .snapshot(&old, ShardId(0), Timestamp::MAX)
        .await
        .unwrap_err();
    assert_eq!(err.code, StatusCode::UndefinedTable, "{}", err.message);
    let written = node.streaming.write(write(&new)).await.unwrap();
    node.streaming.wait_applied(written.ts).await.unwrap();
    assert_eq!(visible_ids(&node, "t").await, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_visible_at_the_acknowledged_snapshot_while_other_shards_lag() {
    let dir = tempfile::tempdir().unwrap();
    let (shard0, _) = ids_by_shard();
    // No idle ticks during the test: shard 1 stays behind shard 0.
    let node = open_ticking(dir.path(), Duration::from_secs(3600)).await;
    let info = create(&node, "t").await;
    let written = node
        .streaming
        .write(WriteRequest {
            table: info.clone(),
            delete_keys: None,
            insert: Some(rows(&[shard0[0]])),
            on_conflict: ConflictPolicy::Error,
        })
        .await
        .unwrap();
    let applied = node.streaming.applied_ts().await.unwrap();
    assert!(applied < written.ts, "shard 1 should lag the write");
    let acknowledged = node.streaming.acknowledged_ts().await.unwrap();
    assert!(acknowledged >= written.ts);
    assert_eq!(
        visible_ids_at(&node, "t", acknowledged).await,
        vec![shard0[0]]
    );
    // The lagging shard caught up: the snapshot needs no more waiting.
    assert_eq!(node.streaming.applied_ts().await.unwrap(), acknowledged);
}

fn insert(info: &quiver_api::TableInfo, ids: &[i64]) -> WriteRequest {
    WriteRequest {
        table: info.clone(),
        delete_keys: None,
        insert: Some(rows(ids)),
        on_conflict: ConflictPolicy::Error,
    }
}

async fn segment_count(node: &Node) -> usize {
    node.meta.scan_prefix(keys::SEGMENTS).await.unwrap().len()
}

/// A bulk insert becomes sealed segments at once, visible only from its
/// timestamp on, and survives a restart even when the WAL held an older
/// insert and delete of one of its keys (recovery loads sealed segments
/// before replaying the WAL, so those must not be left behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_insert_is_sealed_directly_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (shard0, shard1) = ids_by_shard();
    let bulk: Vec<i64> = shard0[..6].iter().chain(&shard1[..6]).copied().collect();
    let mut expected = bulk.clone();
    expected.push(shard1[10]);
    expected.sort_unstable();
    {
        let node = open_with(dir.path(), Duration::from_millis(10), 10).await;
        let info = create(&node, "t").await;
        // Small writes go through the WAL: an insert and a delete of a key
        // the bulk insert then brings back, and a row that stays.
        node.streaming
            .write(insert(&info, &[shard0[0], shard1[10]]))
            .await
            .unwrap();
        node.streaming
            .write(WriteRequest {
                table: info.clone(),
                delete_keys: Some(rows(&[shard0[0]])),
                insert: None,
                on_conflict: ConflictPolicy::Error,
            })
            .await
            .unwrap();
        let before = node.streaming.acknowledged_ts().await.unwrap();
        let segments_before = segment_count(&node).await;
        let written = node.streaming.write(insert(&info, &bulk)).await.unwrap();
        assert_eq!(written.inserted_rows, (0..12).collect::<Vec<u32>>());
        // Two segments of the bulk rows, plus the two shards' flushed WAL rows.
        assert_eq!(segment_count(&node).await, segments_before + 4);
        node.streaming.wait_applied(written.ts).await.unwrap();
        assert_eq!(visible_ids_at(&node, "t", written.ts).await, expected);
        assert_eq!(visible_ids_at(&node, "t", before).await, vec![shard1[10]]);
        // The keys are indexed: a second bulk insert of one of them fails
        // whole, and writes nothing.
        let mut again: Vec<i64> = shard0[20..].to_vec();
        again.push(bulk[3]);
        let err = node
            .streaming
            .write(insert(&info, &again))
            .await
            .unwrap_err();
        assert_eq!(err.code, StatusCode::UniqueViolation, "{}", err.message);
        assert_eq!(segment_count(&node).await, segments_before + 4);
        assert_eq!(visible_ids(&node, "t").await, expected);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let node = open_with(dir.path(), Duration::from_millis(10), 10).await;
    assert_eq!(visible_ids(&node, "t").await, expected);
    // And the recovered key index still refuses duplicates.
    let info = node.coordinator.table("t").unwrap();
    let err = node
        .streaming
        .write(insert(&info, &[shard0[0]]))
        .await
        .unwrap_err();
    assert_eq!(err.code, StatusCode::UniqueViolation, "{}", err.message);
}

/// The node of `open` serving shard 0 and a second node, on the same WAL
/// and meta store, serving shard 1; and a router over both.
/// Another streaming node on the WAL and meta store of `node`, owning no
/// shard yet.
fn node_without_shards(node: &Node) -> Arc<StreamingNode> {
    let ctx = &node.streaming.ctx;
    StreamingNode::open_unowned(
        ctx.wal.clone(),
        ctx.meta.clone(),
        ctx.store.clone(),
        ctx.coordinator.clone(),
        ctx.options.clone(),
    )
}

async fn two_nodes(node: &Node) -> (Arc<StreamingNode>, Arc<crate::router::ShardRouter>) {
    let second = node_without_shards(node);
    node.streaming.release(1).await.unwrap();
    second.acquire(&[1]).await.unwrap();
    let router = crate::router::ShardRouter::new(
        vec![node.streaming.as_peer(), second.as_peer()],
        2,
        node.coordinator.clone(),
    );
    (second, router)
}

fn insert_with(
    info: &quiver_api::TableInfo,
    ids: &[i64],
    on_conflict: ConflictPolicy,
) -> WriteRequest {
    WriteRequest {
        table: info.clone(),
        delete_keys: None,
        insert: Some(rows(ids)),
        on_conflict,
    }
}

async fn visible_via(node: &Node, router: &crate::router::ShardRouter) -> Vec<i64> {
    let ts = router.acknowledged_ts().await.unwrap();
    visible_ids_through(node, router, "t", ts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_spanning_two_nodes_commits_on_both_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1) = ids_by_shard();
    let node = open(dir.path()).await;
    let info = create(&node, "t").await;
    let (second, router) = two_nodes(&node).await;
    assert_eq!(node.streaming.owned_shard_ids(), vec![0]);
    assert_eq!(second.owned_shard_ids(), vec![1]);

    let ids = [s0[0], s1[0], s0[1], s1[1]];
    let result = router.write(insert(&info, &ids)).await.unwrap();
    assert_eq!(result.inserted_rows, vec![0, 1, 2, 3]);
    let mut expected = ids.to_vec();
    expected.sort_unstable();
    assert_eq!(visible_via(&node, &router).await, expected);

    // A duplicate on one node fails the statement on both.
    let err = router
        .write(insert(&info, &[s0[2], s1[0]]))
        .await
        .unwrap_err();
    assert_eq!(err.code, StatusCode::UniqueViolation, "{}", err.message);
    assert_eq!(visible_via(&node, &router).await, expected);

    // Skipped rows are reported by their index in the statement.
    let result = router
        .write(insert_with(
            &info,
            &[s0[0], s1[2], s0[2]],
            ConflictPolicy::Skip,
        ))
        .await
        .unwrap();
    assert_eq!(result.inserted_rows, vec![1, 2]);
    let deleted = router
        .write(WriteRequest {
            table: info.clone(),
            delete_keys: Some(rows(&[s0[0], s1[0], 999_999])),
            insert: None,
            on_conflict: ConflictPolicy::Error,
        })
        .await
        .unwrap();
    assert_eq!(deleted.deleted, 2);
    let mut expected = vec![s0[1], s1[1], s1[2], s0[2]];
    expected.sort_unstable();
    assert_eq!(visible_via(&node, &router).await, expected);
    let exists = router
        .existing_keys(&info, rows(&[s1[1], s0[0], s0[1]]))
        .await
        .unwrap();
    assert_eq!(exists, vec![true, false, true]);

    // Shard 1 moves back to the first node: the router finds it there.
    second.release(1).await.unwrap();
    node.streaming.acquire(&[1]).await.unwrap();
    assert_eq!(visible_via(&node, &router).await, expected);
    router.write(insert(&info, &[s1[3]])).await.unwrap();
    node.streaming.release(1).await.unwrap();
    second.acquire(&[1]).await.unwrap();
    router.truncate(&info).await.unwrap();
    assert_eq!(visible_via(&node, &router).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_applies_a_spanning_commit_only_when_its_outcome_says_commit() {
    use quiver_api::{PreparedChange, ShardOwnerApi};
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1) = ids_by_shard();
    let node = open(dir.path()).await;
    let info = create(&node, "t").await;
    let (second, _router) = two_nodes(&node).await;
    let first = node.streaming.clone();
    let fresh = || node_without_shards(&node);
    let logged_on_both = |txn: u64, a: i64, b: i64, other: Arc<StreamingNode>| {
        let (first, info, coordinator) = (first.clone(), info.clone(), node.coordinator.clone());
        async move {
            first
                .prepare(
                    txn,
                    vec![0],
                    PreparedChange::Writes(vec![insert(&info, &[a])]),
                )
                .await
                .unwrap();
            other
                .prepare(
                    txn,
                    vec![1],
                    PreparedChange::Writes(vec![insert(&info, &[b])]),
                )
                .await
                .unwrap();
            let ts = coordinator.allocate_timestamp().await.unwrap();
            first.log_prepared(txn, ts, vec![0, 1]).await.unwrap();
            other.log_prepared(txn, ts, vec![0, 1]).await.unwrap();
        }
    };
    let shard_ids = |node: Arc<StreamingNode>, shard: u32| {
        let (info, coordinator) = (info.clone(), node.ctx.coordinator.clone());
        async move {
            let ts = coordinator.allocate_timestamp().await.unwrap();
            let mut ids = Vec::new();
            for b in node
                .snapshot(&info, ShardId(shard), ts)
                .await
                .unwrap()
                .growing
            {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.extend(col.values().iter().copied());
            }
            ids
        }
    };

    // Logged on both nodes, finished (committed) on the first only; then
    // the second dies and a third takes shard 1 over from the WAL.
    logged_on_both(1, s0[0], s1[0], second.clone()).await;
    assert!(first.finish_prepared(1, true).await.unwrap());
    let third = fresh();
    third.acquire(&[1]).await.unwrap();
    assert_eq!(
        shard_ids(third.clone(), 1).await,
        vec![s1[0]],
        "the committed part"
    );

    // Logged on both, finished nowhere (the proxy died); the owner of
    // shard 1 dies too. Recovery decides: abort. The first node, told to
    // commit it now, learns that and drops its part.
    logged_on_both(2, s0[1], s1[1], third.clone()).await;
    let fourth = fresh();
    fourth.acquire(&[1]).await.unwrap();
    assert_eq!(shard_ids(fourth.clone(), 1).await, vec![s1[0]]);
    assert!(!first.finish_prepared(2, true).await.unwrap());
    let shard0 = shard_ids(first.clone(), 0).await;
    assert_eq!(shard0, vec![s0[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_statements_spanning_two_nodes_do_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1) = ids_by_shard();
    let node = open(dir.path()).await;
    let info = create(&node, "t").await;
    let (_second, router) = two_nodes(&node).await;
    // Each writer's statements span both nodes; were the nodes prepared
    // concurrently, two writers could each lock one node and wait for the
    // other until the participants give up (20 s).
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (router, info) = (router.clone(), info.clone());
            let (s0, s1) = (s0.clone(), s1.clone());
            tokio::spawn(async move {
                for i in 0..3 {
                    router
                        .write(insert_with(
                            &info,
                            &[s0[(w * 3 + i) % s0.len()], s1[(w * 3 + i) % s1.len()]],
                            ConflictPolicy::Replace,
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let all = futures::future::join_all(writers);
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("writers deadlocked")
        .into_iter()
        .for_each(|r| r.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_node_decides_its_multi_shard_statements_by_outcome_key() {
    // Shards of a shared node may be recovered one at a time by different
    // nodes, so a statement over several of them cannot be judged by which
    // parts are durable: it is committed by its outcome key.
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1) = ids_by_shard();
    let node = open(dir.path()).await;
    let info = create(&node, "t").await;
    node.streaming.release(0).await.unwrap();
    node.streaming.release(1).await.unwrap();
    let shared = node_without_shards(&node);
    shared.acquire(&[0, 1]).await.unwrap();
    let result = shared.write(insert(&info, &[s0[0], s1[0]])).await.unwrap();
    let outcome = node
        .meta
        .get(&keys::outcome(result.ts))
        .await
        .unwrap()
        .expect("an outcome key");
    assert_eq!(outcome, b"commit 0,1");
    // A single-shard statement needs none.
    let single = shared.write(insert(&info, &[s0[1]])).await.unwrap();
    assert!(
        node.meta
            .get(&keys::outcome(single.ts))
            .await
            .unwrap()
            .is_none()
    );
    // The key goes once both shards sealed past the statement.
    let collect = || crate::prepared::collect_outcomes(node.meta.as_ref());
    assert_eq!(collect().await.unwrap(), 0);
    shared.flush_all().await.unwrap();
    assert_eq!(collect().await.unwrap(), 1);
    assert!(
        node.meta
            .get(&keys::outcome(result.ts))
            .await
            .unwrap()
            .is_none()
    );
    // Another node taking shard 1 over replays the committed part.
    shared.release(1).await.unwrap();
    let ts = node.coordinator.allocate_timestamp().await.unwrap();
    node.streaming.acquire(&[1]).await.unwrap();
    let snap = node
        .streaming
        .snapshot(&info, ShardId(1), ts)
        .await
        .unwrap();
    let rows: usize = snap.growing.iter().map(|b| b.num_rows()).sum::<usize>() + snap.sealed.len();
    assert!(rows >= 1, "the committed part of shard 1 is there");
}
