//! Replication decisions, sans-IO: when a protected machine takes its next point, how RPO and
//! health are computed, and which points retention keeps.
//!
//! - [`Scheduler`] (mobility side): call [`Scheduler::poll`] with `now`; it returns the cycle to
//!   run, if one is due. Report the outcome with [`Scheduler::handle_done`] or
//!   [`Scheduler::handle_failed`] (failures retry with capped exponential backoff).
//! - [`health`] (configuration side): RPO = age of the newest committed point's capture
//!   (or of the protection itself before the first point); above the policy threshold the
//!   machine is `critical`, above half of it `warning`.
//! - [`thin`]: the retention rule.

use lifeboat_protocol::message::Policy;
use lifeboat_protocol::vault::Consistency;
use lifeboat_protocol::UnixMillis;
use serde::Serialize;

/// A cycle to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleKind {
    /// Quiesce applications (freeze hook) for an app-consistent point.
    pub app: bool,
}

/// When to run cycles.
#[derive(Clone, Debug)]
pub struct Scheduler {
    /// Crash-consistent period, ms.
    crash_every_ms: u64,
    /// App-consistent period, ms (0 = never).
    app_every_ms: u64,
    /// Whether the machine can quiesce (a freeze hook is configured).
    can_quiesce: bool,
    /// Start of the last successful cycle.
    last_ok: Option<UnixMillis>,
    /// Start of the last successful app-consistent cycle.
    last_app: Option<UnixMillis>,
    /// Not before this time (backoff after failures).
    not_before: UnixMillis,
    /// Consecutive failures.
    failures: u32,
    /// A cycle is running.
    running: bool,
}

/// Largest retry delay after failures (ms).
pub const MAX_RETRY_MS: u64 = 60_000;

impl Scheduler {
    /// A scheduler for `policy`.
    pub fn new(policy: &Policy, can_quiesce: bool) -> Self {
        Scheduler {
            crash_every_ms: policy.crash_consistent_every_secs.max(1) * 1000,
            app_every_ms: policy.app_consistent_every_secs * 1000,
            can_quiesce,
            last_ok: None,
            last_app: None,
            not_before: UnixMillis(0),
            failures: 0,
            running: false,
        }
    }

    /// The cycle due at `now`, if any (marks it running).
    pub fn poll(&mut self, now: UnixMillis) -> Option<CycleKind> {
        if self.running || now < self.not_before {
            return None;
        }
        let app_due = self.can_quiesce
            && self.app_every_ms > 0
            && self
                .last_app
                .is_none_or(|t| now.millis_since(t) >= self.app_every_ms);
        let crash_due = self
            .last_ok
            .is_none_or(|t| now.millis_since(t) >= self.crash_every_ms);
        if app_due || crash_due {
            self.running = true;
            return Some(CycleKind { app: app_due });
        }
        None
    }

    /// A cycle asked for now (a final point before a failover): crash-consistent, ignoring
    /// the schedule and any backoff. `None` while a cycle runs (ask again after it).
    pub fn force(&mut self) -> Option<CycleKind> {
        if self.running {
            return None;
        }
        self.running = true;
        Some(CycleKind { app: false })
    }

    /// The cycle started at `started` committed its point.
    pub fn handle_done(&mut self, started: UnixMillis, kind: CycleKind) {
        self.running = false;
        self.failures = 0;
        self.last_ok = Some(started);
        if kind.app {
            self.last_app = Some(started);
        }
    }

    /// The cycle failed at `now`; the next try waits a capped exponential delay.
    /// Records a failed cycle at `now`; the next waits a capped, jittered backoff (`jitter`:
    /// random bits from the caller, so a simulation replays it).
    pub fn handle_failed(&mut self, now: UnixMillis, jitter: u64) {
        self.running = false;
        self.failures = self.failures.saturating_add(1);
        let delay = crate::backoff::delay(1_000, MAX_RETRY_MS, self.failures, jitter);
        self.not_before = now.plus_millis(delay);
    }

    /// Consecutive failures.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Health of a protected machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// First full copy not finished.
    InitialReplication,
    /// RPO within half the threshold.
    Protected,
    /// RPO above half the threshold.
    Warning,
    /// RPO above the threshold: alert.
    Critical,
}

