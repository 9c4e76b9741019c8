//! Configuration side: the vault (creation, data key, grants to process servers), policies,
//! protections, the catalog of recovery points (a cache of the vault's), replication status and
//! RPO alerts, and restores.

mod actor;
mod admin;
mod drill;
mod failback;
mod failover;
pub mod jobs;
mod points;
mod recovery;
mod source;
mod target;
pub use target::land_progress;

pub use actor::{Collect, ConfigActor, JobView, Shutdown, StartDuties};
use admin::save_policies;
pub use admin::{
    policies, policy_create, policy_delete, validate_policy, vault_create, vault_rekey,
};
pub use drill::{cleanup as drill_cleanup, drill, DrillAsk};
pub use failback::{failback, reprotect};
pub use failover::{cancel as failover_cancel, commit as failover_commit, failover};
pub use recovery::attach as vault_attach;

use super::{load, save, Repl};
use crate::vault::{store_from_url, Vault, VaultConfig};
use lifeboat_actors::catalog::{captured_in_future, Catalog, CatalogEntry, Duties, Watched};
use lifeboat_actors::replication::Health;
use lifeboat_config::StateDir;
use lifeboat_protocol::message::{
    DiskSpec, Hooks, PointSummary, Policy, ProtectionReport, ProtectionSpec,
};
use lifeboat_protocol::name::Name;
use lifeboat_protocol::vault::{self, Consistency, DataKey, PointRecord, DEFAULT_BLOCK_SIZE};
use lifeboat_protocol::{Message, NodeId, Role, UnixMillis};
pub use points::{points, restore, select_point};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A protection as the configuration node keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Protection {
    /// What the mobility node was told.
    pub spec: ProtectionSpec,
    /// Machine name.
    pub machine_name: String,
    /// When protection started.
    pub since: UnixMillis,
}

/// Configuration-side state.
#[derive(Debug)]
pub struct ConfigState {
    /// Policies by name.
    pub policies: Mutex<BTreeMap<String, Policy>>,
    /// Protections by machine.
    pub protections: Mutex<BTreeMap<NodeId, Protection>>,
    /// Catalog of points, reports and alerts (sans-IO).
    pub catalog: Mutex<Catalog>,
    /// Process servers that hold the current vault grant.
    pub granted: Mutex<BTreeSet<NodeId>>,
    /// When retention and garbage collection are due.
    pub duties: Mutex<Duties>,
    /// Point notices being verified against the vault at once (a bound on what a flood of
    /// notices can cost).
    pub notice_slots: Arc<tokio::sync::Semaphore>,
    /// Digest of the configuration last mirrored into the vault.
    pub mirrored: Mutex<Option<[u8; 32]>>,
    /// The job of each machine's running full copy (initial replication or resync).
    pub copy_jobs: Mutex<BTreeMap<NodeId, Arc<crate::jobs::Job>>>,
    /// Landings running on other nodes: job id to (target, the job's progress counter).
    pub remote_landings: Mutex<BTreeMap<String, (NodeId, Arc<std::sync::atomic::AtomicU64>)>>,
    /// Each process server's last health report and when it came (not persisted: a restart
    /// waits for the next round).
    pub ps_reports:
        Mutex<BTreeMap<NodeId, (UnixMillis, lifeboat_protocol::message::PsHealthReport)>>,
    /// Per machine, sums over the points taken since start (for metrics).
    pub totals: Mutex<BTreeMap<NodeId, crate::replies::PointTotals>>,
    /// `[alerts] webhook`, set by the daemon at start.
    pub webhook_url: std::sync::OnceLock<String>,
    /// Its delivery task, started with the first duties pass.
    pub webhook: std::sync::OnceLock<crate::webhook::Webhook>,
}

