//! `TenantService`: platform admins manage tenants; tenant admins read their own tenant and
//! manage its branding; login pages read public branding.

use std::collections::BTreeMap;

use flatrender_kit::auth::{Caller, Role};
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use prost_types::value::Kind;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size};
use crate::error::{IdentityError, Result};
use crate::users::timestamp;
use crate::validate::{self, DEFAULT_TENANT};

type Reply<T> = Result<Response<T>, Status>;

/// Largest settings object, as JSON.
const MAX_SETTINGS_BYTES: usize = 64 * 1024;

struct TenantRow {
    id: Uuid,
    slug: String,
    name: String,
    status: String,
    plan_id: Option<Uuid>,
    contact_email: Option<String>,
    settings: serde_json::Value,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    suspended_at: Option<OffsetDateTime>,
    deleted_at: Option<OffsetDateTime>,
}

from_row!(TenantRow {
    id,
    slug,
    name,
    status,
    plan_id,
    contact_email,
    settings,
    created_at,
    updated_at,
    suspended_at,
    deleted_at
});

const TENANT_COLUMNS: &str =
    "id, slug, name, status, plan_id, contact_email, settings, created_at, updated_at, suspended_at, deleted_at";

impl TenantRow {
    fn to_proto(&self) -> pb::Tenant {
        pb::Tenant {
            id: self.id.to_string(),
            slug: self.slug.clone(),
            name: self.name.clone(),
            status: match self.status.as_str() {
                "active" => pb::TenantStatus::Active,
                "suspended" => pb::TenantStatus::Suspended,
                "deleted" => pb::TenantStatus::Deleted,
                _ => pb::TenantStatus::Unspecified,
            } as i32,
            plan_id: self.plan_id.map(|p| p.to_string()).unwrap_or_default(),
            contact_email: self.contact_email.clone().unwrap_or_default(),
            settings: json_to_struct(&self.settings),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            suspended_at: self.suspended_at.map(timestamp),
            deleted_at: self.deleted_at.map(timestamp),
        }
    }
}

