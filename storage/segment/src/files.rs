use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type, UInt64Type};
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use quiver_types::{SegmentId, ShardId, TableId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::SegmentError;

/// Where sealed segments and delete logs live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ObjectStoreConfig {
    /// A directory on the local file system (standalone default: `DATA_DIR/objects`).
    Local { root: PathBuf },
    /// An S3-compatible bucket (AWS S3, or any server speaking its API).
    S3(S3Config),
}

/// An S3 bucket: where it is and how to sign requests to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), which servers other
    /// than AWS usually need; virtual-hosted style when false.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint (local servers).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_true() -> bool {
    true
}

pub fn open_object_store(config: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, SegmentError> {
    match config {
        ObjectStoreConfig::Local { root } => {
            std::fs::create_dir_all(root).map_err(|e| {
                SegmentError::Config(format!("cannot create {}: {e}", root.display()))
            })?;
            let fs = LocalFileSystem::new_with_prefix(root)?;
            // The prefix as the store resolves it, so paths compare.
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            Ok(Arc::new(crate::DurableLocalStore::new(fs, root)))
        }
        ObjectStoreConfig::S3(s3) => {
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_access_key_id(&s3.access_key_id)
                .with_secret_access_key(&s3.secret_access_key)
                .with_virtual_hosted_style_request(!s3.path_style)
                .with_allow_http(s3.allow_http);
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            Ok(Arc::new(builder.build()?))
        }
    }
}

/// The manifest entry of a sealed segment, kept in the meta store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: SegmentId,
    pub table: TableId,
    pub shard: ShardId,
    pub rows: u64,
    pub bytes: u64,
    pub path: String,
    pub max_ts: Timestamp,
    /// Delete-log object paths, oldest first.
    pub delete_logs: Vec<String>,
}

pub fn segment_path(table: TableId, segment: SegmentId) -> String {
    format!("tables/{table}/segments/{segment}/data.parquet")
}

pub fn delete_log_path(table: TableId, segment: SegmentId, flush_ts: Timestamp) -> String {
    format!(
        "tables/{table}/segments/{segment}/deletes-{:020}.parquet",
        flush_ts.0
    )
}

/// Snappy and dictionaries for scalar columns. Vector columns (lists of
/// floats) are written plain: embedding floats neither compress nor repeat,
/// so compressing them, building a dictionary of them and keeping per-page
/// min/max of them cost a sealing segment CPU for nothing.
fn writer_props(schema: &Schema) -> WriterProperties {
    let mut builder = WriterProperties::builder().set_compression(Compression::SNAPPY);
    for field in schema.fields() {
        let leaf = match field.data_type() {
            DataType::FixedSizeList(item, _) | DataType::List(item) => ColumnPath::new(vec![
                field.name().clone(),
                "list".to_string(),
                item.name().clone(),
            ]),
            // Vectors as stored (see `vector_column`).
            DataType::FixedSizeBinary(_) => ColumnPath::new(vec![field.name().clone()]),
            _ => continue,
        };
        builder = builder
            .set_column_compression(leaf.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(leaf.clone(), false)
            .set_column_statistics_enabled(leaf, EnabledStatistics::None);
    }
    builder.build()
}

/// Writes `batch` as one Parquet object; returns its size in bytes.
pub async fn write_parquet(
    store: &dyn ObjectStore,
    path: &str,
    batch: &RecordBatch,
) -> Result<u64, SegmentError> {
    write_parquet_batches(store, path, batch.schema(), vec![batch.clone()]).await
}

/// Writes `batches` (one schema) as one Parquet object, in order, without
/// concatenating them first; returns its size in bytes. Encoding is CPU
/// work of tens of milliseconds per segment, so it runs on a blocking
/// thread, off the threads serving connections.
pub async fn write_parquet_batches(
    store: &dyn ObjectStore,
    path: &str,
    schema: Arc<Schema>,
    batches: Vec<RecordBatch>,
) -> Result<u64, SegmentError> {
    let buf = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, SegmentError> {
        let size: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
        let mut buf = Vec::with_capacity(size / 2 + 1024);
        let (stored, flat) = crate::vector_column::storage_schema(&schema, &batches);
        let props = writer_props(&stored);
        let mut writer = ArrowWriter::try_new(&mut buf, stored.clone(), Some(props))?;
        for batch in &batches {
            writer.write(&crate::vector_column::to_storage(batch, &stored, &flat)?)?;
        }
        writer.close()?;
        Ok(buf)
    })
    .await
    .map_err(|e| SegmentError::Config(format!("Parquet encoding task failed: {e}")))??;
    let len = buf.len() as u64;
    store
        .put(&Path::from(path), PutPayload::from(Bytes::from(buf)))
        .await?;
    Ok(len)
}

