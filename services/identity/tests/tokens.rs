//! Access tokens against the running service: what identity signs is accepted, every forgery
//! and misuse is `UNAUTHENTICATED`, and signing keys rotate and revoke with overlap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::auth::{AccessClaims, Role, TokenSigner};
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{AUDIENCE, DEFAULT_TENANT, ISSUER, Service};
use tonic::Code;
use uuid::Uuid;

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn every_forgery_is_unauthenticated() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let good = account.tokens.access_token.clone();
    let parts: Vec<&str> = good.split('.').collect();
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let jwks = service.auth().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    assert_eq!(jwks.keys[0].kid, kid, "the signing key comes first");
    let public = URL_SAFE_NO_PAD.decode(&jwks.keys[0].x).unwrap();

    let now = jsonwebtoken::get_current_timestamp();
    let with = |changes: serde_json::Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let alg_none = format!("{}.{}.", b64(&serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid})), parts[1]);
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        h.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&public).unwrap()).unwrap()
    };
    let path_kid = format!(
        "{}.{}.{}",
        b64(&serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"../../keys/k"})),
        parts[1],
        parts[2]
    );
    let tampered = format!("{}.{}.{}", parts[0], b64(&with(serde_json::json!({"role":"platform_admin"}))), parts[2]);
    // Tokens signed by a key identity never published, under its kid and under another.
    let stranger = TokenSigner::generate(kid.clone()).unwrap();
    let foreign_claims: AccessClaims = serde_json::from_value(claims.clone()).unwrap();
    let same_kid = stranger.sign(&foreign_claims).unwrap();
    let unknown_kid = TokenSigner::generate("k-unknown").unwrap().sign(&foreign_claims).unwrap();
    let expired = stranger.sign(&AccessClaims { exp: now - 120, nbf: now - 900, ..foreign_claims.clone() }).unwrap();

    let attacks = [
        ("alg none", alg_none),
        ("HS256 keyed with the public key", hs256),
        ("kid with path characters", path_kid),
        ("tampered payload", tampered),
        ("another key under the same kid", same_kid),
        ("unknown kid", unknown_kid),
        ("expired (and foreign)", expired),
        ("a refresh token", account.tokens.refresh_token.clone()),
        ("garbage", "a.b.c".into()),
    ];
    for (name, token) in attacks {
        let result = service.auth_as(&token).get_me(pb::GetMeRequest {}).await;
        assert_eq!(result.map(|_| ()).unwrap_err().code(), Code::Unauthenticated, "{name}");
    }
    service.auth_as(&good).get_me(pb::GetMeRequest {}).await.expect("the genuine token still works");
    service.stop().await;
}

#[tokio::test]
async fn claims_outside_their_window_are_refused() {
    // Identity's real key signs tokens with bad times, audiences and issuers; only the checks
    // of the verifier stand between them and the API.
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let seed: Vec<u8> = sqlx::query_scalar(
        "SELECT private_key FROM identity.signing_keys WHERE revoked_at IS NULL ORDER BY not_before DESC LIMIT 1",
    )
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    let kid: String = sqlx::query_scalar("SELECT kid FROM identity.signing_keys ORDER BY not_before DESC LIMIT 1")
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    let signer = TokenSigner::from_seed(kid, &seed.try_into().unwrap()).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let base = AccessClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: account.user_id,
        tid: account.tenant_id,
        role: Role::User,
        sid: None,
        svc: None,
        akid: None,
        scp: None,
        exp: now + 300,
        nbf: now,
        iat: now,
        jti: Uuid::new_v4(),
    };
    service.auth_as(&signer.sign(&base).unwrap()).get_me(pb::GetMeRequest {}).await.expect("the control token works");
    for (name, claims) in [
        ("expired", AccessClaims { exp: now - 60, nbf: now - 600, ..base.clone() }),
        ("not yet valid", AccessClaims { nbf: now + 120, ..base.clone() }),
        ("wrong audience", AccessClaims { aud: "another-api".into(), ..base.clone() }),
        ("wrong issuer", AccessClaims { iss: "evil".into(), ..base.clone() }),
    ] {
        let result = service.auth_as(&signer.sign(&claims).unwrap()).get_me(pb::GetMeRequest {}).await;
        assert_eq!(result.map(|_| ()).unwrap_err().code(), Code::Unauthenticated, "{name}");
    }
    service.stop().await;
}

#[tokio::test]
async fn keys_rotate_with_overlap_and_revocation_is_immediate() {
    let service = Service::start().await;
    let admin = service.account(DEFAULT_TENANT, "platform_admin").await;
    let user = service.account(DEFAULT_TENANT, "user").await;
    let mut keys = service.keys_as(&admin.tokens.access_token);
    let denied =
        service.keys_as(&user.tokens.access_token).list_signing_keys(pb::ListSigningKeysRequest::default()).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);

    let before = keys.list_signing_keys(pb::ListSigningKeysRequest::default()).await.unwrap().into_inner().keys;
    assert_eq!(before.len(), 1);
    let old_kid = before[0].kid.clone();
    assert_eq!(before[0].state, pb::SigningKeyState::Signing as i32);

    // A scheduled rotation publishes the new key first; it signs only after the cache period.
    let pending = keys.rotate_signing_key(pb::RotateSigningKeyRequest { immediately: false }).await.unwrap();
    assert_eq!(pending.into_inner().key.unwrap().state, pb::SigningKeyState::Pending as i32);
    let jwks = service.auth().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    assert_eq!(jwks.keys.len(), 2);
    assert_eq!(jwks.keys[0].kid, old_kid, "the old key still signs");

    // An immediate rotation signs at once; tokens of the old key keep working (overlap).
    let now_signing = keys.rotate_signing_key(pb::RotateSigningKeyRequest { immediately: true }).await.unwrap();
    let new_kid = now_signing.into_inner().key.unwrap().kid;
    let fresh = service.login(DEFAULT_TENANT, &user.email).await;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(fresh.access_token.split('.').next().unwrap()).unwrap())
            .unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
    service.auth_as(&user.tokens.access_token).get_me(pb::GetMeRequest {}).await.expect("old-key tokens verify");

    // Revoking the old key makes its tokens UNAUTHENTICATED at once, in this process.
    keys.revoke_signing_key(pb::RevokeSigningKeyRequest { kid: old_kid.clone(), reason: "test".into() }).await.unwrap();
    let revoked = service.auth_as(&user.tokens.access_token).get_me(pb::GetMeRequest {}).await;
    assert_eq!(revoked.unwrap_err().code(), Code::Unauthenticated);
    service.auth_as(&fresh.access_token).get_me(pb::GetMeRequest {}).await.expect("new-key tokens verify");
    let jwks = service.auth().get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    assert!(jwks.keys.iter().all(|k| k.kid != old_kid), "a revoked key is not published");
    // The admin's own token was signed by the revoked key too.
    let stale = keys.list_signing_keys(pb::ListSigningKeysRequest::default()).await;
    assert_eq!(stale.unwrap_err().code(), Code::Unauthenticated);
    let mut keys = service.keys_as(&service.login(DEFAULT_TENANT, &admin.email).await.access_token);
    let listed = keys.list_signing_keys(pb::ListSigningKeysRequest { include_inactive: true, ..Default::default() });
    let listed = listed.await.unwrap().into_inner().keys;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().any(|k| k.kid == old_kid && k.state == pb::SigningKeyState::Revoked as i32));
    let unknown =
        keys.revoke_signing_key(pb::RevokeSigningKeyRequest { kid: "nope".into(), reason: String::new() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    service.stop().await;
}
