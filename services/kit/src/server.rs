//! The gRPC server every FlatRender process runs.
//!
//! One listener serves the selected services together with gRPC health, reflection (v1 and
//! v1alpha, for every client in use), grpc-web (HTTP/1.1 and HTTP/2) and the services' plain
//! HTTP routes ([`HttpRoutes`]), behind layers for trace context, metrics and token verification. Shutdown stops accepting, lets in-flight
//! calls finish until the drain deadline, then stops background tasks and closes the pools.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::TcpIncoming;

use crate::auth::{AuthLayer, TokenVerifier};
use crate::db::ServiceRole;
use crate::health::{self, Watched};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, ShutdownSignal, Tasks};
use crate::{Error, Result, telemetry};

mod edge;
mod plain_http;

pub use edge::{Edge, EdgeFuture, Next};
pub use plain_http::HttpRoutes;
use plain_http::PlainHttpLayer;

/// A background task of a service; it must return soon after its signal fires.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a service hands to the server.
pub struct ServiceModule {
    /// The service's database identity.
    pub role: ServiceRole,
    /// Its pool (health follows it; it is closed at shutdown).
    pub pool: PgPool,
    /// The fully qualified gRPC service names it added to the routes.
    pub grpc_services: Vec<&'static str>,
    /// Background work, each with a name for logs.
    pub tasks: Vec<(&'static str, BackgroundTask)>,
    /// Plain HTTP routes it serves on the same listener (no grpc-web translation; the token
    /// layer still runs, so a route that needs no bearer token must not ask for a caller).
    pub http: Option<HttpRoutes>,
}

impl std::fmt::Debug for ServiceModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceModule")
            .field("role", &self.role)
            .field("grpc_services", &self.grpc_services)
            .field("tasks", &self.tasks.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("http", &self.http.as_ref().map(|h| h.prefix))
            .finish()
    }
}

/// What every service receives when it is built.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// The service's own pool.
    pub pool: PgPool,
    /// Completes when background work must stop (after in-flight calls drained).
    pub shutdown: ShutdownSignal,
    /// The process's metrics registry.
    pub metrics: Metrics,
}

/// Server settings.
#[derive(Debug)]
pub struct ServeOptions {
    /// Drain deadline after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// How often health re-checks the databases.
    pub health_interval: Duration,
    /// The certificate the port serves TLS with; `None` serves plain HTTP/2 and HTTP/1.1.
    pub tls: Option<ServerTls>,
    /// A second, plain listener (on loopback) serving the same routes, for the process's calls
    /// to its own services when the public port speaks TLS only (e.g. render to file).
    pub internal: Option<TcpListener>,
    /// Work in front of every call of the public listener (the gateway's), if any.
    pub edge: Option<std::sync::Arc<dyn Edge>>,
}

/// A TLS identity: a PEM certificate chain and its private key.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads `cert` and `key`, naming the file that cannot be read.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read the TLS {what} {}: {e}", path.display())))
        };
        Ok(Self { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? })
    }
}

/// Binds the gRPC listener, turning failures into one actionable line.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => "another process listens there; stop it or choose another --grpc-addr",
            std::io::ErrorKind::AddrNotAvailable => {
                "that address is not on this machine; use 0.0.0.0 or one of its addresses"
            }
            std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges; choose a higher port",
            _ => "check --grpc-addr / FLATRENDER_GRPC_ADDR",
        };
        Error::Config(format!("cannot listen on {addr}: {e}; {hint}"))
    })
}

/// Everything one process serves.
pub struct Application {
    /// The gRPC routes of the local services (and of any forwarding proxies).
    pub routes: RoutesBuilder,
    /// The local services.
    pub modules: Vec<ServiceModule>,
    /// gRPC service names this process forwards to other processes (the gateway).
    pub forwarded: Vec<String>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("modules", &self.modules).field("forwarded", &self.forwarded).finish()
    }
}

