//! The migrator and the schema against real PostgreSQL.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::migrate;
use flatrender_kit::testing::TestDatabase;

/// `pg_dump` of the database, without the migrator's own history table.
fn dump(db: &TestDatabase, what: &str) -> String {
    let output = Command::new("pg_dump")
        .args([what, "--no-comments", "--exclude-table=platform.schema_migrations", db.url().expose()])
        .output()
        .expect("pg_dump is installed by scripts/postgres.sh");
    assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    // pg_dump 15.14+ wraps the dump in `\restrict <random key>` lines; they differ every time.
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seed rows carry `now()` timestamps, which differ between two databases; blank them out.
fn without_timestamps(dump: &str) -> String {
    let is_timestamp = |f: &str| {
        let b = f.as_bytes();
        b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':'
    };
    dump.lines()
        .map(|line| line.split('\t').map(|f| if is_timestamp(f) { "<ts>" } else { f }).collect::<Vec<_>>().join("\t"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts two dumps are equal, showing the first difference rather than both dumps.
fn assert_same(a: &str, b: &str, what: &str) {
    if let Some((i, (x, y))) = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y) {
        panic!("{what}: line {} differs:\n  {x}\n  {y}", i + 1);
    }
    assert_eq!(a.lines().count(), b.lines().count(), "{what}: one dump is longer");
}

fn psql_file(db: &TestDatabase, path: &str) {
    let output = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.url().expose(), "-f", path])
        .output()
        .expect("psql is installed by scripts/postgres.sh");
    assert!(output.status.success(), "psql -f {path}: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn psql_in_seed_order_and_the_migrator_build_the_same_schema() {
    let by_psql = TestDatabase::empty().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
    for migration in migrate::embedded() {
        psql_file(&by_psql, &format!("{dir}/{}", migration.name));
    }
    let by_migrator = TestDatabase::migrated().await;

    let (a, b) = (dump(&by_psql, "--schema-only"), dump(&by_migrator, "--schema-only"));
    assert!(a.contains("CREATE TABLE render.frame_jobs"), "the dump holds the schema");
    assert_same(&a, &b, "psql and `flatrender migrate` must produce identical schemas");
    let data = |db| without_timestamps(&dump(db, "--data-only"));
    assert_same(&data(&by_psql), &data(&by_migrator), "and identical seed rows");

    // The migrator refuses a database that psql already set up, rather than failing midway,
    // and services accept it (its version cannot be checked).
    let err = migrate::run(by_psql.pool()).await.unwrap_err().to_string();
    assert!(err.contains("did not apply"), "{err}");
    migrate::ensure_current(&mut by_psql.pool().acquire().await.unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_second_migrate_changes_nothing() {
    let db = TestDatabase::empty().await;
    let first = migrate::run(db.pool()).await.unwrap();
    assert_eq!(first.applied.len(), migrate::embedded().len());
    let before = dump(&db, "--schema-only");
    let second = migrate::run(db.pool()).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, first.applied.len());
    assert_same(&dump(&db, "--schema-only"), &before, "a second migrate");
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let db = TestDatabase::empty().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool().clone();
            tokio::spawn(async move { migrate::run(&pool).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        applied += run.await.unwrap().expect("every replica succeeds").applied.len();
    }
    assert_eq!(applied, migrate::embedded().len(), "each file applied exactly once");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM platform.schema_migrations").fetch_one(db.pool()).await.unwrap();
    assert_eq!(usize::try_from(rows).unwrap(), migrate::embedded().len());
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDatabase::migrated().await;
    sqlx::query("UPDATE platform.schema_migrations SET checksum = '\\x00' WHERE version = 3")
        .execute(db.pool())
        .await
        .unwrap();
    let err = migrate::run(db.pool()).await.unwrap_err().to_string();
    assert!(err.contains("03_identity_billing.sql was edited"), "{err}");
}

#[tokio::test]
async fn serving_requires_a_current_schema() {
    let db = TestDatabase::empty().await;
    let err = migrate::ensure_current(&mut db.pool().acquire().await.unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("not migrated"), "{err}");
    migrate::run(db.pool()).await.unwrap();
    migrate::ensure_current(&mut db.pool().acquire().await.unwrap()).await.unwrap();
    // The newest migration missing: what a database migrated by the previous release looks like.
    let newest: String =
        sqlx::query_scalar("DELETE FROM platform.schema_migrations WHERE version = (SELECT max(version) FROM platform.schema_migrations) RETURNING name")
            .fetch_one(db.pool())
            .await
            .unwrap();
    let err = migrate::ensure_current(&mut db.pool().acquire().await.unwrap()).await.unwrap_err().to_string();
    assert!(err.contains(&format!("lacks migration {newest}")), "{err}");

    // A newer release's extra migration (a rolling upgrade) is served on; the migrator refuses it.
    let db = TestDatabase::migrated().await;
    sqlx::query("INSERT INTO platform.schema_migrations (version, name, checksum, duration_ms) VALUES (999, '999_future.sql', '\\x00', 0)")
        .execute(db.pool())
        .await
        .unwrap();
    migrate::ensure_current(&mut db.pool().acquire().await.unwrap()).await.unwrap();
    let err = migrate::run(db.pool()).await.unwrap_err().to_string();
    assert!(err.contains("newer FlatRender"), "{err}");
}

#[tokio::test]
async fn services_create_upcoming_partitions_idempotently() {
    let db = TestDatabase::migrated().await;
    for (role, function, parent) in [
        (ServiceRole::IDENTITY, "identity.ensure_api_request_log_partitions", "identity.tenant_api_request_logs"),
        (ServiceRole::RENDER, "render.ensure_node_health_log_partitions", "render.node_health_logs"),
    ] {
        let pool = db.service_pool(role);
        let call = format!("SELECT {function}(3)");
        let created: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(call.clone())).fetch_one(&pool).await.unwrap();
        assert!(created >= 1, "{function} creates the months ahead");
        let again: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(call)).fetch_one(&pool).await.unwrap();
        assert_eq!(again, 0, "{function} is idempotent");
        // A row for today lands in a partition the service created.
        let partitions: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass")
            .bind(parent)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(partitions >= 4, "{parent}: 2026-01 plus this month and three ahead, got {partitions}");
    }
}
