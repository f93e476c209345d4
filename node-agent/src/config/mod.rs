//! The agent's configuration: built-in defaults, then a TOML file (`--config` /
//! `FLATRENDER_AGENT_CONFIG`), then `FLATRENDER_AGENT_*` environment variables, then flags; each
//! later source overrides the earlier ones key by key.
//!
//! Every source is read into the same [`Layer`] (all keys optional) and each value is checked as
//! it is read, so an error names the key and where it came from (the file, the variable or the
//! flag). The environment is read through a lookup function so tests never touch the process's.

mod cli;
mod values;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cli::{Cli, Command, Flags, LogFormat};
pub use values::{ByteSize, HumanDuration};

use crate::process::Limits;

/// Prefix of every environment variable the agent reads.
pub const ENV_PREFIX: &str = "FLATRENDER_AGENT_";

/// Development default: an orchestrator on this machine.
pub const DEFAULT_ORCHESTRATOR: &str = "http://127.0.0.1:50051";
pub const DEFAULT_CACHE_SIZE: ByteSize = ByteSize(50 << 30);
pub const DEFAULT_NO_OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_RENDER_TIME: Duration = Duration::from_secs(2 * 3600);
/// The protocol's default for a task's downloads when its watchdog names no limit.
pub const DEFAULT_MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// The protocol's bound on `Hello.slots`.
pub const MAX_SLOTS: u32 = 64;

/// An After Effects install named in the configuration.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AeInstallConfig {
    /// The version as its folder names it, e.g. "2025" or "CC 2019".
    pub version: String,
    /// Its aerender executable.
    pub aerender: PathBuf,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the orchestrator listens; validated http(s) URL. https means TLS.
    pub orchestrator: String,
    /// One-time enrolment token, used only while no node credential is stored.
    pub join_token: Option<Secret>,
    /// CA certificate(s) for the orchestrator's TLS certificate.
    pub ca_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: ByteSize,
    /// 1..=64.
    pub slots: u32,
    pub tags: Vec<String>,
    pub node_name: Option<String>,
    /// Installs named in the configuration; empty means discover them
    /// ([`crate::machine::ae::discover`]).
    pub after_effects: Vec<AeInstallConfig>,
    /// aerender to use for every task instead of an install's (e.g. the simulator).
    pub aerender: Option<PathBuf>,
    /// Whether `aerender` is the simulator (reported to the orchestrator, which then only sends
    /// templates in the simulator's format).
    pub simulator: bool,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// Folders where After Effects' crash reports land, watched while renders run
    /// ([`crate::crash_watch::default_dirs`] by default).
    pub crash_dirs: Vec<PathBuf>,
    pub no_output_timeout: Duration,
    pub max_render_time: Duration,
    /// A task's downloads (template, media, frames) give up after this long in total.
    pub max_download_time: Duration,
    pub health_interval: Duration,
    /// Start drained.
    pub draining: bool,
    pub log_level: String,
    pub log_format: LogFormat,
}

/// A secret that never shows in `Debug` output or printed configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env,
    Flags,
}

