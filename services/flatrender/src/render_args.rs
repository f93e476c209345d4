//! The render orchestrator's flags: its replica name, the agent protocol's timings, probe
//! renders of quarantined nodes, and the watermark of exports.

use std::time::Duration;

use clap::Args;
use flatrender_kit::Error;
use flatrender_kit::config::parse_duration;
use flatrender_render::Settings;
use flatrender_render::settings::{ProbeSettings, ProbeTemplate, WatermarkPosition, WatermarkSettings};

/// Render orchestrator flags.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// This replica's name in `render.orchestrators` and `nodes.orchestrator_id` (host or pod
    /// name); must be unique per process. Default: a fresh `render-<uuid>`.
    #[arg(long = "render-orchestrator-id", env = "FLATRENDER_RENDER_ORCHESTRATOR_ID")]
    pub orchestrator_id: Option<String>,

    /// How often agents send Health (1s..=60s).
    #[arg(long = "render-heartbeat-interval", env = "FLATRENDER_RENDER_HEARTBEAT_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub heartbeat_interval: Duration,

    /// How long a lease lasts past its last renewal.
    #[arg(long = "render-lease-ttl", env = "FLATRENDER_RENDER_LEASE_TTL", value_parser = parse_duration, default_value = "15s")]
    pub lease_ttl: Duration,

    /// How long a node's tasks survive its stream dropping.
    #[arg(long = "render-reconnect-grace", env = "FLATRENDER_RENDER_RECONNECT_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub reconnect_grace: Duration,

    /// How long a new agent stream may take to send Hello.
    #[arg(long = "render-hello-timeout", env = "FLATRENDER_RENDER_HELLO_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub hello_timeout: Duration,

    /// Attempts per task before it (and its job) fails (1..=100).
    #[arg(long = "render-max-attempts", env = "FLATRENDER_RENDER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Enrol attempts per client address per minute.
    #[arg(long = "render-enroll-rate", env = "FLATRENDER_RENDER_ENROLL_RATE", default_value_t = 10)]
    pub enroll_attempts_per_minute: u32,

    /// Crashes within --render-quarantine-window that quarantine a node automatically (0: never).
    #[arg(long = "render-quarantine-crashes", env = "FLATRENDER_RENDER_QUARANTINE_CRASHES", default_value_t = 3)]
    pub quarantine_crashes: u32,

    /// The window crashes are counted in.
    #[arg(long = "render-quarantine-window", env = "FLATRENDER_RENDER_QUARANTINE_WINDOW", value_parser = parse_duration, default_value = "10m")]
    pub quarantine_window: Duration,

    /// At most one stored health sample per node per this interval (the rest stay in memory).
    #[arg(long = "render-health-log-interval", env = "FLATRENDER_RENDER_HEALTH_LOG_INTERVAL", value_parser = parse_duration, default_value = "2m")]
    pub health_log_interval: Duration,

    /// How long a job may have work no enrolled, non-quarantined node can take (After Effects
    /// version, tags, RAM, GPU, ffmpeg) before it fails with NO_ELIGIBLE_NODE; a job waiting for
    /// busy nodes able to take it never does.
    #[arg(long = "render-no-eligible-node-timeout", env = "FLATRENDER_RENDER_NO_ELIGIBLE_NODE_TIMEOUT", value_parser = parse_duration, default_value = "30m")]
    pub no_eligible_node_timeout: Duration,

    /// Send probe renders to nodes quarantined for crashes; a successful one releases the node
    /// (`false`: only an operator's ReleaseNode ends a quarantine).
    #[arg(long = "render-probes", env = "FLATRENDER_RENDER_PROBES", default_value_t = true, action = clap::ArgAction::Set)]
    pub probes: bool,

    /// How long after an automatic quarantine the node gets its first probe render.
    #[arg(long = "render-probe-after", env = "FLATRENDER_RENDER_PROBE_AFTER", value_parser = parse_duration, default_value = "5m")]
    pub probe_after: Duration,

    /// The longest wait before the next probe after failed ones (the wait doubles per failure).
    #[arg(long = "render-probe-max-backoff", env = "FLATRENDER_RENDER_PROBE_MAX_BACKOFF", value_parser = parse_duration, default_value = "1h")]
    pub probe_max_backoff: Duration,

    /// What probes render: the file id (UUID) of a small known-good template bundle, an active
    /// platform file of the default tenant. Unset: no probe renders are sent.
    #[arg(long = "render-probe-template", env = "FLATRENDER_RENDER_PROBE_TEMPLATE")]
    pub probe_template: Option<String>,

    /// The composition of --render-probe-template that probes render.
    #[arg(long = "render-probe-composition", env = "FLATRENDER_RENDER_PROBE_COMPOSITION")]
    pub probe_composition: Option<String>,

    /// The frame of that composition that probes render.
    #[arg(long = "render-probe-frame", env = "FLATRENDER_RENDER_PROBE_FRAME", default_value_t = 0)]
    pub probe_frame: i32,

    /// The watermark burnt into the exports of plans with one: this text (1..=100 characters),
    /// unless --render-watermark-image is set and known.
    #[arg(long = "render-watermark-text", env = "FLATRENDER_RENDER_WATERMARK_TEXT", default_value = "FlatRender")]
    pub watermark_text: String,

    /// The watermark as an image instead: the file id (UUID) of a PNG with alpha, an active
    /// platform file of the default tenant.
    #[arg(long = "render-watermark-image", env = "FLATRENDER_RENDER_WATERMARK_IMAGE")]
    pub watermark_image: Option<String>,

    /// Where the watermark sits: top-left, top-right, bottom-left, bottom-right or center.
    #[arg(
        long = "render-watermark-position",
        env = "FLATRENDER_RENDER_WATERMARK_POSITION",
        default_value = "bottom-right"
    )]
    pub watermark_position: String,

    /// The watermark's opacity, 0.05..=1.0.
    #[arg(long = "render-watermark-opacity", env = "FLATRENDER_RENDER_WATERMARK_OPACITY", default_value_t = 0.5)]
    pub watermark_opacity: f64,
}

