//! A loaded segment's columns. Scalar columns and insert timestamps stay in
//! memory; vector columns are moved to a local file of raw `f32`s and read
//! with `pread` (through the page cache) when rows are needed: search
//! results, exact searches (piece by piece), full scans. That keeps the
//! query node's memory at the scalars plus the indexes' PQ codes instead of
//! every vector, whether or not the segment has an index yet.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use quiver_segment::SegmentMeta;

use crate::QueryNodeError;

/// Raw vectors of one column: row `i` at byte `i * dim * 4`.
pub(crate) struct VectorFile {
    file: File,
    dim: usize,
    rows: usize,
    item: FieldRef,
    nulls: Option<NullBuffer>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> QueryNodeError + '_ {
    move |e| QueryNodeError::Cache {
        dir: path.to_path_buf(),
        source: e,
    }
}

/// The file holds little-endian `f32`s, which on little-endian machines are
/// the values' own bytes: written and read without a conversion copy.
fn write_f32s(out: &mut impl std::io::Write, values: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        out.write_all(bytemuck::cast_slice(values))
    } else {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&raw)
    }
}

fn read_f32s(file: &File, offset: u64, out: &mut [f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        file.read_exact_at(bytemuck::cast_slice_mut(out), offset)
    } else {
        let mut raw = vec![0u8; out.len() * 4];
        file.read_exact_at(&mut raw, offset)?;
        for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }
}

