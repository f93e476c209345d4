//! One run of the simulator, in aerender's order: banner, project, script, render queue, the
//! render log, and the exit code of `commandLineRenderer.jsx`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::aerender::script_patch::{self, PatchState};
use crate::injection::Injection;
use crate::simulator::args::{self, Args, Command};
use crate::simulator::faults::Fault;
use crate::simulator::hang::{self, hang_forever};
use crate::simulator::inject;
use crate::simulator::knobs::Knobs;
use crate::simulator::output::Console;
use crate::simulator::project::{Composition, Content, Project, ProjectError};
use crate::simulator::render::{self, Scene};
use crate::simulator::sequence;
use crate::simulator::timecode;

/// The version the simulator reports.
pub const VERSION: &str = "aerender version 24.2.1x2";

/// Exit codes of `commandLineRenderer.jsx`.
pub mod exit {
    pub const OK: i32 = 0;
    pub const APPLICATION: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const SYNTAX: i32 = 3;
    pub const AERENDER: i32 = 7;
    pub const AFTER_EFFECTS: i32 = 9;
    /// Exit code of a simulator misconfiguration (bad `FLATRENDER_SIM_*` value).
    pub const SIMULATOR_CONFIG: i32 = 2;

    /// The code as reported with `-log`: 3, 5, 7 and 9 become 4, 6, 8 and 10.
    pub fn with_log(code: i32, log: bool) -> i32 {
        if log && matches!(code, 3 | 5 | 7 | 9) { code + 1 } else { code }
    }
}

const USAGE: &str = "\
USAGE: aerender [-help] [-version] -project <project_path> [-teamproject <name>] [-comp <comp_name>]
                [-rqindex <index>] [-RStemplate <name>] [-OMtemplate <name>] [-renderSettings \"k: v; ...\"]
                [-outputSettings \"k: v; ...\"] [-output <path>] [-log <path>] [-s <frame>] [-e <frame>] [-i <inc>]
                [-mem_usage <image_cache_percent> <max_mem_percent>] [-mfr <ON|OFF> <max_cpu_percent>]
                [-v <ERRORS|ERRORS_AND_PROGRESS>] [-close <DO_NOT_SAVE_CHANGES|SAVE_CHANGES|DO_NOT_CLOSE>]
                [-sound <ON|OFF>] [-continueOnMissingFootage] [-reuse] [-r <script.jsx>]
(aerender-sim: the FlatRender aerender simulator; see node-agent/SIMULATOR.md)";

/// The binary's whole life: the helper child, or a run with this process's environment.
pub fn main_with_env(argv: &[String]) -> i32 {
    if argv.first().map(String::as_str) == Some(hang::CHILD_ARG) {
        return hang::child_main();
    }
    run(argv, &|name| std::env::var(name).ok())
}

/// Whether `-r` exists: like aerender, the simulator takes it only when no stock (unpatched)
/// `Scripts/Startup/commandLineRenderer.jsx` lies beside it. Without one (how it is usually
/// run), it behaves as a patched install.
fn script_flag() -> bool {
    let Ok(exe) = std::env::current_exe() else { return true };
    !matches!(script_patch::inspect(&exe), Ok(PatchState::Stock))
}

/// Runs aerender with `argv` (without the program name); `env` looks up `FLATRENDER_SIM_*`.
/// Returns the exit code; crash and hang faults never return.
pub fn run(argv: &[String], env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let (args, syntax_error) = match args::parse_for(argv, script_flag()) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return exit::USAGE;
        }
        Ok(Command::Version) => {
            println!("{VERSION}");
            return exit::OK;
        }
        Ok(Command::Render(args)) => (*args, None),
        Err(e) => (Args { log: e.log.clone(), ..Args::default() }, Some(e)),
    };
    // The project is read before the banner so that its faults (banner-last) apply from the
    // first line; its errors are reported where After Effects would report them.
    let opened = args.project.as_deref().map(Project::open);
    let project = opened.as_ref().and_then(|r| r.as_ref().ok()).map(|(project, _)| project);
    let knobs = match Knobs::resolve(env, project) {
        Ok(knobs) => knobs,
        Err(message) => {
            eprintln!("aerender-sim: {message}");
            return exit::SIMULATOR_CONFIG;
        }
    };
    let mut console = Console::new(args.log.as_deref(), knobs.faults.has(Fault::BannerLast), args.errors_only());
    let mut session = Session { args, knobs, console: &mut console, started: Instant::now() };
    let code = session.run(syntax_error, opened);
    console.finish();
    code
}

