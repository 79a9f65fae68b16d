//! The coordinator as seen from a proxy or streaming node in another
//! process: calls go to whichever configured coordinator answers (a
//! standby refuses with `Unavailable`, so the caller moves on to the
//! leader), and lookups are served from a copy of the published catalog.

use std::collections::HashMap;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use quiver_api::{
    ApiResult, CompactionOutput, CompactionTask, CoordinatorApi, IndexBuildStatus, IndexDef,
    IndexInfo, QueryApi, RoleInfo, TableInfo,
};
use quiver_segment::SegmentMeta;
use quiver_types::{SegmentId, TableId, TableSchema, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::catalog::{CatalogPoll, CatalogState};
use crate::client::RemoteQueryNode;
use crate::failover::{FailoverClient, Retry};
use crate::wire;

/// The catalog copy, indexed for lookups.
#[derive(Default)]
struct CatalogCopy {
    state: CatalogState,
    tables: HashMap<String, usize>,
    roles: HashMap<String, usize>,
    placement: HashMap<SegmentId, String>,
}

impl CatalogCopy {
    fn new(state: CatalogState) -> Self {
        CatalogCopy {
            tables: state
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            roles: state
                .roles
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.clone(), i))
                .collect(),
            placement: state.placement.iter().cloned().collect(),
            state,
        }
    }
}

pub struct RemoteCoordinator {
    coordinators: FailoverClient,
    catalog: RwLock<Arc<CatalogCopy>>,
    /// One client per query-node address seen in the placement.
    query_nodes: Mutex<HashMap<String, Arc<dyn QueryApi>>>,
}

impl std::fmt::Debug for RemoteCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCoordinator")
            .field("coordinators", &self.coordinators)
            .finish_non_exhaustive()
    }
}

/// Pause after a failed long poll, so a coordinator being replaced is not
/// hammered.
const POLL_RETRY: Duration = Duration::from_millis(200);

impl RemoteCoordinator {
    /// Connects to the coordinators at `addresses` (the leader and its
    /// standbys, in any order), waits up to `wait` for one of them to
    /// publish its catalog, and keeps following the catalog from then on.
    pub async fn connect(addresses: &[String], wait: Duration) -> ApiResult<Arc<Self>> {
        let coordinators = FailoverClient::new(addresses, "[cluster] coordinators")?;
        let remote = Arc::new(RemoteCoordinator {
            coordinators,
            catalog: RwLock::new(Arc::new(CatalogCopy::default())),
            query_nodes: Mutex::new(HashMap::new()),
        });
        let deadline = Instant::now() + wait;
        loop {
            match remote.refresh_catalog().await {
                Ok(()) => break,
                Err(e) if e.code.is_unavailable() && Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for the coordinator");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Self::follow(Arc::downgrade(&remote));
        Ok(remote)
    }

    /// Long-polls the catalog for as long as the handle lives.
    fn follow(weak: Weak<RemoteCoordinator>) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(remote) = weak.upgrade() else { return };
                let since = remote.catalog.read().state.version;
                let poll = CatalogPoll { since: Some(since) };
                match remote
                    .coordinators
                    .action::<_, CatalogState>(wire::COORD_CATALOG, &poll, Retry::Idempotent)
                    .await
                {
                    Ok(state) => {
                        failures = 0;
                        remote.install(state);
                    }
                    Err(e) => {
                        failures += 1;
                        // Log the first failure and then every ~10 s.
                        if failures == 1 || failures.is_multiple_of(50) {
                            tracing::warn!(error = %e, "following the coordinator's catalog failed");
                        }
                        drop(remote);
                        tokio::time::sleep(POLL_RETRY).await;
                    }
                }
            }
        });
    }

    fn install(&self, state: CatalogState) {
        let mut catalog = self.catalog.write();
        if state.version.supersedes(catalog.state.version) {
            *catalog = Arc::new(CatalogCopy::new(state));
        }
    }

    fn copy(&self) -> Arc<CatalogCopy> {
        self.catalog.read().clone()
    }

    /// A call that changes the catalog: the copy is refreshed before
    /// returning, so this handle's next lookup sees the change.
    async fn change<Req: Serialize + ?Sized + Sync, Resp: DeserializeOwned>(
        &self,
        kind: &str,
        request: &Req,
    ) -> ApiResult<Resp> {
        let reply = self.coordinators.action(kind, request, Retry::Once).await?;
        self.refresh_after(kind).await;
        Ok(reply)
    }

    async fn refresh_after(&self, kind: &str) {
        if let Err(e) = self.refresh_catalog().await {
            tracing::warn!(error = %e, "refreshing the catalog after {kind} failed");
        }
    }

    fn query_node(&self, address: &str) -> Option<Arc<dyn QueryApi>> {
        let mut nodes = self.query_nodes.lock();
        if let Some(node) = nodes.get(address) {
            return Some(node.clone());
        }
        match RemoteQueryNode::connect(address) {
            Ok(node) => {
                nodes.insert(address.to_string(), node.clone());
                Some(node)
            }
            Err(e) => {
                tracing::warn!(error = %e, address, "placement names an unusable query node address");
                None
            }
        }
    }
}

