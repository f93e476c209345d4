//! What every handler and background task of the orchestrator shares.

use std::sync::Arc;

use sqlx::PgPool;

use crate::settings::Settings;

/// The orchestrator's state: cheap to clone.
#[derive(Clone, Debug)]
pub struct State {
    /// The render service's pool (role `flatrender_render`).
    pub pool: PgPool,
    /// Settings.
    pub settings: Arc<Settings>,
}

impl State {
    /// The state over `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        Self { pool, settings: Arc::new(settings) }
    }
}
