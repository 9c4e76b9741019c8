//! The configuration node's catalog, sans-IO: the newest points of each protected machine (a
//! cache of the vault, fed only with points verified against it), the mobility nodes' reports,
//! RPO alert transitions, and when the periodic duties (retention, garbage collection) are due.
//!
//! Call order: [`Catalog::handle_point`] for each verified point notice,
//! [`Catalog::handle_report`] for each report (the caller passes the authenticated sender),
//! [`Catalog::poll_alerts`] once a tick with `now` (it returns the raised and cleared alerts to
//! announce), [`Catalog::view`] to show a machine. [`Duties::poll`] says which periodic duties
//! to start at `now`. The shell persists [`Catalog::entries`] after a change.

use crate::replication::{health, Health};
use lifeboat_protocol::message::{PointSummary, ProtectionReport};
use lifeboat_protocol::vault::Consistency;
use lifeboat_protocol::{NodeId, UnixMillis};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the configuration node knows of a machine's points and state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Newest point.
    pub latest: Option<PointSummary>,
    /// Newest app-consistent point.
    pub latest_app: Option<PointSummary>,
    /// Newest crash-consistent (or better) point.
    pub latest_crash: Option<PointSummary>,
    /// Latest report from the mobility node.
    pub report: Option<ProtectionReport>,
    /// An RPO alert is raised.
    pub alerted: bool,
}

/// True if a point captured at `captured` claims a time later than `now` plus the clock skew
/// registration allows.
pub fn captured_in_future(now: UnixMillis, captured: UnixMillis) -> bool {
    captured.0
        > now
            .0
            .saturating_add(lifeboat_protocol::regkey::MAX_CLOCK_SKEW_MS)
}

/// A machine's state as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// The last cycle failed and no point exists yet.
    Error,
    /// A full resync is running.
    Resyncing,
    /// First full copy not finished.
    InitialReplication,
    /// RPO within half the threshold.
    Protected,
    /// RPO above half the threshold.
    Warning,
    /// RPO above the threshold.
    Critical,
}

/// A protected machine as the catalog needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The machine.
    pub machine: NodeId,
    /// When its protection started.
    pub since: UnixMillis,
    /// Its policy's RPO threshold, seconds.
    pub threshold_secs: u64,
}

/// An RPO alert raised or cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AlertTransition {
    /// The machine.
    pub machine: NodeId,
    /// Raised (true) or cleared (false).
    pub raised: bool,
    /// RPO at the transition, ms.
    pub rpo_ms: u64,
}

/// A machine's view at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineView {
    /// RPO, ms (age of the newest point; before the first, age of the protection).
    pub rpo_ms: u64,
    /// Health.
    pub health: Health,
    /// State.
    pub state: MachineState,
}

/// The catalog of every machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Entries by machine.
    entries: BTreeMap<NodeId, CatalogEntry>,
}

impl Catalog {
    /// From persisted entries.
    pub fn new(entries: BTreeMap<NodeId, CatalogEntry>) -> Self {
        Catalog { entries }
    }

    /// The persisted form.
    pub fn entries(&self) -> &BTreeMap<NodeId, CatalogEntry> {
        &self.entries
    }

    /// A machine's entry (empty if none).
    pub fn entry(&self, machine: &NodeId) -> CatalogEntry {
        self.entries.get(machine).cloned().unwrap_or_default()
    }

    /// Records a point verified against the vault. Returns true if it changed the catalog
    /// (a point older than what is known changes nothing, and one captured in the future —
    /// beyond the allowed clock skew — is refused: it would silence the RPO alert).
    pub fn handle_point(&mut self, now: UnixMillis, s: PointSummary) -> bool {
        if captured_in_future(now, s.captured) {
            return false;
        }
        let e = self.entries.entry(s.machine).or_default();
        let newer = |x: &Option<PointSummary>| x.as_ref().is_none_or(|p| p.captured <= s.captured);
        let mut changed = false;
        if newer(&e.latest) {
            e.latest = Some(s.clone());
            changed = true;
        }
        if s.consistency != Consistency::NotConsistent && newer(&e.latest_crash) {
            e.latest_crash = Some(s.clone());
            changed = true;
        }
        if s.consistency == Consistency::AppConsistent && newer(&e.latest_app) {
            e.latest_app = Some(s);
            changed = true;
        }
        changed
    }