struct BrandingRow {
    tenant_id: Uuid,
    display_name: Option<String>,
    logo_file_id: Option<Uuid>,
    favicon_file_id: Option<Uuid>,
    primary_color: Option<String>,
    secondary_color: Option<String>,
    accent_color: Option<String>,
    custom_domain: Option<String>,
    support_email: Option<String>,
    support_url: Option<String>,
    email_from_name: Option<String>,
    email_from_address: Option<String>,
    hide_powered_by: bool,
    custom_css: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

from_row!(BrandingRow {
    tenant_id,
    display_name,
    logo_file_id,
    favicon_file_id,
    primary_color,
    secondary_color,
    accent_color,
    custom_domain,
    support_email,
    support_url,
    email_from_name,
    email_from_address,
    hide_powered_by,
    custom_css,
    created_at,
    updated_at
});

const BRANDING_COLUMNS: &str = "tenant_id, display_name, logo_file_id, favicon_file_id, primary_color, secondary_color,
    accent_color, custom_domain, support_email, support_url, email_from_name, email_from_address, hide_powered_by,
    custom_css, created_at, updated_at";

impl BrandingRow {
    fn to_proto(&self) -> pb::Branding {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        pb::Branding {
            tenant_id: self.tenant_id.to_string(),
            display_name: text(&self.display_name),
            logo_file_id: self.logo_file_id.map(|f| f.to_string()).unwrap_or_default(),
            favicon_file_id: self.favicon_file_id.map(|f| f.to_string()).unwrap_or_default(),
            primary_color: text(&self.primary_color),
            secondary_color: text(&self.secondary_color),
            accent_color: text(&self.accent_color),
            custom_domain: text(&self.custom_domain),
            support_email: text(&self.support_email),
            support_url: text(&self.support_url),
            email_from_name: text(&self.email_from_name),
            email_from_address: text(&self.email_from_address),
            hide_powered_by: self.hide_powered_by,
            custom_css: text(&self.custom_css),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

/// A protobuf Struct as a JSON object.
fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

/// A stored JSON object as a protobuf Struct.
fn json_to_struct(value: &serde_json::Value) -> Option<prost_types::Struct> {
    match value {
        serde_json::Value::Object(map) => Some(prost_types::Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect::<BTreeMap<_, _>>(),
        }),
        _ => None,
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(value).unwrap_or_default()),
    };
    prost_types::Value { kind: Some(kind) }
}

fn settings(value: Option<&prost_types::Struct>) -> Result<serde_json::Value> {
    let json = value.map_or_else(|| serde_json::json!({}), struct_to_json);
    if serde_json::to_vec(&json).map_or(usize::MAX, |b| b.len()) > MAX_SETTINGS_BYTES {
        return Err(IdentityError::invalid("settings", "must be at most 64 KiB as JSON"));
    }
    Ok(json)
}

fn slug(value: &str) -> Result<String> {
    let ok = (1..=63).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(IdentityError::invalid("slug", "must be 1 to 63 of a-z, 0-9 and -, not starting or ending with -"))
    }
}

fn optional_email(field: &'static str, value: &str) -> Result<Option<String>> {
    if value.is_empty() { Ok(None) } else { validate::email(field, value).map(Some) }
}

fn optional_text(field: &'static str, value: &str, max: usize) -> Result<Option<String>> {
    let value = value.trim();
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(IdentityError::invalid(field, format!("must be at most {max} printable characters")));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

fn color(field: &'static str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    let ok = value.len() == 7 && value.starts_with('#') && value[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok { Ok(Some(value.to_owned())) } else { Err(IdentityError::invalid(field, "must be a colour like #1A2B3C")) }
}

fn domain(value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    let labels: Vec<&str> = value.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let tld_ok = labels.last().is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_lowercase()));
    if labels.len() >= 2 && labels.iter().all(label_ok) && tld_ok && value.len() <= 253 {
        Ok(Some(value.to_owned()))
    } else {
        Err(IdentityError::invalid(
            "branding.custom_domain",
            "must be a lower-case host name such as video.example.com",
        ))
    }
}

fn url(value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    let ok = (value.starts_with("https://") || value.starts_with("http://"))
        && value.len() <= 2048
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(Some(value.to_owned()))
    } else {
        Err(IdentityError::invalid("branding.support_url", "must be an http(s) URL of at most 2,048 characters"))
    }
}

fn platform_admin<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = super::user(request)?;
    caller.require(Role::PlatformAdmin)?;
    Ok(caller)
}

async fn tenant_row(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<TenantRow> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {TENANT_COLUMNS} FROM identity.tenants WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(IdentityError::NotFound("tenant"))
}

async fn branding_row(conn: &mut PgConnection, tenant: Uuid) -> Result<BrandingRow> {
    // Every tenant has a branding row from its creation; the default tenant gets one on demand.
    sqlx::query("INSERT INTO identity.tenant_branding (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as::<_, BrandingRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {BRANDING_COLUMNS} FROM identity.tenant_branding WHERE tenant_id = $1"
    )))
    .bind(tenant)
    .fetch_one(&mut *conn)
    .await?)
}

fn tenant_event(tenant: Uuid) -> EventMeta<'static> {
    EventMeta {
        source: "identity",
        aggregate_type: "tenant",
        aggregate_id: tenant.to_string(),
        tenant_id: Some(tenant),
    }
}

/// Maps the unique and foreign keys a tenant write can trip to the caller's mistake.
fn write_error(err: sqlx::Error) -> IdentityError {
    if flatrender_kit::db::is_unique_violation(&err, "tenants_idempotency_key") {
        IdentityError::Aborted("a request with this idempotency key is being handled; retry it".into())
    } else if flatrender_kit::db::is_unique_violation(&err, "tenants_slug_key") {
        IdentityError::AlreadyExists("a tenant with this slug exists".into())
    } else if flatrender_kit::db::is_unique_violation(&err, "tenant_branding_custom_domain_key") {
        IdentityError::AlreadyExists("another tenant uses this custom domain".into())
    } else if matches!(&err, sqlx::Error::Database(db) if db.constraint() == Some("tenants_plan_id_fkey")) {
        IdentityError::invalid("plan_id", "names no plan")
    } else {
        err.into()
    }
}