/// RPO (ms) and health at `now`. `newest` is the capture time of the newest committed point,
/// `since` when protection started.
pub fn health(
    now: UnixMillis,
    newest: Option<UnixMillis>,
    since: UnixMillis,
    threshold_secs: u64,
) -> (u64, Health) {
    let t = threshold_secs * 1000;
    match newest {
        None => {
            let age = now.millis_since(since);
            (
                age,
                if age > t {
                    Health::Critical
                } else {
                    Health::InitialReplication
                },
            )
        }
        Some(p) => {
            let rpo = now.millis_since(p);
            let h = if rpo > t {
                Health::Critical
            } else if rpo > t / 2 {
                Health::Warning
            } else {
                Health::Protected
            };
            (rpo, h)
        }
    }
}

/// A point as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointAge {
    /// Id.
    pub id: String,
    /// Capture time.
    pub captured: UnixMillis,
    /// Consistency.
    pub consistency: Consistency,
}

/// Everything of the last two hours is kept.
pub const KEEP_ALL_MS: u64 = 2 * 3600 * 1000;

/// The retention rule. Returns the ids to delete. Kept:
/// - the newest point, and the newest app-consistent point, always;
/// - every point captured in the last 2 hours;
/// - older than that and within `retention_secs`: the newest point of each clock hour, and the
///   newest app-consistent point of each clock hour;
/// - nothing older than `retention_secs` (except the two above).
pub fn thin(points: &[PointAge], now: UnixMillis, retention_secs: u64) -> Vec<String> {
    let retention = retention_secs * 1000;
    let newest = points
        .iter()
        .max_by_key(|p| p.captured)
        .map(|p| p.id.clone());
    let newest_app = points
        .iter()
        .filter(|p| p.consistency == Consistency::AppConsistent)
        .max_by_key(|p| p.captured)
        .map(|p| p.id.clone());
    let mut keep_hourly = std::collections::BTreeMap::<(u64, bool), (UnixMillis, String)>::new();
    for p in points {
        let age = now.millis_since(p.captured);
        if age <= KEEP_ALL_MS || age > retention {
            continue;
        }
        let hour = p.captured.0 / 3_600_000;
        for app in [false, true] {
            if app && p.consistency != Consistency::AppConsistent {
                continue;
            }
            let e = keep_hourly
                .entry((hour, app))
                .or_insert((p.captured, p.id.clone()));
            if p.captured > e.0 {
                *e = (p.captured, p.id.clone());
            }
        }
    }
    let hourly: std::collections::BTreeSet<String> =
        keep_hourly.into_values().map(|(_, id)| id).collect();
    points
        .iter()
        .filter(|p| {
            let age = now.millis_since(p.captured);
            let keep = Some(&p.id) == newest.as_ref()
                || Some(&p.id) == newest_app.as_ref()
                || age <= KEEP_ALL_MS
                || (age <= retention && hourly.contains(&p.id));
            !keep
        })
        .map(|p| p.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            crash_consistent_every_secs: 60,
            app_consistent_every_secs: 3600,
            ..Policy::default_policy()
        }
    }

    #[test]
    fn cycles_run_at_the_policy_frequencies() {
        let mut s = Scheduler::new(&policy(), true);
        let k = s.poll(UnixMillis(0)).unwrap();
        assert!(
            k.app,
            "the first cycle of a quiescable machine is app-consistent"
        );
        assert_eq!(s.poll(UnixMillis(1)), None, "one cycle at a time");
        s.handle_done(UnixMillis(0), k);
        assert_eq!(s.poll(UnixMillis(59_999)), None);
        assert_eq!(s.poll(UnixMillis(60_000)), Some(CycleKind { app: false }));
        s.handle_done(UnixMillis(60_000), CycleKind { app: false });
        assert_eq!(s.poll(UnixMillis(3_600_000)), Some(CycleKind { app: true }));
        let mut n = Scheduler::new(&policy(), false);
        assert_eq!(n.poll(UnixMillis(0)), Some(CycleKind { app: false }));
    }

    #[test]
    fn a_forced_cycle_ignores_schedule_and_backoff_but_not_a_running_cycle() {
        let mut s = Scheduler::new(&policy(), true);
        let k = s.poll(UnixMillis(0)).unwrap();
        assert_eq!(
            s.force(),
            None,
            "a cycle runs: the request waits for the next"
        );
        s.handle_failed(UnixMillis(1), 0);
        assert_eq!(s.poll(UnixMillis(2)), None, "backing off");
        assert_eq!(s.force(), Some(CycleKind { app: false }));
        s.handle_done(UnixMillis(2), k);
        assert_eq!(
            s.force(),
            Some(CycleKind { app: false }),
            "not due, but asked for"
        );
    }

    #[test]
    fn failures_back_off_with_a_cap() {
        let mut s = Scheduler::new(&policy(), false);
        let mut now = UnixMillis(0);
        for _ in 0..20 {
            assert!(s.poll(now).is_some());
            s.handle_failed(now, 12_345);
            let mut t = now;
            while s.poll(t).is_none() {
                t = t.plus_millis(500);
            }
            assert!(t.millis_since(now) <= MAX_RETRY_MS + 500);
            s.handle_failed(t, u64::MAX);
            now = t.plus_millis(MAX_RETRY_MS);
        }
    }

    #[test]
    fn health_follows_rpo() {
        let t = 900;
        assert_eq!(
            health(UnixMillis(1_000), None, UnixMillis(0), t).1,
            Health::InitialReplication
        );
        assert_eq!(
            health(UnixMillis(1_000_000), None, UnixMillis(0), t).1,
            Health::Critical
        );
        assert_eq!(
            health(UnixMillis(100_000), Some(UnixMillis(0)), UnixMillis(0), t),
            (100_000, Health::Protected)
        );
        assert_eq!(
            health(UnixMillis(500_000), Some(UnixMillis(0)), UnixMillis(0), t).1,
            Health::Warning
        );
        assert_eq!(
            health(UnixMillis(900_001), Some(UnixMillis(0)), UnixMillis(0), t).1,
            Health::Critical
        );
    }

    #[test]
    fn retention_keeps_recent_hourly_and_newest_app_points() {
        let h = 3_600_000;
        let now = UnixMillis(100 * h);
        let mut pts = Vec::new();
        // One point every 20 minutes for 30 hours; every 6th is app-consistent.
        for i in 0..90u64 {
            let captured = UnixMillis(now.0 - i * h / 3);
            let consistency = if i % 6 == 5 {
                Consistency::AppConsistent
            } else {
                Consistency::CrashConsistent
            };
            pts.push(PointAge {
                id: format!("p{i}"),
                captured,
                consistency,
            });
        }
        let gone: std::collections::BTreeSet<String> =
            thin(&pts, now, 24 * 3600).into_iter().collect();
        for p in &pts {
            let age = now.millis_since(p.captured);
            if age <= KEEP_ALL_MS {
                assert!(!gone.contains(&p.id), "{} is recent", p.id);
            }
            if age > 24 * h {
                assert!(gone.contains(&p.id), "{} is beyond retention", p.id);
            }
        }
        // Between 2 h and 24 h at most two points (newest, newest app) per clock hour remain.
        let kept: Vec<&PointAge> = pts.iter().filter(|p| !gone.contains(&p.id)).collect();
        for hour in (now.0 - 24 * h) / h..(now.0 - 2 * h) / h {
            let n = kept.iter().filter(|p| p.captured.0 / h == hour).count();
            assert!((1..=2).contains(&n), "hour {hour} keeps {n}");
        }
        assert!(!gone.contains("p5"), "newest app-consistent point is kept");
        assert!(!gone.contains("p0"), "newest point is kept");
        assert!(
            thin(&pts[..1], UnixMillis(now.0 + 1000 * h), 3600).is_empty(),
            "the only point is never dropped"
        );
    }
}

