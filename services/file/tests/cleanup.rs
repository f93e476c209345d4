//! CleanupService and the scheduler over the real service: each rule's effect on objects, rows
//! and quotas, run records and items, schedules and who may touch them, on-demand runs, the
//! lease between replicas, and runs the scheduler starts by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use flatrender_file::ledger::Ledger;
use flatrender_file::storage::{BackendConfig, Expected, ObjectKey};
use flatrender_file::{State, cleanup};
use flatrender_kit::outbox;
use flatrender_kit::shutdown::Shutdown;
use flatrender_proto::flatrender::common::v1::PageRequest;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use prost_types::FieldMask;
use sqlx::Row;
use support::{Backend, Principal, Seed, Service, bytes, code};
use time::OffsetDateTime;
use tonic::Code;
use uuid::Uuid;

/// The platform-wide schedules the migration seeds.
const RENDER_CHUNKS: &str = "00000000-0000-0000-0013-000000000001";
const ABANDONED_UPLOADS: &str = "00000000-0000-0000-0013-000000000004";
const DELETING_FILES: &str = "00000000-0000-0000-0013-000000000005";
const ORPHAN_OBJECTS: &str = "00000000-0000-0000-0013-000000000006";

async fn seed(service: &Service, tenant: Uuid, owner: Uuid, kind: &str, len: usize) -> Uuid {
    let data = bytes(len as u64 + 7, len);
    service
        .seed_file(Seed { tenant, owner: Some(owner), folder: None, name: "f.bin", kind, data: &data, counted: true })
        .await
}

/// Runs `statement` (with `$1` = `id`) as the database owner.
async fn exec(service: &Service, statement: &str, id: Uuid) {
    sqlx::query(sqlx::AssertSqlSafe(statement)).bind(id).execute(service.db.pool()).await.unwrap();
}

/// Runs `statement` with triggers off, so `updated_at` can be set to the past.
async fn exec_untriggered(service: &Service, statement: &str, id: Uuid) {
    let mut tx = service.db.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement)).bind(id).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn file_ids(service: &Service) -> BTreeSet<Uuid> {
    sqlx::query_scalar("SELECT id FROM file_mgr.files")
        .fetch_all(service.db.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// (used, reserved, files) of a quota.
async fn usage(service: &Service, tenant: Uuid, user: Option<Uuid>) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT used_bytes, reserved_bytes, file_count FROM file_mgr.quotas
          WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(service.db.pool())
    .await
    .unwrap()
}

async fn put(service: &Service, key: &ObjectKey, len: usize) {
    let chunk = bytes::Bytes::from(bytes(len as u64, len));
    service
        .storage
        .put(key, futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]), Expected::default())
        .await
        .unwrap();
}

/// Makes the object under `key` an hour old (local backend).
fn make_old(service: &Service, key: &ObjectKey) {
    let BackendConfig::Local(local) = &service.settings.storage.backend else { panic!("a local backend") };
    let file = std::fs::File::options().write(true).open(local.root.join(key.as_str())).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
}

async fn items(service: &Service, run: &str) -> Vec<pb::CleanupRunItem> {
    let mut cleanup = service.cleanup(&Principal::platform_admin());
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = Some(PageRequest { page_size: 1, page_token: token });
        let answer = cleanup.list_cleanup_run_items(pb::ListCleanupRunItemsRequest { page, run_id: run.into() }).await;
        let answer = answer.unwrap().into_inner();
        all.extend(answer.items);
        token = answer.page.unwrap().next_page_token;
        if token.is_empty() {
            return all;
        }
    }
}