/// Writes the fields of `branding` named in `paths` (every field when `paths` is `None`).
async fn write_branding(
    conn: &mut PgConnection,
    tenant: Uuid,
    branding: &pb::Branding,
    paths: Option<&[String]>,
) -> Result<()> {
    let all = [
        "display_name",
        "logo_file_id",
        "favicon_file_id",
        "primary_color",
        "secondary_color",
        "accent_color",
        "custom_domain",
        "support_email",
        "support_url",
        "email_from_name",
        "email_from_address",
        "hide_powered_by",
        "custom_css",
    ];
    let paths: Vec<&str> = match paths {
        Some(paths) => paths.iter().map(String::as_str).collect(),
        None => all.to_vec(),
    };
    branding_row(conn, tenant).await?;
    for path in paths {
        let statement =
            |column: &str| format!("UPDATE identity.tenant_branding SET {column} = $1 WHERE tenant_id = $2");
        let query = match path {
            "display_name" => sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(optional_text(
                "branding.display_name",
                &branding.display_name,
                200,
            )?),
            "logo_file_id" | "favicon_file_id" => {
                let field = if path == "logo_file_id" { "branding.logo_file_id" } else { "branding.favicon_file_id" };
                let value = if path == "logo_file_id" { &branding.logo_file_id } else { &branding.favicon_file_id };
                sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(validate::optional_uuid(field, value)?)
            }
            "primary_color" => sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                .bind(color("branding.primary_color", &branding.primary_color)?),
            "secondary_color" => sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                .bind(color("branding.secondary_color", &branding.secondary_color)?),
            "accent_color" => sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                .bind(color("branding.accent_color", &branding.accent_color)?),
            "custom_domain" => sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(domain(&branding.custom_domain)?),
            "support_email" => sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                .bind(optional_email("branding.support_email", &branding.support_email)?),
            "support_url" => sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(url(&branding.support_url)?),
            "email_from_name" => sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(optional_text(
                "branding.email_from_name",
                &branding.email_from_name,
                100,
            )?),
            "email_from_address" => sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                .bind(optional_email("branding.email_from_address", &branding.email_from_address)?),
            "hide_powered_by" => sqlx::query(sqlx::AssertSqlSafe(statement(path))).bind(branding.hide_powered_by),
            "custom_css" => {
                if branding.custom_css.len() > 65_536 {
                    return Err(IdentityError::invalid("branding.custom_css", "must be at most 65,536 bytes"));
                }
                sqlx::query(sqlx::AssertSqlSafe(statement(path)))
                    .bind((!branding.custom_css.is_empty()).then(|| branding.custom_css.clone()))
            }
            other => {
                return Err(IdentityError::invalid(
                    "update_mask",
                    format!("`{other}` is not a branding field you can change"),
                ));
            }
        };
        query.bind(tenant).execute(&mut *conn).await.map_err(write_error)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for IdentityApi {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Reply<pb::CreateTenantResponse> {
        let caller = platform_admin(&request)?;
        let request = request.into_inner();
        let slug = slug(&request.slug)?;
        let name = validate::display_name("name", &request.name)?;
        let contact = optional_email("contact_email", &request.contact_email)?;
        let plan = validate::optional_uuid("plan_id", &request.plan_id)?;
        let settings = settings(request.settings.as_ref())?;
        let key = validate::idempotency_key(&request.idempotency_key).map_err(Status::from)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        if let Some(key) = &key {
            let existing: Option<(Uuid, String)> =
                sqlx::query_as("SELECT id, slug FROM identity.tenants WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(IdentityError::from)?;
            if let Some((id, existing_slug)) = existing {
                if existing_slug != slug {
                    return Err(
                        IdentityError::AlreadyExists("this idempotency key created another tenant".into()).into()
                    );
                }
                let tenant = tenant_row(&mut tx, id, false).await?;
                let branding = branding_row(&mut tx, id).await?;
                tx.commit().await.map_err(IdentityError::from)?;
                return Ok(Response::new(pb::CreateTenantResponse {
                    tenant: Some(tenant.to_proto()),
                    branding: Some(branding.to_proto()),
                }));
            }
        }
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO identity.tenants (slug, name, contact_email, plan_id, settings, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&slug)
        .bind(&name)
        .bind(&contact)
        .bind(plan)
        .bind(&settings)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(write_error)?;
        write_branding(&mut tx, id, &request.branding.unwrap_or_default(), None).await?;
        outbox::publish(
            &mut tx,
            tenant_event(id),
            &events::TenantCreated {
                tenant_id: id.to_string(),
                occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                slug: slug.clone(),
                name: name.clone(),
                plan_id: plan.map(|p| p.to_string()).unwrap_or_default(),
                created_by_user_id: caller.user_id.to_string(),
            },
        )
        .await
        .map_err(IdentityError::from)?;
        let tenant = tenant_row(&mut tx, id, false).await?;
        let branding = branding_row(&mut tx, id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant.to_proto()),
            branding: Some(branding.to_proto()),
        }))
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Reply<pb::GetTenantResponse> {
        let caller = super::user(&request)?;
        caller.require(Role::TenantAdmin)?;
        let tenant = super::tenant_scope(&caller, &request.get_ref().tenant_id, super::Foreign::Hidden("tenant"))?;
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let row = tenant_row(&mut conn, tenant, false).await?;
        Ok(Response::new(pb::GetTenantResponse { tenant: Some(row.to_proto()) }))
    }

    async fn list_tenants(&self, request: Request<pb::ListTenantsRequest>) -> Reply<pb::ListTenantsResponse> {
        platform_admin(&request)?;
        let request = request.into_inner();
        let limit = page_size(request.page.as_ref())?;
        let query = request.query.trim().to_lowercase();
        if query.chars().count() > 100 {
            return Err(IdentityError::invalid("query", "must be at most 100 characters").into());
        }
        let statuses: Vec<&str> =
            match pb::TenantStatus::try_from(request.status).unwrap_or(pb::TenantStatus::Unspecified) {
                pb::TenantStatus::Unspecified => vec!["active", "suspended"],
                pb::TenantStatus::Active => vec!["active"],
                pb::TenantStatus::Suspended => vec!["suspended"],
                pb::TenantStatus::Deleted => vec!["deleted"],
            };
        let plan = validate::optional_uuid("plan_id", &request.plan_id)?;
        let paging = super::paging::NewestFirst::new(&[&"tenants", &query, &statuses, &plan]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let pattern = validate::like_pattern(&query);
        let mut rows = sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM identity.tenants t LEFT JOIN identity.tenant_branding b ON b.tenant_id = t.id
             WHERE t.status = ANY($1) AND ($2::uuid IS NULL OR t.plan_id = $2)
               AND ($3 = '%%' OR lower(t.name) LIKE $3 OR t.slug LIKE $3 OR coalesce(b.custom_domain, '') LIKE $3)
               AND ($4::timestamptz IS NULL OR (t.created_at, t.id) < ($4, $5))
             ORDER BY t.created_at DESC, t.id DESC LIMIT $6",
            TENANT_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        )))
        .bind(&statuses)
        .bind(plan)
        .bind(&pattern)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: rows.iter().map(TenantRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn update_tenant(&self, request: Request<pb::UpdateTenantRequest>) -> Reply<pb::UpdateTenantResponse> {
        platform_admin(&request)?;
        let request = request.into_inner();
        let given = request.tenant.unwrap_or_default();
        let id = validate::uuid("tenant.id", &given.id)?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(IdentityError::invalid("update_mask", "name at least one field to change").into());
        }
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        tenant_row(&mut tx, id, true).await?;
        for path in &paths {
            let statement = |column: &str| format!("UPDATE identity.tenants SET {column} = $1 WHERE id = $2");
            let query = match path.as_str() {
                "slug" => sqlx::query(sqlx::AssertSqlSafe(statement("slug"))).bind(slug(&given.slug)?),
                "name" => sqlx::query(sqlx::AssertSqlSafe(statement("name")))
                    .bind(validate::display_name("tenant.name", &given.name)?),
                "contact_email" => sqlx::query(sqlx::AssertSqlSafe(statement("contact_email")))
                    .bind(optional_email("tenant.contact_email", &given.contact_email)?),
                "plan_id" => sqlx::query(sqlx::AssertSqlSafe(statement("plan_id")))
                    .bind(validate::optional_uuid("tenant.plan_id", &given.plan_id)?),
                "settings" => {
                    sqlx::query(sqlx::AssertSqlSafe(statement("settings"))).bind(settings(given.settings.as_ref())?)
                }
                other => {
                    return Err(IdentityError::invalid(
                        "update_mask",
                        format!("`{other}` cannot be changed here; use slug, name, contact_email, plan_id or settings"),
                    )
                    .into());
                }
            };
            query.bind(id).execute(&mut *tx).await.map_err(write_error)?;
        }
        let row = tenant_row(&mut tx, id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::UpdateTenantResponse { tenant: Some(row.to_proto()) }))
    }

    async fn suspend_tenant(&self, request: Request<pb::SuspendTenantRequest>) -> Reply<pb::SuspendTenantResponse> {
        let caller = platform_admin(&request)?;
        let request = request.into_inner();
        let id = validate::uuid("tenant_id", &request.tenant_id)?;
        let why = validate::reason("reason", &request.reason, true)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = tenant_row(&mut tx, id, true).await?;
        match row.status.as_str() {
            _ if id == DEFAULT_TENANT => {
                return Err(IdentityError::FailedPrecondition("the default tenant cannot be suspended".into()).into());
            }
            "deleted" => return Err(IdentityError::FailedPrecondition("the tenant was deleted".into()).into()),
            "suspended" => {}
            _ => {
                sqlx::query("UPDATE identity.tenants SET status = 'suspended', suspended_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(IdentityError::from)?;
                revoke_tenant_sessions(&mut tx, id).await?;
                outbox::publish(
                    &mut tx,
                    tenant_event(id),
                    &events::TenantSuspended {
                        tenant_id: id.to_string(),
                        occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                        by_user_id: caller.user_id.to_string(),
                        reason: why,
                    },
                )
                .await
                .map_err(IdentityError::from)?;
            }
        }
        let row = tenant_row(&mut tx, id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::SuspendTenantResponse { tenant: Some(row.to_proto()) }))
    }

    async fn reactivate_tenant(
        &self,
        request: Request<pb::ReactivateTenantRequest>,
    ) -> Reply<pb::ReactivateTenantResponse> {
        let caller = platform_admin(&request)?;
        let id = validate::uuid("tenant_id", &request.get_ref().tenant_id)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = tenant_row(&mut tx, id, true).await?;
        match row.status.as_str() {
            "deleted" => return Err(IdentityError::FailedPrecondition("the tenant was deleted".into()).into()),
            "active" => {}
            _ => {
                sqlx::query("UPDATE identity.tenants SET status = 'active', suspended_at = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(IdentityError::from)?;
                outbox::publish(
                    &mut tx,
                    tenant_event(id),
                    &events::TenantReactivated {
                        tenant_id: id.to_string(),
                        occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                        by_user_id: caller.user_id.to_string(),
                    },
                )
                .await
                .map_err(IdentityError::from)?;
            }
        }
        let row = tenant_row(&mut tx, id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::ReactivateTenantResponse { tenant: Some(row.to_proto()) }))
    }

    async fn delete_tenant(&self, request: Request<pb::DeleteTenantRequest>) -> Reply<pb::DeleteTenantResponse> {
        let caller = platform_admin(&request)?;
        let request = request.into_inner();
        let id = validate::uuid("tenant_id", &request.tenant_id)?;
        let why = validate::reason("reason", &request.reason, true)?;
        if id == DEFAULT_TENANT {
            return Err(IdentityError::FailedPrecondition("the default tenant cannot be deleted".into()).into());
        }
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = tenant_row(&mut tx, id, true).await?;
        if row.status != "deleted" {
            sqlx::query("UPDATE identity.tenants SET status = 'deleted', deleted_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(IdentityError::from)?;
            revoke_tenant_sessions(&mut tx, id).await?;
            sqlx::query(
                "UPDATE identity.tenant_api_keys SET revoked_at = now() WHERE tenant_id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
            outbox::publish(
                &mut tx,
                tenant_event(id),
                &events::TenantDeleted {
                    tenant_id: id.to_string(),
                    occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                    slug: row.slug.clone(),
                    by_user_id: caller.user_id.to_string(),
                    reason: why,
                },
            )
            .await
            .map_err(IdentityError::from)?;
        }
        let row = tenant_row(&mut tx, id, false).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::DeleteTenantResponse { tenant: Some(row.to_proto()) }))
    }

    async fn get_branding(&self, request: Request<pb::GetBrandingRequest>) -> Reply<pb::GetBrandingResponse> {
        let caller = super::user(&request)?;
        caller.require(Role::TenantAdmin)?;
        let tenant = super::tenant_scope(&caller, &request.get_ref().tenant_id, super::Foreign::Hidden("tenant"))?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        tenant_row(&mut tx, tenant, false).await?;
        let branding = branding_row(&mut tx, tenant).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::GetBrandingResponse { branding: Some(branding.to_proto()) }))
    }

    async fn update_branding(&self, request: Request<pb::UpdateBrandingRequest>) -> Reply<pb::UpdateBrandingResponse> {
        let caller = super::user(&request)?;
        caller.require(Role::TenantAdmin)?;
        let request = request.into_inner();
        let given = request.branding.unwrap_or_default();
        let tenant = super::tenant_scope(&caller, &given.tenant_id, super::Foreign::Hidden("tenant"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(IdentityError::invalid("update_mask", "name at least one field to change").into());
        }
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        tenant_row(&mut tx, tenant, true).await?;
        write_branding(&mut tx, tenant, &given, Some(&paths)).await?;
        let branding = branding_row(&mut tx, tenant).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::UpdateBrandingResponse { branding: Some(branding.to_proto()) }))
    }

    async fn get_public_branding(
        &self,
        request: Request<pb::GetPublicBrandingRequest>,
    ) -> Reply<pb::GetPublicBrandingResponse> {
        let found: Option<Uuid> = match &request.get_ref().lookup {
            Some(pb::get_public_branding_request::Lookup::Host(host)) => sqlx::query_scalar(
                "SELECT b.tenant_id FROM identity.tenant_branding b JOIN identity.tenants t ON t.id = b.tenant_id
                     WHERE b.custom_domain = lower($1) AND t.status <> 'deleted'",
            )
            .bind(host.trim())
            .fetch_optional(&self.identity.pool)
            .await
            .map_err(IdentityError::from)?,
            Some(pb::get_public_branding_request::Lookup::TenantSlug(slug)) => {
                sqlx::query_scalar("SELECT id FROM identity.tenants WHERE slug = $1 AND status <> 'deleted'")
                    .bind(slug.trim())
                    .fetch_optional(&self.identity.pool)
                    .await
                    .map_err(IdentityError::from)?
            }
            None => None,
        };
        // Unknown hosts and slugs get the default tenant: nothing here tells them apart.
        let tenant = found.unwrap_or(DEFAULT_TENANT);
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let row = tenant_row(&mut tx, tenant, false).await?;
        let branding = branding_row(&mut tx, tenant).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::GetPublicBrandingResponse {
            tenant_id: tenant.to_string(),
            tenant_name: branding.display_name.clone().unwrap_or_else(|| row.name.clone()),
            branding: Some(branding.to_proto()),
            suspended: row.status == "suspended",
        }))
    }
}

/// Ends every session of a tenant's users at once.
async fn revoke_tenant_sessions(conn: &mut PgConnection, tenant: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE identity.sessions SET revoked_at = now(), revoked_reason = 'admin'
         WHERE tenant_id = $1 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
