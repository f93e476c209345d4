//! `PushSubscriptionService`: browsers' Web Push subscriptions, registered by their users and
//! read (with their keys) by the notification service.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use flatrender_kit::auth::{Caller, ServiceName};
use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::identity::v1 as pb;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size};
use crate::client::ClientInfo;
use crate::error::{IdentityError, Result};
use crate::users::timestamp;
use crate::validate;

type Reply<T> = Result<Response<T>, Status>;

/// Subscriptions a user keeps; registering one more replaces the least recently used.
const MAX_PER_USER: i64 = 20;

struct PushRow {
    id: Uuid,
    user_id: Uuid,
    endpoint: String,
    p256dh: String,
    auth: String,
    user_agent: Option<String>,
    created_at: OffsetDateTime,
    last_success_at: Option<OffsetDateTime>,
    expiration_time: Option<OffsetDateTime>,
}

from_row!(PushRow { id, user_id, endpoint, p256dh, auth, user_agent, created_at, last_success_at, expiration_time });

const PUSH_COLUMNS: &str =
    "id, user_id, endpoint, p256dh, auth, user_agent, created_at, last_success_at, expiration_time";

impl PushRow {
    /// The keys go only to the notification service, which encrypts pushes with them.
    fn to_proto(&self, with_keys: bool) -> pb::PushSubscription {
        pb::PushSubscription {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            endpoint: self.endpoint.clone(),
            p256dh: if with_keys { self.p256dh.clone() } else { String::new() },
            auth: if with_keys { self.auth.clone() } else { String::new() },
            user_agent: self.user_agent.clone().unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            last_success_at: self.last_success_at.map(timestamp),
            expires_at: self.expiration_time.map(timestamp),
        }
    }
}

/// Base64url or base64, padded or not, as browsers and libraries write it.
fn decode_key(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).or_else(|_| URL_SAFE.decode(text)).or_else(|_| STANDARD.decode(text)).ok()
}

fn is_notification_service(caller: &Caller) -> bool {
    caller.service == Some(ServiceName::Notification)
}

#[tonic::async_trait]
impl pb::push_subscription_service_server::PushSubscriptionService for IdentityApi {
    async fn get_vapid_public_key(
        &self,
        _request: Request<pb::GetVapidPublicKeyRequest>,
    ) -> Reply<pb::GetVapidPublicKeyResponse> {
        match &self.identity.settings.vapid_public_key {
            Some(key) => Ok(Response::new(pb::GetVapidPublicKeyResponse { public_key: key.clone() })),
            None => Err(Status::failed_precondition("web push is not configured on this installation (no VAPID key)")),
        }
    }

