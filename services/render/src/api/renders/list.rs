//! `ListRenders`: the tenant's jobs, newest first (created_at, then id, descending), without scene
//! data, in keyset pages whose tokens are bound to the filters.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::{job_pages, page};
use crate::error::Result;
use crate::model::validate;

impl RenderApi {
    /// `ListRenders` for `viewer`.
    pub(crate) async fn list_renders_for(
        &self,
        viewer: &Viewer,
        request: &pb::ListRendersRequest,
    ) -> Result<pb::ListRendersResponse> {
        let states = job_pages::states(&request.states)?;
        let (from, until) = page::time_range("created", request.created.as_ref())?;
        let named = validate::optional_uuid("user_id", &request.user_id)?;
        let owner = viewer.owner_filter("user_id", named)?;
        let project = validate::optional_uuid("saved_project_id", &request.saved_project_id)?;
        let fingerprint = page::fingerprint(&[&"renders", &viewer.tenant, &owner, &states, &from, &until, &project]);

        let mut query = job_pages::select();
        query.push(" AND j.tenant_id = ").push_bind(viewer.tenant);
        if let Some(owner) = owner {
            query.push(" AND j.user_id = ").push_bind(owner);
        }
        if let Some(project) = project {
            query.push(" AND j.saved_project_id = ").push_bind(project);
        }
        let window =
            job_pages::Window { states: &states, from, until, page: request.page.as_ref(), fingerprint: &fingerprint };
        let (renders, page) = job_pages::fetch(&self.state.pool, query, &window).await?;
        Ok(pb::ListRendersResponse { renders, page: Some(page) })
    }
}
