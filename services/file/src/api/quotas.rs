//! Quotas and their limits (`QuotaService`).
//!
//! - GetQuota: users their own; tenant admins and services any user's of the tenant (services
//!   name the tenant) and the tenant-wide quota; platform admins any tenant's. Rows are created
//!   with the configured defaults the first time they are asked for.
//! - ListQuotas: tenant admins their users' quotas; platform admins also every tenant's (an
//!   empty `tenant_id`), and tenant-wide quotas with `tenant_wide`. The usage ratio is
//!   `used / limit`; a limit of 0 counts as 1 byte, so any usage of a zero limit sorts first.
//! - SetQuotaLimit: an override (source `admin`). Clearing it (no `limit_bytes`) goes back to
//!   the configured default (source `default`): an override replaced the plan code, so the plan's
//!   limit is not known any more; the next `SubscriptionChanged` or `PlanUpdated` event for the
//!   quota's plan sets it again (see [`plan_limits`](crate::plan_limits)). Clearing a limit that
//!   is not an override changes nothing.
//!
//! Users asking for another user's quota, or any admin call, get PERMISSION_DENIED; another
//! tenant (for anyone but platform admins and services) is NOT_FOUND.

use flatrender_proto::flatrender::common::v1 as common;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::{PgTransaction, Row};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{QUOTA_COLUMNS, QuotaRecord, QuotaScope};
use crate::plan_limits::{self, MAX_LIMIT_BYTES};
use crate::{page, validate};

#[tonic::async_trait]
impl pb::quota_service_server::QuotaService for FileApi {
    async fn get_quota(&self, request: Request<pb::GetQuotaRequest>) -> Result<Response<pb::GetQuotaResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.get_quota_as(actor, request.into_inner()).await?))
    }

    async fn list_quotas(
        &self,
        request: Request<pb::ListQuotasRequest>,
    ) -> Result<Response<pb::ListQuotasResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.list_quotas_as(actor, request.into_inner()).await?))
    }

    async fn set_quota_limit(
        &self,
        request: Request<pb::SetQuotaLimitRequest>,
    ) -> Result<Response<pb::SetQuotaLimitResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.set_quota_limit_as(actor, request.into_inner()).await?))
    }
}

impl FileApi {
    async fn get_quota_as(&self, actor: Actor, request: pb::GetQuotaRequest) -> Result<pb::GetQuotaResponse> {
        let tenant = actor.tenant("tenant_id", &request.tenant_id)?;
        let (pool, ledger) = (&self.state.pool, &self.state.ledger);
        let tenant_scope = QuotaScope { tenant_id: tenant, user_id: None };
        if request.tenant_wide {
            if matches!(actor, Actor::User { .. }) {
                return Err(FileError::PermissionDenied(
                    "only admins and services may see the tenant-wide quota".into(),
                ));
            }
            let quota = ledger.get(pool, tenant_scope).await?;
            return Ok(pb::GetQuotaResponse { quota: Some(quota.to_proto()), tenant_quota: None });
        }
        let user = match (actor, validate::optional_id("user_id", &request.user_id)?) {
            (Actor::User { user, .. }, Some(named)) if named != user => {
                return Err(FileError::PermissionDenied("users may see only their own quota".into()));
            }
            (_, Some(named)) => named,
            (Actor::Service(_), None) => {
                return Err(FileError::invalid("user_id", "is required with a service credential"));
            }
            (_, None) => actor.user_id().unwrap_or_default(),
        };
        let tenant_quota = ledger.get(pool, tenant_scope).await?;
        let quota = ledger.get(pool, QuotaScope { tenant_id: tenant, user_id: Some(user) }).await?;
        Ok(pb::GetQuotaResponse { quota: Some(quota.to_proto()), tenant_quota: Some(tenant_quota.to_proto()) })
    }

    async fn list_quotas_as(&self, actor: Actor, request: pb::ListQuotasRequest) -> Result<pb::ListQuotasResponse> {
        let tenant = match actor {
            Actor::PlatformAdmin { .. } => validate::optional_id("tenant_id", &request.tenant_id)?,
            Actor::TenantAdmin { .. } if request.tenant_wide => {
                return Err(FileError::PermissionDenied("only platform admins list tenant-wide quotas".into()));
            }
            Actor::TenantAdmin { .. } => Some(actor.tenant("tenant_id", &request.tenant_id)?),
            Actor::User { .. } | Actor::Service(_) => {
                return Err(FileError::PermissionDenied("only tenant admins and platform admins list quotas".into()));
            }
        };
        if !(0.0..=1.0).contains(&request.min_usage_ratio) {
            return Err(FileError::invalid("min_usage_ratio", "must be between 0.0 and 1.0"));
        }
        let sort = pb::QuotaSortField::try_from(request.sort_field)
            .map_err(|_| FileError::invalid("sort_field", "is not a quota sort field"))?;
        let page_request = request.page.unwrap_or_default();
        let size = validate::page_size("page.page_size", page_request.page_size)?;
        let print =
            page::fingerprint(&[&"quotas", &tenant, &request.tenant_wide, &request.min_usage_ratio.to_bits(), &sort]);
        let after: Option<QuotaKey> = page::decode("page.page_token", &print, &page_request.page_token)?;

        let (column, cast) = match sort {
            pb::QuotaSortField::Unspecified => ("ratio", "float8"),
            pb::QuotaSortField::UsedBytes => ("used_bytes", "bigint"),
            pb::QuotaSortField::FileCount => ("file_count", "bigint"),
        };
        let sql = format!(
            "SELECT {QUOTA_COLUMNS}, ratio FROM (
                 SELECT *, used_bytes::float8 / GREATEST(limit_bytes, 1) AS ratio FROM file_mgr.quotas) q
              WHERE ($1::uuid IS NULL OR tenant_id = $1) AND (user_id IS NULL) = $2 AND ratio >= $3
                AND ($5::uuid IS NULL OR {column} < $4::{cast} OR ({column} = $4::{cast} AND id > $5))
              ORDER BY {column} DESC, id
              LIMIT $6"
        );
        let query =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(request.tenant_wide).bind(request.min_usage_ratio);
        let query = match sort {
            pb::QuotaSortField::Unspecified => query.bind(after.as_ref().map(|key| key.ratio)),
            pb::QuotaSortField::UsedBytes | pb::QuotaSortField::FileCount => {
                query.bind(after.as_ref().map(|key| key.count))
            }
        };
        let rows = query.bind(after.as_ref().map(|key| key.id)).bind(size + 1).fetch_all(&self.state.pool).await?;

