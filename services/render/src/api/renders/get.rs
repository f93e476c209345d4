//! `GetRender`: one job with its segments' progress and scene data.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::records::{self, Detail};
use crate::error::{RenderError, Result};
use crate::model::validate;

impl RenderApi {
    /// `GetRender` for `viewer`.
    pub(crate) async fn get_render_for(
        &self,
        viewer: &Viewer,
        request: &pb::GetRenderRequest,
    ) -> Result<pb::RenderJob> {
        let id = validate::uuid("render_id", &request.render_id)?;
        let mut conn = self.state.pool.acquire().await?;
        records::visible_job(&mut conn, viewer, id, Detail::Full).await?.ok_or(RenderError::NotFound("render"))
    }
}
