//! Wall-clock time as plain data. The protocol never reads a clock: callers pass `now`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch (UTC), as carried on the wire and in persisted state.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// `self + ms`, saturating.
    pub fn plus_millis(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn millis_since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Signed difference `self - other` in milliseconds.
    pub fn signed_diff(self, other: UnixMillis) -> i64 {
        (self.0 as i128 - other.0 as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Formats a duration in milliseconds the way an operator reads it: `4m12s`, `3d2h`, `850ms`.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // Round to the nearest second: a skew measured as 6m59.98s reads as 7m00s.
    let s = (ms + 500) / 1000;
    let (d, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_reads_naturally() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(42_000), "42s");
        assert_eq!(human_duration(252_000), "4m12s");
        assert_eq!(human_duration(419_980), "7m00s");
        assert_eq!(human_duration(3 * 86_400_000 + 2 * 3_600_000), "3d2h");
    }

    #[test]
    fn signed_diff_is_symmetric() {
        assert_eq!(UnixMillis(10).signed_diff(UnixMillis(25)), -15);
        assert_eq!(UnixMillis(25).signed_diff(UnixMillis(10)), 15);
    }
}
