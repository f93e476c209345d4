//! The `aerender-sim` binary end to end: command line, stdout, exit codes, frames and every
//! fault mode, each in its own temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flatrender_agent::injection::{Change, Injection, LayerEdit, LayerRef, Rgba, TextChange};
use flatrender_agent::simulator::raster::Frame;

const SIM: &str = env!("CARGO_BIN_EXE_aerender-sim");

const PROJECT: &str = r##"{
    "compositions": [{
        "name": "Scene 1", "width": 320, "height": 180, "fps": 30, "duration": 300,
        "background": "#102030",
        "layers": [
            {"name": "Title", "kind": "text", "text": "Template", "font": "Montserrat-Bold",
             "font_size": 16, "fill": "#ffffff", "position": [10, 20]},
            {"name": "Panel", "kind": "solid", "color": "#333333", "rect": [0, 100, 320, 60]}
        ]
    }]
}"##;

const RED: [u8; 3] = [255, 0, 0];
const BLUE: [u8; 3] = [0, 0, 255];

/// A bundle with the project (and optional changes to it) in a fresh directory.
struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new() -> Bundle {
        Bundle::with_project(PROJECT)
    }

    fn with_project(json: &str) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("project.aepx.json"), json).unwrap();
        Bundle { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out_pattern(&self) -> String {
        self.path("out/frame_[#####].png").to_string_lossy().into_owned()
    }

    /// An injection script setting the title's text and colour and the panel's colour.
    fn write_injection(&self, edits: Vec<LayerEdit>) -> String {
        let script = self.path("inject.jsx");
        std::fs::write(&script, Injection { edits, custom_data: serde_json::Value::Null }.to_script()).unwrap();
        script.to_string_lossy().into_owned()
    }

    /// The standard 3-frame chunk: frames 60 to 62 of "Scene 1" into `out/`.
    fn command(&self, extra: &[&str]) -> Command {
        let project = self.path("project.aepx.json");
        let mut args = vec!["-project", project.to_str().unwrap(), "-comp", "Scene 1", "-s", "60", "-e", "62"];
        let pattern = self.out_pattern();
        args.extend(["-output", pattern.as_str()]);
        args.extend(extra);
        sim(&args)
    }

    /// The names of the files in `out/`, sorted.
    fn outputs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path("out")) else { return vec![] };
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    fn frame(&self, number: u32) -> Frame {
        let bytes = std::fs::read(self.path(&format!("out/frame_{number:05}.png"))).unwrap();
        Frame::decode_png(&bytes).unwrap()
    }
}

/// `aerender-sim` with `args`, in a clean simulator environment.
fn sim(args: &[&str]) -> Command {
    let mut command = Command::new(SIM);
    command.args(args);
    for knob in ["FRAME_MS", "STARTUP_MS", "FAULT", "MISSING_FONTS", "CHILD"] {
        command.env_remove(format!("FLATRENDER_SIM_{knob}"));
    }
    command
}

fn run(mut command: Command) -> (i32, Vec<String>, Output) {
    let output = command.output().unwrap();
    let lines = String::from_utf8(output.stdout.clone()).unwrap().lines().map(String::from).collect();
    (output.status.code().unwrap_or(-1), lines, output)
}

fn with_fault(mut command: Command, fault: &str) -> Command {
    command.env("FLATRENDER_SIM_FAULT", fault);
    command
}

fn red() -> Rgba {
    Rgba { red: 1.0, green: 0.0, blue: 0.0, alpha: 1.0 }
}

fn title_and_panel_edits() -> Vec<LayerEdit> {
    vec![
        LayerEdit {
            index: 0,
            composition: Some("Scene 1".into()),
            layer: LayerRef::Name("Title".into()),
            ignore_missing: false,
            change: Change::Text(TextChange {
                text: "Acme Summer Sale".into(),
                font_size: Some(24.0),
                fill_color: Some(red()),
                ..TextChange::default()
            }),
        },
        LayerEdit {
            index: 1,
            composition: None,
            layer: LayerRef::Name("Panel".into()),
            ignore_missing: false,
            change: Change::SolidColor(Rgba { red: 0.0, green: 0.0, blue: 1.0, alpha: 1.0 }),
        },
    ]
}

