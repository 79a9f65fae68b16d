//! Vector indexes over sealed segments: DiskANN graphs whose files live on
//! local disk (a cache of the object store) and are searched with PQ codes
//! in RAM and the graph plus full vectors read from disk.
//!
//! This crate is the storage glue around Microsoft's `diskann` crates: it
//! builds a disk index from a segment's vectors into a directory, and opens
//! such a directory for search. The algorithm (Vamana graph, PQ, beam
//! search) is theirs. Searches and builds are synchronous and CPU-bound (the
//! searcher drives its own runtime), so async callers run them on blocking
//! threads.
//!
//! Row ids are the segment's row positions (`0..n`), so results map straight
//! back onto the segment.

mod disk;
pub mod exact;
mod reader;

pub use disk::{DiskAnnParams, DiskAnnSearcher, IndexMetric, build_disk_index, index_files};
pub use exact::exact_top_k;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("DiskANN failed: {0}")]
    DiskAnn(String),
    #[error("index I/O failed: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid index input: {0}")]
    Invalid(String),
}

impl From<diskann::ANNError> for IndexError {
    fn from(e: diskann::ANNError) -> Self {
        IndexError::DiskAnn(e.to_string())
    }
}
