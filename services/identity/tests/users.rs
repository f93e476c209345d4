//! User administration over the real service: tenant admins act on their own tenant's users
//! only (another tenant's id is NOT_FOUND), plain users are refused, admins cannot lock
//! themselves out, and suspending or resetting a user ends their sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, Service};
use tonic::Code;

fn users_as(service: &Service, token: &str) -> pb::user_service_client::UserServiceClient<support::Authed> {
    service.users_as(token)
}

#[tokio::test]
async fn tenant_admins_manage_their_own_tenant_only() {
    let service = Service::start().await;
    let (a, b) = (service.tenant().await, service.tenant().await);
    let admin_a = service.account(a, "tenant_admin").await;
    let user_a = service.account(a, "user").await;
    let user_b = service.account(b, "user").await;
    let mut admin = users_as(&service, &admin_a.tokens.access_token);

    // Every call that takes an id: another tenant's user is not found.
    let b_id = user_b.user_id.to_string();
    let calls: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("GetUser", admin.get_user(pb::GetUserRequest { user_id: b_id.clone() }).await.map(|_| ())),
        (
            "UpdateUserRole",
            admin
                .update_user_role(pb::UpdateUserRoleRequest {
                    user_id: b_id.clone(),
                    role: pb::Role::TenantAdmin as i32,
                })
                .await
                .map(|_| ()),
        ),
        (
            "SuspendUser",
            admin
                .suspend_user(pb::SuspendUserRequest { user_id: b_id.clone(), reason: String::new() })
                .await
                .map(|_| ()),
        ),
        (
            "ReactivateUser",
            admin.reactivate_user(pb::ReactivateUserRequest { user_id: b_id.clone() }).await.map(|_| ()),
        ),
        (
            "DeleteUser",
            admin.delete_user(pb::DeleteUserRequest { user_id: b_id.clone(), reason: String::new() }).await.map(|_| ()),
        ),
        (
            "ResetUserMfa",
            admin
                .reset_user_mfa(pb::ResetUserMfaRequest { user_id: b_id.clone(), reason: "lost phone".into() })
                .await
                .map(|_| ()),
        ),
    ];
    for (name, result) in calls {
        assert_eq!(result.unwrap_err().code(), Code::NotFound, "{name}");
    }
    let listing = admin.list_users(pb::ListUsersRequest { tenant_id: b.to_string(), ..Default::default() }).await;
    assert_eq!(listing.unwrap_err().code(), Code::PermissionDenied);

    // A plain user calling an admin method is refused.
    let mut plain = users_as(&service, &user_a.tokens.access_token);
    let refused = plain.list_users(pb::ListUsersRequest::default()).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let refused = plain.get_user(pb::GetUserRequest { user_id: admin_a.user_id.to_string() }).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    // The admin's own tenant: listed, searchable, sortable, paged.
    let listed = admin.list_users(pb::ListUsersRequest::default()).await.unwrap().into_inner().users;
    assert_eq!(listed.len(), 2);
    let found = admin
        .list_users(pb::ListUsersRequest { query: user_a.email[..8].to_uppercase(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(found.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(), [user_a.email.as_str()]);
    let first = admin
        .list_users(pb::ListUsersRequest {
            sort_field: pb::UserSortField::Email as i32,
            page: Some(flatrender_proto::flatrender::common::v1::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let second = admin
        .list_users(pb::ListUsersRequest {
            sort_field: pb::UserSortField::Email as i32,
            page: Some(flatrender_proto::flatrender::common::v1::PageRequest {
                page_size: 1,
                page_token: first.page.unwrap().next_page_token,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut emails = [admin_a.email.clone(), user_a.email.clone()];
    emails.sort();
    assert_eq!([first.users[0].email.clone(), second.users[0].email.clone()], [emails[0].clone(), emails[1].clone()]);

    // No admin locks themselves out, and only platform admins grant PLATFORM_ADMIN.
    let own = admin
        .suspend_user(pb::SuspendUserRequest { user_id: admin_a.user_id.to_string(), reason: String::new() })
        .await;
    assert_eq!(own.unwrap_err().code(), Code::FailedPrecondition);
    let grant = admin
        .update_user_role(pb::UpdateUserRoleRequest {
            user_id: user_a.user_id.to_string(),
            role: pb::Role::PlatformAdmin as i32,
        })
        .await;
    assert_eq!(grant.unwrap_err().code(), Code::PermissionDenied);
    service.stop().await;
}

#[tokio::test]
async fn suspension_ends_sessions_and_login_until_reactivated() {
    let service = Service::start().await;
    let admin = service.account(DEFAULT_TENANT, "tenant_admin").await;
    let user = service.account(DEFAULT_TENANT, "user").await;
    let mut users = users_as(&service, &admin.tokens.access_token);
    let suspended = users
        .suspend_user(pb::SuspendUserRequest { user_id: user.user_id.to_string(), reason: "abuse".into() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(suspended.status, pb::UserStatus::Suspended as i32);
    let refresh = service
        .auth()
        .refresh_token(pb::RefreshTokenRequest { refresh_token: user.tokens.refresh_token.clone() })
        .await;
    assert_eq!(refresh.unwrap_err().code(), Code::Unauthenticated, "its sessions ended");
    let login = service
        .auth()
        .login(pb::LoginRequest {
            email: user.email.clone(),
            password: support::PASSWORD.into(),
            tenant_id: String::new(),
        })
        .await;
    assert_eq!(login.unwrap_err().code(), Code::PermissionDenied);
    users.reactivate_user(pb::ReactivateUserRequest { user_id: user.user_id.to_string() }).await.unwrap();
    service.login(DEFAULT_TENANT, &user.email).await;

    let attempts = users
        .list_login_attempts(pb::ListLoginAttemptsRequest { email: user.email.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    let reasons: Vec<i32> = attempts.iter().map(|a| a.failure_reason).collect();
    assert_eq!(
        reasons,
        [
            pb::LoginFailureReason::Unspecified as i32,
            pb::LoginFailureReason::UserSuspended as i32,
            pb::LoginFailureReason::Unspecified as i32
        ],
        "newest first"
    );

    users
        .delete_user(pb::DeleteUserRequest { user_id: user.user_id.to_string(), reason: "gone".into() })
        .await
        .unwrap();
    let gone = service
        .auth()
        .login(pb::LoginRequest {
            email: user.email.clone(),
            password: support::PASSWORD.into(),
            tenant_id: String::new(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::Unauthenticated, "a deleted account has no password");
    let events = service.events("flatrender.events.v1.UserDeleted").await;
    assert_eq!(events.len(), 1);
    service.stop().await;
}
