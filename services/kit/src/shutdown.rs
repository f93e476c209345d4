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

/// Owns the shutdown state. Shutdown has two phases: `drain` (listeners stop accepting,
/// in-flight calls finish) and then `stop` (background work ends), so background work keeps
/// serving the calls that are still draining.
#[derive(Debug)]
pub struct Shutdown {
    drain: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown that has not started.
    pub fn new() -> Self {
        Self { drain: watch::channel(false).0, stop: watch::channel(false).0 }
    }

    /// Completes when draining starts: for listeners and health.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal { rx: self.drain.subscribe() }
    }

    /// Completes when background work must stop, after the drain.
    pub fn stop_signal(&self) -> ShutdownSignal {
        ShutdownSignal { rx: self.stop.subscribe() }
    }

    /// Starts draining (idempotent).
    pub fn trigger(&self) {
        self.drain.send_replace(true);
    }

    /// Ends background work (and draining, if it had not started).
    pub fn stop(&self) {
        self.drain.send_replace(true);
        self.stop.send_replace(true);
    }

    /// Starts draining on the first SIGTERM/SIGINT; exits the process on the second.
    pub fn trigger_on_signals(&self) -> JoinHandle<()> {
        let drain = self.drain.clone();
        tokio::spawn(async move {
            // The handlers are installed once, so a second signal can never slip between two waits.
            let mut signals = Signals::install();
            signals.next().await;
            tracing::info!("shutdown signal received; draining (send it again to exit at once)");
            drain.send_replace(true);
            signals.next().await;
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

    /// Runs `round` every `period` until shutdown starts, the first time `first` from now.
    ///
    /// A round that outlasts its period delays the next instead of being followed by a burst
    /// of the rounds it missed, and a round under way when shutdown starts is finished, not
    /// dropped halfway. A zero `period` counts as one millisecond.
    pub async fn every<F, Fut>(self, first: Duration, period: Duration, mut round: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let period = period.max(Duration::from_millis(1));
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = self.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                _ = timer.tick() => round().await,
            }
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere), received as a stream.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Some((term, int)),
                // Cannot install handlers (extremely unusual): fall back to Ctrl-C only.
                _ => None,
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = self.streams.as_mut() {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Background work that stops when shutdown reaches its `stop` phase.
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

    /// Waits until `until` for every task, then aborts the stragglers.
    pub async fn join(self, until: tokio::time::Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
    async fn every_runs_rounds_on_time_until_stopped() {
        let shutdown = Shutdown::new();
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rounds);
        let started = tokio::time::Instant::now();
        let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&ticks);
        let work =
            tokio::spawn(shutdown.stop_signal().every(Duration::from_secs(5), Duration::from_secs(2), move || {
                counted.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().push(started.elapsed());
                async {}
            }));
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        assert_eq!(*ticks.lock().unwrap(), [5, 7, 9].map(Duration::from_secs), "first after 5 s, then every 2 s");
        shutdown.stop();
        work.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 3, "no round after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn every_delays_after_a_long_round_and_finishes_it_on_stop() {
        let shutdown = Shutdown::new();
        let started = tokio::time::Instant::now();
        let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&ticks);
        let work = tokio::spawn(shutdown.stop_signal().every(Duration::ZERO, Duration::from_secs(1), move || {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(started.elapsed());
                // Three periods long: the rounds missed meanwhile are not made up in a burst.
                tokio::time::sleep(Duration::from_secs(3)).await;
                seen.lock().unwrap().push(started.elapsed());
            }
        }));
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        shutdown.stop();
        work.await.unwrap();
        assert_eq!(
            *ticks.lock().unwrap(),
            [0, 3, 3, 6].map(Duration::from_secs),
            "the round under way at the stop ends"
        );
    }

    #[tokio::test]
    async fn background_work_outlives_the_drain() {
        let shutdown = Shutdown::new();
        let stop = shutdown.stop_signal();
        shutdown.trigger();
        assert!(shutdown.signal().is_started());
        assert!(!stop.is_started(), "background work keeps running while calls drain");
        shutdown.stop();
        stop.wait().await;
    }

    #[tokio::test]
    async fn tasks_join_when_they_stop() {
        let shutdown = Shutdown::new();
        let mut tasks = Tasks::default();
        let finished = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (signal, finished) = (shutdown.stop_signal(), finished.clone());
            tasks.spawn("worker", async move {
                signal.wait().await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        shutdown.stop();
        tasks.join(tokio::time::Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_aborted_at_the_deadline() {
        let mut tasks = Tasks::default();
        tasks.spawn("stuck", std::future::pending());
        let started = tokio::time::Instant::now();
        tasks.join(started + Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
