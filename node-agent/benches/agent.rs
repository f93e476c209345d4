//! `make bench` — the node agent (issue 5).
//!
//! - **driver overhead**: one 300-frame chunk (1920x1080 PNG, `FLATRENDER_BENCH_FRAME_MS` per
//!   frame, default 50) rendered by `aerender-sim` run directly (stdout read and discarded) and
//!   through the agent's driver (stdout parsed, process tree supervised, every frame checked to
//!   exist, decode and have the right size), alternated for `FLATRENDER_BENCH_ROUNDS` rounds
//!   (default 3; 0 skips this part). The overhead is the ratio of the medians (goal ≤ 2 %).
//! - **idle footprint**: the `flatrender-agent` binary connected to an orchestrator (the render
//!   service in this process with production timings, over a fresh PostgreSQL database), idle:
//!   resident memory (`VmRSS`, `VmHWM`) and CPU share (user + system ticks from `/proc`) over
//!   `FLATRENDER_BENCH_IDLE_S` seconds (default 60) after a 10 s settling time (goals ≤ 15 MB and
//!   ≤ 0.1 %).
//! - **template cache**: time from submitting a job to its first accepted frame when the node
//!   must first fetch the template (a miss: a `FLATRENDER_BENCH_BUNDLE_MIB` MiB bundle, default
//!   48, under the file service's simple-upload limit, fetched through the file service,
//!   verified and unpacked) and when the template is cached (a hit), each round on a fresh node,
//!   for `FLATRENDER_BENCH_CACHE_ROUNDS` rounds (default 3; 0
//!   skips). The bytes the cache added show that a hit fetches nothing.

// Benchmarks fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/farm/mod.rs"]
mod farm;
#[path = "../../services/render/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatrender_agent::aerender::argv::{AerenderCommand, FrameSpan};
use flatrender_agent::aerender::driver::{RenderRun, render};
use flatrender_agent::process::{Activity, Limits};
use flatrender_agent::strays::Tracker;

const SIM: &str = env!("CARGO_BIN_EXE_aerender-sim");
const AGENT: &str = env!("CARGO_BIN_EXE_flatrender-agent");

const PROJECT: &str = r##"{
    "compositions": [{
        "name": "Main", "width": 1920, "height": 1080, "fps": 30, "duration": 900,
        "background": "#203040",
        "layers": [
            {"name": "Title", "kind": "text", "text": "Benchmark", "font": "Montserrat-Bold",
             "font_size": 96, "fill": "#ffffff", "position": [100, 100]},
            {"name": "Band", "kind": "solid", "color": "#c04020", "rect": [0, 800, 1920, 200]}
        ]
    }]
}"##;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(driver_overhead());
    runtime.block_on(cache_hit_versus_miss());
    runtime.block_on(idle_footprint());
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

