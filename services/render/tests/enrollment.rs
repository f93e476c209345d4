//! Join tokens and enrolment over the real service: platform admins only, one node per token,
//! one message for every bad token, node credentials on the agent stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use sha2::{Digest, Sha256};
use support::{AgentSpec, Orchestrator, SimAgent};
use tonic::Code;

fn create(tags: &[&str]) -> pb::CreateEnrollmentTokenRequest {
    pb::CreateEnrollmentTokenRequest {
        description: "rack 3".into(),
        ttl: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

#[tokio::test]
async fn join_tokens_are_for_platform_admins_only() {
    let o = Orchestrator::start().await;
    for role in [Role::User, Role::TenantAdmin] {
        let err = o.node_admin(role).create_enrollment_token(create(&[])).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{role:?}");
        let err = o.node_admin(role).list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default()).await;
        assert_eq!(err.unwrap_err().code(), Code::PermissionDenied);
    }
    let anonymous = pb::node_admin_service_client::NodeAdminServiceClient::new(o.channel());
    assert_eq!(anonymous.clone().create_enrollment_token(create(&[])).await.unwrap_err().code(), Code::Unauthenticated);

    let mut admin = o.node_admin(Role::PlatformAdmin);
    let created = admin.create_enrollment_token(create(&["gpu", "eu"])).await.unwrap().into_inner();
    assert!(created.secret.starts_with("frj1.") && created.secret.len() == 48, "{}", created.secret);
    let token = created.token.unwrap();
    assert_eq!(token.state(), pb::EnrollmentTokenState::Active);
    assert_eq!(token.tags, ["eu", "gpu"]);
    assert_eq!(token.description, "rack 3");
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM render.node_enrollment_tokens WHERE id = $1::uuid")
            .bind(&token.id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(stored, Sha256::digest(created.secret.as_bytes()).to_vec(), "only the hash is stored");

    // Bad requests leave nothing behind.
    let before = o.count("SELECT count(*) FROM render.node_enrollment_tokens").await;
    let bad_ttl =
        pb::CreateEnrollmentTokenRequest { ttl: Some(prost_types::Duration { seconds: 10, nanos: 0 }), ..create(&[]) };
    let err = admin.create_enrollment_token(bad_ttl).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "ttl: must be 1 minute..=30 days"));
    let err = admin.create_enrollment_token(create(&["Not A Tag"])).await.unwrap_err();
    assert!(err.message().starts_with("tags[0]"), "{}", err.message());
    assert_eq!(o.count("SELECT count(*) FROM render.node_enrollment_tokens").await, before);

    // Revoke (idempotent), list by state, newest first, pages.
    let second = admin.create_enrollment_token(create(&[])).await.unwrap().into_inner();
    let revoked = admin
        .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest { token_id: token.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(revoked.state(), pb::EnrollmentTokenState::Revoked);
    let again = admin.revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest { token_id: token.id.clone() }).await;
    assert_eq!(again.unwrap().into_inner().token.unwrap().revoked_at, revoked.revoked_at);
    let unknown = pb::RevokeEnrollmentTokenRequest { token_id: uuid::Uuid::new_v4().to_string() };
    assert_eq!(admin.revoke_enrollment_token(unknown).await.unwrap_err().code(), Code::NotFound);

    let all = admin.list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default()).await.unwrap().into_inner();
    let ids: Vec<&str> = all.tokens.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [second.token.as_ref().unwrap().id.as_str(), token.id.as_str()], "newest first");
    let active =
        pb::ListEnrollmentTokensRequest { states: vec![pb::EnrollmentTokenState::Active as i32], ..Default::default() };
    let active = admin.list_enrollment_tokens(active).await.unwrap().into_inner();
    assert_eq!(active.tokens.len(), 1);
    let first_page = pb::ListEnrollmentTokensRequest {
        page: Some(flatrender_proto::flatrender::common::v1::PageRequest { page_size: 1, page_token: String::new() }),
        ..Default::default()
    };
    let page = admin.list_enrollment_tokens(first_page.clone()).await.unwrap().into_inner();
    let next = page.page.unwrap().next_page_token;
    assert!(!next.is_empty());
    let mut second_page = first_page;
    second_page.page.as_mut().unwrap().page_token = next;
    let page = admin.list_enrollment_tokens(second_page).await.unwrap().into_inner();
    assert_eq!(page.tokens[0].id, token.id);
    assert!(page.page.unwrap().next_page_token.is_empty());

    // A revoked token enrols nothing.
    let err = o.agent_client().enroll(AgentSpec::default().enroll_request(&created.secret)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::Unauthenticated, "invalid join token"));
}

