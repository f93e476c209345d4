//! The storage layer against real backends: every case runs on a directory (`local::…`) and on
//! moto's S3-compatible server started by the test (`s3::…`), with S3's smallest part size so
//! that a dozen megabytes already make a multipart upload of several parts.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod moto;

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flatrender_file::storage::{
    BackendConfig, BackendKind, ByteRange, Expected, MAX_CHUNK_BYTES, MIN_PART_SIZE, ObjectKey, S3Config,
    SecretAccessKey, Sha256Digest, Storage, StorageConfig, StorageError, UploadedPart,
};
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use moto::MotoServer;
use uuid::Uuid;

/// The part size of every test store: S3's minimum.
const PART: usize = MIN_PART_SIZE;

/// One backend under test, and what keeps it alive.
struct Backend {
    storage: Storage,
    place: Place,
}

enum Place {
    Directory(tempfile::TempDir),
    Bucket { server: Arc<MotoServer>, name: String },
}

impl Backend {
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageConfig::local(dir.path().join("objects")).with_part_size(PART)).unwrap();
        Self { storage, place: Place::Directory(dir) }
    }

    fn s3() -> Self {
        let server = MotoServer::shared();
        let name = server.create_bucket();
        let config = StorageConfig::s3(S3Config {
            endpoint: Some(server.endpoint()),
            region: "us-east-1".into(),
            bucket: name.clone(),
            access_key_id: "flatrender-test".into(),
            secret_access_key: SecretAccessKey::new("flatrender-test-secret"),
            path_style: true,
            allow_http: true,
        })
        .with_part_size(PART);
        Self { storage: Storage::open(&config).unwrap(), place: Place::Bucket { server, name } }
    }

    /// Uploads begun and neither completed nor aborted: staging files in the directory, or
    /// multipart uploads the S3 server still holds.
    fn unfinished_uploads(&self) -> usize {
        match &self.place {
            Place::Directory(dir) => staging_files(dir.path()),
            Place::Bucket { server, name } => server.unfinished_uploads(name),
        }
    }
}

/// `object_store`'s local staging files are `<name>#<n>`.
fn staging_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() { staging_files(&path) } else { usize::from(path.to_string_lossy().contains('#')) }
        })
        .sum()
}

/// Runs each case once per backend: `local::<case>` and `s3::<case>`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Backend::local()).await;
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Backend::s3()).await;
                }
            )+
        }
    };
}

on_both_backends!(
    round_trip_with_sha256,
    empty_object,
    multipart_object,
    ranges,
    wrong_checksum_stores_nothing,
    wrong_size_stores_nothing,
    failing_stream_stores_nothing,
    delete_is_idempotent,
    copy,
    list_by_prefix,
    parts_concatenate_in_order,
    assembling_checks_the_whole,
    missing_parts_are_named,
    abort_removes_parts,
    missing_objects_are_not_found,
);

// ---------------------------------------------------------------------------------------------
// Helpers

