//! The coordinator: the one component with a global view.
//!
//! It owns the catalog (tables and their schemas, persisted in the meta
//! store), the timestamp oracle ([`tso::Tso`]), id allocation for segments,
//! and the assignment of sealed segments to query nodes. It implements
//! [`quiver_api::CoordinatorApi`]; standalone mode calls it in-process.

mod catalog;
mod tso;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use quiver_api::{ApiError, ApiResult, CoordinatorApi, QueryApi, StatusCode, TableInfo};
use quiver_meta::{MetaError, MetaStore, keys};
use quiver_segment::SegmentMeta;
use quiver_types::{SegmentId, TableSchema, Timestamp};

pub use catalog::Catalog;
pub use tso::Tso;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("meta store failed")]
    Meta(#[from] MetaError),
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    #[error("table \"{0}\" does not exist")]
    UndefinedTable(String),
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let code = match &e {
            CoordinatorError::Meta(_) => StatusCode::StorageFailure,
            CoordinatorError::DuplicateTable(_) => StatusCode::DuplicateTable,
            CoordinatorError::UndefinedTable(_) => StatusCode::UndefinedTable,
        };
        ApiError::from_error(code, &e)
    }
}

/// Settings the coordinator needs.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Shards of every new table (one WAL channel each).
    pub shards: u32,
}

pub struct Coordinator {
    meta: Arc<dyn MetaStore>,
    tso: Tso,
    catalog: Catalog,
    segment_ids: Mutex<IdWindow>,
    query_nodes: Vec<Arc<dyn QueryApi>>,
}

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
        options: CoordinatorOptions,
        query_nodes: Vec<Arc<dyn QueryApi>>,
    ) -> Result<Self, CoordinatorError> {
        let tso = Tso::open(meta.clone()).await?;
        let catalog = Catalog::open(meta.clone(), options.shards).await?;
        let next = quiver_meta::get_json::<u64>(meta.as_ref(), keys::SEGMENT_ID_LIMIT)
            .await?
            .unwrap_or(1);
        let coordinator = Coordinator {
            meta,
            tso,
            catalog,
            segment_ids: Mutex::new(IdWindow { next, limit: next }),
            query_nodes,
        };
        let segments: Vec<SegmentMeta> =
            quiver_meta::scan_json::<SegmentMeta>(coordinator.meta.as_ref(), keys::SEGMENTS)
                .await?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
        if !segments.is_empty() {
            tracing::info!(
                count = segments.len(),
                "assigning sealed segments to query nodes"
            );
            coordinator.assign(segments).await.map_err(|e| {
                CoordinatorError::Meta(MetaError::Io {
                    context: format!("assigning segments: {e}"),
                    source: std::io::Error::other(e.message),
                })
            })?;
        }
        Ok(coordinator)
    }

    async fn assign(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        if self.query_nodes.is_empty() {
            return Err(ApiError::new(
                StatusCode::Unavailable,
                "no query node is registered",
            ));
        }
        let mut per_node: Vec<Vec<SegmentMeta>> = vec![Vec::new(); self.query_nodes.len()];
        for s in segments {
            per_node[self.segment_owner(s.id)].push(s);
        }
        for (node, segs) in self.query_nodes.iter().zip(per_node) {
            if !segs.is_empty() {
                node.load_segments(segs).await?;
            }
        }
        Ok(())
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
        Ok(self.catalog.drop(name, if_exists).await?)
    }

    fn table(&self, name: &str) -> Option<TableInfo> {
        self.catalog.get(name)
    }

    fn tables(&self) -> Vec<TableInfo> {
        self.catalog.list()
    }

    fn segment_owner(&self, segment: SegmentId) -> usize {
        (segment.0 % self.query_nodes.len().max(1) as u64) as usize
    }

    async fn segments_sealed(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        self.assign(segments).await
    }
}
