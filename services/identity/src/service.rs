//! The identity service's shared state.

use std::sync::Arc;

use sqlx::PgPool;

use crate::credentials::passwords::{PasswordHasher, PasswordPolicy};
use crate::keys::KeyRing;
use crate::sessions::Issuer;
use crate::settings::Settings;

/// Everything the identity API works with; cheap to clone.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub ring: KeyRing,
    pub hasher: PasswordHasher,
    pub policy: PasswordPolicy,
    pub issuer: Issuer,
}

impl Identity {
    /// The state for `settings` on `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        let ring = KeyRing::new(pool.clone(), settings.keys, settings.verifiers.clone());
        let hasher = PasswordHasher::new(settings.argon2.clone(), settings.password_workers);
        let issuer = Issuer {
            ring: ring.clone(),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_token_ttl: settings.access_token_ttl,
            session_ttl: settings.session_ttl,
            reuse_grace: settings.refresh_reuse_grace,
        };
        Self { pool, settings: Arc::new(settings), ring, hasher, policy: PasswordPolicy::default(), issuer }
    }
}
