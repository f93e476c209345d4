//! Plans over the real services: render's mirror of identity's plan limits (from the outbox),
//! and what a caller's effective plan does to their jobs (priority, caps, allowances).

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::identity::v1 as identity_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use support::*;
use tonic::Code;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0xa);

fn hd(fps: f64) -> Option<pb::OutputSettings> {
    Some(pb::OutputSettings {
        resolution: Some(common_pb::Resolution { width: 1920, height: 1080 }),
        fps,
        ..Default::default()
    })
}

/// The priority of every chunk of job `id`.
async fn chunk_priorities(stack: &Orchestrator, id: &str) -> Vec<i16> {
    sqlx::query_scalar("SELECT DISTINCT priority FROM render.frame_jobs WHERE job_id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_all(stack.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_users_plan_sets_priority_caps_and_watermark() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    seed_plan(stack.pool(), TENANT, Some(alice.user), &Plan::pro()).await;
    let pro = pb::SubmitRenderRequest {
        output: hd(60.0),
        has_voiceover: true,
        audio_tracks: vec![track(pb::AudioTrackKind::Voiceover, &files.voice.id)],
        ..request(&files.template, "pro")
    };
    let job = stack.renders(&alice).submit_render(pro).await.unwrap().into_inner().render.unwrap();
    assert_eq!((job.priority, job.plan_code.as_str(), job.watermark, job.has_voiceover), (50, "pro", false, true));
    let output = job.output.unwrap();
    assert_eq!((output.resolution.unwrap().width, output.fps), (1920, 60.0));
    assert_eq!(chunk_priorities(&stack, &job.id).await, vec![50]);

    // Above even the pro plan: the cap is named.
    let too_big = pb::SubmitRenderRequest {
        output: Some(pb::OutputSettings {
            resolution: Some(common_pb::Resolution { width: 3840, height: 2160 }),
            ..Default::default()
        }),
        ..request(&files.template, "4k")
    };
    let (code, message) = failure(stack.renders(&alice).submit_render(too_big).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("pro plan's limit of 1920x1080"), "{message}");
}

#[tokio::test]
async fn the_tenants_plan_applies_unless_the_user_has_one() {
    let stack = Orchestrator::start_with_files().await;
    let mut tenant_plan = Plan::roomy();
    tenant_plan.priority = 70;
    seed_plan(stack.pool(), TENANT, None, &tenant_plan).await;
    let alice = Principal::user(TENANT);
    let bob = Principal::user(TENANT);
    seed_plan(stack.pool(), TENANT, Some(bob.user), &Plan::pro()).await;
    let alice_files = stack.assets(&alice).await;
    let bob_files = stack.assets(&bob).await;
    let alices = stack.renders(&alice).submit_render(request(&alice_files.template, "a")).await.unwrap();
    let bobs = stack.renders(&bob).submit_render(request(&bob_files.template, "b")).await.unwrap();
    assert_eq!(alices.into_inner().render.unwrap().priority, 70);
    assert_eq!(bobs.into_inner().render.unwrap().priority, 50);
    // Another tenant has no plan row: the free defaults.
    let stranger = Principal::user(Uuid::from_u128(0xb));
    let stranger_files = stack.assets(&stranger).await;
    let free = stack.renders(&stranger).submit_render(request(&stranger_files.template, "s")).await.unwrap();
    let free = free.into_inner().render.unwrap();
    assert_eq!((free.priority, free.plan_code.as_str(), free.watermark), (0, "free", true));
}

fn limits(priority: u32, concurrent: u32) -> identity_pb::PlanLimits {
    identity_pb::PlanLimits {
        render_priority: priority,
        max_resolution: Some(common_pb::Resolution { width: 1920, height: 1080 }),
        max_fps: 60,
        max_video_duration_seconds: 600,
        storage_quota_bytes: 1 << 30,
        watermark: false,
        export_retention_days: 30,
        monthly_render_seconds: None,
        max_concurrent_renders: concurrent,
        max_snapshots_per_hour: Some(100),
        voiceover_enabled: true,
        api_access: false,
    }
}

async fn publish<M: prost::Message + prost::Name>(stack: &Orchestrator, event: &M) {
    let mut tx = stack.db.pool().begin().await.unwrap();
    let meta =
        EventMeta { source: "identity", aggregate_type: "subscription", aggregate_id: "s".into(), tenant_id: None };
    outbox::publish(&mut tx, meta, event).await.unwrap();
    tx.commit().await.unwrap();
}

async fn plan_row(stack: &Orchestrator, user: Option<Uuid>) -> Option<(String, i16, i32)> {
    sqlx::query_as(
        "SELECT plan_code, render_priority, max_concurrent_renders FROM render.plan_limits
          WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2",
    )
    .bind(TENANT)
    .bind(user)
    .fetch_optional(stack.db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn identitys_events_keep_the_limits_current() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    // A malformed event first: skipped, and it does not hold back the next ones.
    publish(
        &stack,
        &ev::SubscriptionChanged {
            tenant_id: "not-a-tenant".into(),
            plan_code: "pro".into(),
            limits: Some(limits(50, 3)),
            ..Default::default()
        },
    )
    .await;
    let started = ev::SubscriptionChanged {
        tenant_id: TENANT.to_string(),
        user_id: alice.user.to_string(),
        kind: ev::SubscriptionChangeKind::Started as i32,
        plan_code: "pro".into(),
        limits: Some(limits(50, 3)),
        ..Default::default()
    };
    publish(&stack, &started).await;
    eventually("the user's plan row", || async { plan_row(&stack, Some(alice.user)).await.is_some() }).await;
    assert_eq!(plan_row(&stack, Some(alice.user)).await, Some(("pro".into(), 50, 3)));
    let job = stack.renders(&alice).submit_render(request(&files.template, "after-event")).await.unwrap();
    let job = job.into_inner().render.unwrap();
    assert_eq!((job.priority, job.plan_code.as_str()), (50, "pro"));
    assert_eq!(chunk_priorities(&stack, &job.id).await, vec![50]);

    // The tenant's default plan changes; then the plan itself is updated for every subscriber.
    let tenant_changed = ev::SubscriptionChanged {
        tenant_id: TENANT.to_string(),
        kind: ev::SubscriptionChangeKind::TenantPlanChanged as i32,
        plan_code: "business".into(),
        limits: Some(limits(100, 10)),
        ..Default::default()
    };
    publish(&stack, &tenant_changed).await;
    // Delivered twice (at least once): the same outcome.
    publish(&stack, &tenant_changed).await;
    let updated =
        ev::PlanUpdated { plan_code: "pro".into(), limits: Some(limits(60, 4)), active: true, ..Default::default() };
    publish(&stack, &updated).await;
    eventually("the plan update", || async { plan_row(&stack, Some(alice.user)).await == Some(("pro".into(), 60, 4)) })
        .await;
    assert_eq!(plan_row(&stack, None).await, Some(("business".into(), 100, 10)));
    assert_eq!(stack.count("SELECT count(*) FROM render.plan_limits").await, 2);
    let job = stack.renders(&alice).submit_render(request(&files.template, "after-update")).await.unwrap();
    assert_eq!(job.into_inner().render.unwrap().priority, 60);
}

#[tokio::test]
async fn concurrent_renders_are_capped_until_one_ends() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    // The free plan: one render at a time.
    let first = stack.renders(&alice).submit_render(request(&files.template, "one")).await.unwrap().into_inner();
    let (code, message) = failure(stack.renders(&alice).submit_render(request(&files.template, "two")).await);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.starts_with("concurrent renders: ") && message.contains("free plan"), "{message}");
    assert_eq!(stack.count("SELECT count(*) FROM render.render_jobs").await, 1);
    // Someone else's renders do not count against Alice's.
    let bob = Principal::user(TENANT);
    let bob_files = stack.assets(&bob).await;
    stack.renders(&bob).submit_render(request(&bob_files.template, "bob")).await.unwrap();
    let cancel = pb::CancelRenderRequest { render_id: first.render.unwrap().id, reason: String::new() };
    stack.renders(&alice).cancel_render(cancel).await.unwrap();
    stack.renders(&alice).submit_render(request(&files.template, "two")).await.unwrap();
}

#[tokio::test]
async fn the_monthly_render_time_runs_out_until_next_month() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let first = stack.renders(&alice).submit_render(request(&files.template, "one")).await.unwrap().into_inner();
    // The job ran for the free plan's 600 s and finished.
    stack
        .execute(&format!(
            "UPDATE render.render_jobs SET state = 'completed', finished_at = now(), render_ms = 600000 WHERE id = '{}'",
            first.render.unwrap().id
        ))
        .await;
    let (code, message) = failure(stack.renders(&alice).submit_render(request(&files.template, "two")).await);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.starts_with("monthly render time: "), "{message}");
    let now = time::OffsetDateTime::now_utc();
    let (year, month) = if now.month() == time::Month::December {
        (now.year() + 1, 1)
    } else {
        (now.year(), u8::from(now.month()) + 1)
    };
    let resets = format!("resets at {year}-{month:02}-01T00:00:00Z");
    assert!(message.contains(&resets), "{message} should say {resets}");
}
