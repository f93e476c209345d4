//! Large writes to the local backend: a staging file `<destination>#<digits>` beside the
//! destination, written one part at a time on a blocking thread and flushed to disk as it goes,
//! then renamed onto the destination.
//!
//! Each part is hashed on a blocking thread (see [`BackgroundHasher`]) while another writes the
//! same part: the task receiving the upload only counts bytes and hands over parts, so receiving
//! one part overlaps hashing and writing the one before, and the 140 ms of SHA-256 a 256 MiB
//! upload costs no longer share a thread with the copy.
//!
//! With fsync, the staging file is written with direct I/O where the file system allows it (see
//! [`direct`](super::direct)): the writing thread copies a part into aligned blocks, and a
//! second thread writes the blocks of the part before to disk meanwhile. At most three parts are
//! held then: the one being received, the one being hashed and copied, and the one being
//! written. Without direct I/O, at most two: the one being received and the one being hashed
//! and written.
//!
//! Why not `object_store`'s own multipart upload for local files: it writes into the same kind of
//! staging file but flushes nothing before it completes, so with fsync on, a large upload sat in
//! the page cache until the end and the disk only began writing once the transfer was over; the
//! two took turns. Here the parts written so far reach the disk while the next ones arrive (by
//! direct writes, or flushes behind buffered ones), and completing has about a part left.
//!
//! Nothing appears under the destination before [`StagedWrite::publish`]: `LocalFileSystem` lists
//! no `name#digits` file and the key rules forbid `#`, so a staging file is never taken for an
//! object. Aborting removes it, and so does dropping the writer (a client that went away).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::digest::Sha256Digest;
use super::direct::{self, AlignedBuf, Block, Blocks};
use super::error::{Result, StorageError};
use super::hashing::BackgroundHasher;
use super::key::ObjectKey;

/// How many fresh names to try when a staging file's name is taken (with 128 random bits, a
/// second try already means something else is wrong).
const NAME_ATTEMPTS: usize = 4;

/// How many parts may be written past the flush in flight before the upload waits for it
/// (32 MiB of the writer's 2 MiB batches).
const FLUSH_BACKLOG_PARTS: u64 = 16;

/// The local backend, for writers that bypass `object_store`'s multipart upload.
#[derive(Clone, Debug)]
pub(crate) struct LocalTarget {
    /// The store itself: its mapping from keys to files is the one reads use.
    pub(crate) store: Arc<LocalFileSystem>,
    /// Flush data and directory entries before a write reports success.
    pub(crate) fsync: bool,
    /// With fsync, write staging files with direct I/O where the file system allows it.
    pub(crate) direct_io: bool,
}

/// What writing a part hands back: the staging file, and the blocks it filled (direct I/O).
type Written = (Staging, Option<Block>);

/// One object being written through a staging file.
pub(crate) struct StagedWrite {
    key: ObjectKey,
    dest: PathBuf,
    fsync: bool,
    /// Try direct I/O for the staging file (with fsync).
    direct_io: bool,
    /// Hashes the parts on a thread of its own, beside the one that writes them.
    hasher: BackgroundHasher,
    /// The staging file between parts; `None` before the first part and while one is written.
    staging: Option<Staging>,
    /// The part being hashed and written (or, with direct I/O, copied into blocks); the task
    /// holds the staging file meanwhile and hands back the blocks it filled.
    writing: Option<JoinHandle<io::Result<Written>>>,
    /// Parts written so far.
    parts_written: u64,
    /// The flush in flight, and how many parts it covers (buffered writes).
    flushing: Option<(JoinHandle<io::Result<()>>, u64)>,
    /// Direct I/O: the blocks of the last part copied, to write next.
    pending: Option<Block>,
    /// Direct I/O: the blocks being written; hands their buffer back.
    writing_blocks: Option<JoinHandle<io::Result<AlignedBuf>>>,
    /// Direct I/O: a buffer written out, for the next part to fill.
    spare: Option<AlignedBuf>,
}

