//! Drills (test failovers): a machine's disks brought up from a recovery point on a target
//! node (`--on NODE`, this node by default), next to production and without touching it, then
//! removed. The target restores, verifies, converts and runs the boot hook
//! (`replication::landing`). A drill is recorded in `drills.json` before the target is asked,
//! so `drill cleanup` finds it (and the target what it made) even after a crash; one drill per
//! machine is active at a time.

use super::target::{job_for, land_on, resolve_target, unland_on};
use super::*;
use crate::jobs::Job;
use std::path::PathBuf;

/// Past this age without a successful drill, `status` warns.
pub const DRILL_WARN_MS: u64 = 90 * 24 * 3600 * 1000;
/// Drills kept in each machine's history.
const HISTORY: usize = 20;

/// A drill as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillRecord {
    /// Drill id.
    pub id: String,
    /// The point it used.
    pub point: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// The node it landed on (`None`: the configuration node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<NodeId>,
    /// Where its images are (on the target).
    pub dir: PathBuf,
    /// Its images.
    pub images: Vec<PathBuf>,
    /// Image format.
    pub format: String,
    /// The boot hook ran in an isolated network namespace.
    pub isolated: bool,
    /// Succeeded: images verified and the boot hook (if any) exited 0.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The operator's notes at cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// Each machine's drills.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineDrills {
    /// The drill not cleaned up yet.
    pub active: Option<DrillRecord>,
    /// When the last successful drill ran (Unix ms).
    pub last_ok_ms: Option<u64>,
    /// Drills cleaned up, newest last.
    pub history: Vec<DrillRecord>,
}

fn book_path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("drills.json")
}

/// The drills of every machine (by node id).
pub fn book(repl: &Repl) -> BTreeMap<NodeId, MachineDrills> {
    load(&book_path(repl)).ok().flatten().unwrap_or_default()
}

fn save_book(repl: &Repl, b: &BTreeMap<NodeId, MachineDrills>) -> Result<(), String> {
    save(&book_path(repl), b, 0o600)
}

/// What `drill` is asked.
#[derive(Debug, Clone)]
pub struct DrillAsk {
    /// Machine.
    pub machine: String,
    /// Point selector.
    pub point: String,
    /// Image directory (default: under the state directory).
    pub to: Option<String>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Boot hook.
    pub boot_hook: Option<String>,
    /// Run the boot hook in an isolated network namespace.
    pub isolated: bool,
    /// The target node (`None`: this node).
    pub on: Option<String>,
    /// Disks written onto existing block devices of the target instead of image files.
    pub disk_map: Vec<DiskSpec>,
    /// Failover: run the machine's shutdown hook first (going on if it is unreachable).
    pub shutdown_source: bool,
    /// Failover: both sites are up; shut down, cut a final point, fail over from it.
    pub planned: bool,
}

