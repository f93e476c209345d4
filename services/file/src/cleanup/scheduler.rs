//! The scheduler: claims due schedules with a lease, runs them, records the runs.

use std::time::{Duration, Instant};

use flatrender_kit::shutdown::ShutdownSignal;
use sqlx::PgTransaction;
use uuid::Uuid;

use super::rules::{self, Halt, Job};
use super::runs::{self, RUN_COLUMNS, RunRecord, RunState};
use super::schedule::{SCHEDULE_COLUMNS, ScheduleRecord};
use crate::error::{FileError, Result};
use crate::state::State;

/// How often a replica deletes runs past their keeping time and expired download links.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Claims tried by [`run_now`] while another replica's run is just ending.
const RUN_NOW_ATTEMPTS: usize = 3;

/// What [`run_now`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This replica started a run (it goes on in the background).
    Started(RunRecord),
    /// The schedule was already running (on some replica): that run.
    Running(RunRecord),
}

/// The scheduler of this replica, until `signal`: claims due schedules one at a time, runs
/// each, and looks again every `poll_interval`. Does nothing when the replica's scheduler is
/// disabled (schedules still run on demand).
pub async fn run(state: State, signal: ShutdownSignal) {
    let settings = state.settings.cleanup.clone();
    if !settings.enabled {
        tracing::info!("cleanup scheduler disabled on this replica; schedules run only on demand");
        return;
    }
    tracing::info!(instance = %settings.instance_id, every = ?settings.poll_interval, "cleanup scheduler started");
    let stop = signal.clone().wait();
    tokio::pin!(stop);
    let mut pruned_at: Option<Instant> = None;
    loop {
        if signal.is_started() {
            return;
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            prune(&state).await;
            pruned_at = Some(Instant::now());
        }
        match claim_due(&state).await {
            // Another one may be due: look again at once.
            Ok(Some(claimed)) => {
                execute(&state, claimed, Some(&signal)).await;
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "could not look for due cleanup schedules"),
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

/// Runs schedule `id` now, enabled or not, unless it is running already; the run goes on in
/// the background (it is not tied to shutdown: if the process ends first, its lease lapses and
/// the next claim records it as failed).
pub async fn run_now(state: &State, id: Uuid) -> Result<Claim> {
    for _ in 0..RUN_NOW_ATTEMPTS {
        let mut tx = state.pool.begin().await?;
        let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.cleanup_schedules
                SET locked_by = $2, locked_until = now() + $3::float8 * interval '1 second'
              WHERE id = $1 AND (locked_until IS NULL OR locked_until < now())
              RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(id)
        .bind(&state.settings.cleanup.instance_id)
        .bind(state.settings.cleanup.lease.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = claimed {
            let schedule = ScheduleRecord::from_row(&row)?;
            let run = start_run(&mut tx, &schedule, &state.settings.cleanup.instance_id).await?;
            tx.commit().await?;
            let started = run.clone();
            let state = state.clone();
            tokio::spawn(async move { execute(&state, Claimed { schedule, run }, None).await });
            return Ok(Claim::Started(started));
        }
        tx.rollback().await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM file_mgr.cleanup_schedules WHERE id = $1)")
            .bind(id)
            .fetch_one(&state.pool)
            .await?;
        if !exists {
            return Err(FileError::NotFound("cleanup schedule"));
        }
        let running = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM file_mgr.cleanup_runs WHERE schedule_id = $1 AND state = 'running'
              ORDER BY started_at DESC LIMIT 1"
        )))
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(row) = running {
            return Ok(Claim::Running(RunRecord::from_row(&row)?));
        }
        // The lease holder finished between the two statements: claim again.
    }
    Err(FileError::FailedPrecondition("the schedule is busy; try again".into()))
}

/// A claimed schedule and its new run.
struct Claimed {
    schedule: ScheduleRecord,
    run: RunRecord,
}

/// Claims the most overdue enabled schedule whose lease is free, and starts its run.
async fn claim_due(state: &State) -> Result<Option<Claimed>> {
    let mut tx = state.pool.begin().await?;
    let claimed = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE file_mgr.cleanup_schedules
            SET locked_by = $1, locked_until = now() + $2::float8 * interval '1 second'
          WHERE id = (SELECT id FROM file_mgr.cleanup_schedules
                       WHERE enabled AND next_run_at <= now() AND (locked_until IS NULL OR locked_until < now())
                       ORDER BY next_run_at LIMIT 1
                       FOR UPDATE SKIP LOCKED)
            AND enabled AND next_run_at <= now() AND (locked_until IS NULL OR locked_until < now())
          RETURNING {SCHEDULE_COLUMNS}"
    )))
    .bind(&state.settings.cleanup.instance_id)
    .bind(state.settings.cleanup.lease.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = claimed else {
        tx.rollback().await?;
        return Ok(None);
    };
    let schedule = ScheduleRecord::from_row(&row)?;
    let run = start_run(&mut tx, &schedule, &state.settings.cleanup.instance_id).await?;
    tx.commit().await?;
    Ok(Some(Claimed { schedule, run }))
}

/// In the claiming transaction: records the run, after declaring failed any run of the schedule
/// still `running` (its replica lost the lease without finishing). Runs start and finish at the
/// statement's clock, not the transaction's, so one schedule's runs never seem to overlap.
async fn start_run(tx: &mut PgTransaction<'_>, schedule: &ScheduleRecord, instance: &str) -> Result<RunRecord> {
    sqlx::query(
        "UPDATE file_mgr.cleanup_runs
            SET state = 'failed', finished_at = clock_timestamp(),
                error_message = COALESCE(error_message, 'abandoned: its replica stopped renewing the lease')
          WHERE schedule_id = $1 AND state = 'running'",
    )
    .bind(schedule.id)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO file_mgr.cleanup_runs (schedule_id, tenant_id, instance_id, started_at)
         VALUES ($1, $2, $3, clock_timestamp())
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(schedule.id)
    .bind(schedule.tenant_id)
    .bind(instance)
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunRecord::from_row(&row)?)
}

