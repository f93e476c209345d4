//! Graceful shutdown.
//!
//! The first SIGTERM or SIGINT starts the drain: listeners stop accepting, in-flight calls get
//! until the drain deadline, then background tasks stop and pools close. A second signal exits
//! at once, for an operator who does not want to wait.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Exit status used when a second signal cuts the drain short (128 + SIGINT, as shells do).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Owns the shutdown state; hand out [`ShutdownSignal`]s to everything that must stop.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown that has not started.
    pub fn new() -> Self {
        Self { tx: watch::channel(false).0 }
    }

    /// A receiver that completes when shutdown starts.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal { rx: self.tx.subscribe() }
    }

    /// Starts the shutdown (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Starts the shutdown on the first SIGTERM/SIGINT; exits the process on the second.
    pub fn trigger_on_signals(&self) -> JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining (send it again to exit at once)");
            tx.send_replace(true);
            wait_for_signal().await;
            tracing::warn!("second shutdown signal; exiting now");
            std::process::exit(FORCED_EXIT_CODE);
        })
    }
}

/// Completes when shutdown starts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl ShutdownSignal {
    /// Waits until shutdown starts (at once if it already has).
    pub async fn wait(mut self) {
        // An error means the sender is gone, which also means: stop.
        let _ = self.rx.wait_for(|started| *started).await;
    }

    /// Whether shutdown has started.
    pub fn is_started(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Cannot install handlers (extremely unusual): fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Background work that stops when shutdown starts.
#[derive(Debug, Default)]
pub struct Tasks {
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// Runs `task` until it ends; it must watch its [`ShutdownSignal`] and return soon after.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles.push((name, tokio::spawn(task)));
    }

    /// Waits up to `deadline` for every task, then aborts the stragglers.
    pub async fn join(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut handle) in self.handles {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => tracing::error!(task = name, "background task panicked"),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(task = name, "background task did not stop in time; aborting");
                    handle.abort();
                }
            }
        }
    }
}

/// Runs `f` every `interval` (first run at once) until shutdown starts.
pub async fn every<F, Fut>(interval: Duration, signal: ShutdownSignal, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = signal.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => f().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn signal_completes_after_trigger() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        assert!(!signal.is_started());
        let waiter = tokio::spawn(signal.clone().wait());
        shutdown.trigger();
        waiter.await.unwrap();
        assert!(signal.is_started());
        // A signal taken after the trigger completes at once.
        shutdown.signal().wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn every_stops_on_shutdown_and_tasks_join() {
        let shutdown = Shutdown::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Tasks::default();
        let counter = runs.clone();
        tasks.spawn(
            "ticker",
            every(Duration::from_secs(1), shutdown.signal(), move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }),
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        shutdown.trigger();
        tasks.join(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "runs at 0 s, 1 s and 2 s");
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_aborted_at_the_deadline() {
        let mut tasks = Tasks::default();
        tasks.spawn("stuck", std::future::pending());
        let started = tokio::time::Instant::now();
        tasks.join(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