/// `lifeboat drill MACHINE ...`.
pub async fn drill(repl: &Repl, ask: DrillAsk, job: &Job) -> Result<Value, String> {
    require_config(repl).await?;
    crate::replication::landing::check_tools(&ask.format, ask.isolated, ask.boot_hook.is_some())?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, &ask.machine).await?;
    let (target, target_name) = resolve_target(repl, ask.on.as_deref()).await?;
    if let Some(a) = book(repl).get(&id).and_then(|m| m.active.clone()) {
        return Err(format!(
            "a drill of {name} is active since {} ({}); run `lifeboat drill cleanup {name}` first",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.started_ms)
            ),
            a.dir.display()
        ));
    }
    let protection = guard(&repl.cfg.protections).get(&id).cloned();
    job.step(&format!("asking {name} for its final point"));
    let steps = super::source::prepare(repl, id, &name, &ask, protection.as_ref()).await?;
    let ask = steps.narrow(ask);
    job.step("choosing the point");
    let p = choose_point(&vault, id, &ask.point).await?;
    let land = job_for(repl, "drill", &job.id(), (id, &name), &p.id, &ask, false)?;
    let mut rec = DrillRecord {
        id: land.job.clone(),
        point: p.id.clone(),
        started_ms: crate::seams::now().0,
        target: (target != repl.local).then_some(target),
        dir: PathBuf::from(ask.to.clone().unwrap_or_default()),
        images: vec![],
        format: ask.format.clone(),
        isolated: ask.isolated,
        ok: false,
        error: None,
        notes: None,
    };
    // Recorded before the target is asked: cleanup finds it whatever happens next.
    let before = book(repl).get(&id).cloned();
    record(repl, id, |m| m.active = Some(rec.clone()))?;
    let t0 = std::time::Instant::now();
    job.set_total(p.disks.iter().map(|d| d.size_bytes).sum());
    job.step(&format!("restoring and verifying on {target_name}"));
    let done = Some(job.progress());
    let landed = match land_on(repl, target, land, done).await {
        Ok(l) => l,
        Err(e) => {
            // Refused, nothing was made: the record is as it was (unless a cleanup that
            // stopped this landing has recorded it already).
            let mut b = book(repl);
            let ours = b.get(&id).and_then(|m| m.active.as_ref()).map(|a| &a.id) == Some(&rec.id);
            if ours {
                match before {
                    Some(m) => b.insert(id, m),
                    None => b.remove(&id),
                };
                save_book(repl, &b)?;
            }
            return Err(format!("drill of {name} on {target_name} failed: {e}"));
        }
    };
    rec.dir = PathBuf::from(&landed.dir);
    rec.images = landed.images.iter().map(PathBuf::from).collect();
    rec.ok = landed.error.is_none();
    rec.error = landed.error.clone();
    let ok_at = crate::seams::now().0;
    record(repl, id, |m| {
        m.active = Some(rec.clone());
        if rec.ok {
            m.last_ok_ms = Some(ok_at);
        }
    })?;
    if let Some(e) = landed.error {
        return Err(format!("drill of {name} failed: {e}; what it made stays for inspection until `lifeboat drill cleanup {name}`"));
    }
    tracing::info!(machine = %name, point = %p.id, drill = %rec.id, target = %target_name, "drill up");
    Ok(crate::replies::encode(&crate::replies::Drilled {
        job: None,
        machine: name,
        drill: rec.id,
        point: p.id.clone(),
        captured_ms: p.captured.0,
        target: target_name,
        images: rec.images,
        format: ask.format,
        isolated: ask.isolated,
        boot_hook_exit: landed.boot_hook_exit,
        seconds: t0.elapsed().as_secs_f64(),
        notes: steps.notes,
    }))
}

/// The point of `machine` that `sel` chooses.
pub(super) async fn choose_point(
    vault: &Vault,
    machine: NodeId,
    sel: &str,
) -> Result<PointRecord, String> {
    let pts = vault
        .list_points(Some(&machine))
        .await
        .map_err(|e| e.to_string())?;
    Ok(select_point(&pts, sel)?.clone())
}

fn record(repl: &Repl, id: NodeId, f: impl FnOnce(&mut MachineDrills)) -> Result<(), String> {
    let mut b = book(repl);
    f(b.entry(id).or_default());
    save_book(repl, &b)
}

/// `lifeboat drill cleanup MACHINE [--notes TEXT]`: removes what the active drill made (on its
/// target) and records it (with the notes) in the machine's history.
pub async fn cleanup(
    repl: &Repl,
    machine: &str,
    notes: Option<String>,
    job: &Job,
) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let Some(mut rec) = book(repl).get(&id).and_then(|m| m.active.clone()) else {
        return Err(format!("no drill of {name} is active"));
    };
    job.step("removing what the drill made");
    let removed = unland_on(repl, rec.target.unwrap_or(repl.local), &rec.id).await?;
    rec.notes = notes;
    record(repl, id, |m| {
        m.active = None;
        m.history.push(rec.clone());
        let over = m.history.len().saturating_sub(HISTORY);
        m.history.drain(..over);
    })?;
    tracing::info!(machine = %name, drill = %rec.id, "drill cleaned up");
    Ok(crate::replies::encode(&crate::replies::DrillCleaned {
        job: None,
        machine: name,
        drill: rec.id,
        removed_files: removed,
        ok: rec.ok,
    }))
}
