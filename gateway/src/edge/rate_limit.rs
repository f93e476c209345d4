//! Rate limits of the public gateway: per tenant, per API key and per client address.
//!
//! Each key costs one timestamp, its theoretical arrival time (TAT) under the generic cell rate
//! algorithm (GCRA): requests are spaced by `60 s / per_minute`, and a key may run up to `burst`
//! of those spacings ahead of the clock. A key whose TAT has passed is indistinguishable from a
//! key never seen, which is what lets idle keys be dropped without changing any decision.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Shards per limiter: concurrent requests for different keys rarely wait on the same lock.
const SHARDS: usize = 16;
/// Keys tracked per shard by default; with 16 shards about a million keys in all.
pub const DEFAULT_SHARD_CAPACITY: usize = 65_536;
/// A shard drops its idle keys after this many checks, or after as many checks as it holds
/// keys, whichever is more, so the lazy sweep costs O(1) per check amortized.
const SWEEP_EVERY: usize = 1024;

/// A per-minute rate with a burst allowance: `burst` requests may arrive at once, and the
/// capacity refills at `per_minute` requests a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    per_minute: u32,
    burst: u32,
}

/// Why a quota is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("a rate limit needs at least 1 request a minute")]
    ZeroRate,
    #[error("a rate limit needs a burst of at least 1 request")]
    ZeroBurst,
}

impl Quota {
    /// A quota of `per_minute` requests a minute with bursts of up to `burst` requests.
    pub const fn new(per_minute: u32, burst: u32) -> Result<Self, QuotaError> {
        if per_minute == 0 {
            return Err(QuotaError::ZeroRate);
        }
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Ok(Self { per_minute, burst })
    }

    /// `per_minute` a minute (at least 1) with bursts of a tenth of that (at least 10): the
    /// gateway's shape for every configured limit.
    pub fn per_minute_with_burst(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        Self { per_minute, burst: (per_minute / 10).max(10) }
    }

    pub const fn per_minute(self) -> u32 {
        self.per_minute
    }

    pub const fn burst(self) -> u32 {
        self.burst
    }

    /// The spacing between requests at the steady rate.
    fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute
    }
}

/// A refused request: the next one would be admitted after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry in {0:?}")]
pub struct RetryAfter(pub Duration);

/// One shard: the TAT of each key it tracks, and the checks since its last sweep.
struct Shard<K> {
    tats: HashMap<K, Instant>,
    checks_since_sweep: usize,
}

impl<K: Hash + Eq> Shard<K> {
    /// Drops the keys whose TAT has passed: they would be admitted exactly like new keys.
    fn sweep(&mut self, now: Instant) {
        self.tats.retain(|_, tat| *tat > now);
        self.checks_since_sweep = 0;
    }

