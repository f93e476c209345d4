//! The node operations of `NodeAdminService` (platform admins only; the caller's check is in
//! `lib.rs`): reading nodes, their health history, caches and crashes, and the operator's
//! commands. Every mutating call is logged with the operator's user id.
//!
//! - [`view`]: a `render.nodes` row as the API shows it.
//! - [`listing`]: ListNodes, GetNode, ListNodeTemplateCache.
//! - [`health`]: ListNodeHealth, and the bounded-rate writer of `render.node_health_logs`.
//! - [`control`]: DrainNode, QuarantineNode, ReleaseNode, EvictNodeTemplate.
//! - [`delete`](delete): DeleteNode.
//! - [`crashes`]: ListCrashes, GetCrash, and auto-quarantine after repeated crashes.
//! - [`events`]: NodeQuarantined, NodeReleased.
//!
//! Commands reach the agent through the database, whichever replica holds its stream: the
//! admin state in `nodes.state` (Drain on the stream, read again by placement) or a
//! `node_commands` row (EvictTemplate), each followed by a `render_nodes` notification that makes
//! the holding replica resync the node ([`super::signals`]). A node offline meanwhile learns
//! its admin state from Welcome and gets its commands after Hello.

pub mod control;
pub mod crashes;
pub mod delete;
pub mod events;
pub mod health;
pub mod listing;
pub mod view;

use uuid::Uuid;

use crate::error::{RenderError, Result};

/// Longest operator reason.
const MAX_REASON_CHARS: usize = 500;

/// The UUID in request field `field`.
pub fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::try_parse(text).map_err(|_| RenderError::invalid(field, "must be a UUID"))
}

/// An optional UUID filter (empty means none).
pub fn parse_optional_id(field: &str, text: &str) -> Result<Option<Uuid>> {
    if text.is_empty() { Ok(None) } else { parse_id(field, text).map(Some) }
}

/// An operator's reason, trimmed: `required` makes it 1..=500 characters, else 0..=500.
pub fn reason(text: &str, required: bool) -> Result<String> {
    let text = text.trim();
    if required && text.is_empty() {
        return Err(RenderError::invalid("reason", "is required (1..=500 characters)"));
    }
    if text.chars().count() > MAX_REASON_CHARS || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(RenderError::invalid("reason", "must be at most 500 printable characters"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_reasons() {
        assert!(parse_id("node_id", "nope").is_err());
        assert_eq!(parse_optional_id("node_id", "").unwrap(), None);
        assert!(reason("  ", true).is_err());
        assert_eq!(reason("  ", false).unwrap(), "");
        assert_eq!(reason(" disk swap ", true).unwrap(), "disk swap");
        assert!(reason(&"x".repeat(501), false).is_err());
    }
}
