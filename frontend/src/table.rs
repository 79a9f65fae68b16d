//! Quiver tables as DataFusion tables: a scan gathers, for every shard, the
//! visible growing rows from the streaming node and the sealed segments from
//! their query nodes, all at the statement's snapshot timestamp.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use quiver_api::TableInfo;
use quiver_types::{ShardId, Timestamp};

use crate::engine::Backends;
use crate::error::api_err;
use crate::transaction::PendingWrites;

/// The snapshot a statement reads at, passed to scans via the session config.
#[derive(Debug, Clone, Copy)]
pub struct ReadSnapshot(pub Timestamp);

#[derive(Debug)]
pub struct QuiverSchema {
    pub backends: Arc<Backends>,
    /// `pg_catalog`, which PostgreSQL searches before `public`: an
    /// unqualified catalog name the SQL layer does not qualify itself
    /// (`pg_indexes`) resolves there.
    pub pg_catalog: std::sync::OnceLock<Arc<dyn SchemaProvider>>,
}

#[async_trait]
impl SchemaProvider for QuiverSchema {
    fn table_names(&self) -> Vec<String> {
        self.backends
            .coordinator
            .tables()
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.starts_with("pg_")
            && let Some(catalog) = self.pg_catalog.get()
            && catalog.table_exist(name)
        {
            return catalog.table(name).await;
        }
        if let Some(info) = self.backends.table_info(name).await {
            return Ok(Some(Arc::new(QuiverTable {
                schema: info.schema.arrow_schema(),
                info,
                backends: self.backends.clone(),
            })));
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.backends.coordinator.table(name).is_some()
            || (name.starts_with("pg_")
                && self.pg_catalog.get().is_some_and(|c| c.table_exist(name)))
    }
}

#[derive(Debug)]
pub struct QuiverTable {
    pub info: TableInfo,
    schema: SchemaRef,
    backends: Arc<Backends>,
}

impl QuiverTable {
    pub fn schema_ref(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.backends.clone()
    }
}

#[async_trait]
impl TableProvider for QuiverTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let pinned = state.config().get_extension::<ReadSnapshot>().map(|s| s.0);
        let ts = self.backends.read_ts(pinned).await?;
        // Inside a transaction that wrote this table, whole rows are read
        // (the overlay matches them by primary key) and projected after.
        let overlay = state
            .config()
            .get_extension::<PendingWrites>()
            .and_then(|p| p.0.get(&self.info.id).cloned());
        let (projection, final_projection) = match overlay {
            Some(_) => (None, projection),
            None => (projection, None),
        };
        let mut partitions = Vec::with_capacity(self.info.shards as usize);
        for shard in 0..self.info.shards {
            let snap = self
                .backends
                .streaming
                .snapshot(&self.info, ShardId(shard), ts)
                .await
                .map_err(api_err)?;
            let mut batches = snap
                .growing
                .iter()
                .map(|b| match projection {
                    Some(p) => b.project(p),
                    None => Ok(b.clone()),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            for seg in snap.sealed {
                let node = self.backends.query_node(seg.segment).map_err(api_err)?;
                batches.extend(
                    node.scan_segment(
                        seg.segment,
                        ts,
                        &seg.deletes,
                        projection.map(|p| p.as_slice()),
                    )
                    .await
                    .map_err(api_err)?,
                );
            }
            partitions.push(batches);
        }
        if let Some(overlay) = overlay {
            for partition in &mut partitions {
                for batch in partition.iter_mut() {
                    *batch = overlay.without_hidden(batch)?;
                }
            }
            if let (Some(rows), Some(first)) = (&overlay.rows, partitions.first_mut()) {
                first.push(rows.clone());
            }
            if let Some(p) = final_projection {
                for partition in &mut partitions {
                    for batch in partition.iter_mut() {
                        *batch = batch.project(p)?;
                    }
                }
            }
            let projection = final_projection;
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?);
        }
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let exec = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
        Ok(exec)
    }
}
