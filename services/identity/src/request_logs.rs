//! The gateway's request log and the tenants' daily API-call counts: each finished call of a
//! tenant's user or API key becomes a row of `identity.tenant_api_request_logs` and one count in
//! `tenant_usage_daily.api_calls`. The gateway sends them in batches, in this process or over
//! `UsageService.RecordApiRequests` from its own.

use std::net::IpAddr;

use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{IdentityError, Result};

/// Records taken in one batch at most.
pub const MAX_BATCH: usize = 512;
/// Longest method path and user agent kept (the columns' limits).
const MAX_METHOD: usize = 256;
const MAX_USER_AGENT: usize = 1024;

/// One record, checked.
struct Row {
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

fn optional_uuid(field: &'static str, value: &str) -> Result<Option<Uuid>> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| IdentityError::invalid(field, "must be a UUID"))
}

impl Row {
    fn of(record: &pb::ApiRequestRecord) -> Result<Self> {
        let at = record.requested_at.as_ref().ok_or_else(|| IdentityError::invalid("requested_at", "is required"))?;
        let requested_at = OffsetDateTime::from_unix_timestamp(at.seconds)
            .ok()
            .and_then(|t| t.replace_nanosecond(u32::try_from(at.nanos).unwrap_or(0)).ok())
            .ok_or_else(|| IdentityError::invalid("requested_at", "is not a valid time"))?;
        // The log's partitions cover the recent past and near future; a call is logged as it ends.
        let now = OffsetDateTime::now_utc();
        if requested_at < now - time::Duration::days(1) || requested_at > now + time::Duration::minutes(5) {
            return Err(IdentityError::invalid("requested_at", "must be within the last day"));
        }
        let tenant_id = optional_uuid("tenant_id", &record.tenant_id)?
            .ok_or_else(|| IdentityError::invalid("tenant_id", "is required"))?;
        let client_ip = match record.client_ip.as_str() {
            "" => None,
            ip => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| IdentityError::invalid("client_ip", "must be an IP address"))?
                    .to_string(),
            ),
        };
        let text = |value: &str, max: usize| (!value.is_empty()).then(|| value.chars().take(max).collect::<String>());
        Ok(Self {
            requested_at,
            tenant_id,
            api_key_id: optional_uuid("api_key_id", &record.api_key_id)?,
            user_id: optional_uuid("user_id", &record.user_id)?,
            method: record.method.chars().take(MAX_METHOD).collect(),
            grpc_status: i16::try_from(record.grpc_status)
                .ok()
                .filter(|code| (0..=16).contains(code))
                .ok_or_else(|| IdentityError::invalid("grpc_status", "must be a gRPC status code (0 to 16)"))?,
            duration_us: record.duration_us.max(0),
            request_bytes: record.request_bytes.max(0),
            response_bytes: record.response_bytes.max(0),
            client_ip,
            user_agent: text(&record.user_agent, MAX_USER_AGENT),
            // A W3C trace id or nothing (the column takes only those).
            trace_id: Some(record.trace_id.clone())
                .filter(|t| t.len() == 32 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))),
        })
    }
}

/// Writes `records` and their usage counts in one transaction; a malformed record refuses the
/// batch (INVALID_ARGUMENT), writing nothing.
pub async fn record(pool: &PgPool, records: &[pb::ApiRequestRecord]) -> Result<usize> {
    if records.len() > MAX_BATCH {
        return Err(IdentityError::invalid("records", format!("at most {MAX_BATCH} per batch")));
    }
    let rows = records.iter().map(Row::of).collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO identity.tenant_api_request_logs
             (requested_at, tenant_id, api_key_id, user_id, method, grpc_status, duration_us, request_bytes,
              response_bytes, client_ip, user_agent, trace_id)
         SELECT u.at, u.tenant, u.key, u.usr, u.method, u.status, u.duration, u.req, u.resp, u.ip::inet, u.agent, u.trace
         FROM unnest($1::timestamptz[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::int2[], $7::int8[],
                     $8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[])
              AS u(at, tenant, key, usr, method, status, duration, req, resp, ip, agent, trace)",
    )
    .bind(rows.iter().map(|r| r.requested_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.api_key_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.method.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.grpc_status).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.duration_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.request_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.response_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.client_ip.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_agent.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.trace_id.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // One count per tenant and UTC day; tenants that no longer exist are skipped.
    let mut counts: std::collections::BTreeMap<(Uuid, time::Date), i64> = std::collections::BTreeMap::new();
    for row in &rows {
        *counts.entry((row.tenant_id, row.requested_at.to_offset(time::UtcOffset::UTC).date())).or_default() += 1;
    }
    sqlx::query(
        "INSERT INTO identity.tenant_usage_daily AS d (tenant_id, day, api_calls)
         SELECT u.tenant, u.day, u.calls FROM unnest($1::uuid[], $2::date[], $3::int8[]) AS u(tenant, day, calls)
         JOIN identity.tenants t ON t.id = u.tenant
         ON CONFLICT (tenant_id, day) DO UPDATE SET api_calls = d.api_calls + EXCLUDED.api_calls",
    )
    .bind(counts.keys().map(|(tenant, _)| *tenant).collect::<Vec<_>>())
    .bind(counts.keys().map(|(_, day)| *day).collect::<Vec<_>>())
    .bind(counts.values().copied().collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}