/// `len` bytes that differ from any other `seed`'s (xorshift).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// `body` as an upload stream of `chunk`-byte pieces.
fn chunks(body: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + use<> {
    let pieces: Vec<_> = body.chunks(chunk).map(|piece| Ok(Bytes::copy_from_slice(piece))).collect();
    stream::iter(pieces)
}

/// `body` in pieces, then a failure, as a client that goes away mid-upload.
fn failing_after(body: &[u8]) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + use<> {
    chunks(body, 64 * 1024).chain(stream::once(async { Err(io::Error::other("the client went away")) }))
}

fn new_key() -> ObjectKey {
    ObjectKey::file(Uuid::new_v4(), Uuid::new_v4())
}

fn sha(body: &[u8]) -> Sha256Digest {
    Sha256Digest::of(body)
}

async fn put(storage: &Storage, key: &ObjectKey, body: &[u8]) {
    let stored =
        storage.put(key, chunks(body, 64 * 1024), Expected::exactly(body.len() as u64, sha(body))).await.unwrap();
    assert_eq!(stored.size, body.len() as u64);
}

/// The bytes of `range`, checking the chunk sizes on the way.
async fn read(storage: &Storage, key: &ObjectKey, range: ByteRange) -> Vec<u8> {
    let read = storage.get(key, range).await.unwrap();
    let pieces: Vec<Bytes> = read.bytes.try_collect().await.unwrap();
    assert!(pieces.iter().all(|piece| (1..=MAX_CHUNK_BYTES).contains(&piece.len())), "chunk sizes");
    let body = pieces.concat();
    assert_eq!(body.len() as u64, read.length, "the announced length");
    body
}

async fn assert_absent(storage: &Storage, key: &ObjectKey) {
    let err = storage.head(key).await.unwrap_err();
    assert!(matches!(&err, StorageError::NotFound { key: missing } if missing == key.as_str()), "{err}");
}

async fn listed(storage: &Storage, prefix: &ObjectKey) -> Vec<(String, u64)> {
    let mut found: Vec<_> =
        storage.list(prefix).map_ok(|info| (info.key.to_string(), info.size)).try_collect().await.unwrap();
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn round_trip_with_sha256(backend: &Backend) {
    let storage = &backend.storage;
    let body = data(300_000, 1);
    let key = new_key();
    // Through `tokio::spawn`, as a gRPC handler would: the upload future must be `Send`.
    let task = {
        let (storage, key, body) = (storage.clone(), key.clone(), body.clone());
        tokio::spawn(async move {
            let expected = Expected::exactly(body.len() as u64, sha(&body));
            storage.put(&key, chunks(&body, 10_000), expected).await
        })
    };
    let stored = task.await.unwrap().unwrap();
    assert_eq!(stored.size, 300_000);
    assert_eq!(stored.sha256, sha(&body));

    let info = storage.head(&key).await.unwrap();
    assert_eq!(info.key, key);
    assert_eq!(info.size, 300_000);
    assert!(info.e_tag.is_some());
    let age = time::OffsetDateTime::now_utc() - info.last_modified;
    assert!(age.whole_minutes().abs() < 5, "last modified {}", info.last_modified);

    let read = storage.get(&key, ByteRange::ALL).await.unwrap();
    assert_eq!((read.size, read.offset, read.length), (300_000, 0, 300_000));
    let back: Vec<Bytes> = read.bytes.try_collect().await.unwrap();
    assert_eq!(back.concat(), body);

    // No expectations: stored as it comes, and the digest is still reported.
    let other = new_key();
    let stored = storage.put(&other, chunks(b"hello", 2), Expected::ANYTHING).await.unwrap();
    assert_eq!(stored.size, 5);
    assert_eq!(stored.sha256.to_hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
}

async fn empty_object(backend: &Backend) {
    let storage = &backend.storage;
    let key = new_key();
    let stored = storage.put(&key, chunks(b"", 1), Expected::exactly(0, sha(b""))).await.unwrap();
    assert_eq!((stored.size, stored.sha256), (0, sha(b"")));
    assert_eq!(read(storage, &key, ByteRange::ALL).await, b"");
    assert_eq!(read(storage, &key, ByteRange::from(0)).await, b"");
    assert_eq!(read(storage, &key, ByteRange::new(0, 10)).await, b"");
    let err = storage.get(&key, ByteRange::from(1)).await.unwrap_err();
    assert!(matches!(err, StorageError::RangeNotSatisfiable { offset: 1, size: 0 }), "{err}");
}

async fn multipart_object(backend: &Backend) {
    let storage = &backend.storage;
    // Two full parts and a half one.
    let body = data(2 * PART + PART / 2 + 123, 2);
    let key = new_key();
    let stored =
        storage.put(&key, chunks(&body, 256 * 1024), Expected::exactly(body.len() as u64, sha(&body))).await.unwrap();
    assert_eq!((stored.size, stored.sha256), (body.len() as u64, sha(&body)));
    assert_eq!(backend.unfinished_uploads(), 0);

    let info = storage.head(&key).await.unwrap();
    assert_eq!(info.size, body.len() as u64);
    if storage.backend() == BackendKind::S3 {
        // S3 marks a multipart object's entity tag with its part count.
        let e_tag = info.e_tag.unwrap_or_default();
        assert!(e_tag.trim_matches('"').ends_with("-3"), "three parts, but the entity tag is {e_tag}");
    }
    let back = read(storage, &key, ByteRange::ALL).await;
    assert!(back == body, "the object read back differs");
    // Across the first part boundary.
    assert_eq!(read(storage, &key, ByteRange::new(PART as u64 - 10, 20)).await, &body[PART - 10..PART + 10]);
}

async fn ranges(backend: &Backend) {
    let storage = &backend.storage;
    let body = data(1000, 3);
    let key = new_key();
    put(storage, &key, &body).await;

    let start = storage.get(&key, ByteRange::new(0, 10)).await.unwrap();
    assert_eq!((start.size, start.offset, start.length), (1000, 0, 10));
    assert_eq!(read(storage, &key, ByteRange::new(0, 10)).await, &body[..10]);
    assert_eq!(read(storage, &key, ByteRange::new(100, 50)).await, &body[100..150]);
    // A suffix: from an offset to the end.
    let suffix = storage.get(&key, ByteRange::from(990)).await.unwrap();
    assert_eq!((suffix.offset, suffix.length), (990, 10));
    assert_eq!(read(storage, &key, ByteRange::from(990)).await, &body[990..]);
    // A length running past the end is cut there.
    assert_eq!(read(storage, &key, ByteRange::new(995, 100)).await, &body[995..]);
    // At the end, or no length: nothing, but no error either.
    for empty in [ByteRange::from(1000), ByteRange::new(1000, 10), ByteRange::new(10, 0)] {
        let at_end = storage.get(&key, empty).await.unwrap();
        assert_eq!((at_end.size, at_end.offset, at_end.length), (1000, empty.offset, 0), "{empty:?}");
        assert_eq!(read(storage, &key, empty).await, b"", "{empty:?}");
    }
    // Past the end.
    for past in [ByteRange::from(1001), ByteRange::new(5000, 10), ByteRange::new(1001, 0)] {
        let err = storage.get(&key, past).await.unwrap_err();
        assert!(
            matches!(err, StorageError::RangeNotSatisfiable { offset, size: 1000 } if offset == past.offset),
            "{past:?}: {err}"
        );
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::OutOfRange);
    }
}

async fn wrong_checksum_stores_nothing(backend: &Backend) {
    let storage = &backend.storage;
    // One request, and a multipart upload.
    for (len, seed) in [(1000, 4), (2 * PART + 1, 5)] {
        let body = data(len, seed);
        let key = new_key();
        let claimed = sha(b"something else");
        let expected = Expected { size: Some(len as u64), sha256: Some(claimed) };
        let err = storage.put(&key, chunks(&body, 128 * 1024), expected).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::ChecksumMismatch { expected, actual } if *expected == claimed && *actual == sha(&body)),
            "{err}"
        );
        assert!(err.to_string().starts_with("sha256: mismatch"), "{err}");
        assert_absent(storage, &key).await;
        assert_eq!(backend.unfinished_uploads(), 0, "{len} bytes");
    }
}

