//! `aerender-sim`: aerender's command line, output and exit codes without After Effects (see
//! `node-agent/SIMULATOR.md`).

fn main() {
    let argv: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    std::process::exit(flatrender_agent::simulator::main_with_env(&argv));
}