fn deleted_events(payloads: Vec<Vec<u8>>) -> Vec<ev::FileDeleted> {
    payloads
        .into_iter()
        .map(|payload| {
            let event = outbox::Event {
                id: 0,
                event_type: "flatrender.events.v1.FileDeleted".into(),
                source: "file".into(),
                aggregate_type: "file".into(),
                aggregate_id: String::new(),
                tenant_id: None,
                payload,
                trace_context: serde_json::Value::Null,
                created_at: OffsetDateTime::now_utc(),
            };
            event.decode::<ev::FileDeleted>().unwrap().unwrap()
        })
        .collect()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

async fn update(
    service: &Service,
    schedule: pb::CleanupSchedule,
    paths: &[&str],
) -> Result<pb::CleanupSchedule, tonic::Status> {
    let request = pb::UpdateCleanupScheduleRequest { schedule: Some(schedule), update_mask: mask(paths) };
    let answer = service.cleanup(&Principal::platform_admin()).update_cleanup_schedule(request).await?;
    Ok(answer.into_inner().schedule.unwrap())
}

#[tokio::test]
async fn old_render_chunks_go_protected_and_fresh_ones_stay() {
    let service = Service::start().await;
    let (tenant, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let old_a = seed(&service, tenant, owner, "render_chunk", 100).await;
    let old_b = seed(&service, tenant, owner, "render_chunk", 200).await;
    let pinned = seed(&service, tenant, owner, "render_chunk", 300).await;
    let retained = seed(&service, tenant, owner, "render_chunk", 400).await;
    let fresh = seed(&service, tenant, owner, "render_chunk", 500).await;
    let asset = seed(&service, tenant, owner, "asset", 600).await;
    for id in [old_a, old_b, pinned, retained, asset] {
        exec(&service, "UPDATE file_mgr.files SET created_at = now() - interval '2 days' WHERE id = $1", id).await;
    }
    exec(&service, "UPDATE file_mgr.files SET pinned = true, retained_by = 'render' WHERE id = $1", pinned).await;
    let retain =
        "UPDATE file_mgr.files SET retained_until = now() + interval '1 day', retained_by = 'render' WHERE id = $1";
    exec(&service, retain, retained).await;

    let run = service.run_cleanup(RENDER_CHUNKS).await;
    assert_eq!(run.state, pb::CleanupRunState::Succeeded as i32, "{run:?}");
    assert_eq!((run.files_scanned, run.files_removed, run.bytes_removed), (4, 2, 300));
    assert_eq!((run.files_skipped_retained, run.errors, run.error_message.as_str()), (2, 0, ""));
    assert_eq!((run.schedule_id.as_str(), run.tenant_id.as_str()), (RENDER_CHUNKS, ""));
    assert_eq!(run.instance_id, service.settings.cleanup.instance_id);
    assert!(run.finished_at.is_some());

    // Object and row gone together, quota refunded; everything else kept.
    let kept: BTreeSet<Uuid> = [pinned, retained, fresh, asset].into();
    assert_eq!(file_ids(&service).await, kept);
    let keys: Vec<String> = {
        let mut keys: Vec<String> = kept.iter().map(|id| ObjectKey::file(tenant, *id).to_string()).collect();
        keys.sort();
        keys
    };
    assert_eq!(service.object_keys().await, keys);
    assert_eq!(usage(&service, tenant, Some(owner)).await, (1800, 0, 4));
    assert_eq!(usage(&service, tenant, None).await, (1800, 0, 4));

    // What it removed, page by page; the events say why.
    let removed = items(&service, &run.id).await;
    let removed_ids: BTreeSet<Uuid> = removed.iter().map(|item| item.file_id.parse().unwrap()).collect();
    assert_eq!(removed_ids, [old_a, old_b].into());
    for item in &removed {
        assert_eq!((item.kind, item.tenant_id.as_str()), (pb::FileKind::RenderChunk as i32, &*tenant.to_string()));
        let id: Uuid = item.file_id.parse().unwrap();
        assert_eq!(item.storage_key, ObjectKey::file(tenant, id).to_string());
        assert_eq!(item.size_bytes, if id == old_a { 100 } else { 200 });
    }
    let events = deleted_events(service.events("flatrender.events.v1.FileDeleted").await);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.reason == ev::FileDeletionReason::Retention as i32));

    // The schedule remembers the run and is due again after its interval.
    let mut cleanup = service.cleanup(&Principal::platform_admin());
    let got = cleanup.get_cleanup_schedule(pb::GetCleanupScheduleRequest { schedule_id: RENDER_CHUNKS.into() }).await;
    let got = got.unwrap().into_inner();
    assert_eq!(got.last_run.unwrap().id, run.id);
    let schedule = got.schedule.unwrap();
    assert!(schedule.last_run_at.is_some() && schedule.running_on.is_empty());
    let due_in = schedule.next_run_at.unwrap().seconds - OffsetDateTime::now_utc().unix_timestamp();
    assert!((3500..=3600).contains(&due_in), "due in {due_in} s");

    // Runs and items are the platform's: others are refused or see nothing.
    let tenant_admin = Principal::tenant_admin(tenant);
    let get_run = pb::GetCleanupRunRequest { run_id: run.id.clone() };
    assert_eq!(
        code(service.cleanup(&Principal::user(tenant)).get_cleanup_run(get_run.clone()).await),
        Code::PermissionDenied
    );
    assert_eq!(code(service.cleanup(&tenant_admin).get_cleanup_run(get_run).await), Code::NotFound);
    let listed = service.cleanup(&tenant_admin).list_cleanup_runs(pb::ListCleanupRunsRequest::default()).await;
    assert!(listed.unwrap().into_inner().runs.is_empty());
    let run_now = pb::RunCleanupScheduleRequest { schedule_id: RENDER_CHUNKS.into() };
    assert_eq!(code(service.cleanup(&tenant_admin).run_cleanup_schedule(run_now).await), Code::PermissionDenied);

    // At most `batch_size` removals per run; the next run continues.
    let batch = pb::CleanupSchedule { id: RENDER_CHUNKS.into(), batch_size: 1, ..Default::default() };
    assert_eq!(update(&service, batch, &["batch_size"]).await.unwrap().batch_size, 1);
    for _ in 0..2 {
        let id = seed(&service, tenant, owner, "render_chunk", 10).await;
        exec(&service, "UPDATE file_mgr.files SET created_at = now() - interval '2 days' WHERE id = $1", id).await;
    }
    let removals: Vec<u64> = {
        let mut removals = Vec::new();
        for _ in 0..3 {
            removals.push(service.run_cleanup(RENDER_CHUNKS).await.files_removed);
        }
        removals
    };
    assert_eq!(removals, vec![1, 1, 0]);
    let runs = cleanup.list_cleanup_runs(pb::ListCleanupRunsRequest {
        schedule_id: RENDER_CHUNKS.into(),
        state: pb::CleanupRunState::Succeeded as i32,
        ..Default::default()
    });
    let runs = runs.await.unwrap().into_inner().runs;
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[3].id, run.id, "newest first");
}