    /// Makes room in a full shard by evicting the `count` keys with the earliest TATs.
    fn evict_closest_to_expiry(&mut self, count: usize) {
        let mut tats: Vec<Instant> = self.tats.values().copied().collect();
        if count == 0 || tats.is_empty() {
            return;
        }
        let index = count.min(tats.len()) - 1;
        let (below, threshold, _) = tats.select_nth_unstable(index);
        let threshold = *threshold;
        // Keys at exactly the threshold are evicted only as far as needed to evict `count`.
        let mut ties = index + 1 - below.iter().filter(|tat| **tat < threshold).count();
        self.tats.retain(|_, tat| {
            if *tat < threshold {
                false
            } else if *tat == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// A GCRA rate limiter keyed by tenant, API key, client address or anything else hashable.
///
/// The quota is given per check, so keys of one limiter may carry different limits (an API
/// key with its own per-minute rate); the state kept per key does not depend on the quota.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    shards: Box<[Mutex<Shard<K>>]>,
    /// Chooses the shard; independent of the maps' own hashers so that the keys of one shard
    /// still spread over all of its map's buckets.
    shard_hasher: RandomState,
    shard_capacity: usize,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter").field("keys", &self.len()).finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Default for KeyedLimiter<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter tracking up to [`DEFAULT_SHARD_CAPACITY`] keys in each of its shards.
    pub fn new() -> Self {
        Self::with_shard_capacity(DEFAULT_SHARD_CAPACITY)
    }

    /// A limiter tracking up to `shard_capacity` keys (at least 1) in each of its shards.
    pub fn with_shard_capacity(shard_capacity: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard { tats: HashMap::new(), checks_since_sweep: 0 })).collect();
        Self { shards, shard_hasher: RandomState::new(), shard_capacity: shard_capacity.max(1) }
    }

    /// Admits one request of `key` at `now` under `quota`, or says how long until the next one
    /// would be admitted. A refused request changes nothing, so retrying early costs nothing.
    pub fn check(&self, key: &K, quota: Quota, now: Instant) -> Result<(), RetryAfter> {
        let interval = quota.interval();
        let tolerance = interval.saturating_mul(quota.burst);
        let mut shard = self.shard(key);
        shard.checks_since_sweep += 1;
        if shard.checks_since_sweep >= SWEEP_EVERY.max(shard.tats.len()) {
            shard.sweep(now);
        }

        let tat = shard.tats.get(key).copied().filter(|tat| *tat > now).unwrap_or(now);
        // How far ahead of the clock the key would run after this request.
        let ahead = tat.saturating_duration_since(now).saturating_add(interval);
        if ahead > tolerance {
            return Err(RetryAfter(ahead - tolerance));
        }
        // Only reachable with an absurd quota near the end of `Instant`'s range: refuse.
        let Some(new_tat) = now.checked_add(ahead) else { return Err(RetryAfter(interval)) };

        if let Some(stored) = shard.tats.get_mut(key) {
            *stored = new_tat;
            return Ok(());
        }
        if shard.tats.len() >= self.shard_capacity {
            shard.sweep(now);
            if shard.tats.len() >= self.shard_capacity {
                // At the cap evict keys nearest expiry (least debt forgiven): refusing or ignoring new keys is worse.
                // Evict a batch so that a flood of new keys does not scan the shard every time.
                let count = (self.shard_capacity / 16).max(1);
                shard.evict_closest_to_expiry(count);
            }
        }
        shard.tats.insert(key.clone(), new_tat);
        Ok(())
    }

    /// Drops every key whose state equals a new key's at `now`; for a periodic task, on top of
    /// the sweeps that checks do lazily.
    pub fn sweep(&self, now: Instant) {
        for shard in &self.shards {
            lock(shard).sweep(now);
        }
    }

    /// Keys tracked now, over all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).tats.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K>> {
        let hash = self.shard_hasher.hash_one(key);
        // Lossless on 64-bit targets; elsewhere the low bits still spread keys over shards.
        lock(&self.shards[hash as usize % self.shards.len()])
    }
}

/// Locks a shard. A panic while it was held cannot leave a half-written timestamp behind, so
/// a poisoned lock is taken over instead of failing every later request.
fn lock<K>(shard: &Mutex<Shard<K>>) -> MutexGuard<'_, Shard<K>> {
    shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
const QUOTA_FAILURE_TYPE: &str = "type.googleapis.com/google.rpc.QuotaFailure";
/// gRPC's standard retry pushback: clients that retry wait this many milliseconds.
const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// HTTP's `Retry-After`, in whole seconds, for gRPC-Web and plain HTTP clients.
const RETRY_AFTER: &str = "retry-after";

/// `google.rpc.Status`, the payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`: when the client may retry.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// `google.rpc.QuotaFailure`: which quota was exceeded.
#[derive(Clone, PartialEq, Message)]
struct QuotaFailure {
    #[prost(message, repeated, tag = "1")]
    violations: Vec<QuotaViolation>,
}

/// `google.rpc.QuotaFailure.Violation`.
#[derive(Clone, PartialEq, Message)]
struct QuotaViolation {
    #[prost(string, tag = "1")]
    subject: String,
    #[prost(string, tag = "2")]
    description: String,
}

/// The answer to a refused request: `RESOURCE_EXHAUSTED` naming the limit (`scope`, e.g. "API
/// key") and when to retry, with the delay also in the rich error details (`RetryInfo`,
/// `QuotaFailure`) and in the `grpc-retry-pushback-ms` and `retry-after` metadata, so that
/// every kind of client can honour it.
pub fn resource_exhausted(scope: &str, retry_after: Duration) -> Status {
    // Rounded up everywhere: a client that waits as told is admitted.
    let tenths = retry_after.as_nanos().div_ceil(100_000_000);
    let message = format!("rate limit of the {scope} exceeded; retry in {}.{} s", tenths / 10, tenths % 10);
    let millis = u64::try_from(retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let seconds = millis.div_ceil(1000).max(1);

    let retry_info = RetryInfo { retry_delay: Some(proto_duration(retry_after)) };
    let quota_failure = QuotaFailure {
        violations: vec![QuotaViolation {
            subject: scope.to_owned(),
            description: format!("rate limit of the {scope} exceeded"),
        }],
    };
    let details = RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![
            prost_types::Any { type_url: RETRY_INFO_TYPE.to_owned(), value: retry_info.encode_to_vec() },
            prost_types::Any { type_url: QUOTA_FAILURE_TYPE.to_owned(), value: quota_failure.encode_to_vec() },
        ],
    };

    let mut status = Status::with_details(Code::ResourceExhausted, message, details.encode_to_vec().into());
    let metadata = status.metadata_mut();
    metadata.insert(RETRY_PUSHBACK_MS, MetadataValue::from(millis));
    metadata.insert(RETRY_AFTER, MetadataValue::from(seconds));
    status
}

