//! `UsageService`: a tenant's usage per day and the gateway's request log, for its admins.

use flatrender_proto::flatrender::common::v1::{self as common, PageResponse};
use flatrender_proto::flatrender::identity::v1 as pb;
use time::{Date, Month, OffsetDateTime};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size};
use crate::error::{IdentityError, Result};
use crate::users::timestamp;
use crate::validate;

type Reply<T> = Result<Response<T>, Status>;

/// Longest usage query, in days.
const MAX_USAGE_DAYS: i64 = 366;
/// Longest request-log window.
const MAX_LOG_WINDOW: time::Duration = time::Duration::days(31);

fn reader<T>(request: &Request<T>, named_tenant: &str) -> Result<Uuid, Status> {
    let caller = super::admin(request)?;
    Ok(super::tenant_scope(&caller, named_tenant, super::Foreign::Forbidden)?)
}

fn date(field: &'static str, value: Option<&common::Date>) -> Result<Date> {
    let value = value.ok_or_else(|| IdentityError::invalid(field, "is required"))?;
    let month = u8::try_from(value.month).ok().and_then(|m| Month::try_from(m).ok());
    let day = u8::try_from(value.day).ok();
    match (month, day) {
        (Some(month), Some(day)) => Date::from_calendar_date(value.year, month, day)
            .map_err(|_| IdentityError::invalid(field, "is not a date of the calendar")),
        _ => Err(IdentityError::invalid(field, "is not a date of the calendar")),
    }
}

fn to_date(day: Date) -> common::Date {
    common::Date { year: day.year(), month: i32::from(u8::from(day.month())), day: i32::from(day.day()) }
}

