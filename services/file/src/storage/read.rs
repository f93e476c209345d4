//! Ranged reads as streams of chunks.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore};
use time::OffsetDateTime;

use super::Storage;
use super::error::{Result, StorageError};
use super::key::ObjectKey;
use super::objects::ObjectInfo;

/// The largest chunk a read yields (the file API's largest download message).
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// An object's bytes, in order, in chunks of 1..=[`MAX_CHUNK_BYTES`].
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Which bytes to read: from `offset`, `length` of them or to the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte, 0-based. Past the end of the object is an error; at the end reads
    /// nothing.
    pub offset: u64,
    /// How many bytes; `None` to the end. A length running past the end is cut at the end.
    pub length: Option<u64>,
}

impl ByteRange {
    /// The whole object.
    pub const ALL: Self = Self { offset: 0, length: None };

    /// From `offset` to the end.
    pub fn from(offset: u64) -> Self {
        Self { offset, length: None }
    }

    /// `length` bytes from `offset`.
    pub fn new(offset: u64, length: u64) -> Self {
        Self { offset, length: Some(length) }
    }
}

/// A read in progress: what is being sent, and the bytes.
pub struct ObjectRead {
    /// The whole object's size.
    pub size: u64,
    /// The first byte of the range being read.
    pub offset: u64,
    /// How many bytes `bytes` will yield.
    pub length: u64,
    /// The object's entity tag, when the backend gives one.
    pub e_tag: Option<String>,
    /// When the object was last written.
    pub last_modified: OffsetDateTime,
    /// The bytes of the range.
    pub bytes: ByteStream,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRead")
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .field("e_tag", &self.e_tag)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Reads `range` of the object under `key`.
    pub async fn get(&self, key: &ObjectKey, range: ByteRange) -> Result<ObjectRead> {
        let path = key.to_path();
        let get_range = match (range.offset, range.length) {
            // Nothing to fetch; the metadata still says whether the range is valid.
            (_, Some(0)) => return empty_read(self.head(key).await?, range.offset),
            // A plain read, so an empty object reads as empty rather than as a bad range.
            (0, None) => None,
            (offset, None) => Some(GetRange::Offset(offset)),
            (offset, Some(length)) => Some(GetRange::Bounded(offset..offset.saturating_add(length))),
        };
        let has_range = get_range.is_some();
        let options = GetOptions { range: get_range, ..GetOptions::default() };
        match self.store.get_opts(&path, options).await {
            Ok(result) => Ok(object_read(key, result)),
            // Backends differ in how they refuse a range at or past the end (an empty object has
            // no valid range at all); the size tells.
            Err(err) if has_range && !matches!(err, object_store::Error::NotFound { .. }) => {
                match self.head(key).await {
                    Ok(info) if range.offset >= info.size => empty_read(info, range.offset),
                    Err(missing @ StorageError::NotFound { .. }) => Err(missing),
                    _ => Err(StorageError::backend("read", key, err)),
                }
            }
            Err(err) => Err(StorageError::backend("read", key, err)),
        }
    }
}

/// An empty read at `offset` of the object `info` describes, or
/// [`StorageError::RangeNotSatisfiable`] past its end.
fn empty_read(info: ObjectInfo, offset: u64) -> Result<ObjectRead> {
    if offset > info.size {
        return Err(StorageError::RangeNotSatisfiable { offset, size: info.size });
    }
    Ok(ObjectRead {
        size: info.size,
        offset,
        length: 0,
        e_tag: info.e_tag,
        last_modified: info.last_modified,
        bytes: stream::empty().boxed(),
    })
}

fn object_read(key: &ObjectKey, result: GetResult) -> ObjectRead {
    let range = result.range.clone();
    let size = result.meta.size;
    let e_tag = result.meta.e_tag.clone();
    let last_modified = super::objects::timestamp(result.meta.last_modified);
    let bytes = match result.payload {
        GetResultPayload::File(file, _) => file_chunks(key.clone(), file, range.clone()),
        GetResultPayload::Stream(stream) => {
            let key = key.clone();
            stream
                .map_err(move |e| StorageError::backend("read", &key, e))
                .map_ok(|chunk| stream::iter(split(chunk).map(Ok)))
                .try_flatten()
                .boxed()
        }
    };
    ObjectRead { size, offset: range.start, length: range.end - range.start, e_tag, last_modified, bytes }
}

/// `chunk` in pieces of at most [`MAX_CHUNK_BYTES`], none empty (no copying: they share it).
fn split(mut chunk: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || (!chunk.is_empty()).then(|| chunk.split_to(chunk.len().min(MAX_CHUNK_BYTES))))
}

/// Reads `range` of a local file in chunks of [`MAX_CHUNK_BYTES`]: `object_store`'s own reader
/// uses 8 KiB, a blocking-pool round trip each, which would make local downloads crawl.
fn file_chunks(key: ObjectKey, file: std::fs::File, range: Range<u64>) -> ByteStream {
    let failed = move |source: std::io::Error| {
        let source = object_store::Error::Generic { store: "LocalFileSystem", source: source.into() };
        StorageError::backend("read", &key, source)
    };
    let start = (file, range.start, range.end - range.start, false);
    stream::try_unfold(start, move |(mut file, offset, remaining, positioned)| {
        let failed = failed.clone();
        async move {
            if remaining == 0 {
                return Ok(None);
            }
            let read = tokio::task::spawn_blocking(move || {
                if !positioned {
                    file.seek(SeekFrom::Start(offset))?;
                }
                let want = remaining.min(MAX_CHUNK_BYTES as u64);
                let mut chunk = Vec::with_capacity(want as usize);
                (&mut file).take(want).read_to_end(&mut chunk)?;
                if chunk.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than its size said",
                    ));
                }
                Ok((file, Bytes::from(chunk)))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|read| read)
            .map_err(failed)?;
            let (file, chunk) = read;
            let len = chunk.len() as u64;
            Ok(Some((chunk, (file, offset + len, remaining - len, true))))
        }
    })
    .boxed()
}