impl ConfigState {
    /// Loads persisted state.
    pub fn load(dir: &StateDir) -> Result<Self, String> {
        let policies: BTreeMap<String, Policy> =
            load(&dir.root.join("policies.json"))?.unwrap_or_default();
        let protections: BTreeMap<NodeId, Protection> =
            load(&dir.root.join("protections.json"))?.unwrap_or_default();
        let catalog: BTreeMap<NodeId, CatalogEntry> =
            load(&dir.root.join("catalog.json"))?.unwrap_or_default();
        Ok(ConfigState {
            policies: Mutex::new(policies),
            protections: Mutex::new(protections),
            catalog: Mutex::new(Catalog::new(catalog)),
            granted: Mutex::new(BTreeSet::new()),
            duties: Mutex::new(Duties::new(RETENTION_EVERY_MS, GC_EVERY_MS)),
            notice_slots: Arc::new(tokio::sync::Semaphore::new(16)),
            mirrored: Mutex::new(None),
            copy_jobs: Mutex::new(BTreeMap::new()),
            remote_landings: Mutex::new(BTreeMap::new()),
            ps_reports: Mutex::new(BTreeMap::new()),
            totals: Mutex::new(BTreeMap::new()),
            webhook_url: std::sync::OnceLock::new(),
            webhook: std::sync::OnceLock::new(),
        })
    }
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn require_config(repl: &Repl) -> Result<(), String> {
    if !repl.roles().await.contains(&Role::Configuration) {
        // Say where it runs: the configuration node holds the catalog and the vault key.
        let there = match repl.authorities().await.first() {
            Some(id) => format!("; run it there (node {id}, see `lifeboat peers`)"),
            None => String::new(),
        };
        return Err(format!(
            "this command runs on the configuration node, which holds the catalog and the vault key (this node lacks the configuration role){there}"
        ));
    }
    Ok(())
}

async fn require_vault(repl: &Repl) -> Result<Arc<Vault>, String> {
    repl.open_vault()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no vault yet; create one with `lifeboat vault create NAME`".into())
}

/// Resolves a machine given by node id or name among mesh members.
async fn resolve_machine(repl: &Repl, machine: &str) -> Result<(NodeId, String), String> {
    let mesh = repl
        .mesh
        .send(lifeboat_actors::shell::GetMesh)
        .await
        .map_err(|e| e.to_string())?;
    // Ids first, then (unique) names.
    if let Some(m) = mesh.resolve(machine) {
        return Ok((m.node_id(), m.name.clone()));
    }
    // A machine of a lost site (not a member of this mesh: a vault attached with its recovery
    // key) is known by its protection.
    if let Some((id, p)) = guard(&repl.cfg.protections)
        .iter()
        .find(|(id, p)| id.to_string() == machine || p.machine_name == machine)
    {
        return Ok((*id, p.machine_name.clone()));
    }
    Err(format!(
        "no mesh member named {machine:?}; see `lifeboat peers`"
    ))
}

fn save_protections(repl: &Repl) -> Result<(), String> {
    let p = guard(&repl.cfg.protections).clone();
    save(&repl.dir.root.join("protections.json"), &p, 0o644)
}

fn save_catalog(repl: &Repl) {
    let c = guard(&repl.cfg.catalog).entries().clone();
    if let Err(e) = save(&repl.dir.root.join("catalog.json"), &c, 0o644) {
        tracing::warn!(cause = %e, "saving the catalog failed");
    }
}

/// What `lifeboat protect` asks.
#[derive(Debug)]
pub struct ProtectAsk {
    /// Machine (node id or name).
    pub machine: String,
    /// Disk paths on it.
    pub disks: Vec<String>,
    /// Policy name.
    pub policy: Option<String>,
    /// Preferred process server.
    pub process_server: Option<String>,
    /// Hooks.
    pub hooks: Hooks,
    /// Block size.
    pub block_size: Option<u32>,
    /// How changed blocks are found.
    pub capture: lifeboat_protocol::message::Capture,
}

/// `lifeboat protect MACHINE --disk PATH...`
#[allow(clippy::too_many_arguments)]
pub async fn protect(repl: &Repl, ask: ProtectAsk) -> Result<Value, String> {
    let ProtectAsk {
        machine,
        disks,
        policy,
        process_server,
        hooks,
        block_size,
        capture,
    } = ask;
    let machine = machine.as_str();
    require_config(repl).await?;
    require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    if disks.is_empty() {
        return Err("give at least one --disk PATH".into());
    }
    let policy_name = policy.unwrap_or_else(|| "default".into());
    let policy = policies(repl)
        .get(&policy_name)
        .cloned()
        .ok_or_else(|| format!("no policy named {policy_name}; see `lifeboat policy list`"))?;
    let ps = match process_server {
        Some(p) => {
            let (ps, ps_name) = resolve_machine(repl, &p).await?;
            if !repl.granted(ps, Role::ProcessServer).await {
                return Err(format!(
                    "{ps_name} ({ps}) does not hold the process-server role; grant it with `lifeboat role add process-server --node {ps_name}`"
                ));
            }
            Some(ps)
        }
        None => None,
    };
    let bs = block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    if !(4096..=vault::MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
        return Err("--block-size must be a power of two between 4 KiB and 4 MiB".into());
    }
    let specs = disk_specs(disks)?;
    let spec = ProtectionSpec {
        machine: id,
        disks: specs,
        policy,
        process_server: ps,
        hooks,
        block_size: bs,
        capture,
    };
    if !repl.granted(id, Role::Mobility).await {
        return Err(format!(
            "{name} ({id}) does not hold the mobility role; grant it with `lifeboat role add mobility --node {name}`"
        ));
    }
    if id != repl.local && !repl.net.connected().contains(&id) {
        return Err(format!(
            "{name} ({id}) is not connected; check `lifeboat peers`"
        ));
    }
    // Recorded before the machine hears of it: its first reports must find it protected
    // (a machine that replicates unprotected is told to stop). Put back if it refuses.
    let before = guard(&repl.cfg.protections).insert(
        id,
        Protection {
            spec: spec.clone(),
            machine_name: name.clone(),
            since: crate::seams::now(),
        },
    );
    if let Err(e) = deliver_protection(repl, &spec, &name).await {
        let mut g = guard(&repl.cfg.protections);
        match before {
            Some(b) => g.insert(id, b),
            None => g.remove(&id),
        };
        return Err(e);
    }
    save_protections(repl)?;
    tracing::info!(machine = %name, disks = spec.disks.len(), policy = %spec.policy.name, "protection enabled");
    Ok(crate::replies::encode(&crate::replies::Protected {
        machine: name.to_string(),
        node_id: id.to_string(),
        disks: spec.disks.clone(),
        policy: spec.policy.name.clone(),
    }))
}

/// The disks of a protection, named from their paths (unique: `-2`, `-3`... on a clash).
fn disk_specs(disks: Vec<String>) -> Result<Vec<DiskSpec>, String> {
    let mut specs = Vec::new();
    let mut names = BTreeSet::new();
    for d in disks {
        if !d.starts_with('/') {
            return Err(format!(
                "--disk {d}: give an absolute path on the protected machine"
            ));
        }
        let mut n = super::disk_name(&d);
        let mut k = 2;
        while !names.insert(n.clone()) {
            n = format!("{}-{k}", super::disk_name(&d));
            k += 1;
        }
        specs.push(DiskSpec { name: n, path: d });
    }
    Ok(specs)
}

/// Hands a protection to its machine: this node's mobility actor, or the member over the
/// mesh (which checks it is its own machine).
async fn deliver_protection(repl: &Repl, spec: &ProtectionSpec, name: &str) -> Result<(), String> {
    let id = spec.machine;
    if id == repl.local {
        if !repl.roles().await.contains(&Role::Mobility) {
            return Err(
                "this node lacks the mobility role; run `lifeboat role add mobility`".into(),
            );
        }
        return repl
            .mobility
            .send(super::mobility::Protect(spec.clone()))
            .await
            .map_err(|_| "this node is shutting down".to_string())?;
    }
    match repl
        .net
        .request(id, Message::Protect(spec.clone()))
        .await
        .map_err(|e| e.to_string())?
    {
        Message::Accept => Ok(()),
        Message::Error { message } => Err(format!("{name} refused: {message}")),
        other => Err(format!("unexpected reply from {name}: {}", other.kind())),
    }
}

/// `lifeboat unprotect MACHINE`.
pub async fn unprotect(repl: &Repl, machine: &str) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    if guard(&repl.cfg.protections).remove(&id).is_none() {
        return Err(format!("{name} is not protected"));
    }
    jobs::end_full_copy(repl, id, "the machine was unprotected");
    save_protections(repl)?;
    if id == repl.local {
        let _ = repl.mobility.send(super::mobility::Unprotect).await;
    } else if let Err(e) = repl
        .net
        .request(id, Message::Unprotect { machine: id })
        .await
    {
        tracing::warn!(machine = %name, cause = %e, "could not reach the machine; it stops when it next connects");
    }
    Ok(crate::replies::encode(&crate::replies::Named {
        name: name.to_string(),
    }))
}

