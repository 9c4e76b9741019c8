//! Failover on the configuration node: the machine is brought up at this site from a recovery
//! point (the drill's restore, verification, conversion and boot hook), its replication stops,
//! and the failover is then committed or cancelled. Unplanned by default (never waiting on the
//! failed site beyond a short bound); `--planned` shuts the machine down and cuts a final point
//! first (`source.rs`). Recorded in
//! `failovers.json` before anything is done, with the protection it replaced, so a cancel can
//! give it back.

use super::drill::{choose_point, DrillAsk};
use super::target::{job_for, land_on, resolve_target, unland_on};
use super::*;
use crate::jobs::Job;
use lifeboat_protocol::message::Landed;
use std::path::PathBuf;

/// Where a failover stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverState {
    /// Up at the recovery site; may still be cancelled.
    FailedOver,
    /// Committed: the machine lives at the recovery site now.
    Committed,
}

/// A failover as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Failover id.
    pub id: String,
    /// Machine name.
    pub machine_name: String,
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
    /// Where it stands.
    pub state: FailoverState,
    /// The protection it replaced (given back by a cancel).
    pub protection: Protection,
    /// Why bringing it up failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Reprotected: the failed-over disks replicate from the recovery site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprotected: Option<Reprotected>,
}

/// A reprotected failover.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reprotected {
    /// The node the failed-over disks replicate from (its mobility role).
    pub node: NodeId,
    /// The first point of that node: the failover point, cloned.
    pub point: String,
    /// When (Unix ms).
    pub since_ms: u64,
}

fn path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("failovers.json")
}

/// Every machine's failover (by node id).
pub fn failovers(repl: &Repl) -> BTreeMap<NodeId, FailoverRecord> {
    load(&path(repl)).ok().flatten().unwrap_or_default()
}

/// Every failover, and machine `id`'s (named `name`), which must exist.
#[allow(clippy::type_complexity)]
pub(super) fn failover_of(
    repl: &Repl,
    id: NodeId,
    name: &str,
) -> Result<(BTreeMap<NodeId, FailoverRecord>, FailoverRecord), String> {
    let all = failovers(repl);
    let f = all
        .get(&id)
        .cloned()
        .ok_or_else(|| format!("{name} is not failed over"))?;
    Ok((all, f))
}

pub(super) fn save_all(repl: &Repl, f: &BTreeMap<NodeId, FailoverRecord>) -> Result<(), String> {
    save(&path(repl), f, 0o600)
}

/// How long a failover waits for the failed machine to hear that its replication stops.
const REACH_SOURCE: std::time::Duration = std::time::Duration::from_secs(5);

/// `lifeboat failover MACHINE ...` (unplanned: never waits on the failed site beyond a short
/// bound). A failover that did not come up may be run again (its landing is replaced).
pub async fn failover(repl: &Repl, ask: DrillAsk, job: &Job) -> Result<Value, String> {
    require_config(repl).await?;
    crate::replication::landing::check_tools(&ask.format, ask.isolated, ask.boot_hook.is_some())?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, &ask.machine).await?;
    let (target, target_name) = resolve_target(repl, ask.on.as_deref()).await?;
    let mut all = failovers(repl);
    let retry = match all.get(&id) {
        Some(f) if f.state == FailoverState::FailedOver && f.error.is_some() => Some(f.clone()),
        Some(f) => {
            return Err(match f.state {
                FailoverState::FailedOver => format!(
                    "{name} is failed over already; `lifeboat failover commit {name}` or `lifeboat failover cancel {name}`"
                ),
                FailoverState::Committed => format!("{name}'s failover is committed"),
            })
        }
        None => None,
    };
    let protection = match &retry {
        Some(f) => f.protection.clone(),
        None => guard(&repl.cfg.protections)
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("{name} is not protected"))?,
    };
    if let Some(f) = &retry {
        unland_on(repl, f.target.unwrap_or(repl.local), &f.id).await?;
    }
    job.step(&format!("asking {name} to shut down or cut a final point"));
    let steps = super::source::prepare(repl, id, &name, &ask, Some(&protection)).await?;
    let ask = steps.narrow(ask);
    job.step("choosing the point");
    let p = choose_point(&vault, id, &ask.point).await?;
    let land = job_for(repl, "failover", &job.id(), (id, &name), &p.id, &ask, true)?;
    let mut rec = FailoverRecord {
        id: land.job.clone(),
        machine_name: name.clone(),
        point: p.id.clone(),
        started_ms: crate::seams::now().0,
        target: (target != repl.local).then_some(target),
        dir: PathBuf::from(ask.to.clone().unwrap_or_default()),
        images: vec![],
        format: ask.format.clone(),
        state: FailoverState::FailedOver,
        protection,
        error: Some("bringing it up".into()),
        reprotected: None,
    };
    // Recorded first, then replication stops: the record can give the protection back.
    all.insert(id, rec.clone());
    save_all(repl, &all)?;
    job.step(&format!("stopping the replication of {name}"));
    stop_replication(repl, id, &name).await?;
    let t0 = std::time::Instant::now();
    job.set_total(p.disks.iter().map(|d| d.size_bytes).sum());
    job.step(&format!("restoring and verifying on {target_name}"));
    let done = Some(job.progress());
    let landed = land_on(repl, target, land, done).await;
    let landed = match landed {
        Ok(l) => l,
        Err(e) => Landed {
            error: Some(e),
            ..Landed::default()
        },
    };
    rec.dir = PathBuf::from(&landed.dir);
    rec.images = landed.images.iter().map(PathBuf::from).collect();
    rec.error = landed.error.clone();
    all.insert(id, rec.clone());
    save_all(repl, &all)?;
    if let Some(e) = landed.error {
        return Err(format!(
            "{e}; the failover of {name} stays open: run it again after fixing, or `lifeboat failover cancel {name}`"
        ));
    }
    tracing::warn!(machine = %name, point = %p.id, target = %target_name, "FAILED OVER: the machine runs at the recovery site");
    Ok(crate::replies::encode(&crate::replies::FailedOver {
        job: None,
        machine: name,
        failover: rec.id,
        point: p.id.clone(),
        captured_ms: p.captured.0,
        target: target_name,
        images: rec.images,
        format: ask.format,
        boot_hook_exit: landed.boot_hook_exit,
        seconds: t0.elapsed().as_secs_f64(),
        notes: steps.notes,
    }))
}

