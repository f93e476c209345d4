//! Running as a native Windows service: `flatrender-agent install-service` registers the agent
//! with the Service Control Manager (automatic start, restarted after a failure), which then
//! starts `flatrender-agent service --config <file>`. That command speaks the SCM's protocol:
//! Running once the agent is up, StopPending with a wait hint while running tasks are handed
//! back on Stop or pre-shutdown, Stopped with an exit code. A service has no console, so its logs
//! go to a file in the state directory. On Linux and macOS, systemd and launchd run the agent in
//! the foreground instead (`packaging/`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The service's key name (`sc.exe start FlatRenderAgent`).
pub const SERVICE_NAME: &str = "FlatRenderAgent";
/// What the Services console shows.
pub const DISPLAY_NAME: &str = "FlatRender Agent";

/// How long a stop may take before Windows considers the service hung: the hand-back of running
/// tasks (at most 10 s) and the Goodbye, with room to spare.
pub const STOP_WAIT_HINT: Duration = Duration::from_secs(30);

/// Why the service could not be installed, removed or run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the Windows service commands work only on Windows; use systemd or launchd here (node-agent/packaging)")]
    NotWindows,
    #[error("{what}: {detail}")]
    Scm { what: String, detail: String },
}

/// The command line the Service Control Manager starts the agent with: `service`, and the
/// configuration file made absolute (a service starts in `System32`, where a relative path would
/// point elsewhere).
pub fn launch_arguments(config_file: Option<&Path>, current_dir: &Path) -> Vec<OsString> {
    let mut arguments = vec![OsString::from("service")];
    if let Some(file) = config_file {
        arguments.push("--config".into());
        arguments.push(current_dir.join(file).into_os_string());
    }
    arguments
}

/// Where the service writes its logs.
pub fn log_file(state_dir: &Path) -> PathBuf {
    state_dir.join("logs").join("flatrender-agent.log")
}

#[cfg(windows)]
pub use windows::{install, run, uninstall};

#[cfg(not(windows))]
pub fn install(_config_file: Option<&Path>) -> Result<String, ServiceError> {
    Err(ServiceError::NotWindows)
}

#[cfg(not(windows))]
pub fn uninstall() -> Result<String, ServiceError> {
    Err(ServiceError::NotWindows)
}

#[cfg(not(windows))]
pub fn run(_config: crate::config::Config) -> Result<(), ServiceError> {
    Err(ServiceError::NotWindows)
}

#[cfg(windows)]
mod windows {
    use std::ffi::OsString;
    use std::path::Path;
    use std::sync::{Arc, Mutex, OnceLock, PoisonError};
    use std::time::{Duration, Instant};

    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl,
        ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
        ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::{DISPLAY_NAME, SERVICE_NAME, STOP_WAIT_HINT, ServiceError, launch_arguments};
    use crate::config::Config;
    use crate::daemon;

    const DESCRIPTION: &str =
        "Takes render tasks from the FlatRender orchestrator and runs them with After Effects and ffmpeg.";

    /// The configuration main loaded, for the service's entry point (which the system calls on
    /// a thread of its own, with no way to pass it).
    static CONFIG: OnceLock<Config> = OnceLock::new();
    /// How the service ended, for main's exit status.
    static OUTCOME: Mutex<Option<Result<(), ServiceError>>> = Mutex::new(None);

    define_windows_service!(ffi_service_main, service_main);

