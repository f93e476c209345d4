//! Probe renders: how a node quarantined for crashes comes back without an operator.
//!
//! A node quarantined automatically (`nodes.quarantine_cause` 'crashes', or 'probe_failed'
//! after a failed probe) has its next probe due at `nodes.probe_due_at`: `probes.after` after
//! the quarantine, then doubling per failed probe up to `probes.max_backoff`
//! ([`crate::settings::ProbeSettings::wait`]). Periodically and on one replica at a time (a
//! transaction-scoped advisory lock), each such node that is due, online (a live replica holds
//! its stream), has After Effects and a free slot, and has no probe open gets one: a
//! `frame_jobs` row in lane 'probe', pinned to the node, owned by the default tenant, rendering
//! the configured template's frame once (one attempt). Placement gives a quarantined node nothing but its probe, and a probe to
//! nothing but its node ([`super::placement::eligible`]).
//!
//! The verdict comes with the probe's result, in the result's transaction ([`ended`]):
//!
//! - SUCCESS releases the node as ReleaseNode does (ACTIVE, the crash window reset,
//!   NodeReleased with no operator and the reason "probe render succeeded");
//! - a template error, machine error or timeout keeps it quarantined with cause PROBE_FAILED
//!   (NodeQuarantined again, the reason naming the failure) and pushes the next probe out;
//! - a lost lease is no verdict: the probe fails without touching the node, and the node gets a
//!   new probe once it is online again; a hand-back or cancel requeues it.
//!
//! Probes belong to no job and no snapshot: they use no customer's attempts, fair share
//! (the claim does not count them as a tenant's running work) or usage, and the render admin
//! views list only render and assembly lanes. An operator's quarantine is never probed; an
//! operator's release, quarantine or deletion drops a probe still queued ([`cancel_queued`]).
//! Without a configured template (or with probes off) nothing is sent.

use std::time::Duration;

use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgTransaction;
use uuid::Uuid;

use super::platform_files;
use super::report::{Ended, Fence, fail_task, mark_done};
use super::requeue::requeue_row;
use super::{QUEUE_CHANNEL, notify};
use crate::agents::node_admin::crashes;
use crate::agents::node_admin::events::{self, Quarantine};
use crate::error::Result;
use crate::files::CATALOGUE_TENANT;
use crate::model::text;
use crate::settings::Settings;
use crate::state::State;

/// The advisory lock one replica's scheduling round holds (`hashtextextended` of this).
const LOCK: &str = "flatrender.render.probes";

/// The tenant owning probe tasks (render.v1 node.proto): the default tenant.
pub const PROBE_TENANT: Uuid = CATALOGUE_TENANT;

/// The reason of a release by a probe (events.v1 NodeReleased.reason).
pub const RELEASE_REASON: &str = "probe render succeeded";

/// A probe's dispatch priority: first among the tasks of its lane rank (it only ever competes
/// on its own node, which takes nothing else).
const PRIORITY: i16 = 100;

/// The nodes due a probe now (see the module), `$1` the seconds after which a replica is dead.
const DUE: &str = "
SELECT n.id FROM render.nodes n
 WHERE n.state = 'quarantined' AND n.deleted_at IS NULL
   AND n.quarantine_cause IN ('crashes', 'probe_failed') AND n.probe_due_at <= now()
   AND n.orchestrator_id IS NOT NULL AND n.silent_since IS NULL AND cardinality(n.ae_versions) > 0
   AND EXISTS (SELECT 1 FROM render.orchestrators o
                WHERE o.id = n.orchestrator_id AND o.heartbeat_at >= now() - make_interval(secs => $1))
   AND NOT EXISTS (SELECT 1 FROM render.frame_jobs f
                    WHERE f.pinned_node_id = n.id AND f.lane = 'probe' AND f.state IN ('queued', 'leased', 'running'))
   AND n.slots > (SELECT count(*) FROM render.frame_jobs f WHERE f.node_id = n.id AND f.dispatch_state = 'leased')
 ORDER BY n.probe_due_at, n.id";

