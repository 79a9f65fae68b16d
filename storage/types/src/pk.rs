use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int16Array, Int32Array, Int64Array,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;

/// The byte encoding of one row's primary-key values.
///
/// Used as the key of each shard's primary-key index and hashed to pick the
/// shard, so it must be identical wherever a key is computed (proxy, streaming
/// node, recovery). Each value is a type tag followed by a fixed-width
/// big-endian payload or a length-prefixed string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimaryKey(pub Box<[u8]>);

/// Encodes primary keys of a batch whose key columns are at `key_columns`.
pub struct PkEncoder<'a> {
    columns: Vec<&'a ArrayRef>,
}

impl<'a> PkEncoder<'a> {
    /// `key_columns` index into `batch`'s columns. Panics never; unsupported
    /// key types are rejected when the schema is created.
    pub fn new(batch: &'a RecordBatch, key_columns: &[usize]) -> Self {
        PkEncoder {
            columns: key_columns.iter().map(|&i| batch.column(i)).collect(),
        }
    }

    pub fn key(&self, row: usize) -> PrimaryKey {
        let mut out = Vec::with_capacity(16);
        for col in &self.columns {
            encode_value(col.as_ref(), row, &mut out);
        }
        PrimaryKey(out.into_boxed_slice())
    }
}

fn encode_value(col: &dyn Array, row: usize, out: &mut Vec<u8>) {
    if col.is_null(row) {
        out.push(0);
        return;
    }
    match col.data_type() {
        DataType::Int16 => {
            out.push(1);
            let v = col
                .as_any()
                .downcast_ref::<Int16Array>()
                .map(|a| a.value(row));
            out.extend_from_slice(&(v.unwrap_or_default() as i64).to_be_bytes());
        }
        DataType::Int32 => {
            out.push(1);
            let v = col
                .as_any()
                .downcast_ref::<Int32Array>()
                .map(|a| a.value(row));
            out.extend_from_slice(&(v.unwrap_or_default() as i64).to_be_bytes());
        }
        DataType::Int64 => {
            out.push(1);
            let v = col
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(row));
            out.extend_from_slice(&v.unwrap_or_default().to_be_bytes());
        }
        DataType::Utf8 => {
            out.push(2);
            let s = col.as_string::<i32>().value(row).as_bytes();
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s);
        }
        DataType::Boolean => {
            out.push(3);
            let v = col
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|a| a.value(row));
            out.push(u8::from(v.unwrap_or_default()));
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            out.push(4);
            let v = col
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .map(|a| a.value(row));
            out.extend_from_slice(&v.unwrap_or_default().to_be_bytes());
        }
        DataType::Date32 => {
            out.push(5);
            let v = col
                .as_any()
                .downcast_ref::<Date32Array>()
                .map(|a| a.value(row));
            out.extend_from_slice(&v.unwrap_or_default().to_be_bytes());
        }
        other => {
            // Schema validation keeps other types out of keys; encode the
            // debug form so a key is still deterministic rather than panic.
            out.push(255);
            out.extend_from_slice(format!("{other:?}").as_bytes());
        }
    }
}

/// The shard a key belongs to.
pub fn shard_of(key: &PrimaryKey, shard_count: u32) -> u32 {
    crc32fast::hash(&key.0) % shard_count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use std::sync::Arc;

    #[test]
    fn equal_values_of_different_int_widths_encode_equal() {
        let a =
            RecordBatch::try_from_iter([("k", Arc::new(Int32Array::from(vec![7])) as ArrayRef)])
                .unwrap();
        let b =
            RecordBatch::try_from_iter([("k", Arc::new(Int64Array::from(vec![7])) as ArrayRef)])
                .unwrap();
        assert_eq!(
            PkEncoder::new(&a, &[0]).key(0),
            PkEncoder::new(&b, &[0]).key(0)
        );
    }

    #[test]
    fn composite_keys_do_not_collide_across_boundaries() {
        let a = RecordBatch::try_from_iter([
            ("a", Arc::new(StringArray::from(vec!["ab"])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec!["c"])) as ArrayRef),
        ])
        .unwrap();
        let b = RecordBatch::try_from_iter([
            ("a", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec!["bc"])) as ArrayRef),
        ])
        .unwrap();
        assert_ne!(
            PkEncoder::new(&a, &[0, 1]).key(0),
            PkEncoder::new(&b, &[0, 1]).key(0)
        );
        assert!(shard_of(&PkEncoder::new(&a, &[0, 1]).key(0), 4) < 4);
    }
}
