//! Top-k vector search over one sealed segment.
//!
//! The rows that may be returned are the visible ones (MVCC) that pass the
//! query's filter. A graph search with the filter applied during traversal
//! is used when the segment has an index and enough rows match; the
//! candidate list grows as the filter gets more selective, since fewer of
//! the nodes visited count. When few rows match, computing their distances
//! directly is both cheaper and exact. If the graph search still returns
//! fewer than k rows while at least k match, the segment is searched
//! exactly, so a query never comes back short.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use quiver_api::{ApiError, SearchStrategy, SegmentSearchResult, VectorSearchRequest};
use quiver_segment::{DeleteLogEntry, SegmentIndexMeta};
use quiver_types::Timestamp;

use crate::segment_data::SegmentData;
use crate::{LoadedSegment, QueryNode, QueryNodeError, visibility};

/// A graph search visits about `search_list` nodes; below this many
/// matching rows per visited node, scanning the matching rows is cheaper.
const EXACT_ROWS_PER_LIST_ENTRY: usize = 10;
/// Upper bound of the candidate list after widening for a filter.
const MAX_SEARCH_LIST: usize = 4096;

/// Combines visibility with the query's filter; `None` when every row passes.
fn allowed_rows(
    data: &SegmentData,
    visible: Option<Vec<bool>>,
    request: &VectorSearchRequest,
) -> Result<Option<Vec<bool>>, QueryNodeError> {
    let Some(filter) = &request.filter else {
        return Ok(visible);
    };
    let input = data.project(&filter.columns, None)?;
    let values = filter.predicate.evaluate(&input)?.into_array(data.rows)?;
    let matches = values.as_boolean_opt().ok_or_else(|| {
        QueryNodeError::Arrow(arrow::error::ArrowError::InvalidArgumentError(
            "filter is not a boolean expression".into(),
        ))
    })?;
    Ok(Some(
        (0..data.rows)
            .map(|i| {
                matches.is_valid(i) && matches.value(i) && visible.as_ref().is_none_or(|v| v[i])
            })
            .collect(),
    ))
}

/// What a search of one segment will do, decided before searching.
pub(crate) struct Decision {
    data: Arc<SegmentData>,
    allowed: Option<Arc<Vec<bool>>>,
    pub matching: usize,
    pub rows: usize,
    k: usize,
    /// `Some(candidate list)` for a graph search, `None` for exact.
    graph: Option<usize>,
}

impl Decision {
    pub fn strategy(&self) -> SearchStrategy {
        match self.graph {
            Some(search_list) => SearchStrategy::Index {
                search_list,
                filtered: self.allowed.is_some(),
            },
            None => SearchStrategy::Exact,
        }
    }
}

pub(crate) async fn decide(
    node: &QueryNode,
    seg: &LoadedSegment,
    has_index: bool,
    ts: Timestamp,
    deletes: &[DeleteLogEntry],
    request: &VectorSearchRequest,
) -> Result<Decision, ApiError> {
    let data = node.data(seg).await?;
    let rows = data.rows;
    let visible = visibility(&seg.meta, &data, ts, deletes);
    let allowed = allowed_rows(&data, visible, request)?;
    let matching = allowed
        .as_ref()
        .map_or(rows, |a| a.iter().filter(|x| **x).count());
    let search_list = request.search_list.max(request.k);
    let widened = if matching < rows && matching > 0 {
        (search_list.saturating_mul(rows).div_ceil(matching)).min(MAX_SEARCH_LIST)
    } else {
        search_list
    };
    let graph = (has_index && matching > widened.saturating_mul(EXACT_ROWS_PER_LIST_ENTRY))
        .then_some(widened);
    Ok(Decision {
        data,
        allowed: allowed.map(Arc::new),
        matching,
        rows,
        k: request.k.min(matching),
        graph,
    })
}

pub(crate) async fn search_segment(
    node: &QueryNode,
    seg: &LoadedSegment,
    index: Option<SegmentIndexMeta>,
    ts: Timestamp,
    deletes: &[DeleteLogEntry],
    request: &VectorSearchRequest,
) -> Result<SegmentSearchResult, ApiError> {
    let Decision {
        data,
        allowed,
        matching,
        k,
        graph,
        ..
    } = decide(node, seg, index.is_some(), ts, deletes, request).await?;
    if k == 0 {
        return Ok(SegmentSearchResult {
            rows: result_rows(&data, request, Vec::new())?,
            strategy: SearchStrategy::Exact,
            matching: 0,
        });
    }
    let mut found: Option<Vec<(u32, f32)>> = None;
    let mut strategy = SearchStrategy::Exact;
    if let (Some(widened), Some(manifest)) = (graph, &index) {
        let open = node
            .cache()
            .open_index(manifest, request.metric)
            .await
            .map_err(ApiError::from)?;
        let query = request.query.clone();
        let filtered = allowed.is_some();
        let allowed = allowed.clone();
        let graph_search = move || {
            let to_row = |id: u32| -> u32 {
                match &open.row_map {
                    Some(map) => map.get(id as usize).copied().unwrap_or(u32::MAX),
                    None => id,
                }
            };
            let pass = |id: u32| {
                let row = to_row(id) as usize;
                allowed
                    .as_ref()
                    .is_none_or(|a| a.get(row).copied().unwrap_or(false))
            };
            let filter: Option<&(dyn Fn(u32) -> bool + Send + Sync)> =
                if allowed.is_some() { Some(&pass) } else { None };
            let hits = open.searcher.search(&query, k, widened, filter)?;
            Ok::<_, QueryNodeError>(
                hits.into_iter()
                    .map(|(id, distance)| (to_row(id), distance))
                    .collect::<Vec<_>>(),
            )
        };
        // Never on a runtime thread: the searcher blocks on a runtime of
        // its own.
        let ids = tokio::task::spawn_blocking(graph_search)
            .await
            .map_err(QueryNodeError::from)??;
        if ids.len() >= k {
            strategy = SearchStrategy::Index {
                search_list: widened,
                filtered,
            };
            found = Some(ids);
        } else {
            strategy = SearchStrategy::IndexThenExact;
        }
    }
    let hits = match found {
        Some(hits) => hits,
        None => {
            let data = data.clone();
            let column = request.column;
            let (metric, query) = (request.metric, request.query.clone());
            tokio::task::spawn_blocking(move || {
                // Only the matching rows' vectors are read (from disk when
                // the segment's vectors live there).
                let candidates: Option<Vec<u32>> = allowed.as_ref().map(|a| {
                    a.iter()
                        .enumerate()
                        .filter(|(_, x)| **x)
                        .map(|(i, _)| i as u32)
                        .collect()
                });
                data.exact_top_k(column, candidates.as_deref(), metric, &query, k)
            })
            .await
            .map_err(QueryNodeError::from)??
        }
    };
    Ok(SegmentSearchResult {
        rows: result_rows(&data, request, hits)?,
        strategy,
        matching: matching as u64,
    })
}

/// The rows of `hits`, shaped as the request asks: every user column, or
/// its projection followed by the hits' distances.
fn result_rows(
    data: &SegmentData,
    request: &VectorSearchRequest,
    hits: Vec<(u32, f32)>,
) -> Result<arrow::record_batch::RecordBatch, QueryNodeError> {
    let (rows, distances): (Vec<u32>, Vec<f32>) = hits.into_iter().unzip();
    Ok(match &request.projection_with_distance {
        None => data.project(&data.all_columns(), Some(&rows))?,
        Some(columns) => {
            quiver_api::with_distance_column(data.project(columns, Some(&rows))?, distances)?
        }
    })
}
