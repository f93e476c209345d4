//! The render service's test harness, shared by every integration test (and the dispatch
//! benchmark): the orchestrator running for real over a fresh PostgreSQL database
//! ([`orchestrator`]: render alone, or render with the file service), simulated agents speaking
//! the real Session protocol over tonic ([`agent`]), rows written straight into the database
//! ([`seed`]) and the API side: principals, authenticated clients, request builders
//! ([`api`]).

#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod api;
pub mod orchestrator;
pub mod seed;

use std::time::Duration;

pub use agent::{AgentEvent, AgentSpec, Behaviour, Identity, SimAgent};
pub use api::{
    AgentClient, Assets, Authed, Bearer, NodeAdmin, PNG, Principal, RenderAdmin, Renders, TEMPLATE, eventually,
    failure, media_edit, notification, request, segment, sha256_hex, snapshot_request, text_edit, track,
};
pub use orchestrator::{AUDIENCE, ISSUER, Orchestrator, test_settings};
pub use seed::{JobSeed, Plan, SeededJob, cancel_job, seed_job, seed_plan, seed_snapshot};

/// How long a test waits for an event before it fails (a failsafe, never a pause).
pub const PATIENCE: Duration = Duration::from_secs(30);
