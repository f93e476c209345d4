//! Sends due deliveries: claims a batch under a lease (so replicas never send one twice at
//! once), POSTs each with its signature, and records the outcome: success, a retry after a
//! doubling delay, or failure after the delivery's attempts; a webhook whose deliveries keep
//! failing is disabled.

use std::time::{Duration, Instant};

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as events;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{WebhookSettings, signature};

/// Deliveries claimed at once.
const BATCH: i64 = 16;
/// How long a claim lasts: longer than one attempt's timeout.
const LEASE: Duration = Duration::from_secs(60);
/// Longest error text kept.
const MAX_ERROR: usize = 1000;

/// The outcome of one POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status; `None` when none came.
    pub status: Option<u16>,
    /// The transport error or the refusal, when not a 2xx.
    pub error: Option<String>,
    /// The first 1,024 bytes of the body, as UTF-8 (lossy).
    pub excerpt: String,
    /// How long it took.
    pub duration: Duration,
}

impl Answer {
    /// Whether the endpoint accepted the event.
    pub fn success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// POSTs `body` to `url`, signed with `secret`.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event_id: i64,
    event_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Answer {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let signed = signature::sign(secret, now, &body);
    let request = client
        .post(url)
        .timeout(timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("x-flatrender-event-id", event_id.to_string())
        .header("x-flatrender-event-type", event_type)
        .header("x-flatrender-signature", signed)
        .body(body);
    match request.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Only the first 1,024 bytes are kept, so only they are read.
            let mut excerpt = Vec::new();
            while excerpt.len() < 1024 {
                match response.chunk().await {
                    Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk[..chunk.len().min(1024 - excerpt.len())]),
                    Ok(None) | Err(_) => break,
                }
            }
            let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
            let error = (!(200..300).contains(&status)).then(|| format!("HTTP {status}"));
            // HTTP allows codes up to 999; what is recorded is 100..=599, the rest is an error.
            let status = (100..600).contains(&status).then_some(status);
            Answer {
                status,
                error: error.or_else(|| status.is_none().then(|| "an invalid HTTP status".into())),
                excerpt,
                duration: started.elapsed(),
            }
        }
        Err(e) => {
            let error = if e.is_timeout() { format!("timeout after {} s", timeout.as_secs()) } else { error_chain(&e) };
            let error = if (e.is_connect() || e.is_request()) && error.contains("no public address") {
                "the endpoint resolves to no public address".to_owned()
            } else {
                error
            };
            Answer { status: None, error: Some(error), excerpt: String::new(), duration: started.elapsed() }
        }
    }
}

/// An error and its causes on one line (reqwest's own message names only the outermost).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(MAX_ERROR).collect()
}

struct Due {
    id: Uuid,
    webhook_id: Uuid,
    outbox_event_id: i64,
    event_type: String,
    body: Vec<u8>,
    attempts: i32,
    max_attempts: i32,
    url: String,
    secret: Vec<u8>,
}

from_row!(Due { id, webhook_id, outbox_event_id, event_type, body, attempts, max_attempts, url, secret });

/// Sends due deliveries every `settings.poll` until `signal`.
pub async fn run(
    pool: PgPool,
    client: reqwest::Client,
    settings: WebhookSettings,
    signal: flatrender_kit::shutdown::ShutdownSignal,
) {
    let poll = settings.poll;
    signal
        .every(poll, poll, || async {
            loop {
                match send_due(&pool, &client, &settings).await {
                    // A full batch: there may be more due right away.
                    Ok(sent) if sent >= BATCH as usize => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook sender failed; retrying");
                        break;
                    }
                }
            }
        })
        .await;
}

/// Claims and sends one batch of due deliveries; returns how many.
pub async fn send_due(pool: &PgPool, client: &reqwest::Client, settings: &WebhookSettings) -> sqlx::Result<usize> {
    let due: Vec<Due> = sqlx::query_as(
        "WITH claimed AS (
             UPDATE identity.tenant_webhook_deliveries d SET locked_until = now() + $1
             WHERE d.id IN (
                 SELECT id FROM identity.tenant_webhook_deliveries
                 WHERE status = 'pending' AND next_attempt_at <= now()
                   AND (locked_until IS NULL OR locked_until < now())
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING d.*)
         SELECT c.id, c.webhook_id, c.outbox_event_id, c.event_type, c.body, c.attempts, c.max_attempts, w.url, w.secret
         FROM claimed c JOIN identity.tenant_webhooks w ON w.id = c.webhook_id
         WHERE w.enabled AND (cardinality(w.event_types) = 0 OR c.event_type = ANY(w.event_types))",
    )
    .bind(LEASE)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let count = due.len();
    let attempts = due.into_iter().map(|delivery| async move {
        let answer = post(
            client,
            &delivery.url,
            &delivery.secret,
            delivery.outbox_event_id,
            &delivery.event_type,
            delivery.body.clone(),
            settings.timeout,
        )
        .await;
        if let Err(e) = record(pool, settings, &delivery, &answer).await {
            // The lease runs out and the delivery is tried again: at least once.
            tracing::warn!(error = %e, delivery = %delivery.id, "cannot record a webhook attempt");
        }
    });
    futures_util::future::join_all(attempts).await;
    Ok(count)
}

