//! Bodies of control calls that carry record batches (writes, key checks):
//! a JSON header followed by optional batches in Arrow IPC stream format.
//!
//! Flight's `DoPut` would carry one stream of batches of one schema; a
//! write carries up to two batches of different schemas (keys to delete,
//! rows to insert) and wants one reply, so it travels as an action with
//! this framing instead:
//! `u32 header length | JSON header | u32 count | (u32 length | IPC)*`,
//! lengths little-endian, length 0 for an absent batch.

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use quiver_api::{ApiError, ApiResult, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::InvalidRequest,
        format!("malformed call body: {e}"),
    )
}

fn put_len(out: &mut Vec<u8>, len: usize) -> ApiResult<()> {
    let len = u32::try_from(len).map_err(|_| bad("part over 4 GiB"))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

pub fn encode<H: Serialize>(header: &H, batches: &[Option<&RecordBatch>]) -> ApiResult<Vec<u8>> {
    let json = serde_json::to_vec(header).map_err(bad)?;
    let mut out = Vec::with_capacity(json.len() + 64);
    put_len(&mut out, json.len())?;
    out.extend_from_slice(&json);
    put_len(&mut out, batches.len())?;
    for batch in batches {
        match batch {
            None => put_len(&mut out, 0)?,
            Some(batch) => {
                let mut ipc = Vec::new();
                {
                    let mut writer =
                        StreamWriter::try_new(&mut ipc, &batch.schema()).map_err(bad)?;
                    writer.write(batch).map_err(bad)?;
                    writer.finish().map_err(bad)?;
                }
                put_len(&mut out, ipc.len())?;
                out.extend_from_slice(&ipc);
            }
        }
    }
    Ok(out)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> ApiResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self) -> ApiResult<usize> {
        let bytes: [u8; 4] = self.take(4)?.try_into().map_err(bad)?;
        Ok(u32::from_le_bytes(bytes) as usize)
    }
}

pub fn decode<H: DeserializeOwned>(body: &[u8]) -> ApiResult<(H, Vec<Option<RecordBatch>>)> {
    let mut cursor = Cursor(body);
    let json_len = cursor.len()?;
    let header = serde_json::from_slice(cursor.take(json_len)?).map_err(bad)?;
    let count = cursor.len()?;
    let mut batches = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let len = cursor.len()?;
        if len == 0 {
            batches.push(None);
            continue;
        }
        let reader = StreamReader::try_new(cursor.take(len)?, None).map_err(bad)?;
        let mut parts = Vec::new();
        let mut schema = reader.schema();
        for batch in reader {
            let batch = batch.map_err(bad)?;
            schema = batch.schema();
            parts.push(batch);
        }
        let batch = match parts.len() {
            1 => parts.pop().ok_or_else(|| bad("empty batch"))?,
            _ => arrow::compute::concat_batches(&schema, &parts).map_err(bad)?,
        };
        batches.push(Some(batch));
    }
    if !cursor.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((header, batches))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn round_trip_keeps_header_batches_and_gaps() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .unwrap();
        let body = encode(&("write", 7u32), &[None, Some(&batch)]).unwrap();
        let ((name, n), batches): ((String, u32), _) = decode(&body).unwrap();
        assert_eq!((name.as_str(), n), ("write", 7));
        assert_eq!(batches.len(), 2);
        assert!(batches[0].is_none());
        assert_eq!(batches[1].as_ref().unwrap(), &batch);
        assert!(decode::<(String, u32)>(&body[..body.len() - 1]).is_err());
    }
}
