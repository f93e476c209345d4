//! Finding After Effects installs: the configured ones, or those in the standard places —
//! `C:\Program Files\Adobe\Adobe After Effects <ver>\Support Files\aerender.exe` on Windows and
//! `/Applications/Adobe After Effects <ver>/aerender` on macOS, where `<ver>` is "2025",
//! "2024", ..., "CC 2019". Discovery takes the root directory so tests can lay out both
//! platforms' trees in a scratch directory on any host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AeInstallConfig, Config};

const FOLDER_PREFIX: &str = "Adobe After Effects ";

/// An After Effects install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeInstall {
    /// The version as its folder names it, e.g. "2025" or "CC 2019".
    pub version: String,
    /// The installation directory (with `Support Files` on Windows; the folder holding the app
    /// on macOS). For a configured install, the aerender's directory.
    pub install_dir: PathBuf,
    pub aerender: PathBuf,
    /// What `aerender -version` printed, e.g. "24.2.1x2", once probed ([`probe_build`]).
    pub build: Option<String>,
    /// Version of FlatRender's `commandLineRenderer.jsx` patch; 0 when not patched (the
    /// injection code knows; discovery does not look).
    pub script_patch_version: u32,
}

/// Which platform's layout to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Windows,
    MacOs,
}

impl Layout {
    /// The layout of the host, if After Effects exists for it.
    pub fn host() -> Option<Layout> {
        if cfg!(windows) {
            Some(Layout::Windows)
        } else if cfg!(target_os = "macos") {
            Some(Layout::MacOs)
        } else {
            None
        }
    }

    /// Where this layout's install folders live on a real machine.
    pub fn standard_root(self) -> PathBuf {
        match self {
            Layout::Windows => PathBuf::from(r"C:\Program Files\Adobe"),
            Layout::MacOs => PathBuf::from("/Applications"),
        }
    }

    fn aerender_in(self, install_dir: &Path) -> PathBuf {
        match self {
            Layout::Windows => install_dir.join("Support Files").join("aerender.exe"),
            Layout::MacOs => install_dir.join("aerender"),
        }
    }
}

impl AeInstall {
    /// The major version After Effects reports (`aerender -version`): the year releases from
    /// 2022 on are 22.x and later, "CC 2019" is 16.x, 2020 is 17.x and 2021 is 18.x.
    pub fn major(&self) -> Option<u32> {
        if let Some(major) = self.build.as_ref().and_then(|b| b.split('.').next()?.parse().ok()) {
            return Some(major);
        }
        let year: u32 = self.version.trim().trim_start_matches("CC").trim().parse().ok()?;
        match year {
            2019 => Some(16),
            2020 => Some(17),
            2021 => Some(18),
            2022.. => Some(year - 2000),
            _ => None,
        }
    }

    /// Multi-frame rendering (`-mfr`) came with After Effects 2022 (22.0).
    pub fn supports_mfr(&self) -> bool {
        self.major().is_some_and(|m| m >= 22)
    }

    fn from_config(configured: &AeInstallConfig) -> AeInstall {
        AeInstall {
            version: configured.version.clone(),
            install_dir: configured.aerender.parent().map(Path::to_path_buf).unwrap_or_default(),
            aerender: configured.aerender.clone(),
            build: None,
            script_patch_version: 0,
        }
    }
}

/// The installs the configuration names, or else those found in the host's standard place.
pub fn installs(config: &Config) -> Vec<AeInstall> {
    if !config.after_effects.is_empty() {
        return config.after_effects.iter().map(AeInstall::from_config).collect();
    }
    Layout::host().map(|layout| discover(&layout.standard_root(), layout)).unwrap_or_default()
}

/// The installs under `root` laid out as `layout` has them, newest first. A folder without an
/// aerender executable (a partial uninstall) is skipped.
pub fn discover(root: &Path, layout: Layout) -> Vec<AeInstall> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<AeInstall> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(FOLDER_PREFIX)?.trim().to_owned();
            let install_dir = entry.path();
            let aerender = layout.aerender_in(&install_dir);
            aerender.is_file().then_some(AeInstall {
                version,
                install_dir,
                aerender,
                build: None,
                script_patch_version: 0,
            })
        })
        .collect();
    found.sort_by_key(|install| std::cmp::Reverse(sort_key(install)));
    found
}

