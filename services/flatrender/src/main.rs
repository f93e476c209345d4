//! `flatrender`: one binary for every FlatRender service (the Loki/Mimir pattern). `--target
//! all` runs everything in one process; Kubernetes runs one target per Deployment.

mod cli;
mod file_args;
mod file_client_args;
mod gateway_args;
mod render_args;
mod targets;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use flatrender_kit::auth::{DevKeyFiles, TokenVerifier};
use flatrender_kit::db::{self, PoolSettings};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, ServeOptions, ServerTls};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::{Error, migrate, telemetry};

use crate::cli::{AuthArgs, Cli, Command, ServeArgs, Target};
use crate::targets::ServiceSettings;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flatrender: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Tasks still running after the drain (e.g. connections being cut) get no extra time.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is wrong and how to fix it; no backtrace.
            eprintln!("flatrender: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let _telemetry = telemetry::init(&cli.telemetry, "flatrender")?;
    match cli.command {
        Some(Command::Migrate { database }) => {
            let pool = db::owner_pool(&PoolSettings::from(&database)).await?;
            let report = migrate::run(&pool).await?;
            pool.close().await;
            println!("migrations: {} applied now, {} already present", report.applied.len(), report.already_applied);
            Ok(())
        }
        None => serve(cli.serve, &cli.data.data_dir).await,
    }
}

async fn serve(args: ServeArgs, data_dir: &std::path::Path) -> Result<(), Error> {
    let targets = targets::Selection::new(&args.targets);
    let settings = PoolSettings::from(&args.database);
    let public_url = args.file.public_url()?;

    // Migrating needs the owner; serving does not: each service checks the schema version
    // through its own login and role, which also proves they work before anything listens.
    if args.migrate && targets.services().next().is_some() {
        let owner = db::owner_pool(&settings).await?;
        let report = migrate::run(&owner).await?;
        tracing::info!(applied = report.applied.len(), "migrations done");
        owner.close().await;
    }
    for role in targets.roles() {
        let mut conn = db::probe(&settings, role, args.service_databases.url_of(role)).await?;
        migrate::ensure_current(&mut conn).await?;
        sqlx::Connection::close(conn).await?;
    }

    let verifier = token_verifier(&args.auth, data_dir)?;
    // Read before anything listens: a bad path is a start-up error, not a failing handshake.
    let tls = match (&args.server.tls_cert, &args.server.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
        _ => None,
    };
    let listener = server::bind(args.server.grpc_addr).await?;
    let grpc_addr = listener.local_addr()?;

    let shutdown = Shutdown::new();
    let _signals = shutdown.trigger_on_signals();
    // A process without identity follows the published keys of the identity it is told of.
    let identity_here = targets.services().any(|t| t == Target::Identity);
    let _keys_follower = match (&verifier, identity_here) {
        (Some(verifier), false) => args.upstreams.iter().rev().find(|u| u.service == "identity").map(|identity| {
            let channel = tonic::transport::Endpoint::from(identity.uri.clone()).connect_lazy();
            tokio::spawn(flatrender_kit::jwks::follow(verifier.clone(), channel, shutdown.stop_signal()))
        }),
        _ => None,
    };
    let metrics = Metrics::new();
    let (metrics_addr, metrics_task) =
        flatrender_kit::metrics::serve(metrics.clone(), args.server.metrics_addr, shutdown.signal()).await?;

    let public_url = public_url.unwrap_or_else(|| file_args::default_public_url(grpc_addr, tls.is_some()));
    let mut render = args.render.settings()?;
    let file_here = targets.services().any(|t| t == Target::File);
    // With TLS the public port speaks nothing else; render reaches the file service in this
    // process on a plain listener bound to loopback only.
    let internal = match &tls {
        Some(_) if file_here => Some(server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?),
        _ => None,
    };
    let file_addr = match &internal {
        Some(listener) => listener.local_addr()?,
        None => grpc_addr,
    };
    render.api.file_service = args.file_client.settings(file_here, file_addr, data_dir, &args.auth)?;
    let mut identity = flatrender_identity::Settings::new(&args.auth.token_issuer, &args.auth.token_audience);
    // This process's services trust identity's keys the moment identity publishes them.
    identity.verifiers.extend(verifier.clone());
    let service_settings = ServiceSettings { identity, file: args.file.settings(data_dir, public_url)?, render };
    let built =
        targets.build(&settings, &args.service_databases, &args.upstreams, &service_settings, &shutdown, &metrics)?;
    // A gateway without identity in this process exchanges API keys at the identity upstream.
    let remote_identity = match (targets.has_gateway(), identity_here) {
        (true, false) => match args.upstreams.iter().rev().find(|u| u.service == "identity") {
            Some(identity) => Some(flatrender_gateway::edge::RemoteIdentity {
                channel: flatrender_gateway::proxy::endpoint(identity.uri.clone()).connect_lazy(),
                signer: args.file_client.service_signer(data_dir, &args.auth)?,
                issuer: args.auth.token_issuer.clone(),
                audience: args.auth.token_audience.clone(),
            }),
            None => None,
        },
        _ => None,
    };
    let (edge, request_log) = match targets.has_gateway() {
        true => edge(&args.gateway, verifier.clone(), built.identity.as_ref(), remote_identity, &shutdown),
        false => (None, None),
    };
    let app = built.app;

    let services = app.modules.iter().map(|m| m.grpc_services.len()).sum::<usize>() + app.forwarded.len();
    tracing::info!(
        targets = %targets,
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        services,
        "FlatRender is listening (gRPC and grpc-web on the gRPC address)"
    );
    println!("flatrender {} serving {targets}", env!("CARGO_PKG_VERSION"));
    let scheme = if args.server.tls_cert.is_some() { "https" } else { "http" };
    println!("  gRPC + grpc-web  {scheme}://{grpc_addr}");
    println!("  metrics          http://{metrics_addr}/metrics");
    if targets.services().any(|target| target == Target::File) {
        println!("  download links   {}{}", service_settings.file.public_url, flatrender_file::links::PREFIX);
    }

    let options = ServeOptions {
        shutdown_timeout: args.server.shutdown_timeout,
        health_interval: args.server.health_interval,
        tls,
        internal,
        edge,
    };
    let outcome = server::serve(listener, app, verifier, metrics, &shutdown, options).await;
    if let Some(writer) = request_log {
        // It stops with the background work and flushes what the drained calls logged.
        let _ = writer.await;
    }
    // The metrics endpoint drained alongside; it gets no time beyond the deadline.
    metrics_task.abort();
    tracing::info!("stopped");
    outcome
}

