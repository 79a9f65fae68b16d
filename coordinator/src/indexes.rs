//! The coordinator's side of vector indexes: scheduling builds on data
//! nodes, recording manifests, handing them to query nodes, and cleaning up
//! after dropped indexes, segments and tables.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use quiver_api::{
    ApiError, ApiResult, BuildState, CoordinatorApi, DataApi, IndexBuildStatus, IndexBuildTask,
    IndexInfo, StatusCode, TableInfo,
};
use quiver_meta::{MetaOp, keys, put_json_op};
use quiver_segment::{SegmentIndexMeta, SegmentMeta};
use quiver_types::{ColumnType, IndexId, SegmentId};

use crate::Coordinator;
use crate::index_builds::{BuildKey, MAX_BUILD_FAILURES, retry_delay};

impl Coordinator {
    /// Registers a data node; builds are sent to the registered nodes.
    pub fn attach_data_node(&self, node: Arc<dyn DataApi>) {
        self.data_nodes.write().push((None, node));
    }

    /// The next data node, round robin.
    pub(crate) fn data_node(&self) -> ApiResult<Arc<dyn DataApi>> {
        let nodes = self.data_nodes.read();
        if nodes.is_empty() {
            return Err(ApiError::new(
                StatusCode::Unavailable,
                "no data node is registered",
            ));
        }
        let i = self
            .next_data_node
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(nodes[i % nodes.len()].1.clone())
    }

