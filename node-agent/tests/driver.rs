//! The aerender driver over the simulator: every documented failure mode ends in the right
//! class within its watchdog window, and no process of the tree is left running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flatrender_agent::aerender::argv::{AerenderCommand, FrameSpan};
use flatrender_agent::aerender::driver::{RenderReport, RenderRun, RunEvent, render};
use flatrender_agent::aerender::outcome::{ErrorCode, Outcome};
use flatrender_agent::injection::{Change, Injection, LayerEdit, LayerRef, TextChange};
use flatrender_agent::process::{Activity, Limits};

const SIM: &str = env!("CARGO_BIN_EXE_aerender-sim");

const PROJECT: &str = r##"{
    "compositions": [{
        "name": "Scene 1", "width": 160, "height": 90, "fps": 30, "duration": 300,
        "background": "#102030",
        "layers": [
            {"name": "Title", "kind": "text", "text": "Template", "font": "Montserrat-Bold",
             "font_size": 8, "fill": "#ffffff", "position": [4, 10]}
        ]
    }]
}"##;

struct Case {
    dir: tempfile::TempDir,
    run: RenderRun,
}

impl Case {
    /// Frames 60–65 of "Scene 1" with the given simulator fault (empty: none).
    fn new(fault: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("project.aepx.json"), PROJECT).unwrap();
        let mut env = vec![("FLATRENDER_SIM_CHILD".into(), "1".into())];
        if !fault.is_empty() {
            env.push(("FLATRENDER_SIM_FAULT".into(), fault.into()));
        }
        let command = AerenderCommand {
            project: dir.path().join("project.aepx.json"),
            composition: "Scene 1".into(),
            output: dir.path().join("out/frame_[#####].png"),
            frames: FrameSpan { start: 60, end: 65, step: 1 },
            script: None,
            render_settings_template: Some("Best Settings".into()),
            output_module_template: None,
            render_settings: BTreeMap::new(),
            output_settings: BTreeMap::new(),
            mfr: None,
            mem_usage: None,
            continue_on_missing_footage: false,
        };
        let limits = Limits { no_output: Duration::from_millis(1_500), max_run: Duration::from_secs(30) };
        Case {
            dir,
            run: RenderRun { aerender: SIM.into(), command, limits, frame_size: Some((160, 90)), env, tracker: None },
        }
    }

    fn with_script(mut self, edits: Vec<LayerEdit>) -> Case {
        let path = self.dir.path().join("inject.jsx");
        std::fs::write(&path, Injection { edits, custom_data: serde_json::Value::Null }.to_script()).unwrap();
        self.run.command.script = Some(path);
        self
    }

    async fn render(&self) -> (RenderReport, Duration, Vec<f64>) {
        let started = Instant::now();
        let mut percents = Vec::new();
        let report = render(&self.run, &Activity::default(), std::future::pending(), |event| {
            if let RunEvent::Progress(p) = event {
                percents.extend(p.percent);
            }
        })
        .await
        .unwrap();
        let elapsed = started.elapsed();
        assert_no_simulator_left(self.dir.path(), &report.log_tail);
        (report, elapsed, percents)
    }
}