    /// Records a report from `from` (a mobility node reports only about itself).
    pub fn handle_report(&mut self, from: NodeId, r: ProtectionReport) -> bool {
        if r.machine != from {
            return false;
        }
        self.entries.entry(from).or_default().report = Some(r);
        true
    }

    /// Forgets a machine (protection removed).
    pub fn forget(&mut self, machine: &NodeId) {
        self.entries.remove(machine);
    }

    /// A machine's RPO, health and state at `now`.
    pub fn view(&self, w: &Watched, now: UnixMillis) -> MachineView {
        let e = self.entries.get(&w.machine);
        let latest = e.and_then(|e| e.latest.as_ref());
        let (rpo_ms, h) = health(now, latest.map(|s| s.captured), w.since, w.threshold_secs);
        let report = e.and_then(|e| e.report.as_ref());
        let state = match (report, h) {
            (Some(r), _) if r.last_error.is_some() && latest.is_none() => MachineState::Error,
            (Some(r), _) if r.resync => MachineState::Resyncing,
            (_, Health::InitialReplication) => MachineState::InitialReplication,
            (_, Health::Protected) => MachineState::Protected,
            (_, Health::Warning) => MachineState::Warning,
            (_, Health::Critical) => MachineState::Critical,
        };
        MachineView {
            rpo_ms,
            health: h,
            state,
        }
    }

    /// Raises an alert for each watched machine whose RPO went above its threshold and clears
    /// it when it comes back under; returns the transitions (each reported once).
    pub fn poll_alerts(&mut self, now: UnixMillis, watched: &[Watched]) -> Vec<AlertTransition> {
        let mut out = Vec::new();
        for w in watched {
            let v = self.view(w, now);
            let e = self.entries.entry(w.machine).or_default();
            let critical = v.health == Health::Critical;
            if critical != e.alerted {
                e.alerted = critical;
                out.push(AlertTransition {
                    machine: w.machine,
                    raised: critical,
                    rpo_ms: v.rpo_ms,
                });
            }
        }
        out
    }
}

/// When the configuration node's periodic duties are due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duties {
    /// Retention period, ms.
    retention_every_ms: u64,
    /// Garbage collection period, ms.
    gc_every_ms: u64,
    /// Last retention run.
    last_retention: Option<UnixMillis>,
    /// Last garbage collection (or the first poll: the first run waits a full period).
    last_gc: Option<UnixMillis>,
}

/// Which duties to start now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Apply retention.
    pub retention: bool,
    /// Collect garbage.
    pub gc: bool,
}

impl Duties {
    /// Retention every `retention_every_ms` (the first at once), GC every `gc_every_ms` (the
    /// first a full period after start).
    pub fn new(retention_every_ms: u64, gc_every_ms: u64) -> Self {
        Duties {
            retention_every_ms,
            gc_every_ms,
            last_retention: None,
            last_gc: None,
        }
    }