async fn wrong_size_stores_nothing(backend: &Backend) {
    let storage = &backend.storage;
    // Fewer bytes than declared (a truncated upload).
    let body = data(1000, 6);
    let key = new_key();
    let err = storage.put(&key, chunks(&body, 100), Expected { size: Some(1001), sha256: None }).await.unwrap_err();
    assert!(matches!(err, StorageError::SizeMismatch { expected: 1001, actual: 1000 }), "{err}");
    assert_absent(storage, &key).await;

    // More bytes than declared, noticed in the middle of a multipart upload: the rest is not read.
    let body = data(3 * PART, 7);
    // Past the first part, so the upload is already under way when the excess shows.
    let declared = 2 * PART as u64 + 5;
    let err =
        storage.put(&key, chunks(&body, 64 * 1024), Expected { size: Some(declared), sha256: None }).await.unwrap_err();
    match err {
        StorageError::SizeMismatch { expected, actual } => {
            assert_eq!(expected, declared);
            assert!(actual > declared && actual < body.len() as u64, "stopped reading at {actual}");
        }
        other => panic!("expected a size mismatch, got {other}"),
    }
    assert_absent(storage, &key).await;
    assert_eq!(backend.unfinished_uploads(), 0);
}

async fn failing_stream_stores_nothing(backend: &Backend) {
    let storage = &backend.storage;
    for (len, seed) in [(100_000, 8), (2 * PART + 1, 9)] {
        let key = new_key();
        let err = storage.put(&key, failing_after(&data(len, seed)), Expected::ANYTHING).await.unwrap_err();
        assert!(matches!(&err, StorageError::Input(_)), "{err}");
        assert!(err.to_string().contains("the client went away"), "{err}");
        assert_absent(storage, &key).await;
        assert_eq!(backend.unfinished_uploads(), 0, "{len} bytes");

        // A failed overwrite leaves the object that was there as it was.
        let original = data(5000, seed + 100);
        put(storage, &key, &original).await;
        storage.put(&key, failing_after(&data(len, seed)), Expected::ANYTHING).await.unwrap_err();
        assert_eq!(read(storage, &key, ByteRange::ALL).await, original);
    }
}

