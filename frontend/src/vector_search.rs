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
use quiver_api::with_distance_column;
use quiver_api::{
    QueryApi, SealedSegmentRef, SearchFilter, SearchStrategy, TableInfo, VectorSearchRequest,
};
use quiver_index::exact_top_k;
use quiver_planner::vector_search::VectorSearchNode;
use quiver_types::{ShardId, Timestamp};

use crate::engine::Backends;
use crate::error::api_err;
use crate::table::{QuiverTable, ReadSnapshot};
use crate::transaction::{PendingWrites, TableOverlay};

/// Growing rows up to this many are searched on the calling task (a
/// blocking-thread hand-off costs more than the distances).
const INLINE_GROWING_ROWS: usize = 2048;

/// Candidate list of graph searches when the session sets none.
pub const DEFAULT_SEARCH_LIST: usize = 100;

/// The session's `diskann.search_list`, resolved from its settings when the
/// statement's snapshot is pinned.
#[derive(Debug, Clone, Copy)]
pub struct SearchSettings {
    pub search_list: usize,
}

/// Set while planning a plain `EXPLAIN`: the vector-search node then asks
/// every segment how it would be searched, and shows it.
#[derive(Debug, Clone, Copy)]
pub struct ExplainSearch(pub bool);

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
        let filter_schema = Arc::new(table_schema.project(&filter_columns)?);
        let df_schema = DFSchema::try_from(filter_schema.as_ref().clone())?;
        let filter = predicate
            .map(|e| planner.create_physical_expr(&e, &df_schema, session_state, planning_ctx))
            .transpose()?
            .map(|predicate| SearchFilter {
                predicate,
                columns: filter_columns,
                schema: filter_schema,
            });
        let config = session_state.config();
        let search_list = config
            .get_extension::<SearchSettings>()
            .map_or(DEFAULT_SEARCH_LIST, |s| s.search_list);
        let info = table.info.clone();
        let index = info.index_for(&node.column_name, node.metric).map(|i| i.id);
        let schema: SchemaRef = Arc::new(node.projected_schema.as_arrow().clone());
        let snapshot = config.get_extension::<ReadSnapshot>().map(|s| s.0);
        let overlay = config
            .get_extension::<PendingWrites>()
            .and_then(|p| p.0.get(&info.id).cloned());
        let request = VectorSearchRequest {
            column: node.column,
            metric: node.metric,
            query: node.query.clone(),
            k: node.k,
            search_list,
            index,
            filter,
            projection_with_distance: None,
        };
        let explain = config.get_extension::<ExplainSearch>().is_some_and(|e| e.0);
        let segment_report = if explain {
            Some(explain_parts(&table.backends(), &info, snapshot, &request).await?)
        } else {
            None
        };
        Ok(Some(Arc::new(VectorSearchExec {
            properties: search_properties(&schema),
            schema,
            table: info,
            backends: table.backends(),
            snapshot,
            projection: node.projection.clone(),
            request,
            description: format!("{node:?}"),
            segment_report,
            overlay,
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
    /// Per part: how it would be searched (plain `EXPLAIN` only).
    segment_report: Option<Vec<String>>,
    /// The open transaction's writes to this table, if any.
    overlay: Option<Arc<TableOverlay>>,
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
        )?;
        if let Some(report) = &self.segment_report {
            write!(f, " parts=[{}]", report.join("; "))?;
        }
        Ok(())
    }
}

/// How every part of the table would be searched, one line each.
async fn explain_parts(
    backends: &Backends,
    table: &TableInfo,
    snapshot: Option<Timestamp>,
    request: &VectorSearchRequest,
) -> Result<Vec<String>> {
    let ts = backends.read_ts(snapshot).await?;
    let mut lines = Vec::new();
    for shard in 0..table.shards {
        let snap = backends
            .streaming
            .snapshot(table, ShardId(shard), ts)
            .await
            .map_err(api_err)?;
        let growing: usize = snap.growing.iter().map(|b| b.num_rows()).sum();
        if growing > 0 {
            lines.push(format!("shard {shard} growing: exact over {growing} rows"));
        }
        for seg in snap.sealed {
            let plan = backends
                .query_node(seg.segment)
                .map_err(api_err)?
                .explain_search(seg.segment, ts, &seg.deletes, request)
                .await
                .map_err(api_err)?;
            let how = match plan.strategy {
                SearchStrategy::Index {
                    search_list,
                    filtered,
                } => format!(
                    "diskann {}graph search (search_list={search_list})",
                    if filtered { "filtered " } else { "" }
                ),
                SearchStrategy::Exact | SearchStrategy::IndexThenExact => "exact".to_string(),
            };
            lines.push(format!(
                "shard {shard} segment {}: {how}, {} of {} rows match",
                seg.segment, plan.matching, plan.rows
            ));
        }
    }
    Ok(lines)
}

/// Exact top-k of one batch of growing rows.
fn search_growing(batch: &RecordBatch, request: &VectorSearchRequest) -> Result<RecordBatch> {
    let allowed = match &request.filter {
        Some(filter) => {
            let input = batch.project(&filter.columns)?;
            let values = filter
                .predicate
                .evaluate(&input)?
                .into_array(batch.num_rows())?;
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
    let (rows, distances): (Vec<u32>, Vec<f32>) = hits.into_iter().unzip();
    let rows = UInt32Array::from(rows);
    Ok(match &request.projection_with_distance {
        None => arrow::compute::take_record_batch(batch, &rows)?,
        Some(columns) => with_distance_column(
            arrow::compute::take_record_batch(&batch.project(columns)?, &rows)?,
            distances,
        )?,
    })
}

/// One partition, emitted at the end, bounded.
fn search_properties(schema: &SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema.clone()),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

/// The candidates of a search over every part of a table at `ts` (at most
/// k per part, all columns), without planning: what the planned operator
/// produces, for the direct k-NN path.
pub(crate) async fn search_candidates(
    backends: Arc<Backends>,
    table: TableInfo,
    ts: Timestamp,
    request: VectorSearchRequest,
) -> Result<Vec<RecordBatch>> {
    let schema = table.schema.arrow_schema();
    let exec = VectorSearchExec {
        properties: search_properties(&schema),
        schema,
        table,
        backends,
        snapshot: Some(ts),
        projection: None,
        request,
        description: String::new(),
        segment_report: None,
        overlay: None,
        metrics: ExecutionPlanMetricsSet::new(),
    };
    exec.run().await
}

impl VectorSearchExec {
    async fn run(&self) -> Result<Vec<RecordBatch>> {
        let ts = self.backends.read_ts(self.snapshot).await?;
        let metric = |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, 0);
        let (by_index, exact, fallback, growing_rows, matching) = (
            metric("segments_by_index"),
            metric("segments_exact"),
            metric("segments_index_then_exact"),
            metric("growing_rows"),
            metric("sealed_rows_matching"),
        );
        let sealed_time = MetricBuilder::new(&self.metrics).subset_time("sealed_search_time", 0);
        let growing_time = MetricBuilder::new(&self.metrics).subset_time("growing_search_time", 0);
        let snapshots = futures::future::try_join_all((0..self.table.shards).map(|shard| {
            self.backends
                .streaming
                .snapshot(&self.table, ShardId(shard), ts)
        }))
        .await
        .map_err(api_err)?;
        let mut out = Vec::new();
        let mut growing = Vec::new();
        let mut sealed = Vec::new();
        for snap in snapshots {
            growing.extend(snap.growing);
            sealed.extend(snap.sealed);
        }
        // A transaction's writes: committed rows it rewrote or deleted are
        // dropped from every part (which therefore returns that many more
        // candidates), and its own rows are searched like growing ones.
        let mut sealed_request = self.request.clone();
        if let Some(overlay) = &self.overlay {
            if self.request.projection_with_distance.is_some() {
                return Err(DataFusionError::Internal(
                    "a transaction's search must return whole rows".into(),
                ));
            }
            sealed_request.k = sealed_request.k.saturating_add(overlay.hidden_count());
            for batch in &mut growing {
                *batch = overlay.without_hidden(batch)?;
            }
            growing.extend(overlay.rows.clone());
        }
        // Growing rows on a blocking thread while the query nodes search
        // their segments, all segments at once (a query node runs each
        // search on its own blocking thread).
        // Few growing rows are searched inline; many on a blocking thread
        // while the query nodes search their segments.
        let growing_rows_total: usize = growing.iter().map(|b| b.num_rows()).sum();
        let request = self.request.clone();
        let search_all_growing = move || {
            growing
                .iter()
                .map(|b| Ok((b.num_rows(), search_growing(b, &request)?)))
                .collect::<Result<Vec<_>>>()
        };
        let growing_search = if growing_rows_total <= INLINE_GROWING_ROWS {
            futures::future::Either::Left(futures::future::ready(Ok(search_all_growing())))
        } else {
            futures::future::Either::Right(tokio::task::spawn_blocking(search_all_growing))
        };
        let timer = sealed_time.timer();
        // One call per query node for all the segments it serves.
        let mut per_node: Vec<(Arc<dyn QueryApi>, Vec<SealedSegmentRef>)> = Vec::new();
        for seg in sealed {
            let node = self.backends.query_node(seg.segment).map_err(api_err)?;
            match per_node.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, segs)) => segs.push(seg),
                None => per_node.push((node, vec![seg])),
            }
        }
        let found: Vec<_> = futures::future::try_join_all(
            per_node
                .iter()
                .map(|(node, segs)| node.search_segments(segs, ts, &sealed_request)),
        )
        .await
        .map_err(api_err)?
        .into_iter()
        .flatten()
        .collect();
        timer.done();
        for f in found {
            matching.add(f.matching as usize);
            match f.strategy {
                SearchStrategy::Index { .. } => by_index.add(1),
                SearchStrategy::Exact => exact.add(1),
                SearchStrategy::IndexThenExact => fallback.add(1),
            }
            match &self.overlay {
                Some(overlay) => out.push(overlay.without_hidden(&f.rows)?),
                None => out.push(f.rows),
            }
        }
        let timer = growing_time.timer();
        for (rows, batch) in growing_search
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??
        {
            growing_rows.add(rows);
            out.push(batch);
        }
        timer.done();
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
            Some(filter) => f(&filter.predicate),
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
            segment_report: None,
            overlay: self.overlay.clone(),
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
