//! Retention over the real services: exports past their expiry become EXPIRED and expired
//! snapshots are deleted by the periodic sweep, in batches, one replica at a time; reads show
//! the expiry before the sweep gets there, and a cache hit never serves an expired image.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_proto::flatrender::render::v1 as pb;
use support::*;
use tonic::Code;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0xa);

/// Renders snapshot `id` (as a delivered image would), expiring `expires_in` from now
/// (negative: already expired).
async fn ready(stack: &Orchestrator, id: &str, expires_in: &str) {
    stack
        .execute(&format!(
            "UPDATE render.frame_jobs SET state = 'done', finished_at = now() WHERE snapshot_id = '{id}';
             UPDATE render.snapshots SET state = 'ready', file_id = gen_random_uuid(), rendered_at = now(),
                    expires_at = now() + interval '{expires_in}'
              WHERE id = '{id}';"
        ))
        .await;
}

/// A completed job of `TENANT` with an export expiring `expires_in` from now (NULL: never).
async fn export(stack: &Orchestrator, expires_in: Option<&str>) -> String {
    let expiry = expires_in.map_or("NULL".to_owned(), |e| format!("now() + interval '{e}'"));
    let id: Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH job AS (
             INSERT INTO render.render_jobs (tenant_id, template_file_id, template_sha256, plan_code, output_width,
                    output_height, output_fps, state, finished_at)
             VALUES ($1, gen_random_uuid(), sha256('t'), 'pro', 1280, 720, 30, 'completed', now()) RETURNING id)
         INSERT INTO render.exports (tenant_id, job_id, file_id, width, height, fps, frame_count, duration_ms,
                size_bytes, sha256, expires_at)
         SELECT $1, id, gen_random_uuid(), 1280, 720, 30, 30, 1000, 1000, sha256('v'), {expiry} FROM job
      RETURNING id"
    )))
    .bind(TENANT)
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    id.to_string()
}

async fn export_state(stack: &Orchestrator, who: &Principal, id: &str) -> pb::ExportState {
    let got = stack.renders(who).get_export(pb::GetExportRequest { export_id: id.to_owned() }).await.unwrap();
    got.into_inner().export.unwrap().state()
}

async fn stored_export_states(stack: &Orchestrator, ids: &[String]) -> Vec<String> {
    let mut states = Vec::new();
    for id in ids {
        let state: String = sqlx::query_scalar("SELECT state FROM render.exports WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
        states.push(state);
    }
    states
}

#[tokio::test]
async fn expired_exports_and_snapshots_are_marked_and_never_served() {
    // The sweep runs often, two rows of each kind per transaction.
    let stack = Orchestrator::start_with_files_and(|settings| {
        settings.api.retention_sweep_interval = Duration::from_millis(100);
        settings.api.retention_batch = 2;
    })
    .await;
    let alice = Principal::tenant_admin(TENANT);
    let files = stack.assets(&alice).await;
    // Hold the sweep off (as another replica sweeping would) while the rows are set up.
    let mut held = stack.db.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('render.retention', 0))")
        .execute(&mut *held)
        .await
        .unwrap();

    let mut snapshots = Vec::new();
    for frame in 0..4 {
        let response = stack.renders(&alice).request_snapshot(snapshot_request(&files.template, frame)).await.unwrap();
        snapshots.push(response.into_inner().snapshot.unwrap().id);
    }
    // 0 and 1 expired, 2 expired but requested again (re-rendered, not served), 3 still kept.
    for id in &snapshots[..3] {
        ready(&stack, id, "-1 second").await;
    }
    ready(&stack, &snapshots[3], "1 hour").await;
    let expired_exports = [export(&stack, Some("-1 minute")).await, export(&stack, Some("-2 minutes")).await];
    let more_expired = [
        export(&stack, Some("-3 minutes")).await,
        export(&stack, Some("-4 minutes")).await,
        export(&stack, Some("-1 second")).await,
    ];
    let kept_exports = [export(&stack, Some("1 day")).await, export(&stack, None).await];

    // Before the sweep, reads already show the expiry.
    for id in expired_exports.iter().chain(&more_expired) {
        assert_eq!(export_state(&stack, &alice, id).await, pb::ExportState::Expired);
    }
    for id in &kept_exports {
        assert_eq!(export_state(&stack, &alice, id).await, pb::ExportState::Available);
    }
    let get = |id: &str| pb::GetSnapshotRequest { snapshot_id: id.to_owned() };
    assert_eq!(failure(stack.renders(&alice).get_snapshot(get(&snapshots[0])).await).0, Code::NotFound);
    let watch = pb::WatchSnapshotRequest { snapshot_id: snapshots[0].clone() };
    assert_eq!(failure(stack.renders(&alice).watch_snapshot(watch).await).0, Code::NotFound);
    let again = stack.renders(&alice).request_snapshot(snapshot_request(&files.template, 2)).await.unwrap();
    let again = again.into_inner();
    assert!(!again.cache_hit, "an expired image is never a hit");
    let again = again.snapshot.unwrap();
    assert_eq!((again.id.as_str(), again.state()), (snapshots[2].as_str(), pb::SnapshotState::Queued));
    assert!(again.file_id.is_empty() && again.expires_at.is_none());
    let kept = stack.renders(&alice).request_snapshot(snapshot_request(&files.template, 3)).await.unwrap();
    assert!(kept.into_inner().cache_hit);
    // Nothing was written while the sweep was held.
    assert_eq!(stack.count("SELECT count(*) FROM render.exports WHERE state = 'expired'").await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM render.snapshots").await, 4);
    held.rollback().await.unwrap();

    // The sweep marks the exports (five, in three batches of two) and deletes the two expired
    // snapshots; nothing else. Their tasks stay for the operators' record, and the rate's rows
    // for the hourly rate.
    let rate_rows = stack.count("SELECT count(*) FROM render.snapshot_tasks").await;
    let tasks = |snapshot: &str| format!("SELECT id FROM render.frame_jobs WHERE snapshot_id = '{snapshot}'");
    let mut expired_tasks: Vec<Uuid> = Vec::new();
    for snapshot in &snapshots[..2] {
        expired_tasks.extend(
            sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(tasks(snapshot)))
                .fetch_all(stack.db.pool())
                .await
                .unwrap(),
        );
    }
    assert_eq!(expired_tasks.len(), 2);
    eventually("the sweep", || async {
        stack.count("SELECT count(*) FROM render.exports WHERE state = 'expired'").await == 5
            && stack.count("SELECT count(*) FROM render.snapshots").await == 2
    })
    .await;
    let all_expired: Vec<String> = expired_exports.iter().chain(&more_expired).cloned().collect();
    assert!(stored_export_states(&stack, &all_expired).await.iter().all(|s| s == "expired"));
    assert_eq!(stored_export_states(&stack, &kept_exports).await, ["available", "available"]);
    for id in &all_expired {
        assert_eq!(export_state(&stack, &alice, id).await, pb::ExportState::Expired);
    }
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM render.snapshots ORDER BY frame").fetch_all(stack.db.pool()).await.unwrap();
    let left: Vec<String> = left.iter().map(Uuid::to_string).collect();
    assert_eq!(left, [snapshots[2].clone(), snapshots[3].clone()]);
    let kept: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT lane, snapshot_id FROM render.frame_jobs WHERE id = ANY($1)")
            .bind(&expired_tasks)
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(kept, [("snapshot".to_owned(), None), ("snapshot".to_owned(), None)], "the tasks stay, unlinked");
    assert_eq!(stack.count("SELECT count(*) FROM render.snapshot_tasks").await, rate_rows);
    assert_eq!(failure(stack.renders(&alice).get_snapshot(get(&snapshots[1])).await).0, Code::NotFound);
    let got = stack.renders(&alice).get_snapshot(get(&snapshots[3])).await.unwrap().into_inner();
    assert_eq!(got.snapshot.unwrap().state(), pb::SnapshotState::Ready);

    // Asked again, a deleted snapshot renders under a new row.
    let fresh = stack.renders(&alice).request_snapshot(snapshot_request(&files.template, 0)).await.unwrap();
    let fresh = fresh.into_inner();
    assert!(!fresh.cache_hit);
    let fresh = fresh.snapshot.unwrap();
    assert_ne!(fresh.id, snapshots[0]);
    assert_eq!(fresh.state(), pb::SnapshotState::Queued);
}