/// The gateway's edge: API keys are exchanged and request logs written through the identity
/// service of this process, or else the identity upstream (when one is set).
fn edge(
    args: &gateway_args::GatewayArgs,
    verifier: Option<TokenVerifier>,
    identity: Option<&flatrender_identity::Identity>,
    remote_identity: Option<flatrender_gateway::edge::RemoteIdentity>,
    shutdown: &Shutdown,
) -> (Option<std::sync::Arc<dyn server::Edge>>, Option<tokio::task::JoinHandle<()>>) {
    use flatrender_gateway::edge::{ApiKeys, ExchangedKey, GatewayEdge, RequestLog};
    let remote_keys = remote_identity.clone().map(|remote| ApiKeys::new(flatrender_gateway::edge::remote(remote)));
    let keys = identity.map(|identity| {
        let identity = identity.clone();
        ApiKeys::new(std::sync::Arc::new(move |presented: String, ip: Option<std::net::IpAddr>| {
            let identity = identity.clone();
            Box::pin(async move {
                let client = flatrender_identity::client::ClientInfo { ip, user_agent: None };
                let key = identity.authenticate_api_key(&presented, &client).await?;
                Ok(ExchangedKey {
                    access_token: key.access_token,
                    valid_for: key.valid_for,
                    key_id: key.key_id,
                    tenant_id: key.tenant_id,
                    rate_limit_per_minute: key.rate_limit_per_minute,
                })
            })
        }))
    });
    let keys = keys.or(remote_keys);
    // Request logs go to identity: in this process, else to the identity upstream.
    let sink: Option<flatrender_gateway::edge::Sink> = match (identity, remote_identity) {
        (Some(identity), _) => {
            let pool = identity.pool.clone();
            Some(std::sync::Arc::new(move |records| {
                let pool = pool.clone();
                Box::pin(async move {
                    flatrender_identity::request_logs::record(&pool, &records)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }))
        }
        (None, Some(remote)) => Some(flatrender_gateway::edge::remote_sink(remote)),
        (None, None) => {
            tracing::warn!(
                "the gateway runs without identity and no --upstream identity=: API keys are refused and request \
                 logs are not written"
            );
            None
        }
    };
    let (log, writer) = match sink {
        Some(sink) => {
            let (log, writer) = RequestLog::new(sink, shutdown.stop_signal());
            (Some(log), Some(tokio::spawn(writer)))
        }
        None => (None, None),
    };
    let edge = GatewayEdge::new(&args.settings(), verifier, keys, log);
    (Some(std::sync::Arc::new(edge)), writer)
}

/// The configured JWKS, or the development key pair under the data directory.
fn token_verifier(auth: &AuthArgs, data_dir: &std::path::Path) -> Result<Option<TokenVerifier>, Error> {
    let path = match &auth.jwks_file {
        Some(path) => path.clone(),
        None => {
            let files = DevKeyFiles::under(data_dir);
            if files.ensure()? {
                tracing::warn!(
                    path = %files.jwks.display(),
                    "generated a development signing key; production should set --jwks-file"
                );
            }
            files.jwks
        }
    };
    TokenVerifier::from_file(&path, &auth.token_issuer, &auth.token_audience).map(Some)
}
