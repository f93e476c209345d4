//! Tenants and branding over the real service: platform admins manage tenants, tenant admins
//! their own branding; suspension locks a tenant out at once; login pages read public branding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, Service};
use tonic::Code;

fn tenants_as(service: &Service, token: &str) -> pb::tenant_service_client::TenantServiceClient<support::Authed> {
    pb::tenant_service_client::TenantServiceClient::new(service.channel_as(token))
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

#[tokio::test]
async fn platform_admins_create_tenants_and_tenant_admins_brand_them() {
    let service = Service::start().await;
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let mut tenants = tenants_as(&service, &root.tokens.access_token);
    let created = tenants
        .create_tenant(pb::CreateTenantRequest {
            slug: "acme".into(),
            name: "Acme Video".into(),
            contact_email: "Ops@Acme.example".into(),
            branding: Some(pb::Branding {
                primary_color: "#112233".into(),
                custom_domain: "video.acme.example".into(),
                ..Default::default()
            }),
            settings: Some(prost_types::Struct {
                fields: [(
                    "beta".to_owned(),
                    prost_types::Value { kind: Some(prost_types::value::Kind::BoolValue(true)) },
                )]
                .into(),
            }),
            idempotency_key: "acme-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tenant = created.tenant.unwrap();
    assert_eq!((tenant.slug.as_str(), tenant.contact_email.as_str()), ("acme", "ops@acme.example"));
    assert_eq!(created.branding.unwrap().custom_domain, "video.acme.example");
    assert!(tenant.settings.unwrap().fields.contains_key("beta"));
    let retry = tenants
        .create_tenant(pb::CreateTenantRequest {
            slug: "acme".into(),
            name: "Acme Video".into(),
            idempotency_key: "acme-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(retry.into_inner().tenant.unwrap().id, tenant.id, "a retry returns the same tenant");
    let taken = tenants
        .create_tenant(pb::CreateTenantRequest { slug: "acme".into(), name: "Other".into(), ..Default::default() })
        .await;
    assert_eq!(taken.unwrap_err().code(), Code::AlreadyExists);
    let bad = tenants
        .create_tenant(pb::CreateTenantRequest { slug: "-bad".into(), name: "Bad".into(), ..Default::default() })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);

    // The tenant's admin reads and brands their own tenant, and nothing else.
    let acme: uuid::Uuid = tenant.id.parse().unwrap();
    let admin = service.account(acme, "tenant_admin").await;
    let mut own = tenants_as(&service, &admin.tokens.access_token);
    assert_eq!(
        own.get_tenant(pb::GetTenantRequest::default()).await.unwrap().into_inner().tenant.unwrap().id,
        tenant.id
    );
    let foreign = own.get_tenant(pb::GetTenantRequest { tenant_id: DEFAULT_TENANT.to_string() }).await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
    let listing = own.list_tenants(pb::ListTenantsRequest::default()).await;
    assert_eq!(listing.unwrap_err().code(), Code::PermissionDenied);
    let branded = own
        .update_branding(pb::UpdateBrandingRequest {
            branding: Some(pb::Branding {
                display_name: "Acme".into(),
                accent_color: "#ABCDEF".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "accent_color"]),
        })
        .await
        .unwrap()
        .into_inner()
        .branding
        .unwrap();
    assert_eq!(
        (branded.display_name.as_str(), branded.accent_color.as_str(), branded.primary_color.as_str()),
        ("Acme", "#ABCDEF", "#112233")
    );
    let wrong = own
        .update_branding(pb::UpdateBrandingRequest {
            branding: Some(pb::Branding { primary_color: "red".into(), ..Default::default() }),
            update_mask: mask(&["primary_color"]),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert!(wrong.message().starts_with("branding.primary_color"), "{}", wrong.message());

    // Login pages find the tenant by host or slug; unknown ones get the default tenant.
    let mut public = pb::tenant_service_client::TenantServiceClient::new(service.channel_as(""));
    use pb::get_public_branding_request::Lookup;
    let by_host = public
        .get_public_branding(pb::GetPublicBrandingRequest { lookup: Some(Lookup::Host("Video.Acme.Example".into())) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((by_host.tenant_id.as_str(), by_host.tenant_name.as_str()), (tenant.id.as_str(), "Acme"));
    let unknown = public
        .get_public_branding(pb::GetPublicBrandingRequest { lookup: Some(Lookup::TenantSlug("nobody".into())) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.tenant_id, DEFAULT_TENANT.to_string());
    service.stop().await;
}

#[tokio::test]
async fn a_suspended_tenant_is_locked_out_at_once() {
    let service = Service::start().await;
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let tenant = service.tenant().await;
    let user = service.account(tenant, "user").await;
    let mut tenants = tenants_as(&service, &root.tokens.access_token);
    let plain = tenants_as(&service, &user.tokens.access_token)
        .suspend_tenant(pb::SuspendTenantRequest { tenant_id: tenant.to_string(), reason: "unpaid".into() })
        .await;
    assert_eq!(plain.unwrap_err().code(), Code::PermissionDenied);
    let root_tenant = tenants
        .suspend_tenant(pb::SuspendTenantRequest { tenant_id: DEFAULT_TENANT.to_string(), reason: "no".into() })
        .await;
    assert_eq!(root_tenant.unwrap_err().code(), Code::FailedPrecondition);
    let no_reason =
        tenants.suspend_tenant(pb::SuspendTenantRequest { tenant_id: tenant.to_string(), reason: String::new() }).await;
    assert_eq!(no_reason.unwrap_err().code(), Code::InvalidArgument);
    tenants
        .suspend_tenant(pb::SuspendTenantRequest { tenant_id: tenant.to_string(), reason: "unpaid".into() })
        .await
        .unwrap();

    let refresh = service
        .auth()
        .refresh_token(pb::RefreshTokenRequest { refresh_token: user.tokens.refresh_token.clone() })
        .await;
    assert_eq!(refresh.unwrap_err().code(), Code::Unauthenticated);
    let login = service
        .auth()
        .login(pb::LoginRequest {
            email: user.email.clone(),
            password: support::PASSWORD.into(),
            tenant_id: tenant.to_string(),
        })
        .await;
    assert_eq!(login.unwrap_err().code(), Code::PermissionDenied);

    tenants.reactivate_tenant(pb::ReactivateTenantRequest { tenant_id: tenant.to_string() }).await.unwrap();
    service.login(tenant, &user.email).await;
    let deleted = tenants
        .delete_tenant(pb::DeleteTenantRequest { tenant_id: tenant.to_string(), reason: "closed".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.tenant.unwrap().status, pb::TenantStatus::Deleted as i32);
    let back = tenants.reactivate_tenant(pb::ReactivateTenantRequest { tenant_id: tenant.to_string() }).await;
    assert_eq!(back.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(service.events("flatrender.events.v1.TenantSuspended").await.len(), 1);
    assert_eq!(service.events("flatrender.events.v1.TenantDeleted").await.len(), 1);
    service.stop().await;
}
