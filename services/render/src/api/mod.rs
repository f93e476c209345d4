//! The customer-facing render API (`flatrender.render.v1.RenderService`), one module per concern:
//! [`renders`](self) (submit, get, list, watch, cancel), snapshots, exports; with who may see what
//! ([`access`](self)), rows as messages, page tokens, and the change feed that wakes watchers
//! ([`changes`]).

mod access;
pub mod changes;
mod exports;
mod follow;
pub(crate) mod job_pages;
pub(crate) mod page;
pub(crate) mod records;
mod renders;
mod snapshots;

use flatrender_kit::server::{BackgroundTask, ServiceContext};
use flatrender_proto::flatrender::render::v1 as pb;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::RenderApi;
use crate::state::State;
use access::Viewer;

/// The API's background work: the plan-limits consumer and the retention sweep.
pub(crate) fn background(state: &State, ctx: &ServiceContext) -> Vec<(&'static str, BackgroundTask)> {
    ctx.metrics.register(
        "render_watchers",
        "WatchRender and WatchSnapshot streams open in this process",
        state.changes.watchers_gauge(),
    );
    vec![
        ("render-plan-limits", Box::pin(crate::plans::run(state.clone(), ctx.shutdown.clone()))),
        ("render-retention", Box::pin(crate::retention::run(state.clone(), ctx.shutdown.clone()))),
    ]
}

#[tonic::async_trait]
impl pb::render_service_server::RenderService for RenderApi {
    async fn submit_render(
        &self,
        request: Request<pb::SubmitRenderRequest>,
    ) -> Result<Response<pb::SubmitRenderResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.submit_render(&viewer, request.into_inner()).await?))
    }

    async fn get_render(
        &self,
        request: Request<pb::GetRenderRequest>,
    ) -> Result<Response<pb::GetRenderResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        let render = self.get_render_for(&viewer, request.get_ref()).await?;
        Ok(Response::new(pb::GetRenderResponse { render: Some(render) }))
    }

    async fn list_renders(
        &self,
        request: Request<pb::ListRendersRequest>,
    ) -> Result<Response<pb::ListRendersResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.list_renders_for(&viewer, request.get_ref()).await?))
    }

    async fn watch_render(
        &self,
        request: Request<pb::WatchRenderRequest>,
    ) -> Result<Response<BoxStream<pb::WatchRenderResponse>>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.watch_render_for(&viewer, request.get_ref()).await?))
    }

    async fn cancel_render(
        &self,
        request: Request<pb::CancelRenderRequest>,
    ) -> Result<Response<pb::CancelRenderResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        let render = self.cancel_render_for(&viewer, request.get_ref()).await?;
        Ok(Response::new(pb::CancelRenderResponse { render: Some(render) }))
    }

    async fn request_snapshot(
        &self,
        request: Request<pb::RequestSnapshotRequest>,
    ) -> Result<Response<pb::RequestSnapshotResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.request_snapshot_for(&viewer, request.into_inner()).await?))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        let snapshot = self.get_snapshot_for(&viewer, request.get_ref()).await?;
        Ok(Response::new(pb::GetSnapshotResponse { snapshot: Some(snapshot) }))
    }

    async fn watch_snapshot(
        &self,
        request: Request<pb::WatchSnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::WatchSnapshotResponse>>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.watch_snapshot_for(&viewer, request.get_ref()).await?))
    }

    async fn get_export(
        &self,
        request: Request<pb::GetExportRequest>,
    ) -> Result<Response<pb::GetExportResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        let export = self.get_export_for(&viewer, request.get_ref()).await?;
        Ok(Response::new(pb::GetExportResponse { export: Some(export) }))
    }

    async fn list_exports(
        &self,
        request: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsResponse>, Status> {
        let viewer = Viewer::from_request(&request)?;
        Ok(Response::new(self.list_exports_for(&viewer, request.get_ref()).await?))
    }
}
