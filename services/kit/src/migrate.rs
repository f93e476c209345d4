//! The migrator: applies the embedded `migrations/*.sql` files in order, each in its own
//! transaction, under a PostgreSQL advisory lock so that any number of replicas may start at
//! once. It records what it applied, with a SHA-256 checksum, in `platform.schema_migrations`
//! (a schema the migrating user creates, so it needs no rights on `public`) and refuses to run
//! when a landed file was edited.

use std::time::Instant;

use sha2::{Digest, Sha256};
// Dynamic SQL below only interpolates the constant HISTORY_TABLE.
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::{Error, Result};

/// Advisory-lock key shared by every FlatRender migrator ("FlatRend" in ASCII).
const LOCK_KEY: i64 = 0x466c_6174_5265_6e64;

/// The table the migrator keeps its history in (not part of the service schemas).
pub const HISTORY_TABLE: &str = "platform.schema_migrations";

/// The migration files, embedded at build time in file-name order.
static FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// One migration file.
#[derive(Clone, Debug)]
pub struct Migration {
    /// Number before the first `_` of the file name.
    pub version: i32,
    /// File name, e.g. `00_setup.sql`.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
    /// SHA-256 of the SQL text.
    pub checksum: Vec<u8>,
}

/// Every embedded migration, in order.
pub fn embedded() -> Vec<Migration> {
    FILES
        .iter()
        .map(|(name, sql)| Migration {
            version: name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                // The build script only embeds files; a bad name is a packaging bug caught by tests.
                .unwrap_or(-1),
            name,
            sql,
            checksum: Sha256::digest(sql.as_bytes()).to_vec(),
        })
        .collect()
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// File names applied by this run, in order.
    pub applied: Vec<String>,
    /// Migrations already present before this run.
    pub already_applied: usize,
}

/// Applies every pending migration. Safe to call concurrently from many processes.
pub async fn run(pool: &PgPool) -> Result<Report> {
    let mut conn = pool.acquire().await?;
    // If this future is dropped mid-way, the connection (and the session lock with it) must
    // not go back to the pool.
    conn.close_on_drop();
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *conn).await?;
    if !locked {
        tracing::info!("another process is migrating this database; waiting for it to finish");
        sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_KEY).execute(&mut *conn).await?;
    }
    let result = apply_pending(&mut conn).await;
    // Unlock even after a failure; if this fails the session ends and releases the lock anyway.
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *conn).await;
    let report = result?;
    unlock?;
    Ok(report)
}

/// Fails with a clear message unless the database holds exactly the embedded migrations.
///
/// Works through any pool of the database, a service's own included: the history is readable
/// by every service role. A database set up with plain psql has no history to compare; it is
/// accepted with a warning.
pub async fn ensure_current(conn: &mut PgConnection) -> Result<()> {
    if !history_exists(&mut *conn).await? {
        let schemas_exist: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'identity')")
                .fetch_one(&mut *conn)
                .await?;
        if schemas_exist {
            tracing::warn!("the schema was applied without `flatrender migrate`; its version cannot be checked");
            return Ok(());
        }
        return Err(Error::Migration(
            "the database is not migrated: run `flatrender migrate` (or start with --migrate)".into(),
        ));
    }
    let applied = applied(&mut *conn).await?;
    let expected = embedded();
    if applied.len() > expected.len() {
        // A newer release migrated already (a rolling upgrade, or a rollback of this binary):
        // migrations only add, so serving on a newer schema is safe as long as ours match.
        check_history(&applied[..expected.len()], &expected)?;
        tracing::warn!(
            newest = %applied[applied.len() - 1].name,
            "the database was migrated by a newer FlatRender; serving on it"
        );
        return Ok(());
    }
    check_history(&applied, &expected)?;
    if applied.len() < expected.len() {
        let next = &expected[applied.len()];
        return Err(Error::Migration(format!(
            "the database lacks migration {} and {} more: run `flatrender migrate` (or start with --migrate)",
            next.name,
            expected.len() - applied.len() - 1
        )));
    }
    Ok(())
}

