//! PostgreSQL pools, one per service role.
//!
//! Every service has its own schema and login role (see `migrations/00_setup.sql`). A service
//! connects either with its own URL, or through the owner URL followed by `SET ROLE`, so that
//! even in the single-process `--target all` a service's queries run with only its own
//! schema's privileges.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use crate::config::{DatabaseArgs, DatabaseUrl};
use crate::{Error, Result};

/// A service's database identity: its schema and its login role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRole {
    /// Service name as used by `--target`.
    pub service: &'static str,
    /// The schema the service owns.
    pub schema: &'static str,
    /// The login role limited to that schema.
    pub role: &'static str,
}

impl ServiceRole {
    /// The identity service.
    pub const IDENTITY: Self = Self::new("identity", "identity", "flatrender_identity");
    /// The content (catalogue) service.
    pub const CONTENT: Self = Self::new("content", "content", "flatrender_content");
    /// The studio (saved projects) service.
    pub const STUDIO: Self = Self::new("studio", "studio", "flatrender_studio");
    /// The render orchestrator.
    pub const RENDER: Self = Self::new("render", "render", "flatrender_render");
    /// The file service.
    pub const FILE: Self = Self::new("file", "file_mgr", "flatrender_file");
    /// The notification service.
    pub const NOTIFICATION: Self = Self::new("notification", "notification", "flatrender_notification");

    /// Every service role, in migration order.
    pub const ALL: [Self; 6] =
        [Self::IDENTITY, Self::CONTENT, Self::STUDIO, Self::RENDER, Self::FILE, Self::NOTIFICATION];

    const fn new(service: &'static str, schema: &'static str, role: &'static str) -> Self {
        Self { service, schema, role }
    }
}

/// Pool settings shared by every service.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Owner URL; a service without its own URL reaches its role from here with `SET ROLE`.
    pub url: DatabaseUrl,
    /// Most connections per service pool.
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub acquire_timeout: Duration,
}

impl From<&DatabaseArgs> for PoolSettings {
    fn from(args: &DatabaseArgs) -> Self {
        Self {
            url: args.database_url.clone(),
            max_connections: args.database_max_connections,
            acquire_timeout: args.database_connect_timeout,
        }
    }
}

/// Parses a URL into connect options, naming the URL (redacted) in the error.
pub fn connect_options(url: &DatabaseUrl) -> Result<PgConnectOptions> {
    url.validate().map_err(Error::Config)?;
    // sqlx's parse errors may quote the URL, so they are not passed on.
    PgConnectOptions::from_str(url.expose())
        .map_err(|_| Error::Config(format!("database URL {url} is not a valid PostgreSQL connection URL")))
}

/// Opens the pool of one service. With `own_url` the service logs in as its role directly;
/// otherwise it uses the owner URL and switches role on every new connection.
///
/// The pool is lazy: it connects on first use, so a service can start (NOT_SERVING) while the
/// database is briefly away and become SERVING when it returns.
pub fn service_pool(settings: &PoolSettings, role: ServiceRole, own_url: Option<&DatabaseUrl>) -> Result<PgPool> {
    let options = connect_options(own_url.unwrap_or(&settings.url))?
        .application_name(&format!("flatrender-{}", role.service))
        // JIT off: the services run short OLTP statements, and a query the planner prices above
        // `jit_above_cost` (the render queue's claim, on a large queue) paid ~90 ms of
        // compilation on every execution for a ~20 ms query.
        .options([("search_path", role.schema), ("jit", "off")]);
    let switch_role = own_url.is_none();
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if switch_role {
                    // The role name is a compile-time constant, never user input.
                    conn.execute(sqlx::AssertSqlSafe(format!("SET ROLE {}", role.role))).await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options);
    Ok(pool)
}

/// Connects once exactly as the service's pool will (its URL, its role), so a bad URL, a refused login or a missing role is one clear line at start-up rather
/// than a service that stays NOT_SERVING.
pub async fn probe(
    settings: &PoolSettings,
    role: ServiceRole,
    own_url: Option<&DatabaseUrl>,
) -> Result<sqlx::PgConnection> {
    use sqlx::ConnectOptions as _;
    let url = own_url.unwrap_or(&settings.url);
    let options = connect_options(url)?;
    let mut conn = tokio::time::timeout(settings.acquire_timeout, options.connect())
        .await
        .map_err(|_| {
            Error::Config(format!("PostgreSQL at {url} did not answer within {:?}", settings.acquire_timeout))
        })?
        .map_err(|e| unreachable_database(url, &e))?;
    if own_url.is_none() {
        conn.execute(sqlx::AssertSqlSafe(format!("SET ROLE {}", role.role))).await.map_err(|e| {
            Error::Config(format!(
                "the {} service cannot act as role {} through {url}: {e}; run `flatrender migrate` as a user allowed to create roles, or give the service its own URL",
                role.service, role.role
            ))
        })?;
    }
    Ok(conn)
}

/// Opens a small pool as the owner URL itself (migrations, checks).
pub async fn owner_pool(settings: &PoolSettings) -> Result<PgPool> {
    let options = connect_options(&settings.url)?.application_name("flatrender");
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|e| unreachable_database(&settings.url, &e))
}

/// Takes the transaction-scoped advisory lock named `name` if no one holds it, and says
/// whether it did: work that one replica at a time must do runs only where this is true, and
/// the lock ends with the transaction. It takes no transaction id, so holding it does not hold
/// back the cluster's vacuum horizon as a row lock would.
pub async fn try_advisory_xact_lock(tx: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))").bind(name).fetch_one(tx).await
}

/// Whether `err` is a unique violation (SQLSTATE 23505) of `constraint`, so a caller can turn
/// exactly that race (a name taken, an idempotency key reused) into its own answer.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint))
}

/// Turns a connection failure into one line that says what is wrong and what to do.
pub fn unreachable_database(url: &DatabaseUrl, err: &sqlx::Error) -> Error {
    let hint = match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
            "the database does not exist: create it (createdb) or fix the name in the URL"
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01") || db.code().as_deref() == Some("28000") => {
            "the server refused the credentials: check user and password in the URL"
        }
        _ => "start PostgreSQL or point --database-url / FLATRENDER_DATABASE_URL at a reachable server",
    };
    Error::Config(format!("cannot reach PostgreSQL at {url}: {err}; {hint}"))
}

/// True when the pool can run a trivial query within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool)).await, Ok(Ok(1)))
}

/// How far ahead monthly partitions are kept.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;

/// Keeps the monthly partitions of a partitioned table created ahead of time by calling the
/// schema's `ensure_*_partitions(months_ahead)` function (SECURITY DEFINER, see migrations) at
/// start and then every six hours — every minute while the database does not answer — so no
/// operator has to remember a cron job.
pub async fn maintain_partitions(pool: PgPool, function: &'static str, signal: crate::shutdown::ShutdownSignal) {
    let stop = signal.wait();
    tokio::pin!(stop);
    loop {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {function}($1)"));
        let wait = match sqlx::query_scalar::<_, i32>(sql).bind(PARTITION_MONTHS_AHEAD).fetch_one(&pool).await {
            Ok(created) => {
                if created > 0 {
                    tracing::info!(function, created, "created upcoming monthly partitions");
                }
                Duration::from_secs(6 * 3600)
            }
            Err(e) => {
                tracing::warn!(function, error = %e, "could not create upcoming partitions; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
