//! `make bench` — the gateway's cost (issue 6).
//!
//! - **Overhead of the gateway hop**: `AuthService.GetMe` with a user's bearer token, made
//!   directly against `flatrender --target identity` and through `flatrender --target gateway
//!   --upstream identity=…` in front of it, alternating in each round: sequential latency
//!   (p50, p99 over `FLATRENDER_BENCH_CALLS`, default 2000) and throughput with 32 calls in
//!   flight for 3 s. Goal: ≤ 1 ms added at p99 and ≥ 80 % of direct throughput.
//! - **JWT-verified in-memory calls per core**: `GetMe` with `x-api-key` against
//!   `flatrender --target all` (the edge exchanges the key once, then verifies the key's token,
//!   applies the limits and logs every call; `GetMe` of a key reads no table), 32 in flight for
//!   3 s; calls divided by the server's CPU seconds (from `/proc/<pid>/stat`). Beside it, bare
//!   `TokenVerifier::verify` on one thread. Goal: ≥ 20,000 calls per core-second.
//!
//! Rounds: `FLATRENDER_BENCH_ROUNDS` (default 3); medians are reported.

// Benchmarks fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::identity::v1 as pb;
use tonic::transport::Channel;

const PASSWORD: &str = "correct horse battery staple";
const IN_FLIGHT: usize = 32;
const WINDOW: Duration = Duration::from_secs(3);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(bench());
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(db: &TestDatabase, name: &str, args: &[&str]) -> Self {
        let data_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-gateway").join(name);
        let _ = std::fs::remove_dir_all(&data_dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_flatrender"))
            .args(["--grpc-addr", &format!("127.0.0.1:{port}"), "--metrics-addr", "127.0.0.1:0", "--log", "warn"])
            // Limits far above what the benchmark sends: it measures the work, not refusals.
            .args(["--rate-limit-address", "100000000", "--rate-limit-tenant", "100000000"])
            .args(["--rate-limit-api-key", "100000000"])
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("FLATRENDER_DATABASE_URL", db.url().expose())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawns");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> Channel {
        let started = Instant::now();
        loop {
            match Channel::from_shared(self.url()).unwrap().connect().await {
                Ok(channel) => {
                    // Serving once health says so (its database answered).
                    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
                    if health
                        .check(tonic_health::pb::HealthCheckRequest::default())
                        .await
                        .is_ok_and(|r| r.into_inner().status == 1)
                    {
                        return channel;
                    }
                }
                Err(_) if started.elapsed() > Duration::from_secs(60) => panic!("{} never served", self.url()),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// User plus system CPU time of the process so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("/proc stat");
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports USER_HZ = 100 ticks a second to user space.
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn bearer<T>(message: T, header: &'static str, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(header, value.parse().unwrap());
    request
}

/// Sequential calls: (p50, p99).
async fn latency(channel: &Channel, header: &'static str, value: &str, calls: usize) -> (Duration, Duration) {
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    for _ in 0..calls / 10 {
        client.get_me(bearer(pb::GetMeRequest {}, header, value)).await.unwrap();
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        client.get_me(bearer(pb::GetMeRequest {}, header, value)).await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    (samples[calls / 2], samples[calls * 99 / 100])
}

/// Calls a second with `IN_FLIGHT` calls in flight over four connections for `WINDOW`.
async fn throughput(channels: &[Channel], header: &'static str, value: &str) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + WINDOW;
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let mut client = pb::auth_service_client::AuthServiceClient::new(channels[i % channels.len()].clone());
            let done = Arc::clone(&done);
            let value = value.to_owned();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.get_me(bearer(pb::GetMeRequest {}, header, &value)).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for worker in workers {
        worker.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn channels(server: &Server) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(server.channel().await);
    }
    out
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench() {
    let rounds = env_usize("FLATRENDER_BENCH_ROUNDS", 3);
    let calls = env_usize("FLATRENDER_BENCH_CALLS", 2000);
    let db = TestDatabase::migrated().await;
    let identity = Server::start(&db, "identity", &["--target", "identity"]);
    let direct = channels(&identity).await;
    let upstream = format!("identity={}", identity.url());
    // The gateway signs its credential (API key exchanges, request logs) with the key identity
    // trusts, as a deployment configures it: identity's development key, made when it started.
    let key =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-gateway/identity/keys/dev-signing-key.pem");
    let key = key.to_string_lossy();
    let gateway =
        Server::start(&db, "gateway", &["--target", "gateway", "--upstream", &upstream, "--service-key-file", &key]);
    let through = channels(&gateway).await;

    // A verified tenant admin with a bearer token, and an API key of the same tenant.
    let mut auth = pb::auth_service_client::AuthServiceClient::new(direct[0].clone());
    let user = auth
        .register(pb::RegisterRequest {
            email: "bench@example.com".into(),
            password: PASSWORD.into(),
            display_name: "Bench".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    sqlx::query("UPDATE identity.users SET email_verified_at = now(), role = 'tenant_admin' WHERE id = $1::uuid")
        .bind(&user.id)
        .execute(db.pool())
        .await
        .unwrap();
    let login = auth
        .login(pb::LoginRequest {
            email: "bench@example.com".into(),
            password: PASSWORD.into(),
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::login_response::Result::Tokens(tokens)) = login.result else { panic!("no tokens") };
    let token = format!("Bearer {}", tokens.access_token);
    let key = pb::api_key_service_client::ApiKeyServiceClient::new(direct[0].clone())
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: "bench".into(),
                scopes: vec![pb::ApiKeyScope::RenderRead as i32],
                ..Default::default()
            },
            "authorization",
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;

    println!("## Gateway overhead: GetMe direct vs through the gateway ({rounds} rounds, medians)\n");
    let (mut d50, mut d99, mut g50, mut g99, mut dtp, mut gtp) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Server CPU per call: identity's alone when called directly; identity's and the gateway's
    // when called through it. On two shared cores, throughput follows CPU.
    let (mut direct_cpu, mut identity_cpu, mut gateway_cpu) = (vec![], vec![], vec![]);
    // Through the gateway only after its edge has followed identity's keys.
    let _ = latency(&through[0], "authorization", &token, 100).await;
    for _ in 0..rounds {
        let (p50, p99) = latency(&direct[0], "authorization", &token, calls).await;
        d50.push(p50.as_secs_f64() * 1e3);
        d99.push(p99.as_secs_f64() * 1e3);
        let (p50, p99) = latency(&through[0], "authorization", &token, calls).await;
        g50.push(p50.as_secs_f64() * 1e3);
        g99.push(p99.as_secs_f64() * 1e3);
        let before = identity.cpu();
        let rate = throughput(&direct, "authorization", &token).await;
        direct_cpu.push((identity.cpu() - before).as_secs_f64() * 1e6 / (rate * WINDOW.as_secs_f64()));
        dtp.push(rate);
        let (before_identity, before_gateway) = (identity.cpu(), gateway.cpu());
        let rate = throughput(&through, "authorization", &token).await;
        let calls = rate * WINDOW.as_secs_f64();
        identity_cpu.push((identity.cpu() - before_identity).as_secs_f64() * 1e6 / calls);
        gateway_cpu.push((gateway.cpu() - before_gateway).as_secs_f64() * 1e6 / calls);
        gtp.push(rate);
    }
    let (d50, d99, g50, g99, dtp, gtp) =
        (median(&mut d50), median(&mut d99), median(&mut g50), median(&mut g99), median(&mut dtp), median(&mut gtp));
    println!("| path | p50 | p99 | calls/s ({IN_FLIGHT} in flight) |");
    println!("|---|---|---|---|");
    println!("| direct to identity | {d50:.3} ms | {d99:.3} ms | {dtp:.0} |");
    println!("| through the gateway | {g50:.3} ms | {g99:.3} ms | {gtp:.0} |");
    println!(
        "| **gateway adds** | **{:+.3} ms** | **{:+.3} ms** | **{:.0} % of direct** |\n",
        g50 - d50,
        g99 - d99,
        100.0 * gtp / dtp
    );
    let (direct_cpu, identity_cpu, gateway_cpu) =
        (median(&mut direct_cpu), median(&mut identity_cpu), median(&mut gateway_cpu));
    println!("| server CPU per call | direct | through the gateway |");
    println!("|---|---|---|");
    println!("| identity | {direct_cpu:.0} µs | {identity_cpu:.0} µs |");
    println!("| gateway | — | {gateway_cpu:.0} µs |\n");
    drop(gateway);
    drop(identity);

    println!("## JWT-verified in-memory calls (GetMe with x-api-key through --target all)\n");
    let all = Server::start(&db, "all", &["--target", "all"]);
    let all_channels = channels(&all).await;
    let _ = latency(&all_channels[0], "x-api-key", &key, 100).await;
    let mut per_core = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let cpu_before = all.cpu();
        let rate = throughput(&all_channels, "x-api-key", &key).await;
        let cpu = (all.cpu() - cpu_before).as_secs_f64();
        rates.push(rate);
        per_core.push(rate * WINDOW.as_secs_f64() / cpu.max(0.01));
    }
    let (distinct, repeated) = verify_per_second();
    println!("| measure | median |");
    println!("|---|---|");
    println!("| calls/s ({IN_FLIGHT} in flight, client on the same 2 cores) | {:.0} |", median(&mut rates));
    println!("| **calls per server CPU-second** | **{:.0}** |", median(&mut per_core));
    println!("| `TokenVerifier::verify` per second, one thread, distinct tokens (full check) | {distinct:.0} |");
    println!("| the same, one token again and again (remembered) | {repeated:.0} |");
}

/// Token verifications a second on this thread: of distinct tokens (each checked in full) and
/// of one token again and again (the verifier remembers it).
fn verify_per_second() -> (f64, f64) {
    use flatrender_kit::auth::{AccessClaims, Role, TokenSigner, TokenVerifier};
    let signer = TokenSigner::generate("bench").unwrap();
    let verifier = TokenVerifier::new(&signer.jwks().unwrap(), "flatrender", "flatrender-api").unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let tokens: Vec<String> = (0..10_000)
        .map(|_| {
            signer
                .sign(&AccessClaims {
                    iss: "flatrender".into(),
                    aud: "flatrender-api".into(),
                    sub: uuid::Uuid::new_v4(),
                    tid: uuid::Uuid::new_v4(),
                    role: Role::User,
                    sid: None,
                    svc: None,
                    akid: None,
                    scp: None,
                    exp: now + 3600,
                    nbf: now,
                    iat: now,
                    jti: uuid::Uuid::new_v4(),
                })
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    for token in &tokens {
        verifier.verify(token).unwrap();
    }
    let distinct = tokens.len() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..100_000 {
        verifier.verify(&tokens[0]).unwrap();
    }
    let repeated = 100_000.0 / started.elapsed().as_secs_f64();
    (distinct, repeated)
}
