//! MFA end to end: TOTP enrolment, the login challenge, single-use codes, recovery codes,
//! disabling — over the real service and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_identity::credentials::totp::{self, TotpSecret};
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{Account, DEFAULT_TENANT, PASSWORD, Service};
use tonic::Code;

fn step_now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() / totp::PERIOD_SECONDS
}

/// The secret of an EnrollTotp answer, as an authenticator app would read it.
fn secret_of(base32: &str) -> TotpSecret {
    let bytes = base32_decode(base32);
    TotpSecret::from_bytes(&bytes).unwrap()
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c).unwrap() as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Enrols and confirms TOTP for `account`; returns the secret and the recovery codes.
async fn enable_mfa(service: &Service, account: &Account) -> (TotpSecret, Vec<String>) {
    let mut mfa = service.mfa_as(&account.tokens.access_token);
    let wrong_password =
        mfa.enroll_totp(pb::EnrollTotpRequest { password: "not it at all".into(), label: String::new() }).await;
    assert_eq!(wrong_password.unwrap_err().code(), Code::Unauthenticated);
    let enrolment = mfa
        .enroll_totp(pb::EnrollTotpRequest { password: PASSWORD.into(), label: "Phone".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolment.secret.len(), 32);
    assert!(enrolment.otpauth_url.starts_with("otpauth://totp/FlatRender:"), "{}", enrolment.otpauth_url);
    let secret = secret_of(&enrolment.secret);
    let wrong =
        mfa.confirm_totp(pb::ConfirmTotpRequest { factor_id: enrolment.factor_id.clone(), code: "000000".into() });
    let wrong = wrong.await;
    // A random secret could make 000000 right once in a million; then this test says so.
    assert_eq!(wrong.unwrap_err().code(), Code::InvalidArgument);
    // The previous step's code: confirming uses it, so the current one stays free for a login.
    let code = totp::code_at(&secret, step_now() - 1);
    let confirmed =
        mfa.confirm_totp(pb::ConfirmTotpRequest { factor_id: enrolment.factor_id, code }).await.unwrap().into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);
    assert!(confirmed.factor.unwrap().confirmed_at.is_some());
    (secret, confirmed.recovery_codes)
}