impl Source {
    /// How to name `key` from this source in an error.
    fn describe(&self, key: &str) -> String {
        match self {
            Source::File(path) => format!("key `{key}` in {}", path.display()),
            Source::Env => format!("environment variable {}", env_name(key)),
            Source::Flags => format!("flag --{}", key.replace('_', "-")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Syntax errors, unknown keys and wrongly typed values; toml's message names the key and
    /// the line.
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The environment variable for a key (`slots` → `FLATRENDER_AGENT_SLOTS`).
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('-', "_").to_ascii_uppercase())
}

/// One source's settings; absent keys leave the lower sources' values. This is also the file's
/// schema: unknown keys are refused.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Layer {
    orchestrator: Option<String>,
    join_token: Option<String>,
    ca_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<ByteSize>,
    // Wide, so a negative number in the file gets the range message rather than a type error.
    slots: Option<i64>,
    tags: Option<Vec<String>>,
    node_name: Option<String>,
    after_effects: Option<Vec<AeInstallConfig>>,
    aerender: Option<PathBuf>,
    simulator: Option<bool>,
    ffmpeg: Option<PathBuf>,
    ffprobe: Option<PathBuf>,
    crash_dirs: Option<Vec<PathBuf>>,
    no_output_timeout: Option<HumanDuration>,
    max_render_time: Option<HumanDuration>,
    max_download_time: Option<HumanDuration>,
    health_interval: Option<HumanDuration>,
    draining: Option<bool>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
}

impl Config {
    /// Loads the configuration for `flags`, reading the environment through `env` (use
    /// [`Config::load_from_process`] for the real one).
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<OsString>) -> Result<Config, ConfigError> {
        let env_str = |name: &str| -> Result<Option<String>, ConfigError> {
            env(name)
                .map(|v| {
                    v.into_string().map_err(|_| ConfigError::Invalid {
                        origin: format!("environment variable {name}"),
                        message: "not valid UTF-8".to_owned(),
                    })
                })
                .transpose()
        };
        let mut config = Config::defaults(&env_str(r"ProgramData")?);
        let mut work_dir = None;
        let mut cache_dir = None;

        let file = match &flags.config {
            Some(path) => Some(path.clone()),
            None => env_str(&env_name("config"))?.map(PathBuf::from),
        };
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let layer: Layer = toml::from_str(&text).map_err(|err| ConfigError::File {
                path: path.clone(),
                message: err.to_string().trim_end().to_owned(),
            })?;
            config.apply(layer, &Source::File(path), &mut work_dir, &mut cache_dir)?;
        }
        config.apply(Layer::from_env(&env_str)?, &Source::Env, &mut work_dir, &mut cache_dir)?;
        config.apply(Layer::from_flags(flags), &Source::Flags, &mut work_dir, &mut cache_dir)?;

