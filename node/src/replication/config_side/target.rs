//! Where a drill or failover lands: the target node (`--on NODE`, this configuration node by
//! default). The configuration node chooses the point and the job id, and hands the target a
//! `LandJob` with a vault grant for that job only; the target restores straight from the
//! vault (`replication::landing`). Cleanup, cancel and reprotect go to the same target.

use super::drill::DrillAsk;
use super::*;
use crate::replication::landing;
use lifeboat_protocol::message::{LandJob, Landed};
use std::time::Duration;

/// Longest a landing may take on a target (restore, conversion, boot hook).
const LAND_WAIT: Duration = Duration::from_secs(4 * 3600);

/// The target of `--on` (a connected mesh member, or this node): its id and name.
pub(super) async fn resolve_target(
    repl: &Repl,
    on: Option<&str>,
) -> Result<(NodeId, String), String> {
    let mesh = repl
        .mesh
        .send(lifeboat_actors::shell::GetMesh)
        .await
        .map_err(|e| e.to_string())?;
    let Some(on) = on else {
        let name = mesh
            .resolve(&repl.local.to_string())
            .map_or_else(|| "this node".to_string(), |m| m.name.clone());
        return Ok((repl.local, name));
    };
    let m = mesh
        .resolve(on)
        .ok_or_else(|| format!("--on {on:?}: no mesh member by that name or id"))?;
    let id = m.node_id();
    if id != repl.local && !repl.net.connected().contains(&id) {
        return Err(format!("--on {}: not connected", m.name));
    }
    Ok((id, m.name.clone()))
}

/// The job `ask` describes, for `point` of `machine`.
pub(super) fn job_for(
    repl: &Repl,
    kind: &str,
    job: &str,
    machine: (NodeId, &str),
    point: &str,
    ask: &DrillAsk,
    keep_maps: bool,
) -> Result<LandJob, String> {
    if let Some(t) = &ask.to {
        if !Path::new(t).is_absolute() {
            return Err("--to must be an absolute directory".into());
        }
    }
    Ok(LandJob {
        kind: kind.into(),
        job: job.into(),
        machine: machine.0,
        machine_name: machine.1.into(),
        point: point.into(),
        grant: repl.grant().ok_or("the vault's key is unreadable")?,
        dir: ask.to.clone(),
        format: ask.format.clone(),
        boot_hook: ask.boot_hook.clone(),
        isolated: ask.isolated,
        keep_maps,
        disk_map: ask.disk_map.clone(),
    })
}

/// Lands `job` on `target`, counting restored bytes into `done` (a remote target reports
/// them as it goes). `Err`
/// only if the target refused (nothing was made); a target lost in the middle may have made
/// something, so that is a `Landed` with an error: the caller keeps its record for cleanup.
pub(super) async fn land_on(
    repl: &Repl,
    target: NodeId,
    job: LandJob,
    done: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Landed, String> {
    if target == repl.local {
        return landing::land(repl, job, done).await;
    }
    // The target reports its bytes while it restores (`LandProgress`).
    let id = job.job.clone();
    if let Some(d) = done {
        guard(&repl.cfg.remote_landings).insert(id.clone(), (target, d));
    }
    let answer = repl
        .net
        .request_within(target, Message::Land(job), LAND_WAIT)
        .await;
    guard(&repl.cfg.remote_landings).remove(&id);
    match answer {
        Ok(Message::Landed(l)) => Ok(l),
        Ok(Message::Error { message }) => Err(message),
        Ok(m) => Err(format!("the target answered {}", m.kind())),
        Err(e) => Ok(Landed {
            error: Some(format!("the target was lost in the middle ({e})")),
            ..Landed::default()
        }),
    }
}

/// Removes what landing `job` made on `target`; returns the files removed.
pub(super) async fn unland_on(repl: &Repl, target: NodeId, job: &str) -> Result<usize, String> {
    if target == repl.local {
        return landing::unland(repl, job).await;
    }
    match repl
        .net
        .request(target, Message::Unland { job: job.into() })
        .await
    {
        Ok(Message::Accept) => Ok(0),
        Ok(Message::Error { message }) => Err(message),
        Ok(m) => Err(format!("the target answered {}", m.kind())),
        Err(e) => Err(format!(
            "the target is unreachable ({e}); retry when it is back"
        )),
    }
}

/// Seeds `target`'s change log with `point` for the disks landing `job` brought up there.
pub(super) async fn adopt_on(
    repl: &Repl,
    target: NodeId,
    job: &str,
    point: &str,
    disks: &[DiskSpec],
) -> Result<(), String> {
    if target == repl.local {
        return landing::adopt(repl, job, point, disks);
    }
    let msg = Message::AdoptPoint {
        job: job.into(),
        point: point.into(),
        disks: disks.to_vec(),
    };
    match repl.net.request(target, msg).await {
        Ok(Message::Accept) => Ok(()),
        Ok(Message::Error { message }) => Err(message),
        Ok(m) => Err(format!("the target answered {}", m.kind())),
        Err(e) => Err(format!("the target: {e}")),
    }
}

/// A target's report of a landing's bytes: taken only from the node the job landed on.
pub fn land_progress(repl: &Repl, from: NodeId, job: &str, done_bytes: u64) {
    if let Some((target, done)) = guard(&repl.cfg.remote_landings).get(job) {
        if *target == from {
            done.store(done_bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