impl RenderArgs {
    /// The orchestrator's settings, checked.
    pub fn settings(&self) -> Result<Settings, Error> {
        let mut settings = Settings::default();
        if let Some(id) = &self.orchestrator_id {
            let id = id.trim();
            if id.is_empty() || id.chars().count() > 200 {
                return Err(Error::Config("--render-orchestrator-id must be 1..=200 characters".into()));
            }
            settings.orchestrator_id = id.to_owned();
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.heartbeat_interval) {
            return Err(Error::Config("--render-heartbeat-interval must be 1s..=60s".into()));
        }
        if self.lease_ttl <= self.heartbeat_interval {
            return Err(Error::Config(
                "--render-lease-ttl must be longer than --render-heartbeat-interval (3 heartbeats is usual)".into(),
            ));
        }
        if self.reconnect_grace.is_zero() || self.hello_timeout.is_zero() {
            return Err(Error::Config("--render-reconnect-grace and --render-hello-timeout must be positive".into()));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(Error::Config("--render-max-attempts must be 1..=100".into()));
        }
        if self.enroll_attempts_per_minute == 0 {
            return Err(Error::Config("--render-enroll-rate must be at least 1".into()));
        }
        settings.heartbeat_interval = self.heartbeat_interval;
        settings.lease_ttl = self.lease_ttl;
        settings.reconnect_grace = self.reconnect_grace;
        settings.hello_timeout = self.hello_timeout;
        settings.max_attempts = self.max_attempts;
        if self.quarantine_window.is_zero() {
            return Err(Error::Config("--render-quarantine-window must be positive".into()));
        }
        if self.health_log_interval < Duration::from_secs(1) {
            return Err(Error::Config("--render-health-log-interval must be at least 1s".into()));
        }
        if self.no_eligible_node_timeout < Duration::from_secs(1) {
            return Err(Error::Config("--render-no-eligible-node-timeout must be at least 1s".into()));
        }
        settings.enroll_attempts_per_minute = self.enroll_attempts_per_minute;
        settings.no_eligible_node_timeout = self.no_eligible_node_timeout;
        settings.quarantine_crashes = self.quarantine_crashes;
        settings.quarantine_window = self.quarantine_window;
        settings.health_log_interval = self.health_log_interval;
        settings.probes = self.probe_settings()?;
        settings.watermark = self.watermark_settings()?;
        Ok(settings)
    }

