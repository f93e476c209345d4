//! The command line. Every setting is a flag here, a `FLATRENDER_AGENT_*` environment variable
//! and a key of the configuration file; the doc comments below are the `--help` text.
//!
//! clap parses flags only: the environment layer is read by [`super::Config::load`] through a
//! lookup function, so tests can layer an explicit map without touching the process
//! environment, and each error can say whether a value came from a flag or a variable.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use super::values::{ByteSize, HumanDuration};
use super::{AeInstallConfig, env_name};

/// The FlatRender node agent: takes render tasks from the orchestrator and runs them with
/// After Effects' aerender (or the aerender simulator) and ffmpeg.
///
/// Settings come from, lowest first: built-in defaults, the configuration file (--config),
/// FLATRENDER_AGENT_* environment variables, then these flags.
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "flatrender-agent", version)]
pub struct Cli {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do.
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the agent in the foreground (the default).
    Run,
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML
    /// and exit. The join token is not printed.
    Config,
    /// Patch each After Effects install's Scripts/Startup/commandLineRenderer.jsx so aerender
    /// runs the task's injection script (-r), and exit. The agent does this itself at start;
    /// run this once as administrator when the agent's account cannot write there.
    PatchAe,
    /// Restore each install's original commandLineRenderer.jsx (before uninstalling), and exit.
    UnpatchAe,
    /// Windows: register the agent as a service (automatic start, restarted after a failure) that
    /// runs with this --config file, and exit. Run as administrator.
    InstallService,
    /// Windows: stop the service (its running tasks are handed back) and remove it, and exit.
    UninstallService,
    /// Windows: run under the Service Control Manager. This is the command line the installed
    /// service starts; it cannot be run by hand.
    Service,
}

impl Cli {
    /// Parses `args` (the first item is the program name); `--help` and `--version` come back as
    /// errors to print with [`clap::Error::exit`].
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command_with_env_help().try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    /// Parses the process's arguments, exiting with clap's message on an error or `--help`.
    pub fn parse_process_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// The clap command with each flag's environment variable named in its help, as clap's own
    /// `env` attribute would show it (that attribute would also read the process environment,
    /// which the loader does itself).
    pub fn command_with_env_help() -> clap::Command {
        Self::command().mut_args(|arg| {
            let id = arg.get_id().as_str().to_owned();
            if id == "help" || id == "version" {
                return arg;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let long_help = arg.get_long_help().map(ToString::to_string);
            let env = env_name(&id);
            let arg = arg.help(format!("{help} [env: {env}]"));
            match long_help {
                Some(long) => arg.long_help(format!("{long}\n\n[env: {env}]")),
                None => arg,
            }
        })
    }
}

/// Between the folders of a list, as in PATH.
const PATH_LIST_SEPARATOR: char = if cfg!(windows) { ';' } else { ':' };

/// Log line format.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings as flags; each one absent unless given. Global, so they also work after the
/// subcommand (`flatrender-agent config --slots 4`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Flags {
    /// Configuration file (TOML). Unknown keys in it are an error.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Orchestrator address: http://host:port, or https://host:port for TLS.
    #[arg(long, global = true, value_name = "URL")]
    pub orchestrator: Option<String>,

    /// One-time enrolment token; used only while no node credential is stored in the state
    /// directory. Prefer the environment or the file: flags show up in process listings.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub join_token: Option<String>,

