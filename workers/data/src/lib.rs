//! The data node: background work on sealed segments. Today that is
//! building a segment's DiskANN index: read the vector column from the
//! segment's Parquet object, build the disk index in a scratch directory on
//! blocking threads, upload the files beside the segment in the object store
//! and return their manifest. The coordinator decides what to build and
//! records the result. It also does the merge step of compactions: reading
//! a shard's sealed segments, leaving out long-deleted rows, writing the
//! merged segment. The data node keeps no state of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BooleanArray, FixedSizeListArray};
use arrow::compute::{concat_batches, filter_record_batch};
use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use quiver_api::{
    ApiError, ApiResult, CompactionOutput, CompactionTask, DataApi, IndexBuildTask, StatusCode,
};
use quiver_index::{DiskAnnParams, build_disk_index, index_files};
use quiver_segment::{
    IndexFile, ROW_MAP_FILE, SegmentIndexMeta, SegmentMeta, read_parquet, read_parquet_columns,
    segment_index_prefix, segment_path, write_parquet,
};
use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum DataNodeError {
    #[error("reading segment {path}")]
    ReadSegment {
        path: String,
        #[source]
        source: quiver_segment::SegmentError,
    },
    #[error("segment column {0} is not a vector column")]
    NotVector(usize),
    #[error("index build failed")]
    Build(#[from] quiver_index::IndexError),
    #[error("index build task panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
    #[error("scratch directory I/O ({context})")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing segment {path}")]
    WriteSegment {
        path: String,
        #[source]
        source: quiver_segment::SegmentError,
    },
    #[error("compaction of no segments")]
    EmptyCompaction,
    #[error("merging segments")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("uploading index file {path}")]
    Upload {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

impl From<DataNodeError> for ApiError {
    fn from(e: DataNodeError) -> Self {
        let code = match &e {
            DataNodeError::NotVector(_) | DataNodeError::EmptyCompaction => {
                StatusCode::InvalidRequest
            }
            DataNodeError::Arrow(_) => StatusCode::Internal,
            DataNodeError::Build(_) | DataNodeError::Join(_) => StatusCode::Internal,
            _ => StatusCode::StorageFailure,
        };
        ApiError::from_error(code, &e)
    }
}

#[derive(Debug, Clone)]
pub struct DataNodeOptions {
    /// Scratch space for builds (emptied at start).
    pub scratch_dir: PathBuf,
    /// Threads one build may use.
    pub build_threads: usize,
}

pub struct DataNode {
    store: Arc<dyn ObjectStore>,
    options: DataNodeOptions,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DataNodeError {
    let context = context.into();
    move |source| DataNodeError::Io { context, source }
}

impl DataNode {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        options: DataNodeOptions,
    ) -> Result<Self, DataNodeError> {
        // Leftovers of builds interrupted by a crash are useless.
        if options.scratch_dir.exists() {
            std::fs::remove_dir_all(&options.scratch_dir).map_err(io("clear scratch"))?;
        }
        std::fs::create_dir_all(&options.scratch_dir).map_err(io("create scratch"))?;
        Ok(DataNode { store, options })
    }

    /// The segment's vectors as one flat array, and the rows they came from
    /// when some rows are NULL.
    async fn read_vectors(
        &self,
        task: &IndexBuildTask,
    ) -> Result<(Vec<f32>, Option<Vec<u32>>), DataNodeError> {
        let path = &task.segment.path;
        let batches = read_parquet_columns(&self.store, path, &[task.column_index])
            .await
            .map_err(|source| DataNodeError::ReadSegment {
                path: path.clone(),
                source,
            })?;
        let mut vectors = Vec::with_capacity(task.segment.rows as usize * task.dim);
        let mut rows = Vec::new();
        let mut any_null = false;
        let mut row = 0u32;
        for batch in &batches {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .ok_or(DataNodeError::NotVector(task.column_index))?;
            let (values, dim) = quiver_index::exact::vector_values(column)?;
            for (i, v) in values.chunks_exact(dim).enumerate() {
                if column.is_null(i) {
                    any_null = true;
                } else {
                    vectors.extend_from_slice(v);
                    rows.push(row);
                }
                row += 1;
            }
        }
        Ok((vectors, any_null.then_some(rows)))
    }

    async fn upload(&self, local: &std::path::Path, path: &Path) -> Result<u64, DataNodeError> {
        let upload_err = |source| DataNodeError::Upload {
            path: path.to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(io(format!("open {}", local.display())))?;
        let mut upload = object_store::WriteMultipart::new(
            self.store.put_multipart(path).await.map_err(upload_err)?,
        );
        let mut buf = vec![0u8; 8 << 20];
        let mut total = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(io(format!("read {}", local.display())))?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n]);
            total += n as u64;
        }
        upload.finish().await.map_err(upload_err)?;
        Ok(total)
    }

    async fn build(&self, task: IndexBuildTask) -> Result<SegmentIndexMeta, DataNodeError> {
        let started = Instant::now();
        let (vectors, row_map) = self.read_vectors(&task).await?;
        let prefix = segment_index_prefix(task.segment.table, task.segment.id, task.index.id);
        let indexed = (vectors.len() / task.dim.max(1)) as u64;
        let scratch = self
            .options
            .scratch_dir
            .join(format!("{}-{}", task.segment.id, task.index.id));
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(io("clear build dir"))?;
        }
        std::fs::create_dir_all(&scratch).map_err(io("create build dir"))?;
        let result = self
            .build_and_upload(&task, vectors, row_map, &scratch, &prefix)
            .await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %e, "could not remove build directory");
        }
        let (files, has_row_map) = result?;
        Ok(SegmentIndexMeta {
            table: task.segment.table,
            segment: task.segment.id,
            index: task.index.id,
            prefix,
            files,
            rows: indexed,
            has_row_map,
            build_ms: started.elapsed().as_millis() as u64,
            built_at_ms: 0,
        })
    }

    async fn build_and_upload(
        &self,
        task: &IndexBuildTask,
        vectors: Vec<f32>,
        row_map: Option<Vec<u32>>,
        scratch: &std::path::Path,
        prefix: &str,
    ) -> Result<(Vec<IndexFile>, bool), DataNodeError> {
        let mut params = DiskAnnParams::new(task.index.def.metric, task.dim);
        let p = task.index.def.params;
        params.max_degree = p.max_degree.max(4);
        params.build_search_list = p.build_search_list.max(params.max_degree);
        if p.pq_bytes > 0 {
            params.pq_bytes = p.pq_bytes.min(task.dim);
        }
        params.threads = self.options.build_threads.max(1);
        let dim = task.dim;
        let dir = scratch.to_path_buf();
        tokio::task::spawn_blocking(move || build_disk_index(&vectors, dim, &params, &dir))
            .await??;
        let mut names: Vec<String> = index_files().to_vec();
        if let Some(rows) = &row_map {
            let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
            std::fs::write(scratch.join(ROW_MAP_FILE), bytes).map_err(io("write row map"))?;
            names.push(ROW_MAP_FILE.to_string());
        }
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let bytes = self
                .upload(
                    &scratch.join(&name),
                    &Path::from(format!("{prefix}/{name}")),
                )
                .await?;
            files.push(IndexFile { name, bytes });
        }
        Ok((files, row_map.is_some()))
    }
}

