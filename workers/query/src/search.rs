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

use arrow::array::{Array, AsArray, FixedSizeListArray, RecordBatch, UInt32Array};
use quiver_api::{ApiError, SearchStrategy, SegmentSearchResult, StatusCode, VectorSearchRequest};
use quiver_index::exact_top_k;
use quiver_segment::{DeleteLogEntry, SegmentIndexMeta};
use quiver_types::Timestamp;

use crate::{LoadedSegment, QueryNode, QueryNodeError, user_columns, visibility};

/// A graph search visits about `search_list` nodes; below this many
/// matching rows per visited node, scanning the matching rows is cheaper.
const EXACT_ROWS_PER_LIST_ENTRY: usize = 10;
/// Upper bound of the candidate list after widening for a filter.
const MAX_SEARCH_LIST: usize = 4096;

/// Combines visibility with the query's filter; `None` when every row passes.
fn allowed_rows(
    user: &RecordBatch,
    visible: Option<Vec<bool>>,
    request: &VectorSearchRequest,
) -> Result<Option<Vec<bool>>, QueryNodeError> {
    let Some(filter) = &request.filter else {
        return Ok(visible);
    };
    let values = filter.evaluate(user)?.into_array(user.num_rows())?;
    let matches = values.as_boolean_opt().ok_or_else(|| {
        QueryNodeError::Arrow(arrow::error::ArrowError::InvalidArgumentError(
            "filter is not a boolean expression".into(),
        ))
    })?;
    Ok(Some(
        (0..user.num_rows())
            .map(|i| {
                matches.is_valid(i) && matches.value(i) && visible.as_ref().is_none_or(|v| v[i])
            })
            .collect(),
    ))
}

pub(crate) async fn search_segment(
    node: &QueryNode,
    seg: &LoadedSegment,
    index: Option<SegmentIndexMeta>,
    ts: Timestamp,
    deletes: &[DeleteLogEntry],
    request: &VectorSearchRequest,
) -> Result<SegmentSearchResult, ApiError> {
    let batch = node.data(seg).await?;
    let user = user_columns(&batch)?;
    let rows = user.num_rows();
    let visible = visibility(&seg.meta, &batch, ts, deletes)?;
    let allowed = allowed_rows(&user, visible, request)?;
    let matching = allowed
        .as_ref()
        .map_or(rows, |a| a.iter().filter(|x| **x).count());
    let k = request.k.min(matching);
    if k == 0 {
        return Ok(SegmentSearchResult {
            rows: user.slice(0, 0),
            strategy: SearchStrategy::Exact,
            matching: 0,
        });
    }
    let search_list = request.search_list.max(request.k);
    let widened = if matching < rows {
        ((search_list * rows).div_ceil(matching)).min(MAX_SEARCH_LIST)
    } else {
        search_list
    };
    let allowed = allowed.map(Arc::new);
    let use_index = index.is_some() && matching > widened * EXACT_ROWS_PER_LIST_ENTRY;

    let mut found: Option<Vec<u32>> = None;
    let mut strategy = SearchStrategy::Exact;
    if let (true, Some(manifest)) = (use_index, &index) {
        let open = node
            .cache()
            .open_index(manifest, request.metric)
            .await
            .map_err(ApiError::from)?;
        let query = request.query.clone();
        let filtered = allowed.is_some();
        let allowed = allowed.clone();
        let ids = tokio::task::spawn_blocking(move || {
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
                    .map(|(id, _)| to_row(id))
                    .collect::<Vec<u32>>(),
            )
        })
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
    let ids = match found {
        Some(ids) => ids,
        None => {
            let user = user.clone();
            let column = request.column;
            let (metric, query) = (request.metric, request.query.clone());
            tokio::task::spawn_blocking(move || {
                let vectors = user
                    .column(column)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::Internal, "search column is not a vector")
                    })?;
                let hits = exact_top_k(vectors, metric, &query, k, |r| {
                    allowed.as_ref().is_none_or(|a| a[r])
                })
                .map_err(|e| ApiError::from_error(StatusCode::InvalidData, &e))?;
                Ok::<_, ApiError>(hits.into_iter().map(|(r, _)| r).collect())
            })
            .await
            .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))??
        }
    };
    let rows = arrow::compute::take_record_batch(&user, &UInt32Array::from(ids))
        .map_err(|e| ApiError::from_error(StatusCode::Internal, &e))?;
    Ok(SegmentSearchResult {
        rows,
        strategy,
        matching: matching as u64,
    })
}
