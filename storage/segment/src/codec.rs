use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::SegmentError;

/// Encodes a batch as an Arrow IPC stream (schema + one batch).
pub fn encode_batch(batch: &RecordBatch) -> Result<Bytes, SegmentError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 512);
    {
        let mut writer = StreamWriter::try_new(&mut buf, batch.schema_ref())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(Bytes::from(buf))
}

/// Decodes what [`encode_batch`] wrote.
pub fn decode_batch(bytes: &[u8]) -> Result<RecordBatch, SegmentError> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}