impl VectorFile {
    /// Writes a vector column arriving in batches to `path`, holding one
    /// batch at a time.
    fn stream(
        path: &Path,
        item: FieldRef,
        dim: usize,
        batches: impl Iterator<Item = Result<RecordBatch, quiver_segment::SegmentError>>,
    ) -> Result<Self, QueryNodeError> {
        use std::io::Write;
        let tmp = path.with_extension("partial");
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
        let mut validity = arrow::array::BooleanBufferBuilder::new(0);
        let mut any_null = false;
        let mut rows = 0usize;
        for batch in batches {
            let batch = batch.map_err(QueryNodeError::Segment)?;
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .ok_or_else(|| {
                    QueryNodeError::Arrow(arrow::error::ArrowError::SchemaError(
                        "vector column is not a fixed-size list".into(),
                    ))
                })?;
            let (values, _) = quiver_index::exact::vector_values(column)?;
            write_f32s(&mut out, values).map_err(io_err(&tmp))?;
            for i in 0..column.len() {
                let valid = column.is_valid(i);
                any_null |= !valid;
                validity.append(valid);
            }
            rows += column.len();
        }
        out.flush().map_err(io_err(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(VectorFile {
            file: File::open(path).map_err(io_err(path))?,
            dim,
            rows,
            item,
            nulls: any_null.then(|| NullBuffer::new(validity.finish())),
        })
    }

    fn array(&self, values: Vec<f32>, nulls: Option<NullBuffer>) -> FixedSizeListArray {
        FixedSizeListArray::new(
            self.item.clone(),
            self.dim as i32,
            Arc::new(Float32Array::new(ScalarBuffer::from(values), None)),
            nulls,
        )
    }

    fn read_at(&self, offset: u64, out: &mut [f32]) -> Result<(), QueryNodeError> {
        read_f32s(&self.file, offset, out).map_err(|e| QueryNodeError::Cache {
            dir: PathBuf::from("vector file"),
            source: e,
        })
    }

    pub fn read_all(&self) -> Result<FixedSizeListArray, QueryNodeError> {
        self.read_range(0, self.rows)
    }

    /// Rows `start..start + len`.
    pub fn read_range(
        &self,
        start: usize,
        len: usize,
    ) -> Result<FixedSizeListArray, QueryNodeError> {
        let mut values = vec![0f32; len * self.dim];
        self.read_at((start * self.dim * 4) as u64, &mut values)?;
        let nulls = self.nulls.as_ref().map(|n| n.slice(start, len));
        Ok(self.array(values, nulls))
    }

    pub fn read_rows(&self, rows: &[u32]) -> Result<FixedSizeListArray, QueryNodeError> {
        let (Some(&first), Some(&last)) = (rows.iter().min(), rows.iter().max()) else {
            return Ok(self.array(Vec::new(), None));
        };
        let span = (last - first) as usize + 1;
        // Dense rows: one sequential read of their span beats a pread per row.
        if span <= rows.len() * 8 {
            let all = self.read_range(first as usize, span)?;
            let local = UInt32Array::from_iter_values(rows.iter().map(|r| r - first));
            let taken = arrow::compute::take(&all, &local, None)?;
            return taken
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .cloned()
                .ok_or_else(|| {
                    QueryNodeError::Arrow(arrow::error::ArrowError::CastError(
                        "take changed the vector type".into(),
                    ))
                });
        }
        let mut values = vec![0f32; rows.len() * self.dim];
        let row_bytes = (self.dim * 4) as u64;
        for (slot, &row) in values.chunks_exact_mut(self.dim).zip(rows) {
            self.read_at(row as u64 * row_bytes, slot)?;
        }
        let nulls = self
            .nulls
            .as_ref()
            .map(|n| NullBuffer::from_iter(rows.iter().map(|&r| n.is_valid(r as usize))));
        Ok(self.array(values, nulls))
    }
}

/// The hidden insert-timestamp column, stored last in every segment.
fn insert_timestamps(column: &ArrayRef) -> Result<UInt64Array, QueryNodeError> {
    column
        .as_any()
        .downcast_ref::<UInt64Array>()
        .cloned()
        .ok_or_else(|| {
            QueryNodeError::Arrow(arrow::error::ArrowError::SchemaError(
                "segment lacks insert timestamps".into(),
            ))
        })
}

pub(crate) enum ColumnData {
    Memory(ArrayRef),
    Vectors(VectorFile),
}

pub(crate) struct SegmentData {
    /// User columns (without the insert timestamp).
    pub schema: SchemaRef,
    pub columns: Vec<ColumnData>,
    pub insert_ts: UInt64Array,
    pub rows: usize,
}

impl SegmentData {
    /// Loads a segment with its vector columns streamed to files in `dir`
    /// batch by batch (the segment is never decoded whole).
    pub fn load(
        meta: &SegmentMeta,
        object: &quiver_segment::ParquetObject,
        dir: &Path,
    ) -> Result<Self, QueryNodeError> {
        const VECTOR_BATCH_ROWS: usize = 4096;
        let stored = object.schema().map_err(QueryNodeError::Segment)?;
        let n = stored.fields().len() - 1;
        let schema = Arc::new(Schema::new(stored.fields()[..n].to_vec()));
        let vector_item = |i: usize| match stored.field(i).data_type() {
            DataType::FixedSizeList(item, dim) if item.data_type() == &DataType::Float32 => {
                Some((item.clone(), *dim as usize))
            }
            _ => None,
        };
        let in_memory: Vec<usize> = (0..=n).filter(|&i| vector_item(i).is_none()).collect();
        let scalar_batches = object
            .columns(&in_memory, 64 * 1024)
            .map_err(QueryNodeError::Segment)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(QueryNodeError::Segment)?;
        let scalars = arrow::compute::concat_batches(
            &Arc::new(stored.project(&in_memory)?),
            &scalar_batches,
        )?;
        drop(scalar_batches);
        let mut columns = Vec::with_capacity(n);
        for i in 0..n {
            match vector_item(i) {
                Some((item, dim)) => {
                    let path = dir.join(format!("{}-{i}.f32", meta.id));
                    let wanted = [i];
                    let batches = object
                        .columns(&wanted, VECTOR_BATCH_ROWS)
                        .map_err(QueryNodeError::Segment)?;
                    columns.push(ColumnData::Vectors(VectorFile::stream(
                        &path, item, dim, batches,
                    )?));
                }
                None => {
                    let pos = in_memory.iter().position(|&c| c == i).unwrap_or(0);
                    columns.push(ColumnData::Memory(scalars.column(pos).clone()));
                }
            }
        }
        let insert_ts = insert_timestamps(scalars.column(in_memory.len() - 1))?;
        Ok(SegmentData {
            schema,
            columns,
            insert_ts,
            rows: scalars.num_rows(),
        })
    }

    /// The `projection` columns (all rows, or `rows` in that order).
    pub fn project(
        &self,
        projection: &[usize],
        rows: Option<&[u32]>,
    ) -> Result<RecordBatch, QueryNodeError> {
        let schema = Arc::new(self.schema.project(projection)?);
        let indices = rows.map(|r| UInt32Array::from(r.to_vec()));
        let arrays = projection
            .iter()
            .map(|&i| self.column(i, rows, indices.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let options = arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(rows.map_or(self.rows, |r| r.len())));
        Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
    }

    fn column(
        &self,
        i: usize,
        rows: Option<&[u32]>,
        indices: Option<&UInt32Array>,
    ) -> Result<ArrayRef, QueryNodeError> {
        Ok(match (&self.columns[i], rows, indices) {
            (ColumnData::Memory(a), None, _) => a.clone(),
            (ColumnData::Memory(a), Some(_), Some(idx)) => arrow::compute::take(a, idx, None)?,
            (ColumnData::Vectors(f), None, _) => Arc::new(f.read_all()?),
            (ColumnData::Vectors(f), Some(r), _) => Arc::new(f.read_rows(r)?),
            (ColumnData::Memory(a), Some(r), None) => {
                arrow::compute::take(a, &UInt32Array::from(r.to_vec()), None)?
            }
        })
    }

    /// The `k` rows nearest to `query` in vector column `column`, among
    /// `candidates` (ascending row numbers; all rows when `None`), nearest
    /// first, with their ordering distances. Vectors are read from the column's file a piece at a time, so
    /// an exact search holds one piece, not the segment's vectors.
    pub fn exact_top_k(
        &self,
        column: usize,
        candidates: Option<&[u32]>,
        metric: quiver_types::VectorMetric,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<(u32, f32)>, QueryNodeError> {
        const PIECE_ROWS: usize = 4096;
        let file = match &self.columns[column] {
            ColumnData::Vectors(f) => f,
            ColumnData::Memory(_) => {
                return Err(QueryNodeError::Arrow(
                    arrow::error::ArrowError::InvalidArgumentError(format!(
                        "column {column} is not a vector column"
                    )),
                ));
            }
        };
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(2 * k.min(PIECE_ROWS) + 1);
        let mut merge = |piece: &FixedSizeListArray, row_of: &dyn Fn(u32) -> u32| {
            let hits = quiver_index::exact_top_k(piece, metric, query, k, |_| true)?;
            best.extend(hits.into_iter().map(|(r, d)| (row_of(r), d)));
            best.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            best.truncate(k);
            Ok::<_, QueryNodeError>(())
        };
        match candidates {
            None => {
                for start in (0..self.rows).step_by(PIECE_ROWS) {
                    let len = PIECE_ROWS.min(self.rows - start);
                    let piece = file.read_range(start, len)?;
                    merge(&piece, &|r| start as u32 + r)?;
                }
            }
            Some(rows) => {
                for chunk in rows.chunks(PIECE_ROWS) {
                    let piece = file.read_rows(chunk)?;
                    merge(&piece, &|r| chunk[r as usize])?;
                }
            }
        }
        Ok(best)
    }

    pub fn all_columns(&self) -> Vec<usize> {
        (0..self.columns.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::Field;
    use quiver_types::{SegmentId, ShardId, TableId, Timestamp, VectorMetric};

    /// 10,000 rows of 4-d vectors, every 7th NULL, written as a segment.
    async fn segment(dir: &Path) -> (SegmentData, FixedSizeListArray) {
        const ROWS: usize = 10_000;
        let store = quiver_segment::open_object_store(&quiver_segment::ObjectStoreConfig::Local {
            root: dir.join("objects"),
        })
        .unwrap();
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let values: Vec<f32> = (0..ROWS * 4)
            .map(|i| ((i * 7919 % 1000) as f32 / 37.0).sin())
            .collect();
        let nulls = NullBuffer::from_iter((0..ROWS).map(|i| i % 7 != 3));
        let vectors = FixedSizeListArray::new(
            item.clone(),
            4,
            Arc::new(Float32Array::from(values)),
            Some(nulls),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::FixedSizeList(item, 4), true),
            Field::new("_quiver_insert_ts", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..ROWS as i64)),
                Arc::new(vectors.clone()),
                Arc::new(UInt64Array::from_iter_values(
                    (0..ROWS as u64).map(|i| i + 1),
                )),
            ],
        )
        .unwrap();
        let path = "tables/1/segments/9/data.parquet";
        quiver_segment::write_parquet(store.as_ref(), path, &batch)
            .await
            .unwrap();
        let meta = SegmentMeta {
            id: SegmentId(9),
            table: TableId(1),
            shard: ShardId(0),
            rows: ROWS as u64,
            bytes: 0,
            path: path.into(),
            max_ts: Timestamp(ROWS as u64),
            delete_logs: vec![],
        };
        let local = dir.join("9.parquet.partial");
        let object = quiver_segment::ParquetObject::download(store.as_ref(), path, &local)
            .await
            .unwrap();
        let data = SegmentData::load(&meta, &object, dir).unwrap();
        drop(object);
        assert!(!local.exists(), "the local copy is removed once loaded");
        (data, vectors)
    }

    #[tokio::test]
    async fn piecewise_exact_search_equals_a_search_of_the_whole_column() {
        let dir = tempfile::tempdir().unwrap();
        let (data, vectors) = segment(dir.path()).await;
        assert!(matches!(data.columns[1], ColumnData::Vectors(_)));
        assert_eq!(data.rows, 10_000);
        let query = [0.3f32, -0.2, 0.9, 0.1];
        for metric in [
            VectorMetric::L2,
            VectorMetric::Cosine,
            VectorMetric::InnerProduct,
        ] {
            for k in [1, 10, 5000] {
                let whole: Vec<u32> =
                    quiver_index::exact_top_k(&vectors, metric, &query, k, |_| true)
                        .unwrap()
                        .into_iter()
                        .map(|(r, _)| r)
                        .collect();
                let rows_of =
                    |hits: Vec<(u32, f32)>| hits.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
                assert_eq!(
                    rows_of(data.exact_top_k(1, None, metric, &query, k).unwrap()),
                    whole
                );
                // Candidates: every third row, dense enough for span reads,
                // and a sparse set read row by row.
                for step in [3u32, 97] {
                    let rows: Vec<u32> = (0..10_000).step_by(step as usize).collect();
                    let expected: Vec<u32> =
                        quiver_index::exact_top_k(&vectors, metric, &query, k, |r| {
                            (r as u32).is_multiple_of(step)
                        })
                        .unwrap()
                        .into_iter()
                        .map(|(r, _)| r)
                        .collect();
                    assert_eq!(
                        rows_of(data.exact_top_k(1, Some(&rows), metric, &query, k).unwrap()),
                        expected,
                        "{metric:?} k={k} step={step}"
                    );
                }
            }
        }
        // Rows come back with their NULLs.
        let some = data.project(&[1], Some(&[3, 4, 10])).unwrap();
        let some = some.column(0);
        assert!(some.is_null(0) && some.is_valid(1) && some.is_null(2));
    }
}