struct Session<'a> {
    args: Args,
    knobs: Knobs,
    console: &'a mut Console,
    started: Instant,
}

/// The frames of one render: comp frame numbers and where they go.
struct Plan {
    comp: Composition,
    bundle: PathBuf,
    output: String,
    start: u32,
    end: u32,
    size: (u32, u32),
}

impl Session<'_> {
    fn fail(&mut self, code: i32, lines: &[String]) -> i32 {
        for line in lines {
            self.console.line(line);
        }
        exit::with_log(code, self.args.log.is_some())
    }

    fn run(
        &mut self,
        syntax_error: Option<args::SyntaxError>,
        opened: Option<Result<(Project, PathBuf), ProjectError>>,
    ) -> i32 {
        self.console.banner(VERSION);
        self.console.banner("PROGRESS: Launching After Effects...");
        if self.knobs.faults.has(Fault::InstantExit) {
            return exit::APPLICATION;
        }
        std::thread::sleep(Duration::from_millis(self.knobs.startup_ms));
        self.console.banner("PROGRESS: ...After Effects successfully launched");
        if let Some(error) = syntax_error {
            return self.fail(exit::SYNTAX, &[error.to_string()]);
        }
        if self.knobs.faults.has(Fault::AnotherInstance) {
            let message = "aerender ERROR: After Effects can not render for aerender. Another instance of After \
                           Effects is running or a modal dialog is open; close it and try again.";
            return self.fail(exit::AFTER_EFFECTS, &[message.into()]);
        }
        let (mut project, bundle) = match opened {
            Some(Ok(opened)) => opened,
            Some(Err(e @ ProjectError::NotFound(_))) => {
                return self.fail(exit::AERENDER, &[format!("aerender ERROR: {e}")]);
            }
            Some(Err(e)) => return self.fail(exit::AFTER_EFFECTS, &[format!("aerender ERROR: {e}")]),
            None => return self.fail(exit::AERENDER, &["aerender ERROR: No project specified.".into()]),
        };
        let mut reported_fonts = Vec::new();
        self.warn_missing_fonts(&project, &mut reported_fonts);
        if let Err(code) = self.run_script(&mut project, &bundle) {
            return code;
        }
        self.warn_missing_fonts(&project, &mut reported_fonts);
        let plan = match self.plan(project, bundle) {
            Ok(plan) => plan,
            Err(code) => return code,
        };
        self.render(plan)
    }

    /// The missing-font warning for each font of the project's text layers that this
    /// "machine" lacks and that was not reported yet.
    fn warn_missing_fonts(&mut self, project: &Project, reported: &mut Vec<String>) {
        let used = inject::fonts_used(&project.compositions);
        let forced = self.knobs.faults.has(Fault::MissingFont).then(|| used.first().cloned()).flatten();
        for font in used {
            let missing = self.knobs.missing_fonts.contains(&font) || forced.as_ref() == Some(&font);
            if missing && !reported.contains(&font) {
                let (family, style) = font.split_once('-').unwrap_or((font.as_str(), "Regular"));
                self.console.line(&format!(
                    "WARNING:After Effects warning: Grouped_Message_{{some layers have missing dependencies.|||a \
                     layer has missing dependencies.###@0 dependencies are missing:}}Text Layer: Font family: \
                     {family}, Font style: {style}"
                ));
                reported.push(font);
            }
        }
    }

    /// Runs `-r`: reads the injection and applies it, failing like a thrown script error.
    fn run_script(&mut self, project: &mut Project, bundle: &std::path::Path) -> Result<(), i32> {
        let Some(script) = self.args.script.clone() else {
            if self.knobs.faults.has(Fault::ScriptError) {
                return Err(self.fail(exit::AFTER_EFFECTS, &["aerender ERROR: Runtime error in After Effects.".into()]));
            }
            return Ok(());
        };
        self.console.line(&format!("Running Script: {script}"));
        let result = if self.knobs.faults.has(Fault::ScriptError) {
            Err("Error: scene_data.edits[0]: value rejected: simulated script error".to_string())
        } else {
            std::fs::read_to_string(&script)
                .map_err(|e| format!("Error: Unable to read the script file ({e})"))
                .and_then(|text| Injection::from_script(&text).map_err(|e| format!("Error: {e}")))
                .and_then(|injection| inject::apply(project, bundle, &injection).map_err(|e| format!("Error: {e}")))
        };
        match result {
            Ok(warnings) => {
                for warning in warnings {
                    self.console.line(&warning);
                }
                Ok(())
            }
            Err(error) => {
                Err(self
                    .fail(exit::AFTER_EFFECTS, &[format!("aerender ERROR: Error executing script: {script}"), error]))
            }
        }
    }

    /// Finds the comp, output and frame range, failing as aerender does.
    fn plan(&mut self, project: Project, bundle: PathBuf) -> Result<Plan, i32> {
        let no_comp = "aerender ERROR: No comp was found with the given name.";
        let forced_missing = self.knobs.faults.has(Fault::MissingComp);
        let comp = if let Some(name) = self.args.comp.clone() {
            self.console.progress("PROGRESS: Adding specified comp to Render Queue");
            project
                .composition(&name)
                .filter(|_| !forced_missing)
                .cloned()
                .ok_or_else(|| self.fail(exit::AERENDER, &[no_comp.into()]))?
        } else if let Some(index) = self.args.rq_index {
            // The project's compositions stand for its render queue, in order.
            let found = project.compositions.get(index as usize - 1).filter(|_| !forced_missing).cloned();
            let message = format!("aerender ERROR: No render queue item was found with the index {index}.");
            found.ok_or_else(|| self.fail(exit::AERENDER, &[message]))?
        } else {
            let found = project.compositions.first().filter(|_| !forced_missing).cloned();
            found.ok_or_else(|| self.fail(exit::AERENDER, &[no_comp.into()]))?
        };
        let output = match (&self.args.output, &comp.output) {
            (Some(output), _) => output.clone(),
            (None, Some(output)) => bundle.join(output).to_string_lossy().into_owned(),
            (None, None) => {
                let message = "aerender ERROR: No output file was specified for the render queue item.";
                return Err(self.fail(exit::AERENDER, &[message.into()]));
            }
        };
        let last = comp.duration - 1;
        let (start, end) = (self.args.start.unwrap_or(0), self.args.end.unwrap_or(last));
        if start > end || end > last {
            let message = format!(
                "aerender ERROR: The frames {start} to {end} are not within the composition (frames 0 to {last})."
            );
            return Err(self.fail(exit::AERENDER, &[message]));
        }
        let size = self.args.output_settings.as_deref().and_then(args::resize_to).unwrap_or((comp.width, comp.height));
        Ok(Plan { comp, bundle, output, start, end, size })
    }

    fn tc(&self, comp: &Composition, frame: u32) -> String {
        let drop_frame = comp.drop_frame.unwrap_or(true);
        timecode::timecode(u64::from(frame), comp.fps, drop_frame)
    }

    fn render(&mut self, plan: Plan) -> i32 {
        let Plan { comp, bundle, output, start, end, size } = plan;
        let mut missing = render::missing_footage(&comp, &bundle);
        if missing.is_empty() && self.knobs.faults.has(Fault::MissingFootage) {
            let first_footage = comp.layers.iter().find_map(|layer| match &layer.content {
                Content::Image(image) => Some(render::footage_path(&bundle, image)),
                _ => None,
            });
            missing.push(first_footage.unwrap_or_else(|| bundle.join("footage").join("missing.png")));
        }
        let footage_warnings: Vec<String> = missing
            .iter()
            .map(|path| {
                format!(
                    "WARNING:After Effects warning: logged one error  error: Unable to Render: File Not Found {}",
                    path.display()
                )
            })
            .collect();
        if !missing.is_empty() && !self.args.continue_on_missing_footage {
            // The silent failure: nothing rendered, exit 0.
            self.total_time();
            for warning in &footage_warnings {
                self.console.line(warning);
            }
            return exit::OK;
        }
        for warning in &footage_warnings {
            self.console.line(warning);
        }
        self.settings_block(&comp, &output, start, end, size);
        let scene = Scene::compose(&comp, &bundle, size, &missing);
        let increment = self.args.increment.unwrap_or(1);
        let count = (end - start) / increment + 1;
        let faults = self.knobs.faults.clone();
        let output_module_failure = faults.has(Fault::OutputModule);
        for (done, frame) in (start..=end).step_by(increment as usize).enumerate() {
            let done = done as u32;
            if faults.crash_after() == Some(done) {
                if let Some(dir) = &self.knobs.crash_dir {
                    write_crash_report(dir, &comp.name, frame);
                }
                std::process::abort();
            }
            if faults.hang_after() == Some(done) {
                hang_forever(self.knobs.spawn_child);
            }
            let began = Instant::now();
            let path = PathBuf::from(sequence::frame_path(&output, frame));
            if let Err(message) = write_frame(&scene, frame, &path, output_module_failure && done + 1 == count) {
                return self.fail(exit::AFTER_EFFECTS, &[message]);
            }
            let cost = Duration::from_millis(faults.slow_ms(done + 1).unwrap_or(self.knobs.frame_ms));
            std::thread::sleep(cost.saturating_sub(began.elapsed()));
            let line =
                format!("PROGRESS:  {} ({}): {} Seconds", self.tc(&comp, frame), done + 1, began.elapsed().as_secs());
            self.console.progress(&line);
        }
        if output_module_failure {
            self.console
                .line("WARNING:After Effects warning: An output module failed. The file may be damaged or corrupted.");
        }
        let finished =
            format!("PROGRESS:  {}: Finished composition “{}”.", timecode::log_date(SystemTime::now()), comp.name);
        self.console.progress(&finished);
        if faults.has(Fault::HangAfterFinish) {
            hang_forever(self.knobs.spawn_child);
        }
        self.console.progress("PROGRESS:  ");
        self.total_time();
        exit::OK
    }

    fn total_time(&mut self) {
        let line = format!("PROGRESS:  Total Time Elapsed: {}", timecode::elapsed(self.started.elapsed()));
        self.console.progress(&line);
    }

    fn settings_block(&mut self, comp: &Composition, output: &str, start: u32, end: u32, size: (u32, u32)) {
        let custom = self.args.start.is_some() || self.args.end.is_some();
        let render_settings = self.args.render_settings_template.clone().unwrap_or_else(|| "Best Settings".into());
        let output_module = self.args.output_module_template.clone().unwrap_or_else(|| "Lossless".into());
        let lines = [
            format!("{}: Starting composition “{}”.", timecode::log_date(SystemTime::now()), comp.name),
            String::new(),
            format!("Render Settings: {render_settings}"),
            "Quality: Best".into(),
            "Resolution: Full".into(),
            format!("Size: {} x {}", comp.width, comp.height),
            format!("Time Span: {}", if custom { "Custom" } else { "Work Area" }),
            format!("Start: {}", self.tc(comp, start)),
            format!("End: {}", self.tc(comp, end)),
            format!("Duration: {}", self.tc(comp, end - start + 1)),
            format!("Frame Rate: {} (comp)", timecode::frame_rate(comp.fps)),
            String::new(),
            format!("Output Module: {output_module}"),
            format!("Output To: {output}"),
            "Format: PNG".into(),
            format!("Final Size: {} x {}", size.0, size.1),
            String::new(),
        ];
        for line in lines {
            self.console.progress(&format!("PROGRESS:  {line}"));
        }
    }
}

