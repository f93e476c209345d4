//! Configuration shared by every FlatRender process.
//!
//! Each setting is a flag with a `FLATRENDER_*` environment equivalent (flags win); clap
//! documents both in `--help`. Secrets are wrapped in types whose `Debug` and `Display` redact
//! them, so a logged config never shows a password.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// A PostgreSQL connection URL whose password never appears when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, password included: pass it to the driver, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The same server and credentials with another database name.
    pub fn with_database(&self, database: &str) -> Self {
        let (base, query) = match self.0.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.0.as_str(), None),
        };
        let authority_end = base
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| base[start..].find('/').map(|i| start + i))
            .unwrap_or(base.len());
        let mut url = format!("{}/{database}", &base[..authority_end]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Self(url)
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some(scheme_end) = self.0.find("://").map(|i| i + 3) else {
            return "***".into();
        };
        let rest = &self.0[scheme_end..];
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.into() };
                format!("{}{masked}{}", &self.0[..scheme_end], &rest[at..])
            }
            None => self.0.clone(),
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self(s.to_owned()))
        } else {
            Err("expected a URL like postgres://user:password@host:5432/flatrender".into())
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging and tracing settings.
#[derive(Clone, Debug, Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, env = "FLATRENDER_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's `EnvFilter` syntax (e.g. `info,flatrender_render=debug`).
    #[arg(long, env = "FLATRENDER_LOG", default_value = "info", global = true)]
    pub log: String,

    /// OTLP/gRPC endpoint for OpenTelemetry traces (e.g. http://otel-collector:4317); traces are
    /// exported only when this is set.
    #[arg(long, env = "FLATRENDER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Where a server listens and how it stops.
#[derive(Clone, Debug, Args)]
pub struct ServerArgs {
    /// gRPC listen address; every selected target is served on this one port (also grpc-web).
    #[arg(long, env = "FLATRENDER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Prometheus `/metrics` listen address (plain HTTP).
    #[arg(long, env = "FLATRENDER_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,

    /// How long in-flight calls may run after SIGTERM/SIGINT before they are cut off.
    #[arg(long, env = "FLATRENDER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How often each service checks that its database answers (drives gRPC health).
    #[arg(long, env = "FLATRENDER_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
}

/// Database settings.
#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of a user that owns the FlatRender schemas (used to migrate and, unless
    /// a per-service URL is given, to reach each service's role with `SET ROLE`).
    #[arg(
        long,
        env = "FLATRENDER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flatrender",
        hide_default_value = false
    )]
    pub database_url: DatabaseUrl,

    /// Most connections each service's pool may open.
    #[arg(long, env = "FLATRENDER_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// How long to wait for a connection from the pool (and for PostgreSQL at start-up).
    #[arg(long, env = "FLATRENDER_DATABASE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_connect_timeout: Duration,
}

/// Where the process keeps its files.
#[derive(Clone, Debug, Args)]
pub struct DataArgs {
    /// Data directory: local object storage, development keys, a private PostgreSQL if any.
    #[arg(long, env = "FLATRENDER_DATA_DIR", default_value = ".data", global = true)]
    pub data_dir: PathBuf,
}

/// Parses durations such as `500ms`, `10s`, `5m`, `1h` (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration; use e.g. 500ms, 10s, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}`; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/flatrender?sslmode=require".parse().unwrap();
        assert_eq!(url.redacted(), "postgres://app:***@db:5432/flatrender?sslmode=require");
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        let plain: DatabaseUrl = "postgres://postgres@127.0.0.1/x".parse().unwrap();
        assert_eq!(plain.redacted(), "postgres://postgres@127.0.0.1/x");
    }

    #[test]
    fn password_with_at_sign_is_redacted() {
        let url: DatabaseUrl = "postgres://app:p@ss@db/flatrender".parse().unwrap();
        assert!(!url.redacted().contains("p@ss"), "{}", url.redacted());
    }

    #[test]
    fn database_can_be_swapped() {
        let url: DatabaseUrl = "postgres://u:p@h:1/old?sslmode=disable".parse().unwrap();
        assert_eq!(url.with_database("new").expose(), "postgres://u:p@h:1/new?sslmode=disable");
        let bare: DatabaseUrl = "postgres://h".parse().unwrap();
        assert_eq!(bare.with_database("d").expose(), "postgres://h/d");
    }

    #[test]
    fn rejects_non_postgres_urls() {
        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