async fn challenge(service: &Service, email: &str) -> pb::MfaChallenge {
    let response = service
        .auth()
        .login(pb::LoginRequest { email: email.into(), password: PASSWORD.into(), tenant_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    match response.result {
        Some(pb::login_response::Result::MfaChallenge(challenge)) => challenge,
        other => panic!("expected an MFA challenge, got {other:?}"),
    }
}

async fn complete(
    service: &Service,
    challenge: &pb::MfaChallenge,
    code: pb::complete_mfa_login_request::Code,
) -> Result<pb::CompleteMfaLoginResponse, tonic::Status> {
    service
        .auth()
        .complete_mfa_login(pb::CompleteMfaLoginRequest {
            challenge_token: challenge.challenge_token.clone(),
            code: Some(code),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn totp_login_codes_work_once_and_recovery_codes_too() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let (secret, recovery) = enable_mfa(&service, &account).await;

    let status = service.mfa_as(&account.tokens.access_token).get_mfa_status(pb::GetMfaStatusRequest {}).await.unwrap();
    let status = status.into_inner();
    assert!(status.enabled);
    assert_eq!(status.recovery_codes_remaining, 10);

    let first = challenge(&service, &account.email).await;
    // The challenge is no access token.
    let misuse = service.auth_as(&first.challenge_token).get_me(pb::GetMeRequest {}).await;
    assert_eq!(misuse.unwrap_err().code(), Code::Unauthenticated);
    let code = totp::code_at(&secret, step_now());
    let done = complete(&service, &first, pb::complete_mfa_login_request::Code::TotpCode(code.clone())).await.unwrap();
    let tokens = done.tokens.unwrap();
    service.auth_as(&tokens.access_token).get_me(pb::GetMeRequest {}).await.expect("logged in with MFA");
    let sessions = service.auth_as(&tokens.access_token).list_sessions(pb::ListSessionsRequest::default()).await;
    assert!(sessions.unwrap().into_inner().sessions.iter().any(|s| s.current && s.mfa_verified));

    // The same code does not work twice, and a used challenge is spent.
    let second = challenge(&service, &account.email).await;
    let replay = complete(&service, &second, pb::complete_mfa_login_request::Code::TotpCode(code)).await;
    assert_eq!(replay.unwrap_err().code(), Code::Unauthenticated);
    let spent =
        complete(&service, &first, pb::complete_mfa_login_request::Code::RecoveryCode(recovery[1].clone())).await;
    assert_eq!(spent.unwrap_err().code(), Code::FailedPrecondition);

    // A recovery code, typed loosely, works once.
    let typed = recovery[0].to_uppercase().replace('-', " ");
    let third = challenge(&service, &account.email).await;
    let done =
        complete(&service, &third, pb::complete_mfa_login_request::Code::RecoveryCode(typed.clone())).await.unwrap();
    assert_eq!(done.recovery_codes_remaining, 9);
    let fourth = challenge(&service, &account.email).await;
    let again = complete(&service, &fourth, pb::complete_mfa_login_request::Code::RecoveryCode(typed)).await;
    assert_eq!(again.unwrap_err().code(), Code::Unauthenticated);
    service.stop().await;
}

#[tokio::test]
async fn five_wrong_codes_void_a_challenge() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let (secret, _) = enable_mfa(&service, &account).await;
    let challenge = challenge(&service, &account.email).await;
    let right = totp::code_at(&secret, step_now());
    let wrong = if right == "123456" { "654321" } else { "123456" };
    for _ in 0..5 {
        let refused =
            complete(&service, &challenge, pb::complete_mfa_login_request::Code::TotpCode(wrong.into())).await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    }
    // The user is locked out of MFA for a while, across every challenge...
    let locked = complete(&service, &challenge, pb::complete_mfa_login_request::Code::TotpCode(right.clone())).await;
    assert_eq!(locked.unwrap_err().code(), Code::ResourceExhausted);
    let other = self::challenge(&service, &account.email).await;
    let locked = complete(&service, &other, pb::complete_mfa_login_request::Code::TotpCode(right.clone())).await;
    assert_eq!(locked.unwrap_err().code(), Code::ResourceExhausted, "a new login buys no new guesses");
    // ...and once the lock has passed, that challenge stays void.
    sqlx::query("DELETE FROM identity.login_throttles").execute(service.db.pool()).await.unwrap();
    let voided = complete(&service, &challenge, pb::complete_mfa_login_request::Code::TotpCode(right)).await;
    assert_eq!(voided.unwrap_err().code(), Code::FailedPrecondition);
    let forged = pb::MfaChallenge { challenge_token: "e30.e30.".into(), ..challenge };
    let forged = complete(&service, &forged, pb::complete_mfa_login_request::Code::TotpCode("123456".into())).await;
    assert_eq!(forged.unwrap_err().code(), Code::Unauthenticated);
    service.stop().await;
}

#[tokio::test]
async fn disabling_needs_password_and_code_and_removes_everything() {
    let service = Service::start().await;
    let account = service.account(DEFAULT_TENANT, "user").await;
    let (_, recovery) = enable_mfa(&service, &account).await;
    let mut mfa = service.mfa_as(&account.tokens.access_token);
    let again = mfa.enroll_totp(pb::EnrollTotpRequest { password: PASSWORD.into(), label: String::new() }).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    let no_code = mfa.disable_mfa(pb::DisableMfaRequest { password: PASSWORD.into(), code: None }).await;
    assert_eq!(no_code.unwrap_err().code(), Code::Unauthenticated);
    mfa.disable_mfa(pb::DisableMfaRequest {
        password: PASSWORD.into(),
        code: Some(pb::disable_mfa_request::Code::RecoveryCode(recovery[3].clone())),
    })
    .await
    .unwrap();
    let status = mfa.get_mfa_status(pb::GetMfaStatusRequest {}).await.unwrap().into_inner();
    assert!(!status.enabled);
    assert_eq!(status.recovery_codes_remaining, 0);
    // Login is one step again.
    service.login(DEFAULT_TENANT, &account.email).await;
    service.stop().await;
}
