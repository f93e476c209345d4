//! `make bench` — file transfer through `flatrender --target file` (issue 3).
//!
//! Against a release `flatrender --target file` on the local backend, objects on the same disk
//! as the reference files (`target/bench-file-transfer`):
//! - **throughput**, for N rounds of one `FLATRENDER_BENCH_MIB`-MiB file (default 256): the time
//!   to upload it with `UploadService.UploadFile` (1 MiB chunks, SHA-256 declared) and to
//!   download it with `FileService.DownloadFile`, each beside a plain copy of a file of the same
//!   size on the same disk (`std::fs::copy` + `fsync`, as the service also syncs what it
//!   stores) measured in the same round. Ratios are copy time / service time (≥ 0.7 is the goal).
//!   A download from disk is set beside a copy whose source is also freshly written and evicted
//!   from the page cache: on a virtual disk, data read again and again is served from the host's
//!   cache, so an old source would flatter the copy.
//! - **memory**, in a fresh process: peak resident set (`VmHWM`) while one
//!   `FLATRENDER_BENCH_STREAM_GIB`-GiB file (default 2) is uploaded and downloaded again
//!   (goal < 100 MB); 0 skips it.
//!
//! The client runs in this process and generates its bytes in memory, so the service's disk is
//! the only disk the upload touches. `FLATRENDER_BENCH_SERVER` runs another `flatrender` binary
//! than the one built with the bench (to compare two builds with the same client).

// Benchmarks fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flatrender_kit::auth::{AccessClaims, DevKeyFiles, Role};
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as pb;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use uuid::Uuid;