async fn driver_overhead() {
    let frame_ms = env_u64("FLATRENDER_BENCH_FRAME_MS", 50);
    let rounds = env_u64("FLATRENDER_BENCH_ROUNDS", 3) as usize;
    if rounds == 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project.aepx.json");
    std::fs::write(&project, PROJECT).unwrap();
    let command = |out: &Path| AerenderCommand {
        project: project.clone(),
        composition: "Main".into(),
        output: out.join("frame_[#####].png"),
        frames: FrameSpan { start: 0, end: 299, step: 1 },
        script: None,
        render_settings_template: None,
        output_module_template: None,
        render_settings: BTreeMap::new(),
        output_settings: BTreeMap::new(),
        mfr: None,
        mem_usage: None,
        continue_on_missing_footage: false,
    };
    let env = [("FLATRENDER_SIM_FRAME_MS", frame_ms.to_string())];
    let tracker = Arc::new(Tracker::open(dir.path().join("renderers.json"), &["aerender-sim"]).unwrap());
    let (mut direct, mut driven) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let out = dir.path().join(format!("direct-{round}"));
        let argv = command(&out).argv().unwrap();
        let started = Instant::now();
        let status = Command::new(SIM).args(&argv).envs(env.clone()).stdout(Stdio::null()).status().unwrap();
        direct.push(started.elapsed());
        assert!(status.success());

        let out = dir.path().join(format!("driven-{round}"));
        let run = RenderRun {
            aerender: SIM.into(),
            command: command(&out),
            limits: Limits { no_output: Duration::from_secs(60), max_run: Duration::from_secs(3600) },
            frame_size: Some((1920, 1080)),
            env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            // As the agent runs it: recorded for cleanup after a crash.
            tracker: Some(tracker.clone()),
        };
        let started = Instant::now();
        let report = render(&run, &Activity::default(), std::future::pending(), |_| {}).await.unwrap();
        driven.push(started.elapsed());
        assert!(report.verdict.is_success(), "{:?}", report.verdict);
        assert_eq!(report.frames.len(), 300);
        println!("round {}: direct {:?}, through the driver {:?}", round + 1, direct[round], driven[round]);
    }
    let (d, v) = (median(direct), median(driven));
    println!();
    println!("| 300-frame chunk, 1920x1080, {frame_ms} ms a frame (median of {rounds}) | time | goal |");
    println!("|---|---|---|");
    println!("| aerender-sim run directly | {:.2} s | |", d.as_secs_f64());
    println!("| through the driver (parse, supervise, verify every frame) | {:.2} s | |", v.as_secs_f64());
    println!("| overhead | {:+.1} % | ≤ 2 % |", 100.0 * (v.as_secs_f64() / d.as_secs_f64() - 1.0));
    println!();
}

/// (resident now, peak resident) in kB, and CPU ticks (user + system), of `pid`.
fn sample(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command name.
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (kb("VmRSS:"), kb("VmHWM:"), ticks)
}

async fn idle_footprint() {
    let idle = Duration::from_secs(env_u64("FLATRENDER_BENCH_IDLE_S", 60));
    let o = support::Orchestrator::start_with(|settings| *settings = flatrender_render::Settings::default()).await;
    let state = tempfile::tempdir().unwrap();
    let token = o.join_token(&[]).await;
    let mut agent = tokio::process::Command::new(AGENT)
        .env("FLATRENDER_AGENT_ORCHESTRATOR", format!("http://{}", o.addr))
        .env("FLATRENDER_AGENT_JOIN_TOKEN", token)
        .env("FLATRENDER_AGENT_STATE_DIR", state.path())
        .env("FLATRENDER_AGENT_AERENDER", SIM)
        .env("FLATRENDER_AGENT_LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    o.until("the agent is online", "SELECT count(*) = 1 FROM render.nodes WHERE orchestrator_id IS NOT NULL").await;
    let pid = agent.id().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, _, ticks_before) = sample(pid);
    let started = Instant::now();
    tokio::time::sleep(idle).await;
    let (rss, hwm, ticks_after) = sample(pid);
    let elapsed = started.elapsed().as_secs_f64();
    // Clock ticks per second: 100 on Linux.
    let cpu = 100.0 * (ticks_after - ticks_before) as f64 / 100.0 / elapsed;
    let heartbeats = o.count("SELECT count(*) FROM render.node_health_logs").await;
    let _ = agent.start_kill();
    println!("| flatrender-agent idle, {:.0} s, connected, heartbeats every 5 s | value | goal |", elapsed);
    println!("|---|---|---|");
    println!("| resident memory (VmRSS) | {:.1} MB | ≤ 15 MB |", rss as f64 / 1000.0);
    println!("| peak resident memory (VmHWM) | {:.1} MB | |", hwm as f64 / 1000.0);
    println!("| CPU (user + system) | {cpu:.3} % of one core | ≤ 0.1 % |");
    println!("| health samples recorded by the orchestrator | {heartbeats} | |");
}

