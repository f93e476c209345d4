//! Quota accounting: reservations, usage and the events they trigger.
//!
//! Every change happens inside the caller's transaction, on quota rows locked `FOR UPDATE` in
//! one fixed order (the tenant's row, then the user's), so the check and the change cannot be
//! raced and concurrent writers never deadlock. The `quotas_guard_usage` trigger refuses any
//! update that would grow usage past a limit anyway, as a last line of defence.
//!
//! Bytes are reserved before any data is stored, turned into usage in the transaction that
//! creates the file row, and released when an upload fails, is aborted or expires.

use sqlx::{PgPool, PgTransaction};
use uuid::Uuid;

use crate::error::{FileError, Result};
use crate::events;
use crate::model::{QUOTA_COLUMNS, QuotaRecord, QuotaScope};
use crate::settings::Settings;

/// Quota defaults and thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Ledger {
    default_user_bytes: i64,
    default_tenant_bytes: i64,
    warning_percent: u8,
}

/// A write refused by a quota: the quota as it stood and what the write needed. Turn it into the
/// caller's error with [`Ledger::refuse`] after rolling the transaction back.
#[derive(Clone, Debug)]
pub struct Exceeded {
    /// The quota that did not have room (boxed: errors stay small on the happy path).
    pub quota: Box<QuotaRecord>,
    /// Bytes the write needed.
    pub attempted: u64,
}

/// What a reservation or charge can end in.
#[derive(Debug)]
pub enum Refusal {
    /// A quota has no room.
    Exceeded(Exceeded),
    /// Anything else.
    Failed(FileError),
}

impl From<FileError> for Refusal {
    fn from(err: FileError) -> Self {
        Self::Failed(err)
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(err: sqlx::Error) -> Self {
        Self::Failed(err.into())
    }
}

impl Ledger {
    /// The ledger for `settings`.
    pub fn new(settings: &Settings) -> Self {
        Self {
            default_user_bytes: i64::try_from(settings.default_user_quota_bytes).unwrap_or(i64::MAX),
            default_tenant_bytes: i64::try_from(settings.default_tenant_quota_bytes).unwrap_or(i64::MAX),
            warning_percent: settings.quota_warning_percent,
        }
    }

    /// The quota of `scope`, created with the default limit when it does not exist yet.
    pub async fn get(&self, pool: &PgPool, scope: QuotaScope) -> Result<QuotaRecord> {
        let mut tx = pool.begin().await?;
        self.ensure(&mut tx, scope).await?;
        let quota = select(&mut tx, scope, false).await?;
        tx.commit().await?;
        Ok(quota)
    }