/// Handles a `PointNotice` from process server `from` (the caller checked its granted role).
/// The notice is only a hint: the point must exist in the vault under the named machine, and
/// the catalog records what the vault says, not what the notice says. A capture time in the
/// future (beyond the allowed clock skew) is refused.
pub async fn point_notice(repl: &Repl, from: NodeId, hint: PointSummary) -> Result<(), String> {
    let vault = require_vault(repl).await?;
    let now = crate::seams::now();
    // Refused before any listing: a flood of such notices costs no store requests.
    if captured_in_future(now, hint.captured) {
        return Err(format!(
            "point {} of {} claims a capture time in the future ({})",
            hint.id,
            hint.machine,
            lifeboat_protocol::time::rfc3339(hint.captured)
        ));
    }
    if !guard(&repl.cfg.protections).contains_key(&hint.machine) {
        return Err(format!("machine {} is not protected", hint.machine));
    }
    let rec = vault
        .list_points(Some(&hint.machine))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|p| p.id == hint.id)
        .ok_or_else(|| format!("point {} of {} is not in the vault", hint.id, hint.machine))?;
    let block_size = rec.disks.first().map_or(0, |d| u64::from(d.block_size));
    let s = PointSummary {
        id: rec.id.clone(),
        machine: rec.machine,
        captured: rec.captured,
        committed: rec.committed,
        consistency: rec.consistency,
        stats: rec.stats,
        process_server: from,
    };
    let (stats, id) = (s.stats.clone(), s.id.clone());
    let taken = {
        let mut cat = guard(&repl.cfg.catalog);
        // A repeated notice of the newest point changes nothing and is not counted again.
        let again = cat.entry(&hint.machine).latest.is_some_and(|l| l.id == id);
        cat.handle_point(now, s) && !again
    };
    if taken {
        save_catalog(repl);
        guard(&repl.cfg.totals)
            .entry(hint.machine)
            .or_default()
            .add(&stats, block_size);
    }
    Ok(())
}