/// A process server's upload bandwidth policy: one limit during work hours, another outside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Throttle {
    /// Bytes per second during work hours (None = unlimited).
    pub work_bps: Option<u64>,
    /// Bytes per second outside work hours (None = unlimited).
    pub off_bps: Option<u64>,
    /// Work hours as minutes of the day [start, end) in the given UTC offset.
    pub work_minutes: (u32, u32),
    /// UTC offset of the work-hours clock, minutes.
    pub utc_offset_min: i32,
}

/// Parses `100Mbit`, `1Gbit`, `500kbit`, `20MB` (bytes) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: use a rate like 100Mbit, 1Gbit or 20MB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "bit" | "bps" => 1.0 / 8.0,
        "kbit" => 1e3 / 8.0,
        "mbit" => 1e6 / 8.0,
        "gbit" => 1e9 / 8.0,
        "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use bit, kbit, Mbit, Gbit, B, kB, MB or GB"
            ))
        }
    };
    let v = (n * mult) as u64;
    if v == 0 {
        return Err(format!("{s:?} is zero; omit the limit for unlimited"));
    }
    Ok(v)
}

/// Parses `08:00-18:00` or `08:00-18:00+01:00` into minutes and a UTC offset.
pub fn parse_work_hours(s: &str) -> Result<((u32, u32), i32), String> {
    let bad =
        || format!("{s:?}: use HH:MM-HH:MM, optionally with a UTC offset like 08:00-18:00+01:00");
    let (range, off) = match s.get(11..) {
        Some(o) if !o.is_empty() => (&s[..11], o),
        _ => (s, "+00:00"),
    };
    let hm = |x: &str| -> Result<u32, String> {
        let (h, m) = x.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(h * 60 + m)
    };
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let sign = match off.chars().next() {
        Some('+') => 1,
        Some('-') => -1,
        _ => return Err(bad()),
    };
    let o = hm(&off[1..])? as i32 * sign;
    Ok(((hm(a)?, hm(b)?), o))
}

