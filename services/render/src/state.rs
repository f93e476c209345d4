//! What every handler and background task of the orchestrator shares.

use std::sync::Arc;

use sqlx::PgPool;

use crate::api::changes::Changes;
use crate::files::FileClient;
use crate::settings::Settings;

/// The orchestrator's state: cheap to clone.
#[derive(Clone, Debug)]
pub struct State {
    /// The render service's pool (role `flatrender_render`).
    pub pool: PgPool,
    /// Settings.
    pub settings: Arc<Settings>,
    /// The file service (`None` when not configured, or its URL is invalid: logged).
    pub files: Option<FileClient>,
    /// Job and snapshot changes (`render_jobs` / `render_snapshots` NOTIFY) for watchers.
    pub changes: Changes,
}

impl State {
    /// The state over `pool`.
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        let files = settings.api.file_service.clone().and_then(|files| {
            FileClient::new(files).map_err(|reason| tracing::error!(%reason, "the file service is not usable")).ok()
        });
        Self { pool, settings: Arc::new(settings), files, changes: Changes::default() }
    }
}
