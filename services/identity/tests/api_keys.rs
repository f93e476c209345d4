//! Tenant API keys over the real service: created by tenant admins with their secret shown
//! once, stored hashed, exchanged for scoped tokens, revoked; tenants never see each other's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, Service};
use tonic::Code;

fn create(name: &str, scopes: &[pb::ApiKeyScope]) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_exchanged_for_scoped_tokens() {
    let service = Service::start().await;
    let tenant = service.tenant().await;
    let admin = service.account(tenant, "tenant_admin").await;
    let mut keys = service.api_keys_as(&admin.tokens.access_token);
    let created = keys
        .create_api_key(create("Production server", &[pb::ApiKeyScope::RenderWrite, pb::ApiKeyScope::FilesRead]))
        .await
        .unwrap()
        .into_inner();
    let key = created.api_key.unwrap();
    let secret = created.secret;
    assert!(secret.starts_with(&format!("{}.", key.prefix)), "{}", key.prefix);
    assert_eq!(key.status, pb::ApiKeyStatus::Active as i32);
    assert_eq!(key.tenant_id, tenant.to_string());

    // Only the hash is stored: the secret appears in no row and no event.
    let secret_part = secret.split_once('.').unwrap().1.to_owned();
    let in_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.tenant_api_keys k
         WHERE strpos(k::text, $1) > 0 OR strpos(encode(secret_hash, 'escape'), $1) > 0",
    )
    .bind(&secret_part)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    let in_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM platform.outbox WHERE position(convert_to($1, 'UTF8') IN payload) > 0",
    )
    .bind(&secret_part)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    assert_eq!((in_rows, in_events), (0, 0));
    let listed = keys.get_api_key(pb::GetApiKeyRequest { api_key_id: key.id.clone() }).await.unwrap();
    assert!(!format!("{listed:?}").contains(&secret_part), "a read never returns the secret");

    // The exchange is for services (the gateway) only.
    let user_try = service
        .api_keys_as(&admin.tokens.access_token)
        .authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: secret.clone() })
        .await;
    assert_eq!(user_try.unwrap_err().code(), Code::PermissionDenied);
    let other_service = service
        .api_keys_as(&service.service_token(ServiceName::Render))
        .authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: secret.clone() })
        .await;
    assert_eq!(other_service.unwrap_err().code(), Code::PermissionDenied, "nor for another service");
    let mut gateway = service.api_keys_as(&service.service_token(ServiceName::Gateway));
    let exchanged = gateway
        .authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: secret.clone() })
        .await
        .unwrap()
        .into_inner();
    let token = exchanged.access_token;

    // The key's token names the key and its tenant; calls outside its scopes are refused.
    let me = service.auth_as(&token).get_me(pb::GetMeRequest {}).await.unwrap().into_inner();
    assert_eq!((me.api_key_id.as_str(), me.tenant_id.as_str()), (key.id.as_str(), tenant.to_string().as_str()));
    assert!(me.user.is_none());
    let mfa = service.mfa_as(&token).get_mfa_status(pb::GetMfaStatusRequest {}).await;
    assert_eq!(mfa.unwrap_err().code(), Code::PermissionDenied);
    let manage = service.api_keys_as(&token).list_api_keys(pb::ListApiKeysRequest::default()).await;
    assert_eq!(manage.unwrap_err().code(), Code::PermissionDenied);

    // Wrong secrets, and the key once revoked, are refused alike.
    let mut wrong = secret.clone();
    wrong.replace_range(wrong.len() - 2.., "zz");
    for bad in [wrong, "fr_nothing".into(), String::new()] {
        let refused = gateway.authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: bad }).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    }
    let revoked = keys.revoke_api_key(pb::RevokeApiKeyRequest { api_key_id: key.id.clone() }).await.unwrap();
    assert_eq!(revoked.into_inner().api_key.unwrap().status, pb::ApiKeyStatus::Revoked as i32);
    let refused = gateway.authenticate_api_key(pb::AuthenticateApiKeyRequest { secret }).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    keys.revoke_api_key(pb::RevokeApiKeyRequest { api_key_id: key.id.clone() }).await.expect("revoking is idempotent");
    let active = keys.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert!(active.api_keys.is_empty());
    let all = keys.list_api_keys(pb::ListApiKeysRequest { include_inactive: true, ..Default::default() }).await;
    assert_eq!(all.unwrap().into_inner().api_keys.len(), 1);
    service.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_and_users_are_refused() {
    let service = Service::start().await;
    let (a, b) = (service.tenant().await, service.tenant().await);
    let admin_a = service.account(a, "tenant_admin").await;
    let admin_b = service.account(b, "tenant_admin").await;
    let user_a = service.account(a, "user").await;
    let key_a = service
        .api_keys_as(&admin_a.tokens.access_token)
        .create_api_key(create("A", &[pb::ApiKeyScope::RenderRead]))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();

    let mut keys_b = service.api_keys_as(&admin_b.tokens.access_token);
    let get = keys_b.get_api_key(pb::GetApiKeyRequest { api_key_id: key_a.id.clone() }).await;
    assert_eq!(get.unwrap_err().code(), Code::NotFound);
    let revoke = keys_b.revoke_api_key(pb::RevokeApiKeyRequest { api_key_id: key_a.id.clone() }).await;
    assert_eq!(revoke.unwrap_err().code(), Code::NotFound);
    let list = keys_b.list_api_keys(pb::ListApiKeysRequest { tenant_id: a.to_string(), ..Default::default() }).await;
    assert_eq!(list.unwrap_err().code(), Code::PermissionDenied);
    let own = keys_b.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert!(own.api_keys.is_empty());

    let mut as_user = service.api_keys_as(&user_a.tokens.access_token);
    let denied = as_user.create_api_key(create("U", &[pb::ApiKeyScope::RenderRead])).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);

    // A platform admin may act on any tenant.
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let seen = service
        .api_keys_as(&root.tokens.access_token)
        .list_api_keys(pb::ListApiKeysRequest { tenant_id: a.to_string(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.api_keys.len(), 1);
    service.stop().await;
}

#[tokio::test]
async fn bad_requests_and_the_fifty_key_limit() {
    let service = Service::start().await;
    let tenant = service.tenant().await;
    let admin = service.account(tenant, "tenant_admin").await;
    let mut keys = service.api_keys_as(&admin.tokens.access_token);
    for (request, field) in [
        (create("", &[pb::ApiKeyScope::RenderRead]), "name"),
        (create("No scopes", &[]), "scopes"),
        (create("Twice", &[pb::ApiKeyScope::RenderRead, pb::ApiKeyScope::RenderRead]), "scopes"),
        (
            pb::CreateApiKeyRequest {
                rate_limit_per_minute: Some(0),
                ..create("Rate", &[pb::ApiKeyScope::RenderRead])
            },
            "rate_limit_per_minute",
        ),
        (
            pb::CreateApiKeyRequest {
                expires_at: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
                ..create("Past", &[pb::ApiKeyScope::RenderRead])
            },
            "expires_at",
        ),
    ] {
        let status = keys.create_api_key(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let limited = keys
        .create_api_key(pb::CreateApiKeyRequest {
            idempotency_key: "once".into(),
            ..create("Key 0", &[pb::ApiKeyScope::RenderRead])
        })
        .await;
    assert!(limited.is_ok());
    let retry = keys
        .create_api_key(pb::CreateApiKeyRequest {
            idempotency_key: "once".into(),
            ..create("Key 0", &[pb::ApiKeyScope::RenderRead])
        })
        .await;
    assert_eq!(retry.unwrap_err().code(), Code::AlreadyExists);
    for n in 1..50 {
        keys.create_api_key(create(&format!("Key {n}"), &[pb::ApiKeyScope::RenderRead])).await.unwrap();
    }
    let over = keys.create_api_key(create("Key 50", &[pb::ApiKeyScope::RenderRead])).await;
    assert_eq!(over.unwrap_err().code(), Code::ResourceExhausted);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity.tenant_api_keys").fetch_one(service.db.pool()).await.unwrap();
    assert_eq!(stored, 50);
    service.stop().await;
}
