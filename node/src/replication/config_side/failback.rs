//! Coming home after a failover: reprotect, then failback.
//!
//! `reprotect MACHINE` protects the failed-over disks at the recovery site (the failover's
//! target node, with its mobility role) into the vault, starting from the failover point: the
//! point is cloned under the target (no data copied) and the target's change log is seeded
//! with the BLAKE3 maps it took of the disks as it restored them, so only blocks changed since
//! the failover move. `failback MACHINE [--planned]` takes the recovery site's final point, clones
//! it under the original machine, and has that machine write it onto its own disks, only the
//! blocks that differ (`mobility::failback`); then the recovery site's protection stops and
//! the machine's own protection resumes from that point, again without an initial copy.

use super::drill::DrillAsk;
use super::failover::{failover_of, save_all, FailoverState, Reprotected};
use super::target::adopt_on;
use super::*;
use crate::jobs::Job;
use lifeboat_protocol::message::FailbackJob;
use std::time::Duration;

/// Longest a failback job may run on the machine.
const FAILBACK_WAIT: Duration = Duration::from_secs(6 * 3600);

/// `lifeboat reprotect MACHINE [--shutdown-hook CMD]`.
pub async fn reprotect(
    repl: &Repl,
    machine: &str,
    shutdown_hook: Option<String>,
    job: &Job,
) -> Result<Value, String> {
    require_config(repl).await?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let (mut all, f) = failover_of(repl, id, &name)?;
    if f.state != FailoverState::Committed {
        return Err(format!(
            "{name}'s failover is not committed; `lifeboat failover commit {name}` first"
        ));
    }
    if let Some(r) = &f.reprotected {
        return Err(format!("{name} is reprotected already (point {})", r.point));
    }
    if f.format != "raw" {
        return Err(format!(
            "{name} was failed over as {} images; reprotect replicates raw images (fail over with --format raw)",
            f.format
        ));
    }
    let target = f.target.unwrap_or(repl.local);
    let mesh = repl
        .mesh
        .send(lifeboat_actors::shell::GetMesh)
        .await
        .map_err(|e| e.to_string())?;
    let here = mesh
        .resolve(&target.to_string())
        .map_or_else(|| target.to_string(), |m| m.name.clone());
    let has_mobility = if target == repl.local {
        repl.roles().await.contains(&Role::Mobility)
    } else {
        mesh.resolve(&target.to_string())
            .is_some_and(|m| m.roles.contains(&Role::Mobility))
    };
    if !has_mobility {
        return Err(format!(
            "reprotect replicates {name}'s disks from {here}, where they were failed over, and it lacks the mobility role: `lifeboat role add mobility --node {here}`"
        ));
    }
    if guard(&repl.cfg.protections).contains_key(&target) {
        return Err(format!(
            "{here} protects disks of its own already; one protection per node"
        ));
    }
    let pts = vault
        .list_points(Some(&id))
        .await
        .map_err(|e| e.to_string())?;
    let p = pts
        .iter()
        .find(|p| p.id == f.point)
        .ok_or_else(|| format!("the failover point {} left the vault", f.point))?;
    let disks: Vec<DiskSpec> = p
        .disks
        .iter()
        .zip(&f.images)
        .map(|(d, i)| DiskSpec {
            name: d.name.clone(),
            path: i.display().to_string(),
        })
        .collect();
    job.step("cloning the failover point under the recovery site");
    let clone = vault
        .clone_point(p, target, &here, crate::seams::now())
        .await
        .map_err(|e| e.to_string())?;
    job.step(&format!("seeding {here}'s change log and protecting"));
    adopt_on(repl, target, &f.id, &clone.id, &disks).await?;
    let spec = ProtectionSpec {
        machine: target,
        disks,
        policy: f.protection.spec.policy.clone(),
        process_server: None,
        hooks: Hooks {
            shutdown: shutdown_hook,
            ..Hooks::default()
        },
        block_size: p.disks.first().map_or(DEFAULT_BLOCK_SIZE, |d| d.block_size),
        capture: f.protection.spec.capture,
    };
    guard(&repl.cfg.protections).insert(
        target,
        Protection {
            spec: spec.clone(),
            machine_name: here.clone(),
            since: crate::seams::now(),
        },
    );
    if let Err(e) = deliver_protection(repl, &spec, &here).await {
        guard(&repl.cfg.protections).remove(&target);
        return Err(e);
    }
    save_protections(repl)?;
    if let Some(r) = all.get_mut(&id) {
        r.reprotected = Some(Reprotected {
            node: target,
            point: clone.id.clone(),
            since_ms: crate::seams::now().0,
        });
    }
    save_all(repl, &all)?;
    tracing::warn!(machine = %name, point = %clone.id, "reprotected: the failed-over disks replicate from this site");
    Ok(crate::replies::encode(&crate::replies::Reprotected {
        job: None,
        machine: name,
        node: here,
        base_point: clone.id,
        images: f.images,
    }))
}