/// Schedules probes every `probes.check_interval()` until `shutdown` (nothing when probes are
/// off or no template is configured).
pub async fn run(state: State, shutdown: ShutdownSignal) {
    let probes = &state.settings.probes;
    if !probes.enabled || probes.template.is_none() {
        tracing::info!(enabled = probes.enabled, "no probe renders: probes are off or no probe template is configured");
        return;
    }
    let state = &state;
    shutdown
        .every(Duration::ZERO, probes.check_interval(), || async move {
            match super::retrying(|| schedule(state)).await {
                Ok(nodes) if !nodes.is_empty() => tracing::info!(?nodes, "probe renders queued for quarantined nodes"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot schedule probe renders; retrying next round"),
            }
        })
        .await;
}

/// One scheduling round: queues a probe for every node due one, and returns those nodes. Does
/// nothing when probes are off, no template is configured, its facts are not known, or another
/// replica schedules.
pub async fn schedule(state: &State) -> Result<Vec<Uuid>> {
    let settings = &state.settings;
    let Some(template) = settings.probes.template.as_ref().filter(|_| settings.probes.enabled) else {
        return Ok(Vec::new());
    };
    let dead_after = settings.replica_dead_after().as_secs_f64();
    // Cheap look first: the template's facts may need the file service.
    let any: Option<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{DUE} LIMIT 1")))
        .bind(dead_after)
        .fetch_optional(&state.pool)
        .await?;
    if any.is_none() {
        return Ok(Vec::new());
    }
    let Some(digest) = platform_files::recorded_digest(state, template.file_id, "render-probe-template").await? else {
        return Ok(Vec::new());
    };

    let mut tx = state.pool.begin().await?;
    let ours = flatrender_kit::db::try_advisory_xact_lock(&mut tx, LOCK).await?;
    if !ours {
        return Ok(Vec::new());
    }
    // Locked so an operator's release or quarantine (which lock the row) is seen or waits.
    let due: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{DUE} FOR NO KEY UPDATE OF n SKIP LOCKED")))
        .bind(dead_after)
        .fetch_all(&mut *tx)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query(
        "INSERT INTO render.frame_jobs (tenant_id, lane, pinned_node_id, priority, template_sha256, composition_name,
                frame_start, frame_end, max_attempts, probe_template_file_id)
         SELECT $1, 'probe', node, $2, $3, $4, $5, $5, 1, $6 FROM unnest($7::uuid[]) AS node",
    )
    .bind(PROBE_TENANT)
    .bind(PRIORITY)
    .bind(digest.as_slice())
    .bind(&template.composition)
    .bind(template.frame)
    .bind(template.file_id)
    .bind(&due)
    .execute(&mut *tx)
    .await?;
    notify(&mut tx, QUEUE_CHANNEL, "").await?;
    tx.commit().await?;
    Ok(due)
}

/// Cancels the probe still queued for `node`, if any (the operator decides now).
pub async fn cancel_queued(tx: &mut PgTransaction<'_>, node: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE render.frame_jobs SET state = 'canceled', finished_at = now()
          WHERE pinned_node_id = $1 AND lane = 'probe' AND state = 'queued'",
    )
    .bind(node)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The result `outcome` (message `message`) of the probe lease `fence`, whose attempt is
/// recorded: the probe ends and the node gets its verdict (see the module).
pub(super) async fn ended(
    tx: &mut PgTransaction<'_>,
    settings: &Settings,
    fence: Fence,
    outcome: pb::TaskOutcome,
    message: &str,
) -> Result<Ended> {
    match outcome {
        pb::TaskOutcome::Success => {
            mark_done(tx, fence.task_id).await?;
            passed(tx, settings, fence.node_id).await?;
            Ok(Ended::Done)
        }
        pb::TaskOutcome::TemplateError | pb::TaskOutcome::MachineError | pb::TaskOutcome::Timeout => {
            fail_task(tx, fence.task_id).await?;
            let what = match outcome {
                pb::TaskOutcome::TemplateError => "template error",
                pb::TaskOutcome::Timeout => "timeout",
                _ => "machine error",
            };
            let why = if message.is_empty() { what.to_owned() } else { format!("{what}: {message}") };
            failed(tx, settings, fence.node_id, &why).await?;
            Ok(Ended::Failed)
        }
        // Handed back or canceled by the agent: no verdict, the probe waits for the node again.
        _ => {
            requeue_row(tx, fence.task_id, fence.lease_epoch, fence.node_id, true, None).await?;
            Ok(Ended::Requeued)
        }
    }
}

