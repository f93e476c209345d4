//! aerender's command line, built as argv items (never through a shell): a comp name or path
//! with spaces or quotes reaches aerender exactly as given, and the two-value flags (`-mem_usage`,
//! `-mfr`) are two items each, as aerender's parser expects.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

/// Comp frame numbers to render, end inclusive (`-s`, `-e`, `-i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    pub start: u32,
    pub end: u32,
    pub step: u32,
}

impl FrameSpan {
    /// The comp frame numbers this span renders, in order.
    pub fn frames(self) -> impl Iterator<Item = u32> {
        (self.start..=self.end).step_by(self.step.max(1) as usize)
    }

    /// How many frames it renders.
    pub fn len(self) -> u32 {
        if self.end < self.start { 0 } else { (self.end - self.start) / self.step.max(1) + 1 }
    }

    /// Whether it renders nothing.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Multi-frame rendering (`-mfr ON|OFF <max cpu %>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mfr {
    pub enabled: bool,
    pub max_cpu_percent: u32,
}

/// Memory limits (`-mem_usage <image cache %> <max %>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemUsage {
    pub image_cache_percent: u32,
    pub max_memory_percent: u32,
}

/// One aerender run.
#[derive(Clone, Debug, PartialEq)]
pub struct AerenderCommand {
    /// The project file, inside the unpacked template.
    pub project: PathBuf,
    /// The composition (`-comp`).
    pub composition: String,
    /// The output pattern; contains `[#####]` so frames carry comp frame numbers.
    pub output: PathBuf,
    pub frames: FrameSpan,
    /// The injection script (`-r`, the patched commandLineRenderer.jsx).
    pub script: Option<PathBuf>,
    pub render_settings_template: Option<String>,
    pub output_module_template: Option<String>,
    /// `-renderSettings "key: value; ..."` (After Effects 2022+).
    pub render_settings: BTreeMap<String, String>,
    /// `-outputSettings "key: value; ..."` (After Effects 2022+).
    pub output_settings: BTreeMap<String, String>,
    pub mfr: Option<Mfr>,
    pub mem_usage: Option<MemUsage>,
    pub continue_on_missing_footage: bool,
}

/// A value aerender's syntax cannot carry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("the frame range {start}..={end} (step {step}) is empty or has no step")]
    BadFrames { start: u32, end: u32, step: u32 },
    #[error("{what} must be 1..=100, not {value}")]
    Percent { what: &'static str, value: u32 },
    #[error("the output pattern {0:?} has no [#] placeholder for the frame number")]
    NoFramePlaceholder(String),
    #[error("the setting {key:?}: {value:?} cannot be written as \"key: value; ...\" (';' or a ':' in the key)")]
    Setting { key: String, value: String },
}

impl AerenderCommand {
    /// The argv items after the program name.
    pub fn argv(&self) -> Result<Vec<OsString>, ArgvError> {
        self.check()?;
        let mut argv: Vec<OsString> = Vec::with_capacity(32);
        let mut flag = |name: &str, values: &[OsString]| {
            argv.push(name.into());
            argv.extend(values.iter().cloned());
        };
        flag("-project", &[self.project.clone().into()]);
        if let Some(script) = &self.script {
            flag("-r", &[script.clone().into()]);
        }
        flag("-comp", &[self.composition.clone().into()]);
        if let Some(template) = &self.render_settings_template {
            flag("-RStemplate", &[template.into()]);
        }
        if let Some(template) = &self.output_module_template {
            flag("-OMtemplate", &[template.into()]);
        }
        if !self.render_settings.is_empty() {
            flag("-renderSettings", &[settings(&self.render_settings).into()]);
        }
        if !self.output_settings.is_empty() {
            flag("-outputSettings", &[settings(&self.output_settings).into()]);
        }
        flag("-output", &[self.output.clone().into()]);
        let FrameSpan { start, end, step } = self.frames;
        flag("-s", &[start.to_string().into()]);
        flag("-e", &[end.to_string().into()]);
        if step != 1 {
            flag("-i", &[step.to_string().into()]);
        }
        if let Some(Mfr { enabled, max_cpu_percent }) = self.mfr {
            flag("-mfr", &[if enabled { "ON" } else { "OFF" }.into(), max_cpu_percent.to_string().into()]);
        }
        if let Some(MemUsage { image_cache_percent, max_memory_percent }) = self.mem_usage {
            flag("-mem_usage", &[image_cache_percent.to_string().into(), max_memory_percent.to_string().into()]);
        }
        if self.continue_on_missing_footage {
            flag("-continueOnMissingFootage", &[]);
        }
        // Progress lines are what the driver reads; the project is never saved.
        flag("-v", &["ERRORS_AND_PROGRESS".into()]);
        flag("-close", &["DO_NOT_SAVE_CHANGES".into()]);
        flag("-sound", &["OFF".into()]);
        Ok(argv)
    }

