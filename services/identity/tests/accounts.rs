//! Accounts and tokens end to end: register, verify, log in, refresh, log out, passwords,
//! sessions — over the real service and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, PASSWORD, Service};
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn register_verify_login_and_me() {
    let service = Service::start().await;
    let user_id = service.register(DEFAULT_TENANT, "Ada@Example.com").await;

    // Login needs a verified address.
    let unverified = service
        .auth()
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            tenant_id: String::new(),
        })
        .await;
    let status = unverified.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::FailedPrecondition, "email not verified"));

    // The operator reads the pending token (there is no email yet) and the user verifies.
    let admin = service.account(DEFAULT_TENANT, "platform_admin").await;
    let pending = service
        .auth_as(&admin.tokens.access_token)
        .get_pending_verification_token(pb::GetPendingVerificationTokenRequest {
            email: "ada@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("the pending token")
        .into_inner();
    assert_eq!(pending.user_id, user_id.to_string());
    assert_eq!(pending.token.len(), 43);
    let verified = service.auth().verify_email(pb::VerifyEmailRequest { token: pending.token.clone() }).await.unwrap();
    assert!(verified.into_inner().user.unwrap().email_verified);
    let again = service.auth().verify_email(pb::VerifyEmailRequest { token: pending.token }).await;
    assert_eq!(code(again), Code::FailedPrecondition, "a token works once");

    let tokens = service.login(DEFAULT_TENANT, "ada@example.com").await;
    assert_eq!(tokens.token_type, "Bearer");
    let me = service.auth_as(&tokens.access_token).get_me(pb::GetMeRequest {}).await.unwrap().into_inner();
    let user = me.user.unwrap();
    assert_eq!((user.id, user.email.as_str()), (user_id.to_string(), "ada@example.com"));
    assert_eq!(me.session_id, tokens.session_id);

    // The secret never reaches a table in clear.
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.users WHERE password_hash NOT LIKE '$argon2id$v=19$m=19456,t=2,p=1$%'",
    )
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    assert_eq!(leaks, 0);

    // A plain user may not read pending tokens.
    let denied = service
        .auth_as(&tokens.access_token)
        .get_pending_verification_token(pb::GetPendingVerificationTokenRequest {
            user_id: user_id.to_string(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(denied), Code::PermissionDenied);
    service.stop().await;
}

#[tokio::test]
async fn bad_registrations_are_refused_and_leave_nothing() {
    let service = Service::start().await;
    service.register(DEFAULT_TENANT, "taken@example.com").await;
    let cases = [
        ("not-an-email", PASSWORD, "Name", "", Code::InvalidArgument),
        ("short@example.com", "short", "Name", "", Code::InvalidArgument),
        ("long@example.com", &"x".repeat(129), "Name", "", Code::InvalidArgument),
        ("noname@example.com", PASSWORD, "   ", "", Code::InvalidArgument),
        ("tenant@example.com", PASSWORD, "Name", "00000000-0000-0000-0000-00000000dead", Code::NotFound),
        ("TAKEN@example.com", PASSWORD, "Name", "", Code::AlreadyExists),
    ];
    for (email, password, name, tenant, expected) in cases {
        let result = service
            .auth()
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
                display_name: name.into(),
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(result), expected, "{email}");
    }
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity.users").fetch_one(service.db.pool()).await.unwrap();
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.email_verification_tokens")
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert_eq!((users, tokens), (1, 1), "only the first account and its token exist");
    service.stop().await;
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_account() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let attempt = |password: &'static str| {
        let mut auth = service.auth();
        let email = account.email.clone();
        async move { auth.login(pb::LoginRequest { email, password: password.into(), tenant_id: String::new() }).await }
    };
    let unknown = service
        .auth()
        .login(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: PASSWORD.into(),
            tenant_id: String::new(),
        })
        .await
        .unwrap_err();
    for _ in 0..4 {
        let wrong = attempt("wrong password!").await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(wrong.message(), unknown.message(), "an unknown email and a wrong password look the same");
    }
    // The fifth failure locks the account: even the right password is refused for a while.
    assert_eq!(code(attempt("wrong password!").await), Code::Unauthenticated);
    let locked = attempt(PASSWORD).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted);
    assert!(locked.message().contains("retry in"), "{}", locked.message());
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(failure_reason, 'ok') FROM identity.login_attempts WHERE email = $1 ORDER BY id",
    )
    .bind(&account.email)
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    assert_eq!(reasons.first().map(String::as_str), Some("ok"));
    assert_eq!(reasons.last().map(String::as_str), Some("throttled"));
    assert_eq!(reasons.iter().filter(|r| *r == "bad_credentials").count(), 5);
    service.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_a_replay_revokes_the_session() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let first = account.tokens.refresh_token.clone();
    let refresh = |token: String| {
        let mut auth = service.auth();
        async move { auth.refresh_token(pb::RefreshTokenRequest { refresh_token: token }).await }
    };
    let second = refresh(first.clone()).await.unwrap().into_inner().tokens.unwrap();
    assert_ne!(second.refresh_token, first);
    assert_eq!(second.session_id, account.tokens.session_id);
    assert_eq!(second.refresh_token_expires_at, account.tokens.refresh_token_expires_at, "rotation never extends");
    service.auth_as(&second.access_token).get_me(pb::GetMeRequest {}).await.expect("the new access token works");

    // Within the grace period the old token is refused, but the session lives (a racing tab).
    assert_eq!(code(refresh(first.clone()).await), Code::Unauthenticated);
    let third = refresh(second.refresh_token.clone()).await.unwrap().into_inner().tokens.unwrap();

    // Later, presenting a rotated token is a replay: the whole family dies.
    sqlx::query(
        "UPDATE identity.refresh_tokens SET rotated_at = rotated_at - interval '1 hour' WHERE rotated_at IS NOT NULL",
    )
    .execute(service.db.pool())
    .await
    .unwrap();
    let replay = refresh(first).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(replay.message().contains("already used"), "{}", replay.message());
    assert_eq!(
        code(refresh(third.refresh_token).await),
        Code::Unauthenticated,
        "the newest token died with its family"
    );
    let reason: Option<String> = sqlx::query_scalar("SELECT revoked_reason FROM identity.sessions WHERE id = $1::uuid")
        .bind(&account.tokens.session_id)
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("reuse_detected"));
    assert_eq!(code(refresh("garbage".into()).await), Code::Unauthenticated);
    service.stop().await;
}