#[test]
fn a_chunk_with_injected_data_renders_real_frames_and_the_documented_log() {
    let bundle = Bundle::new();
    let script = bundle.write_injection(title_and_panel_edits());
    let (code, lines, _) = run(bundle.command(&["-r", &script]));
    assert_eq!(code, 0, "{lines:#?}");
    let expected_in_order = [
        "aerender version 24.2.1x2".to_string(),
        "PROGRESS: Launching After Effects...".into(),
        "PROGRESS: ...After Effects successfully launched".into(),
        format!("Running Script: {script}"),
        "PROGRESS: Adding specified comp to Render Queue".into(),
        "PROGRESS:  Time Span: Custom".into(),
        "PROGRESS:  Start: 0:00:02:00".into(),
        "PROGRESS:  End: 0:00:02:02".into(),
        "PROGRESS:  Duration: 0:00:00:03".into(),
        "PROGRESS:  Frame Rate: 30.00 (comp)".into(),
        format!("PROGRESS:  Output To: {}", bundle.out_pattern()),
        "PROGRESS:  Format: PNG".into(),
        "PROGRESS:  0:00:02:00 (1): 0 Seconds".into(),
        "PROGRESS:  0:00:02:01 (2): 0 Seconds".into(),
        "PROGRESS:  0:00:02:02 (3): 0 Seconds".into(),
        "PROGRESS:  Total Time Elapsed: 0 Seconds".into(),
    ];
    let mut at = 0;
    for expected in &expected_in_order {
        let found = lines[at..].iter().position(|line| line == expected);
        at += found.unwrap_or_else(|| panic!("{expected:?} missing or out of order in {lines:#?}")) + 1;
    }
    let starting = lines.iter().find(|l| l.contains("Starting composition")).unwrap();
    assert!(
        starting.starts_with("PROGRESS:  ") && starting.ends_with(": Starting composition “Scene 1”."),
        "{starting}"
    );
    assert!(lines.iter().any(|l| l.starts_with("PROGRESS:  ") && l.ends_with(": Finished composition “Scene 1”.")));
    assert_eq!(lines.last().unwrap(), "PROGRESS:  Total Time Elapsed: 0 Seconds");

    assert_eq!(bundle.outputs(), ["frame_00060.png", "frame_00061.png", "frame_00062.png"]);
    for number in 60..=62 {
        let frame = bundle.frame(number);
        assert_eq!((frame.width(), frame.height()), (320, 180));
        assert_eq!(frame.find_text("Acme Summer Sale", 24.0, RED), Some((10, 20)), "frame {number}");
        assert_eq!(frame.find_text("Template", 16.0, [255, 255, 255]), None, "the template text is replaced");
        assert_eq!(frame.pixel(5, 130), Some(BLUE), "the injected solid colour");
    }
    assert_ne!(bundle.frame(60), bundle.frame(61), "frames differ");
}

#[test]
fn renders_are_byte_identical_across_runs() {
    let render = || {
        let bundle = Bundle::new();
        let script = bundle.write_injection(title_and_panel_edits());
        let (code, _, _) = run(bundle.command(&["-r", &script, "-i", "2"]));
        assert_eq!(code, 0);
        assert_eq!(bundle.outputs(), ["frame_00060.png", "frame_00062.png"], "-i 2 skips a frame");
        [60, 62].map(|n| std::fs::read(bundle.path(&format!("out/frame_{n:05}.png"))).unwrap())
    };
    assert_eq!(render(), render());
}

#[test]
fn output_settings_resize_the_frames() {
    let bundle = Bundle::new();
    let (code, lines, _) = run(bundle.command(&["-outputSettings", "Resize to: 160x90"]));
    assert_eq!(code, 0);
    assert!(lines.contains(&"PROGRESS:  Final Size: 160 x 90".to_string()));
    let frame = bundle.frame(60);
    assert_eq!((frame.width(), frame.height()), (160, 90));
}