impl DataNode {
    async fn merge(&self, task: CompactionTask) -> Result<CompactionOutput, DataNodeError> {
        let first = task
            .segments
            .first()
            .ok_or(DataNodeError::EmptyCompaction)?
            .clone();
        let mut kept = Vec::with_capacity(task.segments.len());
        let mut row_maps = Vec::with_capacity(task.segments.len());
        let mut next = 0u32;
        let mut schema = None;
        for (seg, drop) in task.segments.iter().zip(&task.drop_rows) {
            let batches = read_parquet(self.store.as_ref(), &seg.path)
                .await
                .map_err(|source| DataNodeError::ReadSegment {
                    path: seg.path.clone(),
                    source,
                })?;
            let mut map = Vec::with_capacity(seg.rows as usize);
            let mut drop = drop.iter().peekable();
            let mut row = 0u32;
            for batch in batches {
                schema.get_or_insert_with(|| batch.schema());
                let keep: BooleanArray = (0..batch.num_rows())
                    .map(|_| {
                        let dropped = drop.next_if_eq(&&row).is_some();
                        row += 1;
                        if dropped {
                            map.push(u32::MAX);
                        } else {
                            map.push(next);
                            next += 1;
                        }
                        Some(!dropped)
                    })
                    .collect();
                kept.push(filter_record_batch(&batch, &keep)?);
            }
            row_maps.push(map);
        }
        let (Some(schema), true) = (schema, next > 0) else {
            return Ok(CompactionOutput {
                segment: None,
                row_maps,
            });
        };
        let merged = concat_batches(&schema, &kept)?;
        let path = segment_path(first.table, task.new_segment);
        let bytes = write_parquet(self.store.as_ref(), &path, &merged)
            .await
            .map_err(|source| DataNodeError::WriteSegment {
                path: path.clone(),
                source,
            })?;
        let max_ts = task
            .segments
            .iter()
            .map(|s| s.max_ts)
            .max()
            .unwrap_or_default();
        Ok(CompactionOutput {
            segment: Some(SegmentMeta {
                id: task.new_segment,
                table: first.table,
                shard: first.shard,
                rows: merged.num_rows() as u64,
                bytes,
                path,
                max_ts,
                delete_logs: Vec::new(),
            }),
            row_maps,
        })
    }
}

#[async_trait]
impl DataApi for DataNode {
    async fn compact(&self, task: CompactionTask) -> ApiResult<CompactionOutput> {
        let inputs: Vec<String> = task.segments.iter().map(|s| s.id.to_string()).collect();
        let output = self.merge(task).await?;
        tracing::info!(
            inputs = ?inputs,
            output = ?output.segment.as_ref().map(|s| (s.id.to_string(), s.rows)),
            "segments compacted"
        );
        Ok(output)
    }

    async fn build_index(
        &self,
        task: IndexBuildTask,
    ) -> ApiResult<quiver_segment::SegmentIndexMeta> {
        let (segment, index) = (task.segment.id, task.index.id);
        tracing::info!(segment = %segment, index = %index, rows = task.segment.rows, "building segment index");
        Ok(self.build(task).await?)
    }
}
