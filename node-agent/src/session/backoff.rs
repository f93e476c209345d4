//! Reconnect delays: exponential from 0.5 s to 30 s with full jitter, so that a farm of agents
//! cut off by one orchestrator restart does not reconnect in lockstep (the protocol's rule, in
//! `agent_service.proto`). A connection that stayed up resets the delay.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(30);

/// The delays before successive reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The ceiling of the next delay: 0.5 s, 1 s, 2 s, ... up to 30 s.
    pub fn ceiling(&self) -> Duration {
        FIRST.saturating_mul(1_u32 << self.attempt.min(16)).min(MAX)
    }

    /// The next delay: uniformly random up to the ceiling (never below a tenth of it, so a
    /// failing orchestrator is not hammered), and the ceiling grows.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let share = 0.1 + 0.9 * rand::random::<f64>();
        ceiling.mul_f64(share)
    }

    /// After a connection that worked: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut backoff = Backoff::new();
        let ceilings: Vec<Duration> = (0..10)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling && delay >= ceiling / 10, "{delay:?} outside {ceiling:?}");
                ceiling
            })
            .collect();
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[6], Duration::from_secs(30), "capped at 30 s");
        assert_eq!(ceilings[9], Duration::from_secs(30));
        let spread: std::collections::BTreeSet<_> = (0..20).map(|_| Backoff::new().next_delay()).collect();
        assert!(spread.len() > 10, "jitter spreads the first delay");
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }
}
