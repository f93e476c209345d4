//! Health follows PostgreSQL without a restart; SIGTERM drains and exits 0; a second signal
//! exits at once.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use flatrender_kit::testing::TestDatabase;
use support::{Flatrender, await_health};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres.sh");

fn cluster(action: &str, dir: &std::path::Path, port: Option<u16>) {
    let mut command = Command::new(SCRIPT);
    command.arg(action).arg(dir);
    if let Some(port) = port {
        command.arg(port.to_string());
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "postgres.sh {action}: {}", String::from_utf8_lossy(&output.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private PostgreSQL cluster, stopped and removed even when the test fails.
struct Cluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Self {
        let port = free_port();
        let cluster = Self { dir: std::env::temp_dir().join(format!("flatrender-pg-{port}")), port };
        cluster.up();
        cluster
    }

    fn up(&self) {
        cluster("cluster-start", &self.dir, Some(self.port));
    }

    fn down(&self) {
        cluster("cluster-stop", &self.dir, None);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).arg("cluster-stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn health_follows_the_database_without_a_restart() {
    // A private cluster this test may stop without disturbing the other tests.
    let pg = Cluster::start();
    let server = Flatrender::start(&pg.url(), &["--migrate", "--database-connect-timeout", "1s"]);
    let channel = server.channel().await;
    let limit = Duration::from_secs(20);
    await_health(channel.clone(), "", ServingStatus::Serving, limit).await;

    pg.down();
    await_health(channel.clone(), "", ServingStatus::NotServing, limit).await;
    await_health(channel.clone(), "flatrender.render.v1.RenderService", ServingStatus::NotServing, limit).await;

    pg.up();
    await_health(channel.clone(), "", ServingStatus::Serving, limit).await;
    await_health(channel, "flatrender.render.v1.RenderService", ServingStatus::Serving, limit).await;
    assert!(Command::new("kill").args(["-0", &server.pid().to_string()]).status().unwrap().success(), "same process");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_within_the_deadline() {
    let db = TestDatabase::migrated().await;
    let mut server = Flatrender::start(db.url().expose(), &["--shutdown-timeout", "2s"]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;

    // A long-running call is in flight when the signal arrives: the drain gives it 2 s.
    let mut watcher = HealthClient::new(channel);
    let _stream = watcher.watch(HealthCheckRequest { service: String::new() }).await.unwrap();
    let started = std::time::Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    // The stream never ends by itself: it is cut at the 2 s deadline, and the exit follows at once.
    assert!(started.elapsed() < Duration::from_millis(3500), "took {:?}", started.elapsed());
    assert!(server.stderr().contains("stopped"), "{}", server.stderr());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let db = TestDatabase::migrated().await;
    let mut server = Flatrender::start(db.url().expose(), &["--shutdown-timeout", "60s"]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut watcher = HealthClient::new(channel);
    let _stream = watcher.watch(HealthCheckRequest { service: String::new() }).await.unwrap();

    server.signal("TERM");
    // Wait until the first signal was taken, then send the second.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("draining") {
        assert!(std::time::Instant::now() < until, "first signal not logged: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(5)).expect("exits at once despite the 60 s drain");
    assert_eq!(status.code(), Some(130));
}