fn schedule(tenant: Option<Uuid>, name: &str, rule: pb::CleanupRule, max_age: Option<u64>) -> pb::CleanupSchedule {
    pb::CleanupSchedule {
        tenant_id: tenant.map(|t| t.to_string()).unwrap_or_default(),
        name: name.into(),
        rule: rule as i32,
        max_age_seconds: max_age,
        interval_seconds: 3600,
        batch_size: 100,
        enabled: false,
        ..Default::default()
    }
}

async fn create(
    service: &Service,
    who: &Principal,
    new: pb::CleanupSchedule,
) -> Result<pb::CleanupSchedule, tonic::Status> {
    let request = pb::CreateCleanupScheduleRequest { schedule: Some(new) };
    Ok(service.cleanup(who).create_cleanup_schedule(request).await?.into_inner().schedule.unwrap())
}

async fn list_schedules(
    service: &Service,
    who: &Principal,
    request: pb::ListCleanupSchedulesRequest,
) -> Vec<pb::CleanupSchedule> {
    service.cleanup(who).list_cleanup_schedules(request).await.unwrap().into_inner().schedules
}

#[tokio::test]
async fn tenant_schedules_override_the_platform_rule() {
    let service = Service::start().await;
    let platform = Principal::platform_admin();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let (admin, other_admin) = (Principal::tenant_admin(first), Principal::tenant_admin(second));
    let kept = seed(&service, first, Uuid::new_v4(), "render_chunk", 10).await;
    let removed = seed(&service, second, Uuid::new_v4(), "render_chunk", 20).await;
    for id in [kept, removed] {
        exec(&service, "UPDATE file_mgr.files SET created_at = now() - interval '2 days' WHERE id = $1", id).await;
    }

    // The tenant's own rule, under the platform rule's name (names are unique per scope).
    let own = schedule(Some(first), "render-chunks", pb::CleanupRule::RenderChunks, Some(30 * 86_400));
    let own = create(&service, &platform, own.clone()).await.unwrap();
    assert_eq!((own.tenant_id.as_str(), own.enabled), (&*first.to_string(), false));
    let again = schedule(Some(first), "render-chunks", pb::CleanupRule::Snapshots, Some(60));
    assert_eq!(code(create(&service, &platform, again).await), Code::AlreadyExists);
    for bad in [
        schedule(None, "Bad Name", pb::CleanupRule::Snapshots, Some(60)),
        schedule(None, "no-rule", pb::CleanupRule::Unspecified, Some(60)),
        schedule(None, "no-age", pb::CleanupRule::Snapshots, None),
        pb::CleanupSchedule { use_plan_retention: true, ..schedule(None, "plan", pb::CleanupRule::Snapshots, None) },
        pb::CleanupSchedule { interval_seconds: 5, ..schedule(None, "fast", pb::CleanupRule::Snapshots, Some(60)) },
    ] {
        assert_eq!(code(create(&service, &platform, bad.clone()).await), Code::InvalidArgument, "{bad:?}");
    }
    let exports =
        pb::CleanupSchedule { use_plan_retention: true, ..schedule(None, "exp", pb::CleanupRule::Exports, None) };
    assert!(create(&service, &platform, exports).await.unwrap().max_age_seconds.is_none());

    // The platform run skips the tenant with its own rule; that rule runs now though disabled.
    let run = service.run_cleanup(RENDER_CHUNKS).await;
    assert_eq!((run.files_scanned, run.files_removed), (1, 1));
    assert_eq!(file_ids(&service).await, [kept].into());
    let own_run = service.run_cleanup(&own.id).await;
    assert_eq!((own_run.files_scanned, own_run.files_removed, own_run.tenant_id.as_str()), (0, 0, &*first.to_string()));
    let younger = pb::CleanupSchedule { id: own.id.clone(), max_age_seconds: Some(3600), ..Default::default() };
    update(&service, younger, &["max_age_seconds"]).await.unwrap();
    let own_run = service.run_cleanup(&own.id).await;
    assert_eq!(own_run.files_removed, 1);
    assert!(file_ids(&service).await.is_empty());

    // Tenant admins read their own and the platform's schedules, and their own runs.
    let by_name = pb::ListCleanupSchedulesRequest::default();
    assert_eq!(list_schedules(&service, &admin, by_name.clone()).await.len(), 8);
    assert_eq!(list_schedules(&service, &other_admin, by_name.clone()).await.len(), 7);
    let platform_only = pb::ListCleanupSchedulesRequest { platform_only: true, ..Default::default() };
    assert_eq!(list_schedules(&service, &admin, platform_only).await.len(), 7);
    let own_only = pb::ListCleanupSchedulesRequest { tenant_id: first.to_string(), ..Default::default() };
    assert_eq!(list_schedules(&service, &admin, own_only.clone()).await.len(), 1);
    let elsewhere = pb::ListCleanupSchedulesRequest { tenant_id: second.to_string(), ..Default::default() };
    assert_eq!(code(service.cleanup(&admin).list_cleanup_schedules(elsewhere).await), Code::NotFound);
    let get_own = pb::GetCleanupScheduleRequest { schedule_id: own.id.clone() };
    let seen = service.cleanup(&admin).get_cleanup_schedule(get_own.clone()).await.unwrap().into_inner();
    assert_eq!(seen.last_run.unwrap().id, own_run.id);
    assert_eq!(code(service.cleanup(&other_admin).get_cleanup_schedule(get_own.clone()).await), Code::NotFound);
    let platform_schedule = pb::GetCleanupScheduleRequest { schedule_id: RENDER_CHUNKS.into() };
    let seen = service.cleanup(&admin).get_cleanup_schedule(platform_schedule).await.unwrap().into_inner();
    assert!(seen.schedule.is_some() && seen.last_run.is_none());
    let runs = service.cleanup(&admin).list_cleanup_runs(pb::ListCleanupRunsRequest::default()).await;
    assert_eq!(runs.unwrap().into_inner().runs.len(), 2);
    let own_items = pb::ListCleanupRunItemsRequest { run_id: own_run.id.clone(), ..Default::default() };
    let own_items = service.cleanup(&admin).list_cleanup_run_items(own_items).await.unwrap().into_inner().items;
    assert_eq!(own_items.len(), 1);
    assert_eq!(own_items[0].file_id, kept.to_string());

    // Only platform admins write; others are refused.
    let user = Principal::user(first);
    assert_eq!(code(service.cleanup(&user).list_cleanup_schedules(by_name.clone()).await), Code::PermissionDenied);
    let attempt = schedule(Some(first), "mine", pb::CleanupRule::Snapshots, Some(60));
    assert_eq!(code(create(&service, &admin, attempt).await), Code::PermissionDenied);
    let delete = pb::DeleteCleanupScheduleRequest { schedule_id: own.id.clone() };
    assert_eq!(code(service.cleanup(&admin).delete_cleanup_schedule(delete.clone()).await), Code::PermissionDenied);

    // Masks: immutable and unknown fields, nothing named, names taken in the scope.
    let renamed = pb::CleanupSchedule { id: own.id.clone(), name: "snaps".into(), ..Default::default() };
    assert_eq!(update(&service, renamed.clone(), &["name"]).await.unwrap().name, "snaps");
    let snaps = schedule(Some(first), "render-chunks", pb::CleanupRule::Snapshots, Some(60));
    create(&service, &platform, snaps).await.unwrap();
    assert_eq!(code(update(&service, renamed.clone(), &["rule"]).await), Code::InvalidArgument);
    assert_eq!(code(update(&service, renamed.clone(), &["colour"]).await), Code::InvalidArgument);
    assert_eq!(code(update(&service, renamed.clone(), &[]).await), Code::InvalidArgument);
    let clash = pb::CleanupSchedule { name: "render-chunks".into(), ..renamed };
    assert_eq!(code(update(&service, clash, &["name"]).await), Code::AlreadyExists);

    // Pages by name; a rule filter.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = Some(PageRequest { page_size: 4, page_token: token });
        let request = pb::ListCleanupSchedulesRequest { page, ..Default::default() };
        let answer = service.cleanup(&platform).list_cleanup_schedules(request).await.unwrap().into_inner();
        names.extend(answer.schedules.into_iter().map(|s| s.name));
        token = answer.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!((names.len(), &names), (9, &sorted));
    let chunks = pb::ListCleanupSchedulesRequest { rule: pb::CleanupRule::RenderChunks as i32, ..Default::default() };
    assert_eq!(list_schedules(&service, &platform, chunks).await.len(), 2);

    // Deleting takes the run history with it.
    service.cleanup(&platform).delete_cleanup_schedule(delete.clone()).await.unwrap();
    assert_eq!(code(service.cleanup(&platform).delete_cleanup_schedule(delete).await), Code::NotFound);
    let gone = pb::GetCleanupRunRequest { run_id: own_run.id };
    assert_eq!(code(service.cleanup(&platform).get_cleanup_run(gone).await), Code::NotFound);
}

