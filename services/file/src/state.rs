//! What every handler and background task of the file service shares.

use std::sync::Arc;

use sqlx::PgPool;

use crate::ledger::Ledger;
use crate::settings::Settings;
use crate::storage::Storage;

/// The service's state: cheap to clone.
#[derive(Clone)]
pub struct State {
    /// The file service's pool (role `flatrender_file`).
    pub pool: PgPool,
    /// Object storage.
    pub storage: Storage,
    /// Quota accounting.
    pub ledger: Ledger,
    /// Settings.
    pub settings: Arc<Settings>,
}

impl State {
    /// Opens object storage and assembles the state.
    pub fn new(pool: PgPool, settings: Settings) -> crate::storage::Result<Self> {
        let storage = Storage::open(&settings.storage)?;
        Ok(Self { pool, storage, ledger: Ledger::new(&settings), settings: Arc::new(settings) })
    }
}
