//! The in-memory state of one table within one shard: the growing segment,
//! the sealed segments it delegates to query nodes, their deletes, and the
//! primary-key index used for uniqueness and deletes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use quiver_api::{SealedSegmentRef, TableInfo};
use quiver_segment::{DeleteLogEntry, SegmentMeta};
use quiver_types::{PkEncoder, PrimaryKey, SegmentId, Timestamp};

/// Where the live version of a primary key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLoc {
    Growing(u32),
    Sealed(SegmentId, u32),
}

/// Growing batches are merged like a binary counter: the newest batch is
/// merged into its predecessor while the predecessor is not larger. Each row
/// is copied O(log n) times (single-row inserts never re-copy the whole
/// segment) and a snapshot walks O(log n) batches. Batches of this many rows
/// are left alone.
const MERGED_BATCH_ROWS: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct SealedState {
    pub meta: SegmentMeta,
    /// Every known delete of this segment (persisted and not yet persisted).
    pub deletes: Arc<Vec<DeleteLogEntry>>,
    /// Deletes not yet written to a delete log.
    pub unflushed: Vec<DeleteLogEntry>,
}

#[derive(Debug)]
pub(crate) struct TableShard {
    pub info: TableInfo,
    /// Stored schema: user columns + insert timestamp.
    pub segment_schema: SchemaRef,
    pub growing: Vec<RecordBatch>,
    pub growing_rows: u32,
    /// Per growing row: the key, and when it was deleted (`Timestamp::MAX` = live).
    pub growing_keys: Vec<PrimaryKey>,
    pub growing_deleted: Vec<Timestamp>,
    pub sealed: BTreeMap<SegmentId, SealedState>,
    pub pk_index: HashMap<PrimaryKey, RowLoc>,
}

impl TableShard {
    pub fn new(info: TableInfo) -> Self {
        TableShard {
            segment_schema: info.schema.segment_schema(),
            info,
            growing: Vec::new(),
            growing_rows: 0,
            growing_keys: Vec::new(),
            growing_deleted: Vec::new(),
            sealed: BTreeMap::new(),
            pk_index: HashMap::new(),
        }
    }

    pub fn contains(&self, key: &PrimaryKey) -> bool {
        self.pk_index.contains_key(key)
    }

    /// Marks the live row with `key` deleted at `ts`; false if none.
    pub fn delete(&mut self, key: &PrimaryKey, ts: Timestamp) -> bool {
        match self.pk_index.remove(key) {
            None => false,
            Some(RowLoc::Growing(row)) => {
                self.growing_deleted[row as usize] = ts;
                true
            }
            Some(RowLoc::Sealed(seg, row)) => {
                if let Some(s) = self.sealed.get_mut(&seg) {
                    let entry = DeleteLogEntry { row, ts };
                    Arc::make_mut(&mut s.deletes).push(entry);
                    s.unflushed.push(entry);
                }
                true
            }
        }
    }