    async fn register_push_subscription(
        &self,
        request: Request<pb::RegisterPushSubscriptionRequest>,
    ) -> Reply<pb::RegisterPushSubscriptionResponse> {
        let caller = super::user(&request)?;
        if caller.api_key_id.is_some() {
            return Err(Status::permission_denied("push subscriptions belong to people, not API keys"));
        }
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        let endpoint = request.endpoint.trim();
        if !endpoint.starts_with("https://") || endpoint.len() > 2048 || endpoint.chars().any(char::is_whitespace) {
            return Err(IdentityError::invalid("endpoint", "must be an https URL of at most 2,048 characters").into());
        }
        // A P-256 point, uncompressed (65 bytes starting 0x04), and a 16-byte secret.
        if !decode_key(&request.p256dh).is_some_and(|k| k.len() == 65 && k[0] == 4) {
            return Err(
                IdentityError::invalid("p256dh", "must be an uncompressed P-256 public key in base64url").into()
            );
        }
        if decode_key(&request.auth).is_none_or(|k| k.len() != 16) {
            return Err(IdentityError::invalid("auth", "must be a 16-byte secret in base64url").into());
        }
        let expires = match request.expires_at {
            Some(at) => Some(
                OffsetDateTime::from_unix_timestamp(at.seconds)
                    .map_err(|_| IdentityError::invalid("expires_at", "is out of range"))?,
            ),
            None => None,
        };
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        // Another tenant's endpoint is never taken over: it is simply not this user's to move.
        let holder: Option<Uuid> =
            sqlx::query_scalar("SELECT tenant_id FROM identity.push_subscriptions WHERE endpoint = $1 FOR UPDATE")
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await
                .map_err(IdentityError::from)?;
        if holder.is_some_and(|tenant| tenant != caller.tenant_id) {
            return Err(IdentityError::AlreadyExists("this endpoint is registered elsewhere".into()).into());
        }
        let row = sqlx::query_as::<_, PushRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO identity.push_subscriptions (tenant_id, user_id, endpoint, p256dh, auth, user_agent, expiration_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
                 user_agent = EXCLUDED.user_agent, expiration_time = EXCLUDED.expiration_time, failure_count = 0,
                 disabled_at = NULL
             WHERE push_subscriptions.tenant_id = EXCLUDED.tenant_id
             RETURNING {PUSH_COLUMNS}"
        )))
        .bind(caller.tenant_id)
        .bind(caller.user_id)
        .bind(endpoint)
        .bind(&request.p256dh)
        .bind(&request.auth)
        .bind(client.user_agent.as_deref())
        .bind(expires)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint().is_some_and(|c| c.starts_with("push_subscriptions_")) => {
                IdentityError::invalid("p256dh", "the keys are not in the form browsers send")
            }
            _ => IdentityError::from(e),
        })?
        // Registered meanwhile by another tenant's user (the conflict's condition held it back).
        .ok_or_else(|| IdentityError::AlreadyExists("this endpoint is registered elsewhere".into()))?;
        // Past the limit, the least recently used subscriptions of the user go.
        sqlx::query(
            "DELETE FROM identity.push_subscriptions WHERE id IN (
                 SELECT id FROM identity.push_subscriptions WHERE user_id = $1
                 ORDER BY coalesce(last_success_at, updated_at) DESC, id DESC OFFSET $2)",
        )
        .bind(caller.user_id)
        .bind(MAX_PER_USER)
        .execute(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::RegisterPushSubscriptionResponse { subscription: Some(row.to_proto(false)) }))
    }

    async fn unregister_push_subscription(
        &self,
        request: Request<pb::UnregisterPushSubscriptionRequest>,
    ) -> Reply<pb::UnregisterPushSubscriptionResponse> {
        let caller = super::user_or_service(&request)?;
        let any = is_notification_service(&caller);
        let (by_id, by_endpoint) = match &request.get_ref().lookup {
            Some(pb::unregister_push_subscription_request::Lookup::SubscriptionId(id)) => {
                (Some(validate::uuid("subscription_id", id)?), None)
            }
            Some(pb::unregister_push_subscription_request::Lookup::Endpoint(endpoint)) => {
                (None, Some(endpoint.clone()))
            }
            None => return Err(IdentityError::invalid("lookup", "give subscription_id or endpoint").into()),
        };
        // Idempotent: an unknown or foreign subscription answers OK and changes nothing.
        sqlx::query(
            "DELETE FROM identity.push_subscriptions
             WHERE ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR endpoint = $2) AND ($3 OR user_id = $4)",
        )
        .bind(by_id)
        .bind(by_endpoint)
        .bind(any)
        .bind(caller.user_id)
        .execute(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        Ok(Response::new(pb::UnregisterPushSubscriptionResponse {}))
    }

    async fn list_push_subscriptions(
        &self,
        request: Request<pb::ListPushSubscriptionsRequest>,
    ) -> Reply<pb::ListPushSubscriptionsResponse> {
        let caller = super::user_or_service(&request)?;
        let request = request.into_inner();
        let with_keys = is_notification_service(&caller);
        let (tenant, user) = if with_keys {
            (validate::uuid("tenant_id", &request.tenant_id)?, validate::uuid("user_id", &request.user_id)?)
        } else if caller.service.is_some() {
            return Err(Status::permission_denied("only the notification service reads push subscriptions"));
        } else if request.user_id.is_empty() || request.user_id == caller.user_id.to_string() {
            (caller.tenant_id, caller.user_id)
        } else {
            return Err(Status::permission_denied("users list their own push subscriptions"));
        };
        let limit = page_size(request.page.as_ref())?;
        let paging = super::paging::NewestFirst::new(&[&"push", &tenant, &user]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let mut rows = sqlx::query_as::<_, PushRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {PUSH_COLUMNS} FROM identity.push_subscriptions
             WHERE tenant_id = $1 AND user_id = $2 AND disabled_at IS NULL
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC LIMIT $5"
        )))
        .bind(tenant)
        .bind(user)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListPushSubscriptionsResponse {
            subscriptions: rows.iter().map(|r| r.to_proto(with_keys)).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }
}