/// The node of a probe, locked, when a verdict applies to it: quarantined automatically (not by
/// an operator, not released meanwhile). Returns its name and failed probes so far.
async fn lock_probed(tx: &mut PgTransaction<'_>, node: Uuid) -> Result<Option<(String, i32)>> {
    Ok(sqlx::query_as(
        "SELECT name, probe_failures FROM render.nodes
          WHERE id = $1 AND deleted_at IS NULL AND state = 'quarantined'
            AND quarantine_cause IN ('crashes', 'probe_failed')
            FOR NO KEY UPDATE",
    )
    .bind(node)
    .fetch_optional(&mut **tx)
    .await?)
}

/// A probe of `node` succeeded: released as ReleaseNode does, with no operator.
async fn passed(tx: &mut PgTransaction<'_>, settings: &Settings, node: Uuid) -> Result<()> {
    let Some((name, _)) = lock_probed(tx, node).await? else { return Ok(()) };
    crate::agents::node_admin::control::set_active(tx, node).await?;
    crashes::reset_window(tx, settings, node).await?;
    events::node_released(tx, node, &name, pb::NodeAdminState::Quarantined, None, RELEASE_REASON).await?;
    notify(tx, super::NODES_CHANNEL, &node.to_string()).await?;
    tracing::info!(node = %node, %name, "node released: its probe render succeeded");
    Ok(())
}

/// A probe of `node` failed for `why`: it stays quarantined (cause PROBE_FAILED) and its next
/// probe waits longer.
async fn failed(tx: &mut PgTransaction<'_>, settings: &Settings, node: Uuid, why: &str) -> Result<()> {
    let Some((name, failures)) = lock_probed(tx, node).await? else { return Ok(()) };
    let failures = u32::try_from(failures).unwrap_or(0).saturating_add(1);
    let wait = settings.probes.wait(failures);
    let reason = format!(
        "probe render failed ({failures} in a row; next probe in {}): {}",
        describe(wait),
        text::head(why, 300)
    );
    sqlx::query(
        "UPDATE render.nodes
            SET quarantine_cause = 'probe_failed', probe_failures = $2, state_reason = $3,
                probe_due_at = now() + make_interval(secs => $4)
          WHERE id = $1",
    )
    .bind(node)
    .bind(i32::try_from(failures).unwrap_or(i32::MAX))
    .bind(&reason)
    .bind(wait.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    let recent = crashes::recent(&mut **tx, settings, node).await?;
    let quarantine =
        Quarantine { cause: pb::QuarantineCause::ProbeFailed, reason: &reason, recent_crashes: recent, by: None };
    events::node_quarantined(tx, node, &name, &quarantine).await?;
    tracing::warn!(node = %node, %name, failures, ?wait, "probe render failed; the node stays quarantined");
    Ok(())
}

/// "1h", "10m", "90s", "800ms": a wait as an operator reads it.
fn describe(wait: Duration) -> String {
    let secs = wait.as_secs();
    match secs {
        0 => format!("{}ms", wait.as_millis()),
        _ if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        _ if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn waits_read_well() {
        assert_eq!(describe(Duration::from_millis(800)), "800ms");
        assert_eq!(describe(Duration::from_secs(90)), "90s");
        assert_eq!(describe(Duration::from_secs(600)), "10m");
        assert_eq!(describe(Duration::from_secs(7200)), "2h");
    }
}
