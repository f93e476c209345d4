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

    /// The URL with its password (in the user part or the query) replaced by `***`; a URL
    /// that does not even parse is not printed at all.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return "<database URL that does not parse>".into();
        };
        if url.password().is_some() {
            // Only fails for URLs that cannot have credentials, which this one has.
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = matches!(k.as_ref(), "password" | "sslpassword");
                    (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// Checks the URL names a PostgreSQL server, without ever repeating it in the error.
    pub fn validate(&self) -> Result<(), String> {
        match url::Url::parse(&self.0) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") && url.has_host() => Ok(()),
            Ok(_) => Err(format!(
                "database URL {} must look like postgres://user:password@host:5432/flatrender",
                self.redacted()
            )),
            Err(e) => Err(format!(
                "the database URL does not parse ({e}); it must look like postgres://user:password@host:5432/flatrender \
                 (percent-encode special characters in the password)"
            )),
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    /// Accepts any text: it is validated when used, so a rejected URL (and its password) is
    /// never echoed by the argument parser.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
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

    /// PEM certificate chain: the gRPC port then speaks TLS only (with --tls-key). Without it,
    /// plain HTTP/2, for a trusted network or a proxy that terminates TLS.
    #[arg(long, env = "FLATRENDER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLATRENDER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Database settings.
#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL of a user that owns the FlatRender schemas (used to migrate and, unless
    /// a per-service URL is given, to reach each service's role with `SET ROLE`).
    #[arg(
        long,
        env = "FLATRENDER_DATABASE_URL",
                // The value may hold a password: --help must never print it.
        hide_env_values = true,
        // Loopback needs no TLS; any other server gets libpq's default, `prefer`.
        default_value = "postgres://postgres@127.0.0.1:5432/flatrender?sslmode=disable"
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

    fn url(text: &str) -> DatabaseUrl {
        text.parse().unwrap()
    }

    #[test]
    fn passwords_are_redacted() {
        let with_password = url("postgres://app:s3cret@db:5432/flatrender?sslmode=require");
        assert_eq!(with_password.redacted(), "postgres://app:***@db:5432/flatrender?sslmode=require");
        assert!(!format!("{with_password:?} {with_password}").contains("s3cret"));
        assert_eq!(url("postgres://postgres@127.0.0.1/x").redacted(), "postgres://postgres@127.0.0.1/x");
    }

    #[test]
    fn awkward_passwords_never_leak() {
        for (text, secret) in [
            ("postgres://app:p@ss@db/flatrender", "p@ss"),
            ("postgres://app:pa/ss@db/flatrender", "pa/ss"),
            ("postgres://app:pa?ss@db/flatrender", "pa?ss"),
            ("postgres://app@db/flatrender?password=topsecret&sslmode=require", "topsecret"),
            ("postgres://app@db/flatrender?sslpassword=keypass", "keypass"),
        ] {
            let u = url(text);
            assert!(!u.redacted().contains(secret), "{text} → {}", u.redacted());
            if let Err(message) = u.validate() {
                assert!(!message.contains(secret), "{message}");
            }
        }
    }

    #[test]
    fn only_postgres_urls_validate() {
        assert!(url("postgres://u@h/d").validate().is_ok());
        assert!(url("postgresql://u@h:5433/d").validate().is_ok());
        assert!(url("mysql://u:secret@h/d").validate().unwrap_err().contains("postgres://user"));
        assert!(url("not a url").validate().is_err());
    }

    #[test]
    fn database_can_be_swapped() {
        let old = url("postgres://u:p@h:1/old?sslmode=disable");
        assert_eq!(old.with_database("new").expose(), "postgres://u:p@h:1/new?sslmode=disable");
        assert_eq!(url("postgres://h").with_database("d").expose(), "postgres://h/d");
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