    fn check(&self) -> Result<(), ArgvError> {
        if self.composition.is_empty() {
            return Err(ArgvError::Empty("the composition name"));
        }
        if self.project.as_os_str().is_empty() {
            return Err(ArgvError::Empty("the project path"));
        }
        let FrameSpan { start, end, step } = self.frames;
        if step == 0 || end < start {
            return Err(ArgvError::BadFrames { start, end, step });
        }
        let output = self.output.to_string_lossy();
        if !output.contains("[#") {
            return Err(ArgvError::NoFramePlaceholder(output.into_owned()));
        }
        let percent = |what, value: u32| {
            if (1..=100).contains(&value) { Ok(()) } else { Err(ArgvError::Percent { what, value }) }
        };
        if let Some(mfr) = self.mfr {
            percent("the MFR CPU limit", mfr.max_cpu_percent)?;
        }
        if let Some(mem) = self.mem_usage {
            percent("the image cache share", mem.image_cache_percent)?;
            percent("the memory limit", mem.max_memory_percent)?;
        }
        for (key, value) in self.render_settings.iter().chain(&self.output_settings) {
            if key.is_empty() || key.contains([';', ':']) || value.contains(';') {
                return Err(ArgvError::Setting { key: key.clone(), value: value.clone() });
            }
        }
        Ok(())
    }
}

/// `key: value; key: value`, in key order (the same settings always give the same argv).
fn settings(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> AerenderCommand {
        AerenderCommand {
            project: PathBuf::from("/cache/ab/project file.aep"),
            composition: "Scene \"2\" – Intro".into(),
            output: PathBuf::from("/srv/agent/t-1/out/frame_[#####].png"),
            frames: FrameSpan { start: 60, end: 119, step: 1 },
            script: Some(PathBuf::from("/srv/agent/t-1/inject.jsx")),
            render_settings_template: Some("Best Settings".into()),
            output_module_template: None,
            render_settings: BTreeMap::new(),
            output_settings: BTreeMap::new(),
            mfr: None,
            mem_usage: None,
            continue_on_missing_footage: false,
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn values_with_spaces_and_quotes_are_single_items() {
        let argv = strings(&command().argv().unwrap());
        let expected = [
            "-project",
            "/cache/ab/project file.aep",
            "-r",
            "/srv/agent/t-1/inject.jsx",
            "-comp",
            "Scene \"2\" – Intro",
            "-RStemplate",
            "Best Settings",
            "-output",
            "/srv/agent/t-1/out/frame_[#####].png",
            "-s",
            "60",
            "-e",
            "119",
            "-v",
            "ERRORS_AND_PROGRESS",
            "-close",
            "DO_NOT_SAVE_CHANGES",
            "-sound",
            "OFF",
        ];
        assert_eq!(argv, expected);
    }

    #[test]
    fn two_value_flags_are_two_items() {
        let mut cmd = command();
        cmd.mfr = Some(Mfr { enabled: true, max_cpu_percent: 90 });
        cmd.mem_usage = Some(MemUsage { image_cache_percent: 50, max_memory_percent: 70 });
        cmd.frames.step = 2;
        cmd.continue_on_missing_footage = true;
        cmd.output_settings =
            BTreeMap::from([("Resize".into(), "true".into()), ("Resize to".into(), "1280,720".into())]);
        let argv = strings(&cmd.argv().unwrap());
        let at = |flag: &str| argv.iter().position(|a| a == flag).unwrap();
        assert_eq!(argv[at("-mfr") + 1..at("-mfr") + 3], ["ON", "90"]);
        assert_eq!(argv[at("-mem_usage") + 1..at("-mem_usage") + 3], ["50", "70"]);
        assert_eq!(argv[at("-i") + 1], "2");
        assert_eq!(argv[at("-outputSettings") + 1], "Resize: true; Resize to: 1280,720");
        assert!(argv.contains(&"-continueOnMissingFootage".to_string()));
    }

    #[test]
    fn what_aerender_cannot_take_is_refused() {
        let mut cmd = command();
        cmd.frames = FrameSpan { start: 5, end: 4, step: 1 };
        assert!(matches!(cmd.argv(), Err(ArgvError::BadFrames { .. })));
        let mut cmd = command();
        cmd.output = PathBuf::from("/srv/agent/out.png");
        assert!(matches!(cmd.argv(), Err(ArgvError::NoFramePlaceholder(_))));
        let mut cmd = command();
        cmd.mfr = Some(Mfr { enabled: true, max_cpu_percent: 0 });
        assert!(matches!(cmd.argv(), Err(ArgvError::Percent { .. })));
        let mut cmd = command();
        cmd.render_settings.insert("Quality".into(), "Best; Resolution: Full".into());
        assert!(matches!(cmd.argv(), Err(ArgvError::Setting { .. })));
        let mut cmd = command();
        cmd.composition.clear();
        assert_eq!(cmd.argv(), Err(ArgvError::Empty("the composition name")));
    }

    #[test]
    fn spans_count_their_frames() {
        assert_eq!(FrameSpan { start: 60, end: 62, step: 1 }.len(), 3);
        assert_eq!(FrameSpan { start: 0, end: 9, step: 4 }.frames().collect::<Vec<_>>(), [0, 4, 8]);
        assert_eq!(FrameSpan { start: 0, end: 9, step: 4 }.len(), 3);
        assert!(FrameSpan { start: 3, end: 2, step: 1 }.is_empty());
    }
}