    /// PEM file with the CA certificate(s) that sign the orchestrator's TLS certificate (for
    /// https addresses).
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Where the node credential and the outbox of unsent results live.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Scratch space for tasks: rendered frames before upload, assembly files [default:
    /// <state-dir>/work].
    #[arg(long, global = true, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// The template cache [default: <state-dir>/cache].
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The template cache's bound, e.g. 50GiB or 500MB.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub cache_size: Option<ByteSize>,

    /// Concurrent tasks offered, 1 to 64.
    #[arg(long, global = true, value_name = "N")]
    pub slots: Option<u32>,

    /// Tags for placement (pools, capabilities), comma-separated.
    #[arg(long, global = true, value_name = "TAG,...", value_delimiter = ',')]
    pub tags: Option<Vec<String>>,

    /// Name shown to operators [default: the host name].
    #[arg(long, global = true, value_name = "NAME")]
    pub node_name: Option<String>,

    /// An After Effects install as VERSION=AERENDER_PATH (repeatable; replaces discovery). In the
    /// environment, separate entries with ';'.
    #[arg(long, global = true, value_name = "VERSION=PATH", value_parser = parse_ae_install)]
    pub after_effects: Option<Vec<AeInstallConfig>>,

    /// aerender executable to use for every task instead of an install's, e.g. aerender-sim.
    #[arg(long, global = true, value_name = "PATH")]
    pub aerender: Option<PathBuf>,

    /// Whether --aerender is the aerender simulator [default: when its file name is
    /// aerender-sim].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub simulator: Option<bool>,

    /// ffmpeg executable [default: ffmpeg on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    pub ffmpeg: Option<PathBuf>,

    /// ffprobe executable [default: ffprobe on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    pub ffprobe: Option<PathBuf>,

    /// Folders where After Effects' crash reports land, watched while renders run, separated as
    /// in PATH [default: the platform's crash-report folders].
    #[arg(long, global = true, value_name = "DIR", value_delimiter = PATH_LIST_SEPARATOR)]
    pub crash_dirs: Option<Vec<PathBuf>>,

    /// Kill a render that prints nothing (and writes no frame) for this long, e.g. 60s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub no_output_timeout: Option<Duration>,

    /// Kill a render that runs longer than this, e.g. 2h.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub max_render_time: Option<Duration>,

    /// Give up a task's downloads (template, media, frames) after this long in total, when the
    /// task sets no limit, e.g. 30m.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub max_download_time: Option<Duration>,

    /// How often to send a health sample, e.g. 5s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,

    /// Start drained: connect and report, but take no new work until an operator releases the
    /// node.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub draining: Option<bool>,

    /// Log filter, e.g. info or flatrender_agent=debug,info.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

fn parse_size(text: &str) -> Result<ByteSize, String> {
    text.parse()
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<HumanDuration>().map(|d| d.0)
}

pub(super) fn parse_ae_install(text: &str) -> Result<AeInstallConfig, String> {
    let (version, path) =
        text.split_once('=').ok_or_else(|| format!("expected VERSION=AERENDER_PATH, got {text:?}"))?;
    Ok(AeInstallConfig { version: version.trim().to_owned(), aerender: PathBuf::from(path.trim()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_args(["flatrender-agent", "--slots", "3", "config", "--tags", "a,b"]).unwrap();
        assert_eq!(cli.command, Some(Command::Config));
        assert_eq!(cli.flags.slots, Some(3));
        assert_eq!(cli.flags.tags, Some(vec!["a".to_owned(), "b".to_owned()]));
        let cli = Cli::try_parse_args(["flatrender-agent", "--draining", "--cache-size", "2GiB"]).unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.flags.draining, Some(true));
        assert_eq!(cli.flags.cache_size, Some(ByteSize(2 << 30)));
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let err = Cli::try_parse_args(["flatrender-agent", "--cache-size", "lots"]).unwrap_err();
        assert!(err.to_string().contains("--cache-size"), "{err}");
        let err = Cli::try_parse_args(["flatrender-agent", "--after-effects", "2025"]).unwrap_err();
        assert!(err.to_string().contains("--after-effects"), "{err}");
    }

    #[test]
    fn help_names_the_environment_variables() {
        let help = Cli::command_with_env_help().render_help().to_string();
        assert!(help.contains("FLATRENDER_AGENT_SLOTS"), "{help}");
        assert!(help.contains("FLATRENDER_AGENT_CONFIG"), "{help}");
        Cli::command_with_env_help().debug_assert();
    }
}