async fn delete_is_idempotent(backend: &Backend) {
    let storage = &backend.storage;
    let key = new_key();
    put(storage, &key, b"short-lived").await;
    storage.delete(&key).await.unwrap();
    assert_absent(storage, &key).await;
    storage.delete(&key).await.unwrap();
    storage.delete(&new_key()).await.unwrap();
    let err = storage.get(&key, ByteRange::ALL).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

async fn copy(backend: &Backend) {
    let storage = &backend.storage;
    let body = data(70_000, 10);
    let (from, to) = (new_key(), new_key());
    put(storage, &from, &body).await;
    storage.copy(&from, &to).await.unwrap();
    assert_eq!(read(storage, &to, ByteRange::ALL).await, body);
    assert_eq!(read(storage, &from, ByteRange::ALL).await, body, "the source stays");
    assert_eq!(storage.head(&to).await.unwrap().size, 70_000);

    // A copy replaces what was under the target.
    let other = data(10, 11);
    let source = new_key();
    put(storage, &source, &other).await;
    storage.copy(&source, &to).await.unwrap();
    assert_eq!(read(storage, &to, ByteRange::ALL).await, other);

    let missing = new_key();
    let err = storage.copy(&missing, &new_key()).await.unwrap_err();
    assert!(matches!(&err, StorageError::NotFound { key } if key == missing.as_str()), "{err}");
}

async fn list_by_prefix(backend: &Backend) {
    let storage = &backend.storage;
    let (tenant, neighbour) = (Uuid::new_v4(), Uuid::new_v4());
    let mut expected = Vec::new();
    for size in [1, 10, 100] {
        let key = ObjectKey::file(tenant, Uuid::new_v4());
        put(storage, &key, &data(size, size as u64)).await;
        expected.push((key.to_string(), size as u64));
    }
    put(storage, &ObjectKey::file(neighbour, Uuid::new_v4()), b"not yours").await;
    expected.sort();

    assert_eq!(listed(storage, &ObjectKey::tenant_files(tenant)).await, expected);
    assert_eq!(listed(storage, &ObjectKey::tenant_files(neighbour)).await.len(), 1);
    assert_eq!(listed(storage, &ObjectKey::tenant_files(Uuid::new_v4())).await, []);
    // Whole segments: `tenants/<id>/fil` is not a prefix of `tenants/<id>/files/…`.
    assert_eq!(listed(storage, &ObjectKey::new(format!("tenants/{tenant}/fil")).unwrap()).await, []);
}

/// Stores parts `(number, bytes)` of `session`, each checked against its own digest.
async fn put_parts(storage: &Storage, session: Uuid, parts: &[(u32, &[u8])]) {
    for (number, body) in parts {
        let expected = Expected::exactly(body.len() as u64, sha(body));
        storage.put_part(session, *number, chunks(body, 256 * 1024), expected).await.unwrap();
    }
}

async fn parts_concatenate_in_order(backend: &Backend) {
    let storage = &backend.storage;
    let session = Uuid::new_v4();
    let (one, two, three) = (data(3 << 20, 12), data(3 << 20, 13), data(1 << 20, 14));
    // Out of order; part 1 first with the wrong bytes, then again (a retried part replaces
    // itself); part 2 twice with the same bytes (a retry is harmless).
    let wrong = data(3 << 20, 15);
    put_parts(storage, session, &[(3, &three), (1, &wrong), (2, &two), (1, &one), (2, &two)]).await;
    let sizes = [(1, 3 << 20), (2, 3 << 20), (3, 1 << 20)].map(|(number, size)| UploadedPart { number, size });
    assert_eq!(storage.upload_parts(session).await.unwrap(), sizes);

    let whole = [one, two, three].concat();
    let dest = new_key();
    let stored =
        storage.complete_upload(session, 3, &dest, Expected::exactly(whole.len() as u64, sha(&whole))).await.unwrap();
    assert_eq!((stored.size, stored.sha256), (whole.len() as u64, sha(&whole)));
    assert!(read(storage, &dest, ByteRange::ALL).await == whole, "the parts in order");
    assert_eq!(storage.upload_parts(session).await.unwrap(), []);
    assert_eq!(listed(storage, &ObjectKey::upload(session)).await, []);
    assert_eq!(backend.unfinished_uploads(), 0);

    let err = storage.put_part(session, 0, chunks(b"x", 1), Expected::ANYTHING).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey(_)), "{err}");
}

