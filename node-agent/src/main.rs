//! `flatrender-agent`: the node agent daemon. See node-agent/README.md for how to run it.

use std::process::ExitCode;

use flatrender_agent::config::{Cli, Command, Config, LogFormat};
use flatrender_agent::{daemon, service};

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
    match cli.command {
        Some(Command::InstallService) => return service_command(service::install(cli.flags.config.as_deref())),
        Some(Command::UninstallService) => return service_command(service::uninstall()),
        Some(Command::Service) => return run_service(config),
        _ => {}
    }
    init_logs(&config, LogTo::Stderr);
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

fn runtime() -> Option<tokio::runtime::Runtime> {
    daemon::runtime().inspect_err(|error| eprintln!("flatrender-agent: cannot start the runtime: {error}")).ok()
}

/// `install-service` / `uninstall-service`: what was done, or why not.
fn service_command(done: Result<String, service::ServiceError>) -> ExitCode {
    match done {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error @ service::ServiceError::NotWindows) => {
            eprintln!("flatrender-agent: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("flatrender-agent: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `service`: the agent under the Service Control Manager, logging to a file (a service has no
/// console).
fn run_service(config: Config) -> ExitCode {
    if cfg!(not(windows)) {
        return service_command(Err(service::ServiceError::NotWindows));
    }
    let log_file = service::log_file(&config.state_dir);
    let opened = log_file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&log_file));
    match opened {
        Ok(file) => init_logs(&config, LogTo::File(file)),
        // Nowhere to say it: the dispatcher is never reached, so Windows records a start
        // timeout (error 1053) for the service.
        Err(error) => {
            eprintln!("flatrender-agent: cannot open the log file {}: {error}", log_file.display());
            return ExitCode::FAILURE;
        }
    }
    // A panic's message would go to a console the service does not have.
    std::panic::set_hook(Box::new(|panic| tracing::error!(%panic, "the agent panicked")));
    match service::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the service could not run");
            ExitCode::FAILURE
        }
    }
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

/// Where logs go: stderr (a terminal, journald, launchd's log) or a service's log file.
enum LogTo {
    Stderr,
    File(std::fs::File),
}

fn init_logs(config: &Config, to: LogTo) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (to, config.log_format) {
        (LogTo::Stderr, LogFormat::Json) => builder.with_writer(std::io::stderr).json().init(),
        (LogTo::Stderr, LogFormat::Text) => builder.with_writer(std::io::stderr).init(),
        (LogTo::File(file), LogFormat::Json) => builder.with_writer(std::sync::Mutex::new(file)).json().init(),
        (LogTo::File(file), LogFormat::Text) => {
            builder.with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
        }
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
