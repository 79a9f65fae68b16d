//! The `quiver` schema: system views over the storage layer.
//!
//! * `quiver.segments`: one row per sealed segment (and per shard holding
//!   growing rows) with rows, deleted rows, bytes and index state.
//! * `quiver.index_builds`: one row per (index, sealed segment) build with
//!   state, duration and size. `CREATE INDEX` returns once builds are
//!   scheduled; a client waits for them with
//!   `SELECT count(*) FROM quiver.index_builds WHERE state IN ('queued', 'running')`.
//!
//! Computed when scanned, at the newest applied snapshot.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use quiver_api::{BuildState, IndexBuildStatus};
use quiver_types::ShardId;

use crate::engine::Backends;
use crate::error::api_err;

pub const SCHEMA: &str = "quiver";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Segments,
    IndexBuilds,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Segments => "segments",
            View::IndexBuilds => "index_builds",
        }
    }

    fn schema(self) -> SchemaRef {
        let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
        let int = |n: &str, null: bool| Field::new(n, DataType::Int64, null);
        Arc::new(Schema::new(match self {
            View::Segments => vec![
                text("table_name", false),
                Field::new("shard", DataType::Int32, false),
                int("segment_id", true),
                text("state", false),
                int("rows", false),
                int("deleted_rows", false),
                int("bytes", true),
                text("index_state", true),
                text("query_node", true),
            ],
            View::IndexBuilds => vec![
                text("index_name", false),
                text("table_name", false),
                text("column_name", false),
                text("method", false),
                int("segment_id", false),
                int("rows", false),
                text("state", false),
                int("duration_ms", true),
                int("bytes", true),
                text("error", true),
            ],
        }))
    }
}

#[derive(Debug)]
pub struct SystemSchema {
    pub backends: Arc<Backends>,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec!["segments".into(), "index_builds".into()]
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let view = match name {
            "segments" => View::Segments,
            "index_builds" => View::IndexBuilds,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(SystemView {
            view,
            schema: view.schema(),
            backends: self.backends.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(name, "segments" | "index_builds")
    }
}

#[derive(Debug)]
struct SystemView {
    view: View,
    schema: SchemaRef,
    backends: Arc<Backends>,
}

/// The combined state of a segment's index builds (the least advanced one).
fn summarize(states: &[BuildState]) -> Option<String> {
    let order = [
        BuildState::Failed,
        BuildState::Queued,
        BuildState::Running,
        BuildState::Skipped,
        BuildState::Done,
    ];
    order
        .iter()
        .find(|s| states.contains(s))
        .map(|s| s.name().to_string())
}

impl SystemView {
    async fn segments(&self) -> Result<RecordBatch> {
        let coordinator = &self.backends.coordinator;
        let streaming = &self.backends.streaming;
        let ts = streaming.applied_ts().await.map_err(api_err)?;
        let sealed = coordinator.sealed_segments();
        let builds = coordinator.index_builds();
        let mut query_node: Vec<Option<String>> = vec![];
        let (mut table, mut shard, mut id, mut state, mut rows, mut deleted, mut bytes, mut index) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for info in coordinator.tables() {
            for s in 0..info.shards {
                let snap = streaming
                    .snapshot(&info, ShardId(s), ts)
                    .await
                    .map_err(api_err)?;
                let growing: usize = snap.growing.iter().map(|b| b.num_rows()).sum();
                if growing > 0 {
                    table.push(info.name.clone());
                    shard.push(s as i32);
                    id.push(None);
                    state.push("growing".to_string());
                    rows.push(growing as i64);
                    deleted.push(0);
                    bytes.push(None);
                    index.push(None);
                    query_node.push(None);
                }
                for seg in &snap.sealed {
                    let Some(meta) = sealed.iter().find(|m| m.id == seg.segment) else {
                        continue;
                    };
                    let states: Vec<BuildState> = builds
                        .iter()
                        .filter(|b| b.segment == seg.segment)
                        .map(|b| b.state)
                        .collect();
                    let index_state = if info.indexes.is_empty() {
                        None
                    } else if states.len() < info.indexes.len() {
                        Some("queued".to_string())
                    } else {
                        summarize(&states)
                    };
                    table.push(info.name.clone());
                    shard.push(s as i32);
                    id.push(Some(seg.segment.0 as i64));
                    state.push(
                        if index_state.as_deref() == Some("done") {
                            "indexed"
                        } else {
                            "sealed"
                        }
                        .to_string(),
                    );
                    rows.push(meta.rows as i64);
                    deleted.push(seg.deletes.iter().filter(|d| d.ts <= ts).count() as i64);
                    bytes.push(Some(meta.bytes as i64));
                    index.push(index_state);
                    query_node.push(coordinator.segment_node(seg.segment).map(|n| n.label()));
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(table)),
            Arc::new(Int32Array::from(shard)),
            Arc::new(Int64Array::from(id)),
            Arc::new(StringArray::from(state)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(deleted)),
            Arc::new(Int64Array::from(bytes)),
            Arc::new(StringArray::from(index)),
            Arc::new(StringArray::from(query_node)),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn index_builds(&self) -> Result<RecordBatch> {
        let tables = self.backends.coordinator.tables();
        let builds: Vec<IndexBuildStatus> = self.backends.coordinator.index_builds();
        let table_name = |b: &IndexBuildStatus| {
            tables
                .iter()
                .find(|t| t.id == b.index.table)
                .map(|t| t.name.clone())
                .unwrap_or_default()
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                builds.iter().map(|b| b.index.def.name.clone()),
            )),
            Arc::new(StringArray::from_iter_values(builds.iter().map(table_name))),
            Arc::new(StringArray::from_iter_values(
                builds.iter().map(|b| b.index.def.column.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                builds.iter().map(|b| b.index.def.method.clone()),
            )),
            Arc::new(Int64Array::from_iter_values(
                builds.iter().map(|b| b.segment.0 as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                builds.iter().map(|b| b.rows as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                builds.iter().map(|b| b.state.name()),
            )),
            Arc::new(Int64Array::from_iter(
                builds.iter().map(|b| b.duration_ms.map(|d| d as i64)),
            )),
            Arc::new(Int64Array::from_iter(
                builds.iter().map(|b| b.bytes.map(|d| d as i64)),
            )),
            Arc::new(StringArray::from_iter(
                builds.iter().map(|b| b.error.clone()),
            )),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for SystemView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = match self.view {
            View::Segments => self.segments().await?,
            View::IndexBuilds => self.index_builds()?,
        };
        tracing::trace!(
            view = self.view.name(),
            rows = batch.num_rows(),
            "system view scanned"
        );
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
