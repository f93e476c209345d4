//! Where the log goes: stdout (flushed after every line, since the agent reads it live) or the
//! `-log` file; the banner always goes to stdout, as the aerender binary prints it itself.

use std::fs::File;
use std::io::Write;

/// The simulator's console.
pub struct Console {
    stdout: Box<dyn Write>,
    log: Option<File>,
    /// With `banner-last`, banner lines wait here until [`Console::finish`].
    held_banner: Option<Vec<String>>,
    errors_only: bool,
}

impl Console {
    /// A console on stdout, logging to `log` when given; `banner_last` holds the banner back,
    /// `errors_only` (`-v ERRORS`) drops `PROGRESS:` lines.
    pub fn new(log: Option<&str>, banner_last: bool, errors_only: bool) -> Console {
        let mut console = Console {
            stdout: Box::new(std::io::stdout()),
            log: None,
            held_banner: banner_last.then(Vec::new),
            errors_only,
        };
        if let Some(path) = log {
            match File::create(path) {
                Ok(file) => console.log = Some(file),
                Err(e) => console
                    .line(&format!("WARNING:aerender: cannot write the log file {path} ({e}); logging to stdout")),
            }
        }
        console
    }

    /// A banner line (the aerender binary's own output).
    pub fn banner(&mut self, line: &str) {
        match &mut self.held_banner {
            Some(held) => held.push(line.to_string()),
            None => write_line(&mut self.stdout, line),
        }
    }

    /// A `PROGRESS:` line, dropped with `-v ERRORS`.
    pub fn progress(&mut self, line: &str) {
        if !self.errors_only {
            self.line(line);
        }
    }

    /// Any other log line: warnings, errors, `Running Script:`.
    pub fn line(&mut self, line: &str) {
        match &mut self.log {
            Some(file) => write_line(file, line),
            None => write_line(&mut self.stdout, line),
        }
    }

    /// Ends the output: a held banner comes out now.
    pub fn finish(&mut self) {
        for line in self.held_banner.take().unwrap_or_default() {
            write_line(&mut self.stdout, &line);
        }
    }
}

/// Writes and flushes one line. A reader that went away is not the renderer's problem: like
/// aerender, the simulator keeps rendering.
fn write_line(out: &mut dyn Write, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
