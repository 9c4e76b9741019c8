//! Replication: the mobility side (change capture and shipping), the process-server side
//! (spool, seal, pack, dedup, upload, commit) and the configuration side (vault, policies,
//! protections, catalog of points, RPO alerts). The decisions (when to run a cycle, RPO
//! health, retention) are the sans-IO state machines of `lifeboat_actors::replication`; this
//! module is their I/O shell.
//!
//! State files (in the node's state directory):
//! - configuration node: `vault.json` (0600), `policies.json`, `protections.json`, `catalog.json`
//! - process server: `vault.json` (0600, from a `VaultGrant`), `spool/`
//! - mobility node: `protection.json`, `replica.json`, `hashes/<disk>.bin`
//! - a drill's or failover's target: `landings.json`, `landing-maps/<job>/<disk>.bin`

pub mod config_side;
pub mod landing;
pub mod mobility;
pub mod ps;

use crate::net::Net;
use crate::vault::{store_from_url, Vault, VaultConfig, VaultError};
use actix::Addr;
use lifeboat_actors::shell::{GetMesh, GetRoles, MeshActor, PeersActor, RolesActor};
use lifeboat_config::state::write_file_atomic;
use lifeboat_config::StateDir;
use lifeboat_protocol::message::VaultGrant;
use lifeboat_protocol::{Message, NodeId, Role};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// Loads a JSON state file (None if absent).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Saves a JSON state file atomically.
pub fn save<T: Serialize>(path: &Path, v: &T, mode: u32) -> Result<(), String> {
    let b = serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?;
    write_file_atomic(path, &b, mode).map_err(|e| e.to_string())
}

/// Shared replication state of a node (all three sides; each is idle unless its role is held).
pub struct Repl {
    /// State directory.
    pub dir: StateDir,
    /// Network.
    pub net: Net,
    /// This node.
    pub local: NodeId,
    /// This node's name.
    pub name: String,
    /// Roles actor.
    pub roles: Addr<RolesActor>,
    /// Mesh actor.
    pub mesh: Addr<MeshActor>,
    /// Peers actor.
    pub peers: Addr<PeersActor>,
    /// Long operations on this (configuration) node, in `jobs.redb`.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// The open vault (configuration and process-server nodes).
    pub vault: RwLock<Option<Arc<Vault>>>,
    /// How to reach it.
    pub vault_cfg: Mutex<Option<VaultConfig>>,
    /// Configuration-side state.
    pub cfg: config_side::ConfigState,
    /// Mobility-side state.
    pub mob: mobility::MobilityState,
    /// The configuration role's actor: owns its duties loop and the collection job.
    pub config: Addr<config_side::ConfigActor>,
    /// The mobility role's actor: owns this machine's protection job.
    pub mobility: Addr<mobility::MobilityActor>,
    /// The process-server role's actor: owns its state, admits sessions, drains them at
    /// shutdown.
    pub ps_actor: Addr<ps::ProcessServerActor>,
}

impl std::fmt::Debug for Repl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repl({})", self.local)
    }
}

impl Repl {
    /// Loads persisted replication state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: StateDir,
        net: Net,
        local: NodeId,
        name: String,
        roles: Addr<RolesActor>,
        mesh: Addr<MeshActor>,
        peers: Addr<PeersActor>,
        spool_max_bytes: u64,
        spool_memory_bytes: u64,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Repl>, String> {
        let vault_cfg: Option<VaultConfig> = load(&dir.root.join("vault.json"))?;
        let cfg = config_side::ConfigState::load(&dir)?;
        let ps = ps::PsState::new(&dir, spool_max_bytes, spool_memory_bytes)?;
        let jobs = crate::jobs::Jobs::open(&dir.root.join("jobs.redb"))?;
        let r = Arc::new_cyclic(|me| Repl {
            jobs,
            config: actix::Actor::start(config_side::ConfigActor::new(me.clone(), rt.clone())),
            mobility: actix::Actor::start(mobility::MobilityActor::new(me.clone(), rt)),
            dir,
            net,
            local,
            name,
            roles,
            mesh,
            peers,
            vault: RwLock::new(None),
            vault_cfg: Mutex::new(vault_cfg),
            cfg,
            mob: mobility::MobilityState::default(),
            ps_actor: actix::Actor::start(ps::ProcessServerActor::new(ps)),
        });
        Ok(r)
    }

    /// The open vault, if any.
    pub fn vault(&self) -> Option<Arc<Vault>> {
        self.vault.read().ok().and_then(|v| v.clone())
    }