async fn assembling_checks_the_whole(backend: &Backend) {
    let storage = &backend.storage;
    let session = Uuid::new_v4();
    let (one, two, three) = (data(PART, 16), data(PART, 17), data(1000, 18));
    put_parts(storage, session, &[(1, &one), (2, &two), (3, &three)]).await;
    let whole = [one, two, three].concat();
    let dest = new_key();

    let claimed = sha(b"not the whole");
    let err =
        storage.assemble_upload(session, 3, &dest, Expected::exactly(whole.len() as u64, claimed)).await.unwrap_err();
    assert!(matches!(&err, StorageError::ChecksumMismatch { actual, .. } if *actual == sha(&whole)), "{err}");
    assert_absent(storage, &dest).await;
    assert_eq!(backend.unfinished_uploads(), 0);
    assert_eq!(storage.upload_parts(session).await.unwrap().len(), 3, "the parts stay for the caller to decide");

    let err = storage.complete_upload(session, 3, &dest, Expected::exactly(1, sha(&whole))).await.unwrap_err();
    assert!(matches!(err, StorageError::SizeMismatch { expected: 1, actual } if actual == whole.len() as u64), "{err}");
    assert_absent(storage, &dest).await;

    // Assembling keeps the parts; aborting then removes them.
    let stored =
        storage.assemble_upload(session, 3, &dest, Expected::exactly(whole.len() as u64, sha(&whole))).await.unwrap();
    assert_eq!(stored.sha256, sha(&whole));
    assert_eq!(storage.upload_parts(session).await.unwrap().len(), 3);
    assert_eq!(storage.abort_upload(session).await.unwrap(), 3);
    assert!(read(storage, &dest, ByteRange::ALL).await == whole);
}

async fn missing_parts_are_named(backend: &Backend) {
    let storage = &backend.storage;
    let session = Uuid::new_v4();
    put_parts(storage, session, &[(1, b"first"), (3, b"third")]).await;
    let dest = new_key();
    let err = storage.complete_upload(session, 4, &dest, Expected::ANYTHING).await.unwrap_err();
    assert!(matches!(&err, StorageError::MissingParts { missing } if *missing == [2, 4]), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::FailedPrecondition);
    assert_absent(storage, &dest).await;
    assert_eq!(storage.upload_parts(session).await.unwrap().len(), 2);
}

async fn abort_removes_parts(backend: &Backend) {
    let storage = &backend.storage;
    let (session, other) = (Uuid::new_v4(), Uuid::new_v4());
    put_parts(storage, session, &[(1, b"one"), (2, b"two"), (3, b"three")]).await;
    put_parts(storage, other, &[(1, b"another session")]).await;
    assert_eq!(storage.abort_upload(session).await.unwrap(), 3);
    assert_eq!(storage.upload_parts(session).await.unwrap(), []);
    assert_eq!(storage.abort_upload(session).await.unwrap(), 0, "idempotent");
    assert_eq!(storage.abort_upload(Uuid::new_v4()).await.unwrap(), 0);
    assert_eq!(storage.upload_parts(other).await.unwrap().len(), 1, "other sessions keep theirs");
}

