//! Server streams that follow a job or a snapshot (WatchRender, WatchSnapshot; they work over
//! grpc-web): the first message at once, then one whenever a read after a change notification
//! finds something different — at most one per `watch_min_interval` (changes in between are
//! coalesced into the next read) and at least one per `watch_keepalive` even when nothing
//! changed — and the end (OK) right after the message with a terminal state.
//!
//! The stream owns its [`Subscription`]: when the client goes away tonic drops the stream, and
//! with it the subscription and everything else the watcher held.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::BoxStream;

use super::changes::Subscription;
use crate::error::Result;

/// How often a stream may and must send.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// At most one message per this interval.
    pub min_interval: Duration,
    /// At least one message per this interval.
    pub keepalive: Duration,
}

/// What a stream follows.
pub trait Follow: Send + 'static {
    /// The stream's message.
    type Message: Send + 'static;

    /// Reads the current state: the next message when it differs from the last one sent (or
    /// always, when `force`), with whether its state is terminal; `None` when nothing changed.
    fn read(&mut self, force: bool) -> impl Future<Output = Result<Option<(Self::Message, bool)>>> + Send;
}

struct Following<F: Follow> {
    follow: F,
    subscription: Subscription,
    pace: Pace,
    first: Option<F::Message>,
    last_sent: Instant,
    done: bool,
}

/// The stream that sends `first` (terminal when `first_terminal`) and then follows `follow`,
/// woken by `subscription` (made before `first` was read, so no change is missed).
pub fn stream<F: Follow>(
    follow: F,
    subscription: Subscription,
    first: F::Message,
    first_terminal: bool,
    pace: Pace,
) -> BoxStream<F::Message> {
    let state =
        Following { follow, subscription, pace, first: Some(first), last_sent: Instant::now(), done: first_terminal };
    futures_util::stream::unfold(state, |mut state| async move {
        if let Some(first) = state.first.take() {
            state.last_sent = Instant::now();
            return Some((Ok(first), state));
        }
        if state.done {
            return None;
        }
        loop {
            let keepalive_at = state.last_sent + state.pace.keepalive;
            tokio::select! {
                () = state.subscription.changed() => {}
                () = tokio::time::sleep_until(keepalive_at) => {}
            }
            // Changes arriving meanwhile are read together below.
            tokio::time::sleep_until(state.last_sent + state.pace.min_interval).await;
            let force = Instant::now() >= keepalive_at;
            match state.follow.read(force).await {
                Ok(Some((message, terminal))) => {
                    state.last_sent = Instant::now();
                    state.done = terminal;
                    return Some((Ok(message), state));
                }
                Ok(None) => {}
                Err(error) => {
                    state.done = true;
                    return Some((Err(Status::from(error)), state));
                }
            }
        }
    })
    .boxed()
}