/// Handles a `Report` from a mobility node (only about itself).
/// A process server's health report (authorized: it holds the role).
pub fn ps_report(repl: &Repl, from: NodeId, h: lifeboat_protocol::message::PsHealthReport) {
    guard(&repl.cfg.ps_reports).insert(from, (crate::seams::now(), h));
}

/// The process servers' last reports, with their names, for status and metrics: the nodes
/// that hold the role now (one never heard from is listed without a report).
pub async fn ps_seen(repl: &Repl) -> Vec<crate::replies::PsSeen> {
    let Ok(mesh) = repl.mesh.send(lifeboat_actors::shell::GetMesh).await else {
        return vec![];
    };
    let now = crate::seams::now();
    let reports = guard(&repl.cfg.ps_reports).clone();
    mesh.members
        .iter()
        .filter(|m| {
            mesh.granted_roles(m.node_id())
                .contains(&Role::ProcessServer)
        })
        .map(|m| {
            let r = reports.get(&m.node_id());
            crate::replies::PsSeen {
                node_id: m.node_id().to_string(),
                name: m.name.clone(),
                reported_ago_ms: r.map(|(at, _)| now.millis_since(*at)),
                connected: repl.net.connected().contains(&m.node_id()),
                health: r.map(|(_, h)| h.clone()),
            }
        })
        .collect()
}