async fn missing_objects_are_not_found(backend: &Backend) {
    let storage = &backend.storage;
    let key = new_key();
    assert_absent(storage, &key).await;
    for range in [ByteRange::ALL, ByteRange::from(10), ByteRange::new(10, 0)] {
        let err = storage.get(&key, range).await.unwrap_err();
        assert!(matches!(&err, StorageError::NotFound { .. }), "{range:?}: {err}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
    }
}

// ---------------------------------------------------------------------------------------------
// The local backend's own writer for objects larger than a part: a staging file beside the
// destination, flushed part by part, renamed into place when complete and checked.

/// A local store under a fresh directory, with or without fsync (and with it, direct I/O).
fn local_store(fsync: bool) -> (tempfile::TempDir, std::path::PathBuf, Storage) {
    local_store_with(fsync, true)
}

/// [`local_store`], direct I/O on or off.
fn local_store_with(fsync: bool, direct_io: bool) -> (tempfile::TempDir, std::path::PathBuf, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let mut config = StorageConfig::local(&root).with_part_size(PART);
    if let BackendConfig::Local(local) = &mut config.backend {
        local.fsync = fsync;
        local.direct_io = direct_io;
    }
    let storage = Storage::open(&config).unwrap();
    (dir, root, storage)
}

/// The files under `dir`, walked on disk (not through the store, which hides staging files).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn local_large_writes_land_where_the_store_reads_them() {
    for (fsync, direct_io) in [(true, true), (true, false), (false, true)] {
        let (_dir, root, storage) = local_store_with(fsync, direct_io);
        // Directories that do not exist yet, and three parts and a bit.
        let key = ObjectKey::new("new/nested/dirs/object.bin").unwrap();
        let body = data(3 * PART + 777, 40);
        let stored =
            storage.put(&key, chunks(&body, 100_000), Expected::exactly(body.len() as u64, sha(&body))).await.unwrap();
        assert_eq!((stored.size, stored.sha256), (body.len() as u64, sha(&body)));

        // The same file `LocalFileSystem` maps the key to, and nothing else on disk.
        assert_eq!(files_under(&root), [root.join("new/nested/dirs/object.bin")], "fsync {fsync}");
        let info = storage.head(&key).await.unwrap();
        assert_eq!(info.size, body.len() as u64);
        assert_eq!(info.e_tag, stored.e_tag, "the entity tag the store reports");
        assert!(read(&storage, &key, ByteRange::ALL).await == body, "read back through the store");
        assert_eq!(
            read(&storage, &key, ByteRange::new(2 * PART as u64 - 3, 6)).await,
            &body[2 * PART - 3..2 * PART + 3]
        );
        let listed = listed(&storage, &ObjectKey::new("new").unwrap()).await;
        assert_eq!(listed, [(key.to_string(), body.len() as u64)]);

        // Overwriting replaces it whole.
        let shorter = data(PART + 1, 41);
        put(&storage, &key, &shorter).await;
        assert!(read(&storage, &key, ByteRange::ALL).await == shorter);
        assert_eq!(files_under(&root).len(), 1);
    }
}

#[tokio::test]
async fn local_failed_large_writes_keep_the_previous_object() {
    let (_dir, root, storage) = local_store(true);
    let key = new_key();
    let original = data(2 * PART + 5, 42);
    put(&storage, &key, &original).await;
    let original_tag = storage.head(&key).await.unwrap().e_tag;

    let body = data(3 * PART, 43);
    let claimed = sha(b"not these bytes");
    let err = storage.put(&key, chunks(&body, 64 * 1024), Expected::exactly(body.len() as u64, claimed)).await;
    assert!(matches!(err, Err(StorageError::ChecksumMismatch { .. })), "{err:?}");
    let err = storage.put(&key, chunks(&body, 64 * 1024), Expected::exactly(body.len() as u64 - 1, sha(&body))).await;
    assert!(matches!(err, Err(StorageError::SizeMismatch { .. })), "{err:?}");
    let err = storage.put(&key, failing_after(&body), Expected::ANYTHING).await;
    assert!(matches!(err, Err(StorageError::Input(_))), "{err:?}");

    assert!(read(&storage, &key, ByteRange::ALL).await == original, "the previous object stays");
    assert_eq!(storage.head(&key).await.unwrap().e_tag, original_tag);
    assert_eq!(files_under(&root).len(), 1, "no staging file left: {:?}", files_under(&root));
}

/// A client that goes away mid-upload: the upload's future is dropped, not aborted.
#[test]
fn local_dropped_writes_leave_no_staging_file() {
    let (_dir, root, storage) = local_store(true);
    let key = new_key();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    runtime.block_on(async {
        // Two parts and a chunk, then nothing more: by the time the stream is asked for more,
        // the first part has been written to the staging file.
        let body = data(2 * PART + 64 * 1024, 44);
        let (asked, mut asked_for_more) = tokio::sync::mpsc::channel::<()>(1);
        let stream = chunks(&body, 64 * 1024).chain(stream::once(async move {
            asked.send(()).await.unwrap();
            std::future::pending::<Result<Bytes, io::Error>>().await
        }));
        let upload = tokio::spawn({
            let (storage, key) = (storage.clone(), key.clone());
            async move { storage.put(&key, stream, Expected::ANYTHING).await }
        });
        asked_for_more.recv().await.unwrap();
        let staging: Vec<_> = files_under(&root).into_iter().filter(|p| p.to_string_lossy().contains('#')).collect();
        assert_eq!(staging.len(), 1, "the upload under way has its staging file: {staging:?}");
        upload.abort();
        assert!(upload.await.unwrap_err().is_cancelled());
    });
    // Shutting down waits for the blocking tasks that remove the file.
    drop(runtime);
    assert_eq!(files_under(&root), Vec::<std::path::PathBuf>::new());

    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(assert_absent(&storage, &key));
}