/// How a run ended.
enum Outcome {
    /// It went through.
    Done,
    /// Shutdown stopped it; the schedule stays due for whichever replica comes next.
    Stopped,
    /// An error stopped it.
    Failed(String),
    /// Its lease was lost (taken over, or the schedule deleted): it was cancelled.
    LeaseLost(String),
}

/// Runs a claimed schedule while keeping its lease, then finishes the run and releases the lease.
async fn execute(state: &State, claimed: Claimed, signal: Option<&ShutdownSignal>) {
    let Claimed { schedule, run } = claimed;
    let mut job = Job::new(state, &schedule, run.id, signal);
    tracing::info!(schedule = %schedule.name, rule = schedule.rule.as_str(), run = %run.id, "cleanup run started");
    let outcome = tokio::select! {
        result = rules::run(&mut job) => match result {
            Ok(()) => Outcome::Done,
            Err(Halt::Stopped) => Outcome::Stopped,
            Err(Halt::Failed(error)) => Outcome::Failed(error.to_string()),
        },
        lost = keep_lease(state, schedule.id, run.id) => Outcome::LeaseLost(lost),
    };
    let mut tally = job.tally;
    let (run_state, advance) = match outcome {
        Outcome::Done => (RunState::Succeeded, true),
        Outcome::Stopped => {
            tally.first_error = Some("stopped by shutdown; the next run continues".into());
            (RunState::Failed, false)
        }
        Outcome::Failed(message) => {
            tally.first_error = Some(message);
            (RunState::Failed, true)
        }
        Outcome::LeaseLost(message) => {
            tally.first_error = Some(message);
            (RunState::Failed, false)
        }
    };
    tracing::info!(
        schedule = %schedule.name, run = %run.id, state = run_state.as_str(), scanned = tally.scanned,
        removed = tally.removed, bytes = tally.bytes, skipped = tally.skipped_retained, errors = tally.errors,
        "cleanup run finished",
    );
    if let Err(error) = finish(state, &schedule, run.id, run_state, &tally, advance).await {
        tracing::warn!(%error, run = %run.id, "could not record the end of a cleanup run; its lease will lapse");
    }
}

/// Records the end of a run and, if it was still this replica's, releases the schedule (and
/// moves `next_run_at` on by the interval when `advance`), in one transaction.
async fn finish(
    state: &State,
    schedule: &ScheduleRecord,
    run: Uuid,
    run_state: RunState,
    tally: &runs::Tally,
    advance: bool,
) -> Result<()> {
    let mut tx = state.pool.begin().await?;
    if runs::finish(&mut *tx, run, run_state, tally).await? {
        sqlx::query(
            "UPDATE file_mgr.cleanup_schedules
                SET locked_by = NULL, locked_until = NULL, last_run_at = now(),
                    next_run_at = CASE WHEN $3 THEN now() + interval_seconds * interval '1 second' ELSE next_run_at END
              WHERE id = $1 AND locked_by = $2",
        )
        .bind(schedule.id)
        .bind(&state.settings.cleanup.instance_id)
        .bind(advance)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Renews the lease of a running schedule every third of its length; returns (cancelling the
/// run) once it is lost: another replica holds it, the run is no longer `running`, the schedule
/// is gone, or renewals failed until the lease ran out.
async fn keep_lease(state: &State, schedule: Uuid, run: Uuid) -> String {
    let lease = state.settings.cleanup.lease;
    // A floor, so that a (misconfigured) tiny lease cannot turn this into a busy loop.
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut valid_until = Instant::now() + lease;
    loop {
        tokio::time::sleep(every).await;
        let renewed: Result<Option<Uuid>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE file_mgr.cleanup_schedules SET locked_until = now() + $4::float8 * interval '1 second'
              WHERE id = $1 AND locked_by = $2
                AND EXISTS (SELECT 1 FROM file_mgr.cleanup_runs r WHERE r.id = $3 AND r.state = 'running')
              RETURNING id",
        )
        .bind(schedule)
        .bind(&state.settings.cleanup.instance_id)
        .bind(run)
        .bind(lease.as_secs_f64())
        .fetch_optional(&state.pool)
        .await;
        match renewed {
            Ok(Some(_)) => valid_until = Instant::now() + lease,
            Ok(None) => return "the lease was lost (taken over, or the schedule was deleted)".into(),
            Err(error) => {
                tracing::warn!(%error, %schedule, "could not renew a cleanup lease");
                if Instant::now() + every >= valid_until {
                    return format!("the lease could not be renewed: {error}");
                }
            }
        }
    }
}

/// Deletes finished runs past their 90 days (their items go with them), and expired download
/// links.
async fn prune(state: &State) {
    let pruned = sqlx::query(
        "DELETE FROM file_mgr.cleanup_runs WHERE started_at < now() - interval '90 days' AND state <> 'running'",
    )
    .execute(&state.pool)
    .await;
    match pruned {
        Ok(done) if done.rows_affected() > 0 => tracing::info!(runs = done.rows_affected(), "old cleanup runs deleted"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not delete old cleanup runs"),
    }
    match super::delete_expired_links(state).await {
        Ok(0) => {}
        Ok(links) => tracing::info!(links, "expired download links deleted"),
        Err(error) => tracing::warn!(%error, "could not delete expired download links"),
    }
}