/// Reads a whole Parquet object (Parquet keeps the Arrow schema and its
/// field metadata).
pub async fn read_parquet(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<Vec<RecordBatch>, SegmentError> {
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(64 * 1024)
        .build()?;
    reader
        .map(|b| Ok(crate::vector_column::from_storage(b?)?))
        .collect()
}

/// Reads only the given top-level columns (e.g. the primary key) of a
/// Parquet object, in file order. Only those columns' bytes are fetched (by
/// range requests), not the object: reading a segment's keys at start-up
/// must not hold its vectors in memory.
pub async fn read_parquet_columns(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    columns: &[usize],
) -> Result<Vec<RecordBatch>, SegmentError> {
    use futures::TryStreamExt;
    use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    let path = Path::from(path);
    let size = store.head(&path).await?.size;
    let reader = RangeReader {
        store: store.clone(),
        path,
        size,
    };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
    let stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?;
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    batches
        .into_iter()
        .map(|b| Ok(crate::vector_column::from_storage(b)?))
        .collect()
}

/// Parquet's async reader over an object: footer and column chunks by range
/// requests. (parquet's own `ParquetObjectReader` is deprecated in favour of
/// implementing `AsyncFileReader`, which this is.)
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl parquet::arrow::async_reader::AsyncFileReader for RangeReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// A segment object copied once into a local file and decoded from there
/// column by column in batches: a reader handles a large column piecewise,
/// and memory holds one batch at a time instead of the whole object (a
/// 100,000 x 384 segment is ~150 MiB). The file is removed on drop.
pub struct ParquetObject {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The footer, parsed once for every column read.
    metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
}

impl ParquetObject {
    /// Streams the object at `path` into `local` (overwritten).
    pub async fn download(
        store: &dyn ObjectStore,
        path: &str,
        local: &std::path::Path,
    ) -> Result<Self, SegmentError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let io = |source| SegmentError::LocalCopy {
            path: local.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::File::create(local).await.map_err(io)?;
        let mut stream = store.get(&Path::from(path)).await?.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        drop(out);
        let file = std::fs::File::open(local).map_err(io)?;
        let metadata =
            parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())?;
        Ok(ParquetObject {
            file,
            path: local.to_path_buf(),
            metadata,
        })
    }

    fn reader(&self) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>, SegmentError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| SegmentError::LocalCopy {
                path: self.path.clone(),
                source,
            })?;
        Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(
            file,
            self.metadata.clone(),
        ))
    }

    /// The given top-level columns, `batch_rows` rows at a time.
    pub fn columns(
        &self,
        columns: &[usize],
        batch_rows: usize,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, SegmentError>>, SegmentError> {
        let builder = self.reader()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()?;
        Ok(reader.map(|b| Ok(crate::vector_column::from_storage(b?)?)))
    }

    /// The Arrow schema of the object's rows (as read, not as stored).
    pub fn schema(&self) -> Result<arrow::datatypes::SchemaRef, SegmentError> {
        Ok(crate::vector_column::restored_schema(
            self.metadata.schema(),
        ))
    }
}

impl Drop for ParquetObject {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing a segment's local copy failed");
        }
    }
}

/// A row of a sealed segment deleted at a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeleteLogEntry {
    pub row: u32,
    pub ts: Timestamp,
}

fn delete_log_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt32, false),
        Field::new("ts", DataType::UInt64, false),
    ]))
}

pub async fn write_delete_log(
    store: &dyn ObjectStore,
    path: &str,
    entries: &[DeleteLogEntry],
) -> Result<u64, SegmentError> {
    let rows: ArrayRef = Arc::new(UInt32Array::from_iter_values(entries.iter().map(|e| e.row)));
    let ts: ArrayRef = Arc::new(UInt64Array::from_iter_values(
        entries.iter().map(|e| e.ts.0),
    ));
    let batch = RecordBatch::try_new(delete_log_schema(), vec![rows, ts])?;
    write_parquet(store, path, &batch).await
}

