//! Failover on the configuration node: the machine is brought up at this site from a recovery
//! point (the drill's restore, verification, conversion and boot hook), its replication stops,
//! and the failover is then committed or cancelled. Unplanned by default (never waiting on the
//! failed site beyond a short bound); `--planned` shuts the machine down and cuts a final point
//! first (`source.rs`). Recorded in
//! `failovers.json` before anything is done, with the protection it replaced, so a cancel can
//! give it back.

use super::drill::{bring_up, check_tools, land, remove_images, DrillAsk, Landing};
use super::*;
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
    /// Where its images are.
    pub dir: PathBuf,
    /// The directory was made by the failover.
    pub made_dir: bool,
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

/// Where a failover keeps the BLAKE3 maps of the disks it brought up (a reprotect's base).
pub(super) fn hashes_dir(repl: &Repl, failover: &str) -> PathBuf {
    repl.dir.root.join("failover-hashes").join(failover)
}

fn path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("failovers.json")
}

/// Every machine's failover (by node id).
pub fn failovers(repl: &Repl) -> BTreeMap<NodeId, FailoverRecord> {
    load(&path(repl)).ok().flatten().unwrap_or_default()
}

pub(super) fn save_all(repl: &Repl, f: &BTreeMap<NodeId, FailoverRecord>) -> Result<(), String> {
    save(&path(repl), f, 0o600)
}

/// How long a failover waits for the failed machine to hear that its replication stops.
const REACH_SOURCE: std::time::Duration = std::time::Duration::from_secs(5);

/// `lifeboat failover MACHINE ...` (unplanned: never waits on the failed site beyond a short
/// bound).
pub async fn failover(repl: &Repl, ask: DrillAsk) -> Result<Value, String> {
    require_config(repl).await?;
    check_tools(&ask)?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, &ask.machine).await?;
    let mut all = failovers(repl);
    if let Some(f) = all.get(&id) {
        return Err(match f.state {
            FailoverState::FailedOver => format!(
                "{name} is failed over already; `lifeboat failover commit {name}` or `lifeboat failover cancel {name}`"
            ),
            FailoverState::Committed => format!("{name}'s failover is committed"),
        });
    }
    let Some(protection) = guard(&repl.cfg.protections).get(&id).cloned() else {
        return Err(format!("{name} is not protected"));
    };
    let steps = super::source::prepare(repl, id, &name, &ask, Some(&protection)).await?;
    let ask = steps.narrow(ask);
    let Landing {
        point: p,
        id: fid,
        dir,
        made_dir,
        images,
    } = land(repl, &vault, id, &name, &ask, "failovers").await?;
    let mut rec = FailoverRecord {
        id: fid,
        machine_name: name.clone(),
        point: p.id.clone(),
        started_ms: crate::seams::now().0,
        dir: dir.clone(),
        made_dir,
        images: images.clone(),
        format: ask.format.clone(),
        state: FailoverState::FailedOver,
        protection,
        error: None,
        reprotected: None,
    };
    // Recorded first, then replication stops: the record can give the protection back.
    all.insert(id, rec.clone());
    save_all(repl, &all)?;
    stop_replication(repl, id, &name).await?;
    let t0 = std::time::Instant::now();
    let hashes = hashes_dir(repl, &rec.id);
    let outcome = bring_up(
        "failover",
        &vault,
        &p,
        &ask,
        &dir,
        &images,
        &name,
        &rec.id,
        Some(&hashes),
    )
    .await;
    if let Err(e) = &outcome {
        rec.error = Some(e.clone());
        all.insert(id, rec.clone());
        save_all(repl, &all)?;
        return Err(format!(
            "{e}; the failover of {name} stays open: retry after fixing, or `lifeboat failover cancel {name}`"
        ));
    }
    tracing::warn!(machine = %name, point = %p.id, "FAILED OVER: the machine runs at the recovery site");
    Ok(crate::replies::encode(&crate::replies::FailedOver {
        machine: name,
        failover: rec.id,
        point: p.id.clone(),
        captured_ms: p.captured.0,
        images,
        format: ask.format,
        boot_hook_exit: outcome?,
        seconds: t0.elapsed().as_secs_f64(),
        notes: steps.notes,
    }))
}

/// Stops the machine's replication: the protection leaves the record, and the machine (if it
/// answers within a short bound) forgets it.
async fn stop_replication(repl: &Repl, id: NodeId, name: &str) -> Result<(), String> {
    guard(&repl.cfg.protections).remove(&id);
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

/// `lifeboat failover commit MACHINE`: the failover is final. The machine's recovery points
/// stay in the vault (retention no longer runs for it: it is not protected) until it is
/// reprotected or they are deleted.
pub async fn commit(repl: &Repl, machine: &str) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let mut all = failovers(repl);
    let f = all
        .get_mut(&id)
        .ok_or_else(|| format!("{name} is not failed over"))?;
    if f.state == FailoverState::Committed {
        return Err(format!("{name}'s failover is committed already"));
    }
    if let Some(e) = &f.error {
        return Err(format!(
            "{name}'s failover did not come up ({e}); cancel it or fail over again"
        ));
    }
    f.state = FailoverState::Committed;
    let fid = f.id.clone();
    save_all(repl, &all)?;
    tracing::warn!(machine = %name, "failover committed");
    Ok(crate::replies::encode(&crate::replies::FailoverChanged {
        machine: name,
        failover: fid,
        state: "committed".into(),
    }))
}

/// `lifeboat failover cancel MACHINE`: before a commit, back to the state before the failover:
/// the images go, and the protection is given back to the machine (which must be reachable:
/// it resumes from its change log, no initial copy).
pub async fn cancel(repl: &Repl, machine: &str) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let mut all = failovers(repl);
    let f = all
        .get(&id)
        .cloned()
        .ok_or_else(|| format!("{name} is not failed over"))?;
    if f.state == FailoverState::Committed {
        return Err(format!(
            "{name}'s failover is committed; it cannot be cancelled (fail back instead)"
        ));
    }
    // Recorded before the machine hears of it (its first reports must find it protected).
    guard(&repl.cfg.protections).insert(id, f.protection.clone());
    if let Err(e) = super::deliver_protection(repl, &f.protection.spec, &name).await {
        guard(&repl.cfg.protections).remove(&id);
        return Err(format!(
            "{e}; the failover stays: retry the cancel once {name} is reachable"
        ));
    }
    save_protections(repl)?;
    let removed = remove_images(&f.images, &f.dir, f.made_dir)?;
    let _ = std::fs::remove_dir_all(hashes_dir(repl, &f.id));
    all.remove(&id);
    save_all(repl, &all)?;
    tracing::info!(machine = %name, removed, "failover cancelled; protection resumed");
    Ok(crate::replies::encode(&crate::replies::FailoverChanged {
        machine: name,
        failover: f.id,
        state: "cancelled".into(),
    }))
}