impl Throttle {
    /// The limit in force at `now` (bytes per second; None = unlimited).
    pub fn rate_at(&self, now: UnixMillis) -> Option<u64> {
        let minute = ((now.0 / 60_000) as i64 + self.utc_offset_min as i64).rem_euclid(1440) as u32;
        let (a, b) = self.work_minutes;
        let work = if a <= b {
            minute >= a && minute < b
        } else {
            minute >= a || minute < b
        };
        if work {
            self.work_bps
        } else {
            self.off_bps
        }
    }
}

/// A token bucket: one second of burst at the current rate.
#[derive(Clone, Debug, Default)]
pub struct TokenBucket {
    /// Available bytes (may go negative: a large send borrows, and the next waits).
    tokens: f64,
    /// Last refill.
    last: UnixMillis,
}

impl TokenBucket {
    /// Takes `bytes` at `rate` (None = unlimited); returns how long to wait first (ms).
    pub fn take(&mut self, now: UnixMillis, rate: Option<u64>, bytes: u64) -> u64 {
        let Some(rate) = rate else {
            self.last = now;
            self.tokens = 0.0;
            return 0;
        };
        let r = rate as f64;
        let elapsed = now.millis_since(self.last) as f64 / 1000.0;
        self.last = now;
        self.tokens = (self.tokens + elapsed * r).min(r);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0
        } else {
            ((-self.tokens / r) * 1000.0).ceil() as u64
        }
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn rates_and_hours_parse_with_clear_errors() {
        assert_eq!(parse_rate("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 125_000_000);
        assert_eq!(parse_rate("20MB").unwrap(), 20_000_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0Mbit").is_err());
        assert!(parse_rate("10 furlongs").is_err());
        assert_eq!(parse_work_hours("08:00-18:00").unwrap(), ((480, 1080), 0));
        assert_eq!(
            parse_work_hours("08:00-18:00+01:00").unwrap(),
            ((480, 1080), 60)
        );
        assert!(parse_work_hours("8-18").is_err());
        assert!(parse_work_hours("25:00-18:00").is_err());
    }

    #[test]
    fn the_schedule_switches_limits_at_work_hours() {
        let t = Throttle {
            work_bps: Some(1),
            off_bps: Some(2),
            work_minutes: (480, 1080),
            utc_offset_min: 60,
        };
        let at = |h: u64, m: u64| UnixMillis((h * 60 + m) * 60_000);
        assert_eq!(t.rate_at(at(6, 59)), Some(2), "07:59 local");
        assert_eq!(t.rate_at(at(7, 0)), Some(1), "08:00 local");
        assert_eq!(t.rate_at(at(16, 59)), Some(1));
        assert_eq!(t.rate_at(at(17, 0)), Some(2), "18:00 local");
        let night = Throttle {
            work_minutes: (1320, 360),
            utc_offset_min: 0,
            ..t
        };
        assert_eq!(night.rate_at(at(23, 0)), Some(1));
        assert_eq!(night.rate_at(at(12, 0)), Some(2));
    }

    #[test]
    fn the_bucket_holds_the_long_run_rate() {
        let mut b = TokenBucket::default();
        let mut now = UnixMillis(1_000_000);
        b.take(now, Some(1_000_000), 0);
        let mut sent = 0u64;
        // 8 MiB packs at 1 MB/s: the waits add up to the time the bytes need.
        for _ in 0..10 {
            let w = b.take(now, Some(1_000_000), 8 << 20);
            now = now.plus_millis(w);
            sent += 8 << 20;
        }
        let secs = now.millis_since(UnixMillis(1_000_000)) as f64 / 1000.0;
        let rate = sent as f64 / secs;
        assert!(rate <= 1_100_000.0 && rate >= 900_000.0, "rate {rate}");
        assert_eq!(b.take(now, None, 1 << 30), 0, "unlimited never waits");
    }
}