    /// Starts the background task that runs queued builds one at a time
    /// (a build uses the data node's configured threads; running several at
    /// once would only compete with queries for the same cores).
    pub fn start_index_builds(self: &Arc<Self>) {
        let coordinator = self.clone();
        tokio::spawn(async move {
            loop {
                let key = coordinator.builds.next().await;
                let result = coordinator.run_build(key).await;
                if let Err(e) = &result {
                    tracing::error!(segment = %key.0, index = %key.1, error = %e.message, "index build failed");
                }
                let failures = coordinator
                    .builds
                    .finish(key, result.map_err(|e| e.message));
                if let Some(failures) = failures.filter(|f| *f < MAX_BUILD_FAILURES) {
                    // The segment is searched exactly meanwhile.
                    let delay = retry_delay(failures);
                    tracing::info!(segment = %key.0, index = %key.1, failures, retry_in_s = delay.as_secs(), "index build will be retried");
                    let weak = Arc::downgrade(&coordinator);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(coordinator) = weak.upgrade() {
                            coordinator.builds.enqueue(key);
                        }
                    });
                }
            }
        });
    }

    fn table_by_id(&self, id: quiver_types::TableId) -> Option<TableInfo> {
        self.catalog.list().into_iter().find(|t| t.id == id)
    }

    /// The task for a build, if its index and segment still exist.
    fn build_task(&self, (segment, index): BuildKey) -> Option<IndexBuildTask> {
        let segment = self.segments.read().get(&segment).cloned()?;
        let table = self.table_by_id(segment.table)?;
        let index = table.indexes.iter().find(|i| i.id == index)?.clone();
        let (column_index, column) = table
            .schema
            .columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == index.def.column)?;
        let ColumnType::Vector(dim) = column.ty else {
            return None;
        };
        Some(IndexBuildTask {
            index,
            column_index,
            dim: dim as usize,
            segment,
        })
    }

    async fn run_build(&self, key: BuildKey) -> ApiResult<()> {
        let Some(task) = self.build_task(key) else {
            self.builds.forget(|k| *k == key);
            return Ok(());
        };
        // A compaction replaces its input segments in the meta store at
        // once but releases them here only after a grace period (queries in
        // flight still read them): building an index for one would be
        // wasted work, so the manifest is checked first.
        let manifest_key = keys::segment(task.segment.table, task.segment.id);
        match self.meta.get(&manifest_key).await {
            Ok(None) => {
                tracing::debug!(segment = %key.0, "skipping the index build of a replaced segment");
                self.builds.forget(|k| *k == key);
                return Ok(());
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(ApiError::from_error(StatusCode::StorageFailure, &e)),
        }
        let mut manifest = self.data_node()?.build_index(task).await?;
        manifest.built_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // The index or segment may have been dropped while building.
        if self.build_task(key).is_none() {
            self.delete_index_files(&manifest).await;
            return Ok(());
        }
        self.meta
            .batch(vec![put_json_op(
                keys::segment_index(manifest.table, manifest.segment, manifest.index),
                &manifest,
            )])
            .await
            .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
        tracing::info!(segment = %manifest.segment, index = %manifest.index, rows = manifest.rows, build_ms = manifest.build_ms, "segment index built");
        self.index_ready(manifest).await
    }

    /// Records a built index and tells the segment's query node. A node
    /// that cannot be reached gets it when its segments are loaded again
    /// (on it or on the node taking them over).
    pub(crate) async fn index_ready(&self, manifest: SegmentIndexMeta) -> ApiResult<()> {
        let key = (manifest.segment, manifest.index);
        self.builds
            .mark(key, BuildState::Done, Some(manifest.build_ms));
        // Under the placement lock: a move in progress either sees this
        // manifest or has set the new owner we load it onto.
        let _changes = self.placement.lock_changes().await;
        self.segment_indexes.write().insert(key, manifest.clone());
        let Some(node) = self.segment_node(manifest.segment) else {
            return Ok(());
        };
        match node.load_index(manifest).await {
            Err(e) if e.code.is_unavailable() => {
                tracing::warn!(segment = %key.0, index = %key.1, error = %e.message, "query node unreachable; the index is loaded when the segment is placed again");
                Ok(())
            }
            other => other,
        }
    }

    fn schedule(&self, segment: &SegmentMeta, index: &IndexInfo) {
        let key = (segment.id, index.id);
        if self.segment_indexes.read().contains_key(&key) {
            return;
        }
        if segment.rows < self.min_index_rows {
            self.builds.mark(key, BuildState::Skipped, None);
        } else {
            self.builds.enqueue(key);
        }
    }

    fn table_segments(&self, table: &TableInfo) -> Vec<SegmentMeta> {
        self.segments
            .read()
            .values()
            .filter(|s| s.table == table.id)
            .cloned()
            .collect()
    }

    /// Queues builds for every sealed segment of the table.
    pub(crate) fn schedule_index(&self, table: &TableInfo, index: &IndexInfo) {
        let segments = self.table_segments(table);
        for s in &segments {
            self.schedule(s, index);
        }
    }

    pub(crate) fn schedule_segments(&self, ids: &[SegmentId]) {
        for id in ids {
            let Some(segment) = self.segments.read().get(id).cloned() else {
                continue;
            };
            if let Some(table) = self.table_by_id(segment.table) {
                for index in &table.indexes {
                    self.schedule(&segment, index);
                }
            }
        }
    }

    /// After a restart: every sealed segment lacking one of its indexes.
    pub(crate) fn schedule_missing_builds(&self) {
        for table in self.catalog.list() {
            for index in &table.indexes {
                self.schedule_index(&table, index);
            }
        }
    }

    async fn delete_index_files(&self, manifest: &SegmentIndexMeta) {
        for f in &manifest.files {
            let path = Path::from(format!("{}/{}", manifest.prefix, f.name));
            if let Err(e) = self.store.delete(&path).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(path = %path, error = %e, "could not delete index file");
            }
        }
    }

    /// Removes manifests (meta store, query nodes, files) matching `pred`.
    async fn remove_manifests(&self, pred: impl Fn(&SegmentIndexMeta) -> bool) -> ApiResult<()> {
        let removed: Vec<SegmentIndexMeta> = {
            let mut map = self.segment_indexes.write();
            let keys: Vec<_> = map
                .iter()
                .filter(|(_, m)| pred(m))
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        let ops = removed
            .iter()
            .map(|m| MetaOp::Delete {
                key: keys::segment_index(m.table, m.segment, m.index),
            })
            .collect();
        self.meta
            .batch(ops)
            .await
            .map_err(|e| ApiError::from_error(StatusCode::StorageFailure, &e))?;
        // Under the placement lock: a segment moving meanwhile would carry
        // the dropped index to its new node.
        let _changes = self.placement.lock_changes().await;
        for m in &removed {
            if let Some(node) = self.segment_node(m.segment) {
                // An unreachable node lost or will lose it anyway.
                ignore_unreachable(node.release_index(m.segment, m.index).await)?;
            }
        }
        futures::stream::iter(removed.iter())
            .for_each_concurrent(8, |m| self.delete_index_files(m))
            .await;
        Ok(())
    }

    pub(crate) async fn forget_index(&self, index: &IndexInfo) -> ApiResult<()> {
        let id: IndexId = index.id;
        self.builds.forget(|k| k.1 == id);
        self.remove_manifests(|m| m.index == id).await
    }

    pub(crate) async fn forget_segments(&self, segments: &[SegmentMeta]) -> ApiResult<()> {
        let ids: Vec<SegmentId> = segments.iter().map(|s| s.id).collect();
        {
            let mut known = self.segments.write();
            for id in &ids {
                known.remove(id);
            }
        }
        self.builds.forget(|k| ids.contains(&k.0));
        self.remove_manifests(|m| ids.contains(&m.segment)).await?;
        let _changes = self.placement.lock_changes().await;
        self.placement.forget(&ids);
        for node in self.placement.nodes() {
            let release = tokio::time::timeout(
                crate::placement::NODE_CALL_TIMEOUT,
                node.release_segments(ids.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(ApiError::new(StatusCode::Unavailable, "release timed out")));
            ignore_unreachable(release)?;
        }
        Ok(())
    }

    pub(crate) async fn forget_table(&self, table: &TableInfo) -> ApiResult<()> {
        let segments = self.table_segments(table);
        self.forget_segments(&segments).await
    }

    pub(crate) fn build_statuses(&self) -> Vec<IndexBuildStatus> {
        let tables = self.catalog.list();
        let segments = self.segments.read().clone();
        let manifests = self.segment_indexes.read().clone();
        self.builds
            .snapshot()
            .into_iter()
            .filter_map(|((segment, index), status)| {
                let seg = segments.get(&segment)?;
                let info = tables
                    .iter()
                    .find(|t| t.id == seg.table)?
                    .indexes
                    .iter()
                    .find(|i| i.id == index)?
                    .clone();
                Some(IndexBuildStatus {
                    index: info,
                    segment,
                    rows: seg.rows,
                    state: status.state,
                    duration_ms: status
                        .duration_ms
                        .or_else(|| status.started.map(|t| t.elapsed().as_millis() as u64)),
                    bytes: manifests.get(&(segment, index)).map(|m| m.bytes()),
                    error: status.error,
                })
            })
            .collect()
    }
}

fn ignore_unreachable(result: ApiResult<()>) -> ApiResult<()> {
    match result {
        Err(e) if e.code.is_unavailable() => {
            tracing::warn!(error = %e.message, "query node unreachable; release skipped");
            Ok(())
        }
        other => other,
    }
}
