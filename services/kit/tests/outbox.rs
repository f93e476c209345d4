//! The outbox against real PostgreSQL: delivery, a consumer that was down, a crash between
//! handling and acknowledging, transactions committing out of order, competing replicas.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Mutex;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::outbox::{self, Consumer, Event, EventMeta, Handler, HandlerError};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::common::v1::PageRequest;
use sqlx::PgPool;

/// Records every delivery; optionally fails once after recording event `fail_after`.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<i64>>,
    crash_after_handling: Mutex<Option<i64>>,
}

impl Recorder {
    fn seen(&self) -> Vec<i64> {
        self.seen.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let message: PageRequest = event.decode().expect("right type").expect("decodes");
        // Each test event carries its own marker: the payload must belong to its row.
        let marker: i64 = event.aggregate_id.parse().expect("marker");
        assert_eq!(i64::from(message.page_size), marker, "payload belongs to its event");
        self.seen.lock().unwrap().push(event.id);
        let mut crash = self.crash_after_handling.lock().unwrap();
        if *crash == Some(event.id) {
            *crash = None;
            // The work is done but the acknowledgement is lost, as in a crash.
            return Err(HandlerError("crashed before acknowledging".into()));
        }
        Ok(())
    }
}

/// Publishes one event in its own transaction, as a service would; returns its id.
async fn publish(pool: &PgPool) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let id = publish_in(&mut tx).await;
    tx.commit().await.unwrap();
    id
}

async fn publish_in(conn: &mut sqlx::PgConnection) -> i64 {
    let marker: u32 = next_marker();
    let meta = EventMeta { source: "test", aggregate_type: "thing", aggregate_id: marker.to_string(), tenant_id: None };
    let message = PageRequest { page_size: marker, page_token: String::new() };
    outbox::publish(conn, meta, &message).await.unwrap()
}

fn next_marker() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

async fn drain(consumer: &Consumer, handler: &Recorder) {
    for _ in 0..100 {
        let batch = consumer.process_batch(handler).await.unwrap();
        if batch.handled == 0 && !batch.held_back {
            return;
        }
    }
    panic!("consumer did not settle");
}

#[tokio::test]
async fn a_consumer_that_was_down_gets_every_event_in_order() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(publish(&pool).await);
    }
    // The consumer starts only now, with a small batch size to cross batch boundaries.
    let consumer = Consumer::new(db.service_pool(ServiceRole::NOTIFICATION), "notifications").batch_size(7);
    let recorder = Recorder::default();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), ids);

    // Nothing is delivered twice when all went well.
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), ids);
}

#[tokio::test]
async fn a_crash_between_handling_and_acknowledging_redelivers() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::FILE);
    let first = publish(&pool).await;
    let second = publish(&pool).await;
    let consumer = Consumer::new(db.service_pool(ServiceRole::IDENTITY), "webhooks");
    let recorder = Recorder::default();
    *recorder.crash_after_handling.lock().unwrap() = Some(second);

    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch.handled, 1, "the first event is acknowledged, the second is not");
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![first, second, second], "at least once: the second arrives again");
}

#[tokio::test]
async fn an_event_committed_late_is_not_skipped() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    // Transaction A takes the lower id but commits after B.
    let mut slow = pool.begin().await.unwrap();
    let a = publish_in(&mut slow).await;
    let b = publish(&pool).await;
    assert!(a < b);

    let consumer = Consumer::new(db.service_pool(ServiceRole::NOTIFICATION), "late");
    let recorder = Recorder::default();
    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch.handled, 0, "B must wait: A may still commit below it");
    assert!(batch.held_back);

    slow.commit().await.unwrap();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![a, b]);
}

#[tokio::test]
async fn consumers_keep_their_own_cursors() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let ids = vec![publish(&pool).await, publish(&pool).await];
    for name in ["metering", "gamification"] {
        let recorder = Recorder::default();
        drain(&Consumer::new(pool.clone(), name), &recorder).await;
        assert_eq!(recorder.seen(), ids, "{name}");
    }
}

#[tokio::test]
async fn competing_replicas_share_the_work_without_duplicates() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(publish(&pool).await);
    }
    let recorder = std::sync::Arc::new(Recorder::default());
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let consumer = Consumer::new(pool.clone(), "shared").batch_size(10);
            let recorder = recorder.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let batch = consumer.process_batch(recorder.as_ref()).await.unwrap();
                    if batch.handled == 0 && !batch.busy && !batch.held_back {
                        break;
                    }
                }
            })
        })
        .collect();
    for r in replicas {
        r.await.unwrap();
    }
    let seen = recorder.seen();
    assert_eq!(seen.len(), ids.len(), "each event exactly once when nothing fails");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), ids.len());
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids);
}

#[tokio::test]
async fn run_wakes_on_notify_and_stops_on_shutdown() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let shutdown = Shutdown::new();

    struct Forward(tokio::sync::mpsc::UnboundedSender<i64>);
    impl Handler for Forward {
        async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
            self.0.send(event.id).map_err(|e| HandlerError(e.to_string()))
        }
    }

    // An hour-long idle poll: deliveries within the deadlines below come from NOTIFY.
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Consumer::new(pool.clone(), "live").idle_poll(std::time::Duration::from_secs(3600));
    let task = tokio::spawn(consumer.run(Forward(tx), shutdown.signal()));
    let deadline = std::time::Duration::from_secs(10);
    for _ in 0..3 {
        let id = publish(&pool).await;
        let got = tokio::time::timeout(deadline, delivered.recv()).await.expect("delivered promptly");
        assert_eq!(got, Some(id));
    }
    shutdown.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("stops").unwrap();
}
