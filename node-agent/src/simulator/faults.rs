//! The failures the simulator reproduces on request, named in `FLATRENDER_SIM_FAULT` or the
//! project's `faults` (see `SIMULATOR.md`).

use std::fmt;

/// One reproducible failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The comp is not found: `aerender ERROR: No comp was found with the given name.`, exit 7.
    MissingComp,
    /// A text layer's font is missing: the warning, then a normal render, exit 0.
    MissingFont,
    /// Footage is missing: the warning and exit 0 (nothing rendered without
    /// `-continueOnMissingFootage`, colour bars with it).
    MissingFootage,
    /// After `after` frames the process aborts: no more lines, no Finished line.
    Crash { after: u32 },
    /// After `after` frames the process prints nothing more and never exits.
    Hang { after: u32 },
    /// Every frame and `Finished composition`, then silence forever, no total-time line.
    HangAfterFinish,
    /// The output-module warning, the last frame truncated, exit 0.
    OutputModule,
    /// Frames after the first `after` take `ms` milliseconds each.
    Slow { after: u32, ms: u64 },
    /// The banner comes last, as buffering sometimes has it.
    BannerLast,
    /// `After Effects can not render for aerender. Another instance ...`, exit 9.
    AnotherInstance,
    /// Only the banner's first lines, then exit 1.
    InstantExit,
    /// The injection script throws, exit 9.
    ScriptError,
}

/// The names, for error messages and documentation.
pub const NAMES: &str = "missing-comp, missing-font, missing-footage, crash[:N], hang[:N], hang-after-finish, \
                         output-module, slow:N:MS, banner-last, another-instance, instant-exit, script-error";

impl Fault {
    /// One entry: `name`, `name:N` or `slow:N:MS`.
    pub fn parse(entry: &str) -> Result<Fault, String> {
        let mut parts = entry.trim().split(':');
        let name = parts.next().unwrap_or_default();
        let numbers: Vec<&str> = parts.collect();
        let bad = || format!("unknown simulator fault {entry:?} (known: {NAMES})");
        let number = |i: usize, default: Option<u64>| -> Result<u64, String> {
            match numbers.get(i) {
                Some(text) => text.trim().parse().map_err(|_| bad()),
                None => default.ok_or_else(bad),
            }
        };
        let frames = |n: u64| u32::try_from(n).map_err(|_| bad());
        let fault = match name {
            "missing-comp" => Fault::MissingComp,
            "missing-font" => Fault::MissingFont,
            "missing-footage" => Fault::MissingFootage,
            "crash" => Fault::Crash { after: frames(number(0, Some(1))?)? },
            "hang" => Fault::Hang { after: frames(number(0, Some(1))?)? },
            "hang-after-finish" => Fault::HangAfterFinish,
            "output-module" => Fault::OutputModule,
            "slow" => Fault::Slow { after: frames(number(0, None)?)?, ms: number(1, None)? },
            "banner-last" => Fault::BannerLast,
            "another-instance" => Fault::AnotherInstance,
            "instant-exit" => Fault::InstantExit,
            "script-error" => Fault::ScriptError,
            _ => return Err(bad()),
        };
        let allowed = match fault {
            Fault::Crash { .. } | Fault::Hang { .. } => 1,
            Fault::Slow { .. } => 2,
            _ => 0,
        };
        if numbers.len() > allowed {
            return Err(bad());
        }
        Ok(fault)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::MissingComp => f.write_str("missing-comp"),
            Fault::MissingFont => f.write_str("missing-font"),
            Fault::MissingFootage => f.write_str("missing-footage"),
            Fault::Crash { after } => write!(f, "crash:{after}"),
            Fault::Hang { after } => write!(f, "hang:{after}"),
            Fault::HangAfterFinish => f.write_str("hang-after-finish"),
            Fault::OutputModule => f.write_str("output-module"),
            Fault::Slow { after, ms } => write!(f, "slow:{after}:{ms}"),
            Fault::BannerLast => f.write_str("banner-last"),
            Fault::AnotherInstance => f.write_str("another-instance"),
            Fault::InstantExit => f.write_str("instant-exit"),
            Fault::ScriptError => f.write_str("script-error"),
        }
    }
}

/// The faults of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults(pub Vec<Fault>);

impl Faults {
    /// A comma-separated list, e.g. `missing-font,hang:3`; empty entries are ignored.
    pub fn parse_list(list: &str) -> Result<Faults, String> {
        list.split(',').filter(|e| !e.trim().is_empty()).map(Fault::parse).collect::<Result<_, _>>().map(Faults)
    }

    pub fn has(&self, fault: Fault) -> bool {
        self.0.contains(&fault)
    }

    /// The frame count after which the process crashes, if it does.
    pub fn crash_after(&self) -> Option<u32> {
        self.0.iter().find_map(|f| if let Fault::Crash { after } = f { Some(*after) } else { None })
    }

    /// The frame count after which the process hangs, if it does.
    pub fn hang_after(&self) -> Option<u32> {
        self.0.iter().find_map(|f| if let Fault::Hang { after } = f { Some(*after) } else { None })
    }

    /// The cost of the frame at 1-based `position` under `slow:N:MS`, if it applies.
    pub fn slow_ms(&self, position: u32) -> Option<u64> {
        self.0.iter().find_map(|f| match f {
            Fault::Slow { after, ms } if position > *after => Some(*ms),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_parses_and_prints_back() {
        let list = "missing-comp, missing-font,missing-footage,crash:3,hang:0,hang-after-finish,output-module,\
                    slow:2:500,banner-last,another-instance,instant-exit,script-error";
        let faults = Faults::parse_list(list).unwrap();
        assert_eq!(faults.0.len(), 12);
        let printed: Vec<String> = faults.0.iter().map(ToString::to_string).collect();
        assert_eq!(Faults::parse_list(&printed.join(",")).unwrap(), faults);
        assert_eq!((faults.crash_after(), faults.hang_after()), (Some(3), Some(0)));
        assert_eq!((faults.slow_ms(2), faults.slow_ms(3)), (None, Some(500)));
        assert_eq!(Fault::parse("crash"), Ok(Fault::Crash { after: 1 }));
    }

    #[test]
    fn typos_are_refused() {
        for bad in ["crsh:1", "crash:x", "slow:1", "hang:1:2", "missing-comp:1", "crash:-1"] {
            let err = Fault::parse(bad).unwrap_err();
            assert!(err.contains("unknown simulator fault"), "{bad}: {err}");
        }
        assert_eq!(Faults::parse_list(" , "), Ok(Faults::default()));
    }
}
