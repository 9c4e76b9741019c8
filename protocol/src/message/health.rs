//! A process server's health, as it reports it to the configuration node.

use serde::{Deserialize, Serialize};

/// Process server to configuration node, every few seconds: spool, backlog and uploads (the
/// counters are since the process server started).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PsHealthReport {
    /// Spool segments in use.
    pub spool_segments_used: u64,
    /// Spool segments allowed.
    pub spool_segments_max: u64,
    /// Bytes spooled.
    pub spooled_bytes: u64,
    /// Age of the oldest unprocessed segment, ms (0: no backlog).
    pub backlog_age_ms: u64,
    /// Sealed bytes uploaded.
    pub uploaded_bytes: u64,
    /// Bytes being uploaded now.
    pub uploading_bytes: u64,
    /// Points committed.
    pub points_committed: u64,
    /// Upload failures.
    pub upload_failures: u64,
    /// The upload limit in force now, bytes/s (none: unlimited).
    pub upload_limit_bytes_per_sec_now: Option<u64>,
}
