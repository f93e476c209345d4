//! Login throttling per account, per client address and per MFA user
//! (`identity.login_throttles`).
//!
//! Every attempt reserves a place in its subjects' allowance before any password or code is
//! checked, in one atomic upsert, so parallel guesses cannot all slip past a check made before
//! the slow hashing. A success gives the place back (an account's count is cleared, an
//! address's lowered by one: one valid account must not reset an address that is guessing at
//! others); a failure keeps it. Past the allowance a subject is locked, each time twice as long
//! as the last, up to a cap, and locked attempts cost no Argon2 work.

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

    /// The MFA codes of `user`: one allowance across every login challenge and MFA call, so
    /// knowing the password does not buy unlimited guesses at the second factor.
    pub fn mfa(user: uuid::Uuid) -> Self {
        Self::Account(format!("mfa/{user}"))
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

    /// How long the `attempts`-th attempt of a window locks for (none within the allowance).
    fn lock_for(&self, subject: &Subject, attempts: u32) -> Option<Duration> {
        let over = attempts.checked_sub(self.allowance(subject) + 1)?;
        let doubled = self.first_lock.saturating_mul(1u32 << over.min(20));
        Some(doubled.min(self.max_lock))
    }

    /// Reserves one attempt for each of `subjects`; `Some(wait)` refuses it (a subject is
    /// locked, or this attempt would pass its allowance and locks it).
    pub async fn reserve(&self, conn: &mut PgConnection, subjects: &[Subject]) -> Result<Option<Duration>> {
        let mut refused: Option<Duration> = None;
        for subject in subjects {
            let (scope, key) = subject.scope();
            // A window that has ended starts again at this attempt; a lock is never counted into.
            let row: (i32, Option<f64>) = sqlx::query_as(
                "INSERT INTO identity.login_throttles AS t (scope, subject, failures, window_started_at)
                 VALUES ($1, $2, 1, now())
                 ON CONFLICT (scope, subject) DO UPDATE SET
                     failures = CASE WHEN t.locked_until > now() THEN t.failures
                                     WHEN t.window_started_at < now() - $3 THEN 1 ELSE t.failures + 1 END,
                     window_started_at = CASE WHEN t.locked_until > now() THEN t.window_started_at
                                              WHEN t.window_started_at < now() - $3 THEN now()
                                              ELSE t.window_started_at END
                 RETURNING failures, extract(epoch FROM locked_until - now())::float8",
            )
            .bind(scope)
            .bind(key)
            .bind(self.window)
            .fetch_one(&mut *conn)
            .await?;
            let wait = match row {
                (_, Some(remaining)) if remaining > 0.0 => Some(Duration::from_secs_f64(remaining)),
                (attempts, _) => match self.lock_for(subject, u32::try_from(attempts).unwrap_or(u32::MAX)) {
                    Some(lock) => {
                        sqlx::query(
                            "UPDATE identity.login_throttles SET locked_until = now() + $3
                             WHERE scope = $1 AND subject = $2",
                        )
                        .bind(scope)
                        .bind(key)
                        .bind(lock)
                        .execute(&mut *conn)
                        .await?;
                        Some(lock)
                    }
                    None => None,
                },
            };
            if let Some(wait) = wait {
                refused = Some(refused.map_or(wait, |r| r.max(wait)));
            }
        }
        Ok(refused)
    }

    /// Gives back the places of a successful attempt: an account's (or MFA user's) count is
    /// cleared, an address's lowered by one.
    pub async fn succeed(&self, conn: &mut PgConnection, subjects: &[Subject]) -> Result<()> {
        for subject in subjects {
            let (scope, key) = subject.scope();
            let statement = match subject {
                Subject::Account(_) => "DELETE FROM identity.login_throttles WHERE scope = $1 AND subject = $2",
                Subject::Address(_) => {
                    "UPDATE identity.login_throttles SET failures = greatest(failures - 1, 0)
                     WHERE scope = $1 AND subject = $2"
                }
            };
            sqlx::query(statement).bind(scope).bind(key).execute(&mut *conn).await?;
        }
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
        assert_eq!(policy.lock_for(&account, 5), None, "five attempts are allowed");
        assert_eq!(policy.lock_for(&account, 6), Some(Duration::from_secs(30)));
        assert_eq!(policy.lock_for(&account, 7), Some(Duration::from_secs(60)));
        assert_eq!(policy.lock_for(&account, 10), Some(Duration::from_secs(480)));
        assert_eq!(policy.lock_for(&account, 11), Some(Duration::from_secs(900)));
        assert_eq!(policy.lock_for(&account, u32::MAX), Some(Duration::from_secs(900)));
        let address = Subject::Address("192.0.2.1".into());
        assert_eq!(policy.lock_for(&address, 30), None);
        assert_eq!(policy.lock_for(&address, 31), Some(Duration::from_secs(30)));
    }
}