        let more = rows.len() > usize::try_from(size).unwrap_or(usize::MAX);
        let rows = &rows[..rows.len().min(usize::try_from(size).unwrap_or(usize::MAX))];
        let records = rows.iter().map(QuotaRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next_page_token = match (more, rows.last(), records.last()) {
            (true, Some(row), Some(last)) => {
                let count = if sort == pb::QuotaSortField::FileCount { last.file_count } else { last.used_bytes };
                let key = QuotaKey {
                    ratio: row.try_get("ratio")?,
                    count: i64::try_from(count).unwrap_or(i64::MAX),
                    id: last.id,
                };
                page::encode(&print, &key)
            }
            _ => String::new(),
        };
        let quotas = records.iter().map(QuotaRecord::to_proto).collect();
        Ok(pb::ListQuotasResponse { quotas, page: Some(common::PageResponse { next_page_token }) })
    }

    async fn set_quota_limit_as(
        &self,
        actor: Actor,
        request: pb::SetQuotaLimitRequest,
    ) -> Result<pb::SetQuotaLimitResponse> {
        if !matches!(actor, Actor::TenantAdmin { .. } | Actor::PlatformAdmin { .. }) {
            return Err(FileError::PermissionDenied("only tenant admins and platform admins set quota limits".into()));
        }
        let tenant = actor.tenant("tenant_id", &request.tenant_id)?;
        let user = if request.tenant_wide {
            if !matches!(actor, Actor::PlatformAdmin { .. }) {
                return Err(FileError::PermissionDenied("only platform admins set a tenant-wide limit".into()));
            }
            if !request.user_id.is_empty() {
                return Err(FileError::invalid("user_id", "must be empty with tenant_wide"));
            }
            None
        } else {
            validate::optional_id("user_id", &request.user_id)?.or(actor.user_id())
        };
        let limit = match request.limit_bytes {
            Some(bytes) if bytes > MAX_LIMIT_BYTES => {
                return Err(FileError::invalid("limit_bytes", format!("must be at most {MAX_LIMIT_BYTES}")));
            }
            Some(bytes) => Some(plan_limits::capped(bytes)),
            None => None,
        };

        let mut tx = self.state.pool.begin().await?;
        // Tenant row first, then the user's: the order every quota writer locks them in.
        let tenant_quota = self.lock_quota(&mut tx, QuotaScope { tenant_id: tenant, user_id: None }).await?;
        let target = match user {
            Some(user) => self.lock_quota(&mut tx, QuotaScope { tenant_id: tenant, user_id: Some(user) }).await?,
            None => tenant_quota.clone(),
        };
        if let (Actor::TenantAdmin { .. }, Some(limit)) = (actor, limit)
            && u64::try_from(limit).unwrap_or(u64::MAX) > tenant_quota.limit_bytes
        {
            return Err(FileError::FailedPrecondition(format!(
                "limit_bytes: {limit} is above the tenant's own limit of {} bytes",
                tenant_quota.limit_bytes
            )));
        }
        match limit {
            Some(limit) => {
                sqlx::query(
                    "UPDATE file_mgr.quotas SET limit_bytes = $2, limit_source = 'admin', plan_code = NULL WHERE id = $1",
                )
                .bind(target.id)
                .bind(limit)
                .execute(&mut *tx)
                .await?;
            }
            None if target.limit_source == "admin" => {
                let default = if target.user_id.is_some() {
                    self.state.settings.default_user_quota_bytes
                } else {
                    self.state.settings.default_tenant_quota_bytes
                };
                sqlx::query(
                    "UPDATE file_mgr.quotas SET limit_bytes = $2, limit_source = 'default', plan_code = NULL
                      WHERE id = $1",
                )
                .bind(target.id)
                .bind(plan_limits::capped(default))
                .execute(&mut *tx)
                .await?;
            }
            None => {}
        }
        plan_limits::limits_changed(&mut tx, &[target.id], self.state.settings.quota_warning_percent).await?;
        let quota = self.lock_quota(&mut tx, target.scope()).await?;
        tx.commit().await?;
        Ok(pb::SetQuotaLimitResponse { quota: Some(quota.to_proto()) })
    }

    /// The quota of `scope`, created with the default if needed and locked for the transaction.
    async fn lock_quota(&self, tx: &mut PgTransaction<'_>, scope: QuotaScope) -> Result<QuotaRecord> {
        self.state.ledger.ensure(tx, scope).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUOTA_COLUMNS} FROM file_mgr.quotas
              WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2 FOR UPDATE"
        )))
        .bind(scope.tenant_id)
        .bind(scope.user_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(QuotaRecord::from_row(&row)?)
    }
}

/// The sort key of the last quota of a page: its ratio (default sort), its used bytes or file
/// count (the other sorts), and its id.
#[derive(serde::Serialize, serde::Deserialize)]
struct QuotaKey {
    ratio: f64,
    count: i64,
    id: Uuid,
}
