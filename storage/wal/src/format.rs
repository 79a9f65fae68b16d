//! On-disk format of [`crate::LocalWal`].
//!
//! Layout: `dir/channel-{i:04}/{first_lsn:020}.wal`. A segment file has no
//! header; its name gives the LSN of its first record and records follow densely.
//!
//! Frame: `u32 LE payload_len | u32 LE crc | payload`, where `crc` is the
//! CRC-32 (IEEE, as computed by `crc32fast`) of the four length bytes followed by
//! the payload. Covering the length means a zero-filled tail (which some file systems
//! expose after a crash) never parses as a run of valid empty records.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::Lsn;

/// Bytes of frame header preceding every payload.
pub(crate) const FRAME_HEADER_BYTES: u64 = 8;

pub(crate) fn channel_dir(root: &Path, channel: u32) -> PathBuf {
    root.join(format!("channel-{channel:04}"))
}

pub(crate) fn segment_path(channel_dir: &Path, first_lsn: Lsn) -> PathBuf {
    channel_dir.join(format!("{first_lsn:020}.wal"))
}

/// Parses a segment file name back into its first LSN.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// First LSNs of all segment files in `channel_dir`, ascending.
pub(crate) fn list_segments(channel_dir: &Path) -> io::Result<Vec<Lsn>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(channel_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(lsn) => firsts.push(lsn),
            None => tracing::debug!(
                file = %entry.path().display(),
                "ignoring non-segment file in wal channel directory"
            ),
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Makes directory entry changes (file creation / deletion) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one frame to `buf`. The caller guarantees `payload.len() <= u32::MAX`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    debug_assert_eq!(len as usize, payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(len, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Encoded size of a frame holding `payload_len` bytes.
pub(crate) fn frame_bytes(payload_len: usize) -> u64 {
    FRAME_HEADER_BYTES + payload_len as u64
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DefectKind {
    /// Fewer than [`FRAME_HEADER_BYTES`] bytes remain.
    ShortHeader { remaining: u64 },
    /// The header announces more payload than remains.
    ShortPayload { len: u32, remaining: u64 },
    /// The checksum does not match.
    CrcMismatch,
}

impl std::fmt::Display for DefectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefectKind::ShortHeader { remaining } => {
                write!(f, "short frame header ({remaining} bytes left)")
            }
            DefectKind::ShortPayload { len, remaining } => write!(
                f,
                "frame announces {len} payload bytes but only {remaining} remain"
            ),
            DefectKind::CrcMismatch => write!(f, "frame checksum mismatch"),
        }
    }
}

/// A frame that failed to decode, at byte `offset` of the scanned range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Defect {
    pub offset: u64,
    pub kind: DefectKind,
}

/// Result of [`FrameScanner::next_frame`].
#[derive(Debug)]
pub(crate) enum Scanned {
    /// A valid frame; its payload was written to the caller's buffer.
    Frame,
    /// The scanned range ended exactly at a frame boundary.
    End,
    /// The bytes at the current position do not form a valid frame.
    Defect(Defect),
}

/// Sequentially decodes the frames in the first `end` bytes of a reader.
pub(crate) struct FrameScanner<R> {
    reader: R,
    pos: u64,
    end: u64,
}

impl<R: Read> FrameScanner<R> {
    pub(crate) fn new(reader: R, end: u64) -> Self {
        Self {
            reader,
            pos: 0,
            end,
        }
    }

    /// Byte offset of the next frame (after a defect: the offset of the bad frame).
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Decodes the next frame into `payload` (cleared first).
    pub(crate) fn next_frame(&mut self, payload: &mut Vec<u8>) -> io::Result<Scanned> {
        payload.clear();
        let remaining = self.end - self.pos;
        if remaining == 0 {
            return Ok(Scanned::End);
        }
        if remaining < FRAME_HEADER_BYTES {
            return Ok(self.defect(DefectKind::ShortHeader { remaining }));
        }
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        self.reader.read_exact(&mut header)?;
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let remaining = remaining - FRAME_HEADER_BYTES;
        if u64::from(len) > remaining {
            return Ok(self.defect(DefectKind::ShortPayload { len, remaining }));
        }
        payload.resize(len as usize, 0);
        self.reader.read_exact(payload)?;
        if frame_crc(len, payload) != crc {
            payload.clear();
            return Ok(self.defect(DefectKind::CrcMismatch));
        }
        self.pos += FRAME_HEADER_BYTES + u64::from(len);
        Ok(Scanned::Frame)
    }

    fn defect(&self, kind: DefectKind) -> Scanned {
        Scanned::Defect(Defect {
            offset: self.pos,
            kind,
        })
    }
}

/// Summary of a full scan of one segment file.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Number of valid frames before the end or the first defect.
    pub records: u64,
    /// Byte length of the valid prefix.
    pub valid_len: u64,
    /// The first defect, if the file does not end on a valid frame boundary.
    pub defect: Option<Defect>,
}

/// Validates every frame of the segment file at `path`.
pub(crate) fn scan_segment(path: &Path) -> io::Result<SegmentScan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut scanner = FrameScanner::new(io::BufReader::with_capacity(1 << 20, file), len);
    let mut payload = Vec::new();
    let mut records = 0u64;
    loop {
        match scanner.next_frame(&mut payload)? {
            Scanned::Frame => records += 1,
            Scanned::End => {
                return Ok(SegmentScan {
                    records,
                    valid_len: scanner.position(),
                    defect: None,
                });
            }
            Scanned::Defect(defect) => {
                return Ok(SegmentScan {
                    records,
                    valid_len: scanner.position(),
                    defect: Some(defect),
                });
            }
        }
    }
}