#[tokio::test]
async fn of_a_hundred_concurrent_refreshes_exactly_one_succeeds() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let token = account.tokens.refresh_token.clone();
    let calls = (0..100).map(|_| {
        let mut auth = service.auth();
        let token = token.clone();
        tokio::spawn(async move { auth.refresh_token(pb::RefreshTokenRequest { refresh_token: token }).await })
    });
    let results = futures_util::future::join_all(calls).await;
    let mut winners = Vec::new();
    for result in results {
        match result.expect("the task ran") {
            Ok(response) => winners.push(response.into_inner().tokens.unwrap()),
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one refresh wins");
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.refresh_tokens WHERE parent_id IS NOT NULL")
        .fetch_one(service.db.pool())
        .await
        .unwrap();
    assert_eq!(children, 1);
    // The losers were a race, not a replay: the winner's token still works.
    let mut auth = service.auth();
    auth.refresh_token(pb::RefreshTokenRequest { refresh_token: winners[0].refresh_token.clone() })
        .await
        .expect("the winning family is alive");
    service.stop().await;
}

#[tokio::test]
async fn logout_sessions_and_password_changes() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let phone = service.login(DEFAULT_TENANT, &account.email).await;
    let laptop = service.login(DEFAULT_TENANT, &account.email).await;
    let mut auth = service.auth_as(&account.tokens.access_token);
    let sessions = auth.list_sessions(pb::ListSessionsRequest::default()).await.unwrap().into_inner().sessions;
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);

    // Another user's session is not found, not forbidden.
    let stranger = service.account(DEFAULT_TENANT, "user").await;
    let foreign = service
        .auth_as(&stranger.tokens.access_token)
        .revoke_session(pb::RevokeSessionRequest { session_id: phone.session_id.clone() })
        .await;
    assert_eq!(code(foreign), Code::NotFound);

    auth.revoke_session(pb::RevokeSessionRequest { session_id: phone.session_id.clone() }).await.unwrap();
    let mut anonymous = service.auth();
    assert_eq!(
        code(anonymous.refresh_token(pb::RefreshTokenRequest { refresh_token: phone.refresh_token.clone() }).await),
        Code::Unauthenticated
    );
    // Logout with a refresh token is idempotent.
    for _ in 0..2 {
        anonymous.logout(pb::LogoutRequest { refresh_token: laptop.refresh_token.clone() }).await.unwrap();
    }

    // A password change ends every other session and needs the current password.
    let other = service.login(DEFAULT_TENANT, &account.email).await;
    let wrong = auth
        .change_password(pb::ChangePasswordRequest {
            current_password: "not the password".into(),
            new_password: "a brand new password".into(),
        })
        .await;
    assert_eq!(code(wrong), Code::Unauthenticated);
    let changed = auth
        .change_password(pb::ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "a brand new password".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.revoked_sessions, 1);
    assert_eq!(
        code(anonymous.refresh_token(pb::RefreshTokenRequest { refresh_token: other.refresh_token }).await),
        Code::Unauthenticated
    );
    anonymous
        .refresh_token(pb::RefreshTokenRequest { refresh_token: account.tokens.refresh_token.clone() })
        .await
        .expect("the caller's own session stays");
    let everywhere = auth.logout_everywhere(pb::LogoutEverywhereRequest { keep_current_session: false }).await.unwrap();
    assert_eq!(everywhere.into_inner().revoked_sessions, 1);
    service.stop().await;
}