/// `lifeboat failback MACHINE [--planned]`.
pub async fn failback(
    repl: &Repl,
    machine: &str,
    planned: bool,
    job: &Job,
) -> Result<Value, String> {
    require_config(repl).await?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let (mut all, f) = failover_of(repl, id, &name)?;
    let Some(r) = f.reprotected.clone() else {
        return Err(format!(
            "{name} is not reprotected: `lifeboat reprotect {name}` first, so the recovery site's changes reach the vault"
        ));
    };
    if !repl.net.connected().contains(&id) && id != repl.local {
        return Err(format!(
            "{name} is unreachable; failback writes its own disks, so it must be up (with its mobility role)"
        ));
    }
    let (_, here) = resolve_machine(repl, &r.node.to_string()).await?;
    let t0 = std::time::Instant::now();
    // The recovery site's final point (planned: after its shutdown hook).
    let ask = DrillAsk {
        machine: here.clone(),
        point: "latest".into(),
        to: None,
        format: "raw".into(),
        boot_hook: None,
        isolated: false,
        on: None,
        disk_map: vec![],
        shutdown_source: false,
        planned,
    };
    let at_recovery = guard(&repl.cfg.protections).get(&r.node).cloned();
    job.step(&format!("cutting the final point at {here}"));
    let steps = super::source::prepare(repl, r.node, &here, &ask, at_recovery.as_ref()).await?;
    let pts = vault
        .list_points(Some(&r.node))
        .await
        .map_err(|e| e.to_string())?;
    let p = select_point(&pts, &steps.narrow(ask).point)?.clone();
    let home = vault
        .clone_point(&p, id, &name, crate::seams::now())
        .await
        .map_err(|e| e.to_string())?;
    let grant = repl.grant().ok_or("the vault's key is unreadable")?;
    job.set_total(p.disks.iter().map(|d| d.size_bytes).sum());
    job.step(&format!("writing the differing blocks onto {name}'s disks"));
    let work = Message::Failback(FailbackJob {
        machine: id,
        grant,
        point: home.id.clone(),
        disks: f.protection.spec.disks.clone(),
    });
    let disks = match repl.net.request_within(id, work, FAILBACK_WAIT).await {
        Ok(Message::FailedBack(d)) => d,
        Ok(Message::Error { message }) => {
            return Err(format!(
                "failback of {name} failed: {message}; the recovery site keeps running and replicating: fix and retry"
            ))
        }
        Ok(m) => return Err(format!("unexpected reply from {name}: {}", m.kind())),
        Err(e) => {
            return Err(format!(
                "failback of {name} failed: {e}; the recovery site keeps running and replicating: retry"
            ))
        }
    };
    job.progress().store(
        disks.iter().map(|d| d.read_bytes).sum(),
        std::sync::atomic::Ordering::Relaxed,
    );
    job.step(&format!("resuming {name}'s protection"));
    // Home again: the recovery site stops replicating, the machine resumes from the point.
    guard(&repl.cfg.protections).remove(&r.node);
    if r.node == repl.local {
        let _ = repl
            .mobility
            .send(crate::replication::mobility::Unprotect)
            .await;
    } else if let Err(e) = repl
        .net
        .request(r.node, Message::Unprotect { machine: r.node })
        .await
    {
        tracing::warn!(node = %here, cause = %e, "the recovery site did not hear that its replication stops; it is told when it next reports");
    }
    let mut back = f.protection.clone();
    back.since = crate::seams::now();
    guard(&repl.cfg.protections).insert(id, back.clone());
    save_protections(repl)?;
    let resumed = deliver_protection(repl, &back.spec, &name).await;
    all.remove(&id);
    save_all(repl, &all)?;
    let mut notes = steps.notes;
    if let Err(e) = resumed {
        notes.push(format!(
            "{name} did not take its protection back yet ({e}); it is told when it next reports"
        ));
    }
    tracing::warn!(machine = %name, point = %home.id, "FAILED BACK: the machine runs at its own site again");
    Ok(crate::replies::encode(&crate::replies::FailedBack {
        job: None,
        machine: name,
        point: home.id,
        from_point: p.id,
        disks,
        recovery_images: f.images,
        seconds: t0.elapsed().as_secs_f64(),
        notes,
    }))
}
