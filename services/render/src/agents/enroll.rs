//! AgentService.Enroll: a one-time join token and the machine's facts become a new node with a
//! node credential. The token is redeemed by one conditional UPDATE in the transaction that
//! creates the node, so it enrols exactly one node however many agents race with it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use sqlx::PgPool;
use uuid::Uuid;

use super::{credentials, facts};
use crate::error::{RenderError, Result};
use crate::queue::events;
use crate::queue::wire::now;

/// The one answer for an unknown, expired, used or revoked token (nothing can be probed).
pub const INVALID_JOIN_TOKEN: &str = "invalid join token";
/// Attempts at a free name (a name taken by a concurrent enrolment is tried again).
const NAME_ATTEMPTS: usize = 5;

/// At most `limit` attempts per client address per minute.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// A limiter of `per_minute` attempts per address.
    pub fn per_minute(per_minute: u32) -> Self {
        Self { limit: per_minute as usize, window: Duration::from_secs(60), seen: Mutex::new(HashMap::new()) }
    }

    /// Counts an attempt of `addr`; false when it is over the limit.
    pub fn allow(&self, addr: IpAddr) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() > 10_000 {
            // Bound memory under address churn: forget addresses with no recent attempt.
            seen.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        let times = seen.entry(addr).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Enrols a node.
pub async fn enroll(pool: &PgPool, request: &agent_pb::EnrollRequest) -> Result<agent_pb::EnrollResponse> {
    let token = request.join_token.trim();
    if !credentials::is_join_token(token) {
        return Err(RenderError::Unauthenticated(INVALID_JOIN_TOKEN.into()));
    }
    let machine = facts::machine_facts("facts", request.facts.as_ref())?;
    let agent_version = facts::agent_version("agent_version", &request.agent_version)?;
    let slots = facts::slots("slots", request.slots)?;
    let agent_tags = facts::tags("tags", &request.tags)?;
    let base_name = if request.name.is_empty() {
        facts::sanitize_name(&machine.hostname)
    } else if facts::is_node_name(&request.name) {
        request.name.clone()
    } else {
        return Err(RenderError::invalid(
            "name",
            "must be 1..=63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit",
        ));
    };
    let token_hash = credentials::hash(token);
    // A cheap early answer for a bad token; the redeeming UPDATE below decides.
    let token_tags: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT tags FROM render.node_enrollment_tokens
          WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash.as_slice())
    .fetch_optional(pool)
    .await?;
    let Some(token_tags) = token_tags else {
        return Err(RenderError::Unauthenticated(INVALID_JOIN_TOKEN.into()));
    };
    let tags = facts::union_tags("tags", &agent_tags, &token_tags)?;

    for attempt in 1..=NAME_ATTEMPTS {
        let node = Uuid::new_v4();
        let credential = credentials::new_node_credential(node);
        let mut tx = pool.begin().await?;
        let taken: Vec<String> =
            sqlx::query_scalar("SELECT name FROM render.nodes WHERE left(name, char_length($1)) = $1")
                .bind(&base_name)
                .fetch_all(&mut *tx)
                .await?;
        let name = (1..)
            .map(|n| if n == 1 { base_name.clone() } else { facts::with_suffix(&base_name, n) })
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or_else(|| base_name.clone());
        let inserted = sqlx::query(
            "INSERT INTO render.nodes
                    (id, name, hostname, os, os_version, arch, agent_version, ae_versions, has_ffmpeg, cpu_cores,
                     ram_bytes, gpus, slots, tags, credential_hash, credential_issued_at, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now(), 'offline')",
        )
        .bind(node)
        .bind(&name)
        .bind(&machine.hostname)
        .bind(machine.os)
        .bind(machine.os_version.as_deref())
        .bind(machine.arch)
        .bind(&agent_version)
        .bind(&machine.ae_versions)
        .bind(machine.has_ffmpeg)
        .bind(machine.cpu_cores)
        .bind(machine.ram_bytes)
        .bind(&machine.gpus)
        .bind(slots)
        .bind(&tags)
        .bind(credentials::hash(&credential).as_slice())
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if flatrender_kit::db::is_unique_violation(&e, "nodes_name_key") && attempt < NAME_ATTEMPTS => {
                continue;
            }
            other => other?,
        };
        let redeemed: Option<(Uuid, Vec<String>)> = sqlx::query_as(
            "UPDATE render.node_enrollment_tokens SET used_at = now(), used_by_node_id = $2
              WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
          RETURNING id, tags",
        )
        .bind(token_hash.as_slice())
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((token_id, redeemed_tags)) = redeemed else {
            // Used or revoked since the check: the node is rolled back with the transaction.
            return Err(RenderError::Unauthenticated(INVALID_JOIN_TOKEN.into()));
        };
        let tags = if redeemed_tags == token_tags {
            tags
        } else {
            let tags = facts::union_tags("tags", &agent_tags, &redeemed_tags)?;
            sqlx::query("UPDATE render.nodes SET tags = $2 WHERE id = $1")
                .bind(node)
                .bind(&tags)
                .execute(&mut *tx)
                .await?;
            tags
        };
        events::node_enrolled(&mut tx, node, &name, &machine.hostname, token_id).await?;
        tx.commit().await?;
        tracing::info!(node = %node, name = %name, token = %token_id, "node enrolled");
        return Ok(agent_pb::EnrollResponse {
            node_id: node.to_string(),
            node_credential: credential,
            name,
            tags,
            server_time: Some(now()),
        });
    }
    Err(RenderError::AlreadyExists("no free node name; give the node a name".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_counts_per_address() {
        let limiter = RateLimiter::per_minute(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(limiter.allow(a));
        assert!(limiter.allow(a));
        assert!(!limiter.allow(a));
        assert!(limiter.allow(b));
    }
}
