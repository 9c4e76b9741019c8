//! Prometheus metrics (text exposition format 0.0.4) from what `status` reports: this node,
//! its process-server counters, and on the configuration node the protected machines and the
//! process servers as they last reported. A pure function of the replies, so that a test can
//! render any state.
//!
//! Names follow Prometheus conventions: a `lifeboat_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` for counters; label values are escaped.

use crate::replies::{NodeStatus, ReplStatus};
use lifeboat_protocol::message::PsHealthReport;
use std::fmt::Write;

/// One metric family being written: its HELP and TYPE, then samples.
struct Family<'a> {
    out: &'a mut String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) -> &mut Self {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.out, " {v}");
        self
    }
}

/// One gauge or counter family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    family(out, name, kind, help).sample(name, &[], v);
}

/// A family with a sample per item; nothing when there are no items (an empty family is
/// legal but says nothing).
fn per<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    items: &[T],
    sample: impl Fn(&T) -> Option<(Vec<(&'static str, String)>, f64)>,
) {
    let rows: Vec<_> = items.iter().filter_map(sample).collect();
    if rows.is_empty() {
        return;
    }
    let mut f = family(out, name, kind, help);
    for (labels, v) in rows {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        f.sample(name, &l, v);
    }
}

fn process_server(out: &mut String, h: &PsHealthReport) {
    let c = |out: &mut String, name: &str, help: &str, v: u64| {
        single(out, name, "counter", help, v as f64)
    };
    let g = |out: &mut String, name: &str, help: &str, v: f64| single(out, name, "gauge", help, v);
    g(
        out,
        "lifeboat_spool_segments",
        "Spool segments in use on this process server.",
        h.spool_segments_used as f64,
    );
    g(
        out,
        "lifeboat_spool_segments_max",
        "Spool segments this process server may use.",
        h.spool_segments_max as f64,
    );
    g(
        out,
        "lifeboat_spool_bytes",
        "Bytes spooled on this process server, waiting to be sealed and uploaded.",
        h.spooled_bytes as f64,
    );
    g(
        out,
        "lifeboat_backlog_age_seconds",
        "Age of the oldest unprocessed spool segment (0: no backlog).",
        h.backlog_age_ms as f64 / 1000.0,
    );
    c(
        out,
        "lifeboat_uploaded_bytes_total",
        "Sealed bytes uploaded to the vault since the process server started.",
        h.uploaded_bytes,
    );
    g(
        out,
        "lifeboat_uploading_bytes",
        "Bytes being uploaded to the vault now.",
        h.uploading_bytes as f64,
    );
    c(
        out,
        "lifeboat_points_committed_total",
        "Recovery points this process server committed since it started.",
        h.points_committed,
    );
    c(
        out,
        "lifeboat_upload_failures_total",
        "Failed vault uploads since the process server started.",
        h.upload_failures,
    );
    g(
        out,
        "lifeboat_upload_limit_bytes_per_second",
        "Upload bandwidth limit in force now (0: unlimited).",
        h.upload_limit_bytes_per_sec_now.unwrap_or(0) as f64,
    );
    g(
        out,
        "lifeboat_upload_throttled",
        "1 if an upload bandwidth limit is in force now.",
        f64::from(u8::from(h.upload_limit_bytes_per_sec_now.is_some())),
    );
}

/// The metrics of a node: `node` always; `repl` on nodes with replication state (the
/// configuration node's machines and process servers, a process server's own counters).
pub fn render(node: &NodeStatus, repl: Option<&ReplStatus>) -> String {
    let mut out = String::new();
    let o = &mut out;
    family(
        o,
        "lifeboat_node_info",
        "gauge",
        "This node: id, name, version and roles (value 1).",
    )
    .sample(
        "lifeboat_node_info",
        &[
            ("node_id", &node.node_id),
            ("name", &node.name),
            ("version", &node.version),
            (
                "roles",
                &node
                    .roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ],
        1.0,
    );
    single(
        o,
        "lifeboat_mesh_members",
        "gauge",
        "Members of this node's mesh.",
        node.members as f64,
    );
    single(
        o,
        "lifeboat_peers_connected",
        "gauge",
        "Mesh members this node holds a connection to.",
        node.connected_peers as f64,
    );
    let Some(r) = repl else {
        return out;
    };
    if let Some(h) = &r.process_server {
        process_server(o, &h.counters);
    }
    let m = &r.machines;
    let lab = |x: &crate::replies::MachineStatus| vec![("machine", x.machine.clone())];
    per(
        o,
        "lifeboat_machine_protected",
        "gauge",
        "A protected machine and its state (value 1).",
        m,
        |x| {
            Some((
                vec![("machine", x.machine.clone()), ("state", x.state.clone())],
                1.0,
            ))
        },
    );
    per(
        o,
        "lifeboat_rpo_seconds",
        "gauge",
        "Age of the machine's newest recovery point (absent before its first point).",
        m,
        |x| x.rpo_ms.map(|ms| (lab(x), ms as f64 / 1000.0)),
    );
    per(
        o,
        "lifeboat_rpo_threshold_seconds",
        "gauge",
        "The RPO above which the machine's alert is raised.",
        m,
        |x| Some((lab(x), x.rpo_threshold_secs as f64)),
    );
    per(
        o,
        "lifeboat_pending_bytes",
        "gauge",
        "Bytes the machine has read and not yet sent.",
        m,
        |x| Some((lab(x), x.pending_bytes as f64)),
    );
    per(
        o,
        "lifeboat_latest_point_timestamp_seconds",
        "gauge",
        "Capture time of the machine's newest recovery point, Unix seconds.",
        m,
        |x| {
            x.latest_point
                .as_ref()
                .map(|p| (lab(x), p.captured_ms as f64 / 1000.0))
        },
    );
    per(
        o,
        "lifeboat_last_point_changed_blocks",
        "gauge",
        "Blocks the machine sent for its newest point (changed since the one before).",
        m,
        |x| {
            x.latest_stats
                .as_ref()
                .map(|s| (lab(x), s.changed_blocks as f64))
        },
    );
    per(
        o,
        "lifeboat_last_point_received_bytes",
        "gauge",
        "Payload bytes the process server received for the machine's newest point.",
        m,
        |x| {
            x.latest_stats
                .as_ref()
                .map(|s| (lab(x), s.received_bytes as f64))
        },
    );
    per(
        o,
        "lifeboat_last_point_stored_bytes",
        "gauge",
        "Sealed bytes the machine's newest point added to the vault.",
        m,
        |x| {
            x.latest_stats
                .as_ref()
                .map(|s| (lab(x), s.stored_bytes as f64))
        },
    );
    per(
        o,
        "lifeboat_last_point_dedup_ratio",
        "gauge",
        "Of the newest point's non-zero blocks, the share the vault already held (0 to 1).",
        m,
        |x| {
            let s = x.latest_stats.as_ref()?;
            let n = s.new_blocks + s.dedup_blocks;
            (n > 0).then(|| (lab(x), s.dedup_blocks as f64 / n as f64))
        },
    );
    machine_totals(o, m);
    single(
        o,
        "lifeboat_alerts_active",
        "gauge",
        "Machines whose RPO is above their threshold now.",
        m.iter().filter(|x| x.alert).count() as f64,
    );
    per(
        o,
        "lifeboat_alert",
        "gauge",
        "1 while the machine's RPO alert is raised.",
        m,
        |x| Some((lab(x), f64::from(u8::from(x.alert)))),
    );
    per(
        o,
        "lifeboat_tracking_events_total",
        "counter",
        "Block write events traced on the machine since its tracking started.",
        m,
        |x| x.tracking.as_ref().map(|t| (lab(x), t.events as f64)),
    );
    per(
        o,
        "lifeboat_tracking_lost_events_total",
        "counter",
        "Trace events the kernel dropped on the machine.",
        m,
        |x| x.tracking.as_ref().map(|t| (lab(x), t.lost_events as f64)),
    );
    per(
        o,
        "lifeboat_full_scans_total",
        "counter",
        "Cycles that read the machine's disks in full (tracking could not be trusted).",
        m,
        |x| x.tracking.as_ref().map(|t| (lab(x), t.full_scans as f64)),
    );
    per(
        o,
        "lifeboat_dirty_bytes",
        "gauge",
        "Bytes tracked as written on the machine and not yet read.",
        m,
        |x| x.tracking.as_ref().map(|t| (lab(x), t.dirty_bytes as f64)),
    );
    per(
        o,
        "lifeboat_last_cycle_read_bytes",
        "gauge",
        "Bytes the machine's last cycle read.",
        m,
        |x| {
            x.tracking
                .as_ref()
                .map(|t| (lab(x), t.last_read_bytes as f64))
        },
    );
    let ps = &r.process_servers;
    let pl = |p: &crate::replies::PsSeen| vec![("process_server", p.name.clone())];
    per(
        o,
        "lifeboat_process_server_connected",
        "gauge",
        "1 if the configuration node holds a connection to the process server.",
        ps,
        |p| Some((pl(p), f64::from(u8::from(p.connected)))),
    );
    per(
        o,
        "lifeboat_process_server_report_age_seconds",
        "gauge",
        "Age of the process server's last health report.",
        ps,
        |p| p.reported_ago_ms.map(|ms| (pl(p), ms as f64 / 1000.0)),
    );
    per(
        o,
        "lifeboat_process_server_backlog_age_seconds",
        "gauge",
        "The process server's oldest unprocessed spool segment, as it last reported.",
        ps,
        |p| {
            p.health
                .as_ref()
                .map(|h| (pl(p), h.backlog_age_ms as f64 / 1000.0))
        },
    );
    per(
        o,
        "lifeboat_process_server_spool_bytes",
        "gauge",
        "Bytes spooled on the process server, as it last reported.",
        ps,
        |p| p.health.as_ref().map(|h| (pl(p), h.spooled_bytes as f64)),
    );
    out
}

/// Per machine: counters since the machine's daemon started (its cycles) and since this
/// configuration node started (the points it took), and the compression they show.
fn machine_totals(o: &mut String, m: &[crate::replies::MachineStatus]) {
    let lab = |x: &crate::replies::MachineStatus| vec![("machine", x.machine.clone())];
    type Pick = fn(&crate::replies::MachineStatus) -> Option<u64>;
    let counters: [(&str, &str, Pick); 6] = [
        (
            "lifeboat_machine_points_committed_total",
            "Points of the machine this configuration node took into its catalog since it started.",
            |x| Some(x.totals.points),
        ),
        (
            "lifeboat_machine_points_failed_total",
            "Cycles of the machine that ended without a point since its daemon started (their changes go into the next).",
            |x| x.cycles.as_ref().map(|c| c.failed),
        ),
        (
            "lifeboat_read_bytes_total",
            "Bytes the machine's cycles read from its disks (scanned, or traced blocks) since its daemon started.",
            |x| x.cycles.as_ref().map(|c| c.read_bytes),
        ),
        (
            "lifeboat_sent_bytes_total",
            "Bytes of changed blocks the machine sent to process servers (before compression) since its daemon started.",
            |x| x.cycles.as_ref().map(|c| c.sent_bytes),
        ),
        (
            "lifeboat_received_bytes_total",
            "Payload bytes process servers received for the machine's points taken since this node started.",
            |x| Some(x.totals.received_bytes),
        ),
        (
            "lifeboat_stored_bytes_total",
            "Sealed bytes the machine's points added to the vault, for the points taken since this node started.",
            |x| Some(x.totals.stored_bytes),
        ),
    ];
    for (name, help, pick) in counters {
        per(o, name, "counter", help, m, |x| {
            pick(x).map(|v| (lab(x), v as f64))
        });
    }
    per(
        o,
        "lifeboat_compression_ratio",
        "gauge",
        "Bytes of newly stored blocks per sealed byte written to the vault, over the machine's points taken since this node started.",
        m,
        |x| {
            (x.totals.stored_bytes > 0).then(|| {
                (
                    lab(x),
                    x.totals.new_bytes as f64 / x.totals.stored_bytes as f64,
                )
            })
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replies::{MachineStatus, PsSeen};

    #[test]
    fn families_have_help_and_type_and_labels_are_escaped() {
        let node = NodeStatus {
            node_id: "abc".into(),
            name: "n\"1".into(),
            ..Default::default()
        };
        let repl = ReplStatus {
            machines: vec![
                MachineStatus {
                    machine: "web".into(),
                    rpo_ms: Some(2500),
                    alert: true,
                    totals: crate::replies::PointTotals {
                        points: 2,
                        received_bytes: 400,
                        new_bytes: 300,
                        stored_bytes: 100,
                    },
                    ..Default::default()
                },
                MachineStatus {
                    machine: "db".into(),
                    rpo_ms: None,
                    ..Default::default()
                },
            ],
            process_servers: vec![PsSeen {
                name: "ps".into(),
                connected: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = render(&node, Some(&repl));
        assert!(t.contains("name=\"n\\\"1\""), "{t}");
        assert!(
            t.contains("lifeboat_rpo_seconds{machine=\"web\"} 2.5"),
            "{t}"
        );
        // No RPO for a machine without a point.
        assert!(!t.contains("lifeboat_rpo_seconds{machine=\"db\"}"), "{t}");
        assert!(t.contains("lifeboat_alerts_active 1"), "{t}");
        assert!(
            t.contains("lifeboat_compression_ratio{machine=\"web\"} 3"),
            "{t}"
        );
        assert!(t.contains("lifeboat_machine_points_committed_total{machine=\"web\"} 2"));
        // No ratio without stored bytes, no cycle counters before the machine reported them.
        assert!(
            !t.contains("lifeboat_compression_ratio{machine=\"db\"}"),
            "{t}"
        );
        assert!(
            !t.contains("lifeboat_read_bytes_total{machine=\"db\"}"),
            "{t}"
        );
        assert!(t.contains("lifeboat_process_server_connected{process_server=\"ps\"} 1"));
        // Every sample's family was announced first.
        let mut typed = std::collections::BTreeSet::new();
        for l in t.lines() {
            if let Some(r) = l.strip_prefix("# TYPE ") {
                typed.insert(r.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE");
            }
        }
    }
}
