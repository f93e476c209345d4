//! Failed-login throttling per account and per client address (`identity.login_throttles`).
//!
//! Failures are counted in a sliding-start window; past the allowance each further failure
//! locks the subject for twice as long as the last, up to a cap. A lock refuses attempts
//! before any password is checked, so a locked account costs no Argon2 work. A success clears
//! the account's count, never the address's: one valid account must not reset an address that
//! is guessing at others.

use std::time::Duration;

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::error::Result;

/// Allowances and lock lengths.
#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    /// Failures of one account allowed in a window before it locks.
    pub account_failures: u32,
    /// Failures from one address allowed in a window before it locks.
    pub address_failures: u32,
    /// Counting window.
    pub window: Duration,
    /// First lock.
    pub first_lock: Duration,
    /// Longest lock.
    pub max_lock: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            account_failures: 5,
            address_failures: 30,
            window: Duration::from_secs(15 * 60),
            first_lock: Duration::from_secs(30),
            max_lock: Duration::from_secs(15 * 60),
        }
    }
}

/// A throttled subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// An account: tenant and lower-cased email.
    Account(String),
    /// A client address.
    Address(String),
}

impl Subject {
    /// The account `email` of `tenant`.
    pub fn account(tenant: uuid::Uuid, email: &str) -> Self {
        Self::Account(format!("{tenant}/{email}"))
    }

    fn scope(&self) -> (&'static str, &str) {
        match self {
            Self::Account(s) => ("account", s),
            Self::Address(s) => ("address", s),
        }
    }
}

impl ThrottlePolicy {
    fn allowance(&self, subject: &Subject) -> u32 {
        match subject {
            Subject::Account(_) => self.account_failures,
            Subject::Address(_) => self.address_failures,
        }
    }

    /// How long the `failures`-th failure locks for (none within the allowance).
    fn lock_for(&self, subject: &Subject, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.allowance(subject))?;
        let doubled = self.first_lock.saturating_mul(1u32 << over.min(20));
        Some(doubled.min(self.max_lock))
    }

    /// The longest remaining lock among `subjects`, if any is locked.
    pub async fn locked(&self, conn: &mut PgConnection, subjects: &[Subject]) -> Result<Option<Duration>> {
        let mut longest: Option<Duration> = None;
        for subject in subjects {
            let (scope, key) = subject.scope();
            let remaining: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM locked_until - now())::float8 FROM identity.login_throttles
                 WHERE scope = $1 AND subject = $2 AND locked_until > now()",
            )
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(seconds) = remaining {
                let remaining = Duration::from_secs_f64(seconds.max(0.0));
                longest = Some(longest.map_or(remaining, |l| l.max(remaining)));
            }
        }
        Ok(longest)
    }

    /// Counts a failure for each subject and locks those past their allowance.
    pub async fn fail(&self, conn: &mut PgConnection, subjects: &[Subject]) -> Result<()> {
        for subject in subjects {
            let (scope, key) = subject.scope();
            // A window that has ended starts again at this failure.
            let failures: i32 = sqlx::query_scalar(
                "INSERT INTO identity.login_throttles AS t (scope, subject, failures, window_started_at)
                 VALUES ($1, $2, 1, now())
                 ON CONFLICT (scope, subject) DO UPDATE SET
                     failures = CASE WHEN t.window_started_at < now() - $3 THEN 1 ELSE t.failures + 1 END,
                     window_started_at = CASE WHEN t.window_started_at < now() - $3 THEN now() ELSE t.window_started_at END
                 RETURNING failures",
            )
            .bind(scope)
            .bind(key)
            .bind(self.window)
            .fetch_one(&mut *conn)
            .await?;
            if let Some(lock) = self.lock_for(subject, u32::try_from(failures).unwrap_or(u32::MAX)) {
                sqlx::query(
                    "UPDATE identity.login_throttles SET locked_until = now() + $3 WHERE scope = $1 AND subject = $2",
                )
                .bind(scope)
                .bind(key)
                .bind(lock)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Clears the count of an account after a successful login.
    pub async fn succeed(&self, conn: &mut PgConnection, account: &Subject) -> Result<()> {
        let (scope, key) = account.scope();
        sqlx::query("DELETE FROM identity.login_throttles WHERE scope = $1 AND subject = $2")
            .bind(scope)
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Rows older than this are forgotten by [`prune`].
pub async fn prune(conn: &mut PgConnection, older_than: OffsetDateTime) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM identity.login_throttles WHERE updated_at < $1 AND (locked_until IS NULL OR locked_until < now())",
    )
    .bind(older_than)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_past_the_allowance_up_to_the_cap() {
        let policy = ThrottlePolicy::default();
        let account = Subject::account(uuid::Uuid::nil(), "a@b.io");
        assert_eq!(policy.lock_for(&account, 4), None);
        assert_eq!(policy.lock_for(&account, 5), Some(Duration::from_secs(30)));
        assert_eq!(policy.lock_for(&account, 6), Some(Duration::from_secs(60)));
        assert_eq!(policy.lock_for(&account, 9), Some(Duration::from_secs(480)));
        assert_eq!(policy.lock_for(&account, 10), Some(Duration::from_secs(900)));
        assert_eq!(policy.lock_for(&account, u32::MAX), Some(Duration::from_secs(900)));
        let address = Subject::Address("192.0.2.1".into());
        assert_eq!(policy.lock_for(&address, 29), None);
        assert_eq!(policy.lock_for(&address, 30), Some(Duration::from_secs(30)));
    }
}
