//! `SearchRenders`: jobs of every tenant, newest first (created_at, then id, descending), without
//! scene data, in keyset pages whose tokens are bound to the filters.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::RenderApi;
use crate::api::{job_pages, page};
use crate::error::{RenderError, Result};
use crate::model::{ErrorClass, validate};

impl RenderApi {
    /// `SearchRenders` for a platform admin.
    pub(crate) async fn search_renders_as_admin(
        &self,
        request: &pb::SearchRendersRequest,
    ) -> Result<pb::SearchRendersResponse> {
        let tenant = validate::optional_uuid("tenant_id", &request.tenant_id)?;
        let node = validate::optional_uuid("node_id", &request.node_id)?;
        let states = job_pages::states(&request.states)?;
        let class = match (request.error_class, ErrorClass::from_pb_i32(request.error_class)) {
            (0, _) => None,
            (_, Some(class)) if class.allowed_for_jobs() => Some(class.as_db()),
            (_, Some(class)) => {
                return Err(RenderError::invalid("error_class", format!("{class} never applies to a job")));
            }
            (n, None) => return Err(RenderError::invalid("error_class", format!("unknown value {n}"))),
        };
        let (from, until) = page::time_range("created", request.created.as_ref())?;
        let fingerprint = page::fingerprint(&[&"admin-renders", &tenant, &states, &from, &until, &node, &class]);

        let mut query = job_pages::select();
        if let Some(tenant) = tenant {
            query.push(" AND j.tenant_id = ").push_bind(tenant);
        }
        if let Some(node) = node {
            // Every lease has an attempt row: "ran on the node" is "leased to it once".
            query.push(" AND EXISTS (SELECT 1 FROM render.frame_job_attempts a WHERE a.job_id = j.id AND a.node_id = ");
            query.push_bind(node).push(")");
        }
        if let Some(class) = class {
            query.push(" AND j.error_class = ").push_bind(class);
        }
        let window =
            job_pages::Window { states: &states, from, until, page: request.page.as_ref(), fingerprint: &fingerprint };
        let (renders, page) = job_pages::fetch(&self.state.pool, query, &window).await?;
        Ok(pb::SearchRendersResponse { renders, page: Some(page) })
    }
}
