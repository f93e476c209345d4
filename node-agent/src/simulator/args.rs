//! aerender's command line: single-dash flags, some with two values, parsed the way
//! `commandLineRenderer.jsx` does, with its syntax errors.

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Version,
    Render(Box<Args>),
}

/// The flags of a render. Every flag aerender knows is accepted; the simulator uses those
/// documented in `SIMULATOR.md` and ignores the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args {
    pub project: Option<String>,
    pub team_project: Option<String>,
    pub comp: Option<String>,
    pub rq_index: Option<u32>,
    pub render_settings_template: Option<String>,
    pub output_module_template: Option<String>,
    pub render_settings: Option<String>,
    pub output_settings: Option<String>,
    pub output: Option<String>,
    pub log: Option<String>,
    pub start: Option<u32>,
    pub end: Option<u32>,
    pub increment: Option<u32>,
    pub mem_usage: Option<(String, String)>,
    pub mfr: Option<(String, String)>,
    pub verbosity: Option<String>,
    pub close: Option<String>,
    pub sound: Option<String>,
    pub continue_on_missing_footage: bool,
    pub reuse: bool,
    /// The patched `-r <script.jsx>`.
    pub script: Option<String>,
}

impl Args {
    /// `-v ERRORS`: only errors and warnings are logged, no `PROGRESS:` lines.
    pub fn errors_only(&self) -> bool {
        self.verbosity.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("ERRORS"))
    }
}

/// A command line aerender refuses (exit 3, or 4 with `-log`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("aerender SYNTAX ERROR: {message}")]
pub struct SyntaxError {
    pub message: String,
    /// The `-log` given before the error, where the error is logged.
    pub log: Option<String>,
}

/// How many values each flag takes; `None` for flags aerender does not know. `-r` exists only
/// where `commandLineRenderer.jsx` is patched (`script_flag`).
fn arity(flag: &str, script_flag: bool) -> Option<usize> {
    Some(match flag {
        "-r" if !script_flag => return None,
        "-continueOnMissingFootage" | "-reuse" | "-version" | "-help" => 0,
        "-mem_usage" | "-mfr" => 2,
        "-project" | "-teamproject" | "-comp" | "-rqindex" | "-RStemplate" | "-OMtemplate" | "-renderSettings"
        | "-outputSettings" | "-output" | "-log" | "-s" | "-e" | "-i" | "-v" | "-close" | "-sound" | "-r" => 1,
        _ => return None,
    })
}

/// Parses the arguments after the program name, as a patched install does (with `-r`).
pub fn parse(argv: &[String]) -> Result<Command, SyntaxError> {
    parse_for(argv, true)
}

/// Parses the arguments after the program name; without `script_flag`, as a stock install
/// does, which knows no `-r`.
pub fn parse_for(argv: &[String], script_flag: bool) -> Result<Command, SyntaxError> {
    let mut args = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let fail = |message: String, args: &Args| SyntaxError { message, log: args.log.clone() };
        let Some(count) = arity(flag, script_flag) else {
            return Err(fail(format!("Illegal argument flag: {flag}"), &args));
        };
        // A value must be there and must not be another flag: `-comp -output x` lacks the comp.
        let values: Vec<String> = argv.iter().skip(i + 1).take(count).cloned().collect();
        if values.len() < count || values.iter().any(|v| arity(v, script_flag).is_some()) {
            return Err(fail(format!("no value given for flag: {flag}"), &args));
        }
        let number = |what: &str, range: std::ops::RangeInclusive<u32>| {
            what.trim().parse::<u32>().ok().filter(|n| range.contains(n))
        };
        let first = values.first().cloned();
        match flag {
            "-help" => return Ok(Command::Help),
            "-version" => return Ok(Command::Version),
            "-continueOnMissingFootage" => args.continue_on_missing_footage = true,
            "-reuse" => args.reuse = true,
            "-mem_usage" => args.mem_usage = Some((values[0].clone(), values[1].clone())),
            "-mfr" => args.mfr = Some((values[0].clone(), values[1].clone())),
            "-s" | "-e" | "-i" | "-rqindex" => {
                let range = match flag {
                    "-i" => 1..=100,
                    "-rqindex" => 1..=u32::MAX,
                    _ => 0..=u32::MAX,
                };
                let Some(n) = number(&values[0], range) else {
                    return Err(fail(format!("illegal value for flag {flag}: {}", values[0]), &args));
                };
                match flag {
                    "-s" => args.start = Some(n),
                    "-e" => args.end = Some(n),
                    "-i" => args.increment = Some(n),
                    _ => args.rq_index = Some(n),
                }
            }
            "-project" => args.project = first,
            "-teamproject" => args.team_project = first,
            "-comp" => args.comp = first,
            "-RStemplate" => args.render_settings_template = first,
            "-OMtemplate" => args.output_module_template = first,
            "-renderSettings" => args.render_settings = first,
            "-outputSettings" => args.output_settings = first,
            "-output" => args.output = first,
            "-log" => args.log = first,
            "-v" => args.verbosity = first,
            "-close" => args.close = first,
            "-sound" => args.sound = first,
            _ => args.script = first, // "-r", the last flag arity() knows
        }
        i += 1 + count;
    }
    Ok(Command::Render(Box::new(args)))
}