#[tokio::test]
async fn one_replica_sweeps_at_a_time() {
    let stack = Orchestrator::start_with_files_and(|settings| {
        settings.api.retention_sweep_interval = Duration::from_secs(3600)
    })
    .await;
    let alice = Principal::tenant_admin(TENANT);
    let due = [export(&stack, Some("-1 minute")).await, export(&stack, Some("-1 minute")).await];
    let pool = stack.db.pool();
    // The hourly snapshot rate: two rows past the hour (a caller who did not come back), one
    // within it.
    stack
        .execute(&format!(
            "INSERT INTO render.snapshot_tasks (tenant_id, user_id, created_at)
             VALUES ('{TENANT}', NULL, now() - interval '2 hours'), ('{TENANT}', NULL, now() - interval '61 minutes'),
                    ('{TENANT}', NULL, now() - interval '59 minutes')"
        ))
        .await;

    // While another holds the sweep, this one does nothing.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('render.retention', 0))")
        .execute(&mut *other)
        .await
        .unwrap();
    let swept = flatrender_render::retention::sweep(pool, 1).await.unwrap();
    assert_eq!(swept, flatrender_render::retention::Swept { busy: true, ..Default::default() });
    assert_eq!(stored_export_states(&stack, &due).await, ["available", "available"]);
    other.rollback().await.unwrap();

    // Then it marks everything due, a batch of one at a time.
    let swept = flatrender_render::retention::sweep(pool, 1).await.unwrap();
    assert_eq!(swept, flatrender_render::retention::Swept { exports: 2, rate_rows: 2, ..Default::default() });
    assert_eq!(stored_export_states(&stack, &due).await, ["expired", "expired"]);
    let left = "SELECT count(*) FROM render.snapshot_tasks WHERE created_at > now() - interval '1 hour'";
    assert_eq!((stack.count("SELECT count(*) FROM render.snapshot_tasks").await, stack.count(left).await), (1, 1));
    assert_eq!(export_state(&stack, &alice, &due[0]).await, pb::ExportState::Expired);
    let swept = flatrender_render::retention::sweep(pool, 1).await.unwrap();
    assert_eq!(swept, flatrender_render::retention::Swept::default());
}
