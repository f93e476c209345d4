//! The agent side of the orchestrator: enrolment and credentials, the Session stream, this
//! replica's registry of connected nodes, the dispatcher that hands them work, and liveness
//! (lost streams, missed heartbeats, dead replicas).
//!
//! - [`credentials`], [`tokens`], [`enroll`], [`auth`]: join tokens, node credentials.
//! - [`session`]: one agent stream (the protocol of `agent_service.proto`).
//! - [`objects`]: the byte RPCs, DownloadObject and UploadObject, through the file service.
//! - [`registry`]: the streams this replica holds and what their nodes hold.
//! - [`reports`]: the streams' progress, frames and results written in batches (group commit).
//! - [`dispatcher`]: claims queued tasks for the nodes with free slots.
//! - [`signals`]: what a node notification does (resync the node's stream).
//! - [`liveness`]: this replica's heartbeat row, dead replicas, lapsed leases, `last_seen_at`.
//! - [`node_admin`]: the node operations of `NodeAdminService` (drain, quarantine, health, crashes).
//!
//! Timers live in memory; every write they cause is fenced in the database (lease epoch,
//! connection epoch), so two replicas never act for one node at once.

pub mod auth;
pub mod credentials;
pub mod dispatcher;
pub mod enroll;
pub mod facts;
pub mod liveness;
pub mod node_admin;
pub mod nodes;
pub mod objects;
pub mod registry;
pub mod reports;
pub mod session;
pub mod signals;
pub mod tokens;

use std::sync::Arc;

use flatrender_kit::server::BackgroundTask;
use flatrender_kit::shutdown::ShutdownSignal;
use tokio::sync::Notify;

pub use registry::Registry;

use crate::state::State;

/// What the agent streams, the dispatcher and the timers of one replica share.
#[derive(Debug)]
pub struct Agents {
    /// Pool and settings.
    pub state: State,
    /// The streams this replica holds.
    pub registry: Registry,
    /// Wakes the dispatcher (a node connected, a slot freed, tasks were queued).
    pub wake: Notify,
    /// Enrol attempts per client address.
    pub enroll_limiter: enroll::RateLimiter,
    /// Health samples waiting for their batched write.
    pub health_log: node_admin::health::HealthLog,
    /// Task reports waiting for their batched write.
    pub reports: reports::Reports,
}

impl Agents {
    /// The agent side over `state`.
    pub fn new(state: State) -> Arc<Self> {
        let enroll_limiter = enroll::RateLimiter::per_minute(state.settings.enroll_attempts_per_minute);
        Arc::new(Self {
            state,
            registry: Registry::default(),
            wake: Notify::new(),
            enroll_limiter,
            health_log: node_admin::health::HealthLog::default(),
            reports: reports::Reports::default(),
        })
    }

    /// Asks the dispatcher to look for work now.
    pub fn wake_dispatcher(&self) {
        self.wake.notify_one();
    }

    /// The background work of the agent side, each stopping at `shutdown`.
    pub fn tasks(self: &Arc<Self>, shutdown: &ShutdownSignal) -> Vec<(&'static str, BackgroundTask)> {
        vec![
            ("render-dispatcher", Box::pin(dispatcher::run(Arc::clone(self), shutdown.clone()))),
            ("render-liveness", Box::pin(liveness::run(Arc::clone(self), shutdown.clone()))),
            ("render-health-log", Box::pin(node_admin::health::run_writer(Arc::clone(self), shutdown.clone()))),
            ("render-unplaceable", Box::pin(crate::queue::unplaceable::run(self.state.clone(), shutdown.clone()))),
            ("render-probes", Box::pin(crate::queue::probes::run(self.state.clone(), shutdown.clone()))),
        ]
    }
}
