//! Outbox events of the operator's node commands and of auto-quarantine: platform-wide (no
//! tenant), written in the transaction of the change.

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgTransaction;
use uuid::Uuid;

use crate::error::Result;
use crate::queue::wire::{id_text, now};

fn meta(node: Uuid) -> EventMeta<'static> {
    EventMeta { source: "render", aggregate_type: "node", aggregate_id: node.to_string(), tenant_id: None }
}

/// Why and by whom a node was quarantined.
#[derive(Clone, Debug)]
pub struct Quarantine<'a> {
    /// Crashes, a failed probe, or operator.
    pub cause: pb::QuarantineCause,
    /// The reason text (`nodes.state_reason`).
    pub reason: &'a str,
    /// Crashes in the window now.
    pub recent_crashes: i64,
    /// The operator; `None` when automatic.
    pub by: Option<Uuid>,
}

/// NodeQuarantined.
pub async fn node_quarantined(tx: &mut PgTransaction<'_>, node: Uuid, name: &str, q: &Quarantine<'_>) -> Result<()> {
    let event = ev::NodeQuarantined {
        tenant_id: String::new(),
        occurred_at: Some(now()),
        node_id: node.to_string(),
        node_name: name.to_owned(),
        cause: q.cause as i32,
        reason: q.reason.to_owned(),
        recent_crashes: u32::try_from(q.recent_crashes).unwrap_or(u32::MAX),
        by_user_id: id_text(q.by),
    };
    outbox::publish(tx, meta(node), &event).await?;
    Ok(())
}

/// NodeReleased: the node left `previous` (DRAINING or QUARANTINED), by an operator or (`by`
/// `None`) a successful probe render.
pub async fn node_released(
    tx: &mut PgTransaction<'_>,
    node: Uuid,
    name: &str,
    previous: pb::NodeAdminState,
    by: Option<Uuid>,
    reason: &str,
) -> Result<()> {
    let event = ev::NodeReleased {
        tenant_id: String::new(),
        occurred_at: Some(now()),
        node_id: node.to_string(),
        node_name: name.to_owned(),
        previous_state: previous as i32,
        by_user_id: id_text(by),
        reason: reason.to_owned(),
    };
    outbox::publish(tx, meta(node), &event).await?;
    Ok(())
}
