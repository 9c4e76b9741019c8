//! The one retry schedule: capped exponential backoff with jitter, sans-IO (the caller passes
//! the random bits, so the simulation replays it from a seed). Every retry loop in Lifeboat
//! (dials, cycles, vault operations, uploads through an outage) uses it.

/// Capped exponential backoff: the n-th consecutive failure waits a random time in
/// `[d/2, d]`, `d = min(base * 2^n, max)`. Jitter keeps many nodes that failed together (a
/// vault outage, a restarted peer) from retrying in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay scale of the first retry, ms.
    base_ms: u64,
    /// Largest delay, ms.
    max_ms: u64,
    /// Consecutive failures so far.
    failures: u32,
}

impl Backoff {
    /// A schedule from `base_ms` doubling up to `max_ms`.
    pub const fn new(base_ms: u64, max_ms: u64) -> Self {
        Backoff {
            base_ms,
            max_ms,
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait before the next try (`jitter`: random bits).
    pub fn fail(&mut self, jitter: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        delay(self.base_ms, self.max_ms, self.failures, jitter)
    }

    /// Records a success: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` consecutive failures (for state kept elsewhere, e.g. per address).
pub fn delay(base_ms: u64, max_ms: u64, failures: u32, jitter: u64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << failures.min(20)).min(max_ms);
    exp / 2 + jitter % (exp / 2 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_capped_jitter_within_half_and_reset_on_success() {
        let mut b = Backoff::new(100, 1_000);
        assert!((100..=200).contains(&b.fail(u64::MAX / 3)));
        assert!((200..=400).contains(&b.fail(7)));
        for _ in 0..50 {
            let d = b.fail(12_345);
            assert!((500..=1_000).contains(&d), "{d}");
        }
        assert_eq!(b.fail(0), 500, "no jitter: the lower bound");
        assert_eq!(b.fail(u64::MAX), 500 + u64::MAX % 501);
        assert_eq!(b.failures(), 54);
        b.reset();
        assert!(b.fail(0) <= 200);
    }
}