impl StagedWrite {
    /// A write to `key`'s file; nothing is created before the first part.
    pub(crate) fn new(target: &LocalTarget, key: &ObjectKey) -> Result<Self> {
        let dest = target
            .store
            .path_to_filesystem(&key.to_path())
            .map_err(|e| StorageError::backend("start a write to", key, e))?;
        Ok(Self {
            key: key.clone(),
            dest,
            fsync: target.fsync,
            direct_io: target.direct_io,
            hasher: BackgroundHasher::default(),
            staging: None,
            writing: None,
            parts_written: 0,
            flushing: None,
            pending: None,
            writing_blocks: None,
            spare: None,
        })
    }

    /// Hashes and appends `chunks` on blocking threads once the part before is done, and
    /// returns without waiting for it: the next part can arrive meanwhile. With direct I/O, the
    /// part before goes to disk beside it (see [`write_blocks_behind`](Self::write_blocks_behind));
    /// else, with fsync, the parts written so far are flushed beside it (see
    /// [`flush_behind`](Self::flush_behind)). A failure shows on the next call.
    pub(crate) async fn write_part(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        self.wait_written().await?;
        match &self.staging {
            Some(staging) if staging.blocks.is_some() => self.write_blocks_behind().await?,
            _ if self.fsync => self.flush_behind().await?,
            _ => {}
        }
        self.hasher.add(chunks.clone()).await.map_err(|e| self.joined(e))?;
        let (staging, spare) = (self.staging.take(), self.spare.take());
        let (dest, fsync, direct_io) = (self.dest.clone(), self.fsync, self.direct_io);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let mut staging = open(staging, &dest, fsync, direct_io)?;
            let block = staging.append(&chunks, spare)?;
            Ok((staging, block))
        }));
        Ok(())
    }

    /// Hashes and appends `last`, the end of the data, and returns the digest of all of it;
    /// nothing is visible yet: [`publish`](Self::publish) or [`abort`](Self::abort) next.
    pub(crate) async fn finish_writing(&mut self, last: Vec<Bytes>) -> Result<Sha256Digest> {
        self.write_part(last).await?;
        self.wait_written().await?;
        std::mem::take(&mut self.hasher).finish(Vec::new()).await.map_err(|e| self.joined(e))
    }

    /// Flushes the staging file and renames it onto the destination; returns the entity tag
    /// `LocalFileSystem` gives the file.
    pub(crate) async fn publish(mut self) -> Result<String> {
        self.wait_written().await?;
        self.write_blocks_behind().await?;
        self.wait_blocks_written().await?;
        // Its error, if any, would not show again on the final flush (the descriptor is shared).
        self.wait_flushed().await?;
        let staging = self.staging.take();
        let (dest, fsync, direct_io) = (self.dest.clone(), self.fsync, self.direct_io);
        tokio::task::spawn_blocking(move || open(staging, &dest, fsync, direct_io)?.publish(&dest, fsync))
            .await
            .map_err(|e| self.joined(e))?
            .map_err(|e| self.failed("store", e))
    }

    /// Removes the staging file, once the part being written is done.
    pub(crate) async fn abort(mut self) {
        // A failed part has removed the file already (see `Staging`'s `Drop`). Blocks still
        // being written would land in the removed file; they are waited for, whatever the result.
        let written = self.wait_written().await;
        let _ = self.wait_blocks_written().await;
        if written.is_ok()
            && let Some(staging) = self.staging.take()
        {
            let removed = tokio::task::spawn_blocking(move || staging.remove()).await;
            if let Err(error) = removed.map_err(io::Error::other).and_then(|removed| removed) {
                tracing::warn!(key = %self.key, %error, "could not remove a staging file");
            }
        }
    }

    /// Waits for the part being written, which hands back the staging file (and the blocks it
    /// filled, with direct I/O).
    async fn wait_written(&mut self) -> Result<()> {
        if let Some(writing) = self.writing.take() {
            let (staging, block) = writing.await.map_err(|e| self.joined(e))?.map_err(|e| self.failed("write", e))?;
            self.staging = Some(staging);
            self.pending = block;
            self.parts_written += 1;
        }
        Ok(())
    }

    /// Direct I/O: once the blocks before are on disk, starts writing the last part's blocks,
    /// beside the hashing of the next part. Waiting here is what slows the upload to the disk's
    /// pace when the disk is the slower.
    async fn write_blocks_behind(&mut self) -> Result<()> {
        self.wait_blocks_written().await?;
        if let (Some(block), Some(staging)) = (self.pending.take(), &self.staging) {
            let file = Arc::clone(&staging.file);
            self.writing_blocks = Some(tokio::task::spawn_blocking(move || block.write(&file)));
        }
        Ok(())
    }

    /// Waits for the blocks being written, if any, and keeps their buffer for the next part.
    async fn wait_blocks_written(&mut self) -> Result<()> {
        if let Some(writing) = self.writing_blocks.take() {
            let buf = writing.await.map_err(|e| self.joined(e))?.map_err(|e| self.failed("write", e))?;
            self.spare = Some(buf);
        }
        Ok(())
    }

    /// Starts flushing the parts written so far to disk, beside the writing of the next: flushing
    /// part by part in line would leave the disk idle while a part is written and the network
    /// idle while one is flushed. A flush still running is left to run (the next one will cover
    /// more) unless [`FLUSH_BACKLOG_PARTS`] parts have been written since it began: then the
    /// upload waits for the disk, so that completing never has much left to flush.
    async fn flush_behind(&mut self) -> Result<()> {
        let Some(staging) = &self.staging else { return Ok(()) };
        if let Some((flushing, covered)) = &self.flushing
            && !flushing.is_finished()
            && self.parts_written - covered < FLUSH_BACKLOG_PARTS
        {
            return Ok(());
        }
        let file = Arc::clone(&staging.file);
        self.wait_flushed().await?;
        self.flushing = Some((tokio::task::spawn_blocking(move || file.sync_data()), self.parts_written));
        Ok(())
    }

    /// Waits for the flush in flight, if any.
    async fn wait_flushed(&mut self) -> Result<()> {
        if let Some((flushing, _)) = self.flushing.take() {
            flushing.await.map_err(|e| self.joined(e))?.map_err(|e| self.failed("write", e))?;
        }
        Ok(())
    }

    fn failed(&self, what: &str, source: io::Error) -> StorageError {
        let source = object_store::Error::Generic { store: "LocalFileSystem", source: source.into() };
        StorageError::backend(what, &self.key, source)
    }

    fn joined(&self, source: tokio::task::JoinError) -> StorageError {
        StorageError::backend("write", &self.key, object_store::Error::JoinError { source })
    }
}