async fn record(pool: &PgPool, settings: &WebhookSettings, delivery: &Due, answer: &Answer) -> sqlx::Result<()> {
    let attempts = delivery.attempts + 1;
    let duration_ms = i32::try_from(answer.duration.as_millis()).unwrap_or(i32::MAX);
    let mut tx = pool.begin().await?;
    // The webhook first, then its deliveries: the order every writer takes, so no two wait on
    // each other.
    sqlx::query("SELECT 1 FROM identity.tenant_webhooks WHERE id = $1 FOR UPDATE")
        .bind(delivery.webhook_id)
        .execute(&mut *tx)
        .await?;
    if answer.success() {
        sqlx::query(
            "UPDATE identity.tenant_webhook_deliveries SET status = 'succeeded', attempts = $2, last_attempt_at = now(),
                 last_status_code = $3, last_error = NULL, last_duration_ms = $4, delivered_at = now(), locked_until = NULL
             WHERE id = $1",
        )
        .bind(delivery.id)
        .bind(attempts)
        .bind(answer.status.map(i32::from))
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE identity.tenant_webhooks SET failure_count = 0, last_success_at = now() WHERE id = $1")
            .bind(delivery.webhook_id)
            .execute(&mut *tx)
            .await?;
    } else {
        let gave_up = attempts >= delivery.max_attempts;
        // A delivery canceled meanwhile (another failure disabled its webhook) stays canceled, and
        // counts toward nothing.
        let updated = sqlx::query(
            "UPDATE identity.tenant_webhook_deliveries SET status = CASE WHEN $2 THEN 'failed' ELSE 'pending' END,
                 attempts = $3, last_attempt_at = now(), last_status_code = $4, last_error = $5, last_duration_ms = $6,
                 next_attempt_at = now() + $7, locked_until = NULL
             WHERE id = $1 AND status <> 'canceled'",
        )
        .bind(delivery.id)
        .bind(gave_up)
        .bind(attempts)
        .bind(answer.status.map(i32::from))
        .bind(answer.error.as_deref().map(|e| e.chars().take(MAX_ERROR).collect::<String>()))
        .bind(duration_ms)
        .bind(settings.backoff(attempts))
        .execute(&mut *tx)
        .await?;
        if !gave_up || updated.rows_affected() == 0 {
            return tx.commit().await;
        }
        // Failed deliveries (not attempts) in a row disable the webhook; its pending ones drop.
        // `disabled_at = now()` (the transaction's time) tells that this statement disabled it.
        let disabled: Option<(bool, bool, Uuid, String, i32, Option<String>)> = sqlx::query_as(
            "UPDATE identity.tenant_webhooks SET failure_count = failure_count + 1, last_failure_at = now(),
                 enabled = CASE WHEN failure_count + 1 >= $2 THEN false ELSE enabled END,
                 disabled_at = CASE WHEN failure_count + 1 >= $2 AND enabled THEN now() ELSE disabled_at END,
                 disabled_reason = CASE WHEN failure_count + 1 >= $2 AND enabled
                                        THEN 'disabled after ' || $2 || ' failed deliveries in a row' ELSE disabled_reason END
             WHERE id = $1
             RETURNING NOT enabled, coalesce(disabled_at = now(), false), tenant_id, url, failure_count, disabled_reason",
        )
        .bind(delivery.webhook_id)
        .bind(settings.disable_after)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((true, just_now, tenant, url, failure_count, reason)) = disabled {
            sqlx::query(
                "UPDATE identity.tenant_webhook_deliveries SET status = 'canceled', locked_until = NULL
                 WHERE webhook_id = $1 AND status = 'pending'",
            )
            .bind(delivery.webhook_id)
            .execute(&mut *tx)
            .await?;
            if just_now {
                tracing::warn!(webhook = %delivery.webhook_id, %tenant, failure_count, "a webhook was disabled after failed deliveries");
                let meta = EventMeta {
                    source: "identity",
                    aggregate_type: "webhook",
                    aggregate_id: delivery.webhook_id.to_string(),
                    tenant_id: Some(tenant),
                };
                let event = events::WebhookDisabled {
                    tenant_id: tenant.to_string(),
                    occurred_at: Some(std::time::SystemTime::now().into()),
                    webhook_id: delivery.webhook_id.to_string(),
                    url,
                    failure_count,
                    reason: reason.unwrap_or_default(),
                };
                // The outbox speaks the kit's error; this path speaks sqlx's.
                outbox::publish(&mut tx, meta, &event).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            }
        }
    }
    tx.commit().await
}
