//! Reading committed blobs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use crate::error::io_at;
use crate::store::blob_error;
use crate::{ContentError, Digest};

/// An open, committed blob. Positional reads (`read_at`) take `&self`, so one reader may serve
/// several ranges; `Read` reads it sequentially from the start. The blob stays readable even if
/// it is deleted meanwhile.
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    path: PathBuf,
    size: u64,
    pos: u64,
}

impl BlobReader {
    pub(crate) fn open(path: PathBuf, d: &Digest) -> Result<BlobReader, ContentError> {
        let file = File::open(&path).map_err(|e| blob_error(&path, d, e))?;
        let size = file.metadata().map_err(io_at(&path))?.len();
        Ok(BlobReader {
            file,
            path,
            size,
            pos: 0,
        })
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads from `offset` into `buf`, filling it unless the blob ends first. Returns the number
    /// of bytes read: 0 at or past the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, ContentError> {
        self.fill_at(offset, buf).map_err(io_at(&self.path))
    }

    fn fill_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut done = 0;
        while done < want {
            match self
                .file
                .read_at(&mut buf[done..want], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}
