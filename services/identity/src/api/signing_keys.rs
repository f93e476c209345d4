//! `SigningKeyService`: platform admins see, rotate and revoke the token signing keys.

use flatrender_kit::auth::Role;
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::auth::jwk;
use super::{IdentityApi, page_size, user};
use crate::error::IdentityError;
use crate::keys::{KeyRecord, KeyState};
use crate::users::timestamp;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::signing_key_service_server::SigningKeyService for IdentityApi {
    async fn list_signing_keys(
        &self,
        request: Request<pb::ListSigningKeysRequest>,
    ) -> Reply<pb::ListSigningKeysResponse> {
        user(&request)?.require(Role::PlatformAdmin)?;
        let request = request.into_inner();
        let limit = page_size(request.page.as_ref())?;
        let paging = super::paging::NewestFirst::new(&[&"signing_keys", &request.include_inactive]);
        let after = paging.after(request.page.as_ref())?;
        let mut keys = self.identity.ring.list(request.include_inactive, after, limit + 1).await?;
        let next = paging.next(&mut keys, limit, |last| (last.created_at, last.id));
        let now = OffsetDateTime::now_utc();
        Ok(Response::new(pb::ListSigningKeysResponse {
            keys: keys.iter().map(|k| to_proto(k, now)).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Reply<pb::RotateSigningKeyResponse> {
        user(&request)?.require(Role::PlatformAdmin)?;
        let key = self.identity.ring.rotate(request.get_ref().immediately).await?;
        Ok(Response::new(pb::RotateSigningKeyResponse { key: Some(to_proto(&key, OffsetDateTime::now_utc())) }))
    }

    async fn revoke_signing_key(
        &self,
        request: Request<pb::RevokeSigningKeyRequest>,
    ) -> Reply<pb::RevokeSigningKeyResponse> {
        let caller = user(&request)?;
        caller.require(Role::PlatformAdmin)?;
        let request = request.into_inner();
        let reason = crate::validate::reason("reason", &request.reason, false)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let key =
            self.identity.ring.revoke(&mut tx, &request.kid).await?.ok_or(IdentityError::NotFound("signing key"))?;
        outbox::publish(
            &mut tx,
            EventMeta {
                source: "identity",
                aggregate_type: "signing_key",
                aggregate_id: key.kid.clone(),
                tenant_id: None,
            },
            &events::SigningKeyRevoked {
                tenant_id: String::new(),
                occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                kid: key.kid.clone(),
                by_user_id: caller.user_id.to_string(),
                reason,
            },
        )
        .await
        .map_err(IdentityError::from)?;
        tx.commit().await.map_err(IdentityError::from)?;
        self.identity.ring.forget(&key.kid).await;
        Ok(Response::new(pb::RevokeSigningKeyResponse { key: Some(to_proto(&key, OffsetDateTime::now_utc())) }))
    }
}

fn to_proto(key: &KeyRecord, now: OffsetDateTime) -> pb::SigningKey {
    pb::SigningKey {
        id: key.id.to_string(),
        kid: key.kid.clone(),
        algorithm: "EdDSA".into(),
        public_jwk: Some(jwk(key)),
        state: match key.state(now) {
            KeyState::Pending => pb::SigningKeyState::Pending,
            KeyState::Signing => pb::SigningKeyState::Signing,
            KeyState::Retired => pb::SigningKeyState::Retired,
            KeyState::Expired => pb::SigningKeyState::Expired,
            KeyState::Revoked => pb::SigningKeyState::Revoked,
        } as i32,
        not_before: Some(timestamp(key.not_before)),
        retire_after: Some(timestamp(key.retire_after)),
        expires_at: Some(timestamp(key.expires_at)),
        revoked_at: key.revoked_at.map(timestamp),
        created_at: Some(timestamp(key.created_at)),
    }
}