/// What a crash reporter leaves: a text report in `dir`, written whole (temporary name, then
/// renamed) just before the process dies. Best effort, as a crash reporter's is.
fn write_crash_report(dir: &std::path::Path, comp: &str, frame: u32) {
    let pid = std::process::id();
    let stamp = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let text = format!(
        "Process:               aerender-sim [{pid}]\n\
         Version:               {}\n\
         Exception Type:        EXC_CRASH (SIGABRT)\n\
         Crashed while:         rendering frame {frame} of composition \"{comp}\"\n\
         \n\
         Thread 0 Crashed:\n\
         0   aerender-sim   render_frame + 42\n\
         1   aerender-sim   render_queue + 7\n",
        VERSION.trim_start_matches("aerender version ")
    );
    let path = dir.join(format!("aerender-sim_{stamp}_{pid}.crash"));
    let _ = std::fs::create_dir_all(dir);
    let _ = sequence::write_atomically(&path, text.as_bytes());
}

/// Renders and writes one frame; `truncate` writes only half of it, in place, as a failed
/// output module leaves it.
fn write_frame(scene: &Scene, frame: u32, path: &std::path::Path, truncate: bool) -> Result<(), String> {
    let cannot = |e: &dyn std::fmt::Display| {
        format!("aerender ERROR: After Effects error: Can't write the output file {}: {e}", path.display())
    };
    let png = scene.frame(frame).encode_png().map_err(|e| cannot(&e))?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| cannot(&e))?;
    }
    if truncate {
        return std::fs::write(path, &png[..png.len() / 2]).map_err(|e| cannot(&e));
    }
    sequence::write_atomically(path, &png).map_err(|e| cannot(&e))
}

#[cfg(test)]
mod tests {
    use super::exit::with_log;

    #[test]
    fn log_shifts_the_error_codes() {
        assert_eq!([3, 5, 7, 9].map(|c| with_log(c, true)), [4, 6, 8, 10]);
        assert_eq!([0, 1, 2, 11].map(|c| with_log(c, true)), [0, 1, 2, 11]);
        assert_eq!(with_log(7, false), 7);
    }
}