#[test]
fn command_line_errors_and_their_exit_codes() {
    let (code, lines, _) = run(sim(&["-project", "p.json", "-bogus"]));
    assert_eq!((code, lines.last().unwrap().as_str()), (3, "aerender SYNTAX ERROR: Illegal argument flag: -bogus"));
    let (code, lines, _) = run(sim(&["-project", "p.json", "-mem_usage", "50"]));
    assert_eq!(
        (code, lines.last().unwrap().as_str()),
        (3, "aerender SYNTAX ERROR: no value given for flag: -mem_usage")
    );
    let (code, lines, _) = run(sim(&["-help"]));
    assert_eq!(code, 2);
    assert!(lines[0].starts_with("USAGE: aerender"));
    let (code, lines, _) = run(sim(&["-version"]));
    assert_eq!((code, lines), (0, vec!["aerender version 24.2.1x2".to_string()]));
    let (code, lines, _) = run(sim(&["-comp", "Scene 1"]));
    assert_eq!((code, lines.last().unwrap().as_str()), (7, "aerender ERROR: No project specified."));
    let (code, _, _) = run(sim(&["-project", "/no/such/project.json"]));
    assert_eq!(code, 7);

    let bundle = Bundle::new();
    let project = bundle.path("project.aepx.json");
    let (code, lines, _) = run(sim(&["-project", project.to_str().unwrap(), "-comp", "Scene 9", "-output", "x.png"]));
    assert_eq!((code, lines.last().unwrap().as_str()), (7, "aerender ERROR: No comp was found with the given name."));
    let (code, _, _) = run(bundle.command(&["-e", "300"]));
    assert_eq!(code, 7, "frames past the comp's end");
}

#[test]
fn log_writes_to_the_file_and_shifts_the_exit_codes() {
    let bundle = Bundle::new();
    let log = bundle.path("render.log");
    let log_arg = log.to_str().unwrap();
    let (code, lines, _) = run(bundle.command(&["-log", log_arg]));
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 3, "only the banner on stdout: {lines:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("PROGRESS:  0:00:02:02 (3): 0 Seconds"), "{logged}");
    let (code, _, _) = run(sim(&["-log", log_arg, "-bogus"]));
    assert_eq!(code, 4);
    let (code, _, _) = run(sim(&["-log", log_arg]));
    assert_eq!(code, 8);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "aerender ERROR: No project specified.\n");
}

#[test]
fn a_failing_injection_is_a_script_error() {
    let bundle = Bundle::new();
    let mut edits = title_and_panel_edits();
    edits[1].index = 4;
    edits[1].layer = LayerRef::Name("Nope".into());
    let script = bundle.write_injection(edits.clone());
    let (code, lines, _) = run(bundle.command(&["-r", &script]));
    assert_eq!(code, 9);
    assert_eq!(
        lines[lines.len() - 2..],
        [
            format!("aerender ERROR: Error executing script: {script}"),
            "Error: scene_data.edits[4]: layer not found".into()
        ]
    );
    assert!(bundle.outputs().is_empty());

    edits[1].ignore_missing = true;
    let script = bundle.write_injection(edits);
    let (code, lines, _) = run(bundle.command(&["-r", &script]));
    assert_eq!(code, 0);
    assert!(lines.contains(&"WARNING:FlatRender: scene_data.edits[4]: no such layer (skipped)".to_string()));

    std::fs::write(bundle.path("inject.jsx"), "alert('not an injection');").unwrap();
    let (code, lines, _) = run(bundle.command(&["-r", &script]));
    assert_eq!(code, 9);
    assert!(lines.last().unwrap().starts_with("Error: "), "{lines:?}");
    let (code, lines, _) = run(bundle.command(&["-r", "/no/such/inject.jsx"]));
    assert_eq!(code, 9);
    assert_eq!(lines[lines.len() - 2], "aerender ERROR: Error executing script: /no/such/inject.jsx");
}