    /// The duties due at `now` (each is then counted as started).
    pub fn poll(&mut self, now: UnixMillis) -> Due {
        let retention = self
            .last_retention
            .is_none_or(|t| now.millis_since(t) >= self.retention_every_ms);
        if retention {
            self.last_retention = Some(now);
        }
        let last_gc = *self.last_gc.get_or_insert(now);
        let gc = now.millis_since(last_gc) >= self.gc_every_ms;
        if gc {
            self.last_gc = Some(now);
        }
        Due { retention, gc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_protocol::StaticKeypair;

    fn id(seed: u8) -> NodeId {
        StaticKeypair::generate([seed; 32]).public.node_id()
    }

    fn point(machine: NodeId, captured: u64, c: Consistency) -> PointSummary {
        PointSummary {
            id: format!("p{captured}"),
            machine,
            captured: UnixMillis(captured),
            committed: UnixMillis(captured),
            consistency: c,
            stats: Default::default(),
            process_server: id(9),
        }
    }

    #[test]
    fn the_newest_point_of_each_consistency_is_kept_and_older_ones_change_nothing() {
        let m = id(1);
        let mut c = Catalog::default();
        let now = UnixMillis(1_000);
        assert!(c.handle_point(now, point(m, 10, Consistency::AppConsistent)));
        assert!(c.handle_point(now, point(m, 20, Consistency::CrashConsistent)));
        assert!(!c.handle_point(now, point(m, 5, Consistency::AppConsistent)));
        assert!(
            !c.handle_point(now, point(m, 3_600_000, Consistency::AppConsistent)),
            "a point from the future is refused"
        );
        let e = c.entry(&m);
        assert_eq!(e.latest.unwrap().id, "p20");
        assert_eq!(e.latest_crash.unwrap().id, "p20");
        assert_eq!(e.latest_app.unwrap().id, "p10");
        assert!(c.handle_point(now, point(m, 30, Consistency::NotConsistent)));
        assert_eq!(c.entry(&m).latest_crash.unwrap().id, "p20");
    }

    #[test]
    fn reports_are_accepted_only_about_the_sender() {
        let (m, other) = (id(1), id(2));
        let r = ProtectionReport {
            machine: m,
            initial: true,
            resync: false,
            progress_permille: 10,
            pending_bytes: 0,
            last_point: None,
            last_error: Some("disk gone".into()),
            process_server: None,
            scanned_bytes: 0,
            total_bytes: 0,
            tracking: Default::default(),
            counters: Default::default(),
        };
        let mut c = Catalog::default();
        assert!(!c.handle_report(other, r.clone()));
        assert!(c.handle_report(m, r));
        let w = Watched {
            machine: m,
            since: UnixMillis(0),
            threshold_secs: 60,
        };
        assert_eq!(c.view(&w, UnixMillis(1_000)).state, MachineState::Error);
    }

    #[test]
    fn an_alert_is_raised_once_above_the_threshold_and_cleared_once_under_it() {
        let m = id(1);
        let w = [Watched {
            machine: m,
            since: UnixMillis(0),
            threshold_secs: 60,
        }];
        let mut c = Catalog::default();
        c.handle_point(
            UnixMillis(1_000),
            point(m, 1_000, Consistency::CrashConsistent),
        );
        assert!(c.poll_alerts(UnixMillis(30_000), &w).is_empty());
        let raised = c.poll_alerts(UnixMillis(62_000), &w);
        assert_eq!(raised.len(), 1);
        assert!(raised[0].raised);
        assert_eq!(raised[0].rpo_ms, 61_000);
        assert!(c.poll_alerts(UnixMillis(70_000), &w).is_empty(), "once");
        c.handle_point(
            UnixMillis(69_000),
            point(m, 69_000, Consistency::CrashConsistent),
        );
        let cleared = c.poll_alerts(UnixMillis(70_000), &w);
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].raised);
        assert_eq!(
            c.view(&w[0], UnixMillis(70_000)).state,
            MachineState::Protected
        );
    }

    #[test]
    fn retention_runs_at_once_and_gc_only_a_full_period_after_start() {
        let mut d = Duties::new(30_000, 900_000);
        assert_eq!(
            d.poll(UnixMillis(1_000)),
            Due {
                retention: true,
                gc: false
            }
        );
        assert_eq!(d.poll(UnixMillis(20_000)), Due::default());
        assert!(d.poll(UnixMillis(31_000)).retention);
        assert!(d.poll(UnixMillis(901_000)).gc);
        assert!(!d.poll(UnixMillis(902_000)).gc);
    }
}
