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