pub fn report(repl: &Repl, from: NodeId, r: ProtectionReport) {
    if !guard(&repl.cfg.protections).contains_key(&from) {
        // A machine still replicating that is not protected (any more): unprotected or failed
        // over while it was unreachable. Told again now that it is back.
        tracing::info!(machine = %from, "a machine that is not protected still replicates; telling it to stop");
        let net = repl.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net
                .request(from, Message::Unprotect { machine: from })
                .await
            {
                tracing::debug!(machine = %from, cause = %e, "could not tell the machine to stop");
            }
        });
        return;
    }
    jobs::track_full_copy(repl, from, &r);
    guard(&repl.cfg.catalog).handle_report(from, r);
}

/// The protected machines as the catalog watches them.
fn watched(repl: &Repl) -> Vec<(Watched, String)> {
    guard(&repl.cfg.protections)
        .iter()
        .map(|(id, p)| {
            (
                Watched {
                    machine: *id,
                    since: p.since,
                    threshold_secs: p.spec.policy.rpo_threshold_secs,
                },
                p.machine_name.clone(),
            )
        })
        .collect()
}

/// How often garbage collection runs by itself.
const GC_EVERY_MS: u64 = 15 * 60_000;
/// Grace period of the periodic garbage collection (longer than any upload takes).
pub const GC_GRACE_MS: u64 = 3_600_000;

/// `lifeboat vault gc`: one garbage collection now (the configuration actor's job; refused
/// while one runs).
pub async fn gc(repl: &Repl, grace_ms: u64) -> Result<Value, String> {
    require_config(repl).await?;
    let r = repl
        .config
        .send(Collect { grace_ms })
        .await
        .map_err(|_| "daemon is shutting down".to_string())??;
    Ok(serde_json::to_value(r).unwrap_or_default())
}

/// How often retention runs.
const RETENTION_EVERY_MS: u64 = 30_000;

/// Applies each protection's retention rule to its points in the vault.
async fn retention(repl: &Repl, now: UnixMillis) {
    let Some(vault) = repl.vault() else { return };
    let prots = guard(&repl.cfg.protections).clone();
    for (id, p) in prots {
        let pts = match vault.list_points(Some(&id)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(machine = %p.machine_name, cause = %e, "retention: cannot list points");
                continue;
            }
        };
        let ages: Vec<lifeboat_actors::replication::PointAge> = pts
            .iter()
            .map(|r| lifeboat_actors::replication::PointAge {
                id: r.id.clone(),
                captured: r.captured,
                consistency: r.consistency,
            })
            .collect();
        let drop: BTreeSet<String> =
            lifeboat_actors::replication::thin(&ages, now, p.spec.policy.retention_secs)
                .into_iter()
                .collect();
        let mut n = 0;
        for r in pts.iter().filter(|r| drop.contains(&r.id)) {
            match vault.delete_point(r).await {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(machine = %p.machine_name, point = %r.id, cause = %e, "retention: delete failed")
                }
            }
        }
        if n > 0 {
            tracing::info!(machine = %p.machine_name, deleted = n, kept = pts.len() - n, "retention thinned recovery points");
        }
    }
}

