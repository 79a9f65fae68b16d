//! The coordinator: the one component with a global view.
//!
//! It owns the catalog (tables and their schemas, persisted in the meta
//! store), the timestamp oracle ([`tso::Tso`]), id allocation for segments,
//! the assignment of sealed segments to query nodes, and vector-index
//! builds: it schedules one build per (sealed segment, index) on a data
//! node, records the resulting manifests and hands them to query nodes. It
//! implements [`quiver_api::CoordinatorApi`]; standalone mode calls it
//! in-process.

mod catalog;
mod index_builds;
mod indexes;
mod placement;
mod roles;
mod sequences;
mod tso;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::ObjectStore;
use parking_lot::{Mutex, RwLock};
use quiver_api::{
    ApiError, ApiResult, BuildState, CompactionOutput, CompactionTask, CoordinatorApi, DataApi,
    IndexBuildStatus, IndexDef, IndexInfo, QueryApi, RoleInfo, StatusCode, TableInfo,
};
use quiver_meta::{MetaError, MetaStore, keys};
use quiver_segment::{SegmentIndexMeta, SegmentMeta};
use quiver_types::{IndexId, SegmentId, TableId, TableSchema, Timestamp};

pub use catalog::Catalog;
pub use placement::{DataNodeConnector, NodeMonitorOptions, QueryNodeConnector};
pub use tso::Tso;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("meta store failed")]
    Meta(#[from] MetaError),
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    #[error("table \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("index \"{0}\" does not exist")]
    UndefinedIndex(String),
    #[error("sequence of column \"{0}\" reached its maximum value")]
    SequenceExhausted(String),
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let code = match &e {
            CoordinatorError::Meta(_) => StatusCode::StorageFailure,
            CoordinatorError::DuplicateTable(_) => StatusCode::DuplicateTable,
            CoordinatorError::UndefinedTable(_) => StatusCode::UndefinedTable,
            CoordinatorError::UndefinedIndex(_) => StatusCode::UndefinedObject,
            CoordinatorError::SequenceExhausted(_) => StatusCode::InvalidData,
        };
        ApiError::from_error(code, &e)
    }
}

/// Settings the coordinator needs.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Shards of every new table (one WAL channel each).
    pub shards: u32,
    /// Segments with fewer rows get no index (searched exactly).
    pub min_index_rows: u64,
}

pub struct Coordinator {
    meta: Arc<dyn MetaStore>,
    tso: Tso,
    catalog: Catalog,
    segment_ids: Mutex<IdWindow>,
    sequences: sequences::Sequences,
    roles: roles::Roles,
    placement: placement::Placement,
    /// Set when query nodes are found in the meta store's registry.
    node_connector: std::sync::OnceLock<QueryNodeConnector>,
    data_nodes: RwLock<Vec<DataNodeEntry>>,
    /// Spreads builds and compactions over the data nodes.
    next_data_node: std::sync::atomic::AtomicUsize,
    /// Set when data nodes are found in the meta store's registry.
    data_node_connector: std::sync::OnceLock<DataNodeConnector>,
    /// Where index files live, for removing those of dropped indexes.
    store: Arc<dyn ObjectStore>,
    min_index_rows: u64,
    /// Sealed segments by id.
    segments: RwLock<HashMap<SegmentId, SegmentMeta>>,
    /// Built segment indexes.
    segment_indexes: RwLock<HashMap<(SegmentId, IndexId), SegmentIndexMeta>>,
    builds: index_builds::IndexBuilds,
}

/// A data node, with its registry address when it was discovered.
type DataNodeEntry = (Option<String>, Arc<dyn DataApi>);

/// Ids are handed out from windows reserved in the meta store, so a restart
/// never reuses one and allocation rarely touches the store.
#[derive(Debug, Default)]
struct IdWindow {
    next: u64,
    limit: u64,
}

const ID_WINDOW: u64 = 1024;

impl Coordinator {
    /// Loads the catalog and id windows, and hands every sealed segment to the
    /// query nodes (they load data lazily).
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        store: Arc<dyn ObjectStore>,
        options: CoordinatorOptions,
        query_nodes: Vec<Arc<dyn QueryApi>>,
    ) -> Result<Self, CoordinatorError> {
        let tso = Tso::open(meta.clone()).await?;
        let catalog = Catalog::open(meta.clone(), options.shards).await?;
        let next = quiver_meta::get_json::<u64>(meta.as_ref(), keys::SEGMENT_ID_LIMIT)
            .await?
            .unwrap_or(1);
        let sequences = sequences::Sequences::new(meta.clone());
        let roles = roles::Roles::open(meta.clone()).await?;
        let coordinator = Coordinator {
            meta,
            tso,
            catalog,
            segment_ids: Mutex::new(IdWindow { next, limit: next }),
            sequences,
            roles,
            placement: placement::Placement::new(query_nodes),
            node_connector: std::sync::OnceLock::new(),
            data_nodes: RwLock::new(Vec::new()),
            next_data_node: std::sync::atomic::AtomicUsize::new(0),
            data_node_connector: std::sync::OnceLock::new(),
            store,
            min_index_rows: options.min_index_rows,
            segments: RwLock::new(HashMap::new()),
            segment_indexes: RwLock::new(HashMap::new()),
            builds: Default::default(),
        };
        let segments: Vec<SegmentMeta> =
            quiver_meta::scan_json::<SegmentMeta>(coordinator.meta.as_ref(), keys::SEGMENTS)
                .await?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
        let manifests: Vec<SegmentIndexMeta> = quiver_meta::scan_json::<SegmentIndexMeta>(
            coordinator.meta.as_ref(),
            keys::SEGMENT_INDEXES,
        )
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
        let startup_failed = |e: ApiError| {
            CoordinatorError::Meta(MetaError::Io {
                context: format!("assigning segments: {e}"),
                source: std::io::Error::other(e.message),
            })
        };
        coordinator.probe_query_nodes().await;
        {
            let mut known = coordinator.segments.write();
            for s in &segments {
                known.insert(s.id, s.clone());
            }
            let mut indexes = coordinator.segment_indexes.write();
            for m in manifests {
                coordinator
                    .builds
                    .mark((m.segment, m.index), BuildState::Done, Some(m.build_ms));
                indexes.insert((m.segment, m.index), m);
            }
        }
        if !segments.is_empty() {
            tracing::info!(
                count = segments.len(),
                indexes = coordinator.segment_indexes.read().len(),
                "assigning sealed segments to query nodes"
            );
            match coordinator.place(segments).await {
                // No query node up yet: the node monitor places them.
                Err(e) if e.code.is_unavailable() => {
                    tracing::warn!(error = %e.message, "sealed segments wait for a query node");
                }
                other => other.map_err(startup_failed)?,
            }
        }
        coordinator.release_foreign_everywhere().await;
        coordinator.schedule_missing_builds();
        Ok(coordinator)
    }

    async fn assign(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        {
            let mut known = self.segments.write();
            for s in &segments {
                known.insert(s.id, s.clone());
            }
        }
        // The segments are durable already: failing here would make the
        // streaming node seal the same rows again. With no query node to
        // take them they wait (statements reading them fail with a
        // retryable error) and the node monitor places them.
        match self.place(segments).await {
            Err(e) if e.code.is_unavailable() => {
                tracing::warn!(error = %e.message, "sealed segments wait for a query node");
                Ok(())
            }
            other => other,
        }
    }
}

