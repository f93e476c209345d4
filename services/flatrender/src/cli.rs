//! The command line: `flatrender [--target ...]` serves, `flatrender migrate` migrates.
//! Every flag has a `FLATRENDER_*` environment equivalent, shown by `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flatrender_gateway::Upstream;
use flatrender_kit::config::{DataArgs, DatabaseArgs, DatabaseUrl, ServerArgs, TelemetryArgs};

use crate::file_args::FileArgs;
use crate::file_client_args::FileClientArgs;
use crate::gateway_args::GatewayArgs;
use crate::render_args::RenderArgs;

/// FlatRender: the render platform for template-based video.
///
/// Without a subcommand, serves the selected targets on one gRPC port (also grpc-web), with
/// gRPC health, reflection and Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "flatrender", version, args_conflicts_with_subcommands = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub data: DataArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations, then exit. Safe to run from several replicas at once.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// What runs in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Target {
    /// Every service and the gateway.
    All,
    /// Accounts, tokens, MFA, tenants, API keys, plans.
    Identity,
    /// The template catalogue and CMS.
    Content,
    /// Customers' saved projects.
    Studio,
    /// The render orchestrator and the agent stream.
    Render,
    /// Files, uploads, downloads, quotas.
    File,
    /// In-app, push, email, SMS and Telegram notifications.
    Notification,
    /// The public grpc-web/gRPC edge.
    Gateway,
}

/// Serving flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Targets to run, comma-separated (e.g. `render` or `identity,gateway`).
    #[arg(long = "target", env = "FLATRENDER_TARGET", value_enum, value_delimiter = ',', default_value = "all")]
    pub targets: Vec<Target>,

    /// Apply pending migrations before serving (otherwise a stale schema is refused).
    #[arg(long, env = "FLATRENDER_MIGRATE")]
    pub migrate: bool,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub service_databases: ServiceDatabaseArgs,

    /// Where the gateway forwards services that run in other processes, as SERVICE=URL
    /// (repeat the flag, or comma-separate in the environment), e.g.
    /// `render=http://flatrender-render:50051`.
    #[arg(long = "upstream", env = "FLATRENDER_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<Upstream>,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    #[command(flatten)]
    pub file: FileArgs,

    #[command(flatten)]
    pub render: RenderArgs,

    #[command(flatten)]
    pub file_client: FileClientArgs,
}

/// Per-service database URLs, for deployments that give each service its own login.
#[derive(Debug, Args)]
pub struct ServiceDatabaseArgs {
    /// Identity's own URL (user flatrender_identity); default: the owner URL with SET ROLE.
    #[arg(long, env = "FLATRENDER_IDENTITY_DATABASE_URL", hide_env_values = true)]
    pub identity_database_url: Option<DatabaseUrl>,
    /// Content's own URL (user flatrender_content).
    #[arg(long, env = "FLATRENDER_CONTENT_DATABASE_URL", hide_env_values = true)]
    pub content_database_url: Option<DatabaseUrl>,
    /// Studio's own URL (user flatrender_studio).
    #[arg(long, env = "FLATRENDER_STUDIO_DATABASE_URL", hide_env_values = true)]
    pub studio_database_url: Option<DatabaseUrl>,
    /// Render's own URL (user flatrender_render).
    #[arg(long, env = "FLATRENDER_RENDER_DATABASE_URL", hide_env_values = true)]
    pub render_database_url: Option<DatabaseUrl>,
    /// File's own URL (user flatrender_file).
    #[arg(long, env = "FLATRENDER_FILE_DATABASE_URL", hide_env_values = true)]
    pub file_database_url: Option<DatabaseUrl>,
    /// Notification's own URL (user flatrender_notification).
    #[arg(long, env = "FLATRENDER_NOTIFICATION_DATABASE_URL", hide_env_values = true)]
    pub notification_database_url: Option<DatabaseUrl>,
}

impl ServiceDatabaseArgs {
    /// The service's own URL, when one was given.
    pub fn url_of(&self, role: flatrender_kit::db::ServiceRole) -> Option<&DatabaseUrl> {
        use flatrender_kit::db::ServiceRole as R;
        match role {
            r if r == R::IDENTITY => self.identity_database_url.as_ref(),
            r if r == R::CONTENT => self.content_database_url.as_ref(),
            r if r == R::STUDIO => self.studio_database_url.as_ref(),
            r if r == R::RENDER => self.render_database_url.as_ref(),
            r if r == R::FILE => self.file_database_url.as_ref(),
            r if r == R::NOTIFICATION => self.notification_database_url.as_ref(),
            _ => None,
        }
    }
}

/// Access-token verification.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// JWKS file with the identity service's public keys. Default: `<data-dir>/keys/jwks.json`,
    /// where a development key pair is generated on first start.
    #[arg(long, env = "FLATRENDER_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Expected `iss` of access tokens.
    #[arg(long, env = "FLATRENDER_TOKEN_ISSUER", default_value = "flatrender")]
    pub token_issuer: String,

    /// Expected `aud` of access tokens.
    #[arg(long, env = "FLATRENDER_TOKEN_AUDIENCE", default_value = "flatrender-api")]
    pub token_audience: String,
}