    /// Appends rows (user columns) committed at `ts`. Keys must be new.
    pub fn insert(
        &mut self,
        rows: &RecordBatch,
        ts: Timestamp,
    ) -> Result<(), arrow::error::ArrowError> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_value(ts.0, rows.num_rows())));
        let batch = RecordBatch::try_new(self.segment_schema.clone(), columns)?;
        let enc = PkEncoder::new(&batch, &self.info.schema.primary_key);
        for i in 0..batch.num_rows() {
            let key = enc.key(i);
            let row = self.growing_rows + i as u32;
            self.pk_index.insert(key.clone(), RowLoc::Growing(row));
            self.growing_keys.push(key);
            self.growing_deleted.push(Timestamp::MAX);
        }
        self.growing_rows += batch.num_rows() as u32;
        self.growing.push(batch);
        while let [.., prev, last] = self.growing.as_slice()
            && prev.num_rows() <= last.num_rows()
            && prev.num_rows() < MERGED_BATCH_ROWS
        {
            let merged = concat_batches(&self.segment_schema, [prev, last])?;
            self.growing.truncate(self.growing.len() - 2);
            self.growing.push(merged);
        }
        Ok(())
    }

    /// Drops every row (TRUNCATE); returns the sealed segments that no longer exist.
    pub fn clear(&mut self) -> Vec<SegmentMeta> {
        self.growing.clear();
        self.growing_rows = 0;
        self.growing_keys.clear();
        self.growing_deleted.clear();
        self.pk_index.clear();
        std::mem::take(&mut self.sealed)
            .into_values()
            .map(|s| s.meta)
            .collect()
    }

    /// Registers a sealed segment (recovery or flush) with its known deletes
    /// and indexes its live keys.
    pub fn add_sealed(
        &mut self,
        meta: SegmentMeta,
        keys: &[PrimaryKey],
        deletes: Vec<DeleteLogEntry>,
    ) {
        let deleted: HashSet<u32> = deletes.iter().map(|d| d.row).collect();
        for (row, key) in keys.iter().enumerate() {
            if !deleted.contains(&(row as u32)) {
                self.pk_index
                    .insert(key.clone(), RowLoc::Sealed(meta.id, row as u32));
            }
        }
        self.sealed.insert(
            meta.id,
            SealedState {
                meta,
                deletes: Arc::new(deletes),
                unflushed: Vec::new(),
            },
        );
    }

    /// Visible growing rows (user columns) at `ts` plus the sealed segment refs.
    pub fn snapshot(
        &self,
        ts: Timestamp,
    ) -> Result<(Vec<RecordBatch>, Vec<SealedSegmentRef>), arrow::error::ArrowError> {
        let user_columns = self.info.schema.columns.len();
        let projection: Vec<usize> = (0..user_columns).collect();
        let mut out = Vec::with_capacity(self.growing.len());
        let mut offset = 0usize;
        for batch in &self.growing {
            let n = batch.num_rows();
            let inserted: &[u64] = batch
                .column(user_columns)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .map(|a| a.values().as_ref())
                .unwrap_or_default();
            let deleted = &self.growing_deleted[offset..offset + n];
            let all_visible =
                inserted.iter().all(|&t| t <= ts.0) && deleted.iter().all(|d| *d > ts);
            let projected = batch.project(&projection)?;
            if all_visible {
                out.push(projected);
            } else {
                let mask: BooleanArray = inserted
                    .iter()
                    .zip(deleted)
                    .map(|(&ins, del)| Some(ins <= ts.0 && *del > ts))
                    .collect();
                let filtered = filter_record_batch(&projected, &mask)?;
                if filtered.num_rows() > 0 {
                    out.push(filtered);
                }
            }
            offset += n;
        }
        let sealed = self
            .sealed
            .values()
            .map(|s| SealedSegmentRef {
                segment: s.meta.id,
                deletes: s.deletes.clone(),
            })
            .collect();
        Ok((out, sealed))
    }

    /// The growing segment's batches (with timestamps; cheap clones) and
    /// each row's delete timestamp, for sealing.
    pub fn growing_for_seal(&self) -> Option<(Vec<RecordBatch>, Vec<Timestamp>)> {
        (self.growing_rows > 0).then(|| (self.growing.clone(), self.growing_deleted.clone()))
    }

    /// Replaces the first `meta.rows` growing rows (frozen by a flush) by
    /// the sealed segment they became. `deleted_at_freeze` holds their delete
    /// timestamps when frozen (already in the segment's delete log); rows
    /// deleted since become pending deletes of the segment. Rows inserted
    /// since stay growing.
    pub fn seal_prefix(
        &mut self,
        meta: SegmentMeta,
        deleted_at_freeze: &[Timestamp],
    ) -> Result<(), arrow::error::ArrowError> {
        let frozen = meta.rows as usize;
        let mut deletes = Vec::new();
        let mut unflushed = Vec::new();
        for row in 0..frozen {
            let deleted = self.growing_deleted[row];
            if deleted == Timestamp::MAX {
                self.pk_index.insert(
                    self.growing_keys[row].clone(),
                    RowLoc::Sealed(meta.id, row as u32),
                );
            } else {
                let entry = DeleteLogEntry {
                    row: row as u32,
                    ts: deleted,
                };
                deletes.push(entry);
                if deleted_at_freeze.get(row) == Some(&Timestamp::MAX) {
                    unflushed.push(entry);
                }
            }
        }
        for (row, key) in self.growing_keys.iter().enumerate().skip(frozen) {
            if self.growing_deleted[row] == Timestamp::MAX {
                self.pk_index
                    .insert(key.clone(), RowLoc::Growing((row - frozen) as u32));
            }
        }
        // Drop the frozen prefix from the batches (slices share buffers).
        let mut skip = frozen;
        let mut rest = Vec::with_capacity(self.growing.len());
        for batch in self.growing.drain(..) {
            let n = batch.num_rows();
            if skip >= n {
                skip -= n;
            } else {
                rest.push(batch.slice(skip, n - skip));
                skip = 0;
            }
        }
        self.growing = rest;
        self.growing_keys.drain(..frozen);
        self.growing_deleted.drain(..frozen);
        self.growing_rows -= frozen as u32;
        self.sealed.insert(
            meta.id,
            SealedState {
                meta,
                deletes: Arc::new(deletes),
                unflushed,
            },
        );
        Ok(())
    }
}