#[async_trait]
impl CoordinatorApi for Coordinator {
    async fn allocate_timestamp(&self) -> ApiResult<Timestamp> {
        Ok(self.tso.allocate().await?)
    }

    async fn allocate_segment_ids(&self, count: u64) -> ApiResult<SegmentId> {
        loop {
            let need_limit = {
                let mut w = self.segment_ids.lock();
                if w.next + count <= w.limit {
                    let first = w.next;
                    w.next += count;
                    return Ok(SegmentId(first));
                }
                w.limit.max(w.next) + count + ID_WINDOW
            };
            self.meta
                .put(
                    keys::SEGMENT_ID_LIMIT,
                    serde_json::to_vec(&need_limit).unwrap_or_default(),
                )
                .await
                .map_err(CoordinatorError::from)?;
            let mut w = self.segment_ids.lock();
            w.limit = w.limit.max(need_limit);
        }
    }

    async fn create_table(
        &self,
        name: &str,
        schema: TableSchema,
        if_not_exists: bool,
    ) -> ApiResult<TableInfo> {
        Ok(self.catalog.create(name, schema, if_not_exists).await?)
    }

    async fn drop_table(&self, name: &str, if_exists: bool) -> ApiResult<Option<TableInfo>> {
        let dropped = self.catalog.drop(name, if_exists).await?;
        if let Some(table) = &dropped {
            self.forget_table(table).await?;
            self.sequences.drop_table(table.id).await?;
        }
        Ok(dropped)
    }

    async fn create_role(&self, role: RoleInfo, if_not_exists: bool) -> ApiResult<bool> {
        self.roles.create(role, if_not_exists).await
    }

    async fn alter_role(&self, role: RoleInfo) -> ApiResult<()> {
        self.roles.alter(role).await
    }

    async fn drop_role(&self, name: &str, if_exists: bool) -> ApiResult<bool> {
        self.roles.drop(name, if_exists).await
    }

    fn role(&self, name: &str) -> Option<RoleInfo> {
        self.roles.get(name)
    }

    fn roles(&self) -> Vec<RoleInfo> {
        self.roles.list()
    }

    async fn next_serial_values(&self, table: TableId, column: &str, count: u64) -> ApiResult<i64> {
        Ok(self.sequences.next_values(table, column, count).await?)
    }

    fn table(&self, name: &str) -> Option<TableInfo> {
        self.catalog.get(name)
    }

    fn tables(&self) -> Vec<TableInfo> {
        self.catalog.list()
    }

    fn segment_node(&self, segment: SegmentId) -> Option<Arc<dyn QueryApi>> {
        self.placement
            .owner(segment)
            .map(|i| self.placement.node(i))
    }

    async fn segments_sealed(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        let ids: Vec<SegmentId> = segments.iter().map(|s| s.id).collect();
        self.assign(segments).await?;
        self.schedule_segments(&ids);
        Ok(())
    }

    async fn segments_dropped(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        self.forget_segments(&segments).await
    }

    async fn create_index(
        &self,
        table: &str,
        def: IndexDef,
        if_not_exists: bool,
    ) -> ApiResult<Option<IndexInfo>> {
        let Some((info, index)) = self.catalog.create_index(table, def, if_not_exists).await?
        else {
            return Ok(None);
        };
        self.schedule_index(&info, &index);
        Ok(Some(index))
    }

    async fn drop_index(&self, name: &str, if_exists: bool) -> ApiResult<Option<IndexInfo>> {
        let dropped = self.catalog.drop_index(name, if_exists).await?;
        if let Some(index) = &dropped {
            self.forget_index(index).await?;
        }
        Ok(dropped)
    }

    fn sealed_segments(&self) -> Vec<SegmentMeta> {
        let mut v: Vec<SegmentMeta> = self.segments.read().values().cloned().collect();
        v.sort_by_key(|s| (s.table, s.shard, s.id));
        v
    }

    fn index_builds(&self) -> Vec<IndexBuildStatus> {
        self.build_statuses()
    }

    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput> {
        self.data_node()?.compact(task).await
    }
}
