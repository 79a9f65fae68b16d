//! How vector columns are laid out in Parquet.
//!
//! In memory a vector column is a `FixedSizeList<Float32>`. Written to
//! Parquet as such it is a repeated column: the writer computes a
//! definition and repetition level for every float, which profiling showed
//! to be over 40 % of a bulk load's CPU (arrow-rs builds an index vector of
//! every leaf value). A vector is a fixed number of bytes, so segments store
//! it as `FixedSizeBinary(4 * dim)` holding the floats little-endian — one
//! flat value per row, no levels — and reading turns it back into the same
//! list, usually without copying the values. Field metadata marks such
//! columns, so files written before this layout (plain lists) still read
//! as they are.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeListArray, RecordBatch,
};
use arrow::buffer::{Buffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use arrow::error::ArrowError;

/// Field metadata naming the stored layout of a vector column.
const ENCODING_KEY: &str = "quiver.storage";
const ENCODING_F32LE: &str = "f32le-vector";
/// Whether the list's items were declared nullable (restored on read).
const ITEM_NULLABLE_KEY: &str = "quiver.item_nullable";

fn is_float_vector(field: &Field) -> Option<(&Arc<Field>, i32)> {
    match field.data_type() {
        DataType::FixedSizeList(item, dim)
            if item.data_type() == &DataType::Float32 && item.name() == "item" && *dim > 0 =>
        {
            Some((item, *dim))
        }
        _ => None,
    }
}

/// The schema segments are stored with, and which columns it re-lays-out.
/// A vector column with null items (never written by SQL, which refuses
/// them) keeps the list layout.
pub(crate) fn storage_schema(schema: &Schema, batches: &[RecordBatch]) -> (SchemaRef, Vec<bool>) {
    let mut flat = Vec::with_capacity(schema.fields().len());
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let Some((item, dim)) = is_float_vector(field) else {
                flat.push(false);
                return field.as_ref().clone();
            };
            let items_null = batches.iter().any(|b| {
                b.column(i)
                    .as_fixed_size_list_opt()
                    .is_none_or(|l| l.values().null_count() > 0)
            });
            if items_null {
                flat.push(false);
                return field.as_ref().clone();
            }
            flat.push(true);
            let mut metadata = field.metadata().clone();
            metadata.insert(ENCODING_KEY.to_string(), ENCODING_F32LE.to_string());
            metadata.insert(
                ITEM_NULLABLE_KEY.to_string(),
                item.is_nullable().to_string(),
            );
            Field::new(
                field.name(),
                DataType::FixedSizeBinary(dim * 4),
                field.is_nullable(),
            )
            .with_metadata(metadata)
        })
        .collect();
    (
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        flat,
    )
}

/// `batch` in the storage schema: flagged vector columns as fixed-size
/// binary over the same bytes (no copy on little-endian machines).
pub(crate) fn to_storage(
    batch: &RecordBatch,
    schema: &SchemaRef,
    flat: &[bool],
) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(flat)
        .map(|(column, &flat)| {
            if !flat {
                return Ok(column.clone());
            }
            let list = column.as_fixed_size_list();
            let width = list.value_length() * 4;
            let floats = list.values().as_primitive::<Float32Type>();
            let bytes = if cfg!(target_endian = "little") {
                floats.values().inner().clone()
            } else {
                Buffer::from_iter(floats.values().iter().flat_map(|v| v.to_le_bytes()))
            };
            let binary = FixedSizeBinaryArray::try_new(width, bytes, list.nulls().cloned())?;
            Ok(Arc::new(binary) as ArrayRef)
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// The in-memory field of a stored one (vector columns back to lists).
fn restored_field(field: &Field) -> Option<Field> {
    if field.metadata().get(ENCODING_KEY).map(String::as_str) != Some(ENCODING_F32LE) {
        return None;
    }
    let DataType::FixedSizeBinary(width) = field.data_type() else {
        return None;
    };
    let item_nullable = field.metadata().get(ITEM_NULLABLE_KEY).map(String::as_str) == Some("true");
    let metadata: HashMap<String, String> = field
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != ENCODING_KEY && k.as_str() != ITEM_NULLABLE_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(
        Field::new(
            field.name(),
            DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Float32, item_nullable)),
                width / 4,
            ),
            field.is_nullable(),
        )
        .with_metadata(metadata),
    )
}

/// The schema a stored schema reads back as.
pub(crate) fn restored_schema(stored: &Schema) -> SchemaRef {
    let fields: Vec<Field> = stored
        .fields()
        .iter()
        .map(|f| restored_field(f).unwrap_or_else(|| f.as_ref().clone()))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()))
}

/// A batch read from a segment, with its vector columns as lists again.
pub(crate) fn from_storage(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| restored_field(f).is_some()) {
        return Ok(batch);
    }
    let restored = restored_schema(&schema);
    let columns = batch
        .columns()
        .iter()
        .zip(restored.fields())
        .map(|(column, field)| {
            let DataType::FixedSizeList(item, dim) = field.data_type() else {
                return Ok(column.clone());
            };
            if !matches!(column.data_type(), DataType::FixedSizeBinary(_)) {
                return Ok(column.clone());
            }
            let binary = column.as_fixed_size_binary();
            let values = float_values(binary);
            let list = FixedSizeListArray::try_new(
                item.clone(),
                *dim,
                Arc::new(arrow::array::Float32Array::new(values, None)),
                binary.nulls().cloned(),
            )?;
            Ok(Arc::new(list) as ArrayRef)
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    RecordBatch::try_new(restored, columns)
}

/// The floats of a stored vector column: the buffer itself when it is
/// aligned for `f32` (as the Parquet reader allocates it), else a copy.
fn float_values(binary: &FixedSizeBinaryArray) -> ScalarBuffer<f32> {
    let width = binary.value_length() as usize;
    let start = binary.offset() * width;
    let bytes = binary
        .values()
        .slice_with_length(start, binary.len() * width);
    let aligned = bytes.as_ptr().align_offset(std::mem::align_of::<f32>()) == 0;
    if cfg!(target_endian = "little") && aligned {
        let len = bytes.len() / 4;
        ScalarBuffer::new(bytes, 0, len)
    } else {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}
