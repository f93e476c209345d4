//! The webhook consumer of the outbox: each deliverable event of a tenant becomes one pending
//! delivery per enabled webhook of that tenant that subscribes to its type.

use flatrender_kit::outbox::{Event, Handler, HandlerError};
use sqlx::PgPool;

use super::envelope::Envelopes;

/// The outbox cursor's name.
pub const CONSUMER: &str = "identity-webhooks";

/// Records deliveries; the sender makes them.
#[derive(Clone, Debug)]
pub struct Fanout {
    pub pool: PgPool,
    pub envelopes: Envelopes,
}

impl Handler for Fanout {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        // Platform-wide events and secret-bearing ones never leave.
        let Some(tenant) = event.tenant_id else { return Ok(()) };
        if !self.envelopes.deliverable(&event.event_type) {
            return Ok(());
        }
        let subscribed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM identity.tenant_webhooks
                            WHERE tenant_id = $1 AND enabled
                              AND (cardinality(event_types) = 0 OR $2 = ANY(event_types)))",
        )
        .bind(tenant)
        .bind(&event.event_type)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| HandlerError(e.to_string()))?;
        if !subscribed {
            return Ok(());
        }
        // The body is fixed now: every attempt sends (and signs) the same bytes.
        let body = self.envelopes.body(event).map_err(HandlerError)?;
        // Redelivered events (at least once) hit the unique key and add nothing. A webhook gets
        // only what happened since it was created, however far behind this consumer runs.
        sqlx::query(
            "INSERT INTO identity.tenant_webhook_deliveries (tenant_id, webhook_id, outbox_event_id, event_type, body)
             SELECT w.tenant_id, w.id, $3, $2, $4 FROM identity.tenant_webhooks w
             WHERE w.tenant_id = $1 AND w.enabled AND (cardinality(w.event_types) = 0 OR $2 = ANY(w.event_types))
               AND w.created_at <= $5
             ON CONFLICT (webhook_id, outbox_event_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(&event.event_type)
        .bind(event.id)
        .bind(body)
        .bind(event.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| HandlerError(e.to_string()))?;
        Ok(())
    }
}