/// Periodic duties: vault grants to process servers, RPO alerts, retention.
pub async fn tick(repl: &Repl) {
    if !repl.roles().await.contains(&Role::Configuration) {
        return;
    }
    if let Some(grant) = repl.grant() {
        let connected: BTreeSet<NodeId> = repl
            .connected_with(Role::ProcessServer)
            .await
            .into_iter()
            .collect();
        let todo: Vec<NodeId> = {
            let mut g = guard(&repl.cfg.granted);
            g.retain(|id| connected.contains(id));
            connected
                .iter()
                .filter(|id| !g.contains(id))
                .copied()
                .collect()
        };
        for id in todo {
            match repl
                .net
                .request(id, Message::VaultGrant(grant.clone()))
                .await
            {
                Ok(Message::Accept) => {
                    guard(&repl.cfg.granted).insert(id);
                    tracing::info!(process_server = %id, "vault granted");
                }
                Ok(other) => {
                    tracing::warn!(process_server = %id, reply = other.kind(), "vault grant refused")
                }
                Err(e) => tracing::debug!(process_server = %id, cause = %e, "vault grant failed"),
            }
        }
    }
    recovery::mirror(repl).await;
    let now = crate::seams::now();
    let due = guard(&repl.cfg.duties).poll(now);
    if due.retention {
        retention(repl, now).await;
    }
    if due.gc {
        // The actor's job: a long collection does not hold up grants, retention or alerts.
        let config = repl.config.clone();
        tokio::spawn(async move {
            if let Ok(Err(e)) = config
                .send(Collect {
                    grace_ms: GC_GRACE_MS,
                })
                .await
            {
                tracing::warn!(cause = %e, "periodic garbage collection did not run");
            }
        });
    }
    let w = watched(repl);
    let ws: Vec<Watched> = w.iter().map(|(w, _)| *w).collect();
    let transitions = guard(&repl.cfg.catalog).poll_alerts(now, &ws);
    for t in transitions {
        let Some((wt, name)) = w.iter().find(|(x, _)| x.machine == t.machine) else {
            continue;
        };
        if t.raised {
            tracing::warn!(machine = %name, rpo_secs = t.rpo_ms / 1000, threshold_secs = wt.threshold_secs, "ALERT: RPO above threshold");
        } else {
            tracing::info!(machine = %name, rpo_secs = t.rpo_ms / 1000, "RPO back under threshold");
        }
        if let Some(url) = repl.cfg.webhook_url.get() {
            let hook = repl
                .cfg
                .webhook
                .get_or_init(|| crate::webhook::Webhook::start(url.clone()));
            hook.post(crate::webhook::AlertEvent {
                alert: "rpo",
                state: if t.raised { "raised" } else { "cleared" },
                machine: name.clone(),
                machine_id: t.machine.to_string(),
                rpo_seconds: t.rpo_ms as f64 / 1000.0,
                threshold_seconds: wt.threshold_secs,
                at_ms: now.0,
                at: lifeboat_protocol::time::rfc3339(now),
                node: repl.local.to_string(),
            });
        }
    }
}

