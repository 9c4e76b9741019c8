//! How a mobility node finds changed blocks, and what it reports of it.

use serde::{Deserialize, Serialize};

/// How a mobility node finds the blocks that changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum Capture {
    /// `trace` for block devices where the kernel's block tracing is available, else `scan`.
    #[default]
    Auto,
    /// The kernel's block tracepoints (block devices); a disk that cannot be traced is scanned,
    /// and its status says why.
    Trace,
    /// Read and hash every block each cycle.
    Scan,
}

/// How one disk is captured now, as its mobility node reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CaptureReport {
    /// Disk name.
    pub disk: String,
    /// `trace` or `scan`.
    pub mode: String,
    /// Why it is scanned (when it is).
    pub reason: Option<String>,
}

/// Change tracking's counters on a mobility node (`trace` capture).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TrackingReport {
    /// Each disk's capture.
    pub disks: Vec<CaptureReport>,
    /// Write requests traced on protected disks.
    pub events: u64,
    /// Events the kernel dropped.
    pub lost_events: u64,
    /// Cycles that scanned in full because tracking could not be trusted.
    pub full_scans: u64,
    /// Why the last of them did.
    pub last_full_scan: Option<String>,
    /// Bytes of traced blocks waiting for the next cycle.
    pub dirty_bytes: u64,
    /// How long the last app-consistent point held the freeze, ms.
    pub last_freeze_ms: Option<u64>,
    /// Bytes the last committed cycle read from the disks.
    pub last_read_bytes: u64,
    /// Why the last app-consistent point due was taken crash-consistent (the freeze would
    /// have lasted longer than the policy's cap).
    #[serde(default)]
    pub last_freeze_skipped: Option<String>,
}

/// A mobility node's cycle counters since its daemon started (Prometheus counters: they reset
/// when it restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CycleCounters {
    /// Cycles that committed a point.
    pub committed: u64,
    /// Cycles that failed (their changes go into the next point).
    pub failed: u64,
    /// Bytes the cycles read from the disks (scanned, or the traced blocks).
    pub read_bytes: u64,
    /// Bytes of changed blocks the cycles sent to a process server (before compression;
    /// a failed cycle's are counted, and sent again by the next).
    pub sent_bytes: u64,
}
