//! The orchestrator's dispatch benchmarks (issue 4), over the real render module and real
//! PostgreSQL, with simulated agents speaking the real Session protocol (the tests' harness):
//!
//! - **throughput**: 1,000 agents with one slot each complete queued one-frame chunks;
//!   assignments plus completions per second, beside pgbench's rate for a single-row UPDATE on
//!   the same server in the same round. Per chunk an agent records its one frame's simulated
//!   upload (a `render.object_uploads` row, as UploadObject would, without the bytes; the
//!   harness writes all agents' records group-committed) before its FrameReport, and the
//!   orchestrator checks the frames against it. Also the server's WAL records per chunk over
//!   the timed part (writes the database must do, whatever the machine's speed that day).
//! - **latency**: an idle orchestrator with 10 agents; one chunk queued (its transaction's
//!   COMMIT) → the AssignTask received by an agent; p50 and p99.
//! - **dead-node detection**: an agent in a child process holds a chunk; the child is killed
//!   with SIGKILL; time until the chunk is back in the queue (production timings: reconnect
//!   grace 10 s).
//! - **stream scale**: agents in a child process heartbeating every 5 s; the orchestrator
//!   process's CPU, resident memory and the database's row writes and commits per second.
//!
//! Sizes: `FLATRENDER_BENCH_AGENTS` (1000), `FLATRENDER_BENCH_TASKS` (20000),
//! `FLATRENDER_BENCH_SCALE_AGENTS` (5000, 0 skips), `FLATRENDER_BENCH_ROUNDS` (3);
//! `FLATRENDER_BENCH_SECTIONS` picks some of throughput, latency, dead-node, scale (default all).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use support::agent::UploadLedger;
use support::{AgentClient, AgentSpec, Behaviour, Identity, Orchestrator, SimAgent};
use tonic::transport::Channel;
use uuid::Uuid;

use flatrender_render::Settings;

/// Set in a child process: run agents from the identities on stdin instead of the benchmarks.
const CHILD_ENV: &str = "FLATRENDER_BENCH_AGENTS_OF";
/// The database of that orchestrator, where the child's agents record their simulated uploads.
const CHILD_DATABASE_ENV: &str = "FLATRENDER_BENCH_AGENTS_DATABASE";
/// Agents per HTTP/2 connection (servers cap concurrent streams per connection).
const AGENTS_PER_CONNECTION: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    if let Ok(address) = std::env::var(CHILD_ENV) {
        runtime.block_on(child_agents(&address));
        return;
    }
    let rounds = env_usize("FLATRENDER_BENCH_ROUNDS", 3).max(1);
    let sections = std::env::var("FLATRENDER_BENCH_SECTIONS").unwrap_or_default();
    let run = |name: &str| sections.is_empty() || sections.split(',').any(|s| s.trim() == name);
    runtime.block_on(async {
        if run("throughput") {
            throughput_section(rounds).await;
        }
        if run("latency") {
            latency_section().await;
        }
        if run("dead-node") {
            dead_node_section(rounds).await;
        }
        if run("scale") {
            scale_section().await;
        }
    });
}

/// Production timings, enrolment unthrottled (the benchmark enrols thousands of nodes).
fn production(settings: &mut Settings) {
    *settings = Settings { enroll_attempts_per_minute: 1_000_000, ..Settings::default() };
}

async fn channels(o: &Orchestrator, agents: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..agents.div_ceil(AGENTS_PER_CONNECTION) {
        channels.push(connect(&format!("http://{}", o.addr)).await);
    }
    channels
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(address.to_owned()).expect("a URI").connect().await.expect("the orchestrator answers")
}

fn client(channel: &Channel) -> AgentClient {
    AgentClient::new(channel.clone())
        .max_decoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
        .max_encoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
}

