//! `WatchRender`: the job now (without scene data) and, when asked, its chunks; then changes.

use std::collections::HashMap;

use flatrender_proto::flatrender::render::v1 as pb;
use tonic::codegen::BoxStream;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::changes::Topic;
use crate::api::follow::{self, Follow, Pace};
use crate::api::records::{self, Detail};
use crate::error::{RenderError, Result};
use crate::model::{JobState, validate};

impl RenderApi {
    /// `WatchRender` for `viewer`.
    pub(crate) async fn watch_render_for(
        &self,
        viewer: &Viewer,
        request: &pb::WatchRenderRequest,
    ) -> Result<BoxStream<pb::WatchRenderResponse>> {
        let id = validate::uuid("render_id", &request.render_id)?;
        // Subscribed before the first read: a change committed after it always wakes the stream.
        let subscription = self.state.changes.subscribe(Topic::Job(id));
        let mut watch = RenderWatch {
            api: self.clone(),
            viewer: *viewer,
            id,
            include_chunks: request.include_chunks,
            last: None,
            chunks: HashMap::new(),
        };
        let render = watch.job().await?;
        let chunks = if watch.include_chunks { watch.chunk_changes().await? } else { Vec::new() };
        let terminal = is_terminal(&render);
        watch.last = Some(render.clone());
        let first = pb::WatchRenderResponse { render: Some(render), chunks, full_chunk_list: request.include_chunks };
        let api = &self.state.settings.api;
        let pace = Pace { min_interval: api.watch_min_interval, keepalive: api.watch_keepalive };
        Ok(follow::stream(watch, subscription, first, terminal, pace))
    }
}

fn is_terminal(job: &pb::RenderJob) -> bool {
    JobState::from_pb_i32(job.state).is_some_and(JobState::is_terminal)
}

struct RenderWatch {
    api: RenderApi,
    viewer: Viewer,
    id: Uuid,
    include_chunks: bool,
    /// The job as last sent.
    last: Option<pb::RenderJob>,
    /// Every chunk as last sent, by id.
    chunks: HashMap<String, pb::ChunkProgress>,
}

impl RenderWatch {
    async fn job(&self) -> Result<pb::RenderJob> {
        let mut conn = self.api.state.pool.acquire().await?;
        records::visible_job(&mut conn, &self.viewer, self.id, Detail::Summary)
            .await?
            .ok_or(RenderError::NotFound("render"))
    }

    /// The chunks that differ from the ones last sent (all of them the first time).
    async fn chunk_changes(&mut self) -> Result<Vec<pb::ChunkProgress>> {
        let now = records::chunks(&self.api.state.pool, self.id).await?;
        let mut changed = Vec::new();
        for chunk in now {
            if self.chunks.get(&chunk.id) != Some(&chunk) {
                self.chunks.insert(chunk.id.clone(), chunk.clone());
                changed.push(chunk);
            }
        }
        Ok(changed)
    }
}

impl Follow for RenderWatch {
    type Message = pb::WatchRenderResponse;

    async fn read(&mut self, force: bool) -> Result<Option<(pb::WatchRenderResponse, bool)>> {
        let render = self.job().await?;
        let chunks = if self.include_chunks { self.chunk_changes().await? } else { Vec::new() };
        if !force && chunks.is_empty() && self.last.as_ref() == Some(&render) {
            return Ok(None);
        }
        self.last = Some(render.clone());
        let terminal = is_terminal(&render);
        Ok(Some((pb::WatchRenderResponse { render: Some(render), chunks, full_chunk_list: false }, terminal)))
    }
}
