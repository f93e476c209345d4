//! moto's S3-compatible server (PyPI `moto[server]`, which `make test` installs into
//! `target/probe-venv`), started by the tests themselves on an ephemeral port. The tests that run
//! at the same time share one process; it is killed when the last of them lets go of it.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How long moto may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server.
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

static SHARED: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());

impl MotoServer {
    /// The running server, started if none is.
    pub fn shared() -> Arc<Self> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    fn start() -> Self {
        let binary = binary();
        let mut failures = Vec::new();
        // The port is picked free but could be taken before moto binds it: try a few.
        for _ in 0..3 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let mut log = tempfile::tempfile().expect("a log file for moto");
            let mut child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log.try_clone().expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            match wait_until_serving(&mut child, addr) {
                Ok(()) => return Self { child, addr },
                Err(problem) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("{problem}; its log:\n{}", read_log(&mut log)));
                }
            }
        }
        panic!("moto_server did not start:\n{}", failures.join("\n"));
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket with a fresh name, so that tests sharing the server never meet.
    pub fn create_bucket(&self) -> String {
        let bucket = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (status, body) = request(self.addr, "PUT", &format!("/{bucket}")).expect("create a bucket");
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
        bucket
    }

    /// How many multipart uploads of `bucket` were started and neither completed nor aborted.
    pub fn unfinished_uploads(&self, bucket: &str) -> usize {
        let (status, body) = request(self.addr, "GET", &format!("/{bucket}?uploads")).expect("list uploads");
        assert_eq!(status, 200, "listing the uploads of {bucket}: {body}");
        body.matches("<UploadId>").count()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` beside the probe virtualenv's Python.
fn binary() -> PathBuf {
    let python = std::env::var_os("FLATRENDER_PROBE_PYTHON").unwrap_or_else(|| {
        panic!(
            "FLATRENDER_PROBE_PYTHON is not set: run the tests with `make test`, which installs moto's S3 \
             server (scripts/probe-requirements.txt) into target/probe-venv"
        )
    });
    let binary = PathBuf::from(python).with_file_name("moto_server");
    assert!(
        binary.is_file(),
        "{} is missing: run `make test` to install moto's S3 server (scripts/probe-requirements.txt)",
        binary.display()
    );
    binary
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("an ephemeral port");
    listener.local_addr().expect("its address").port()
}

/// Polls until moto answers HTTP, it exits, or [`START_TIMEOUT`] passes.
fn wait_until_serving(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("moto_server exited with {status}"));
        }
        if request(addr, "GET", "/").is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("moto_server did not answer on {addr} within {START_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.1 request without a body; the status code and the body.
fn request(addr: SocketAddr, method: &str, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn read_log(log: &mut File) -> String {
    let mut text = String::new();
    let _ = log.rewind().and_then(|()| log.read_to_string(&mut text));
    text
}