/// Newest first: by year, then "Beta" and other suffixes after the plain release.
fn sort_key(install: &AeInstall) -> (u32, bool, String) {
    let digits: String = install.version.chars().filter(char::is_ascii_digit).take(4).collect();
    let year = digits.parse().unwrap_or(0);
    let plain = install.version.trim_start_matches("CC").trim() == digits;
    (year, plain, install.version.clone())
}

/// Runs `aerender -version` and returns the build it prints ("aerender version 24.2.1x2" →
/// "24.2.1x2"); `None` when it fails or says nothing recognisable within `timeout`. On a real
/// install this can take seconds (it starts After Effects' core), so call it once at start.
pub async fn probe_build(aerender: &Path, timeout: Duration) -> Option<String> {
    let run = tokio::process::Command::new(aerender).arg("-version").kill_on_drop(true).output();
    let output = tokio::time::timeout(timeout, run).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version_line(&text)
}

fn parse_version_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("aerender version "))
        .map(|build| build.trim().to_owned())
        .filter(|build| !build.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn windows_layout() {
        let root = tempfile::tempdir().unwrap();
        for version in ["2024", "2025", "CC 2019", "2022"] {
            touch(&root.path().join(format!("Adobe After Effects {version}/Support Files/aerender.exe")));
        }
        // Not installs: no aerender, another product, a stray file.
        std::fs::create_dir_all(root.path().join("Adobe After Effects 2023/Support Files")).unwrap();
        touch(&root.path().join("Adobe Premiere Pro 2025/Support Files/aerender.exe"));
        touch(&root.path().join("Adobe After Effects 2021"));

        let found = discover(root.path(), Layout::Windows);
        let versions: Vec<&str> = found.iter().map(|i| i.version.as_str()).collect();
        assert_eq!(versions, ["2025", "2024", "2022", "CC 2019"]);
        assert_eq!(
            found[0].aerender,
            root.path().join("Adobe After Effects 2025").join("Support Files").join("aerender.exe")
        );
        assert_eq!(found[0].install_dir, root.path().join("Adobe After Effects 2025"));
        assert_eq!(found[0].major(), Some(25));
        assert_eq!(found[3].major(), Some(16));
        assert!(found[2].supports_mfr() && !found[3].supports_mfr());
        assert!(discover(root.path(), Layout::MacOs).is_empty(), "the macOS layout finds nothing here");
    }

    #[test]
    fn macos_layout() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("Adobe After Effects 2024/aerender"));
        touch(&root.path().join("Adobe After Effects 2025/aerender"));
        touch(&root.path().join("Adobe After Effects (Beta)/aerender"));
        touch(&root.path().join("Adobe After Effects 2025 (Beta)/aerender"));
        std::fs::create_dir_all(root.path().join("Adobe After Effects 2023/Adobe After Effects 2023.app")).unwrap();

        let found = discover(root.path(), Layout::MacOs);
        let versions: Vec<&str> = found.iter().map(|i| i.version.as_str()).collect();
        assert_eq!(versions, ["2025", "2025 (Beta)", "2024", "(Beta)"]);
        assert_eq!(found[0].aerender, root.path().join("Adobe After Effects 2025").join("aerender"));
        assert!(discover(&root.path().join("missing"), Layout::MacOs).is_empty());
    }

    #[test]
    fn configured_installs_replace_discovery() {
        let mut config = Config::load(&crate::config::Flags::default(), |_| None).unwrap();
        config.after_effects =
            vec![AeInstallConfig { version: "2025".into(), aerender: PathBuf::from("/opt/ae/aerender") }];
        let found = installs(&config);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].install_dir, PathBuf::from("/opt/ae"));
    }

    #[test]
    fn version_line() {
        let text = "\n\naerender version 24.2.1x2\n";
        assert_eq!(parse_version_line(text).as_deref(), Some("24.2.1x2"));
        assert_eq!(parse_version_line("PROGRESS: nothing"), None);
        let install = AeInstall {
            version: "2024".into(),
            install_dir: PathBuf::new(),
            aerender: PathBuf::new(),
            build: Some("24.2.1x2".into()),
            script_patch_version: 0,
        };
        assert_eq!(install.major(), Some(24));
    }
}