#[tokio::test]
async fn a_token_enrols_exactly_one_node() {
    let o = Orchestrator::start().await;
    let token = o.join_token(&["eu", "gpu"]).await;
    let spec = AgentSpec {
        hostname: "Render Box #1.farm".into(),
        tags: vec!["gpu".into(), "fast".into()],
        slots: 4,
        ..AgentSpec::default()
    };
    let enrolled = o.agent_client().enroll(spec.enroll_request(&token)).await.unwrap().into_inner();
    assert_eq!(enrolled.name, "Render-Box--1.farm", "the sanitized host name");
    assert_eq!(enrolled.tags, ["eu", "fast", "gpu"], "the agent's tags and the token's");
    assert!(enrolled.server_time.is_some());
    let prefix = format!("frn1.{}.", enrolled.node_id);
    assert!(enrolled.node_credential.starts_with(&prefix) && enrolled.node_credential.len() == prefix.len() + 43);

    let (hash, slots, state, tags): (Vec<u8>, i32, String, Vec<String>) =
        sqlx::query_as("SELECT credential_hash, slots, state, tags FROM render.nodes WHERE id = $1::uuid")
            .bind(&enrolled.node_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(hash, Sha256::digest(enrolled.node_credential.as_bytes()).to_vec());
    assert_eq!((slots, state.as_str()), (4, "offline"));
    assert_eq!(tags, ["eu", "fast", "gpu"]);
    let used_by: Option<uuid::Uuid> = sqlx::query_scalar("SELECT used_by_node_id FROM render.node_enrollment_tokens")
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(used_by.unwrap().to_string(), enrolled.node_id);
    let events = o.events("flatrender.events.v1.NodeEnrolled").await;
    assert_eq!(events.len(), 1);
    let event = ev::NodeEnrolled::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.node_id.as_str(), event.tenant_id.as_str()), (enrolled.node_id.as_str(), ""));

    // Used, unknown, malformed, expired: one answer, and nothing changes.
    let expired = o.join_token(&[]).await;
    sqlx::query(
        "UPDATE render.node_enrollment_tokens SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day'
          WHERE used_at IS NULL",
    )
    .execute(o.pool())
    .await
    .unwrap();
    let unknown = format!("frj1.{}", "A".repeat(43));
    for bad in [token.as_str(), unknown.as_str(), "frj1.short", expired.as_str(), ""] {
        let err = o.agent_client().enroll(spec.enroll_request(bad)).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::Unauthenticated, "invalid join token"), "{bad:?}");
    }
    assert_eq!(o.count("SELECT count(*) FROM render.nodes").await, 1);

    // A taken name gets a numeric suffix.
    for expected in ["Render-Box--1.farm-2", "Render-Box--1.farm-3"] {
        let token = o.join_token(&[]).await;
        let again = o.agent_client().enroll(spec.enroll_request(&token)).await.unwrap().into_inner();
        assert_eq!(again.name, expected);
    }
}

#[tokio::test]
async fn bad_enrolments_name_the_field_and_keep_the_token() {
    let o = Orchestrator::start().await;
    let token = o.join_token(&[]).await;
    let spec = AgentSpec::default();
    let cases = [
        (agent_pb::EnrollRequest { slots: 0, ..spec.enroll_request(&token) }, "slots"),
        (agent_pb::EnrollRequest { slots: 65, ..spec.enroll_request(&token) }, "slots"),
        (agent_pb::EnrollRequest { name: "-bad name".into(), ..spec.enroll_request(&token) }, "name"),
        (agent_pb::EnrollRequest { tags: vec!["UPPER".into()], ..spec.enroll_request(&token) }, "tags[0]"),
        (agent_pb::EnrollRequest { agent_version: String::new(), ..spec.enroll_request(&token) }, "agent_version"),
        (agent_pb::EnrollRequest { facts: None, ..spec.enroll_request(&token) }, "facts"),
    ];
    for (request, field) in cases {
        let err = o.agent_client().enroll(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(&format!("{field}:")), "{field}: {}", err.message());
    }
    assert_eq!(o.count("SELECT count(*) FROM render.nodes").await, 0);
    assert_eq!(o.count("SELECT count(*) FROM render.node_enrollment_tokens WHERE used_at IS NULL").await, 1);
    o.agent_client().enroll(spec.enroll_request(&token)).await.expect("the token still works");
}

#[tokio::test]
async fn enrolment_is_throttled_per_address() {
    let o = Orchestrator::start_with(|s| s.enroll_attempts_per_minute = 3).await;
    let spec = AgentSpec::default();
    for _ in 0..3 {
        let err = o.agent_client().enroll(spec.enroll_request("frj1.nope")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = o.agent_client().enroll(spec.enroll_request("frj1.nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn the_stream_needs_a_valid_node_credential() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec::default();
    let identity = o.enroll(&spec).await;
    let other = o.enroll(&AgentSpec::default()).await;
    let forged = format!("frn1.{}.{}", identity.node_id, "A".repeat(43));
    // Another node's secret under this node's id.
    let secret = other.credential.rsplit('.').next().unwrap();
    let swapped = format!("frn1.{}.{secret}", identity.node_id);
    let jwt = format!("Bearer {}", o.token(Role::PlatformAdmin));
    for (name, authorization) in [
        ("forged", format!("Bearer {forged}")),
        ("swapped", format!("Bearer {swapped}")),
        ("a user token", jwt),
        ("malformed", "Bearer frn1.nope".to_owned()),
        ("another scheme", format!("Basic {}", identity.credential)),
    ] {
        let agent = SimAgent::connect_with(&o, identity.clone(), spec.clone(), &authorization).await;
        let (code, message) = agent.ended().await;
        assert_eq!(code, Some(Code::Unauthenticated), "{name}: {message}");
    }

    // The real one works; once the node is deleted it does not.
    let agent = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    agent.welcome().await;
    drop(agent);
    sqlx::query(
        "UPDATE render.nodes SET deleted_at = now(), credential_hash = NULL, orchestrator_id = NULL, state = 'offline'
          WHERE id = $1",
    )
    .bind(identity.node_id)
    .execute(o.pool())
    .await
    .unwrap();
    let agent = SimAgent::connect(&o, identity.clone(), spec).await;
    assert_eq!(agent.ended().await.0, Some(Code::Unauthenticated));
}