fn time_of(field: &'static str, value: Option<&prost_types::Timestamp>) -> Result<OffsetDateTime> {
    let value = value.ok_or_else(|| IdentityError::invalid(field, "is required"))?;
    OffsetDateTime::from_unix_timestamp(value.seconds).map_err(|_| IdentityError::invalid(field, "is out of range"))
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for IdentityApi {
    async fn query_usage(&self, request: Request<pb::QueryUsageRequest>) -> Reply<pb::QueryUsageResponse> {
        let tenant = reader(&request, &request.get_ref().tenant_id)?;
        let request = request.into_inner();
        let start = date("start_date", request.start_date.as_ref())?;
        let end = date("end_date", request.end_date.as_ref())?;
        if end < start {
            return Err(IdentityError::invalid("end_date", "must not be before start_date").into());
        }
        if (end - start).whole_days() + 1 > MAX_USAGE_DAYS {
            return Err(IdentityError::invalid("end_date", "the range spans at most 366 days").into());
        }
        // Every day of the range, zero where nothing happened, so charts need no gap filling.
        let rows: Vec<(Date, i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT d::date, coalesce(u.renders, 0), coalesce(u.render_seconds, 0), coalesce(u.render_frames, 0),
                    coalesce(u.snapshots, 0), coalesce(u.storage_bytes, 0), coalesce(u.egress_bytes, 0),
                    coalesce(u.api_calls, 0)
             FROM generate_series($2::date, $3::date, interval '1 day') AS d
             LEFT JOIN identity.tenant_usage_daily u ON u.tenant_id = $1 AND u.day = d::date
             ORDER BY d",
        )
        .bind(tenant)
        .bind(start)
        .bind(end)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let days: Vec<pb::UsageDay> = rows
            .into_iter()
            .map(|(day, renders, seconds, frames, snapshots, storage, egress, calls)| pb::UsageDay {
                date: Some(to_date(day)),
                renders: count(renders),
                render_seconds: count(seconds),
                render_frames: count(frames),
                snapshots: count(snapshots),
                storage_bytes: count(storage),
                egress_bytes: count(egress),
                api_calls: count(calls),
            })
            .collect();
        let mut total = pb::UsageDay::default();
        for day in &days {
            total.renders += day.renders;
            total.render_seconds += day.render_seconds;
            total.render_frames += day.render_frames;
            total.snapshots += day.snapshots;
            total.egress_bytes += day.egress_bytes;
            total.api_calls += day.api_calls;
        }
        // Storage is a gauge: the total is the last day's value.
        total.storage_bytes = days.last().map_or(0, |d| d.storage_bytes);
        Ok(Response::new(pb::QueryUsageResponse { days, total: Some(total) }))
    }

    async fn list_request_logs(
        &self,
        request: Request<pb::ListRequestLogsRequest>,
    ) -> Reply<pb::ListRequestLogsResponse> {
        let tenant = reader(&request, &request.get_ref().tenant_id)?;
        Ok(Response::new(self.request_logs(tenant, request.into_inner()).await?))
    }

    async fn record_api_requests(
        &self,
        request: Request<pb::RecordApiRequestsRequest>,
    ) -> Reply<pb::RecordApiRequestsResponse> {
        let caller = flatrender_kit::auth::caller(&request)?;
        if caller.service != Some(flatrender_kit::auth::ServiceName::Gateway) {
            return Err(Status::permission_denied("only the gateway records API requests"));
        }
        let recorded = crate::request_logs::record(&self.identity.pool, &request.get_ref().records).await?;
        Ok(Response::new(pb::RecordApiRequestsResponse { recorded: u32::try_from(recorded).unwrap_or(u32::MAX) }))
    }
}

impl IdentityApi {
    async fn request_logs(
        &self,
        tenant: Uuid,
        request: pb::ListRequestLogsRequest,
    ) -> Result<pb::ListRequestLogsResponse> {
        let limit = page_size(request.page.as_ref())?;
        let range = request.time_range.unwrap_or_default();
        let since = time_of("time_range.start_time", range.start_time.as_ref())?;
        let until = time_of("time_range.end_time", range.end_time.as_ref())?;
        if until <= since || until - since > MAX_LOG_WINDOW {
            return Err(IdentityError::invalid("time_range", "must be a non-empty range of at most 31 days"));
        }
        let key = validate::optional_uuid("api_key_id", &request.api_key_id)?;
        let user = validate::optional_uuid("user_id", &request.user_id)?;
        if request.method.len() > 300 {
            return Err(IdentityError::invalid("method", "must be at most 300 characters"));
        }
        let (exact, prefix) = match request.method.as_str() {
            "" => (None, None),
            m if m.ends_with('/') => (None, Some(m.to_owned())),
            m => (Some(m.to_owned()), None),
        };
        let status = match request.grpc_status {
            Some(code @ 0..=16) => Some(i16::try_from(code).unwrap_or(0)),
            Some(_) => return Err(IdentityError::invalid("grpc_status", "must be 0 to 16")),
            None => None,
        };
        let print = flatrender_kit::page::fingerprint(&[
            &"request_logs",
            &tenant,
            &since,
            &until,
            &key,
            &user,
            &exact,
            &prefix,
            &status,
            &request.errors_only,
        ]);
        let after: Option<(i64, i64)> =
            flatrender_kit::page::decode(&print, request.page.as_ref().map_or("", |p| p.page_token.as_str()))
                .map_err(|e| IdentityError::invalid("page.page_token", e.to_string()))?;
        let (after_at, after_id) = after.map(|(at, id)| (super::auth::from_micros(at), id)).unzip();
        let mut rows: Vec<LogRow> = sqlx::query_as(
            "SELECT id, requested_at, tenant_id, api_key_id, user_id, method, grpc_status, duration_us, request_bytes,
                    response_bytes, host(client_ip) AS client_ip, user_agent, trace_id
             FROM identity.tenant_api_request_logs
             WHERE tenant_id = $1 AND requested_at >= $2 AND requested_at < $3
               AND ($4::uuid IS NULL OR api_key_id = $4) AND ($5::uuid IS NULL OR user_id = $5)
               AND ($6::text IS NULL OR method = $6) AND ($7::text IS NULL OR starts_with(method, $7))
               AND ($8::int2 IS NULL OR grpc_status = $8) AND (NOT $9 OR grpc_status <> 0)
               AND ($10::timestamptz IS NULL OR (requested_at, id) < ($10, $11))
             ORDER BY requested_at DESC, id DESC LIMIT $12",
        )
        .bind(tenant)
        .bind(since)
        .bind(until)
        .bind(key)
        .bind(user)
        .bind(exact)
        .bind(prefix)
        .bind(status)
        .bind(request.errors_only)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await?;
        let next = flatrender_kit::page::next_token(&mut rows, limit, |last| {
            flatrender_kit::page::encode(&print, &(super::auth::micros(last.requested_at), last.id))
        });
        Ok(pb::ListRequestLogsResponse {
            logs: rows.iter().map(LogRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        })
    }
}

struct LogRow {
    id: i64,
    requested_at: OffsetDateTime,
    tenant_id: Uuid,
    api_key_id: Option<Uuid>,
    user_id: Option<Uuid>,
    method: String,
    grpc_status: i16,
    duration_us: i64,
    request_bytes: i64,
    response_bytes: i64,
    client_ip: Option<String>,
    user_agent: Option<String>,
    trace_id: Option<String>,
}

from_row!(LogRow {
    id,
    requested_at,
    tenant_id,
    api_key_id,
    user_id,
    method,
    grpc_status,
    duration_us,
    request_bytes,
    response_bytes,
    client_ip,
    user_agent,
    trace_id
});

impl LogRow {
    fn to_proto(&self) -> pb::RequestLog {
        pb::RequestLog {
            id: count(self.id),
            requested_at: Some(timestamp(self.requested_at)),
            tenant_id: self.tenant_id.to_string(),
            api_key_id: self.api_key_id.map(|k| k.to_string()).unwrap_or_default(),
            user_id: self.user_id.map(|u| u.to_string()).unwrap_or_default(),
            method: self.method.clone(),
            grpc_status: u32::try_from(self.grpc_status).unwrap_or(2),
            duration_us: count(self.duration_us),
            request_bytes: count(self.request_bytes),
            response_bytes: count(self.response_bytes),
            client_ip: self.client_ip.clone().unwrap_or_default(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
            trace_id: self.trace_id.clone().unwrap_or_default(),
        }
    }
}