    /// Opens the vault named in `vault.json`, if any (retried by the caller on failure).
    pub async fn open_vault(&self) -> Result<Option<Arc<Vault>>, VaultError> {
        if let Some(v) = self.vault() {
            return Ok(Some(v));
        }
        let Some(cfg) = self.vault_cfg.lock().ok().and_then(|c| c.clone()) else {
            return Ok(None);
        };
        let key = cfg
            .key()
            .ok_or_else(|| VaultError::WrongKey(cfg.name.clone()))?;
        let store = store_from_url(&cfg.url, &cfg.options)?;
        let v = Arc::new(Vault::open(store, key).await?);
        tracing::info!(vault = %cfg.name, url = %cfg.url, blocks = v.indexed_blocks(), "vault open");
        if let Ok(mut g) = self.vault.write() {
            *g = Some(v.clone());
        }
        Ok(Some(v))
    }

    /// Adopts a vault (created here, or granted by the configuration node).
    pub fn set_vault_config(&self, cfg: VaultConfig) -> Result<(), String> {
        save(&self.dir.root.join("vault.json"), &cfg, 0o600)?;
        if let Ok(mut g) = self.vault_cfg.lock() {
            *g = Some(cfg);
        }
        if let Ok(mut g) = self.vault.write() {
            *g = None;
        }
        Ok(())
    }

    /// Forgets the vault (its key and store options) on a node that no longer holds a role
    /// that needs it: a process server whose role was withdrawn keeps no credentials.
    /// Never on the mesh authority: its `vault.json` is the vault's only key, kept whatever
    /// roles it holds at the moment.
    pub async fn drop_vault_unless_needed(&self) {
        let roles = self.roles().await;
        if roles.contains(&Role::Configuration) || roles.contains(&Role::ProcessServer) {
            return;
        }
        let authority = self
            .mesh
            .send(GetMesh)
            .await
            .map_or(true, |m| m.local_is_authority || m.mesh_id.is_none());
        if authority {
            return;
        }
        let had = self
            .vault_cfg
            .lock()
            .ok()
            .and_then(|mut c| c.take())
            .is_some();
        if !had {
            return;
        }
        if let Ok(mut g) = self.vault.write() {
            *g = None;
        }
        let path = self.dir.root.join("vault.json");
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!("process-server role withdrawn: vault key and store options removed")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), cause = %e, "could not remove the vault grant")
            }
        }
    }

    /// The grant a process server needs.
    pub fn grant(&self) -> Option<VaultGrant> {
        let c = self.vault_cfg.lock().ok()?.clone()?;
        let key = c.key()?;
        Some(VaultGrant {
            name: c.name.clone(),
            url: c.url.clone(),
            master_key: key.master(),
            rotations: key.rotations().to_vec(),
            options: c.grant_options.unwrap_or(c.options).into_iter().collect(),
        })
    }

    /// This node's roles.
    pub async fn roles(&self) -> Vec<Role> {
        self.roles.send(GetRoles).await.unwrap_or_default()
    }

    /// Connected members the configuration node granted `role` (the membership record, never
    /// what a peer says of itself).
    pub async fn connected_with(&self, role: Role) -> Vec<NodeId> {
        let Ok(mesh) = self.mesh.send(GetMesh).await else {
            return vec![];
        };
        let connected = self.net.connected();
        mesh.members
            .iter()
            .filter(|m| m.roles.contains(&role))
            .map(|m| m.node_id())
            .filter(|id| *id != self.local && connected.contains(id))
            .collect()
    }

    /// True if the configuration node granted member `id` the role.
    pub async fn granted(&self, id: NodeId, role: Role) -> bool {
        self.mesh
            .send(GetMesh)
            .await
            .is_ok_and(|m| m.granted_roles(id).contains(&role))
    }

    /// The configuration nodes (mesh authorities) we are connected to.
    pub async fn authorities(&self) -> Vec<NodeId> {
        let m = match self.mesh.send(GetMesh).await {
            Ok(m) => m,
            Err(_) => return vec![],
        };
        let connected = self.net.connected();
        m.authorities
            .iter()
            .map(|k| k.node_id())
            .filter(|id| connected.contains(id))
            .collect()
    }

    /// Sends a one-way message to every connected authority.
    pub async fn tell_authorities(&self, msg: Message) {
        for id in self.authorities().await {
            if let Err(e) = lifeboat_actors::seams::Transport::send(&self.net, id, msg.clone()) {
                tracing::debug!(to = %id, cause = %e, "could not notify the configuration node");
            }
        }
    }
}

/// A disk name from its path: the file name, restricted to `[A-Za-z0-9._-]`.
pub fn disk_name(path: &str) -> String {
    let base = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("disk");
    let s: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        // Room for a `disk` prefix or a `-N` suffix within the name rule's 63.
        .take(56)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("disk{s}")
    } else {
        s
    }
}

/// True if `name` is a safe disk name (it becomes a file name on several nodes): the one
/// name rule, [`Name`](lifeboat_protocol::name::Name).
pub fn valid_disk_name(name: &str) -> bool {
    lifeboat_protocol::name::Name::parse("disk", name).is_ok()
}
