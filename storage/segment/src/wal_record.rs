use arrow::record_batch::RecordBatch;
use bytes::{BufMut, Bytes, BytesMut};
use quiver_types::{TableId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{SegmentError, decode_batch, encode_batch};

/// What a WAL record does.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecordKind {
    /// Deletes the rows with these primary keys (key columns only), then
    /// inserts `insert` rows. Both at the record's timestamp, atomically.
    Mutate {
        delete_keys: Option<RecordBatch>,
        insert: Option<RecordBatch>,
    },
    /// Removes every row of the table in this shard (TRUNCATE / DROP TABLE).
    Truncate,
}

/// One change to one shard of one table at one commit timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub table: TableId,
    pub ts: Timestamp,
    pub kind: WalRecordKind,
    /// Every shard (WAL channel) the statement wrote, when it wrote more
    /// than one. The statement's timestamp identifies its records in each of
    /// them; recovery applies the record only if all of them are durable.
    pub participants: Vec<u32>,
    /// The statement spans several streaming nodes: whether it committed
    /// is decided by its outcome key in the meta store (written once, by
    /// whichever participant or recovery gets there first), not by which
    /// parts are durable.
    pub decided: bool,
}

#[derive(Serialize, Deserialize)]
struct Header {
    table: TableId,
    ts: Timestamp,
    truncate: bool,
    delete_len: u64,
    insert_len: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    participants: Vec<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    decided: bool,
}

impl WalRecord {
    /// `u32 header_len | JSON header | delete IPC | insert IPC`.
    pub fn encode(&self) -> Result<Bytes, SegmentError> {
        let (delete, insert) = match &self.kind {
            WalRecordKind::Mutate {
                delete_keys,
                insert,
            } => (
                delete_keys.as_ref().map(encode_batch).transpose()?,
                insert.as_ref().map(encode_batch).transpose()?,
            ),
            WalRecordKind::Truncate => (None, None),
        };
        let header = Header {
            table: self.table,
            ts: self.ts,
            truncate: matches!(self.kind, WalRecordKind::Truncate),
            delete_len: delete.as_ref().map_or(0, |b| b.len() as u64),
            insert_len: insert.as_ref().map_or(0, |b| b.len() as u64),
            participants: self.participants.clone(),
            decided: self.decided,
        };
        let header = serde_json::to_vec(&header)
            .map_err(|e| SegmentError::MalformedRecord(e.to_string()))?;
        let mut out = BytesMut::with_capacity(
            4 + header.len()
                + delete.as_ref().map_or(0, |b| b.len())
                + insert.as_ref().map_or(0, |b| b.len()),
        );
        out.put_u32_le(header.len() as u32);
        out.put_slice(&header);
        if let Some(d) = &delete {
            out.put_slice(d);
        }
        if let Some(i) = &insert {
            out.put_slice(i);
        }
        Ok(out.freeze())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SegmentError> {
        let bad = |m: &str| SegmentError::MalformedRecord(m.to_string());
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("short header length"))?;
        let header_len = u32::from_le_bytes(len_bytes) as usize;
        let header: Header = serde_json::from_slice(
            bytes
                .get(4..4 + header_len)
                .ok_or_else(|| bad("short header"))?,
        )
        .map_err(|e| SegmentError::MalformedRecord(e.to_string()))?;
        let mut pos = 4 + header_len;
        let mut take = |len: u64| -> Result<Option<RecordBatch>, SegmentError> {
            if len == 0 {
                return Ok(None);
            }
            let slice = bytes
                .get(pos..pos + len as usize)
                .ok_or_else(|| bad("short body"))?;
            pos += len as usize;
            decode_batch(slice).map(Some)
        };
        let delete_keys = take(header.delete_len)?;
        let insert = take(header.insert_len)?;
        let kind = if header.truncate {
            WalRecordKind::Truncate
        } else {
            WalRecordKind::Mutate {
                delete_keys,
                insert,
            }
        };
        Ok(WalRecord {
            table: header.table,
            ts: header.ts,
            kind,
            participants: header.participants,
            decided: header.decided,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn round_trips() {
        let keys = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        let rows = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ])
        .unwrap();
        let rec = WalRecord {
            table: TableId(9),
            ts: Timestamp(42),
            kind: WalRecordKind::Mutate {
                delete_keys: Some(keys),
                insert: Some(rows),
            },
            participants: vec![0, 3],
            decided: true,
        };
        assert_eq!(WalRecord::decode(&rec.encode().unwrap()).unwrap(), rec);
        let t = WalRecord {
            table: TableId(1),
            ts: Timestamp(5),
            kind: WalRecordKind::Truncate,
            participants: vec![],
            decided: false,
        };
        assert_eq!(WalRecord::decode(&t.encode().unwrap()).unwrap(), t);
        assert!(WalRecord::decode(&[1, 2]).is_err());
    }
}
