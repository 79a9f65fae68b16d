use quiver_types::{IndexId, SegmentId, TableId};
use serde::{Deserialize, Serialize};

/// One file of a built segment index, as stored in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexFile {
    pub name: String,
    pub bytes: u64,
}

/// The manifest of one index built over one sealed segment, kept in the
/// meta store; its files live under `prefix` in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentIndexMeta {
    pub table: TableId,
    pub segment: SegmentId,
    pub index: IndexId,
    /// Object-store directory holding `files`.
    pub prefix: String,
    pub files: Vec<IndexFile>,
    /// Vectors in the index (the segment's rows with a non-NULL vector).
    pub rows: u64,
    /// When some rows have NULL vectors, graph ids are positions among the
    /// non-NULL rows and `ROW_MAP_FILE` maps them back to segment rows.
    pub has_row_map: bool,
    pub build_ms: u64,
    /// Unix milliseconds at which the build finished.
    pub built_at_ms: u64,
}

impl SegmentIndexMeta {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Little-endian `u32` segment row per graph id, present only when needed.
pub const ROW_MAP_FILE: &str = "row_map.bin";

pub fn segment_index_prefix(table: TableId, segment: SegmentId, index: IndexId) -> String {
    format!("tables/{table}/segments/{segment}/index-{index}")
}
