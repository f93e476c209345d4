//! Usage and request logs as tenant admins read them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::common::v1::{Date, TimeRange};
use flatrender_proto::flatrender::identity::v1 as pb;
use support::Service;
use tonic::Code;

fn day(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

#[tokio::test]
async fn usage_days_are_zero_filled_and_logs_filtered_per_tenant() {
    let service = Service::start().await;
    let (a, b) = (service.tenant().await, service.tenant().await);
    let admin = service.account(a, "tenant_admin").await;
    let other = service.account(b, "tenant_admin").await;
    let user = service.account(a, "user").await;
    sqlx::query(
        "INSERT INTO identity.tenant_usage_daily (tenant_id, day, renders, storage_bytes, api_calls)
         VALUES ($1, '2026-11-02', 3, 100, 40), ($1, '2026-11-04', 1, 250, 2), ($2, '2026-11-03', 9, 9, 9)",
    )
    .bind(a)
    .bind(b)
    .execute(service.db.pool())
    .await
    .unwrap();
    let mut usage = pb::usage_service_client::UsageServiceClient::new(service.channel_as(&admin.tokens.access_token));
    let answer = usage
        .query_usage(pb::QueryUsageRequest {
            tenant_id: String::new(),
            start_date: day(2026, 11, 1),
            end_date: day(2026, 11, 4),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.days.iter().map(|d| d.renders).collect::<Vec<_>>(),
        [0, 3, 0, 1],
        "tenant B's day is not counted"
    );
    let total = answer.total.unwrap();
    assert_eq!((total.renders, total.api_calls, total.storage_bytes), (4, 42, 250), "storage is the last day's");
    for (start, end) in
        [(day(2026, 11, 4), day(2026, 11, 1)), (day(2024, 1, 1), day(2026, 1, 1)), (day(2026, 2, 30), day(2026, 3, 1))]
    {
        let refused = usage
            .query_usage(pb::QueryUsageRequest { tenant_id: String::new(), start_date: start, end_date: end })
            .await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    }
    let foreign = usage
        .query_usage(pb::QueryUsageRequest {
            tenant_id: b.to_string(),
            start_date: day(2026, 11, 1),
            end_date: day(2026, 11, 4),
        })
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::PermissionDenied);
    let mut as_user = pb::usage_service_client::UsageServiceClient::new(service.channel_as(&user.tokens.access_token));
    let refused = as_user
        .query_usage(pb::QueryUsageRequest {
            tenant_id: String::new(),
            start_date: day(2026, 11, 1),
            end_date: day(2026, 11, 4),
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    // Request logs: the tenant's own, newest first, filtered.
    sqlx::query(
        "INSERT INTO identity.tenant_api_request_logs (requested_at, tenant_id, user_id, method, grpc_status, duration_us)
         VALUES (now() - interval '3 minutes', $1, $3, '/flatrender.render.v1.RenderService/GetRender', 0, 10),
                (now() - interval '2 minutes', $1, $3, '/flatrender.render.v1.RenderService/SubmitRender', 3, 20),
                (now() - interval '1 minute', $1, $3, '/flatrender.file.v1.FileService/GetFile', 0, 30),
                (now() - interval '1 minute', $2, NULL, '/flatrender.file.v1.FileService/GetFile', 0, 40)",
    )
    .bind(a)
    .bind(b)
    .bind(user.user_id)
    .execute(service.db.pool())
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let window = Some(TimeRange {
        start_time: Some(prost_types::Timestamp { seconds: now - 3600, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: now + 60, nanos: 0 }),
    });
    let all = usage
        .list_request_logs(pb::ListRequestLogsRequest { time_range: window, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(all.iter().map(|l| l.duration_us).collect::<Vec<_>>(), [30, 20, 10]);
    let render_errors = usage
        .list_request_logs(pb::ListRequestLogsRequest {
            time_range: window,
            method: "/flatrender.render.v1.RenderService/".into(),
            errors_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(render_errors.iter().map(|l| l.grpc_status).collect::<Vec<_>>(), [3]);
    let unbounded = usage.list_request_logs(pb::ListRequestLogsRequest::default()).await;
    assert_eq!(unbounded.unwrap_err().code(), Code::InvalidArgument);
    let mut theirs = pb::usage_service_client::UsageServiceClient::new(service.channel_as(&other.tokens.access_token));
    let seen = theirs
        .list_request_logs(pb::ListRequestLogsRequest { time_range: window, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .logs;
    assert_eq!(seen.iter().map(|l| l.duration_us).collect::<Vec<_>>(), [40]);
    service.stop().await;
}
