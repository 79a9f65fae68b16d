//! Exact (brute-force) nearest-neighbour search: the path for growing rows,
//! segments without an index, and filters too selective for a graph search.
//! Distances follow pgvector's definitions so candidates are ranked the way
//! the SQL operator ranks them.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use arrow::array::{Array, FixedSizeListArray, Float32Array};
use quiver_types::VectorMetric;

use crate::IndexError;

pub use quiver_types::distance::{dot, l2_squared};

/// A distance that orders rows like the metric's SQL operator (`<->` is
/// compared squared, which preserves the order).
pub fn ordering_distance(metric: VectorMetric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        VectorMetric::L2 => l2_squared(a, b),
        VectorMetric::InnerProduct => -dot(a, b),
        VectorMetric::Cosine => {
            let denom = (dot(a, a) * dot(b, b)).sqrt();
            if denom == 0.0 {
                // pgvector returns NaN; NaN sorts last in PostgreSQL.
                f32::INFINITY
            } else {
                1.0 - (dot(a, b) / denom).clamp(-1.0, 1.0)
            }
        }
    }
}

/// Scales `v` to unit length (zero vectors stay zero).
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[derive(PartialEq)]
struct Candidate(f32, u32);

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The float values and dimension of a `vector` column.
pub fn vector_values(column: &FixedSizeListArray) -> Result<(&[f32], usize), IndexError> {
    let values = column
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| IndexError::Invalid("vector column is not float32".into()))?;
    let dim = column.value_length() as usize;
    // A sliced list array starts at its offset into the child values.
    let start = column.offset() * dim;
    Ok((&values.values()[start..start + column.len() * dim], dim))
}

/// The `k` rows of `column` nearest to `query` among those `allowed` (and
/// not NULL), nearest first, as `(row, ordering distance)`.
pub fn exact_top_k(
    column: &FixedSizeListArray,
    metric: VectorMetric,
    query: &[f32],
    k: usize,
    allowed: impl Fn(usize) -> bool,
) -> Result<Vec<(u32, f32)>, IndexError> {
    let (values, dim) = vector_values(column)?;
    if dim != query.len() {
        return Err(IndexError::Invalid(format!(
            "different vector dimensions {dim} and {}",
            query.len()
        )));
    }
    // Never reserve more than the rows there are: k comes from SQL's LIMIT.
    let mut heap: BinaryHeap<Candidate> =
        BinaryHeap::with_capacity(k.min(column.len()).saturating_add(1));
    if k == 0 {
        return Ok(Vec::new());
    }
    for (row, v) in values.chunks_exact(dim).enumerate() {
        if column.is_null(row) || !allowed(row) {
            continue;
        }
        let d = ordering_distance(metric, v, query);
        if heap.len() < k {
            heap.push(Candidate(d, row as u32));
        } else if let Some(top) = heap.peek()
            && d < top.0
        {
            heap.pop();
            heap.push(Candidate(d, row as u32));
        }
    }
    Ok(heap
        .into_sorted_vec()
        .into_iter()
        .map(|Candidate(d, r)| (r, d))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    fn column(rows: &[[f32; 2]]) -> FixedSizeListArray {
        let values = Float32Array::from(rows.iter().flatten().copied().collect::<Vec<_>>());
        FixedSizeListArray::new(
            Arc::new(Field::new("item", DataType::Float32, true)),
            2,
            Arc::new(values),
            None,
        )
    }

    #[test]
    fn top_k_respects_metric_and_filter() {
        let c = column(&[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.0, 2.0]]);
        let l2 = exact_top_k(&c, VectorMetric::L2, &[0.9, 0.0], 2, |_| true).unwrap();
        assert_eq!(l2.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 0]);
        let ip = exact_top_k(&c, VectorMetric::InnerProduct, &[1.0, 1.0], 1, |_| true).unwrap();
        assert_eq!(ip[0].0, 2);
        let filtered = exact_top_k(&c, VectorMetric::L2, &[0.9, 0.0], 2, |r| r != 1).unwrap();
        assert_eq!(filtered.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 3]);
        let sliced = c.slice(2, 2);
        let s = exact_top_k(&sliced, VectorMetric::L2, &[0.0, 2.0], 1, |_| true).unwrap();
        assert_eq!(s[0].0, 1, "row numbers are relative to the slice");
    }
}
