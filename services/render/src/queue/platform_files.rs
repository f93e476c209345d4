//! Platform files the orchestrator names in tasks of its own accord — the probe template, the
//! watermark image. Each is an active file of the default tenant; its facts (digest, size,
//! content type) are recorded in `render.file_facts` the first time they are needed, as a
//! submit records the customer's files, so assignments can name it with what the agent checks.

use uuid::Uuid;

use crate::error::{RenderError, Result};
use crate::files::CATALOGUE_TENANT;
use crate::model::submit::FileRef;
use crate::state::State;

/// The SHA-256 of platform file `file` (the setting `field` names it): as recorded, else asked
/// of the file service and recorded. `None`, logged, when it cannot be known now (no file
/// service, or no such active file of the default tenant); other failures are errors.
pub async fn recorded_digest(state: &State, file: Uuid, field: &str) -> Result<Option<Vec<u8>>> {
    let recorded: Option<Vec<u8>> = sqlx::query_scalar("SELECT sha256 FROM render.file_facts WHERE file_id = $1")
        .bind(file)
        .fetch_optional(&state.pool)
        .await?;
    if recorded.is_some() {
        return Ok(recorded);
    }
    let Some(files) = state.files.as_ref() else {
        tracing::warn!(%file, field, "a platform file's facts are unknown and no file service is configured");
        return Ok(None);
    };
    let wanted = [FileRef { field: field.into(), file_id: file }];
    let facts = match files.visible(CATALOGUE_TENANT, &wanted).await {
        Ok(facts) => facts,
        Err(RenderError::FileNotFound { .. }) => {
            tracing::error!(%file, field, "a configured platform file is not an active file of the default tenant");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let digest = facts.get(&file).map(|f| f.sha256.as_bytes().to_vec());
    let mut conn = state.pool.acquire().await?;
    super::spec::record_facts(&mut conn, &facts).await?;
    Ok(digest)
}