        // Derived from the state directory only now, so overriding it moves them too.
        config.work_dir = work_dir.unwrap_or_else(|| config.state_dir.join("work"));
        config.cache_dir = cache_dir.unwrap_or_else(|| config.state_dir.join("cache"));
        Ok(config)
    }

    /// [`Config::load`] with the process environment.
    pub fn load_from_process(flags: &Flags) -> Result<Config, ConfigError> {
        Config::load(flags, |name| std::env::var_os(name))
    }

    /// Built-in defaults; `program_data` is Windows' `%ProgramData%`.
    fn defaults(program_data: &Option<String>) -> Config {
        let state_dir = default_state_dir(program_data.as_deref());
        Config {
            orchestrator: DEFAULT_ORCHESTRATOR.to_owned(),
            join_token: None,
            ca_file: None,
            work_dir: state_dir.join("work"),
            cache_dir: state_dir.join("cache"),
            state_dir,
            cache_size: DEFAULT_CACHE_SIZE,
            slots: 1,
            tags: Vec::new(),
            node_name: None,
            after_effects: Vec::new(),
            aerender: None,
            simulator: false,
            ffmpeg: PathBuf::from(exe_name("ffmpeg")),
            ffprobe: PathBuf::from(exe_name("ffprobe")),
            crash_dirs: crate::crash_watch::default_dirs(),
            no_output_timeout: DEFAULT_NO_OUTPUT_TIMEOUT,
            max_render_time: DEFAULT_MAX_RENDER_TIME,
            max_download_time: DEFAULT_MAX_DOWNLOAD_TIME,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            draining: false,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
        }
    }

    /// Validates and applies one source's values.
    fn apply(
        &mut self,
        layer: Layer,
        source: &Source,
        work_dir: &mut Option<PathBuf>,
        cache_dir: &mut Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { origin: source.describe(key), message };
        if let Some(url) = layer.orchestrator {
            validate_orchestrator(&url).map_err(|m| invalid("orchestrator", m))?;
            self.orchestrator = url;
        }
        if let Some(token) = layer.join_token {
            // An empty value (e.g. `FLATRENDER_AGENT_JOIN_TOKEN=`) clears a lower source's token.
            self.join_token = (!token.trim().is_empty()).then(|| Secret(token.trim().to_owned()));
        }
        if let Some(path) = layer.ca_file {
            non_empty_path(&path).map_err(|m| invalid("ca_file", m))?;
            self.ca_file = Some(path);
        }
        if let Some(path) = layer.state_dir {
            non_empty_path(&path).map_err(|m| invalid("state_dir", m))?;
            self.state_dir = path;
        }
        if let Some(path) = layer.work_dir {
            non_empty_path(&path).map_err(|m| invalid("work_dir", m))?;
            *work_dir = Some(path);
        }
        if let Some(path) = layer.cache_dir {
            non_empty_path(&path).map_err(|m| invalid("cache_dir", m))?;
            *cache_dir = Some(path);
        }
        if let Some(size) = layer.cache_size {
            if size.bytes() == 0 {
                return Err(invalid("cache_size", "must be more than 0 bytes".to_owned()));
            }
            self.cache_size = size;
        }
        if let Some(slots) = layer.slots {
            self.slots = u32::try_from(slots)
                .ok()
                .filter(|s| (1..=MAX_SLOTS).contains(s))
                .ok_or_else(|| invalid("slots", format!("{slots} is not in 1..={MAX_SLOTS}")))?;
        }
        if let Some(tags) = layer.tags {
            let tags: Vec<String> = tags.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
            if let Some(bad) = tags.iter().find(|t| t.len() > 64 || t.chars().any(char::is_whitespace)) {
                return Err(invalid("tags", format!("tag {bad:?} must be at most 64 characters without spaces")));
            }
            self.tags = tags;
        }
        if let Some(name) = layer.node_name {
            let name = name.trim();
            if name.chars().count() > 255 {
                return Err(invalid("node_name", "must be at most 255 characters".to_owned()));
            }
            self.node_name = (!name.is_empty()).then(|| name.to_owned());
        }
        if let Some(installs) = layer.after_effects {
            for install in &installs {
                if install.version.trim().is_empty() {
                    return Err(invalid("after_effects", "an install's version is empty".to_owned()));
                }
                non_empty_path(&install.aerender).map_err(|m| invalid("after_effects", m))?;
            }
            self.after_effects = installs;
        }
        if let Some(path) = layer.aerender {
            non_empty_path(&path).map_err(|m| invalid("aerender", m))?;
            if layer.simulator.is_none() {
                self.simulator = is_simulator(&path);
            }
            self.aerender = Some(path);
        }
        if let Some(simulator) = layer.simulator {
            self.simulator = simulator;
        }
        if let Some(path) = layer.ffmpeg {
            non_empty_path(&path).map_err(|m| invalid("ffmpeg", m))?;
            self.ffmpeg = path;
        }
        if let Some(path) = layer.ffprobe {
            non_empty_path(&path).map_err(|m| invalid("ffprobe", m))?;
            self.ffprobe = path;
        }
        if let Some(dirs) = layer.crash_dirs {
            for dir in &dirs {
                non_empty_path(dir).map_err(|m| invalid("crash_dirs", m))?;
            }
            self.crash_dirs = dirs;
        }
        for (key, value, slot) in [
            ("no_output_timeout", layer.no_output_timeout, &mut self.no_output_timeout),
            ("max_render_time", layer.max_render_time, &mut self.max_render_time),
            ("max_download_time", layer.max_download_time, &mut self.max_download_time),
            ("health_interval", layer.health_interval, &mut self.health_interval),
        ] {
            if let Some(HumanDuration(d)) = value {
                if d.is_zero() {
                    return Err(invalid(key, "must be longer than 0".to_owned()));
                }
                *slot = d;
            }
        }
        if let Some(draining) = layer.draining {
            self.draining = draining;
        }
        if let Some(level) = layer.log_level {
            if level.trim().is_empty() {
                return Err(invalid("log_level", "is empty".to_owned()));
            }
            self.log_level = level.trim().to_owned();
        }
        if let Some(format) = layer.log_format {
            self.log_format = format;
        }
        Ok(())
    }

    /// Whether the orchestrator is reached over TLS.
    pub fn tls(&self) -> bool {
        self.orchestrator.starts_with("https://")
    }

    /// The render watchdog's limits.
    pub fn render_limits(&self) -> Limits {
        Limits { no_output: self.no_output_timeout, max_run: self.max_render_time }
    }

    /// The configuration as a TOML file would write it (what `flatrender-agent config` prints);
    /// the join token shows only as set or not.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Printed<'a> {
            orchestrator: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            join_token: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ca_file: Option<&'a Path>,
            state_dir: &'a Path,
            work_dir: &'a Path,
            cache_dir: &'a Path,
            cache_size: ByteSize,
            slots: u32,
            tags: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            node_name: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aerender: Option<&'a Path>,
            simulator: bool,
            ffmpeg: &'a Path,
            ffprobe: &'a Path,
            crash_dirs: &'a [PathBuf],
            no_output_timeout: HumanDuration,
            max_render_time: HumanDuration,
            max_download_time: HumanDuration,
            health_interval: HumanDuration,
            draining: bool,
            log_level: &'a str,
            log_format: LogFormat,
            // Arrays of tables come last in TOML.
            after_effects: &'a [AeInstallConfig],
        }
        let printed = Printed {
            orchestrator: &self.orchestrator,
            join_token: self.join_token.as_ref().map(|_| "<set, not shown>"),
            ca_file: self.ca_file.as_deref(),
            state_dir: &self.state_dir,
            work_dir: &self.work_dir,
            cache_dir: &self.cache_dir,
            cache_size: self.cache_size,
            slots: self.slots,
            tags: &self.tags,
            node_name: self.node_name.as_deref(),
            aerender: self.aerender.as_deref(),
            simulator: self.simulator,
            ffmpeg: &self.ffmpeg,
            ffprobe: &self.ffprobe,
            crash_dirs: &self.crash_dirs,
            no_output_timeout: HumanDuration(self.no_output_timeout),
            max_render_time: HumanDuration(self.max_render_time),
            max_download_time: HumanDuration(self.max_download_time),
            health_interval: HumanDuration(self.health_interval),
            draining: self.draining,
            log_level: &self.log_level,
            log_format: self.log_format,
            after_effects: &self.after_effects,
        };
        // Only strings, numbers, booleans and tables: serialising cannot fail, but a path that is
        // not UTF-8 could; say so rather than panic.
        toml::to_string(&printed).unwrap_or_else(|err| format!("# cannot print the configuration: {err}\n"))
    }
}