/// Stops the machine's replication: the protection leaves the record, and the machine (if it
/// answers within a short bound) forgets it.
async fn stop_replication(repl: &Repl, id: NodeId, name: &str) -> Result<(), String> {
    guard(&repl.cfg.protections).remove(&id);
    super::jobs::end_full_copy(repl, id, "the machine was failed over");
    save_protections(repl)?;
    if id == repl.local {
        let _ = repl
            .mobility
            .send(crate::replication::mobility::Unprotect)
            .await;
        return Ok(());
    }
    let told = tokio::time::timeout(
        REACH_SOURCE,
        repl.net.request(id, Message::Unprotect { machine: id }),
    )
    .await;
    if !matches!(told, Ok(Ok(_))) {
        tracing::warn!(machine = %name, "the failed machine did not answer; its replication stops when it is back");
    }
    Ok(())
}

/// `lifeboat failover commit MACHINE [--discard-points]`: the failover is final. The machine's
/// recovery points stay in the vault (retention no longer runs for it: it is not protected)
/// unless `--discard-points`, which deletes all but the failover point (reprotect's base).
pub async fn commit(
    repl: &Repl,
    machine: &str,
    discard_points: bool,
    job: &Job,
) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let mut all = failovers(repl);
    let f = all
        .get_mut(&id)
        .ok_or_else(|| format!("{name} is not failed over"))?;
    // A commit whose discarding was cut short (a crash) is finished by running it again.
    if f.state == FailoverState::Committed && !discard_points {
        return Err(format!("{name}'s failover is committed already"));
    }
    if let Some(e) = &f.error {
        return Err(format!(
            "{name}'s failover did not come up ({e}); cancel it or fail over again"
        ));
    }
    job.step("committing the failover");
    f.state = FailoverState::Committed;
    let (fid, keep) = (f.id.clone(), f.point.clone());
    save_all(repl, &all)?;
    tracing::warn!(machine = %name, "failover committed");
    // As the reference does at commit, but keeping the failover point: reprotect starts from it.
    let mut discarded = 0;
    if discard_points {
        job.step("deleting the points other than the failover point");
        let vault = require_vault(repl).await?;
        let pts = vault
            .list_points(Some(&id))
            .await
            .map_err(|e| e.to_string())?;
        for p in pts.iter().filter(|p| p.id != keep) {
            vault
                .delete_point(p)
                .await
                .map_err(|e| format!("committed, but deleting point {} failed: {e}", p.id))?;
            discarded += 1;
        }
    }
    Ok(crate::replies::encode(&crate::replies::FailoverChanged {
        job: None,
        machine: name,
        failover: fid,
        state: "committed".into(),
        discarded_points: discarded,
    }))
}

/// `lifeboat failover cancel MACHINE`: before a commit, back to the state before the failover:
/// the images go, and the protection is given back to the machine (which must be reachable:
/// it resumes from its change log, no initial copy).
pub async fn cancel(repl: &Repl, machine: &str, job: &Job) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let (mut all, f) = failover_of(repl, id, &name)?;
    if f.state == FailoverState::Committed {
        return Err(format!(
            "{name}'s failover is committed; it cannot be cancelled (fail back instead)"
        ));
    }
    job.step(&format!("giving {name} its protection back"));
    // Recorded before the machine hears of it (its first reports must find it protected).
    guard(&repl.cfg.protections).insert(id, f.protection.clone());
    if let Err(e) = super::deliver_protection(repl, &f.protection.spec, &name).await {
        guard(&repl.cfg.protections).remove(&id);
        return Err(format!(
            "{e}; the failover stays: retry the cancel once {name} is reachable"
        ));
    }
    save_protections(repl)?;
    // The machine is protected again; the images going is second (a target that is away keeps
    // them, recorded in its landings.json).
    job.step("removing the failover's images");
    let removed = match unland_on(repl, f.target.unwrap_or(repl.local), &f.id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(machine = %name, cause = %e, "the failover's images could not be removed");
            0
        }
    };
    all.remove(&id);
    save_all(repl, &all)?;
    tracing::info!(machine = %name, removed, "failover cancelled; protection resumed");
    Ok(crate::replies::encode(&crate::replies::FailoverChanged {
        job: None,
        machine: name,
        failover: f.id,
        state: "cancelled".into(),
        discarded_points: 0,
    }))
}