/// `lifeboat status [MACHINE]` (replication part).
pub async fn status(repl: &Repl, machine: Option<String>) -> Result<Value, String> {
    let now = crate::seams::now();
    let only = match machine {
        Some(m) => Some(resolve_machine(repl, &m).await?.0),
        None => None,
    };
    let prots = guard(&repl.cfg.protections).clone();
    let cat = guard(&repl.cfg.catalog).clone();
    let drills = drill::book(repl);
    // A failed-over machine is not protected any more, and is shown with its failover.
    let fos = failover::failovers(repl);
    let mut listed = prots.clone();
    for (id, f) in &fos {
        listed.entry(*id).or_insert_with(|| f.protection.clone());
    }
    let mut machines = Vec::new();
    let totals = guard(&repl.cfg.totals).clone();
    for (id, p) in listed
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o == **id))
    {
        let fo = fos.get(id);
        let e = cat.entry(id);
        let v = cat.view(
            &Watched {
                machine: *id,
                since: p.since,
                threshold_secs: p.spec.policy.rpo_threshold_secs,
            },
            now,
        );
        let (rpo, h, state) = (v.rpo_ms, v.health, v.state);
        let pt = |s: &Option<PointSummary>| {
            s.as_ref().map(|s| crate::replies::PointRef {
                id: s.id.clone(),
                captured_ms: s.captured.0,
                consistency: s.consistency,
            })
        };
        machines.push(crate::replies::MachineStatus {
            machine: p.machine_name.clone(),
            node_id: id.to_string(),
            policy: p.spec.policy.name.clone(),
            disks: p
                .spec
                .disks
                .iter()
                .map(|d| crate::replies::DiskRef {
                    name: d.name.clone(),
                    path: d.path.clone(),
                })
                .collect(),
            state: match fo.map(|f| (f.state, f.reprotected.is_some())) {
                Some((_, true)) => "reprotected".into(),
                Some((failover::FailoverState::FailedOver, _)) => "failed-over".into(),
                Some((failover::FailoverState::Committed, _)) => "failover-committed".into(),
                None => serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            },
            rpo_ms: e.latest.is_some().then_some(rpo),
            rpo_threshold_secs: p.spec.policy.rpo_threshold_secs,
            alert: fo.is_none() && h == Health::Critical,
            latest_point: pt(&e.latest),
            latest_stats: e.latest.as_ref().map(|s| s.stats.clone()),
            latest_crash_consistent: pt(&e.latest_crash),
            latest_app_consistent: pt(&e.latest_app),
            process_server: e.latest.as_ref().map(|s| s.process_server.to_string()),
            last_error: fo
                .and_then(|f| f.error.clone())
                .or_else(|| e.report.as_ref().and_then(|r| r.last_error.clone())),
            progress_percent: e.report.as_ref().map(|r| r.progress_permille as f64 / 10.0),
            pending_bytes: e.report.as_ref().map_or(0, |r| r.pending_bytes),
            tracking: e.report.as_ref().map(|r| r.tracking.clone()),
            cycles: e.report.as_ref().map(|r| r.counters.clone()),
            totals: totals.get(id).cloned().unwrap_or_default(),
            last_drill_ms: drills.get(id).and_then(|d| d.last_ok_ms),
            drill_active: drills.get(id).is_some_and(|d| d.active.is_some()),
            drill_overdue: now.millis_since(UnixMillis(
                drills
                    .get(id)
                    .and_then(|d| d.last_ok_ms)
                    .unwrap_or(p.since.0)
                    .max(p.since.0),
            )) > drill::DRILL_WARN_MS,
        });
    }
    let local_ps = repl.roles().await.contains(&Role::ProcessServer);
    Ok(crate::replies::encode(&crate::replies::ReplStatus {
        machines,
        process_servers: ps_seen(repl).await,
        process_server: if local_ps {
            Some(ps_health(repl).await)
        } else {
            None
        },
        gc: repl.config.send(JobView).await.ok(),
        unreachable: None,
    }))
}

/// This node's process-server health (spool use, backlog age, uploads), from its actor.
pub async fn ps_health(repl: &Repl) -> crate::replies::PsHealth {
    repl.ps_actor
        .send(super::ps::Health)
        .await
        .unwrap_or_default()
}

/// `lifeboat throttle`: this process server's upload bandwidth policy.
pub async fn throttle(
    repl: &Repl,
    work: Option<String>,
    off: Option<String>,
    hours: Option<String>,
    clear: bool,
) -> Result<Value, String> {
    use lifeboat_actors::replication::{parse_rate, parse_work_hours, Throttle};
    // The limit is the process server's upload to the vault: set anywhere else, it would be
    // reported as set and do nothing.
    if !repl.roles().await.contains(&Role::ProcessServer) {
        return Err("this node is not a process server, so it uploads nothing to throttle; run `lifeboat throttle` on a process server (see `lifeboat peers` for their roles)".into());
    }
    let t = if clear {
        None
    } else {
        let work_bps = work.as_deref().map(parse_rate).transpose()?;
        let off_bps = match off.as_deref() {
            Some(o) => Some(parse_rate(o)?),
            None => work_bps,
        };
        let (work_minutes, utc_offset_min) = match hours.as_deref() {
            Some(h) => parse_work_hours(h)?,
            None => ((0, 1440), 0),
        };
        if work_bps.is_none() && off_bps.is_none() {
            return Err(
                "give --bandwidth-limit and/or --off-hours-limit (or --off to remove the limit)"
                    .into(),
            );
        }
        Some(Throttle {
            work_bps,
            off_bps,
            work_minutes,
            utc_offset_min,
        })
    };
    save(&repl.dir.root.join("throttle.json"), &t, 0o644)?;
    let _ = repl.ps_actor.send(super::ps::SetThrottle(t.clone())).await;
    Ok(crate::replies::encode(&crate::replies::ThrottleReply {
        now_bytes_per_sec: t.as_ref().and_then(|t| t.rate_at(crate::seams::now())),
        throttle: t,
    }))
}
