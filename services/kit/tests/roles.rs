//! Each service role can use its own schema and is refused on every other one.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flatrender_kit::db::ServiceRole;
use flatrender_kit::testing::TestDatabase;

#[tokio::test]
async fn each_role_reaches_only_its_own_schema() {
    let db = TestDatabase::migrated().await;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1) ORDER BY 1, 2",
    )
    .bind(ServiceRole::ALL.iter().map(|r| r.schema).collect::<Vec<_>>())
    .fetch_all(db.pool())
    .await
    .unwrap();
    for role in ServiceRole::ALL {
        assert!(tables.iter().any(|(s, _)| s == role.schema), "{} has tables", role.schema);
    }

    for role in ServiceRole::ALL {
        let pool = db.service_pool(role);
        let who: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&pool).await.unwrap();
        assert_eq!(who, role.role);
        for (schema, table) in &tables {
            let select = format!("SELECT 1 FROM {schema}.{table} LIMIT 0");
            let result = sqlx::query(sqlx::AssertSqlSafe(select)).execute(&pool).await;
            if schema == role.schema {
                assert!(result.is_ok(), "{} must read {schema}.{table}: {result:?}", role.role);
                let writable: bool =
                    sqlx::query_scalar("SELECT has_table_privilege(current_user, $1, 'INSERT, UPDATE, DELETE')")
                        .bind(format!("{schema}.{table}"))
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                // has_table_privilege with a list is true when any applies; check each.
                for privilege in ["INSERT", "UPDATE", "DELETE"] {
                    let ok: bool = sqlx::query_scalar("SELECT has_table_privilege(current_user, $1, $2)")
                        .bind(format!("{schema}.{table}"))
                        .bind(privilege)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    assert!(ok && writable, "{} needs {privilege} on {schema}.{table}", role.role);
                }
            } else {
                let err = result.expect_err(&format!("{} must not read {schema}.{table}", role.role));
                let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
                assert_eq!(code.as_deref(), Some("42501"), "{} on {schema}.{table}: {err}", role.role);
            }
        }
        // Shared infrastructure: writing events yes; the migrator's history is read-only.
        let history = sqlx::query("SELECT count(*) FROM platform.schema_migrations").execute(&pool).await;
        assert!(history.is_ok(), "{} reads the schema version: {history:?}", role.role);
        let forged = sqlx::query("DELETE FROM platform.schema_migrations").execute(&pool).await;
        assert!(forged.is_err(), "{} must not change the migration history", role.role);
        let outbox = sqlx::query("SELECT 1 FROM platform.outbox LIMIT 0").execute(&pool).await;
        assert!(outbox.is_ok(), "{} reads the outbox: {outbox:?}", role.role);
        // Partitions only through the owning schema's wrapper, never the shared implementation.
        let direct =
            sqlx::query("SELECT platform.create_monthly_partitions('render.node_health_logs', 1)").execute(&pool).await;
        assert!(direct.is_err(), "{} must not call the partition implementation directly", role.role);
        for (schema, wrapper) in [
            ("identity", "identity.ensure_api_request_log_partitions"),
            ("render", "render.ensure_node_health_log_partitions"),
        ] {
            let call = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {wrapper}(0)"))).execute(&pool).await;
            assert_eq!(call.is_ok(), schema == role.schema, "{} calling {wrapper}: {call:?}", role.role);
        }
    }
}

#[tokio::test]
async fn a_role_can_write_its_own_rows() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::IDENTITY);
    // The default tenant exists, and identity can change it.
    let updated =
        sqlx::query("UPDATE identity.tenants SET name = name WHERE id = '00000000-0000-0000-0000-000000000001'")
            .execute(&pool)
            .await
            .unwrap();
    assert_eq!(updated.rows_affected(), 1);
}

#[tokio::test]
async fn service_connections_do_not_jit_compile_queries() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&pool).await.unwrap();
    assert_eq!(jit, "off");
}
