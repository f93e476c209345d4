//! The identity service's shared state.

use std::sync::Arc;

use sqlx::PgPool;

use crate::credentials::passwords::{PasswordHasher, PasswordPolicy};
use crate::error::{IdentityError, Result};
use crate::keys::KeyRing;
use crate::sessions::Issuer;
use crate::settings::Settings;
use crate::webhooks::envelope::Envelopes;

/// Everything the identity API works with; cheap to clone.
#[derive(Clone, Debug)]
pub struct Identity {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub ring: KeyRing,
    pub hasher: PasswordHasher,
    pub policy: PasswordPolicy,
    pub issuer: Issuer,
    /// Webhook bodies and the event types webhooks may receive.
    pub webhook_envelopes: Envelopes,
    /// The HTTP client webhook deliveries and tests go out with.
    pub http: reqwest::Client,
}

impl Identity {
    /// The state for `settings` on `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> Result<Self> {
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
        let webhook_envelopes = Envelopes::new().map_err(IdentityError::Corrupt)?;
        // No redirects: a webhook answers where it was registered, never somewhere it points to.
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("FlatRender-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !settings.webhooks.allow_insecure {
            // Checked on every connection: a name that re-resolves to an inner address is refused.
            http = http.dns_resolver(crate::webhooks::addresses::public_only());
        }
        let http =
            http.build().map_err(|e| IdentityError::Corrupt(format!("cannot build the webhook HTTP client: {e}")))?;
        Ok(Self {
            pool,
            settings: Arc::new(settings),
            ring,
            hasher,
            policy: PasswordPolicy::default(),
            issuer,
            webhook_envelopes,
            http,
        })
    }
}
