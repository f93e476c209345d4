//! Direct I/O (`O_DIRECT`, Linux) for staging files written with fsync.
//!
//! When every byte must be on disk before an upload is acknowledged anyway, copying it into the
//! page cache first only costs CPU: on a two-core machine, that copy took as long as hashing the
//! bytes, and the thread doing both was what bounded an upload. A direct write hands the buffer
//! to the disk instead. The price is alignment: memory, file offsets and lengths must be whole
//! blocks, so the bytes are copied (and hashed on the way, while in cache) into an aligned
//! buffer, written a whole number of blocks at a time, and the last partial block is written
//! padded and cut back with `set_len`.

use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;

/// The alignment of memory, offsets and lengths for direct I/O: 4 KiB covers devices with
/// 512-byte and 4 KiB logical blocks alike.
pub(super) const ALIGN: usize = 4096;

/// Creates `path` (which must not exist) open for direct writes. `None`, with nothing left
/// behind, where the file system or platform does not do direct I/O, or does not take blocks
/// of [`ALIGN`] bytes: the caller writes through the page cache instead.
pub(super) fn create_new(path: &Path) -> io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(path);
        // Linux creates the file before it checks that the file system takes O_DIRECT; some
        // take the flag but refuse a write of this alignment. One block written now tells (the
        // first real block overwrites it, and the file is cut to its true length at the end).
        let refused = match opened {
            Ok(file) => match write_at(&file, AlignedBuf::zeroed_block()?.as_slice(), 0) {
                Ok(()) => return Ok(Some(file)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => e,
                Err(e) => return Err(e),
            },
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => e,
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                // Invisible to listings (see `staged`); worth a line, not a failed upload.
                tracing::warn!(path = %path.display(), %error, "could not remove a refused direct-I/O file");
            }
            _ => {}
        }
        tracing::debug!(path = %path.display(), error = %refused, "no direct I/O here; writing through the page cache");
        Ok(None)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(None)
    }
}

/// A buffer whose bytes start on an [`ALIGN`] boundary, as direct I/O requires of memory.
pub(super) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer for at least `capacity` bytes.
    fn with_capacity(capacity: usize) -> io::Result<Self> {
        let raw = vec![0_u8; capacity + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            return Err(io::Error::other("could not align a buffer for direct I/O"));
        }
        Ok(Self { raw, start, len: 0 })
    }

    /// One block of zeros.
    fn zeroed_block() -> io::Result<Self> {
        let mut buf = Self::with_capacity(ALIGN)?;
        buf.len = ALIGN;
        Ok(buf)
    }

    fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Appends `bytes`; the caller made room for them.
    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Whole blocks to write at `offset`.
pub(super) struct Block {
    buf: AlignedBuf,
    offset: u64,
}

impl Block {
    /// Writes the blocks; hands the buffer back for reuse.
    pub(super) fn write(self, file: &File) -> io::Result<AlignedBuf> {
        write_at(file, self.buf.as_slice(), self.offset)?;
        Ok(self.buf)
    }
}

/// Cuts appended bytes into whole blocks at increasing offsets, keeping the bytes past the last
/// whole block for the next part.
#[derive(Default)]
pub(super) struct Blocks {
    /// Where the next block goes: everything before it is handed out as blocks.
    offset: u64,
    /// The bytes past the last whole block (fewer than [`ALIGN`]).
    tail: Vec<u8>,
}

impl Blocks {
    /// Copies `chunks`, after the tail, into `spare` (when it is large enough)
    /// or a new buffer; returns the whole blocks to write, if there are any yet.
    pub(super) fn fill(&mut self, spare: Option<AlignedBuf>, chunks: &[Bytes]) -> io::Result<Option<Block>> {
        let len = self.tail.len() + chunks.iter().map(Bytes::len).sum::<usize>();
        let mut buf = match spare {
            Some(mut buf) if buf.capacity() >= len => {
                buf.len = 0;
                buf
            }
            _ => AlignedBuf::with_capacity(len)?,
        };
        buf.push(&self.tail);
        for chunk in chunks {
            buf.push(chunk);
        }
        let whole = len - len % ALIGN;
        self.tail.clear();
        self.tail.extend_from_slice(&buf.as_slice()[whole..]);
        buf.len = whole;
        if whole == 0 {
            return Ok(None);
        }
        let block = Block { buf, offset: self.offset };
        self.offset += whole as u64;
        Ok(Some(block))
    }

    /// Writes the tail, padded to a whole block, then cuts the file to its true length. Every
    /// block handed out must be written first.
    pub(super) fn finish(self, file: &File) -> io::Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let mut buf = AlignedBuf::with_capacity(ALIGN)?;
        buf.push(&self.tail);
        // A new buffer is zeros past what was pushed: the padding.
        buf.len = ALIGN;
        write_at(file, buf.as_slice(), self.offset)?;
        file.set_len(self.offset + self.tail.len() as u64)
    }
}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(not(unix))]
fn write_at(_file: &File, _bytes: &[u8], _offset: u64) -> io::Result<()> {
    // `create_new` never opens a file for direct I/O off Linux.
    Err(io::Error::other("direct I/O is only used on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused_when_large_enough() {
        let buf = AlignedBuf::with_capacity(10).unwrap();
        assert_eq!(buf.as_slice().as_ptr() as usize % ALIGN, 0);
        assert!(buf.capacity() >= 10);

        let mut blocks = Blocks::default();
        let part = Bytes::from(vec![7_u8; 3 * ALIGN]);
        let block = blocks.fill(None, std::slice::from_ref(&part)).unwrap().unwrap();
        let first = block.buf.as_slice().as_ptr();
        // A part of the same size fits the buffer handed back.
        let block = blocks.fill(Some(block.buf), std::slice::from_ref(&part)).unwrap().unwrap();
        assert_eq!(block.buf.as_slice().as_ptr(), first);
        assert_eq!(block.offset, 3 * ALIGN as u64);
    }

    #[test]
    fn parts_become_whole_blocks_with_the_rest_carried_over() {
        let mut blocks = Blocks::default();
        let data: Vec<u8> = (0..3 * ALIGN + 100).map(|i| (i % 251) as u8).collect();
        let data = Bytes::from(data);

        // Less than a block: nothing to write yet.
        assert!(blocks.fill(None, &[data.slice(..100)]).unwrap().is_none());
        // The carried bytes come first.
        let block = blocks.fill(None, &[data.slice(100..ALIGN), data.slice(ALIGN..ALIGN + 5)]);
        let block = block.unwrap().unwrap();
        assert_eq!((block.offset, block.buf.as_slice()), (0, &data[..ALIGN]));
        let block = blocks.fill(None, &[data.slice(ALIGN + 5..)]).unwrap().unwrap();
        assert_eq!((block.offset, block.buf.as_slice()), (ALIGN as u64, &data[ALIGN..3 * ALIGN]));
        assert_eq!(blocks.tail, &data[3 * ALIGN..]);
    }

    #[test]
    fn a_direct_file_ends_at_its_true_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        // Where the file system refuses direct I/O, nothing is left behind.
        let Some(file) = create_new(&path).unwrap() else {
            assert!(!path.exists());
            return;
        };
        let data: Vec<u8> = (0..2 * ALIGN + 10).map(|i| (i % 13) as u8).collect();
        let mut blocks = Blocks::default();
        let block = blocks.fill(None, &[Bytes::from(data.clone())]).unwrap().unwrap();
        block.write(&file).unwrap();
        blocks.finish(&file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // A second file of that name is refused, as any new staging file would be.
        assert_eq!(create_new(&path).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }
}