    /// The watermark settings, checked.
    fn watermark_settings(&self) -> Result<WatermarkSettings, Error> {
        let text = self.watermark_text.trim();
        if text.is_empty() || text.chars().count() > 100 || text.chars().any(char::is_control) {
            return Err(Error::Config(
                "--render-watermark-text must be 1..=100 characters without control characters".into(),
            ));
        }
        let image_file_id = match &self.watermark_image {
            None => None,
            Some(id) => Some(
                WatermarkSettings::image_id(id)
                    .ok_or_else(|| Error::Config("--render-watermark-image must be a file id (UUID)".into()))?,
            ),
        };
        let position = WatermarkPosition::parse(self.watermark_position.trim()).ok_or_else(|| {
            let names: Vec<&str> = WatermarkPosition::NAMES.iter().map(|(name, _)| *name).collect();
            Error::Config(format!("--render-watermark-position must be one of {}", names.join(", ")))
        })?;
        if !(0.05..=1.0).contains(&self.watermark_opacity) {
            return Err(Error::Config("--render-watermark-opacity must be 0.05..=1.0".into()));
        }
        Ok(WatermarkSettings { text: text.to_owned(), image_file_id, position, opacity: self.watermark_opacity })
    }

    /// The probe settings, checked.
    fn probe_settings(&self) -> Result<ProbeSettings, Error> {
        if self.probe_after < Duration::from_secs(1) {
            return Err(Error::Config("--render-probe-after must be at least 1s".into()));
        }
        if self.probe_max_backoff < self.probe_after {
            return Err(Error::Config("--render-probe-max-backoff must be at least --render-probe-after".into()));
        }
        let template = match &self.probe_template {
            None => None,
            Some(file_id) => {
                let composition = self.probe_composition.as_deref().map(str::trim).unwrap_or_default();
                if composition.is_empty() || composition.chars().count() > 255 {
                    return Err(Error::Config(
                        "--render-probe-composition (1..=255 characters) is required with --render-probe-template"
                            .into(),
                    ));
                }
                if self.probe_frame < 0 {
                    return Err(Error::Config("--render-probe-frame must not be negative".into()));
                }
                let template = ProbeTemplate::new(file_id, composition, self.probe_frame)
                    .ok_or_else(|| Error::Config("--render-probe-template must be a file id (UUID)".into()))?;
                Some(template)
            }
        };
        Ok(ProbeSettings {
            enabled: self.probes,
            after: self.probe_after,
            max_backoff: self.probe_max_backoff,
            template,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        render: RenderArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, Error> {
        let cli = Cli::try_parse_from(std::iter::once("flatrender").chain(args.iter().copied())).expect("flags parse");
        cli.render.settings()
    }

    #[test]
    fn defaults_are_the_protocols() {
        let settings = parse(&[]).unwrap();
        let defaults = Settings::default();
        assert_eq!(settings.heartbeat_interval, defaults.heartbeat_interval);
        assert_eq!(settings.lease_ttl, defaults.lease_ttl);
        assert_eq!(settings.reconnect_grace, defaults.reconnect_grace);
        assert!(settings.orchestrator_id.starts_with("render-"));
        assert!(settings.probes.enabled);
        assert_eq!(settings.probes.after, Duration::from_secs(300));
        assert_eq!(settings.probes.template, None, "no probe template, no probes");
    }

    #[test]
    fn probe_flags() {
        let file = "7d0c1a2e-8a59-4b8a-9a33-0d8f3f1c2b10";
        let settings = parse(&[
            "--render-probe-template",
            file,
            "--render-probe-composition",
            "Probe",
            "--render-probe-frame",
            "12",
            "--render-probe-after",
            "2m",
            "--render-probe-max-backoff",
            "30m",
            "--render-probes",
            "false",
        ])
        .unwrap();
        let template = settings.probes.template.unwrap();
        assert_eq!(
            (template.file_id.to_string().as_str(), template.composition.as_str(), template.frame),
            (file, "Probe", 12)
        );
        assert_eq!(
            (settings.probes.after, settings.probes.max_backoff),
            (Duration::from_secs(120), Duration::from_secs(1800))
        );
        assert!(!settings.probes.enabled);
        assert!(parse(&["--render-probe-template", file]).is_err(), "a composition is required");
        assert!(parse(&["--render-probe-template", "nope", "--render-probe-composition", "Probe"]).is_err());
        assert!(parse(&["--render-probe-after", "0s"]).is_err());
        assert!(parse(&["--render-probe-after", "10m", "--render-probe-max-backoff", "5m"]).is_err());
    }

    #[test]
    fn watermark_flags() {
        assert_eq!(parse(&[]).unwrap().watermark, WatermarkSettings::default());
        let image = "7d3f7c8e-5b9a-4f7e-9c1d-2a6b8e4f0c11";
        let settings = parse(&[
            "--render-watermark-text",
            " Made with Example ",
            "--render-watermark-image",
            image,
            "--render-watermark-position",
            "top-left",
            "--render-watermark-opacity",
            "0.8",
        ])
        .unwrap();
        assert_eq!(
            settings.watermark,
            WatermarkSettings {
                text: "Made with Example".into(),
                image_file_id: Some(uuid::Uuid::parse_str(image).unwrap()),
                position: WatermarkPosition::TopLeft,
                opacity: 0.8,
            }
        );
        for bad in [
            ["--render-watermark-text", " "],
            ["--render-watermark-text", "a\u{7}b"],
            ["--render-watermark-image", "logo.png"],
            ["--render-watermark-position", "middle"],
            ["--render-watermark-opacity", "0"],
            ["--render-watermark-opacity", "1.5"],
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.to_string().contains(bad[0]), "{bad:?}: {err}");
        }
        assert!(parse(&["--render-watermark-text", &"x".repeat(101)]).is_err());
    }

    #[test]
    fn flags_set_the_timings() {
        let settings = parse(&[
            "--render-orchestrator-id",
            "render-0",
            "--render-heartbeat-interval",
            "2s",
            "--render-lease-ttl",
            "6s",
            "--render-reconnect-grace",
            "4s",
            "--render-max-attempts",
            "5",
            "--render-quarantine-crashes",
            "5",
            "--render-quarantine-window",
            "30m",
            "--render-health-log-interval",
            "5m",
            "--render-no-eligible-node-timeout",
            "2h",
        ])
        .unwrap();
        assert_eq!(settings.orchestrator_id, "render-0");
        assert_eq!(settings.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(settings.lease_ttl, Duration::from_secs(6));
        assert_eq!(settings.reconnect_grace, Duration::from_secs(4));
        assert_eq!(settings.max_attempts, 5);
        assert_eq!((settings.quarantine_crashes, settings.quarantine_window), (5, Duration::from_secs(1800)));
        assert_eq!(settings.health_log_interval, Duration::from_secs(300));
        assert_eq!(settings.no_eligible_node_timeout, Duration::from_secs(7200));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse(&["--render-heartbeat-interval", "90s"]).is_err());
        assert!(parse(&["--render-lease-ttl", "1s"]).is_err());
        assert!(parse(&["--render-max-attempts", "0"]).is_err());
        assert!(parse(&["--render-orchestrator-id", " "]).is_err());
        assert!(parse(&["--render-quarantine-window", "0s"]).is_err());
        assert!(parse(&["--render-health-log-interval", "0s"]).is_err());
        assert!(parse(&["--render-no-eligible-node-timeout", "0s"]).is_err());
    }
}