impl Drop for StagedWrite {
    fn drop(&mut self) {
        // Dropped mid-upload (the client went away): remove the staging file, off the async
        // threads when there is a runtime. A part being written removes it when its task ends.
        // Should the runtime be shutting down, the task is dropped unrun, which removes it too.
        if let Some(staging) = self.staging.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(runtime.spawn_blocking(move || drop(staging)));
        }
    }
}

/// The staging file given, or a new one for `dest`.
fn open(staging: Option<Staging>, dest: &FsPath, fsync: bool, direct_io: bool) -> io::Result<Staging> {
    match staging {
        Some(staging) => Ok(staging),
        None => Staging::create(dest, fsync, direct_io),
    }
}

/// An open staging file, and the hash of what it holds; removed when dropped unless published.
struct Staging {
    path: PathBuf,
    /// Shared with the thread writing blocks or flushing.
    file: Arc<File>,
    /// With direct I/O: where the next blocks go, and the bytes past the last whole block.
    blocks: Option<Blocks>,
    published: bool,
}

impl Staging {
    /// Creates `<dest>#<random digits>`, and `dest`'s missing directories; with fsync and
    /// `direct_io`, for direct I/O where the file system allows it.
    fn create(dest: &FsPath, fsync: bool, direct_io: bool) -> io::Result<Self> {
        let mut created_dirs = false;
        let mut attempts = 0;
        let mut direct = fsync && direct_io;
        loop {
            let path = staging_path(dest);
            let created = if direct {
                direct::create_new(&path).transpose().unwrap_or_else(|| {
                    direct = false;
                    OpenOptions::new().write(true).create_new(true).open(&path)
                })
            } else {
                OpenOptions::new().write(true).create_new(true).open(&path)
            };
            match created {
                Ok(file) => {
                    let blocks = direct.then(Blocks::default);
                    return Ok(Self { path, file: Arc::new(file), blocks, published: false });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS => attempts += 1,
                Err(e) if e.kind() == ErrorKind::NotFound && !created_dirs => {
                    create_parent_dirs(dest, fsync)?;
                    created_dirs = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `chunks`; with direct I/O, copies them into aligned blocks (in `spare` when it is large enough) and returns the blocks to write.
    fn append(&mut self, chunks: &[Bytes], spare: Option<AlignedBuf>) -> io::Result<Option<Block>> {
        if let Some(blocks) = &mut self.blocks {
            return blocks.fill(spare, chunks);
        }
        chunks.iter().try_for_each(|chunk| self.file.as_ref().write_all(chunk))?;
        Ok(None)
    }

    /// Writes what is left (the last partial block, with direct I/O), flushes (with fsync),
    /// renames onto `dest` and flushes the directory entry; returns the entity tag. Every block
    /// handed out must be written first.
    fn publish(mut self, dest: &FsPath, fsync: bool) -> io::Result<String> {
        if let Some(blocks) = self.blocks.take() {
            blocks.finish(&self.file)?;
        }
        if fsync {
            self.file.sync_all()?;
        }
        let e_tag = e_tag(&self.file.metadata()?);
        std::fs::rename(&self.path, dest)?;
        self.published = true;
        if fsync && let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(e_tag)
    }

    fn remove(mut self) -> io::Result<()> {
        self.published = true;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published
            && let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a staging file");
        }
    }
}

/// `<dest>#<digits>`: the form `LocalFileSystem` reserves for uploads in progress.
fn staging_path(dest: &FsPath) -> PathBuf {
    let mut path = dest.as_os_str().to_owned();
    path.push(format!("#{}", Uuid::new_v4().as_u128()));
    path.into()
}

/// Creates `path`'s missing parent directories; with fsync, flushes each new one and the
/// directory that gained the first, so the new entries survive a power cut (as
/// `LocalFileSystem` does).
fn create_parent_dirs(path: &FsPath, fsync: bool) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Err(io::Error::new(ErrorKind::NotFound, "the destination has no parent directory"));
    };
    let first_existing = parent.ancestors().find(|dir| dir.exists()).map(FsPath::to_path_buf);
    std::fs::create_dir_all(parent)?;
    if fsync {
        for dir in parent.ancestors() {
            sync_dir(dir)?;
            if Some(dir) == first_existing.as_deref() {
                break;
            }
        }
    }
    Ok(())
}

/// Flushes a directory's entries; only Unix can open a directory to do so.
fn sync_dir(dir: &FsPath) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// `LocalFileSystem`'s entity tag for a file: inode, modification time (µs) and size, in hex.
fn e_tag(metadata: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0_u64;
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|mtime| mtime.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{inode:x}-{mtime:x}-{:x}\"", metadata.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(root: &FsPath) -> LocalTarget {
        LocalTarget { store: Arc::new(LocalFileSystem::new_with_prefix(root).unwrap()), fsync: true, direct_io: true }
    }

    fn key() -> ObjectKey {
        ObjectKey::new("a/b/object").unwrap()
    }

    /// The names of the files in `root/a/b`.
    fn files(root: &FsPath) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(root.join("a/b")) else { return Vec::new() };
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn parts_are_appended_and_published_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut write = StagedWrite::new(&target(dir.path()), &key()).unwrap();
        write.write_part(vec![Bytes::from_static(b"one "), Bytes::from_static(b"two ")]).await.unwrap();
        write.write_part(vec![Bytes::from_static(b"three ")]).await.unwrap();
        let digest = write.finish_writing(vec![Bytes::from_static(b"four")]).await.unwrap();
        assert_eq!(digest, Sha256Digest::of(b"one two three four"));
        // Nothing under the destination before publishing.
        assert!(!dir.path().join("a/b/object").exists());
        let e_tag = write.publish().await.unwrap();
        assert_eq!(files(dir.path()), ["object"]);
        let path = dir.path().join("a/b/object");
        assert_eq!(std::fs::read(&path).unwrap(), b"one two three four");
        assert_eq!(e_tag, super::e_tag(&std::fs::metadata(&path).unwrap()));
    }

    #[tokio::test]
    async fn uneven_parts_are_stored_exactly_with_and_without_fsync_or_direct_io() {
        let data: Vec<u8> = (0..40_000_u32).map(|i| (i * 7 % 253) as u8).collect();
        let data = Bytes::from(data);
        let parts = [
            vec![data.slice(..5_000)],
            vec![data.slice(5_000..5_100)],
            vec![data.slice(5_100..9_000), data.slice(9_000..21_111)],
        ];
        // Direct I/O is tried only with fsync; refused by the file system, or turned off, the
        // staging file is written through the page cache and flushed part by part.
        for (fsync, direct_io) in [(true, true), (true, false), (false, true)] {
            let dir = tempfile::tempdir().unwrap();
            let target = LocalTarget { fsync, direct_io, ..target(dir.path()) };
            let mut write = StagedWrite::new(&target, &key()).unwrap();
            for part in &parts {
                write.write_part(part.clone()).await.unwrap();
            }
            let digest = write.finish_writing(vec![data.slice(21_111..)]).await.unwrap();
            assert_eq!(digest, Sha256Digest::of(&data));
            let direct = write.staging.as_ref().is_some_and(|staging| staging.blocks.is_some());
            assert!(!direct || (fsync && direct_io), "direct I/O only when asked for");
            write.publish().await.unwrap();
            assert_eq!(
                std::fs::read(dir.path().join("a/b/object")).unwrap(),
                data,
                "fsync {fsync}, direct {direct_io}"
            );
            assert_eq!(files(dir.path()), ["object"]);
        }
    }

    #[tokio::test]
    async fn the_staging_file_is_hidden_and_aborting_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = target(dir.path());
        let mut write = StagedWrite::new(&target, &key()).unwrap();
        write.write_part(vec![Bytes::from_static(b"partial")]).await.unwrap();
        write.wait_written().await.unwrap();
        let names = files(dir.path());
        assert!(matches!(names.as_slice(), [name] if name.starts_with("object#")), "{names:?}");
        // `LocalFileSystem` does not list it.
        let listed: Vec<_> =
            futures_util::TryStreamExt::try_collect(object_store::ObjectStore::list(target.store.as_ref(), None))
                .await
                .unwrap();
        assert_eq!(listed, []);

        write.abort().await;
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn dropping_the_writer_between_parts_removes_the_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        runtime.block_on(async {
            let mut write = StagedWrite::new(&target(dir.path()), &key()).unwrap();
            write.write_part(vec![Bytes::from_static(b"partial")]).await.unwrap();
            write.wait_written().await.unwrap();
            assert_eq!(files(dir.path()).len(), 1);
            drop(write);
        });
        // Shutting down waits for the blocking task that removes it.
        drop(runtime);
        assert_eq!(files(dir.path()), Vec::<String>::new());

        // Without a runtime, at once.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let write = runtime.block_on(async {
            let mut write = StagedWrite::new(&target(dir.path()), &key()).unwrap();
            write.write_part(vec![Bytes::from_static(b"partial")]).await.unwrap();
            write.wait_written().await.unwrap();
            write
        });
        assert_eq!(files(dir.path()).len(), 1);
        drop(write);
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_part_that_cannot_be_written_fails_the_write() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the destination's parent should be: the staging file cannot be made.
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/b"), b"a file, not a directory").unwrap();
        let mut write = StagedWrite::new(&target(dir.path()), &key()).unwrap();
        write.write_part(vec![Bytes::from_static(b"data")]).await.unwrap();
        let err = write.finish_writing(Vec::new()).await.unwrap_err();
        assert!(matches!(err, StorageError::Backend { .. }), "{err}");
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"a file, not a directory");
    }
}
