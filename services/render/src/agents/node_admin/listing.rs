//! ListNodes, GetNode and ListNodeTemplateCache. Running tasks are shown by GetNode only (a
//! listing stays one query per page, plus one for the latest health when asked).

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::Row as _;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{health, parse_id, view};
use crate::agents::{Agents, facts};
use crate::api::page;
use crate::error::{RenderError, Result};
use crate::queue::wire::{digest_from_hex, timestamp};

/// Enum filter values as protobuf numbers, deduplicated and sorted; UNSPECIFIED ("any") is
/// dropped, unknown numbers are INVALID_ARGUMENT.
fn enum_filter(field: &str, values: &[i32], valid: impl Fn(i32) -> Option<bool>) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match valid(*value) {
            Some(true) => out.push(*value),
            Some(false) => {}
            None => return Err(RenderError::invalid(format!("{field}[{i}]"), "is not a known value")),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// ListNodes: by name, then id.
pub async fn list(agents: &Agents, request: &pb::ListNodesRequest) -> Result<pb::ListNodesResponse> {
    let (pool, settings) = (&agents.state.pool, &agents.state.settings);
    let states = enum_filter("states", &request.states, |v| {
        pb::NodeState::try_from(v).ok().map(|s| s != pb::NodeState::Unspecified)
    })?;
    let admin_states = enum_filter("admin_states", &request.admin_states, |v| {
        pb::NodeAdminState::try_from(v).ok().map(|s| s != pb::NodeAdminState::Unspecified)
    })?;
    let tags = facts::tags("tags", &request.tags)?;
    let cached = match request.cached_template_sha256.as_str() {
        "" => None,
        hex => Some(
            digest_from_hex(hex)
                .ok_or_else(|| RenderError::invalid("cached_template_sha256", "must be 64 lower-case hex digits"))?,
        ),
    };
    let limit = page::size(request.page.as_ref())?;
    let print =
        page::fingerprint(&[&states as &dyn std::fmt::Debug, &admin_states, &tags, &cached, &request.include_deleted]);
    let after: Option<(String, Uuid)> = page::decode(&print, page::token(request.page.as_ref()))?;
    let sql = format!(
        "SELECT * FROM ({}) v
          WHERE (cardinality($1::int[]) = 0 OR v.conn_state = ANY($1))
            AND (cardinality($2::int[]) = 0 OR v.admin = ANY($2))
            AND v.tags @> $3
            AND ($4::bytea IS NULL OR EXISTS (SELECT 1 FROM render.node_template_cache c
                                               WHERE c.node_id = v.id AND c.template_sha256 = $4))
            AND ($5 OR v.deleted_at IS NULL)
            AND ($6::text IS NULL OR (v.name, v.id) > ($6, $7))
          ORDER BY v.name, v.id
          LIMIT $8",
        view::select(settings)
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&states)
        .bind(&admin_states)
        .bind(&tags)
        .bind(cached.map(|d| d.to_vec()))
        .bind(request.include_deleted)
        .bind(after.as_ref().map(|(name, _)| name.as_str()))
        .bind(after.as_ref().map(|(_, id)| *id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let mut nodes = rows.iter().map(view::node_of).collect::<Result<Vec<_>>>()?;
    let next_page_token = page::next_token(&mut nodes, limit, |last| {
        page::encode(&print, &(last.name.clone(), Uuid::try_parse(&last.id).unwrap_or_default()))
    });
    if request.include_health {
        let ids: Vec<Uuid> = nodes.iter().filter_map(|n| Uuid::try_parse(&n.id).ok()).collect();
        let mut latest = health::latest(agents, &ids).await?;
        for node in &mut nodes {
            node.latest_health = Uuid::try_parse(&node.id).ok().and_then(|id| latest.remove(&id));
        }
    }
    Ok(pb::ListNodesResponse { nodes, page: Some(common_pb::PageResponse { next_page_token }) })
}

/// GetNode: the node with its running tasks and latest health.
pub async fn get(agents: &Agents, node_id: &str) -> Result<pb::GetNodeResponse> {
    let id = parse_id("node_id", node_id)?;
    let pool = &agents.state.pool;
    let mut node = view::load(pool, &agents.state.settings, id).await?.ok_or(RenderError::NotFound("node"))?;
    node.tasks = view::tasks(pool, id).await?;
    node.latest_health = health::latest(agents, &[id]).await?.remove(&id);
    Ok(pb::GetNodeResponse { node: Some(node) })
}

/// Whether the node exists (deleted ones included).
pub async fn exists(pool: &sqlx::PgPool, id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM render.nodes WHERE id = $1)").bind(id).fetch_one(pool).await?)
}

/// ListNodeTemplateCache: most recently used first.
pub async fn cache(
    agents: &Agents,
    request: &pb::ListNodeTemplateCacheRequest,
) -> Result<pb::ListNodeTemplateCacheResponse> {
    let pool = &agents.state.pool;
    let id = parse_id("node_id", &request.node_id)?;
    let limit = page::size(request.page.as_ref())?;
    let print = page::fingerprint(&[&id]);
    // (last_used_at in µs, digest hex).
    let after: Option<(i64, String)> = page::decode(&print, page::token(request.page.as_ref()))?;
    if !exists(pool, id).await? {
        return Err(RenderError::NotFound("node"));
    }
    let after_time = after
        .as_ref()
        .map(|(micros, _)| OffsetDateTime::from_unix_timestamp_nanos(i128::from(*micros) * 1000))
        .transpose()
        .map_err(|_| RenderError::invalid("page.page_token", "is not a page token of this listing"))?;
    let after_digest = after.as_ref().map(|(_, hex)| digest_from_hex(hex).map(|d| d.to_vec()));
    if matches!(after_digest, Some(None)) {
        return Err(RenderError::invalid("page.page_token", "is not a page token of this listing"));
    }
    let rows = sqlx::query(
        "SELECT c.template_sha256, c.size_bytes, c.created_at, c.last_used_at,
                EXISTS (SELECT 1 FROM render.frame_jobs f
                         WHERE f.node_id = c.node_id AND f.dispatch_state = 'leased'
                           AND f.template_sha256 = c.template_sha256) AS in_use
           FROM render.node_template_cache c
          WHERE c.node_id = $1 AND ($2::timestamptz IS NULL OR (c.last_used_at, c.template_sha256) < ($2, $3))
          ORDER BY c.last_used_at DESC, c.template_sha256 DESC
          LIMIT $4",
    )
    .bind(id)
    .bind(after_time)
    .bind(after_digest.flatten())
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let mut keyed = Vec::with_capacity(rows.len());
    for row in &rows {
        let digest: Vec<u8> = row.try_get("template_sha256")?;
        let used: OffsetDateTime = row.try_get("last_used_at")?;
        let micros = i64::try_from(used.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
        let sha256 = hex::encode(&digest);
        keyed.push((
            (micros, sha256.clone()),
            pb::CachedTemplate {
                sha256,
                size_bytes: u64::try_from(row.try_get::<i64, _>("size_bytes")?).unwrap_or(0),
                added_at: Some(timestamp(row.try_get("created_at")?)),
                last_used_at: Some(timestamp(used)),
                in_use: row.try_get("in_use")?,
            },
        ));
    }
    let next_page_token = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
    Ok(pb::ListNodeTemplateCacheResponse {
        templates: keyed.into_iter().map(|(_, t)| t).collect(),
        page: Some(common_pb::PageResponse { next_page_token }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_filters_drop_any_and_refuse_unknown() {
        let valid = |v| pb::NodeState::try_from(v).ok().map(|s| s != pb::NodeState::Unspecified);
        assert_eq!(enum_filter("states", &[3, 0, 1, 3], valid).unwrap(), vec![1, 3]);
        assert!(enum_filter("states", &[99], valid).is_err());
    }
}