#[test]
fn quick_faults_exit_as_documented() {
    let bundle = Bundle::new();
    let script = bundle.write_injection(vec![]);
    let last_line = |fault: &str| {
        let (code, lines, _) = run(with_fault(bundle.command(&["-r", &script]), fault));
        (code, lines.last().cloned().unwrap_or_default(), lines)
    };
    let (code, last, _) = last_line("missing-comp");
    assert_eq!((code, last.as_str()), (7, "aerender ERROR: No comp was found with the given name."));
    let (code, last, _) = last_line("another-instance");
    assert_eq!(code, 9);
    assert!(last.starts_with("aerender ERROR: After Effects can not render for aerender. Another instance"), "{last}");
    let (code, _, lines) = last_line("instant-exit");
    assert_eq!(
        (code, lines),
        (1, vec!["aerender version 24.2.1x2".into(), "PROGRESS: Launching After Effects...".into()])
    );
    let (code, last, _) = last_line("script-error");
    assert_eq!(code, 9);
    assert!(last.starts_with("Error: scene_data.edits[0]"), "{last}");
    assert!(bundle.outputs().is_empty());
    let (code, _, _) = last_line("no-such-fault");
    assert_eq!(code, 2, "a typo in the fault list is refused");
}

#[test]
fn missing_font_warns_and_renders() {
    let bundle = Bundle::new();
    let (code, lines, _) = run(with_fault(bundle.command(&[]), "missing-font"));
    assert_eq!(code, 0);
    assert!(lines.contains(&"WARNING:After Effects warning: Grouped_Message_{some layers have missing dependencies.|||a layer has missing dependencies.###@0 dependencies are missing:}Text Layer: Font family: Montserrat, Font style: Bold".to_string()), "{lines:#?}");
    assert_eq!(bundle.outputs().len(), 3);
    // The same from the environment's font list, for a font the injection brings in.
    let mut edits = title_and_panel_edits();
    let Change::Text(text) = &mut edits[0].change else { unreachable!() };
    text.font = Some("Inter-SemiBold".into());
    let script = bundle.write_injection(edits);
    let mut command = bundle.command(&["-r", &script]);
    command.env("FLATRENDER_SIM_MISSING_FONTS", "Inter-SemiBold");
    let (code, lines, _) = run(command);
    assert_eq!(code, 0);
    assert!(lines.iter().any(|l| l.ends_with("Font family: Inter, Font style: SemiBold")), "{lines:#?}");
}

#[test]
fn missing_footage_exits_zero_without_frames_unless_asked_to_continue() {
    let bundle = Bundle::with_project(&PROJECT.replace(
        r#""layers": ["#,
        r#""layers": [{"name": "Logo", "kind": "image", "path": "footage/logo.png", "rect": [200, 10, 100, 50]},"#,
    ));
    let logo = bundle.path("footage/logo.png");
    let warning = format!(
        "WARNING:After Effects warning: logged one error  error: Unable to Render: File Not Found {}",
        logo.display()
    );
    let (code, lines, _) = run(bundle.command(&[]));
    assert_eq!(code, 0);
    assert_eq!(lines[lines.len() - 2..], ["PROGRESS:  Total Time Elapsed: 0 Seconds".to_string(), warning.clone()]);
    assert!(bundle.outputs().is_empty());

    let (code, lines, _) = run(bundle.command(&["-continueOnMissingFootage"]));
    assert_eq!(code, 0);
    assert!(lines.contains(&warning));
    assert_eq!(bundle.outputs().len(), 3);
    assert_eq!(bundle.frame(60).pixel(205, 20), Some([191, 191, 191]), "colour bars");

    // The fault does the same with footage that exists.
    std::fs::create_dir_all(logo.parent().unwrap()).unwrap();
    std::fs::write(&logo, Frame::new(2, 2, [0, 255, 0]).encode_png().unwrap()).unwrap();
    std::fs::remove_dir_all(bundle.path("out")).unwrap();
    let (code, _, _) = run(bundle.command(&[]));
    assert_eq!((code, bundle.frame(60).pixel(205, 20)), (0, Some([0, 255, 0])), "the footage is drawn");
    std::fs::remove_dir_all(bundle.path("out")).unwrap();
    let (code, lines, _) = run(with_fault(bundle.command(&[]), "missing-footage"));
    assert_eq!((code, lines.last().unwrap()), (0, &warning));
    assert!(bundle.outputs().is_empty());
}

