//! A `pread` reader for the disk index.
//!
//! Written by hand because diskann-disk's Linux reader always uses io_uring
//! with `O_DIRECT`, which bypasses the page cache (every search pays device
//! latency, measured at 6-10x lower QPS here) and is refused by some
//! container seccomp profiles; its portable fallback reads the whole file
//! into RAM. Positional reads through the page cache keep RSS small while
//! hot sectors stay cached by the kernel.

use std::fs::File;
use std::os::unix::fs::FileExt;

use diskann::{ANNError, ANNResult};
use diskann_disk::search::provider::aligned_file_reader::traits::{
    AlignedFileReader, AlignedReaderFactory,
};
use diskann_disk::search::provider::aligned_file_reader::{A1, AlignedRead};

pub struct PreadReaderFactory {
    pub path: String,
}

impl AlignedReaderFactory for PreadReaderFactory {
    type AlignedReaderType = PreadReader;

    fn build(&self) -> ANNResult<PreadReader> {
        let file = File::open(&self.path).map_err(ANNError::new)?;
        Ok(PreadReader { file })
    }
}

pub struct PreadReader {
    file: File,
}

impl AlignedFileReader for PreadReader {
    type Alignment = A1;

    fn read(&mut self, requests: &mut [AlignedRead<u8, A1>]) -> ANNResult<()> {
        for req in requests.iter_mut() {
            let offset = req.offset();
            let buf = req.aligned_buf_mut();
            let mut filled = 0;
            while filled < buf.len() {
                let n = self
                    .file
                    .read_at(&mut buf[filled..], offset + filled as u64)
                    .map_err(ANNError::new)?;
                if n == 0 {
                    // The last sector may be short; the rest reads as zeros.
                    buf[filled..].fill(0);
                    break;
                }
                filled += n;
            }
        }
        Ok(())
    }
}
