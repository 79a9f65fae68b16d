use serde::{Deserialize, Serialize};

/// How vector distance is measured: pgvector's operator classes and the
/// operators that order by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorMetric {
    /// `vector_l2_ops`, `<->` (`l2_distance`).
    L2,
    /// `vector_ip_ops`, `<#>` (`negative_inner_product`).
    InnerProduct,
    /// `vector_cosine_ops`, `<=>` (`cosine_distance`).
    Cosine,
}

impl VectorMetric {
    /// The pgvector operator class naming this metric.
    pub fn opclass(self) -> &'static str {
        match self {
            VectorMetric::L2 => "vector_l2_ops",
            VectorMetric::InnerProduct => "vector_ip_ops",
            VectorMetric::Cosine => "vector_cosine_ops",
        }
    }

    pub fn from_opclass(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "vector_l2_ops" => Some(VectorMetric::L2),
            "vector_ip_ops" => Some(VectorMetric::InnerProduct),
            "vector_cosine_ops" => Some(VectorMetric::Cosine),
            _ => None,
        }
    }

    /// The distance function an `ORDER BY col <op> q` sorts by.
    pub fn from_function(name: &str) -> Option<Self> {
        match name {
            "l2_distance" => Some(VectorMetric::L2),
            "negative_inner_product" => Some(VectorMetric::InnerProduct),
            "cosine_distance" => Some(VectorMetric::Cosine),
            _ => None,
        }
    }

    pub fn operator(self) -> &'static str {
        match self {
            VectorMetric::L2 => "<->",
            VectorMetric::InnerProduct => "<#>",
            VectorMetric::Cosine => "<=>",
        }
    }
}

/// Sums `f(a[i], b[i])` with independent accumulators. A plain
/// `iter().sum()` is a serial dependency chain the compiler may not reorder
/// (float addition is not associative); separate lanes let it use SIMD.
#[inline]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += f(ca[i], cb[i]);
        }
    }
    let mut total: f32 = acc.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        total += f(*x, *y);
    }
    total
}

/// Squared Euclidean distance (the kernels every distance is built from;
/// shared by SQL functions and exact search so both rank alike).
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| (x - y) * (x - y))
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| x * y)
}

pub fn l1(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| (x - y).abs())
}
