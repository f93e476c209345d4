//! `make bench` — start-up and idle footprint of `flatrender --target all`.
//!
//! For each of N rounds, against a reachable, already migrated database:
//! - start-up: from spawning the process to the health Watch stream reporting SERVING for the
//!   whole process (every service's database answered), next to spawning `flatrender --version`
//!   (process start-up alone) in the same round;
//! - idle memory: resident set (VmRSS) after five idle seconds.
//!
//! Prints medians and the ratio to the goals of issue 2 (< 1 s, < 60 MB).

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flatrender_kit::testing::TestDatabase;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ROUNDS: usize = 15;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let db = TestDatabase::migrated().await;
    let binary = env!("CARGO_BIN_EXE_flatrender");
    let data_dir = std::env::temp_dir().join(format!("flatrender-bench-{}", std::process::id()));
    let (mut startup, mut version, mut rss) = (Vec::new(), Vec::new(), Vec::new());

    for round in 0..ROUNDS {
        let started = Instant::now();
        let status = Command::new(binary).arg("--version").stdout(Stdio::null()).status().expect("runs");
        assert!(status.success());
        version.push(started.elapsed());

        let port = free_port();
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["--target", "all", "--grpc-addr", &format!("127.0.0.1:{port}"), "--metrics-addr", "127.0.0.1:0"])
            .args(["--log", "warn", "--health-interval", "1s"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("FLATRENDER_DATABASE_URL", db.url().expose())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawns");
        let channel = loop {
            match tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
                Ok(c) => break c,
                // Poll every 2 ms: fine enough to time, light enough not to steal the 2 cores.
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => panic!("never listened: {e}"),
            }
        };
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest { service: String::new() })
            .await
            .expect("watch")
            .into_inner();
        while let Some(message) = stream.next().await {
            if message.expect("health").status() == ServingStatus::Serving {
                break;
            }
        }
        startup.push(started.elapsed());
        drop(stream);

        tokio::time::sleep(Duration::from_secs(5)).await;
        rss.push(resident_kib(child.id()));
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
        eprintln!("round {}/{ROUNDS}: start-up {:?}, idle RSS {} KiB", round + 1, startup[round], rss[round]);
    }
    let _ = std::fs::remove_dir_all(&data_dir);

    let (s, v) = (median(&mut startup), median(&mut version));
    rss.sort_unstable();
    let r = rss[rss.len() / 2];
    println!("| measure (median of {ROUNDS}) | value | beside it | goal |");
    println!("|---|---|---|---|");
    println!(
        "| spawn → whole process SERVING | {:.1} ms | `--version` alone: {:.1} ms ({:.1}×) | < 1000 ms ({:.1}% of goal) |",
        ms(s),
        ms(v),
        ms(s) / ms(v),
        ms(s) / 10.0
    );
    println!(
        "| idle resident memory, `--target all` | {:.1} MB | min {:.1}, max {:.1} | < 60 MB ({:.0}% of goal) |",
        mb(r),
        mb(rss[0]),
        mb(rss[rss.len() - 1]),
        mb(r) / 60.0 * 100.0
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
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