#[tokio::test]
async fn password_reset_by_token() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let mut auth = service.auth();
    // Unknown addresses answer the same.
    auth.request_password_reset(pb::RequestPasswordResetRequest {
        email: "nobody@example.com".into(),
        tenant_id: String::new(),
    })
    .await
    .unwrap();
    auth.request_password_reset(pb::RequestPasswordResetRequest {
        email: account.email.clone(),
        tenant_id: String::new(),
    })
    .await
    .unwrap();
    let events = service.events("flatrender.events.v1.PasswordResetRequested").await;
    assert_eq!(events.len(), 1);
    let event = <flatrender_proto::flatrender::events::v1::PasswordResetRequested as prost::Message>::decode(
        events[0].as_slice(),
    )
    .unwrap();
    assert_eq!(event.email, account.email);
    let weak = auth.confirm_password_reset(pb::ConfirmPasswordResetRequest {
        token: event.token.clone(),
        new_password: "x".into(),
    });
    assert_eq!(code(weak.await), Code::InvalidArgument);
    auth.confirm_password_reset(pb::ConfirmPasswordResetRequest {
        token: event.token.clone(),
        new_password: "reset password 123".into(),
    })
    .await
    .unwrap();
    let reused = auth
        .confirm_password_reset(pb::ConfirmPasswordResetRequest {
            token: event.token,
            new_password: "reset password 456".into(),
        })
        .await;
    assert_eq!(code(reused), Code::FailedPrecondition);
    // Every session ended; the new password works, the old one does not.
    assert_eq!(
        code(auth.refresh_token(pb::RefreshTokenRequest { refresh_token: account.tokens.refresh_token }).await),
        Code::Unauthenticated
    );
    let old = auth
        .login(pb::LoginRequest { email: account.email.clone(), password: PASSWORD.into(), tenant_id: String::new() })
        .await;
    assert_eq!(code(old), Code::Unauthenticated);
    auth.login(pb::LoginRequest {
        email: account.email,
        password: "reset password 123".into(),
        tenant_id: String::new(),
    })
    .await
    .expect("the new password works");
    service.stop().await;
}

#[tokio::test]
async fn parallel_guesses_cannot_outrun_the_lock() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let guesses = (0..20).map(|i| {
        let mut auth = service.auth();
        let email = account.email.clone();
        tokio::spawn(async move {
            auth.login(pb::LoginRequest { email, password: format!("wrong guess {i}"), tenant_id: String::new() }).await
        })
    });
    let results = futures_util::future::join_all(guesses).await;
    let throttled =
        results.iter().filter(|r| r.as_ref().unwrap().as_ref().is_err_and(|s| s.code() == Code::ResourceExhausted));
    assert_eq!(throttled.count(), 15, "only the allowance of five reaches a password check");
    let checked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.login_attempts WHERE email = $1 AND failure_reason = 'bad_credentials'",
    )
    .bind(&account.email)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    assert_eq!(checked, 5);
    service.stop().await;
}