#[test]
fn crash_stops_mid_render_without_finishing() {
    let bundle = Bundle::new();
    let (code, lines, output) = run(with_fault(bundle.command(&[]), "crash:1"));
    assert!(!output.status.success(), "exit {code}");
    assert_eq!(lines.last().unwrap(), "PROGRESS:  0:00:02:00 (1): 0 Seconds");
    assert!(!lines.iter().any(|l| l.contains("Finished composition")));
    assert_eq!(bundle.outputs(), ["frame_00060.png"]);
}

#[test]
fn output_module_failure_exits_zero_with_a_damaged_last_frame() {
    let bundle = Bundle::new();
    let (code, lines, _) = run(with_fault(bundle.command(&[]), "output-module"));
    assert_eq!(code, 0);
    assert!(lines.contains(
        &"WARNING:After Effects warning: An output module failed. The file may be damaged or corrupted.".to_string()
    ));
    assert_eq!(bundle.outputs().len(), 3);
    assert!(Frame::decode_png(&std::fs::read(bundle.path("out/frame_00061.png")).unwrap()).is_ok());
    assert!(Frame::decode_png(&std::fs::read(bundle.path("out/frame_00062.png")).unwrap()).is_err());
}

#[test]
fn banner_last_and_slow_frames() {
    let bundle = Bundle::new();
    let started = Instant::now();
    let (code, lines, _) = run(with_fault(bundle.command(&[]), "banner-last,slow:1:250"));
    assert_eq!(code, 0);
    assert!(started.elapsed() >= Duration::from_millis(500), "two slow frames of 250 ms");
    assert_eq!(lines[0], "PROGRESS: Adding specified comp to Render Queue");
    assert_eq!(
        lines[lines.len() - 3..],
        [
            "aerender version 24.2.1x2",
            "PROGRESS: Launching After Effects...",
            "PROGRESS: ...After Effects successfully launched"
        ]
    );
}

