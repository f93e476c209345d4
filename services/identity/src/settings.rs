//! How the identity service is configured.

use std::time::Duration;

use flatrender_kit::auth::TokenVerifier;

use crate::credentials::passwords::Argon2Params;
use crate::keys::KeyPolicy;
use crate::throttle::ThrottlePolicy;
use crate::webhooks::WebhookSettings;

/// The identity service's settings; [`Settings::new`] gives the product defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_token_ttl: Duration,
    /// Absolute lifetime of a session (its refresh tokens never outlive it).
    pub session_ttl: Duration,
    /// A rotated refresh token presented again within this time is refused without revoking its
    /// session: a concurrent refresh (another tab) rather than a replay.
    pub refresh_reuse_grace: Duration,
    /// Lifetime of an email-verification token.
    pub verification_ttl: Duration,
    /// Lifetime of a password-reset token.
    pub reset_ttl: Duration,
    /// Lifetime of an MFA login challenge.
    pub mfa_challenge_ttl: Duration,
    /// Whether login needs a verified email address.
    pub require_verified_email: bool,
    /// Signing-key lifetimes.
    pub keys: KeyPolicy,
    /// How often the key ring reloads (and rotates when due).
    pub key_refresh_interval: Duration,
    /// Argon2id cost.
    pub argon2: Argon2Params,
    /// Password hashes computed at once; the rest wait, so logins cannot starve other calls.
    pub password_workers: usize,
    /// Failed-login throttling.
    pub throttle: ThrottlePolicy,
    /// Verifiers in this process that trust identity's keys as soon as they are published.
    pub verifiers: Vec<TokenVerifier>,
    /// Webhook delivery.
    pub webhooks: WebhookSettings,
    /// How often subscriptions whose period is over are ended.
    pub subscription_sweep: Duration,
    /// The VAPID public key browsers subscribe to Web Push with (uncompressed P-256, base64url);
    /// `None` until the notification service's push channel is configured.
    pub vapid_public_key: Option<String>,
}

impl Settings {
    /// Product defaults with the given issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let keys = KeyPolicy::default();
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            access_token_ttl: keys.access_token_ttl,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            verification_ttl: Duration::from_secs(48 * 3600),
            reset_ttl: Duration::from_secs(3600),
            mfa_challenge_ttl: Duration::from_secs(300),
            require_verified_email: true,
            keys,
            key_refresh_interval: Duration::from_secs(60),
            argon2: Argon2Params::default(),
            // Half the cores: hashing never takes the whole machine.
            password_workers: std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            throttle: ThrottlePolicy::default(),
            verifiers: Vec::new(),
            webhooks: WebhookSettings::default(),
            subscription_sweep: Duration::from_secs(60),
            vapid_public_key: None,
        }
    }
}
