//! The FlatRender service kit: everything the services share, so each service crate only holds
//! its own domain.
//!
//! - [`config`]: flags and `FLATRENDER_*` environment, with secrets redacted.
//! - [`db`]: one PostgreSQL pool per service role; [`migrate`]: the embedded, locked migrator.
//! - [`server`]: the gRPC server with health, reflection, grpc-web, metrics and trace context.
//! - [`shutdown`]: signal handling and graceful draining.
//! - [`telemetry`] and [`metrics`]: logs, OpenTelemetry traces, Prometheus.
//! - [`auth`]: access-token verification and the typed [`auth::Caller`].
//! - [`outbox`]: events written in the caller's transaction, delivered at least once.
//! - [`error`]: the kit's error enum and the one mapping to `tonic::Status`.

pub mod auth;
pub mod client_address;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod jwks;
pub mod metrics;
pub mod migrate;
pub mod outbox;
pub mod page;
pub mod scopes;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