/// No process of the run still runs: neither a simulator whose command line names this case's
/// directory, nor the helper child a hanging simulator started (its pid is in the log).
/// Zombies awaiting their reaper count as gone.
fn assert_no_simulator_left(dir: &std::path::Path, log: &str) {
    let needle = dir.to_string_lossy().into_owned();
    let helpers: Vec<String> = log
        .lines()
        .filter_map(|l| l.strip_prefix("aerender-sim: helper process "))
        .map(|pid| format!("/proc/{}", pid.trim()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
            .filter_map(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let zombie = stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'));
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let ours = cmdline.contains(&needle) || helpers.iter().any(|h| e.path() == std::path::Path::new(h));
                (!zombie && cmdline.contains(SIM) && ours).then_some(cmdline)
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left running: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error(report: &RenderReport) -> (Outcome, Option<ErrorCode>) {
    (report.verdict.outcome, report.verdict.error.as_ref().map(|(code, _)| *code))
}

#[tokio::test]
async fn a_clean_render_succeeds_with_every_frame_verified() {
    let case = Case::new("");
    let (report, _, percents) = case.render().await;
    assert_eq!(error(&report), (Outcome::Success, None), "{:?}\n{}", report.verdict, report.log_tail);
    assert_eq!(report.exit_code, Some(0));
    let frames: Vec<u32> = report.frames.iter().map(|f| f.frame).collect();
    assert_eq!(frames, [60, 61, 62, 63, 64, 65]);
    assert!(report.frames.iter().all(|f| f.path.ends_with(format!("frame_{:05}.png", f.frame))));
    // Frame lines that arrive in one read are reported once, as the latest progress.
    assert!((1..=6).contains(&percents.len()), "at most one progress report per frame: {percents:?}");
    let last = percents.last().copied().unwrap_or_default();
    assert!((last - 100.0).abs() < 1e-9 && percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert!(report.log_tail.contains("Finished composition"));
}

#[tokio::test]
async fn template_errors_are_not_machine_errors() {
    for (fault, code) in [
        ("missing-comp", ErrorCode::CompNotFound),
        ("missing-font", ErrorCode::MissingFont),
        ("missing-footage", ErrorCode::MissingFootage),
        ("script-error", ErrorCode::ScriptError),
    ] {
        let (report, _, _) = Case::new(fault).render().await;
        assert_eq!(error(&report), (Outcome::TemplateError, Some(code)), "{fault}: {}", report.log_tail);
        assert!(report.frames.is_empty(), "{fault}: a failed render keeps no frames");
    }
}

/// A missing font is warned about when the project opens: the run is known to fail before its
/// first frame, so nothing it renders is shipped.
#[tokio::test]
async fn a_template_error_is_known_before_the_first_frame() {
    let case = Case::new("missing-font");
    let mut events = Vec::new();
    let mut started = None;
    let report = render(&case.run, &Activity::default(), std::future::pending(), |event| match event {
        RunEvent::Started(pid) => started = Some(pid),
        event => events.push(matches!(event, RunEvent::Failing)),
    })
    .await
    .unwrap();
    assert_eq!(error(&report), (Outcome::TemplateError, Some(ErrorCode::MissingFont)));
    assert_eq!(events.first(), Some(&true), "failing first: {events:?}");
    assert_eq!(events.iter().filter(|failing| **failing).count(), 1, "once: {events:?}");
    assert!(events.len() > 1, "the simulator renders on after the warning, as After Effects does");
    assert!(started.is_some_and(|pid| pid > 0), "the renderer's pid is told first");
}

#[tokio::test]
async fn a_missing_layer_in_the_scene_data_names_the_edit() {
    let edit = LayerEdit {
        index: 2,
        composition: Some("Scene 1".into()),
        layer: LayerRef::Name("Subtitle".into()),
        ignore_missing: false,
        change: Change::Text(TextChange { text: "Hi".into(), ..TextChange::default() }),
    };
    let (report, _, _) = Case::new("").with_script(vec![edit]).render().await;
    assert_eq!(error(&report), (Outcome::TemplateError, Some(ErrorCode::LayerNotFound)), "{}", report.log_tail);
    let message = &report.verdict.error.as_ref().unwrap().1;
    assert!(message.contains("scene_data.edits[2]"), "{message}");
}

#[tokio::test]
async fn machine_errors_are_retryable_classes() {
    for (fault, code) in [
        ("crash:2", ErrorCode::AeCrash),
        ("output-module", ErrorCode::OutputModuleFailed),
        ("another-instance", ErrorCode::AnotherInstance),
        ("instant-exit", ErrorCode::InstantExit),
    ] {
        let (report, _, _) = Case::new(fault).render().await;
        assert_eq!(error(&report), (Outcome::MachineError, Some(code)), "{fault}: {}", report.log_tail);
    }
}

#[tokio::test]
async fn a_hang_mid_render_is_stopped_by_the_watchdog_in_its_window() {
    let case = Case::new("hang:3");
    let (report, elapsed, _) = case.render().await;
    assert_eq!(error(&report), (Outcome::MachineError, Some(ErrorCode::NoOutputTimeout)), "{}", report.log_tail);
    let window = case.run.limits.no_output;
    assert!(elapsed >= window && elapsed < window + Duration::from_secs(3), "stopped after {elapsed:?}");
    assert_eq!(report.status.frames_reported, 3);
    assert!(report.log_tail.contains("aerender-sim: helper process"), "the hang left a child to kill");
}

#[tokio::test]
async fn a_hang_after_finishing_keeps_frames_that_verify() {
    let (report, _, _) = Case::new("hang-after-finish").render().await;
    assert_eq!(error(&report), (Outcome::Success, None), "{:?}\n{}", report.verdict, report.log_tail);
    assert_eq!(report.frames.len(), 6);
    assert!(report.verdict.warnings.iter().any(|w| w.contains("hung after finishing")));
}

#[tokio::test]
async fn the_maximum_render_time_is_a_timeout() {
    let mut case = Case::new("slow:1:400");
    case.run.limits = Limits { no_output: Duration::from_secs(5), max_run: Duration::from_millis(800) };
    let (report, elapsed, _) = case.render().await;
    assert_eq!(error(&report), (Outcome::Timeout, Some(ErrorCode::MaxRenderTime)), "{}", report.log_tail);
    assert!(elapsed < Duration::from_secs(4), "stopped after {elapsed:?}");
}

#[tokio::test]
async fn cancel_stops_the_tree() {
    let case = Case::new("hang:1");
    let cancel = tokio::time::sleep(Duration::from_millis(300));
    let report = render(&case.run, &Activity::default(), cancel, |_| {}).await.unwrap();
    assert_no_simulator_left(case.dir.path(), &report.log_tail);
    assert_eq!(error(&report), (Outcome::Canceled, Some(ErrorCode::Canceled)));
}

#[tokio::test]
async fn slow_frames_that_keep_printing_are_not_a_hang() {
    let mut case = Case::new("slow:0:500");
    case.run.limits.no_output = Duration::from_millis(1_200);
    let (report, _, _) = case.render().await;
    assert_eq!(error(&report), (Outcome::Success, None), "{}", report.log_tail);
}

#[tokio::test]
async fn the_banner_printed_last_changes_nothing() {
    let (report, _, _) = Case::new("banner-last").render().await;
    assert_eq!(error(&report), (Outcome::Success, None), "{}", report.log_tail);
    assert!(report.status.saw_banner);
}

#[tokio::test]
async fn a_frame_of_the_wrong_size_fails_verification() {
    let mut case = Case::new("");
    case.run.frame_size = Some((1920, 1080));
    let (report, _, _) = case.render().await;
    assert_eq!(error(&report), (Outcome::MachineError, Some(ErrorCode::FramesInvalid)));
    let message = &report.verdict.error.as_ref().unwrap().1;
    assert!(message.contains("160x90, not 1920x1080"), "{message}");
}

#[tokio::test]
async fn a_missing_binary_is_a_driver_error() {
    let mut case = Case::new("");
    case.run.aerender = PathBuf::from("/nonexistent/aerender");
    let result = render(&case.run, &Activity::default(), std::future::pending(), |_| {}).await;
    assert!(result.is_err());
}