/// Enrols `count` nodes through the real RPCs, 32 at a time.
async fn enroll_many(o: &Orchestrator, count: usize) -> Vec<Identity> {
    futures_util::stream::iter(0..count)
        .map(|_| async { o.enroll(&AgentSpec::default()).await })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Connects an agent for each identity, [`AGENTS_PER_CONNECTION`] per connection, and waits
/// for every Welcome.
async fn connect_many(
    channels: &[Channel],
    uploads: &Arc<UploadLedger>,
    identities: Vec<Identity>,
    behaviour: Behaviour,
) -> Vec<SimAgent> {
    let agents: Vec<SimAgent> = futures_util::stream::iter(identities.into_iter().enumerate())
        .map(|(i, identity)| {
            let client = client(&channels[i / AGENTS_PER_CONNECTION % channels.len()]);
            let credential = format!("Bearer {}", identity.credential);
            let spec = AgentSpec { behaviour, ..AgentSpec::default() };
            async move { SimAgent::connect_over(client, uploads, identity, spec, &credential).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for agent in &agents {
        agent.welcome().await;
    }
    agents
}

/// Queues `tasks` one-frame chunks in jobs of 1,000 (as SubmitRender writes them), in one
/// transaction, and notifies the dispatchers.
async fn queue_chunks(o: &Orchestrator, tasks: usize) {
    let mut left = tasks;
    while left > 0 {
        let frames = left.min(1000) as i32;
        support::seed_job(
            o.pool(),
            support::JobSeed { segments: vec![("Main".into(), 0, frames - 1)], chunk_size: 1, ..Default::default() },
        )
        .await;
        left -= frames as usize;
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Throughput

async fn throughput_section(rounds: usize) {
    let agents = env_usize("FLATRENDER_BENCH_AGENTS", 1000);
    let tasks = env_usize("FLATRENDER_BENCH_TASKS", 20_000);
    let mut rates = Vec::new();
    let mut references = Vec::new();
    let mut wal = Vec::new();
    for round in 0..rounds {
        let o = Orchestrator::start_with(production).await;
        let pgbench = pgbench_rate(&o).await;
        let channels = channels(&o, agents).await;
        let identities = enroll_many(&o, agents).await;
        let connected = connect_many(&channels, &o.uploads, identities, Behaviour::Complete).await;
        let wal_before = wal_records(&o).await;
        let started = Instant::now();
        queue_chunks(&o, tasks).await;
        // Every chunk of a job done moves the job on to assembly (its completion check, in the
        // transaction of its last result). Polling the ten job rows costs nothing; counting
        // the done chunks cost the database 10 ms a poll, ~13 % of a core.
        let jobs = tasks.div_ceil(1000);
        o.until_within(
            "every chunk is done",
            &format!(
                "SELECT count(*) = {jobs} FROM render.render_jobs WHERE state NOT IN ('queued', 'preparing', 'rendering')"
            ),
            Duration::from_secs(600),
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let wal_per_chunk = (wal_records(&o).await - wal_before) as f64 / tasks as f64;
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM render.frame_jobs WHERE lane = 'render' AND state = 'done'")
                .fetch_one(o.pool())
                .await
                .unwrap();
        assert_eq!(done, tasks as i64, "every chunk is done once its job assembles");
        let rate = (2 * tasks) as f64 / elapsed;
        println!(
            "throughput round {round}: {tasks} chunks on {agents} agents in {elapsed:.2} s: {rate:.0} assignments+completions/s; pgbench {pgbench:.0} tps; {wal_per_chunk:.1} WAL records per chunk"
        );
        rates.push(rate);
        references.push(pgbench);
        wal.push(wal_per_chunk);
        drop(connected);
    }
    let rate = median(&mut rates);
    let reference = median(&mut references);
    println!();
    println!("| measure (median of {rounds}) | value | pgbench single-row UPDATE, same round | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| dispatch throughput, {agents} agents, {tasks} one-frame chunks | {rate:.0}/s | {reference:.0} tps | {:.2}× | ≥ 5,000/s |",
        rate / reference
    );
    println!();
    println!("WAL records per chunk (median of {rounds}): {:.1}", median(&mut wal));
    println!();
}

/// The server's WAL records so far (all databases: the bench's own is the only busy one).
async fn wal_records(o: &Orchestrator) -> i64 {
    sqlx::query_scalar("SELECT wal_records::bigint FROM pg_stat_wal").fetch_one(o.pool()).await.unwrap()
}

/// pgbench's rate (2 clients, 5 s) for `UPDATE … SET n = n + 1 WHERE id = :random` on a table of
/// 1,000 rows in the round's database.
async fn pgbench_rate(o: &Orchestrator) -> f64 {
    sqlx::query("CREATE TABLE IF NOT EXISTS public.bench_rows (id int PRIMARY KEY, n bigint NOT NULL)")
        .execute(o.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO public.bench_rows SELECT g, 0 FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING")
        .execute(o.pool())
        .await
        .unwrap();
    let mut script = tempfile::NamedTempFile::new().unwrap();
    writeln!(script, "\\set id random(1, 1000)\nUPDATE public.bench_rows SET n = n + 1 WHERE id = :id;").unwrap();
    let url = o.db.url().expose().to_owned();
    let path = script.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::env::var("FLATRENDER_PGBENCH").unwrap_or_else(|_| "pgbench".into()))
            .args(["-n", "-c", "2", "-j", "2", "-T", "5", "-f"])
            .arg(&path)
            .arg(&url)
            .output()
            .expect("pgbench runs (scripts/postgres.sh pgbench finds or installs it)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| panic!("pgbench printed no rate: {text} {}", String::from_utf8_lossy(&output.stderr)))
}

// ---------------------------------------------------------------------------------------------
// Latency

async fn latency_section() {
    let samples = env_usize("FLATRENDER_BENCH_LATENCY_SAMPLES", 300);
    let o = Orchestrator::start_with(production).await;
    let channels = channels(&o, 10).await;
    let identities = enroll_many(&o, 10).await;
    let agents = connect_many(&channels, &o.uploads, identities, Behaviour::Complete).await;
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (job, segment) = one_chunk_job(&o).await;
        let mut tx = o.pool().begin().await.unwrap();
        let task: Uuid = sqlx::query_scalar(
            "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, segment_id, priority, submitted_at, template_sha256,
                    composition_name, frame_start, frame_end, max_attempts)
             SELECT tenant_id, 'render', id, $2, priority, created_at, template_sha256, 'Main', 0, 0, 3
               FROM render.render_jobs WHERE id = $1
          RETURNING id",
        )
        .bind(job)
        .bind(segment)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query("SELECT pg_notify('render_queue', '')").execute(&mut *tx).await.unwrap();
        let queued = Instant::now();
        tx.commit().await.unwrap();
        let task_id = task.to_string();
        let receivers = agents.iter().map(|agent| {
            let task_id = task_id.clone();
            Box::pin(async move {
                agent
                    .expect("the assignment", |event| match event {
                        support::AgentEvent::Assign(_, t) if t.task_id == task_id => Some(t.clone()),
                        _ => None,
                    })
                    .await;
            })
        });
        futures_util::future::select_all(receivers).await;
        latencies.push(queued.elapsed().as_secs_f64() * 1000.0);
        // The agent completes it; the next sample starts on an idle farm.
        o.until("the sample is done", &format!("SELECT state = 'done' FROM render.frame_jobs WHERE id = '{task}'"))
            .await;
    }
    latencies.sort_by(f64::total_cmp);
    println!("| dispatch latency, queued (COMMIT) → AssignTask received, idle, {samples} samples | value | goal |");
    println!("|---|---|---|");
    println!("| p50 | {:.2} ms | |", percentile(&latencies, 0.5));
    println!("| p99 | {:.2} ms | ≤ 10 ms |", percentile(&latencies, 0.99));
    println!("| max | {:.2} ms | |", latencies[latencies.len() - 1]);
    println!();
}

/// A job with one segment and no chunks yet.
async fn one_chunk_job(o: &Orchestrator) -> (Uuid, Uuid) {
    let job: Uuid = sqlx::query_scalar(
        "INSERT INTO render.render_jobs (tenant_id, template_file_id, template_sha256, priority, plan_code,
                output_width, output_height, output_fps, frames_total, chunk_size_frames, max_attempts)
         VALUES (gen_random_uuid(), gen_random_uuid(), $1, 0, 'pro', 1280, 720, 30, 1, 1, 3)
      RETURNING id",
    )
    .bind([0x5a_u8; 32].as_slice())
    .fetch_one(o.pool())
    .await
    .unwrap();
    let segment: Uuid = sqlx::query_scalar(
        "INSERT INTO render.render_job_segments (tenant_id, job_id, position, composition_name, frame_start, frame_end)
         SELECT tenant_id, id, 0, 'Main', 0, 0 FROM render.render_jobs WHERE id = $1 RETURNING id",
    )
    .bind(job)
    .fetch_one(o.pool())
    .await
    .unwrap();
    (job, segment)
}

// ---------------------------------------------------------------------------------------------
// Child processes of agents (dead-node detection, stream scale)

/// Starts this executable as a child running agents for `identities` against `o`; returns
/// once every agent is welcomed (the child prints `ready`).
fn spawn_agents(o: &Orchestrator, identities: &[Identity], behaviour: &str) -> std::process::Child {
    let exe = std::env::current_exe().expect("this executable");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, format!("http://{}", o.addr))
        .env("FLATRENDER_BENCH_BEHAVIOUR", behaviour)
        .env(CHILD_DATABASE_ENV, o.db.url().expose())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the agents' process starts");
    let mut stdin = child.stdin.take().unwrap();
    for identity in identities {
        writeln!(stdin, "{} {} {}", identity.node_id, identity.credential, identity.name).unwrap();
    }
    drop(stdin);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the agents' process reports ready");
    child
}

/// The child: agents for the identities on stdin, until killed.
async fn child_agents(address: &str) {
    let behaviour = match std::env::var("FLATRENDER_BENCH_BEHAVIOUR").as_deref() {
        Ok("hang") => Behaviour::Hang,
        _ => Behaviour::Complete,
    };
    let identities: Vec<Identity> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(Identity {
                node_id: parts.next()?.parse().ok()?,
                credential: parts.next()?.to_owned(),
                name: parts.next()?.to_owned(),
            })
        })
        .collect();
    let mut channels = Vec::new();
    for _ in 0..identities.len().div_ceil(AGENTS_PER_CONNECTION) {
        channels.push(connect(address).await);
    }
    // The simulated frame uploads are recorded through a few connections of this process.
    let url = std::env::var(CHILD_DATABASE_ENV).expect("the database of the agents' orchestrator");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_lazy(&url).expect("a database URL");
    let agents = connect_many(&channels, &UploadLedger::new(pool), identities, behaviour).await;
    println!("ready");
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
    drop(agents);
}

// ---------------------------------------------------------------------------------------------
// Dead-node detection

async fn dead_node_section(rounds: usize) {
    let mut detections = Vec::new();
    let grace = Settings::default().reconnect_grace;
    for round in 0..rounds {
        let o = Orchestrator::start_with(production).await;
        let identities = enroll_many(&o, 1).await;
        let mut child = spawn_agents(&o, &identities, "hang");
        queue_chunks(&o, 1).await;
        o.until(
            "the chunk is leased to the child",
            "SELECT count(*) = 1 FROM render.frame_jobs WHERE state IN ('leased', 'running')",
        )
        .await;
        child.kill().expect("SIGKILL");
        let killed = Instant::now();
        child.wait().unwrap();
        o.until_within(
            "the chunk is back in the queue",
            "SELECT count(*) = 1 FROM render.frame_jobs WHERE state = 'queued' AND lease_epoch = 1",
            Duration::from_secs(120),
        )
        .await;
        let seconds = killed.elapsed().as_secs_f64();
        println!("dead-node round {round}: {seconds:.2} s");
        detections.push(seconds);
    }
    let detection = median(&mut detections);
    println!();
    println!("| measure (median of {rounds}) | value | goal |");
    println!("|---|---|---|");
    println!(
        "| agent process SIGKILLed → its chunk back in the queue (reconnect grace {} s) | {detection:.2} s | ≤ 15 s |",
        grace.as_secs()
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// Stream scale

async fn scale_section() {
    let agents = env_usize("FLATRENDER_BENCH_SCALE_AGENTS", 5000);
    if agents == 0 {
        return;
    }
    // At least one health-log interval, so every node's stored sample falls in the window.
    let window = Duration::from_secs(env_usize("FLATRENDER_BENCH_SCALE_SECONDS", 150) as u64);
    let o = Orchestrator::start_with(production).await;
    let identities = enroll_many(&o, agents).await;
    let mut child = spawn_agents(&o, &identities, "complete");
    // Let the connection storm settle: every agent connected, then one full heartbeat round
    // (so the window holds heartbeats only, no Hellos).
    let connecting = Instant::now();
    o.until_within(
        "every agent connected",
        &format!("SELECT count(*) = {agents} FROM render.nodes WHERE orchestrator_id IS NOT NULL"),
        Duration::from_secs(600),
    )
    .await;
    println!("{agents} agents connected in {:.1} s", connecting.elapsed().as_secs_f64());
    // The storm's events (a NodeOnline per node) are read by the outbox consumers for a while
    // after; the window measures the steady state after them.
    let draining = Instant::now();
    o.until_within(
        "the outbox consumers caught up",
        "SELECT NOT EXISTS (SELECT 1 FROM platform.outbox_consumers c
                             WHERE EXISTS (SELECT 1 FROM platform.outbox e WHERE (e.txid, e.id) > (c.last_txid, c.last_id)))",
        Duration::from_secs(600),
    )
    .await;
    println!("outbox consumers caught up in {:.1} s", draining.elapsed().as_secs_f64());
    tokio::time::sleep(Settings::default().heartbeat_interval * 2).await;

    let (cpu_before, writes_before, commits_before) = (cpu_seconds(), writes(&o).await, commits(&o).await);
    let tables_before = table_writes(&o).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, writes_after, commits_after) = (cpu_seconds(), writes(&o).await, commits(&o).await);
    let tables_after = table_writes(&o).await;
    let rss = resident_mb();
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let connected = o.count("SELECT count(*) FROM render.nodes WHERE state = 'online'").await;
    println!(
        "| {agents} agents heartbeating every {} s, {:.0} s window ({connected} connected) | value | goal |",
        Settings::default().heartbeat_interval.as_secs(),
        elapsed
    );
    println!("|---|---|---|");
    println!("| orchestrator CPU | {:.3} cores | ≤ 1 core |", (cpu_after - cpu_before) / elapsed);
    println!("| orchestrator resident memory (VmRSS) | {rss:.1} MB | ≤ 300 MB |");
    println!(
        "| database row writes (inserted+updated+deleted) | {:.1}/s | ≤ 50/s |",
        (writes_after - writes_before) / elapsed
    );
    println!("| database commits | {:.1}/s | |", (commits_after - commits_before) / elapsed);
    let mut by_table: Vec<(String, f64)> = tables_after
        .iter()
        .map(|(table, after)| (table.clone(), (after - tables_before.get(table).copied().unwrap_or(0.0)) / elapsed))
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    by_table.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (table, rate) in by_table.iter().take(5) {
        println!("| row writes to {table} | {rate:.1}/s | |");
    }
    println!();
}

/// Row writes per table (`pg_stat_user_tables`), after the statistics are flushed.
async fn table_writes(o: &Orchestrator) -> std::collections::HashMap<String, f64> {
    stat(o, "0").await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT schemaname || '.' || relname, (n_tup_ins + n_tup_upd + n_tup_del)::bigint FROM pg_stat_user_tables",
    )
    .fetch_all(o.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(table, writes)| (table, writes as f64)).collect()
}

/// This process's user + system CPU time, seconds (`/proc/self/stat`, clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime) are at 11 and 12 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap();
    kb / 1000.0
}

async fn writes(o: &Orchestrator) -> f64 {
    stat(o, "tup_inserted + tup_updated + tup_deleted").await
}

async fn commits(o: &Orchestrator) -> f64 {
    stat(o, "xact_commit").await
}

/// A counter of `pg_stat_database` for the round's database, after the statistics are flushed.
async fn stat(o: &Orchestrator, expression: &str) -> f64 {
    // Statistics reach the shared view within about a second of a transaction's end.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(o.pool()).await.unwrap();
    let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT ({expression})::bigint FROM pg_stat_database WHERE datname = current_database()"
    )))
    .fetch_one(o.pool())
    .await
    .unwrap();
    value as f64
}
