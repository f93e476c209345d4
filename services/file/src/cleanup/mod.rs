//! Scheduled cleanup: the rules of `file_mgr.cleanup_schedules`, run by one replica at a time.
//!
//! - [`run`] is the scheduler, a background task: it claims due schedules one at a time with a
//!   lease on the row (`locked_by`, `locked_until`), runs them, and releases them.
//! - A run is recorded in `cleanup_runs` (`running` → `succeeded`/`failed`, with counters) in
//!   the same transaction as the claim, and finished in the same transaction as the release,
//!   so a schedule is locked exactly while one of its runs is `running`. A replica that dies
//!   mid-run loses the lease once it lapses; the next claim marks its run `failed`.
//! - While a run lasts, its lease is renewed; a run whose lease is lost (or whose schedule was
//!   deleted) is cancelled at once, so two replicas never work on one schedule together.
//! - Every removed thing gets a `cleanup_run_items` row. Files go through
//!   [`State::mark_deleting`](crate::State::mark_deleting) and
//!   [`State::finish_removal`](crate::State::finish_removal): object and row together.
//! - A tenant's schedule of a rule overrides the platform-wide schedule of that rule for the
//!   tenant, whether the tenant's schedule is enabled or not (disabling it exempts the tenant):
//!   the platform-wide run skips every tenant with a schedule of its own for the rule.
//!
//! What each rule removes: [`rules`]. Expired download links go in the scheduler's hourly
//! housekeeping: [`delete_expired_links`].

mod links;
mod rules;
mod runs;
mod schedule;
mod scheduler;

pub use links::delete_expired_links;
pub use rules::DEFAULT_EXPORT_RETENTION_DAYS;
pub(crate) use runs::ITEM_COLUMNS;
pub use runs::{ItemRecord, RUN_COLUMNS, RunRecord, RunState, Tally};
pub use schedule::{Rule, SCHEDULE_COLUMNS, ScheduleRecord};
pub use scheduler::{Claim, run, run_now};
