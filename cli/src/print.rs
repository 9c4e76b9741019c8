//! Replies printed as text.

use super::*;

/// `status` as text: one line per machine, then this node.
pub(crate) fn print_status(v: &r::NodeStatus, repl: &r::ReplStatus, one_machine: bool) {
    for m in &repl.machines {
        let mut state = m.state.clone();
        if matches!(state.as_str(), "initial-replication" | "resyncing") {
            if let Some(p) = m.progress_percent {
                state = format!("{state} {p:.0}%");
            }
        }
        println!(
            "{:<16} {:<24} rpo {:<10} latest {:<12} app {:<12} pending {:>10} B {}{}",
            m.machine,
            state,
            m.rpo_ms
                .map_or("-".into(), lifeboat_protocol::time::human_duration),
            when(m.latest_point.as_ref().map(|p| p.captured_ms)),
            when(m.latest_app_consistent.as_ref().map(|p| p.captured_ms)),
            m.pending_bytes,
            if m.alert {
                "ALERT: RPO above threshold"
            } else {
                ""
            },
            m.last_error
                .as_deref()
                .map(|e| format!(" last error: {e}"))
                .unwrap_or_default(),
        );
    }
    for m in &repl.machines {
        let last = match m.last_drill_ms {
            Some(t) => format!("last successful drill {}", when(Some(t))),
            None => "no drill yet".to_string(),
        };
        let drill = if m.drill_overdue {
            format!(
                "WARNING: no successful drill in 90 days ({last}); run `lifeboat drill {}`",
                m.machine
            )
        } else {
            last
        };
        let active = if m.drill_active {
            "; a drill is up (`lifeboat drill cleanup`)"
        } else {
            ""
        };
        println!("{:<16} {drill}{active}", m.machine);
        if let Some(t) = &m.tracking {
            println!("{:<16} {}", m.machine, capture_line(t));
        }
    }
    if one_machine {
        return;
    }
    for p in &repl.process_servers {
        println!("{}", ps_line(p));
    }
    println!("node        {} ({})", v.node_id, v.name);
    println!("fingerprint {}", v.fingerprint);
    println!("roles       {}", role_names(&v.roles));
    println!(
        "listen      {}",
        v.listen.map_or("-".to_string(), |a| a.to_string())
    );
    println!(
        "mesh        {}",
        v.mesh_id
            .as_deref()
            .unwrap_or("none (run `lifeboat mesh create` or `lifeboat register KEY`)")
    );
    println!("members     {}", v.members);
    println!("connected   {}", v.connected_peers);
    if let Some(g) = &repl.gc {
        let last = match (&g.last_error, g.last_finished_ms) {
            (Some(e), Some(t)) => format!("last pass {} failed: {e}", when(Some(t))),
            (None, Some(t)) => format!(
                "last pass {}: {} packs deleted, {} B freed",
                when(Some(t)),
                g.last_deleted_packs,
                g.last_freed_bytes
            ),
            _ => "no pass yet".to_string(),
        };
        match g.running_since_ms {
            Some(t) => println!("vault gc    running since {}; {last}", when(Some(t))),
            None => println!("vault gc    {last}"),
        }
    }
}

/// A process server's health as the configuration node last heard it.
fn ps_line(p: &r::PsSeen) -> String {
    let h = lifeboat_protocol::time::human_duration;
    let head = format!("process server {} ({})", p.name, p.node_id);
    let link = if p.connected { "" } else { "; not connected" };
    match (&p.health, p.reported_ago_ms) {
        (Some(s), Some(ago)) => format!(
            "{head}: spool {}/{} segments ({} B), backlog {}, uploaded {} B, {} points, {} upload failures, limit {}; reported {} ago{link}",
            s.spool_segments_used,
            s.spool_segments_max,
            s.spooled_bytes,
            if s.backlog_age_ms == 0 { "none".into() } else { h(s.backlog_age_ms) },
            s.uploaded_bytes,
            s.points_committed,
            s.upload_failures,
            s.upload_limit_bytes_per_sec_now
                .map_or("none".into(), |b| format!("{} B/s", b)),
            h(ago),
        ),
        _ => format!("{head}: no report yet{link}"),
    }
}

/// `points` as a table.
pub(crate) fn print_points(v: &[r::PointInfo]) {
    let mut rows = vec![[
        "POINT",
        "CAPTURED",
        "CONSISTENCY",
        "CHANGED",
        "STORED",
        "FREEZE",
        "MERKLE ROOTS",
    ]
    .map(String::from)
    .to_vec()];
    for p in v {
        let roots: Vec<String> = p
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{}={}",
                    d.name,
                    &d.merkle_root[..16.min(d.merkle_root.len())]
                )
            })
            .collect();
        rows.push(vec![
            p.id.clone(),
            when(Some(p.captured_ms)),
            p.consistency.to_string(),
            p.stats.changed_blocks.to_string(),
            p.stats.stored_bytes.to_string(),
            p.stats
                .freeze_ms
                .map_or("-".into(), |ms| format!("{ms} ms")),
            roots.join(" "),
        ]);
    }
    print_table(&rows, &[false, false, false, true, true, true, false]);
}

/// Rows as columns as wide as their widest cell (the last one unpadded); `right[i]` aligns
/// column `i` to the right.
pub(crate) fn print_table(rows: &[Vec<String>], right: &[bool]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            if c + 1 == r.len() && !right.get(c).copied().unwrap_or(false) {
                line.push_str(cell);
            } else if right.get(c).copied().unwrap_or(false) {
                line.push_str(&format!("{cell:>w$}", w = width[c]));
            } else {
                line.push_str(&format!("{cell:<w$}", w = width[c]));
            }
        }
        println!("{line}");
    }
}

/// A byte count for people: B, KiB, MiB or GiB.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
    }
}

/// A machine's change capture, on one line: each disk's mode (and why it is scanned), then
/// tracking's counters.
fn capture_line(t: &lifeboat_protocol::message::TrackingReport) -> String {
    let disks: Vec<String> = t
        .disks
        .iter()
        .map(|d| match &d.reason {
            Some(why) => format!("{} {} ({why})", d.disk, d.mode),
            None => format!("{} {}", d.disk, d.mode),
        })
        .collect();
    let mut s = format!("capture: {}", disks.join(", "));
    if t.disks.iter().any(|d| d.mode == "trace") {
        s.push_str(&format!(
            "; {} writes traced, {} lost, {} dirty B waiting, last cycle read {} B",
            t.events, t.lost_events, t.dirty_bytes, t.last_read_bytes
        ));
        if t.full_scans > 0 {
            s.push_str(&format!(
                "; {} full scans, the last because {}",
                t.full_scans,
                t.last_full_scan.as_deref().unwrap_or("?")
            ));
        }
    }
    if let Some(ms) = t.last_freeze_ms {
        s.push_str(&format!("; last freeze held {ms} ms"));
    }
    s
}
