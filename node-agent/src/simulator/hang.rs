//! Hanging like a stuck After Effects: alive, silent, until killed — optionally with a helper
//! child process, so that an agent's kill of the whole process tree can be tested.

use std::process::{Command, Stdio};
use std::time::Duration;

/// The hidden first argument that makes `aerender-sim` the helper child (aerender's flags have
/// one dash, so this cannot clash with them).
pub const CHILD_ARG: &str = "--flatrender-sim-child";

/// How long the helper lives at most if nothing kills it, so a forgotten one goes away by itself.
const CHILD_LIFETIME: Duration = Duration::from_secs(3600);

/// Never returns: sleeps until the process is killed. With `spawn_child`, first starts the
/// helper child in this process's group and names its process id on stderr.
pub fn hang_forever(spawn_child: bool) -> ! {
    if spawn_child {
        let child = std::env::current_exe()
            .and_then(|exe| Command::new(exe).arg(CHILD_ARG).stdin(Stdio::null()).stdout(Stdio::null()).spawn());
        match child {
            Ok(child) => eprintln!("aerender-sim: helper process {}", child.id()),
            Err(e) => eprintln!("aerender-sim: cannot start the helper process: {e}"),
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The helper child's life: sleeping, like an `AfterFX -noui` that outlives its aerender.
pub fn child_main() -> i32 {
    std::thread::sleep(CHILD_LIFETIME);
    0
}