const ROUNDS: usize = 5;
const MIB: u64 = 1024 * 1024;
const CHUNK: usize = MIB as usize;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(bench());
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn bench() {
    let size = env_u64("FLATRENDER_BENCH_MIB", 256) * MIB;
    let stream_size = env_u64("FLATRENDER_BENCH_STREAM_GIB", 2) * 1024 * MIB;
    let db = TestDatabase::migrated().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-file-transfer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let chunk = pattern(CHUNK);

    let source = dir.join("source.bin");
    write_file(&source, &chunk, size);
    let mut times = Times::default();
    let sha256 = digest(&chunk, size);
    let mut server = Server::start(&db, &dir);
    let channel = server.channel().await;
    let token = server.token();
    for round in 0..ROUNDS {
        // The source is in the page cache (it was just written or read): a warm copy.
        let (copied, again) = (dir.join("copy.bin"), dir.join("copy-again.bin"));
        times.copy.push(copy(&source, &copied));
        // The copy just written, copied again from disk: the reference for a download of an
        // object just uploaded and not in the page cache. (Not the source: read every round, it
        // stays in the virtual disk's host-side cache, and reads several times faster than
        // anything freshly written.)
        evict(&copied);
        times.cold_copy.push(copy(&copied, &again));
        for path in [copied, again] {
            std::fs::remove_file(path).expect("remove copy");
        }

        let cpu_before = cpu_ms(server.child.id());
        let started = Instant::now();
        let file = upload(&channel, &token, &format!("round-{round}.bin"), &chunk, size, &sha256).await;
        times.upload.push(started.elapsed());
        times.upload_cpu.push(Duration::from_millis(cpu_ms(server.child.id()) - cpu_before));
        // First from disk (the service writes large uploads past the page cache anyway, but a
        // file system without direct I/O would keep them), then again, from the page cache the
        // first read filled.
        evict_all(&server.data_dir);
        for measure in [&mut times.cold_download, &mut times.download] {
            let started = Instant::now();
            assert_eq!(download(&channel, &token, &file.id).await, size);
            measure.push(started.elapsed());
        }
        delete(&channel, &token, &file.id).await;
        eprintln!(
            "round {}/{ROUNDS}: copy {:?} (from disk {:?}), upload {:?} (server CPU {:?}), download from disk {:?}, \
             from the page cache {:?}",
            round + 1,
            times.copy[round],
            times.cold_copy[round],
            times.upload[round],
            times.upload_cpu[round],
            times.cold_download[round],
            times.download[round],
        );
    }
    server.stop();
    std::fs::remove_file(&source).expect("remove source");

    let [copy, cold_copy, up, up_cpu, cold_down, down] =
        [times.copy, times.cold_copy, times.upload, times.upload_cpu, times.cold_download, times.download]
            .map(|mut values| median(&mut values));
    let mibps = |d: Duration| size as f64 / MIB as f64 / d.as_secs_f64();
    println!(
        "| measure (median of {ROUNDS}, {} MiB) | time | throughput | plain copy beside it | ratio | goal |",
        size / MIB
    );
    println!("|---|---|---|---|---|---|");
    for (name, d, reference, goal) in [
        ("upload (UploadFile)", up, copy, "≥ 0.70×"),
        ("download, object in the page cache", down, copy, "≥ 0.70×"),
        ("download, object read from disk", cold_down, cold_copy, "(a copy just written, read from disk)"),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} MiB/s | {:.0} ms ({:.0} MiB/s) | {:.2}× | {goal} |",
            ms(d),
            mibps(d),
            ms(reference),
            mibps(reference),
            reference.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!("\nServer CPU time per upload (median): {:.0} ms for {} MiB.\n", ms(up_cpu), size / MIB);

    if stream_size > 0 {
        let mut server = Server::start(&db, &dir);
        let channel = server.channel().await;
        let token = server.token();
        let sha256 = digest(&chunk, stream_size);
        let idle = server.status_kib("VmRSS");
        let started = Instant::now();
        let file = upload(&channel, &token, "stream.bin", &chunk, stream_size, &sha256).await;
        let after_upload = server.status_kib("VmHWM");
        let up = started.elapsed();
        let started = Instant::now();
        assert_eq!(download(&channel, &token, &file.id).await, stream_size);
        let down = started.elapsed();
        let peak = server.status_kib("VmHWM");
        delete(&channel, &token, &file.id).await;
        server.stop();
        println!();
        println!("| {} GiB through one process | value | goal |", stream_size / 1024 / MIB);
        println!("|---|---|---|");
        println!("| resident memory idle before (VmRSS) | {:.1} MB | |", mb(idle));
        println!("| peak resident memory after the upload (VmHWM) | {:.1} MB | < 100 MB |", mb(after_upload));
        println!("| peak resident memory after the download (VmHWM) | {:.1} MB | < 100 MB |", mb(peak));
        println!("| upload / download time | {:.1} s / {:.1} s | |", up.as_secs_f64(), down.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A release `flatrender --target file` on its own port.
struct Server {
    child: Child,
    port: u16,
    data_dir: PathBuf,
}

impl Server {
    fn start(db: &TestDatabase, dir: &Path) -> Self {
        let data_dir = dir.join("data");
        DevKeyFiles::under(&data_dir).ensure().expect("development keys");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = std::env::var_os("FLATRENDER_BENCH_SERVER").unwrap_or(env!("CARGO_BIN_EXE_flatrender").into());
        let child = Command::new(binary)
            .args(["--target", "file", "--grpc-addr", &format!("127.0.0.1:{port}"), "--metrics-addr", "127.0.0.1:0"])
            .args(["--log", "warn", "--cleanup", "false"])
            .args(["--max-simple-upload", "1TiB", "--default-user-quota", "1TiB", "--default-tenant-quota", "1TiB"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("FLATRENDER_DATABASE_URL", db.url().expose())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawns");
        Self { child, port, data_dir }
    }

    async fn channel(&self) -> Channel {
        let started = Instant::now();
        loop {
            let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
                .unwrap()
                .initial_stream_window_size(2 * 1024 * 1024)
                .initial_connection_window_size(8 * 1024 * 1024);
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the file service never listened: {e}"),
            }
        }
    }

    fn token(&self) -> String {
        let signer = DevKeyFiles::under(&self.data_dir).signer().expect("development signer");
        let now = jsonwebtoken::get_current_timestamp();
        let claims = AccessClaims {
            iss: "flatrender".into(),
            aud: "flatrender-api".into(),
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            role: Role::User,
            sid: None,
            svc: None,
            akid: None,
            scp: None,
            exp: now + 3600,
            nbf: now,
            iat: now,
            jti: Uuid::new_v4(),
        };
        signer.sign(&claims).expect("token")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("a /proc status field")
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// The SHA-256 of `size` bytes made of `chunk` repeated (computed before timing starts).
fn digest(chunk: &[u8], size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    hex::encode(hasher.finalize())
}

/// Uploads `size` bytes made of `chunk` repeated, whose SHA-256 is `sha256`.
async fn upload(channel: &Channel, token: &str, name: &str, chunk: &[u8], size: u64, sha256: &str) -> pb::File {
    let metadata = pb::UploadFileMetadata {
        target: Some(pb::UploadTarget { name: name.into(), ..Default::default() }),
        size_bytes: size,
        sha256: sha256.to_owned(),
        idempotency_key: String::new(),
    };
    // One shared buffer, sent as slices: the client copies nothing, like one that streams from
    // a reused read buffer.
    let chunk = prost::bytes::Bytes::copy_from_slice(chunk);
    let first = pb::UploadFileRequest { payload: Some(pb::upload_file_request::Payload::Metadata(metadata)) };
    let chunks = (0..size.div_ceil(CHUNK as u64)).map(move |i| {
        let n = (size - i * CHUNK as u64).min(CHUNK as u64) as usize;
        pb::UploadFileRequest { payload: Some(pb::upload_file_request::Payload::Chunk(chunk.slice(..n))) }
    });
    let requests = tokio_stream::iter(std::iter::once(first).chain(chunks));
    let mut client = pb::upload_service_client::UploadServiceClient::new(channel.clone());
    let response = client.upload_file(authed(token, requests)).await.expect("upload");
    response.into_inner().file.expect("the stored file")
}

/// Downloads a whole file and returns the bytes received.
async fn download(channel: &Channel, token: &str, id: &str) -> u64 {
    let mut client = pb::file_service_client::FileServiceClient::new(channel.clone());
    let request = pb::DownloadFileRequest { file_id: id.into(), ..Default::default() };
    let mut stream = client.download_file(authed(token, request)).await.expect("download").into_inner();
    let mut received = 0;
    while let Some(message) = stream.next().await {
        if let Some(pb::download_file_response::Payload::Chunk(bytes)) = message.expect("a message").payload {
            received += bytes.len() as u64;
        }
    }
    received
}

async fn delete(channel: &Channel, token: &str, id: &str) {
    let mut client = pb::file_service_client::FileServiceClient::new(channel.clone());
    client.delete_file(authed(token, pb::DeleteFileRequest { file_id: id.into() })).await.expect("delete");
}

/// Bytes that do not compress or repeat within a chunk.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn write_file(path: &Path, chunk: &[u8], size: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("source file"));
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("write");
        left -= n as u64;
    }
    file.into_inner().expect("flush").sync_all().expect("fsync");
}

/// The rounds' timings.
#[derive(Default)]
struct Times {
    copy: Vec<Duration>,
    cold_copy: Vec<Duration>,
    upload: Vec<Duration>,
    /// The server's CPU time (user and system) during each upload.
    upload_cpu: Vec<Duration>,
    cold_download: Vec<Duration>,
    download: Vec<Duration>,
}

/// Copies `source` to `target` and flushes it to disk, as the service syncs what it stores;
/// returns the time taken.
fn copy(source: &Path, target: &Path) -> Duration {
    let started = Instant::now();
    std::fs::copy(source, target).expect("copy");
    std::fs::File::open(target).and_then(|f| f.sync_all()).expect("fsync");
    started.elapsed()
}

/// Drops `path`'s pages from the page cache (`dd`'s `nocache` flag advises the kernel to), so
/// that the next read comes from disk.
fn evict(path: &Path) {
    let status = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .expect("runs dd");
    assert!(status.success(), "dd could not evict {}", path.display());
}

/// Drops every file under `dir` from the page cache.
fn evict_all(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("a directory").map(|e| e.expect("an entry")) {
        let kind = entry.file_type().expect("a file type");
        if kind.is_dir() {
            evict_all(&entry.path());
        } else if kind.is_file() {
            evict(&entry.path());
        }
    }
}

/// The CPU time (user and system) process `pid` has used so far, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    // utime and stime (fields 14 and 15 of the line), in ticks of 10 ms on Linux.
    (ticks(11) + ticks(12)) * 10
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1_000_000.0
}