#[async_trait]
impl CoordinatorApi for RemoteCoordinator {
    async fn allocate_timestamp(&self) -> ApiResult<Timestamp> {
        // A timestamp lost to a retry is never used: harmless.
        self.coordinators
            .action(wire::COORD_ALLOCATE_TIMESTAMP, &(), Retry::Idempotent)
            .await
    }

    async fn allocate_segment_ids(&self, count: u64) -> ApiResult<SegmentId> {
        self.coordinators
            .action(wire::COORD_ALLOCATE_SEGMENT_IDS, &count, Retry::Idempotent)
            .await
    }

    async fn create_table(
        &self,
        name: &str,
        schema: TableSchema,
        if_not_exists: bool,
    ) -> ApiResult<TableInfo> {
        let call = wire::CreateTableCall {
            name: name.to_string(),
            schema,
            if_not_exists,
        };
        self.change(wire::COORD_CREATE_TABLE, &call).await
    }

    async fn drop_table(&self, name: &str, if_exists: bool) -> ApiResult<Option<TableInfo>> {
        let call = wire::DropCall {
            name: name.to_string(),
            if_exists,
        };
        self.change(wire::COORD_DROP_TABLE, &call).await
    }

    fn table(&self, name: &str) -> Option<TableInfo> {
        let copy = self.copy();
        copy.tables.get(name).map(|&i| copy.state.tables[i].clone())
    }

    async fn next_serial_values(&self, table: TableId, column: &str, count: u64) -> ApiResult<i64> {
        let call = wire::SerialValuesCall {
            table,
            column: column.to_string(),
            count,
        };
        // A gap in a sequence, as in PostgreSQL.
        self.coordinators
            .action(wire::COORD_NEXT_SERIAL_VALUES, &call, Retry::Idempotent)
            .await
    }

    fn segment_node(&self, segment: SegmentId) -> Option<Arc<dyn QueryApi>> {
        let address = self.copy().placement.get(&segment).cloned()?;
        self.query_node(&address)
    }

    fn tables(&self) -> Vec<TableInfo> {
        self.copy().state.tables.clone()
    }

    async fn segments_sealed(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        self.coordinators
            .action::<_, ()>(wire::COORD_SEGMENTS_SEALED, &segments, Retry::Idempotent)
            .await?;
        self.refresh_after(wire::COORD_SEGMENTS_SEALED).await;
        Ok(())
    }

    async fn segments_dropped(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        // Forgetting segments twice changes nothing.
        self.coordinators
            .action::<_, ()>(wire::COORD_SEGMENTS_DROPPED, &segments, Retry::Idempotent)
            .await?;
        self.refresh_after(wire::COORD_SEGMENTS_DROPPED).await;
        Ok(())
    }

    async fn create_index(
        &self,
        table: &str,
        def: IndexDef,
        if_not_exists: bool,
    ) -> ApiResult<Option<IndexInfo>> {
        let call = wire::CreateIndexCall {
            table: table.to_string(),
            def,
            if_not_exists,
        };
        self.change(wire::COORD_CREATE_INDEX, &call).await
    }

    async fn drop_index(&self, name: &str, if_exists: bool) -> ApiResult<Option<IndexInfo>> {
        let call = wire::DropCall {
            name: name.to_string(),
            if_exists,
        };
        self.change(wire::COORD_DROP_INDEX, &call).await
    }

    fn sealed_segments(&self) -> Vec<SegmentMeta> {
        self.copy().state.sealed_segments.clone()
    }

    fn index_builds(&self) -> Vec<IndexBuildStatus> {
        self.copy().state.index_builds.clone()
    }

    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput> {
        self.coordinators
            .action(wire::COORD_COMPACT, &task, Retry::Once)
            .await
    }

    async fn create_role(&self, role: RoleInfo, if_not_exists: bool) -> ApiResult<bool> {
        let call = wire::CreateRoleCall {
            role,
            if_not_exists,
        };
        self.change(wire::COORD_CREATE_ROLE, &call).await
    }

    async fn alter_role(&self, role: RoleInfo) -> ApiResult<()> {
        self.change(wire::COORD_ALTER_ROLE, &role).await
    }

    async fn drop_role(&self, name: &str, if_exists: bool) -> ApiResult<bool> {
        let call = wire::DropCall {
            name: name.to_string(),
            if_exists,
        };
        self.change(wire::COORD_DROP_ROLE, &call).await
    }

    fn role(&self, name: &str) -> Option<RoleInfo> {
        let copy = self.copy();
        copy.roles.get(name).map(|&i| copy.state.roles[i].clone())
    }

    fn roles(&self) -> Vec<RoleInfo> {
        self.copy().state.roles.clone()
    }

    async fn refresh_catalog(&self) -> ApiResult<()> {
        let state: CatalogState = self
            .coordinators
            .action(
                wire::COORD_CATALOG,
                &CatalogPoll { since: None },
                Retry::Idempotent,
            )
            .await?;
        self.install(state);
        Ok(())
    }
}