/// Inserts an upload session of `owner` holding a reservation of `reserved` bytes, expired an
/// hour ago (and unchanged for two days) or live; a simple one streams into a file key.
async fn insert_session(
    service: &Service,
    tenant: Uuid,
    owner: Uuid,
    reserved: u64,
    expired: bool,
    simple: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let staging = if simple { ObjectKey::file(tenant, id) } else { ObjectKey::upload(id) };
    let mut tx = service.db.pool().begin().await.unwrap();
    let ledger = Ledger::new(&service.settings);
    ledger.reserve(&mut tx, tenant, Some(owner), reserved).await.map_err(|e| format!("{e:?}")).unwrap();
    sqlx::query(
        "INSERT INTO file_mgr.upload_sessions (id, tenant_id, owner_user_id, name, kind, declared_size, declared_sha256,
             part_size, state, reserved_bytes, storage_backend, staging_key, simple, expires_at, created_at, updated_at)
         VALUES ($1, $2, $3, 'upload.bin', 'asset', $4, $5, 5242880, 'active', $4, 'local', $6, $7,
                 CASE WHEN $8 THEN now() - interval '1 hour' ELSE now() + interval '1 day' END,
                 now() - interval '3 days', CASE WHEN $8 THEN now() - interval '2 days' ELSE now() END)",
    )
    .bind(id)
    .bind(tenant)
    .bind(owner)
    .bind(i64::try_from(reserved).unwrap())
    .bind(vec![7_u8; 32])
    .bind(staging.as_str())
    .bind(simple)
    .bind(expired)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Stores part 1 of session `id` with `len` bytes, in storage and as its row.