/// A template bundle: the standard project and `mib` MiB of incompressible footage, stored.
fn large_bundle(mib: usize) -> Vec<u8> {
    use std::io::Write;
    let mut noise = vec![0_u8; mib << 20];
    rand::fill(&mut noise[..]);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("project.aepx.json", stored).unwrap();
    zip.write_all(farm::project(&[]).as_bytes()).unwrap();
    zip.start_file("footage/noise.bin", stored).unwrap();
    zip.write_all(&noise).unwrap();
    zip.finish().unwrap().into_inner()
}

/// Submits ten frames of `template` as `owner` and waits for the first accepted frame.
async fn time_to_first_frame(
    o: &support::Orchestrator,
    owner: &support::Principal,
    template: &flatrender_proto::flatrender::file::v1::File,
) -> Duration {
    use flatrender_proto::flatrender::render::v1 as pb;
    let key = uuid::Uuid::new_v4().to_string();
    let submit =
        pb::SubmitRenderRequest { segments: vec![support::segment("Main", "0-9")], ..support::request(template, &key) };
    let started = Instant::now();
    let job = o.renders(owner).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    o.until_within(
        "the first frame is accepted",
        &format!("SELECT count(*) > 0 FROM render.frame_results WHERE job_id = '{}'", job.id),
        Duration::from_secs(120),
    )
    .await;
    let elapsed = started.elapsed();
    o.until_within(
        "the chunk is done",
        &format!(
            "SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{}' AND lane = 'render'",
            job.id
        ),
        Duration::from_secs(120),
    )
    .await;
    elapsed
}

async fn cache_hit_versus_miss() {
    use flatrender_agent::cache::CacheEvent;
    use flatrender_proto::flatrender::file::v1 as file_pb;
    let rounds = env_u64("FLATRENDER_BENCH_CACHE_ROUNDS", 3) as usize;
    if rounds == 0 {
        return;
    }
    let mib = env_u64("FLATRENDER_BENCH_BUNDLE_MIB", 48) as usize;
    let (o, _) = farm::stack_with(|_| {}).await;
    let bundle = large_bundle(mib);
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    let (mut missed_bytes, mut hit_bytes) = (0_u64, 0_u64);
    for round in 0..rounds {
        // Two customers with the same bytes: one template in the cache (content-addressed), and
        // each customer's plan allows one unfinished render.
        let (first, second) =
            (support::Principal::user(uuid::Uuid::new_v4()), support::Principal::user(uuid::Uuid::new_v4()));
        let mut templates = Vec::new();
        for owner in [&first, &second] {
            templates
                .push(o.upload(owner, owner.tenant, "template.zip", file_pb::FileKind::TemplateBundle, &bundle).await);
        }
        let state = tempfile::tempdir().unwrap();
        let options = farm::AgentOptions { env: &[("FLATRENDER_SIM_FRAME_MS", "50")], ..farm::AgentOptions::default() };
        let mut agent = farm::agent(&o, state.path(), options).await;
        let added = |agent: &mut farm::RunningAgent| {
            let mut bytes = 0;
            while let Ok(event) = agent.cache_events.try_recv() {
                if let CacheEvent::Added { bytes: added, .. } = event {
                    bytes += added;
                }
            }
            bytes
        };
        misses.push(time_to_first_frame(&o, &first, &templates[0]).await);
        missed_bytes = added(&mut agent);
        hits.push(time_to_first_frame(&o, &second, &templates[1]).await);
        hit_bytes += added(&mut agent);
        println!("round {}: miss {:?}, hit {:?}", round + 1, misses[round], hits[round]);
        agent.stop().await;
    }
    let (miss, hit) = (median(misses), median(hits));
    println!();
    println!("| submit to first accepted frame, {mib} MiB template, fresh node (median of {rounds}) | value |");
    println!("|---|---|");
    println!("| cache miss (fetch, verify, unpack, render) | {:.2} s |", miss.as_secs_f64());
    println!("| cache hit | {:.2} s |", hit.as_secs_f64());
    println!("| hit / miss | {:.2} |", hit.as_secs_f64() / miss.as_secs_f64());
    println!("| bytes the cache added on a miss / on hits | {} MiB / {hit_bytes} B |", missed_bytes >> 20);
}
