//! For tests of every service: fresh PostgreSQL databases, and callers with signed access
//! tokens ([`Principal`], [`access_token`], [`Bearer`]).
//!
//! Each test gets its own database, migrated by the real migrator, and dropped when the handle
//! goes out of scope (even when the test panics).
//!
//! The server comes from `FLATRENDER_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`); its user must be able to create databases
//! and roles.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use uuid::Uuid;

use crate::auth::{AccessClaims, Role, ServiceName, TokenSigner};
use crate::config::DatabaseUrl;
use crate::db::{self, PoolSettings, ServiceRole};
use crate::migrate;

/// The server tests use.
pub fn server_url() -> DatabaseUrl {
    std::env::var("FLATRENDER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
        .parse()
        .unwrap_or_else(|e| panic!("FLATRENDER_TEST_DATABASE_URL: {e}"))
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: DatabaseUrl,
    server: DatabaseUrl,
    pool: PgPool,
}

impl TestDatabase {
    /// An empty database.
    pub async fn empty() -> Self {
        let server = server_url();
        let name = format!("flatrender_test_{}", Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server.expose())
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {server}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
        admin.close().await;
        let url = server.with_database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url.expose())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Self { name, url, server, pool }
    }

    /// A database with every migration applied by the project's migrator.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        migrate::run(&db.pool).await.unwrap_or_else(|e| panic!("migrations failed: {e}"));
        db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL (as the server's user).
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// A pool as the server's user (owner of everything).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pool acting as `role`, exactly as a service would connect.
    pub fn service_pool(&self, role: ServiceRole) -> PgPool {
        let settings = PoolSettings {
            url: self.url.clone(),
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(10),
        };
        db::service_pool(&settings, role, None).unwrap_or_else(|e| panic!("service pool: {e}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async context; use a short-lived runtime on a plain thread.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            // The test's own runtime is blocked in this drop, so its pool cannot be closed
            // politely; FORCE ends its connections.
            runtime.block_on(async move {
                let admin = PgPoolOptions::new().max_connections(1).connect(server.expose()).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&admin)
                    .await
                    .ok()?;
                admin.close().await;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Who a test's call comes from: a person of a tenant, or a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Tenant (nil for services).
    pub tenant: Uuid,
    /// User (nil for services).
    pub user: Uuid,
    /// Role.
    pub role: Role,
    /// The service of a service credential.
    pub service: Option<ServiceName>,
}

impl Principal {
    /// A new user of `tenant`.
    pub fn user(tenant: Uuid) -> Self {
        Self { tenant, user: Uuid::new_v4(), role: Role::User, service: None }
    }

    /// A new tenant admin of `tenant`.
    pub fn tenant_admin(tenant: Uuid) -> Self {
        Self { role: Role::TenantAdmin, ..Self::user(tenant) }
    }

    /// A new platform admin (of a tenant of their own).
    pub fn platform_admin() -> Self {
        Self { role: Role::PlatformAdmin, ..Self::user(Uuid::new_v4()) }
    }

    /// A service credential.
    pub fn service(service: ServiceName) -> Self {
        Self { tenant: Uuid::nil(), user: Uuid::nil(), role: Role::User, service: Some(service) }
    }
}

/// An access token for `who` from `issuer` to `audience`, valid for ten minutes.
///
/// # Panics
///
/// When `signer` cannot sign (a test set-up error).
pub fn access_token(signer: &TokenSigner, issuer: &str, audience: &str, who: &Principal) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = AccessClaims {
        iss: issuer.into(),
        aud: audience.into(),
        sub: who.user,
        tid: who.tenant,
        role: who.role,
        sid: None,
        svc: who.service,
        akid: None,
        scp: None,
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: Uuid::new_v4(),
    };
    #[allow(clippy::expect_used)]
    signer.sign(&claims).expect("the test signer signs")
}

/// Adds `authorization: <value>` (e.g. `Bearer <token>`) to every call.
#[derive(Clone, Debug)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}