async fn put_part(service: &Service, tenant: Uuid, id: Uuid, len: usize) -> ObjectKey {
    let data = bytes(id.as_u128() as u64, len);
    let chunk = bytes::Bytes::from(data.clone());
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]);
    service.storage.put_part(id, 1, stream, Expected::default()).await.unwrap();
    let key = ObjectKey::upload_part(id, 1).unwrap();
    sqlx::query(
        "INSERT INTO file_mgr.upload_parts (session_id, part_number, tenant_id, size_bytes, sha256, storage_key)
         VALUES ($1, 1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(tenant)
    .bind(i64::try_from(len).unwrap())
    .bind(flatrender_file::storage::Sha256Digest::of(&data).as_bytes().as_slice())
    .bind(key.as_str())
    .execute(service.db.pool())
    .await
    .unwrap();
    key
}

#[tokio::test]
async fn abandoned_uploads_give_back_their_reservation() {
    let service = Service::start().await;
    let (tenant, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let abandoned = insert_session(&service, tenant, owner, 10_000, true, false).await;
    let abandoned_part = put_part(&service, tenant, abandoned, 100).await;
    let simple = insert_session(&service, tenant, owner, 2_000, true, true).await;
    let simple_key = ObjectKey::file(tenant, simple);
    put(&service, &simple_key, 150).await;
    let live = insert_session(&service, tenant, owner, 500, false, false).await;
    let live_part = put_part(&service, tenant, live, 80).await;
    assert_eq!(usage(&service, tenant, Some(owner)).await, (0, 12_500, 0));

    let run = service.run_cleanup(ABANDONED_UPLOADS).await;
    assert_eq!(run.state, pb::CleanupRunState::Succeeded as i32, "{run:?}");
    assert_eq!((run.files_scanned, run.files_removed, run.bytes_removed, run.errors), (2, 2, 250, 0));

    // Reservations released, parts and the simple upload's object gone, part rows deleted.
    assert_eq!(usage(&service, tenant, Some(owner)).await, (0, 500, 0));
    assert_eq!(usage(&service, tenant, None).await, (0, 500, 0));
    assert_eq!(service.object_keys().await, vec![live_part.to_string()]);
    let sessions = sqlx::query(
        "SELECT id, state, reserved_bytes, aborted_at IS NOT NULL AS aborted,
                (SELECT count(*) FROM file_mgr.upload_parts p WHERE p.session_id = s.id) AS parts
           FROM file_mgr.upload_sessions s",
    )
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    for row in sessions {
        let id: Uuid = row.get("id");
        let seen = (row.get::<String, _>("state"), row.get::<i64, _>("reserved_bytes"), row.get::<bool, _>("aborted"));
        let parts: i64 = row.get("parts");
        if id == live {
            assert_eq!((seen, parts), (("active".into(), 500, false), 1));
        } else {
            assert_eq!((seen, parts), (("expired".into(), 0, true), 0), "session {id}");
        }
    }
    let keys: HashSet<String> = items(&service, &run.id).await.into_iter().map(|item| item.storage_key).collect();
    assert_eq!(keys, [abandoned_part.to_string(), simple_key.to_string()].into());

    // Nothing left to do.
    assert_eq!(service.run_cleanup(ABANDONED_UPLOADS).await.files_scanned, 0);
}

#[tokio::test]
async fn orphan_objects_without_a_row_go() {
    let service = Service::start().await;
    let (tenant, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let file = ObjectKey::file(tenant, seed(&service, tenant, owner, "asset", 100).await);
    let orphan = ObjectKey::file(tenant, Uuid::new_v4());
    put(&service, &orphan, 50).await;
    let fresh_orphan = ObjectKey::file(tenant, Uuid::new_v4());
    put(&service, &fresh_orphan, 60).await;
    let stray_part = ObjectKey::upload_part(Uuid::new_v4(), 1).unwrap();
    put(&service, &stray_part, 70).await;
    let live = insert_session(&service, tenant, owner, 80, false, false).await;
    let live_part = put_part(&service, tenant, live, 80).await;
    for key in [&file, &orphan, &stray_part, &live_part] {
        make_old(&service, key);
    }
    let younger = pb::CleanupSchedule { id: ORPHAN_OBJECTS.into(), max_age_seconds: Some(600), ..Default::default() };
    assert_eq!(update(&service, younger, &["max_age_seconds"]).await.unwrap().max_age_seconds, Some(600));

    let before = service.footprint().await;
    let run = service.run_cleanup(ORPHAN_OBJECTS).await;
    assert_eq!(run.state, pb::CleanupRunState::Succeeded as i32, "{run:?}");
    assert_eq!((run.files_scanned, run.files_removed, run.bytes_removed), (4, 2, 120));
    let mut left = vec![file.to_string(), fresh_orphan.to_string(), live_part.to_string()];
    left.sort();
    assert_eq!(service.object_keys().await, left);
    let after = service.footprint().await;
    assert_eq!((after.quotas, &after.rows[..1]), (before.quotas, &before.rows[..1]), "rows and quotas untouched");
    let mut removed: Vec<(String, String, String)> = items(&service, &run.id)
        .await
        .into_iter()
        .map(|item| (item.storage_key, item.tenant_id, item.file_id))
        .collect();
    removed.sort();
    let mut expected = vec![
        (orphan.to_string(), tenant.to_string(), String::new()),
        (stray_part.to_string(), String::new(), String::new()),
    ];
    expected.sort();
    assert_eq!(removed, expected);
}

#[tokio::test]
async fn interrupted_deletions_are_finished() {
    let service = Service::start().await;
    let (tenant, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let stuck = seed(&service, tenant, owner, "asset", 100).await;
    let recent = seed(&service, tenant, owner, "asset", 200).await;
    let active = seed(&service, tenant, owner, "asset", 300).await;
    let stale = "UPDATE file_mgr.files SET state = 'deleting', updated_at = now() - interval '1 hour' WHERE id = $1";
    exec_untriggered(&service, stale, stuck).await;
    exec(&service, "UPDATE file_mgr.files SET state = 'deleting' WHERE id = $1", recent).await;

    let run = service.run_cleanup(DELETING_FILES).await;
    assert_eq!((run.files_scanned, run.files_removed, run.bytes_removed), (1, 1, 100));
    assert_eq!(file_ids(&service).await, [recent, active].into());
    assert!(!service.object_keys().await.contains(&ObjectKey::file(tenant, stuck).to_string()));
    assert_eq!(usage(&service, tenant, Some(owner)).await, (500, 0, 2));
    let events = deleted_events(service.events("flatrender.events.v1.FileDeleted").await);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].file_id.as_str(), events[0].reason),
        (&*stuck.to_string(), ev::FileDeletionReason::System as i32)
    );
}

#[tokio::test]
async fn running_now_returns_the_run_in_progress() {
    let service = Service::start().await;
    let mut cleanup = service.cleanup(&Principal::platform_admin());
    let id: Uuid = RENDER_CHUNKS.parse().unwrap();
    let off = pb::CleanupSchedule { id: RENDER_CHUNKS.into(), enabled: false, ..Default::default() };
    assert!(!update(&service, off, &["enabled"]).await.unwrap().enabled);

    // Another replica holds the lease and runs it.
    exec(&service, "UPDATE file_mgr.cleanup_schedules SET locked_by = 'replica-x', locked_until = now() + interval '1 hour' WHERE id = $1", id).await;
    let elsewhere: Uuid = sqlx::query_scalar(
        "INSERT INTO file_mgr.cleanup_runs (schedule_id, instance_id) VALUES ($1, 'replica-x') RETURNING id",
    )
    .bind(id)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    let request = pb::RunCleanupScheduleRequest { schedule_id: RENDER_CHUNKS.into() };
    let run = cleanup.run_cleanup_schedule(request.clone()).await.unwrap().into_inner().run.unwrap();
    assert_eq!((run.id.as_str(), run.instance_id.as_str()), (&*elsewhere.to_string(), "replica-x"));
    assert_eq!(run.state, pb::CleanupRunState::Running as i32);
    let got = cleanup.get_cleanup_schedule(pb::GetCleanupScheduleRequest { schedule_id: RENDER_CHUNKS.into() }).await;
    assert_eq!(got.unwrap().into_inner().schedule.unwrap().running_on, "replica-x");

    // Its lease lapses: a new run starts here (disabled or not), the old one is recorded as failed.
    exec(
        &service,
        "UPDATE file_mgr.cleanup_schedules SET locked_until = now() - interval '1 second' WHERE id = $1",
        id,
    )
    .await;
    let started = cleanup.run_cleanup_schedule(request).await.unwrap().into_inner().run.unwrap();
    assert_ne!(started.id, run.id);
    assert_eq!(started.instance_id, service.settings.cleanup.instance_id);
    assert_eq!(service.finished_run(&started.id).await.state, pb::CleanupRunState::Succeeded as i32);
    let old = service.finished_run(&run.id).await;
    assert_eq!(old.state, pb::CleanupRunState::Failed as i32);
    assert!(old.error_message.contains("abandoned"), "{old:?}");

    let missing = pb::RunCleanupScheduleRequest { schedule_id: Uuid::new_v4().to_string() };
    assert_eq!(code(cleanup.run_cleanup_schedule(missing).await), Code::NotFound);
    let malformed = pb::RunCleanupScheduleRequest { schedule_id: "x".into() };
    assert_eq!(code(cleanup.run_cleanup_schedule(malformed).await), Code::InvalidArgument);
}

#[tokio::test]
async fn two_replicas_never_run_one_schedule_at_once() {
    let service = Service::start_with(Backend::Local, |settings| {
        settings.cleanup.enabled = true;
        settings.cleanup.poll_interval = Duration::from_millis(10);
        settings.cleanup.lease = Duration::from_secs(3);
    })
    .await;
    let mut settings = service.settings.clone();
    settings.cleanup.instance_id = "replica-b".into();
    let second = State::new(service.db.service_pool(flatrender_file::ROLE), settings).unwrap();
    let shutdown = Shutdown::new();
    let replica_b = tokio::spawn(cleanup::run(second, shutdown.stop_signal()));
    let tenant = Uuid::new_v4();
    for _ in 0..20 {
        let id = seed(&service, tenant, Uuid::new_v4(), "render_chunk", 10).await;
        exec(&service, "UPDATE file_mgr.files SET created_at = now() - interval '2 days' WHERE id = $1", id).await;
    }

    // Keep every schedule due until both replicas have run plenty.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        sqlx::query("UPDATE file_mgr.cleanup_schedules SET next_run_at = now() WHERE next_run_at > now()")
            .execute(service.db.pool())
            .await
            .unwrap();
        let (runs, instances): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT instance_id) FROM file_mgr.cleanup_runs WHERE state <> 'running'",
        )
        .fetch_one(service.db.pool())
        .await
        .unwrap();
        if runs >= 60 && instances == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {runs} runs on {instances} replicas");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.stop();
    tokio::time::timeout(Duration::from_secs(5), replica_b).await.expect("the replica stops promptly").unwrap();

    let rows = sqlx::query(
        "SELECT schedule_id, state, started_at, finished_at, error_message FROM file_mgr.cleanup_runs
          ORDER BY schedule_id, started_at",
    )
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    let mut previous: Option<(Uuid, Option<OffsetDateTime>)> = None;
    for row in &rows {
        let (schedule, started, finished): (Uuid, OffsetDateTime, Option<OffsetDateTime>) =
            (row.get("schedule_id"), row.get("started_at"), row.get("finished_at"));
        if let Some((last_schedule, last_finished)) = previous
            && last_schedule == schedule
        {
            let last_finished = last_finished.expect("only a schedule's latest run may still be running");
            assert!(last_finished <= started, "runs of {schedule} overlap");
        }
        let message: Option<String> = row.get("error_message");
        if row.get::<String, _>("state") == "failed" {
            assert!(message.as_deref().is_some_and(|m| m.starts_with("stopped by shutdown")), "{message:?}");
        }
        previous = Some((schedule, finished));
    }
    assert_eq!(file_ids(&service).await.len(), 0, "the chunks were removed once each");
}