#[test]
fn project_faults_apply_and_the_environment_wins() {
    let bundle = Bundle::with_project(&PROJECT.replacen("{", r#"{"faults": ["missing-comp"], "frame_ms": 1,"#, 1));
    let (code, _, _) = run(bundle.command(&[]));
    assert_eq!(code, 7);
    let (code, _, _) = run(with_fault(bundle.command(&[]), "missing-font"));
    assert_eq!(code, 0);
}

/// A running simulator whose stdout lines arrive on a channel.
struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Live {
    fn spawn(mut command: Command) -> Live {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if sender.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Live { child, lines, seen: vec![] }
    }

    /// Waits (at most 5 s) for a line that `matches`.
    fn wait_for(&mut self, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = matches(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("the expected line never came; got {:#?}", self.seen);
    }

    /// Still running and silent after a short extra wait.
    fn assert_hung(&mut self) {
        assert!(self.lines.recv_timeout(Duration::from_millis(400)).is_err(), "no more output");
        assert!(self.child.try_wait().unwrap().is_none(), "the process is alive");
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hang_mid_render_stays_alive_and_silent() {
    let bundle = Bundle::new();
    let mut live = Live::spawn(with_fault(bundle.command(&[]), "hang:2"));
    live.wait_for(|l| l == "PROGRESS:  0:00:02:01 (2): 0 Seconds");
    live.assert_hung();
    assert_eq!(bundle.outputs(), ["frame_00060.png", "frame_00061.png"]);
}

#[test]
fn hang_after_finish_writes_every_frame_but_never_totals() {
    let bundle = Bundle::new();
    let mut live = Live::spawn(with_fault(bundle.command(&[]), "hang-after-finish"));
    live.wait_for(|l| l.contains("Finished composition"));
    live.assert_hung();
    assert_eq!(bundle.outputs().len(), 3);
    assert!(!live.seen.iter().any(|l| l.contains("Total Time Elapsed")));
}

#[cfg(unix)]
#[test]
fn a_hang_with_the_helper_child_needs_a_tree_kill() {
    use std::os::unix::process::CommandExt;

    let bundle = Bundle::new();
    let mut command = with_fault(bundle.command(&[]), "hang:0");
    command.env("FLATRENDER_SIM_CHILD", "1").process_group(0);
    let mut live = Live::spawn(command);
    live.wait_for(|l| l == "PROGRESS:  ");
    let stderr = live.child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let helper: u32 = line.trim().strip_prefix("aerender-sim: helper process ").unwrap().parse().unwrap();
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(helper));
    // Killing the whole group takes the helper too.
    let group = format!("-{}", live.child.id());
    assert!(Command::new("kill").args(["-KILL", "--", &group]).status().unwrap().success());
    live.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // The helper is reaped by init once killed; /proc may show it briefly as a zombie.
    while alive(helper) && !is_zombie(helper) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(helper) || is_zombie(helper), "the helper died with its group");
}

#[cfg(unix)]
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

/// Like aerender, the simulator knows `-r` only where `commandLineRenderer.jsx` is patched: laid
/// out as an install with a stock script, it refuses the flag until `flatrender-agent patch-ae`
/// has patched the script, and takes it again after `unpatch-ae` is undone.
#[test]
fn a_stock_install_runs_no_script_until_the_agent_patches_it() {
    let install = tempfile::tempdir().unwrap();
    let aerender = install.path().join("aerender");
    std::fs::copy(SIM, &aerender).unwrap();
    let startup = install.path().join("Scripts/Startup");
    std::fs::create_dir_all(&startup).unwrap();
    let stock = include_str!("fixtures/commandLineRenderer.synthetic.jsx");
    std::fs::write(startup.join("commandLineRenderer.jsx"), stock).unwrap();
    let bundle = Bundle::new();
    let script = bundle.write_injection(title_and_panel_edits());
    let render = || {
        let mut installed = Command::new(&aerender);
        installed.args(bundle.command(&["-r", &script]).get_args());
        run(installed)
    };
    let agent = |subcommand: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_flatrender-agent"))
            .arg(subcommand)
            .env("FLATRENDER_AGENT_AERENDER", &aerender)
            .env("FLATRENDER_AGENT_STATE_DIR", install.path().join("state"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{subcommand}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    let (code, lines, _) = render();
    assert_eq!((code, lines.last().unwrap().as_str()), (3, "aerender SYNTAX ERROR: Illegal argument flag: -r"));
    assert!(bundle.outputs().is_empty());

    let patched = agent("patch-ae");
    assert!(patched.contains("commandLineRenderer.jsx (Patched)"), "{patched}");
    assert!(install.path().join("Scripts/Startup/commandLineRenderer.jsx.flatrender-original").is_file());
    let (code, lines, _) = render();
    assert_eq!(code, 0, "{lines:?}");
    assert!(lines.contains(&format!("Running Script: {script}")));
    let frame = Frame::decode_png(&std::fs::read(bundle.path("out/frame_00060.png")).unwrap()).unwrap();
    assert!(frame.find_text("Acme Summer Sale", 24.0, RED).is_some(), "the script ran");

    assert!(agent("patch-ae").contains("(AlreadyCurrent)"));
    assert!(agent("unpatch-ae").contains("(restored)"));
    assert_eq!(std::fs::read_to_string(startup.join("commandLineRenderer.jsx")).unwrap(), stock);
    assert_eq!(render().0, 3, "stock again");
}
