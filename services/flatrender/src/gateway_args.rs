//! The gateway's edge flags: CORS origins, rate limits, deadlines.

use std::time::Duration;

use clap::Args;
use flatrender_gateway::edge::EdgeSettings;
use flatrender_kit::config::parse_duration;

/// Gateway flags.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Origins browsers may call the API from, e.g. `https://app.example.com` (repeat the flag
    /// or comma-separate; `*` allows any origin). Default: none, so only same-origin pages and
    /// non-browser clients can call.
    #[arg(long = "cors-origin", env = "FLATRENDER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Calls per minute from one client address (IPv6: per /64), with bursts of a tenth.
    #[arg(long, env = "FLATRENDER_RATE_LIMIT_ADDRESS", default_value_t = EdgeSettings::default().address_per_minute)]
    pub rate_limit_address: u32,

    /// Calls per minute of one tenant, all its users and API keys together.
    #[arg(long, env = "FLATRENDER_RATE_LIMIT_TENANT", default_value_t = EdgeSettings::default().tenant_per_minute)]
    pub rate_limit_tenant: u32,

    /// Calls per minute of one API key that has no limit of its own.
    #[arg(long, env = "FLATRENDER_RATE_LIMIT_API_KEY", default_value_t = EdgeSettings::default().api_key_per_minute)]
    pub rate_limit_api_key: u32,

    /// Deadline given to unary calls that set none (e.g. `60s`).
    #[arg(long, env = "FLATRENDER_DEFAULT_DEADLINE", default_value = "60s", value_parser = parse_duration)]
    pub default_deadline: Duration,

    /// The longest deadline a unary call may ask for.
    #[arg(long, env = "FLATRENDER_MAX_DEADLINE", default_value = "600s", value_parser = parse_duration)]
    pub max_deadline: Duration,
}

impl GatewayArgs {
    /// The edge settings.
    pub fn settings(&self) -> EdgeSettings {
        EdgeSettings {
            cors_origins: self.cors_origins.clone(),
            address_per_minute: self.rate_limit_address,
            tenant_per_minute: self.rate_limit_tenant,
            api_key_per_minute: self.rate_limit_api_key,
            default_deadline: self.default_deadline,
            max_deadline: self.max_deadline,
        }
    }
}
