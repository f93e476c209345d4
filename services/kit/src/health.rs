//! gRPC health driven by the database.
//!
//! Each service is `NOT_SERVING` until its own pool answers a query, and turns `NOT_SERVING`
//! again while it does not; the whole process (the empty service name) is `SERVING` only when
//! every service is. When draining starts everything turns `NOT_SERVING`, so balancers that
//! watch health stop sending new calls while in-flight ones finish.

use std::time::Duration;

use sqlx::PgPool;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::db;
use crate::shutdown::ShutdownSignal;

/// One service's health inputs: the gRPC service names it serves and its pool.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Fully qualified gRPC service names (e.g. `flatrender.render.v1.RenderService`).
    pub grpc_services: Vec<String>,
    /// The service's database pool.
    pub pool: PgPool,
}

/// Marks the process and every service `NOT_SERVING`; call before the listener opens.
pub async fn mark_not_serving(reporter: &HealthReporter, watched: &[Watched]) {
    for name in watched.iter().flat_map(|w| w.grpc_services.iter()) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
}

/// Keeps statuses in step with the databases until draining starts, then marks everything
/// `NOT_SERVING` so balancers stop sending new calls. Only changes are published, so Watch
/// streams see one message per change.
pub async fn watch_databases(
    reporter: HealthReporter,
    watched: Vec<Watched>,
    interval: Duration,
    signal: ShutdownSignal,
) {
    let mut last: Vec<Option<bool>> = vec![None; watched.len()];
    let mut last_overall = None;
    let timeout = interval.max(Duration::from_millis(500));
    let stop = signal.clone().wait();
    tokio::pin!(stop);
    loop {
        let results = ping_all(&watched, timeout).await;
        if signal.is_started() {
            break;
        }
        for (i, (w, ok)) in watched.iter().zip(&results).enumerate() {
            if last[i] != Some(*ok) {
                let status = if *ok { ServingStatus::Serving } else { ServingStatus::NotServing };
                for name in &w.grpc_services {
                    reporter.set_service_status(name, status).await;
                }
                if *ok {
                    tracing::info!(services = ?w.grpc_services, "database answers; SERVING");
                } else {
                    tracing::warn!(services = ?w.grpc_services, "database does not answer; NOT_SERVING");
                }
                last[i] = Some(*ok);
            }
        }
        let overall = results.iter().all(|ok| *ok);
        if last_overall != Some(overall) {
            let status = if overall { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            last_overall = Some(overall);
        }

        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    mark_not_serving(&reporter, &watched).await;
}

/// Pings every pool concurrently and returns the outcomes in order.
async fn ping_all(watched: &[Watched], timeout: Duration) -> Vec<bool> {
    let handles: Vec<_> = watched
        .iter()
        .map(|w| {
            let pool = w.pool.clone();
            tokio::spawn(async move { db::ping(&pool, timeout).await })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap_or(false));
    }
    out
}