/// The primary keys of every row of `batch` (user columns or stored columns).
pub(crate) fn keys_of(batch: &RecordBatch, key_columns: &[usize]) -> Vec<PrimaryKey> {
    let enc = PkEncoder::new(batch, key_columns);
    (0..batch.num_rows()).map(|i| enc.key(i)).collect()
}

/// Positions of the key columns inside a key-only batch.
pub(crate) fn key_only_columns(info: &TableInfo) -> Vec<usize> {
    (0..info.schema.primary_key.len()).collect()
}

pub(crate) fn is_empty(batch: &Option<RecordBatch>) -> bool {
    batch.as_ref().is_none_or(|b| b.num_rows() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use quiver_types::{ColumnDef, ColumnType, TableId, TableSchema};

    fn shard() -> TableShard {
        let schema = TableSchema::try_new(
            vec![ColumnDef {
                default: None,
                name: "id".into(),
                ty: ColumnType::BigInt,
                nullable: false,
            }],
            &["id".into()],
        )
        .unwrap();
        TableShard::new(TableInfo {
            id: TableId(1),
            name: "t".into(),
            schema,
            shards: 1,
            indexes: vec![],
        })
    }

    #[test]
    fn single_row_inserts_keep_few_batches_and_every_row() {
        let mut t = shard();
        for i in 0..1000i64 {
            let rows = RecordBatch::try_from_iter([(
                "id",
                Arc::new(Int64Array::from(vec![i])) as ArrayRef,
            )])
            .unwrap();
            t.insert(&rows, Timestamp(10 + i as u64)).unwrap();
        }
        assert!(t.growing.len() <= 11, "{} batches", t.growing.len());
        // Deleting by key still finds the right row after the merges.
        let probe = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(vec![500i64])) as ArrayRef,
        )])
        .unwrap();
        assert!(t.delete(&keys_of(&probe, &[0])[0], Timestamp(5000)));
        let (growing, _) = t.snapshot(Timestamp(u64::MAX - 1)).unwrap();
        let mut ids: Vec<i64> = growing
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..a.len()).map(|i| a.value(i)).collect::<Vec<_>>()
            })
            .collect();
        ids.sort_unstable();
        let expected: Vec<i64> = (0..1000).filter(|&i| i != 500).collect();
        assert_eq!(ids, expected);
        // A snapshot before the later inserts sees only the earlier rows.
        let (early, _) = t.snapshot(Timestamp(10 + 99)).unwrap();
        assert_eq!(early.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    }

    fn ids(values: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(values.to_vec())) as ArrayRef,
        )])
        .unwrap()
    }

    #[test]
    fn sealing_a_frozen_prefix_keeps_later_writes() {
        let mut t = shard();
        t.insert(&ids(&[1, 2, 3]), Timestamp(10)).unwrap();
        t.delete(&keys_of(&ids(&[2]), &[0])[0], Timestamp(11));
        // A flush freezes here: rows 1, 2 (deleted at 11), 3.
        let (_, deleted_at_freeze) = t.growing_for_seal().unwrap();
        // Meanwhile: a new row, a delete of a frozen row, a delete of the new row's neighbour.
        t.insert(&ids(&[4, 5]), Timestamp(12)).unwrap();
        t.delete(&keys_of(&ids(&[3]), &[0])[0], Timestamp(13));
        t.delete(&keys_of(&ids(&[5]), &[0])[0], Timestamp(14));
        let meta = SegmentMeta {
            id: SegmentId(7),
            table: TableId(1),
            shard: quiver_types::ShardId(0),
            rows: 3,
            bytes: 0,
            path: String::new(),
            max_ts: Timestamp(10),
            delete_logs: vec![],
        };
        t.seal_prefix(meta, &deleted_at_freeze).unwrap();
        assert_eq!(t.growing_rows, 2);
        let key = |id: i64| keys_of(&ids(&[id]), &[0]).remove(0);
        assert_eq!(
            t.pk_index.get(&key(1)),
            Some(&RowLoc::Sealed(SegmentId(7), 0))
        );
        assert_eq!(t.pk_index.get(&key(2)), None);
        assert_eq!(t.pk_index.get(&key(3)), None);
        assert_eq!(t.pk_index.get(&key(4)), Some(&RowLoc::Growing(0)));
        assert_eq!(t.pk_index.get(&key(5)), None);
        let sealed = &t.sealed[&SegmentId(7)];
        assert_eq!(
            sealed.deletes.len(),
            2,
            "row 2 (logged) and row 3 (after the freeze)"
        );
        assert_eq!(
            sealed.unflushed,
            vec![DeleteLogEntry {
                row: 2,
                ts: Timestamp(13)
            }]
        );
        let (growing, refs) = t.snapshot(Timestamp(100)).unwrap();
        let visible: Vec<i64> = growing
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(visible, vec![4]);
        assert_eq!(refs.len(), 1);
    }
}