struct Applied {
    version: i32,
    name: String,
    checksum: Vec<u8>,
}

async fn history_exists(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(HISTORY_TABLE).fetch_one(conn).await?)
}

async fn applied<'e, E: sqlx::PgExecutor<'e>>(executor: E) -> Result<Vec<Applied>> {
    let rows: Vec<(i32, String, Vec<u8>)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT version, name, checksum FROM {HISTORY_TABLE} ORDER BY version")))
            .fetch_all(executor)
            .await?;
    Ok(rows.into_iter().map(|(version, name, checksum)| Applied { version, name, checksum }).collect())
}

/// The applied history must be a prefix of the embedded list, byte for byte.
fn check_history(applied: &[Applied], expected: &[Migration]) -> Result<()> {
    for (i, done) in applied.iter().enumerate() {
        let Some(known) = expected.get(i) else {
            return Err(Error::Migration(format!(
                "the database has migration {} which this binary does not know; it was migrated by a newer FlatRender",
                done.name
            )));
        };
        if known.version != done.version || known.name != done.name {
            return Err(Error::Migration(format!(
                "migration history differs: the database has {} where this binary has {}",
                done.name, known.name
            )));
        }
        if known.checksum != done.checksum {
            return Err(Error::Migration(format!(
                "{} was edited after it was applied (checksum differs); never edit a landed migration, add a new file instead",
                done.name
            )));
        }
    }
    Ok(())
}

async fn apply_pending(conn: &mut PgConnection) -> Result<Report> {
    if !history_exists(&mut *conn).await? {
        let foreign: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'identity')")
            .fetch_one(&mut *conn)
            .await?;
        if foreign {
            return Err(Error::Migration(
                "this database already holds FlatRender schemas that `flatrender migrate` did not apply \
                 (perhaps with psql); migrate an empty database instead"
                    .into(),
            ));
        }
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS platform;
             CREATE TABLE {HISTORY_TABLE} (
                version integer PRIMARY KEY,
                name text NOT NULL UNIQUE,
                checksum bytea NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                duration_ms integer NOT NULL
            )"
        )))
        .execute(&mut *conn)
        .await?;
    }

    let expected = embedded();
    let done = applied(&mut *conn).await?;
    check_history(&done, &expected)?;

    let mut report = Report { already_applied: done.len(), ..Report::default() };
    for migration in &expected[done.len()..] {
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::Migration(format!("{} failed: {e}", migration.name)))?;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {HISTORY_TABLE} (version, name, checksum, duration_ms) VALUES ($1, $2, $3, $4)"
        )))
        .bind(migration.version)
        .bind(migration.name)
        .bind(&migration.checksum)
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(migration = migration.name, duration_ms, "applied migration");
        report.applied.push(migration.name.to_owned());
    }
    // Services check the schema version through their own roles; reading is all they may do.
    for role in crate::db::ServiceRole::ALL {
        sqlx::query(AssertSqlSafe(format!("GRANT SELECT ON {HISTORY_TABLE} TO {}", role.role)))
            .execute(&mut *conn)
            .await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_are_numbered_in_order() {
        let all = embedded();
        assert!(all.len() >= 15, "the fifteen seed files must be embedded");
        for (i, m) in all.iter().enumerate() {
            assert!(m.version >= 0, "{} must start with its number", m.name);
            if i > 0 {
                assert!(m.version > all[i - 1].version, "{} must come after {}", m.name, all[i - 1].name);
            }
        }
        assert_eq!(all[0].name, "00_setup.sql");
        assert_eq!(all[14].name, "14_notification.sql");
    }

    #[test]
    fn edited_history_is_refused() {
        let expected = embedded();
        let mut applied: Vec<Applied> = expected
            .iter()
            .take(2)
            .map(|m| Applied { version: m.version, name: m.name.into(), checksum: m.checksum.clone() })
            .collect();
        assert!(check_history(&applied, &expected).is_ok());
        applied[1].checksum = vec![0; 32];
        let err = check_history(&applied, &expected).unwrap_err().to_string();
        assert!(err.contains("was edited"), "{err}");
    }
}