pub async fn read_delete_log(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<Vec<DeleteLogEntry>, SegmentError> {
    let mut out = Vec::new();
    for batch in read_parquet(store, path).await? {
        let rows = batch.column(0).as_primitive::<UInt32Type>();
        let ts = batch.column(1).as_primitive::<UInt64Type>();
        out.extend(
            rows.values()
                .iter()
                .zip(ts.values().iter())
                .map(|(&row, &ts)| DeleteLogEntry {
                    row,
                    ts: Timestamp(ts),
                }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    /// A local store in a fresh directory (kept alive by the returned guard).
    fn local_store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_object_store(&ObjectStoreConfig::Local {
            root: dir.path().to_path_buf(),
        })
        .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn parquet_and_delete_logs_round_trip() {
        let (dir, store) = local_store();
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .unwrap();
        let path = segment_path(TableId(1), SegmentId(2));
        assert!(write_parquet(store.as_ref(), &path, &batch).await.unwrap() > 0);
        let back = read_parquet(store.as_ref(), &path).await.unwrap();
        assert_eq!(back[0], batch);
        let keys = read_parquet_columns(&store, &path, &[0]).await.unwrap();
        assert_eq!(keys[0].num_columns(), 1);
        assert_eq!(keys[0].num_rows(), 3);
        let entries = vec![DeleteLogEntry {
            row: 2,
            ts: Timestamp(77),
        }];
        let dpath = delete_log_path(TableId(1), SegmentId(2), Timestamp(80));
        write_delete_log(store.as_ref(), &dpath, &entries)
            .await
            .unwrap();
        assert_eq!(
            read_delete_log(store.as_ref(), &dpath).await.unwrap(),
            entries
        );
    }

    #[tokio::test]
    async fn vector_columns_are_written_plain_and_scalars_compressed() {
        use arrow::array::{FixedSizeListArray, Float32Array, StringArray};
        use parquet::basic::Encoding;
        use parquet::file::reader::FileReader;
        let (dir, store) = local_store();
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let values = Float32Array::from((0..300).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
        let vectors = FixedSizeListArray::new(item, 3, Arc::new(values), None);
        let names = StringArray::from((0..100).map(|i| ["a", "b"][i % 2]).collect::<Vec<_>>());
        let batch = RecordBatch::try_from_iter([
            ("name", Arc::new(names) as ArrayRef),
            ("embedding", Arc::new(vectors) as ArrayRef),
        ])
        .unwrap();
        let path = segment_path(TableId(1), SegmentId(3));
        write_parquet(store.as_ref(), &path, &batch).await.unwrap();
        let bytes = store
            .get(&Path::from(path.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes).unwrap();
        let group = reader.metadata().row_group(0);
        let (name, embedding) = (group.column(0), group.column(1));
        // One flat fixed-length value per row (see `vector_column`).
        assert_eq!(embedding.column_path().string(), "embedding");
        assert_eq!(
            embedding.column_type(),
            parquet::basic::Type::FIXED_LEN_BYTE_ARRAY
        );
        assert_eq!(embedding.compression(), Compression::UNCOMPRESSED);
        assert!(!embedding.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
        assert!(embedding.statistics().is_none());
        assert_eq!(name.compression(), Compression::SNAPPY);
        assert!(name.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
        assert_eq!(read_parquet(store.as_ref(), &path).await.unwrap()[0], batch);
    }

    fn vectors(dim: i32, rows: &[Option<Vec<f32>>], item_nullable: bool) -> ArrayRef {
        use arrow::array::{FixedSizeListArray, Float32Array};
        use arrow::buffer::NullBuffer;
        let item = Arc::new(Field::new_list_field(DataType::Float32, item_nullable));
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.clone().unwrap_or_else(|| vec![0.0; dim as usize]))
            .collect();
        let nulls = NullBuffer::from(rows.iter().map(|r| r.is_some()).collect::<Vec<_>>());
        Arc::new(FixedSizeListArray::new(
            item,
            dim,
            Arc::new(Float32Array::from(values)),
            Some(nulls),
        ))
    }

    #[tokio::test]
    async fn vector_columns_round_trip_with_nulls_slices_and_metadata() {
        let (dir, store) = local_store();
        let rows: Vec<Option<Vec<f32>>> = (0..50)
            .map(|i| (i % 7 != 3).then(|| vec![i as f32, -(i as f32) * 0.25, f32::MIN_POSITIVE]))
            .collect();
        let field = Field::new(
            "v",
            DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), 3),
            true,
        )
        .with_metadata(std::collections::HashMap::from([(
            "pg".to_string(),
            "vector".to_string(),
        )]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            field,
        ]));
        let ids: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..50));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![ids, vectors(3, &rows, true)]).unwrap();
        // Two batches, the second a slice: offsets must not leak into the file.
        let parts = vec![batch.slice(0, 20), batch.slice(20, 30)];
        let path = segment_path(TableId(1), SegmentId(4));
        write_parquet_batches(store.as_ref(), &path, schema.clone(), parts)
            .await
            .unwrap();
        let back = read_parquet(store.as_ref(), &path).await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], batch, "same schema (metadata included) and values");
        let only_vectors = read_parquet_columns(&store, &path, &[1]).await.unwrap();
        assert_eq!(only_vectors[0].column(0), batch.column(1));
        let object = ParquetObject::download(store.as_ref(), &path, &dir.path().join("local"))
            .await
            .unwrap();
        assert_eq!(object.schema().unwrap(), schema);
        let streamed: Vec<RecordBatch> = object
            .columns(&[0, 1], 16)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(streamed.len(), 4);
        assert_eq!(
            arrow::compute::concat_batches(&schema, &streamed).unwrap(),
            batch
        );
    }

    #[tokio::test]
    async fn segments_written_as_plain_lists_still_read() {
        // The layout before vectors were stored as fixed-size binary.
        let (dir, store) = local_store();
        let rows: Vec<Option<Vec<f32>>> = (0..10).map(|i| Some(vec![i as f32, 1.0])).collect();
        let batch = RecordBatch::try_from_iter([("v", vectors(2, &rows, false))]).unwrap();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let path = segment_path(TableId(1), SegmentId(5));
        store
            .put(&Path::from(path.as_str()), PutPayload::from(buf))
            .await
            .unwrap();
        assert_eq!(read_parquet(store.as_ref(), &path).await.unwrap()[0], batch);
    }
}