    /// Creates the row of `scope` with the configured default when it is missing.
    pub async fn ensure(&self, tx: &mut PgTransaction<'_>, scope: QuotaScope) -> Result<()> {
        let limit = if scope.user_id.is_some() { self.default_user_bytes } else { self.default_tenant_bytes };
        sqlx::query(
            "INSERT INTO file_mgr.quotas (tenant_id, user_id, limit_bytes, limit_source) VALUES ($1, $2, $3, 'default')
             ON CONFLICT ON CONSTRAINT quotas_scope_key DO NOTHING",
        )
        .bind(scope.tenant_id)
        .bind(scope.user_id)
        .bind(limit)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Locks the quotas a file of `owner` counts against (tenant first), creating them if needed.
    async fn lock(&self, tx: &mut PgTransaction<'_>, tenant: Uuid, owner: Option<Uuid>) -> Result<Vec<QuotaRecord>> {
        let mut quotas = Vec::with_capacity(2);
        for scope in QuotaScope::chargeable(tenant, owner) {
            self.ensure(tx, scope).await?;
            quotas.push(select(tx, scope, true).await?);
        }
        Ok(quotas)
    }

    /// Refuses early, with the error the write's own [`Self::charge`] would end in, when the
    /// quotas of `owner` in `tenant` lack room for `bytes` now: read without locking (and
    /// without creating missing ones, which the charge does), so that costly work such as an
    /// object copy is skipped. The charge stays the authority: room may still go meanwhile.
    pub async fn precheck(&self, pool: &PgPool, tenant: Uuid, owner: Option<Uuid>, bytes: u64) -> Result<()> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {QUOTA_COLUMNS} FROM file_mgr.quotas WHERE tenant_id = $1 AND (user_id IS NULL OR user_id = $2)
              ORDER BY user_id NULLS FIRST"
        )))
        .bind(tenant)
        .bind(owner)
        .fetch_all(pool)
        .await?;
        let quotas = rows.iter().map(QuotaRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        match check_room(&quotas, bytes) {
            Ok(()) => Ok(()),
            Err(Refusal::Exceeded(exceeded)) => Err(self.refuse(pool, exceeded).await),
            Err(Refusal::Failed(err)) => Err(err),
        }
    }

    /// Takes room for `bytes` on the quotas of `owner` in `tenant`: locks them and, when each
    /// has that much free, applies `set` (`$2` is `bytes`); otherwise the write is refused and
    /// nothing changes. Returns the quotas as they were locked.
    async fn take(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        set: &str,
        bytes: u64,
    ) -> Result<Vec<QuotaRecord>, Refusal> {
        let quotas = self.lock(tx, tenant, owner).await?;
        check_room(&quotas, bytes)?;
        adjust(tx, &quotas, set, bytes).await?;
        Ok(quotas)
    }

    /// Reserves `bytes` on the quotas of `owner` in `tenant` for an upload.
    pub async fn reserve(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        bytes: u64,
    ) -> Result<(), Refusal> {
        self.take(tx, tenant, owner, "reserved_bytes = reserved_bytes + $2", bytes).await?;
        Ok(())
    }

    /// Turns a reservation of `bytes` into the usage of one new file.
    pub async fn commit_reservation(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        bytes: u64,
    ) -> Result<()> {
        let quotas = self.lock(tx, tenant, owner).await?;
        adjust(
            tx,
            &quotas,
            "reserved_bytes = GREATEST(reserved_bytes - $2, 0), used_bytes = used_bytes + $2, file_count = file_count + 1",
            bytes,
        )
        .await?;
        self.warn_if_nearly_full(tx, &quotas).await
    }

    /// Gives back a reservation of `bytes` (a failed, aborted or expired upload).
    pub async fn release(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let quotas = self.lock(tx, tenant, owner).await?;
        adjust(tx, &quotas, "reserved_bytes = GREATEST(reserved_bytes - $2, 0)", bytes).await
    }

    /// Charges one new file of `bytes` without a reservation (a server-side copy).
    pub async fn charge(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        bytes: u64,
    ) -> Result<(), Refusal> {
        let quotas =
            self.take(tx, tenant, owner, "used_bytes = used_bytes + $2, file_count = file_count + 1", bytes).await?;
        self.warn_if_nearly_full(tx, &quotas).await?;
        Ok(())
    }

    /// Takes one deleted file of `bytes` off the usage; a quota that drops below the warning
    /// threshold may warn again later.
    pub async fn refund(
        &self,
        tx: &mut PgTransaction<'_>,
        tenant: Uuid,
        owner: Option<Uuid>,
        bytes: u64,
    ) -> Result<()> {
        let quotas = self.lock(tx, tenant, owner).await?;
        adjust(
            tx,
            &quotas,
            "used_bytes = GREATEST(used_bytes - $2, 0), file_count = GREATEST(file_count - 1, 0)",
            bytes,
        )
        .await?;
        sqlx::query(
            "UPDATE file_mgr.quotas SET warned_at = NULL
              WHERE id = ANY($1) AND warned_at IS NOT NULL AND used_bytes * 100 < limit_bytes * $2",
        )
        .bind(ids(&quotas))
        .bind(i64::from(self.warning_percent))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The caller's error for a refused write, after recording a `QuotaExceeded` event (at most
    /// one per quota and hour) in a transaction of its own: the refused write's was rolled back.
    pub async fn refuse(&self, pool: &PgPool, exceeded: Exceeded) -> FileError {
        let Exceeded { quota, attempted } = exceeded;
        let recorded = async {
            let mut tx = pool.begin().await?;
            let due: Option<Uuid> = sqlx::query_scalar(
                "UPDATE file_mgr.quotas SET exceeded_event_at = now()
                  WHERE id = $1 AND (exceeded_event_at IS NULL OR exceeded_event_at < now() - interval '1 hour')
                  RETURNING id",
            )
            .bind(quota.id)
            .fetch_optional(&mut *tx)
            .await?;
            if due.is_some() {
                events::quota_exceeded(&mut tx, &quota, attempted).await?;
            }
            tx.commit().await?;
            Ok::<_, FileError>(())
        }
        .await;
        if let Err(error) = recorded {
            tracing::warn!(%error, quota = %quota.id, "could not record a QuotaExceeded event");
        }
        let whose = if quota.user_id.is_some() { "the user's" } else { "the tenant's" };
        FileError::ResourceExhausted(format!(
            "quota exceeded: {} bytes free in {whose} quota, {attempted} needed",
            quota.available_bytes()
        ))
    }

    /// Marks and announces quotas whose usage reached the warning threshold since they last
    /// warned.
    async fn warn_if_nearly_full(&self, tx: &mut PgTransaction<'_>, quotas: &[QuotaRecord]) -> Result<()> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.quotas SET warned_at = now()
              WHERE id = ANY($1) AND warned_at IS NULL AND limit_bytes > 0 AND used_bytes * 100 >= limit_bytes * $2
              RETURNING {QUOTA_COLUMNS}"
        )))
        .bind(ids(quotas))
        .bind(i64::from(self.warning_percent))
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let quota = QuotaRecord::from_row(&row)?;
            events::quota_nearly_full(tx, &quota, self.warning_percent).await?;
        }
        Ok(())
    }
}

async fn select(tx: &mut PgTransaction<'_>, scope: QuotaScope, for_update: bool) -> Result<QuotaRecord> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {QUOTA_COLUMNS} FROM file_mgr.quotas WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2{lock}"
    )))
    .bind(scope.tenant_id)
    .bind(scope.user_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(QuotaRecord::from_row(&row)?)
}

fn check_room(quotas: &[QuotaRecord], bytes: u64) -> Result<(), Refusal> {
    match quotas.iter().find(|quota| quota.available_bytes() < bytes) {
        Some(full) => Err(Refusal::Exceeded(Exceeded { quota: Box::new(full.clone()), attempted: bytes })),
        None => Ok(()),
    }
}

async fn adjust(tx: &mut PgTransaction<'_>, quotas: &[QuotaRecord], set: &str, bytes: u64) -> Result<()> {
    let bytes = i64::try_from(bytes).map_err(|_| FileError::invalid("size_bytes", "is too large"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE file_mgr.quotas SET {set} WHERE id = ANY($1)")))
        .bind(ids(quotas))
        .bind(bytes)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn ids(quotas: &[QuotaRecord]) -> Vec<Uuid> {
    quotas.iter().map(|quota| quota.id).collect()
}
