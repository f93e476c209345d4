//! `flatrender-agent`: the node agent daemon. See node-agent/README.md for how to run it.

use std::process::ExitCode;

use flatrender_agent::config::{Cli, Command, Config, LogFormat};
use flatrender_agent::daemon;

fn main() -> ExitCode {
    let cli = Cli::parse_process_args();
    let config = match Config::load_from_process(&cli.flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("flatrender-agent: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.command == Some(Command::Config) {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logs(&config);
    if let Some(command @ (Command::PatchAe | Command::UnpatchAe)) = cli.command {
        return patch_ae(&config, command == Command::UnpatchAe);
    }
    let Some(runtime) = runtime() else { return ExitCode::FAILURE };
    match runtime.block_on(daemon::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the agent stopped");
            eprintln!("flatrender-agent: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One thread: the agent waits on a stream, a timer and a child process; a small runtime keeps
/// its idle footprint small. Blocking work (hashing, unpacking) goes to tokio's blocking pool.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .inspect_err(|error| eprintln!("flatrender-agent: cannot start the runtime: {error}"))
        .ok()
}

/// `patch-ae` / `unpatch-ae`: one line per install.
fn patch_ae(config: &Config, undo: bool) -> ExitCode {
    let Some(runtime) = runtime() else { return ExitCode::FAILURE };
    match runtime.block_on(daemon::patch_installs(config, undo)) {
        Ok(lines) if lines.is_empty() => {
            eprintln!("flatrender-agent: no After Effects install found");
            ExitCode::FAILURE
        }
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("flatrender-agent: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Ctrl-C, or SIGTERM from a service manager.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