/// The retry delay in a status's rich error details (`google.rpc.RetryInfo`), if it has one.
pub fn retry_info(status: &Status) -> Option<Duration> {
    let details = RpcStatus::decode(status.details()).ok()?;
    let any = details.details.iter().find(|any| any.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(u64::try_from(delay.seconds).ok()?, u32::try_from(delay.nanos).ok()?))
}

/// A `google.protobuf.Duration`; saturates far beyond any delay a limiter asks for.
fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9, so always fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn quota(per_minute: u32, burst: u32) -> Quota {
        Quota::new(per_minute, burst).unwrap()
    }

    #[test]
    fn quota_is_validated() {
        assert_eq!(Quota::new(0, 1), Err(QuotaError::ZeroRate));
        assert_eq!(Quota::new(1, 0), Err(QuotaError::ZeroBurst));
        assert_eq!(quota(60, 5).per_minute(), 60);
        assert_eq!(quota(60, 5).burst(), 5);
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 3), Instant::now());
        for _ in 0..3 {
            assert_eq!(limiter.check(&"k", q, t0), Ok(()));
        }
        assert_eq!(limiter.check(&"k", q, t0), Err(RetryAfter(Duration::from_secs(1))));
        let t = t0 + Duration::from_millis(400);
        assert_eq!(limiter.check(&"k", q, t), Err(RetryAfter(Duration::from_millis(600))));
        // Exactly when told, one more request is admitted, and then the next one must wait again.
        let t = t + Duration::from_millis(600);
        assert_eq!(limiter.check(&"k", q, t), Ok(()));
        assert_eq!(limiter.check(&"k", q, t), Err(RetryAfter(Duration::from_secs(1))));
    }

    #[test]
    fn steady_rate_is_admitted() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(120, 1), Instant::now());
        for i in 0..1000 {
            assert_eq!(limiter.check(&"k", q, t0 + Duration::from_millis(500) * i), Ok(()), "request {i}");
        }
        let last = t0 + Duration::from_millis(500) * 999;
        assert!(limiter.check(&"k", q, last + Duration::from_millis(499)).is_err());
    }

    #[test]
    fn refused_request_does_not_consume() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 1), Instant::now());
        assert_eq!(limiter.check(&"k", q, t0), Ok(()));
        for i in 1..=9 {
            let t = t0 + Duration::from_millis(100) * i;
            assert_eq!(limiter.check(&"k", q, t), Err(RetryAfter(Duration::from_millis(1000 - 100 * u64::from(i)))));
        }
        assert_eq!(limiter.check(&"k", q, t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn keys_are_independent() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 2), Instant::now());
        for _ in 0..2 {
            assert_eq!(limiter.check(&"a", q, t0), Ok(()));
        }
        assert!(limiter.check(&"a", q, t0).is_err());
        for _ in 0..2 {
            assert_eq!(limiter.check(&"b", q, t0), Ok(()));
        }
        assert!(limiter.check(&"b", q, t0).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn quota_is_per_call() {
        let limiter = KeyedLimiter::new();
        let (default, premium, t0) = (quota(60, 1), quota(600, 1), Instant::now());
        for i in 0..10 {
            let t = t0 + Duration::from_millis(200) * i;
            assert_eq!(limiter.check(&"premium", premium, t), Ok(()));
            assert_eq!(limiter.check(&"default", default, t).is_ok(), i % 5 == 0, "request {i}");
        }
    }

    #[test]
    fn sweep_drops_idle_keys_and_keeps_busy_ones() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 5), Instant::now());
        assert_eq!(limiter.check(&"idle", q, t0), Ok(()));
        for _ in 0..5 {
            assert_eq!(limiter.check(&"busy", q, t0 + Duration::from_secs(3)), Ok(()));
        }
        limiter.sweep(t0 + Duration::from_secs(1)); // "idle" is exactly back to a new key's state
        assert_eq!(limiter.len(), 1);
        assert!(limiter.check(&"busy", q, t0 + Duration::from_secs(3)).is_err(), "busy key kept its state");
    }

    #[test]
    fn checks_sweep_lazily() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 1), Instant::now());
        for i in 0..1000 {
            limiter.check(&format!("old{i}"), q, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(3600);
        let new: Vec<String> = (0..1000).map(|i| format!("new{i}")).collect();
        for round in 0..100u32 {
            for key in &new {
                let _ = limiter.check(key, q, later + Duration::from_millis(round.into()));
            }
        }
        assert_eq!(limiter.len(), 1000, "only the keys in use are left");
    }

    #[test]
    fn cap_evicts_keys_closest_to_expiry() {
        let limiter = KeyedLimiter::with_shard_capacity(8);
        let (q, t0) = (quota(60, 10), Instant::now());
        for _ in 0..10 {
            limiter.check(&u32::MAX, q, t0).unwrap();
        }
        for key in 0..1000 {
            assert_eq!(limiter.check(&key, q, t0), Ok(()), "new keys are tracked, not refused");
        }
        assert!(limiter.len() <= SHARDS * 8);
        assert_eq!(limiter.check(&u32::MAX, q, t0), Err(RetryAfter(Duration::from_secs(1))), "the deepest debt kept");
    }

    #[test]
    fn eviction_removes_exactly_the_batch() {
        let t0 = Instant::now();
        let mut shard = Shard { tats: HashMap::new(), checks_since_sweep: 0 };
        for key in 0..10 {
            shard.tats.insert(key, t0 + Duration::from_secs(if key < 6 { 1 } else { 2 + key }));
        }
        shard.evict_closest_to_expiry(3);
        assert_eq!(shard.tats.len(), 7);
        assert!((6..10).all(|key| shard.tats.contains_key(&key)));
        shard.evict_closest_to_expiry(5);
        let mut left: Vec<_> = shard.tats.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [8, 9]);
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        let limiter = KeyedLimiter::new();
        let (q, t0) = (quota(60, 37), Instant::now());
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        if limiter.check(&"shared", q, t0).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 37);
    }

    #[test]
    fn poisoned_shard_keeps_working() {
        let limiter = KeyedLimiter::with_shard_capacity(4);
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = limiter.shards[0].lock().unwrap();
                    panic!("poison the shard");
                })
                .join()
        });
        assert!(limiter.shards[0].is_poisoned());
        let t0 = Instant::now();
        for key in 0..100 {
            assert_eq!(limiter.check(&key, quota(60, 1), t0), Ok(()));
        }
        assert!(limiter.len() <= 100);
    }

    #[test]
    fn status_round_trip() {
        let delay = Duration::from_millis(1150);
        let status = resource_exhausted("API key", delay);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "rate limit of the API key exceeded; retry in 1.2 s");
        assert_eq!(retry_info(&status), Some(delay));
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "1150");
        assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "2");

        // Through the trailers a client receives.
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        let received = Status::from_header_map(&headers).unwrap();
        assert_eq!(received.code(), Code::ResourceExhausted);
        assert_eq!(received.message(), status.message());
        assert_eq!(retry_info(&received), Some(delay));
        assert_eq!(received.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "1150");
        assert_eq!(received.metadata().get(RETRY_AFTER).unwrap(), "2");

        let details = RpcStatus::decode(received.details()).unwrap();
        assert_eq!(details.code, Code::ResourceExhausted as i32);
        assert_eq!(details.message, status.message());
        let failure = details.details.iter().find(|any| any.type_url == QUOTA_FAILURE_TYPE).unwrap();
        let failure = QuotaFailure::decode(failure.value.as_slice()).unwrap();
        assert_eq!(failure.violations[0].subject, "API key");
    }

    #[test]
    fn short_delays_round_up() {
        let status = resource_exhausted("client address", Duration::from_micros(1));
        assert_eq!(status.message(), "rate limit of the client address exceeded; retry in 0.1 s");
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "1");
        assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "1");
        assert_eq!(retry_info(&status), Some(Duration::from_micros(1)));
    }

    #[test]
    fn retry_info_is_absent_without_details() {
        assert_eq!(retry_info(&Status::resource_exhausted("no details")), None);
    }
}