impl Layer {
    fn from_env(env: &impl Fn(&str) -> Result<Option<String>, ConfigError>) -> Result<Layer, ConfigError> {
        fn parsed<T: std::str::FromStr<Err = String>>(
            env: &impl Fn(&str) -> Result<Option<String>, ConfigError>,
            key: &str,
        ) -> Result<Option<T>, ConfigError> {
            env(&env_name(key))?
                .map(|v| {
                    v.parse::<T>()
                        .map_err(|message| ConfigError::Invalid { origin: Source::Env.describe(key), message })
                })
                .transpose()
        }
        fn boolean(
            env: &impl Fn(&str) -> Result<Option<String>, ConfigError>,
            key: &str,
        ) -> Result<Option<bool>, ConfigError> {
            env(&env_name(key))?
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" | "" => Ok(false),
                    _ => Err(ConfigError::Invalid {
                        origin: Source::Env.describe(key),
                        message: format!("{v:?} is not a boolean (true/false)"),
                    }),
                })
                .transpose()
        }
        let path = |key: &str| env(&env_name(key)).map(|v| v.map(PathBuf::from));
        Ok(Layer {
            orchestrator: env(&env_name("orchestrator"))?,
            join_token: env(&env_name("join_token"))?,
            ca_file: path("ca_file")?,
            state_dir: path("state_dir")?,
            work_dir: path("work_dir")?,
            cache_dir: path("cache_dir")?,
            cache_size: parsed(env, "cache_size")?,
            slots: env(&env_name("slots"))?
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| ConfigError::Invalid {
                        origin: Source::Env.describe("slots"),
                        message: format!("{v:?} is not a number"),
                    })
                })
                .transpose()?,
            tags: env(&env_name("tags"))?.map(|v| v.split(',').map(str::to_owned).collect()),
            node_name: env(&env_name("node_name"))?,
            after_effects: env(&env_name("after_effects"))?
                .map(|v| {
                    v.split(';')
                        .filter(|entry| !entry.trim().is_empty())
                        .map(cli::parse_ae_install)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|message| ConfigError::Invalid {
                            origin: Source::Env.describe("after_effects"),
                            message,
                        })
                })
                .transpose()?,
            aerender: path("aerender")?,
            simulator: boolean(env, "simulator")?,
            ffmpeg: path("ffmpeg")?,
            ffprobe: path("ffprobe")?,
            // A list like PATH (`:` or `;` between folders).
            crash_dirs: env(&env_name("crash_dirs"))?.map(|v| std::env::split_paths(&v).collect()),
            no_output_timeout: parsed(env, "no_output_timeout")?,
            max_render_time: parsed(env, "max_render_time")?,
            max_download_time: parsed(env, "max_download_time")?,
            health_interval: parsed(env, "health_interval")?,
            draining: boolean(env, "draining")?,
            log_level: env(&env_name("log_level"))?,
            log_format: env(&env_name("log_format"))?
                .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(ConfigError::Invalid {
                        origin: Source::Env.describe("log_format"),
                        message: format!("{v:?} is not text or json"),
                    }),
                })
                .transpose()?,
        })
    }

    fn from_flags(flags: &Flags) -> Layer {
        let flags = flags.clone();
        Layer {
            orchestrator: flags.orchestrator,
            join_token: flags.join_token,
            ca_file: flags.ca_file,
            state_dir: flags.state_dir,
            work_dir: flags.work_dir,
            cache_dir: flags.cache_dir,
            cache_size: flags.cache_size,
            slots: flags.slots.map(i64::from),
            tags: flags.tags,
            node_name: flags.node_name,
            after_effects: flags.after_effects,
            aerender: flags.aerender,
            simulator: flags.simulator,
            ffmpeg: flags.ffmpeg,
            ffprobe: flags.ffprobe,
            crash_dirs: flags.crash_dirs,
            no_output_timeout: flags.no_output_timeout.map(HumanDuration),
            max_render_time: flags.max_render_time.map(HumanDuration),
            max_download_time: flags.max_download_time.map(HumanDuration),
            health_interval: flags.health_interval.map(HumanDuration),
            draining: flags.draining,
            log_level: flags.log_level,
            log_format: flags.log_format,
        }
    }
}