/// Serves `app` on `listener` until shutdown starts, then drains: listeners stop accepting and
/// in-flight calls get until the drain deadline; then background tasks stop and pools close,
/// bounded by the same deadline. Returns once all of that is done.
pub async fn serve(
    listener: TcpListener,
    app: Application,
    verifier: Option<TokenVerifier>,
    metrics: Metrics,
    shutdown: &Shutdown,
    mut options: ServeOptions,
) -> Result<()> {
    let Application { mut routes, modules, forwarded } = app;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let watched: Vec<Watched> = modules
        .iter()
        .map(|m| Watched {
            grpc_services: m.grpc_services.iter().map(|s| (*s).to_owned()).collect(),
            pool: m.pool.clone(),
        })
        .collect();
    // Nothing reports SERVING before its database has answered, not even for an instant.
    health::mark_not_serving(&reporter, &watched).await;

    // Reflection lists exactly what this process answers: its services, what it forwards,
    // and the two standard services.
    let mut served: Vec<String> = watched.iter().flat_map(|w| w.grpc_services.iter().cloned()).collect();
    served.extend(forwarded);
    served.extend(["grpc.health.v1.Health".to_owned(), REFLECTION_V1.to_owned(), REFLECTION_V1ALPHA.to_owned()]);
    let reflection = || {
        served.iter().fold(
            // Both reflection versions are listed, so each server describes both.
            tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(flatrender_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(name.clone()),
        )
    };
    let reflection_v1 =
        reflection().build_v1().map_err(|e| Error::Config(format!("reflection descriptors are invalid: {e}")))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| Error::Config(format!("reflection descriptors are invalid: {e}")))?;
    routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

    let mut tasks = Tasks::default();
    tasks.spawn("health", health::watch_databases(reporter, watched, options.health_interval, shutdown.signal()));
    let mut pools = Vec::new();
    let mut router = routes.routes().into_axum_router();
    let mut plain_prefixes = Vec::new();
    for module in modules {
        for (name, task) in module.tasks {
            tasks.spawn(name, task);
        }
        pools.push(module.pool);
        if let Some(http) = module.http {
            plain_prefixes.push(http.prefix);
            router = router.merge(http.into_router());
        }
    }

    // The same routes and layers on each listener: the public one (TLS when configured) and,
    // with TLS, a plain one on loopback for this process's own calls to itself.
    let serve_on =
        |listener: TcpListener, tls: Option<&ServerTls>, edge: Option<std::sync::Arc<dyn Edge>>| -> Result<_> {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .map_err(|e| Error::Config(format!("the TLS certificate or key is unusable: {e}")))?;
            }
            Ok(builder
                .accept_http1(true)
                // HTTP/2's default 64 KiB windows make a streaming upload wait for a window update
                // every 64 KiB; larger ones let a client keep the link busy (measured in BENCHMARKS.md).
                .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
                .max_frame_size(Some(MAX_FRAME_BYTES))
                .trace_fn(telemetry::server_span)
                .layer(edge::EdgeLayer::new(edge))
                .layer(PlainHttpLayer::new(plain_prefixes.clone()))
                .layer(metrics.layer())
                .layer(AuthLayer::new(verifier.clone()))
                .add_routes(Routes::from(router.clone()))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.signal().wait(),
                ))
        };
    let public = serve_on(listener, options.tls.as_ref(), options.edge.clone())?;
    // The process's calls to itself skip the edge: they are no client's.
    let internal = options.internal.take().map(|listener| serve_on(listener, None, None)).transpose()?;
    let server = async move {
        match internal {
            Some(internal) => {
                let (public, internal) = tokio::join!(public, internal);
                public.and(internal)
            }
            None => public.await,
        }
    };
    tokio::pin!(server);

    // One deadline for the whole shutdown, from the moment draining starts.
    let (outcome, deadline) = tokio::select! {
        result = &mut server => (result, tokio::time::Instant::now() + options.shutdown_timeout),
        () = shutdown.signal().wait() => {
            let deadline = tokio::time::Instant::now() + options.shutdown_timeout;
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => (result, deadline),
                Err(_) => {
                    tracing::warn!(timeout = ?options.shutdown_timeout, "in-flight calls did not finish in time; cutting them off");
                    (Ok(()), deadline)
                }
            }
        }
    };
    // Calls have drained (or the server failed): now background work may stop.
    shutdown.stop();
    tasks.join(deadline).await;
    for pool in pools {
        if tokio::time::timeout_at(deadline, pool.close()).await.is_err() {
            tracing::warn!("a database pool did not close in time; leaving its connections to the OS");
        }
    }
    outcome.map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Bytes one call may have in flight towards the server before it must acknowledge them.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// The same for all calls of one connection together.
const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// The largest HTTP/2 frame clients may send (default 16 KiB): fewer frames per uploaded MiB.
const MAX_FRAME_BYTES: u32 = 1024 * 1024;

const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// The gRPC name of a tonic server, e.g. `flatrender.render.v1.RenderService`.
pub fn grpc_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Adds tonic servers to a `RoutesBuilder` and evaluates to their gRPC names, for health.
///
/// ```ignore
/// let names = flatrender_kit::add_services!(routes, AuthServiceServer::new(api.clone()), UserServiceServer::new(api));
/// ```
#[macro_export]
macro_rules! add_services {
    ($routes:expr, $($server:expr),+ $(,)?) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(
            let server = $server;
            names.push($crate::server::grpc_name(&server));
            $routes.add_service(server);
        )+
        names
    }};
}
