//! Executes [`VectorSearchNode`]s: every shard's growing rows are searched
//! exactly here, every sealed segment by the query node that serves it
//! (index or exact, its choice), all at the statement's snapshot. The
//! candidates (at most k per part) go up to the Sort that picks the global
//! top-k.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode, utils::conjunction};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use quiver_api::{ApiError, SearchStrategy, TableInfo, VectorSearchRequest};
use quiver_index::exact_top_k;
use quiver_planner::vector_search::VectorSearchNode;
use quiver_types::{ShardId, Timestamp};

use crate::engine::Backends;
use crate::table::{QuiverTable, ReadSnapshot};

/// Candidate list of graph searches when the session sets none.
pub const DEFAULT_SEARCH_LIST: usize = 100;

/// The session's `diskann.search_list`, resolved from its settings when the
/// statement's snapshot is pinned.
#[derive(Debug, Clone, Copy)]
pub struct SearchSettings {
    pub search_list: usize,
}

/// DataFusion's planner plus the vector-search node.
#[derive(Debug)]
pub struct QuiverQueryPlanner;

#[async_trait]
impl QueryPlanner for QuiverQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(VectorSearchPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

struct VectorSearchPlanner;

#[async_trait]
impl ExtensionPlanner for VectorSearchPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        session_state: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<VectorSearchNode>() else {
            return Ok(None);
        };
        let provider = datafusion::datasource::source_as_provider(&node.source)?;
        let Some(table) = provider.downcast_ref::<QuiverTable>() else {
            return Err(DataFusionError::Plan(format!(
                "vector search over {} is not supported",
                node.table_name
            )));
        };
        // The filter is bound to just the columns it reads, so sealed
        // segments need not materialise the others (vectors above all).
        let table_schema = table.schema_ref();
        let predicate = conjunction(node.filters.clone());
        let mut filter_columns: Vec<usize> = predicate
            .as_ref()
            .map(|p| {
                p.column_refs()
                    .iter()
                    .filter_map(|c| table_schema.index_of(&c.name).ok())
                    .collect()
            })
            .unwrap_or_default();
        filter_columns.sort_unstable();
        filter_columns.dedup();
        let df_schema = DFSchema::try_from(table_schema.project(&filter_columns)?)?;
        let filter = predicate
            .map(|e| planner.create_physical_expr(&e, &df_schema, session_state, planning_ctx))
            .transpose()?;
        let config = session_state.config();
        let search_list = config
            .get_extension::<SearchSettings>()
            .map_or(DEFAULT_SEARCH_LIST, |s| s.search_list);
        let info = table.info.clone();
        let index = info.index_for(&node.column_name, node.metric).map(|i| i.id);
        let schema: SchemaRef = Arc::new(node.projected_schema.as_arrow().clone());
        Ok(Some(Arc::new(VectorSearchExec {
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            schema,
            table: info,
            backends: table.backends(),
            snapshot: config.get_extension::<ReadSnapshot>().map(|s| s.0),
            projection: node.projection.clone(),
            request: VectorSearchRequest {
                column: node.column,
                metric: node.metric,
                query: node.query.clone(),
                k: node.k,
                search_list,
                index,
                filter,
                filter_columns,
            },
            description: format!("{node:?}"),
            metrics: ExecutionPlanMetricsSet::new(),
        })))
    }
}

pub struct VectorSearchExec {
    properties: Arc<PlanProperties>,
    schema: SchemaRef,
    table: TableInfo,
    backends: Arc<Backends>,
    snapshot: Option<Timestamp>,
    projection: Option<Vec<usize>>,
    request: VectorSearchRequest,
    description: String,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for VectorSearchExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl DisplayAs for VectorSearchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} search_list={} index={}",
            self.description,
            self.request.search_list,
            match self.request.index {
                Some(_) => "diskann",
                None => "none",
            }
        )
    }
}

fn api_err(e: ApiError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Exact top-k of one batch of growing rows.
fn search_growing(batch: &RecordBatch, request: &VectorSearchRequest) -> Result<RecordBatch> {
    let allowed = match &request.filter {
        Some(filter) => {
            let input = batch.project(&request.filter_columns)?;
            let values = filter.evaluate(&input)?.into_array(batch.num_rows())?;
            Some(values.as_boolean().clone())
        }
        None => None,
    };
    let vectors = batch
        .column(request.column)
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| DataFusionError::Internal("search column is not a vector".into()))?;
    let hits = exact_top_k(vectors, request.metric, &request.query, request.k, |r| {
        allowed.as_ref().is_none_or(|a| a.is_valid(r) && a.value(r))
    })
    .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let rows = UInt32Array::from(hits.into_iter().map(|(r, _)| r).collect::<Vec<_>>());
    Ok(arrow::compute::take_record_batch(batch, &rows)?)
}

impl VectorSearchExec {
    async fn run(&self) -> Result<Vec<RecordBatch>> {
        let ts = match self.snapshot {
            Some(ts) => ts,
            None => self
                .backends
                .streaming
                .applied_ts()
                .await
                .map_err(api_err)?,
        };
        let metric = |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, 0);
        let (by_index, exact, fallback, growing_rows, matching) = (
            metric("segments_by_index"),
            metric("segments_exact"),
            metric("segments_index_then_exact"),
            metric("growing_rows"),
            metric("sealed_rows_matching"),
        );
        let mut out = Vec::new();
        for shard in 0..self.table.shards {
            let snap = self
                .backends
                .streaming
                .snapshot(&self.table, ShardId(shard), ts)
                .await
                .map_err(api_err)?;
            for batch in &snap.growing {
                growing_rows.add(batch.num_rows());
                out.push(search_growing(batch, &self.request)?);
            }
            for seg in snap.sealed {
                let node = self.backends.query_node(seg.segment);
                let found = node
                    .search_segment(seg.segment, ts, &seg.deletes, &self.request)
                    .await
                    .map_err(api_err)?;
                matching.add(found.matching as usize);
                match found.strategy {
                    SearchStrategy::Index { .. } => by_index.add(1),
                    SearchStrategy::Exact => exact.add(1),
                    SearchStrategy::IndexThenExact => fallback.add(1),
                }
                out.push(found.rows);
            }
        }
        out.into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| match &self.projection {
                Some(p) => Ok(b.project(p)?),
                None => Ok(b),
            })
            .collect()
    }
}

impl ExecutionPlan for VectorSearchExec {
    fn name(&self) -> &str {
        "VectorSearchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.request.filter {
            Some(filter) => f(filter),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let this = VectorSearchExec {
            properties: self.properties.clone(),
            schema: self.schema.clone(),
            table: self.table.clone(),
            backends: self.backends.clone(),
            snapshot: self.snapshot,
            projection: self.projection.clone(),
            request: self.request.clone(),
            description: self.description.clone(),
            metrics: self.metrics.clone(),
        };
        let stream = futures::stream::once(async move { this.run().await })
            .map(|r| match r {
                Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

use futures::StreamExt;