fn validate_orchestrator(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.trim().parse().map_err(|err| format!("{url:?} is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("{url:?}: scheme {other:?} is not http or https")),
        None => return Err(format!("{url:?} has no scheme; write http://{url} or https://{url}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

fn non_empty_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() { Err("the path is empty".to_owned()) } else { Ok(()) }
}

fn is_simulator(path: &Path) -> bool {
    path.file_stem().is_some_and(|stem| stem == "aerender-sim")
}

fn exe_name(name: &str) -> String {
    if cfg!(windows) { format!("{name}.exe") } else { name.to_owned() }
}

/// The per-OS state directory: where services keep their state on each system.
fn default_state_dir(program_data: Option<&str>) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(program_data.unwrap_or(r"C:\ProgramData")).join("FlatRender").join("Agent")
    } else if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/FlatRender Agent")
    } else {
        PathBuf::from("/var/lib/flatrender-agent")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs.iter().map(|(k, v)| ((*k).to_owned(), OsString::from(v))).collect();
        move |name| map.get(name).cloned()
    }

    fn flags(args: &[&str]) -> Flags {
        Cli::try_parse_args(std::iter::once("flatrender-agent").chain(args.iter().copied())).unwrap().flags
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_without_any_source() {
        let config = Config::load(&Flags::default(), env_of(&[])).unwrap();
        assert_eq!(config.orchestrator, DEFAULT_ORCHESTRATOR);
        assert_eq!(config.slots, 1);
        assert_eq!(config.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(config.health_interval, Duration::from_secs(5));
        assert_eq!(
            config.render_limits(),
            Limits { no_output: Duration::from_secs(60), max_run: Duration::from_secs(7200) }
        );
        assert_eq!(config.work_dir, config.state_dir.join("work"));
        assert_eq!(config.cache_dir, config.state_dir.join("cache"));
        assert!(!config.tls());
        assert!(config.join_token.is_none());
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            r#"
            orchestrator = "https://farm.example:443"
            slots = 2
            cache_size = "10GiB"
            tags = ["gpu", "pool-a"]
            state_dir = "/srv/agent"
            health_interval = 10
            max_render_time = "3h"
            [[after_effects]]
            version = "2025"
            aerender = "/opt/ae/aerender"
            "#,
        );
        let env = env_of(&[
            ("FLATRENDER_AGENT_CONFIG", path.to_str().unwrap()),
            ("FLATRENDER_AGENT_SLOTS", "3"),
            ("FLATRENDER_AGENT_CACHE_SIZE", "500MB"),
            ("FLATRENDER_AGENT_JOIN_TOKEN", "tok-123"),
        ]);

        let config = Config::load(&Flags::default(), &env).unwrap();
        assert!(config.tls());
        assert_eq!(config.slots, 3, "env over file");
        assert_eq!(config.cache_size, ByteSize(500_000_000), "env over file");
        assert_eq!(config.tags, ["gpu", "pool-a"], "file over default");
        assert_eq!(config.health_interval, Duration::from_secs(10));
        assert_eq!(config.max_render_time, Duration::from_secs(3 * 3600));
        assert_eq!(config.work_dir, PathBuf::from("/srv/agent/work"), "derived from the file's state_dir");
        assert_eq!(
            config.after_effects,
            [AeInstallConfig { version: "2025".into(), aerender: "/opt/ae/aerender".into() }]
        );
        assert_eq!(config.join_token.as_ref().map(Secret::expose), Some("tok-123"));

        let config = Config::load(&flags(&["--slots", "4", "--tags", "x", "--work-dir", "/scratch"]), &env).unwrap();
        assert_eq!(config.slots, 4, "flag over env");
        assert_eq!(config.tags, ["x"], "flag over file");
        assert_eq!(config.cache_size, ByteSize(500_000_000), "env kept where no flag");
        assert_eq!(config.work_dir, PathBuf::from("/scratch"));
        assert_eq!(config.cache_dir, PathBuf::from("/srv/agent/cache"));

        // --config beats FLATRENDER_AGENT_CONFIG.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "slots = 7\nnode_name = \"render-07\"\n").unwrap();
        let config = Config::load(&flags(&["--config", other.to_str().unwrap()]), env_of(&[])).unwrap();
        assert_eq!((config.slots, config.node_name.as_deref()), (7, Some("render-07")));
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "slots = 2\nslot_count = 3\n");
        let err = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::File { .. }), "{text}");
        assert!(text.contains("slot_count") && text.contains("agent.toml"), "{text}");

        let path = write_file(&dir, "[[after_effects]]\nversion = \"2025\"\naerender = \"/x\"\nbuild = \"1\"\n");
        let err = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("build"), "{err}");
    }

    #[test]
    fn invalid_values_name_key_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &str); 6] = [
            ("slots = 0", "key `slots` in"),
            ("slots = 65", "key `slots` in"),
            ("cache_size = \"0GiB\"", "key `cache_size` in"),
            ("health_interval = \"0s\"", "key `health_interval` in"),
            ("orchestrator = \"ftp://x\"", "key `orchestrator` in"),
            ("orchestrator = \"farm:50051\"", "key `orchestrator` in"),
        ];
        for (text, expected) in cases {
            let path = write_file(&dir, text);
            let err = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap_err();
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
        // A value of the wrong type: toml's own message, with the key.
        let path = write_file(&dir, "cache_size = \"huge\"");
        let err = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("cache_size") && err.to_string().contains("huge"), "{err}");

        for (var, value) in [
            ("FLATRENDER_AGENT_SLOTS", "many"),
            ("FLATRENDER_AGENT_SLOTS", "100"),
            ("FLATRENDER_AGENT_CACHE_SIZE", "12 parsecs"),
            ("FLATRENDER_AGENT_NO_OUTPUT_TIMEOUT", "0"),
            ("FLATRENDER_AGENT_DRAINING", "perhaps"),
            ("FLATRENDER_AGENT_ORCHESTRATOR", "grpc://x:1"),
            ("FLATRENDER_AGENT_AFTER_EFFECTS", "2025"),
        ] {
            let err = Config::load(&Flags::default(), env_of(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(&format!("environment variable {var}")), "{var}={value}: {err}");
        }

        let err = Config::load(&flags(&["--slots", "0"]), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("flag --slots"), "{err}");
        let err = Config::load(&flags(&["--max-render-time", "0s"]), env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("flag --max-render-time"), "{err}");

        let err = Config::load(&flags(&["--config", "/nonexistent/agent.toml"]), env_of(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn env_lists_booleans_and_simulator() {
        let config = Config::load(
            &Flags::default(),
            env_of(&[
                ("FLATRENDER_AGENT_TAGS", "a, b,,c"),
                ("FLATRENDER_AGENT_DRAINING", "yes"),
                ("FLATRENDER_AGENT_AERENDER", "/usr/local/bin/aerender-sim"),
                ("FLATRENDER_AGENT_AFTER_EFFECTS", "2024=/a/aerender;CC 2019=/b/aerender"),
                ("FLATRENDER_AGENT_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(config.tags, ["a", "b", "c"]);
        assert!(config.draining);
        assert!(config.simulator, "aerender-sim is recognised");
        assert_eq!(config.after_effects.len(), 2);
        assert_eq!(config.after_effects[1].version, "CC 2019");
        assert_eq!(config.log_format, LogFormat::Json);

        let config = Config::load(
            &flags(&["--simulator", "false"]),
            env_of(&[("FLATRENDER_AGENT_AERENDER", "/x/aerender-sim")]),
        )
        .unwrap();
        assert!(!config.simulator, "an explicit setting wins");
    }

    #[test]
    fn printed_config_parses_back_without_the_token() {
        let config = Config::load(
            &flags(&["--tags", "gpu", "--after-effects", "2025=/opt/aerender", "--ca-file", "/etc/ca.pem"]),
            env_of(&[("FLATRENDER_AGENT_JOIN_TOKEN", "very-secret"), ("FLATRENDER_AGENT_MAX_RENDER_TIME", "90m")]),
        )
        .unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(!format!("{config:?}").contains("very-secret"));
        let without_token: String =
            printed.lines().filter(|l| !l.starts_with("join_token")).map(|l| format!("{l}\n")).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, &without_token);
        let reloaded = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap();
        assert_eq!(reloaded, Config { join_token: None, ..config });
    }

    #[test]
    fn example_file_in_the_repository_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/flatrender-agent.toml");
        let config = Config::load(&flags(&["--config", path.to_str().unwrap()]), env_of(&[])).unwrap();
        assert_eq!(config.orchestrator, "https://orchestrator.example.com:50051");
    }
}