#[tokio::test]
async fn the_scheduler_runs_due_schedules_by_itself() {
    let service = Service::start_with(Backend::Local, |settings| {
        settings.cleanup.enabled = true;
        settings.cleanup.poll_interval = Duration::from_millis(20);
    })
    .await;
    let platform = Principal::platform_admin();
    let tenant = Uuid::new_v4();
    // Older than the tenant's hour, younger than the platform rule's day.
    let chunk = seed(&service, tenant, Uuid::new_v4(), "render_chunk", 10).await;
    exec(&service, "UPDATE file_mgr.files SET created_at = now() - interval '2 hours' WHERE id = $1", chunk).await;
    let own = pb::CleanupSchedule {
        enabled: true,
        ..schedule(Some(tenant), "chunks", pb::CleanupRule::RenderChunks, Some(3600))
    };
    let own = create(&service, &platform, own).await.unwrap();

    let finished_runs = |count: usize| {
        let service = &service;
        let id = own.id.clone();
        async move {
            let mut cleanup = service.cleanup(&Principal::platform_admin());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let request = pb::ListCleanupRunsRequest {
                    schedule_id: id.clone(),
                    state: pb::CleanupRunState::Succeeded as i32,
                    ..Default::default()
                };
                let runs = cleanup.list_cleanup_runs(request).await.unwrap().into_inner().runs;
                if runs.len() >= count {
                    return runs;
                }
                assert!(tokio::time::Instant::now() < deadline, "the scheduler did not run the schedule");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let runs = finished_runs(1).await;
    assert_eq!((runs[0].files_removed, runs[0].instance_id.as_str()), (1, &*service.settings.cleanup.instance_id));
    assert!(file_ids(&service).await.is_empty());

    // Due again (it was not for another hour): it runs again.
    let due = pb::CleanupSchedule { id: own.id.clone(), next_run_at: None, ..Default::default() };
    update(&service, due, &["next_run_at"]).await.unwrap();
    assert_eq!(finished_runs(2).await.len(), 2);
}
