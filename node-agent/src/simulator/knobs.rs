//! The simulator's settings from the environment, which win over the project's: per-frame and
//! startup cost, faults, missing fonts, and the helper child process.

use crate::simulator::faults::Faults;
use crate::simulator::project::Project;

/// Least time one frame takes, in milliseconds.
pub const FRAME_MS: &str = "FLATRENDER_SIM_FRAME_MS";
/// Time between `Launching After Effects...` and `...successfully launched`, in milliseconds.
pub const STARTUP_MS: &str = "FLATRENDER_SIM_STARTUP_MS";
/// Comma-separated faults (see [`crate::simulator::faults`]); when set, the project's are ignored.
pub const FAULT: &str = "FLATRENDER_SIM_FAULT";
/// Comma-separated PostScript font names missing on this "machine", added to the project's.
pub const MISSING_FONTS: &str = "FLATRENDER_SIM_MISSING_FONTS";
/// `1`: a hang also starts a helper child process (same process group) that outlives nothing
/// but a tree kill, so that the agent's tree kill can be tested.
pub const CHILD: &str = "FLATRENDER_SIM_CHILD";

/// A directory where a crash leaves a crash report (`aerender-sim_<time>_<pid>.crash`), as
/// After Effects' crash reporter does in the user's crash-report folder.
pub const CRASH_DIR: &str = "FLATRENDER_SIM_CRASH_DIR";

/// The settings of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    pub frame_ms: u64,
    pub startup_ms: u64,
    pub faults: Faults,
    pub missing_fonts: Vec<String>,
    pub spawn_child: bool,
    pub crash_dir: Option<std::path::PathBuf>,
}

impl Knobs {
    /// Settings from `env` (a variable lookup) over `project`'s (when a project was read).
    pub fn resolve(env: &dyn Fn(&str) -> Option<String>, project: Option<&Project>) -> Result<Knobs, String> {
        let millis = |name: &str, fallback: Option<u64>| -> Result<u64, String> {
            match env(name).filter(|v| !v.trim().is_empty()) {
                Some(v) => v.trim().parse().map_err(|_| format!("{name} must be a number of milliseconds, not {v:?}")),
                None => Ok(fallback.unwrap_or(0)),
            }
        };
        let faults = match env(FAULT).filter(|v| !v.trim().is_empty()) {
            Some(list) => Faults::parse_list(&list)?,
            None => Faults::parse_list(&project.map(|p| p.faults.join(",")).unwrap_or_default())?,
        };
        let mut missing_fonts: Vec<String> = project.map(|p| p.missing_fonts.clone()).unwrap_or_default();
        if let Some(list) = env(MISSING_FONTS) {
            missing_fonts.extend(list.split(',').map(str::trim).filter(|f| !f.is_empty()).map(String::from));
        }
        Ok(Knobs {
            frame_ms: millis(FRAME_MS, project.and_then(|p| p.frame_ms))?,
            startup_ms: millis(STARTUP_MS, project.and_then(|p| p.startup_ms))?,
            faults,
            missing_fonts,
            spawn_child: env(CHILD).is_some_and(|v| v.trim() == "1"),
            crash_dir: env(CRASH_DIR).filter(|v| !v.trim().is_empty()).map(std::path::PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::faults::Fault;

    fn project() -> Project {
        Project {
            compositions: vec![],
            missing_fonts: vec!["A-Bold".into()],
            frame_ms: Some(7),
            startup_ms: None,
            faults: vec!["hang:2".into()],
        }
    }

    #[test]
    fn the_environment_wins_over_the_project() {
        let none = |_: &str| None;
        let knobs = Knobs::resolve(&none, Some(&project())).unwrap();
        assert_eq!((knobs.frame_ms, knobs.startup_ms), (7, 0));
        assert_eq!(knobs.faults, Faults(vec![Fault::Hang { after: 2 }]));
        let env = |name: &str| match name {
            FRAME_MS => Some("3".to_string()),
            FAULT => Some("banner-last".to_string()),
            MISSING_FONTS => Some("B, C".to_string()),
            CHILD => Some("1".to_string()),
            _ => None,
        };
        let knobs = Knobs::resolve(&env, Some(&project())).unwrap();
        assert_eq!(knobs.frame_ms, 3);
        assert_eq!(knobs.faults, Faults(vec![Fault::BannerLast]));
        assert_eq!(knobs.missing_fonts, ["A-Bold", "B", "C"]);
        assert!(knobs.spawn_child);
        let bad = |name: &str| (name == FRAME_MS).then(|| "fast".to_string());
        assert!(Knobs::resolve(&bad, None).unwrap_err().contains(FRAME_MS));
    }
}
