//! `WebhookService`: tenant admins manage their tenant's webhooks, see deliveries, redeliver and
//! send test events. Delivery itself is `crate::webhooks`.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::auth::{Caller, Role};
use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, admin, page_size};
use crate::error::{IdentityError, Result};
use crate::users::timestamp;
use crate::validate;
use crate::webhooks::sender;

type Reply<T> = Result<Response<T>, Status>;

/// Webhooks a tenant may hold.
const MAX_WEBHOOKS: i64 = 20;

struct WebhookRow {
    id: Uuid,
    tenant_id: Uuid,
    url: String,
    description: Option<String>,
    secret: Vec<u8>,
    event_types: Vec<String>,
    enabled: bool,
    failure_count: i32,
    last_success_at: Option<OffsetDateTime>,
    last_failure_at: Option<OffsetDateTime>,
    disabled_at: Option<OffsetDateTime>,
    disabled_reason: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

from_row!(WebhookRow {
    id,
    tenant_id,
    url,
    description,
    secret,
    event_types,
    enabled,
    failure_count,
    last_success_at,
    last_failure_at,
    disabled_at,
    disabled_reason,
    created_at,
    updated_at
});

const WEBHOOK_COLUMNS: &str = "id, tenant_id, url, description, secret, event_types, enabled, failure_count,
    last_success_at, last_failure_at, disabled_at, disabled_reason, created_at, updated_at";

impl WebhookRow {
    fn to_proto(&self) -> pb::Webhook {
        pb::Webhook {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            url: self.url.clone(),
            description: self.description.clone().unwrap_or_default(),
            event_types: self.event_types.clone(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone().unwrap_or_default(),
            failure_count: u32::try_from(self.failure_count).unwrap_or(0),
            // Only the prefix of the secret ever leaves again.
            secret_prefix: String::from_utf8_lossy(&self.secret[..self.secret.len().min(10)]).into_owned(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            last_success_at: self.last_success_at.map(timestamp),
            last_failure_at: self.last_failure_at.map(timestamp),
            disabled_at: self.disabled_at.map(timestamp),
        }
    }
}

struct DeliveryRow {
    id: Uuid,
    webhook_id: Uuid,
    outbox_event_id: i64,
    event_type: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    last_duration_ms: Option<i32>,
    created_at: OffsetDateTime,
    last_attempt_at: Option<OffsetDateTime>,
    next_attempt_at: OffsetDateTime,
    delivered_at: Option<OffsetDateTime>,
}

from_row!(DeliveryRow {
    id,
    webhook_id,
    outbox_event_id,
    event_type,
    status,
    attempts,
    max_attempts,
    last_status_code,
    last_error,
    last_duration_ms,
    created_at,
    last_attempt_at,
    next_attempt_at,
    delivered_at
});

const DELIVERY_COLUMNS: &str = "id, webhook_id, outbox_event_id, event_type, status, attempts, max_attempts,
    last_status_code, last_error, last_duration_ms, created_at, last_attempt_at, next_attempt_at, delivered_at";

fn delivery_status(status: &str) -> pb::WebhookDeliveryStatus {
    match status {
        "pending" => pb::WebhookDeliveryStatus::Pending,
        "succeeded" => pb::WebhookDeliveryStatus::Succeeded,
        "failed" => pb::WebhookDeliveryStatus::Failed,
        "canceled" => pb::WebhookDeliveryStatus::Canceled,
        _ => pb::WebhookDeliveryStatus::Unspecified,
    }
}

impl DeliveryRow {
    fn to_proto(&self) -> pb::WebhookDelivery {
        let small = |n: i32| u32::try_from(n).unwrap_or(0);
        pb::WebhookDelivery {
            id: self.id.to_string(),
            webhook_id: self.webhook_id.to_string(),
            event_id: u64::try_from(self.outbox_event_id).unwrap_or(0),
            event_type: self.event_type.clone(),
            status: delivery_status(&self.status) as i32,
            attempts: small(self.attempts),
            max_attempts: small(self.max_attempts),
            last_status_code: self.last_status_code.map_or(0, small),
            last_error: self.last_error.clone().unwrap_or_default(),
            last_duration_ms: self.last_duration_ms.map_or(0, small),
            created_at: Some(timestamp(self.created_at)),
            last_attempt_at: self.last_attempt_at.map(timestamp),
            next_attempt_at: Some(timestamp(self.next_attempt_at)),
            delivered_at: self.delivered_at.map(timestamp),
        }
    }
}

async fn visible(conn: &mut PgConnection, caller: &Caller, id: &str, lock: bool) -> Result<WebhookRow> {
    let id = validate::uuid("webhook_id", id)?;
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query_as::<_, WebhookRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {WEBHOOK_COLUMNS} FROM identity.tenant_webhooks WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) if row.tenant_id == caller.tenant_id || caller.role == Role::PlatformAdmin => Ok(row),
        _ => Err(IdentityError::NotFound("webhook")),
    }
}

/// A new signing secret: "whsec_" and 256 random bits.
fn new_secret() -> String {
    format!("whsec_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()))
}

impl IdentityApi {
    /// An endpoint URL: https (http too, and private addresses, only when insecure URLs are
    /// allowed, as in development).
    fn endpoint(&self, field: &'static str, value: &str) -> Result<String> {
        let insecure = self.identity.settings.webhooks.allow_insecure;
        let url = reqwest::Url::parse(value).map_err(|_| IdentityError::invalid(field, "must be an absolute URL"))?;
        if value.len() > 2048 || !url.username().is_empty() || url.password().is_some() {
            return Err(IdentityError::invalid(field, "must be at most 2,048 characters, without credentials"));
        }
        match url.scheme() {
            "https" => {}
            "http" if insecure => {}
            _ => return Err(IdentityError::invalid(field, "must be an https URL")),
        }
        let host = url.host_str().ok_or_else(|| IdentityError::invalid(field, "must name a host"))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        let private = match literal {
            Some(ip) => !crate::webhooks::addresses::is_public(ip),
            None => {
                let name = host.trim_end_matches('.');
                name == "localhost"
                    || name.ends_with(".localhost")
                    || name.ends_with(".internal")
                    || !name.contains('.')
            }
        };
        if private && !insecure {
            return Err(IdentityError::invalid(field, "must not point at a private, loopback or link-local address"));
        }
        // Normalising may lengthen it (percent-encoding, punycode): the limit is on what is stored.
        if url.as_str().len() > 2048 {
            return Err(IdentityError::invalid(field, "must be at most 2,048 characters"));
        }
        Ok(url.to_string())
    }

    fn event_types(&self, field: &'static str, types: &[String]) -> Result<Vec<String>> {
        if types.len() > 256 {
            return Err(IdentityError::invalid(field, "at most 256 types"));
        }
        let mut out: Vec<String> = Vec::with_capacity(types.len());
        for t in types {
            if !self.identity.webhook_envelopes.deliverable(t) {
                return Err(IdentityError::invalid(field, format!("{t} is not an event type webhooks receive")));
            }
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for IdentityApi {
    async fn create_webhook(&self, request: Request<pb::CreateWebhookRequest>) -> Reply<pb::CreateWebhookResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let tenant = super::tenant_scope(&caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let url = self.endpoint("url", &request.url)?;
        let description = match request.description.trim() {
            "" => None,
            d if d.chars().count() > 500 => {
                return Err(IdentityError::invalid("description", "must be at most 500 characters").into());
            }
            d => Some(d.to_owned()),
        };
        let types = self.event_types("event_types", &request.event_types)?;
        let key = validate::idempotency_key(&request.idempotency_key).map_err(Status::from)?;
        let digest: Vec<u8> = {
            use sha2::Digest as _;
            // Field by field, unit-separated; the event types in order, as a set is meant.
            let mut sorted = types.clone();
            sorted.sort();
            let fields = [url.as_str(), description.as_deref().unwrap_or(""), &sorted.join("\u{1e}")];
            sha2::Sha256::digest(fields.join("\u{1f}")).to_vec()
        };
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.tenant_webhooks'), hashtext($1))")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        // A retry gets the webhook it created, secret included: the secret is kept (it signs
        // every delivery), unlike an API key's.
        if let Some(key) = &key {
            let existing: Option<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT id, request_sha256 FROM identity.tenant_webhooks WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
            if let Some((id, stored)) = existing {
                if stored.as_deref() != Some(digest.as_slice()) {
                    return Err(IdentityError::AlreadyExists(
                        "this idempotency key was used for another webhook".into(),
                    )
                    .into());
                }
                let row = sqlx::query_as::<_, WebhookRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM identity.tenant_webhooks WHERE id = $1"
                )))
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(IdentityError::from)?;
                let secret = String::from_utf8(row.secret.clone())
                    .map_err(|_| IdentityError::Corrupt("a webhook secret is not text".into()))?;
                return Ok(Response::new(pb::CreateWebhookResponse { webhook: Some(row.to_proto()), secret }));
            }
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.tenant_webhooks WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        if count >= MAX_WEBHOOKS {
            return Err(IdentityError::Exhausted(format!("a tenant holds at most {MAX_WEBHOOKS} webhooks")).into());
        }
        let secret = new_secret();
        let row = sqlx::query_as::<_, WebhookRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO identity.tenant_webhooks (tenant_id, url, description, secret, event_types,
                                                   idempotency_key, request_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {WEBHOOK_COLUMNS}"
        )))
        .bind(tenant)
        .bind(&url)
        .bind(&description)
        .bind(secret.as_bytes())
        .bind(&types)
        .bind(&key)
        .bind(&digest)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if matches!(&e, sqlx::Error::Database(db) if db.constraint() == Some("tenant_webhooks_pkey")) {
                IdentityError::Corrupt("duplicate webhook id".into())
            } else {
                IdentityError::from(e)
            }
        })?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::CreateWebhookResponse { webhook: Some(row.to_proto()), secret }))
    }

    async fn get_webhook(&self, request: Request<pb::GetWebhookRequest>) -> Reply<pb::GetWebhookResponse> {
        let caller = admin(&request)?;
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let row = visible(&mut conn, &caller, &request.get_ref().webhook_id, false).await?;
        Ok(Response::new(pb::GetWebhookResponse { webhook: Some(row.to_proto()) }))
    }

    async fn list_webhooks(&self, request: Request<pb::ListWebhooksRequest>) -> Reply<pb::ListWebhooksResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let tenant = super::tenant_scope(&caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let limit = page_size(request.page.as_ref())?;
        let paging = super::paging::NewestFirst::new(&[&"webhooks", &tenant]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let mut rows = sqlx::query_as::<_, WebhookRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM identity.tenant_webhooks
             WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4"
        )))
        .bind(tenant)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: rows.iter().map(WebhookRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn update_webhook(&self, request: Request<pb::UpdateWebhookRequest>) -> Reply<pb::UpdateWebhookResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let given = request.webhook.unwrap_or_default();
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(IdentityError::invalid("update_mask", "name at least one field to change").into());
        }
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = visible(&mut tx, &caller, &given.id, true).await?;
        for path in &paths {
            let statement = |set: &str| format!("UPDATE identity.tenant_webhooks SET {set} WHERE id = $1");
            let query = match path.as_str() {
                "url" => sqlx::query(sqlx::AssertSqlSafe(statement("url = $2"))).bind(row.id).bind(self.endpoint("webhook.url", &given.url)?),
                "description" => {
                    let description = given.description.trim();
                    if description.chars().count() > 500 {
                        return Err(IdentityError::invalid("webhook.description", "must be at most 500 characters").into());
                    }
                    sqlx::query(sqlx::AssertSqlSafe(statement("description = $2"))).bind(row.id).bind((!description.is_empty()).then(|| description.to_owned()))
                }
                "event_types" => sqlx::query(sqlx::AssertSqlSafe(statement("event_types = $2")))
                    .bind(row.id)
                    .bind(self.event_types("webhook.event_types", &given.event_types)?),
                // Enabling starts a fresh count; disabling by hand records why.
                "enabled" if given.enabled => sqlx::query(sqlx::AssertSqlSafe(statement(
                    "enabled = true, failure_count = 0, disabled_at = NULL, disabled_reason = NULL",
                )))
                .bind(row.id),
                "enabled" => sqlx::query(sqlx::AssertSqlSafe(statement(
                    "enabled = false, disabled_at = coalesce(disabled_at, now()), disabled_reason = coalesce(disabled_reason, 'disabled by an admin')",
                )))
                .bind(row.id),
                other => {
                    return Err(IdentityError::invalid("update_mask", format!("`{other}` cannot be changed; use url, description, event_types or enabled")).into());
                }
            };
            query.execute(&mut *tx).await.map_err(IdentityError::from)?;
        }
        // Deliveries it no longer wants (disabled, or a type it dropped) are canceled.
        sqlx::query(
            "UPDATE identity.tenant_webhook_deliveries d SET status = 'canceled', locked_until = NULL
             FROM identity.tenant_webhooks w
             WHERE w.id = $1 AND d.webhook_id = w.id AND d.status = 'pending'
               AND (NOT w.enabled OR (cardinality(w.event_types) > 0 AND NOT d.event_type = ANY(w.event_types)))",
        )
        .bind(row.id)
        .execute(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        let row = visible(&mut tx, &caller, &given.id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::UpdateWebhookResponse { webhook: Some(row.to_proto()) }))
    }

    async fn delete_webhook(&self, request: Request<pb::DeleteWebhookRequest>) -> Reply<pb::DeleteWebhookResponse> {
        let caller = admin(&request)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = visible(&mut tx, &caller, &request.get_ref().webhook_id, true).await?;
        // Its deliveries go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM identity.tenant_webhooks WHERE id = $1")
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        let caller = admin(&request)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = visible(&mut tx, &caller, &request.get_ref().webhook_id, true).await?;
        let secret = new_secret();
        sqlx::query("UPDATE identity.tenant_webhooks SET secret = $2 WHERE id = $1")
            .bind(row.id)
            .bind(secret.as_bytes())
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        let row = visible(&mut tx, &caller, &request.get_ref().webhook_id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::RotateWebhookSecretResponse { webhook: Some(row.to_proto()), secret }))
    }

    async fn test_webhook(&self, request: Request<pb::TestWebhookRequest>) -> Reply<pb::TestWebhookResponse> {
        let caller = admin(&request)?;
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let row = visible(&mut conn, &caller, &request.get_ref().webhook_id, false).await?;
        drop(conn);
        let body = self.identity.webhook_envelopes.test_body(row.tenant_id).map_err(IdentityError::Corrupt)?;
        let settings = &self.identity.settings.webhooks;
        let answer = sender::post(
            &self.identity.http,
            &row.url,
            &row.secret,
            0,
            "flatrender.webhook.test",
            body,
            settings.timeout,
        )
        .await;
        Ok(Response::new(pb::TestWebhookResponse {
            success: answer.success(),
            status_code: answer.status.map_or(0, u32::from),
            response_body_excerpt: answer.excerpt.clone(),
            error: if answer.status.is_none() { answer.error.clone().unwrap_or_default() } else { String::new() },
            duration_ms: u32::try_from(answer.duration.as_millis()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Reply<pb::ListWebhookDeliveriesResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let webhook = visible(&mut conn, &caller, &request.webhook_id, false).await?;
        let limit = page_size(request.page.as_ref())?;
        let status = match pb::WebhookDeliveryStatus::try_from(request.status)
            .unwrap_or(pb::WebhookDeliveryStatus::Unspecified)
        {
            pb::WebhookDeliveryStatus::Unspecified => None,
            pb::WebhookDeliveryStatus::Pending => Some("pending"),
            pb::WebhookDeliveryStatus::Succeeded => Some("succeeded"),
            pb::WebhookDeliveryStatus::Failed => Some("failed"),
            pb::WebhookDeliveryStatus::Canceled => Some("canceled"),
        };
        let event_type = (!request.event_type.is_empty()).then_some(request.event_type.clone());
        let range = request.created.unwrap_or_default();
        let since = range
            .start_time
            .map(|t| OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let until = range
            .end_time
            .map(|t| OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let paging =
            super::paging::NewestFirst::new(&[&"deliveries", &webhook.id, &status, &event_type, &since, &until]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let mut rows = sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM identity.tenant_webhook_deliveries
             WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR event_type = $3)
               AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7))
             ORDER BY created_at DESC, id DESC LIMIT $8"
        )))
        .bind(webhook.id)
        .bind(status)
        .bind(event_type)
        .bind(since)
        .bind(until)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(IdentityError::from)?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries: rows.iter().map(DeliveryRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn redeliver_webhook_delivery(
        &self,
        request: Request<pb::RedeliverWebhookDeliveryRequest>,
    ) -> Reply<pb::RedeliverWebhookDeliveryResponse> {
        let caller = admin(&request)?;
        let id = validate::uuid("delivery_id", &request.get_ref().delivery_id)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let found: Option<(Uuid, Uuid, String, bool)> = sqlx::query_as(
            "SELECT d.tenant_id, d.webhook_id, d.status, w.enabled FROM identity.tenant_webhook_deliveries d
             JOIN identity.tenant_webhooks w ON w.id = d.webhook_id WHERE d.id = $1 FOR UPDATE OF d",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        let (_, _, status, enabled) = match found {
            Some(row) if row.0 == caller.tenant_id || caller.role == Role::PlatformAdmin => row,
            _ => return Err(IdentityError::NotFound("delivery").into()),
        };
        if !enabled {
            return Err(IdentityError::FailedPrecondition("the webhook is disabled; enable it first".into()).into());
        }
        if status == "pending" {
            return Err(IdentityError::FailedPrecondition("the delivery is still pending".into()).into());
        }
        let row = sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE identity.tenant_webhook_deliveries
             SET status = 'pending', attempts = 0, next_attempt_at = now(), locked_until = NULL, delivered_at = NULL
             WHERE id = $1 RETURNING {DELIVERY_COLUMNS}"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::RedeliverWebhookDeliveryResponse { delivery: Some(row.to_proto()) }))
    }

    async fn list_webhook_event_types(
        &self,
        request: Request<pb::ListWebhookEventTypesRequest>,
    ) -> Reply<pb::ListWebhookEventTypesResponse> {
        admin(&request)?;
        let event_types = self
            .identity
            .webhook_envelopes
            .types()
            .iter()
            .map(|(name, description)| pb::WebhookEventType { r#type: name.clone(), description: description.clone() })
            .collect();
        Ok(Response::new(pb::ListWebhookEventTypesResponse { event_types }))
    }
}
