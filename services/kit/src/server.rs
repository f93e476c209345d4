//! The gRPC server every FlatRender process runs.
//!
//! One listener serves the selected services together with gRPC health, reflection (v1 and
//! v1alpha, for every client in use) and grpc-web (HTTP/1.1 and HTTP/2), behind layers for
//! trace context, metrics and token verification. Shutdown stops accepting, lets in-flight
//! calls finish until the drain deadline, then stops background tasks and closes the pools.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;

use crate::auth::{AuthLayer, TokenVerifier};
use crate::db::ServiceRole;
use crate::health::{self, Watched};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, ShutdownSignal, Tasks};
use crate::{Error, Result, telemetry};

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
}

impl std::fmt::Debug for ServiceModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceModule")
            .field("role", &self.role)
            .field("grpc_services", &self.grpc_services)
            .field("tasks", &self.tasks.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

/// What every service receives when it is built.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    /// The service's own pool.
    pub pool: PgPool,
    /// Completes when shutdown starts.
    pub shutdown: ShutdownSignal,
    /// The process's metrics registry.
    pub metrics: Metrics,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Drain deadline after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// How often health re-checks the databases.
    pub health_interval: Duration,
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

/// Serves `routes` and the modules' services on `listener` until `shutdown` starts, then drains.
/// Returns once the server, the background tasks and the pools have stopped.
pub async fn serve(
    listener: TcpListener,
    mut routes: RoutesBuilder,
    modules: Vec<ServiceModule>,
    verifier: Option<TokenVerifier>,
    metrics: Metrics,
    shutdown: &Shutdown,
    options: ServeOptions,
) -> Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flatrender_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection descriptors are invalid: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flatrender_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection descriptors are invalid: {e}")))?;
    routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

    let mut tasks = Tasks::default();
    let watched = modules
        .iter()
        .map(|m| Watched {
            grpc_services: m.grpc_services.iter().map(|s| (*s).to_owned()).collect(),
            pool: m.pool.clone(),
        })
        .collect();
    tasks.spawn("health", health::watch_databases(reporter, watched, options.health_interval, shutdown.signal()));
    let mut pools = Vec::new();
    for module in modules {
        for (name, task) in module.tasks {
            tasks.spawn(name, task);
        }
        pools.push(module.pool);
    }

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .trace_fn(telemetry::server_span)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(metrics.layer())
        .layer(AuthLayer::new(verifier))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown.signal().wait());
    tokio::pin!(server);

    let outcome = tokio::select! {
        result = &mut server => result,
        () = shutdown.signal().wait() => {
            match tokio::time::timeout(options.shutdown_timeout, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(deadline = ?options.shutdown_timeout, "in-flight calls did not finish in time; cutting them off");
                    Ok(())
                }
            }
        }
    };
    // Whatever ended the server, stop everything else too.
    shutdown.trigger();
    tasks.join(options.shutdown_timeout).await;
    for pool in pools {
        pool.close().await;
    }
    outcome.map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// The address a listener ended up on (useful with port 0).
pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    Ok(listener.local_addr()?)
}

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
