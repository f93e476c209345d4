//! Starts the real `flatrender` binary on ephemeral ports and talks to it.

#![allow(dead_code)]
// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running `flatrender` process, killed when dropped.
pub struct Flatrender {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Flatrender {
    /// Starts the binary with `args` and waits until it prints its addresses.
    pub fn start(database_url: &str, args: &[&str]) -> Self {
        let data_dir = std::env::temp_dir().join(format!("flatrender-test-{}", uuid_like()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_flatrender"))
            .args(["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            // Defaults through the environment, so a test's own flags override them.
            .env("FLATRENDER_SHUTDOWN_TIMEOUT", "3s")
            .env("FLATRENDER_HEALTH_INTERVAL", "200ms")
            .env("FLATRENDER_LOG", "info,sqlx=warn")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .env("FLATRENDER_DATABASE_URL", database_url)
            .env_remove("FLATRENDER_TARGET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the flatrender binary starts");

        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });

        // Read stdout on a thread, so a process that never prints fails the test instead of hanging it.
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the process never blocks on a full pipe.
                    continue;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (mut grpc, mut metrics) = (None, None);
        while grpc.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("flatrender did not print its addresses ({status:?}):\n{}", stderr.lock().unwrap());
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["gRPC", "+", "grpc-web", url] => {
                    grpc = url.trim_start_matches("http://").trim_start_matches("https://").parse().ok();
                }
                ["metrics", url] => {
                    metrics = url.trim_start_matches("http://").trim_end_matches("/metrics").parse().ok();
                }
                _ => {}
            }
        }
        Self { child: Some(child), grpc: grpc.unwrap(), metrics: metrics.unwrap(), data_dir, stderr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint()).unwrap().connect().await.expect("connects")
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Flatrender {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Waits on the Health/Watch stream until `service` reports `want`.
pub async fn await_health(channel: Channel, service: &str, want: ServingStatus, limit: Duration) {
    let mut client = HealthClient::new(channel);
    let mut stream =
        client.watch(HealthCheckRequest { service: service.into() }).await.expect("watch starts").into_inner();
    let outcome = tokio::time::timeout(limit, async {
        while let Some(message) = stream.next().await {
            if message.expect("health message").status() == want {
                return;
            }
        }
        panic!("health stream ended before {service:?} became {want:?}");
    })
    .await;
    assert!(outcome.is_ok(), "{service:?} did not become {want:?} within {limit:?}");
}

/// Runs a command-line program and returns (exit status, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flatrender"))
        .args(args)
        .env_remove("FLATRENDER_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// One plain HTTP/1.1 exchange (the request must say `Connection: close`); returns the raw
/// response. For grpc-web and `/metrics`, as a browser or Prometheus would make them.
pub fn http1_exchange(addr: SocketAddr, head: &[u8], body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head).unwrap();
    stream.write_all(body).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    out
}

/// The password of every account [`verified_account`] makes.
pub const PASSWORD: &str = "correct horse battery staple";

/// Registers `email` in the default tenant through `channel`, marks the address verified (as
/// the emailed token would) in `db`, logs in, and returns the user id and the tokens.
pub async fn verified_account(
    channel: Channel,
    db: &flatrender_kit::testing::TestDatabase,
    email: &str,
) -> (String, flatrender_proto::flatrender::identity::v1::TokenPair) {
    use flatrender_proto::flatrender::identity::v1 as pb;
    let mut auth = pb::auth_service_client::AuthServiceClient::new(channel);
    let user = auth
        .register(pb::RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: "Test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    sqlx::query("UPDATE identity.users SET email_verified_at = now() WHERE id = $1::uuid")
        .bind(&user.id)
        .execute(db.pool())
        .await
        .unwrap();
    let login = auth
        .login(pb::LoginRequest { email: email.into(), password: PASSWORD.into(), tenant_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::login_response::Result::Tokens(tokens)) = login.result else { panic!("no tokens for {email}") };
    (user.id, tokens)
}
