//! A loaded segment's columns. Scalar columns and insert timestamps stay in
//! memory; the vector columns of a segment that has an index are moved to a
//! local file of raw `f32`s and read with `pread` (through the page cache)
//! when rows are needed: search results, exact fallbacks over a few matching
//! rows, full scans. That keeps the query node's memory at the scalars plus
//! the indexes' PQ codes instead of every vector.

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
            let mut raw = Vec::with_capacity(values.len() * 4);
            for v in values {
                raw.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&raw).map_err(io_err(&tmp))?;
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
        let mut raw = vec![0u8; out.len() * 4];
        self.file
            .read_exact_at(&mut raw, offset)
            .map_err(|e| QueryNodeError::Cache {
                dir: PathBuf::from("vector file"),
                source: e,
            })?;
        for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    pub fn read_all(&self) -> Result<FixedSizeListArray, QueryNodeError> {
        let mut values = vec![0f32; self.rows * self.dim];
        self.read_at(0, &mut values)?;
        Ok(self.array(values, self.nulls.clone()))
    }

    pub fn read_rows(&self, rows: &[u32]) -> Result<FixedSizeListArray, QueryNodeError> {
        // Many rows: one sequential read beats a pread per row.
        if rows.len() * 8 > self.rows {
            let all = self.read_all()?;
            let taken = arrow::compute::take(&all, &UInt32Array::from(rows.to_vec()), None)?;
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
    /// Takes a segment's stored batch (user columns + insert timestamps),
    /// all kept in memory.
    pub fn new(batch: RecordBatch) -> Result<Self, QueryNodeError> {
        let n = batch.num_columns() - 1;
        let stored = batch.schema();
        let schema = Arc::new(Schema::new(stored.fields()[..n].to_vec()));
        let insert_ts = insert_timestamps(batch.column(n))?;
        let columns = batch.columns()[..n]
            .iter()
            .map(|c| ColumnData::Memory(c.clone()))
            .collect();
        Ok(SegmentData {
            schema,
            columns,
            insert_ts,
            rows: batch.num_rows(),
        })
    }

    /// Loads a segment with its vector columns streamed to files in `dir`
    /// batch by batch (the segment is never decoded whole).
    pub fn load_offloaded(
        meta: &SegmentMeta,
        object: &quiver_segment::ParquetObject,
        dir: &Path,
    ) -> Result<Self, QueryNodeError> {
        const VECTOR_BATCH_ROWS: usize = 8192;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
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

    /// One vector column (all rows, or `rows`).
    pub fn vectors(
        &self,
        i: usize,
        rows: Option<&[u32]>,
    ) -> Result<FixedSizeListArray, QueryNodeError> {
        let array = self.column(i, rows, None)?;
        array
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .cloned()
            .ok_or_else(|| {
                QueryNodeError::Arrow(arrow::error::ArrowError::InvalidArgumentError(format!(
                    "column {i} is not a vector column"
                )))
            })
    }

    pub fn all_columns(&self) -> Vec<usize> {
        (0..self.columns.len()).collect()
    }
}