    fn scm(what: &str) -> impl FnOnce(windows_service::Error) -> ServiceError + '_ {
        move |error| ServiceError::Scm { what: what.to_string(), detail: error.to_string() }
    }

    /// Hands the process to the Service Control Manager until the service stops.
    pub fn run(config: Config) -> Result<(), ServiceError> {
        let _ = CONFIG.set(config);
        service_dispatcher::start(SERVICE_NAME, ffi_service_main)
            .map_err(scm("cannot connect to the Service Control Manager (only it starts `service`)"))?;
        OUTCOME.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or(Ok(()))
    }

    fn service_main(_arguments: Vec<OsString>) {
        serve(CONFIG.get().cloned());
    }

    fn status(
        state: ServiceState,
        accepted: ServiceControlAccept,
        exit_code: ServiceExitCode,
        wait_hint: Duration,
    ) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code,
            checkpoint: 0,
            wait_hint,
            process_id: None,
        }
    }

    /// Runs the agent as the service: Running, then on Stop or pre-shutdown a StopPending while
    /// the agent hands its tasks back, then Stopped, whatever happened (the last thing the
    /// process tells Windows: once it hears Stopped, the dispatcher returns and the process ends).
    fn serve(config: Option<Config>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let registered: Arc<OnceLock<ServiceStatusHandle>> = Arc::default();
        let handle_for_stop = Arc::clone(&registered);
        let handler = move |control| {
            tracing::debug!(?control, "a control request");
            match control {
                // Pre-shutdown rather than shutdown: Windows waits for a pre-shutdown service (up to
                // its configured timeout), so running tasks are handed back before the machine goes.
                ServiceControl::Stop | ServiceControl::Preshutdown | ServiceControl::Shutdown => {
                    // Said at once: the agent may still be starting (probing installs, enrolling)
                    // and only notices the stop once its session runs.
                    if let Some(handle) = handle_for_stop.get() {
                        let stopping = status(
                            ServiceState::StopPending,
                            ServiceControlAccept::empty(),
                            ServiceExitCode::NO_ERROR,
                            STOP_WAIT_HINT,
                        );
                        if let Err(error) = handle.set_service_status(stopping) {
                            tracing::warn!(%error, "StopPending was not reported");
                        }
                    }
                    stop_tx.send_replace(true);
                    ServiceControlHandlerResult::NoError
                }
                ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
                _ => ServiceControlHandlerResult::NotImplemented,
            }
        };
        let handle = match service_control_handler::register(SERVICE_NAME, handler) {
            Ok(handle) => handle,
            Err(error) => {
                let error = scm("cannot register the control handler")(error);
                tracing::error!(%error, "the service cannot run");
                *OUTCOME.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(error));
                return;
            }
        };
        let _ = registered.set(handle);
        let outcome = run_agent(config, handle, stop_rx);
        let exit_code = match &outcome {
            Ok(()) => ServiceExitCode::NO_ERROR,
            // Any non-zero code: with failure actions on non-crash failures, Windows restarts it.
            Err(error) => {
                tracing::error!(%error, "the service stopped with an error");
                ServiceExitCode::ServiceSpecific(1)
            }
        };
        tracing::info!("the service stopped");
        *OUTCOME.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        let _ = handle.set_service_status(status(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            exit_code,
            Duration::ZERO,
        ));
    }

    /// The agent from Running until it has stopped, its runtime shut down.
    fn run_agent(
        config: Option<Config>,
        handle: ServiceStatusHandle,
        mut stop_rx: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ServiceError> {
        let config = config.ok_or_else(|| ServiceError::Scm {
            what: "the service".into(),
            detail: "started without a configuration".into(),
        })?;
        let runtime = daemon::runtime()
            .map_err(|e| ServiceError::Scm { what: "cannot start the runtime".into(), detail: e.to_string() })?;
        handle
            .set_service_status(status(
                ServiceState::Running,
                ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN,
                ServiceExitCode::NO_ERROR,
                Duration::ZERO,
            ))
            .map_err(scm("cannot report the service's status"))?;
        tracing::info!(pid = std::process::id(), "the service is running");
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tracing::info!("the service is stopping");
        };
        let ran = runtime.block_on(daemon::run(config, stopped));
        // Blocking work (a hash, an unpack) gets a moment; renderers die with the Job Object.
        runtime.shutdown_timeout(Duration::from_secs(2));
        ran.map_err(|e| ServiceError::Scm { what: "the agent".into(), detail: e.to_string() })
    }

    /// Registers the service (automatic start as LocalSystem, restarted 10 s after a failure and
    /// then every minute), starting this executable with `config_file`. Returns what to do next.
    pub fn install(config_file: Option<&Path>) -> Result<String, ServiceError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| ServiceError::Scm { what, detail: e.to_string() }
        };
        let executable_path = std::env::current_exe().map_err(io("cannot find this executable"))?;
        let current_dir = std::env::current_dir().map_err(io("cannot read the current folder"))?;
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .map_err(scm("cannot open the Service Control Manager (run as administrator)"))?;
        let info = ServiceInfo {
            name: SERVICE_NAME.into(),
            display_name: DISPLAY_NAME.into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path,
            launch_arguments: launch_arguments(config_file, &current_dir),
            dependencies: Vec::new(),
            account_name: None,
            account_password: None,
        };
        let service = manager
            // START too: Windows allows a Restart failure action only with it.
            .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_STATUS | ServiceAccess::START)
            .map_err(scm("cannot create the service"))?;
        service.set_description(DESCRIPTION).map_err(scm("cannot describe the service"))?;
        // Pre-shutdown gets as long as a stop: the hand-back of running tasks.
        if let Err(error) = service.set_preshutdown_timeout(STOP_WAIT_HINT) {
            tracing::warn!(%error, "the service's pre-shutdown timeout keeps the system default");
        }
        let restart =
            |secs| ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(secs) };
        let restarts = service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![restart(10), restart(60), restart(60)]),
            })
            .map_err(scm("cannot set the service's restart actions"))
            // An exit with an error (not only a crash) counts as a failure to restart after.
            .and_then(|()| {
                service
                    .set_failure_actions_on_non_crash_failures(true)
                    .map_err(scm("cannot have the service restarted after an exit with an error"))
            });
        // The service runs without them (Wine, for one, has no failure actions): say so.
        let restarts = match restarts {
            Ok(()) => "restarted 10 s after a failure".to_string(),
            Err(error) => format!("NOT restarted after a failure ({error}; set it with sc.exe failure)"),
        };
        Ok(format!(
            "installed the service {SERVICE_NAME} ({DISPLAY_NAME}), starting automatically as LocalSystem, \
             {restarts}; start it now with: sc.exe start {SERVICE_NAME}"
        ))
    }

    /// Stops the service if it runs (waiting for the hand-back) and removes it.
    pub fn uninstall() -> Result<String, ServiceError> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(scm("cannot open the Service Control Manager (run as administrator)"))?;
        let service = manager
            .open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)
            .map_err(scm("cannot open the service"))?;
        // Marked for deletion first: Windows removes it once it has stopped and no handle is open.
        service.delete().map_err(scm("cannot remove the service"))?;
        let state = service.query_status().map_err(scm("cannot query the service"))?.current_state;
        if state != ServiceState::Stopped {
            service.stop().map_err(scm("cannot stop the service"))?;
            let until = Instant::now() + STOP_WAIT_HINT;
            while service.query_status().map_err(scm("cannot query the service"))?.current_state
                != ServiceState::Stopped
            {
                if Instant::now() > until {
                    return Ok(format!("{SERVICE_NAME} is marked for removal; Windows removes it once it stops"));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(format!("removed the service {SERVICE_NAME}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_service_starts_with_an_absolute_configuration_file() {
        let args = super::launch_arguments(Some(Path::new("agent.toml")), Path::new("/opt/flatrender"));
        assert_eq!(args, ["service", "--config", "/opt/flatrender/agent.toml"]);
        let args = super::launch_arguments(Some(Path::new("/etc/agent.toml")), Path::new("/opt/flatrender"));
        assert_eq!(args, ["service", "--config", "/etc/agent.toml"], "an absolute path stays");
        assert_eq!(super::launch_arguments(None, Path::new("/x")), ["service"]);
    }

    #[cfg(not(windows))]
    #[test]
    fn elsewhere_the_service_commands_say_what_to_use_instead() {
        let error = super::install(None).unwrap_err().to_string();
        assert!(error.contains("only on Windows") && error.contains("systemd"), "{error}");
    }
}