/// The `-outputSettings` override of the output size: `"Resize to: 1280x720"` (also
/// `1280 x 720`); other keys are ignored.
pub fn resize_to(output_settings: &str) -> Option<(u32, u32)> {
    output_settings.split(';').find_map(|pair| {
        let (key, value) = pair.split_once(':')?;
        if !key.trim().eq_ignore_ascii_case("resize to") {
            return None;
        }
        let (w, h) = value.split_once(['x', 'X'])?;
        let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
        (w > 0 && h > 0 && w <= crate::simulator::project::MAX_SIDE && h <= crate::simulator::project::MAX_SIDE)
            .then_some((w, h))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn render(line: &str) -> Args {
        match parse(&argv(line)) {
            Ok(Command::Render(args)) => *args,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn a_full_render_line() {
        let args = render(
            "-project p.json -comp Main -s 60 -e 62 -i 2 -output out/f_[#####].png -mem_usage 50 70 -mfr ON 90 \
             -r inject.jsx -v ERRORS_AND_PROGRESS -close DO_NOT_SAVE_CHANGES -sound OFF -continueOnMissingFootage \
             -reuse -RStemplate Best -OMtemplate PNG -outputSettings Resize -log l.txt -rqindex 1",
        );
        assert_eq!(args.project.as_deref(), Some("p.json"));
        assert_eq!(args.comp.as_deref(), Some("Main"));
        assert_eq!((args.start, args.end, args.increment, args.rq_index), (Some(60), Some(62), Some(2), Some(1)));
        assert_eq!(args.mem_usage, Some(("50".into(), "70".into())));
        assert_eq!(args.mfr, Some(("ON".into(), "90".into())));
        assert_eq!(args.script.as_deref(), Some("inject.jsx"));
        assert!(args.continue_on_missing_footage && args.reuse && !args.errors_only());
        assert_eq!(args.log.as_deref(), Some("l.txt"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&argv("-help")), Ok(Command::Help));
        assert_eq!(parse(&argv("-project x -version")), Ok(Command::Version));
        assert_eq!(parse(&[]), Ok(Command::Render(Box::default())));
    }

    #[test]
    fn syntax_errors_name_the_flag() {
        let err = parse(&argv("-project p -bogus 1")).unwrap_err();
        assert_eq!(err.to_string(), "aerender SYNTAX ERROR: Illegal argument flag: -bogus");
        assert_eq!(err.log, None);
        let err = parse(&argv("-log l.txt -project")).unwrap_err();
        assert_eq!(err.to_string(), "aerender SYNTAX ERROR: no value given for flag: -project");
        assert_eq!(err.log.as_deref(), Some("l.txt"));
        // Two-value flags need both, and a flag is not a value.
        let err = parse(&argv("-mem_usage 50")).unwrap_err();
        assert_eq!(err.message, "no value given for flag: -mem_usage");
        let err = parse(&argv("-mfr ON -comp x")).unwrap_err();
        assert_eq!(err.message, "no value given for flag: -mfr");
        let err = parse(&argv("-comp -output x")).unwrap_err();
        assert_eq!(err.message, "no value given for flag: -comp");
        assert!(parse(&argv("-s abc")).is_err());
        assert!(parse(&argv("-i 0")).is_err());
        assert!(parse(&argv("--project p")).is_err(), "double dashes are not aerender's");
    }

    #[test]
    fn comp_names_with_spaces_are_one_argv_item() {
        let args = parse(&["-comp".to_string(), "Scene 2".to_string()]);
        assert!(matches!(args, Ok(Command::Render(a)) if a.comp.as_deref() == Some("Scene 2")));
    }

    #[test]
    fn output_resize_override() {
        assert_eq!(resize_to("Resize to: 1280x720"), Some((1280, 720)));
        assert_eq!(resize_to("Format: PNG; resize to : 640 X 360 "), Some((640, 360)));
        assert_eq!(resize_to("Resize to: big"), None);
        assert_eq!(resize_to("Format: PNG"), None);
    }
}
