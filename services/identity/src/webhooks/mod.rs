//! Tenant webhooks: the outbox fans each tenant event out to the webhooks that subscribe to it
//! (`fanout`), and a sender POSTs due deliveries, signed, retrying with backoff (`sender`).
//! Bodies are EventEnvelope in proto3 JSON (`envelope`).

pub mod addresses;
pub mod envelope;
pub mod fanout;
pub mod sender;
pub mod signature;

use std::time::Duration;

/// How webhooks are delivered.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Accept `http://` and private or loopback addresses (development and tests only).
    pub allow_insecure: bool,
    /// First retry delay; each failure doubles it.
    pub backoff_first: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Failed deliveries in a row that disable a webhook.
    pub disable_after: i32,
    /// How long an endpoint has to answer.
    pub timeout: Duration,
    /// How often the sender looks for due deliveries.
    pub poll: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            backoff_first: Duration::from_secs(30),
            backoff_max: Duration::from_secs(6 * 3600),
            disable_after: 20,
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
        }
    }
}

impl WebhookSettings {
    /// The wait before attempt `attempts + 1`, after `attempts` failures.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.backoff_first.saturating_mul(1u32 << doublings).min(self.backoff_max)
    }
}

/// Event types never sent to webhooks: they carry one-time secrets.
pub const SECRET_EVENTS: [&str; 2] =
    ["flatrender.events.v1.EmailVerificationRequested", "flatrender.events.v1.PasswordResetRequested"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_thirty_seconds_to_six_hours() {
        let settings = WebhookSettings::default();
        assert_eq!(settings.backoff(1), Duration::from_secs(30));
        assert_eq!(settings.backoff(2), Duration::from_secs(60));
        assert_eq!(settings.backoff(5), Duration::from_secs(480));
        assert_eq!(settings.backoff(20), Duration::from_secs(6 * 3600));
    }
}
