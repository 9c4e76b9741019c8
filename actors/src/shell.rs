//! The actix actors that host the state machines in the daemon. Each is a thin shell: it owns
//! one state machine, feeds it `now` from the [`Clock`] seam, performs the returned actions
//! through the other seams, persists through [`StateStore`] and tells subscribers of changes.
//!
//! Mailboxes are bounded (actix's default capacity of 16 queued `send`s per sender); callers
//! from the network side use `try_send` for droppable traffic (heartbeats, discovery) and
//! `send().await` for requests, so a flood from the network backs up in the network task, not
//! in memory here.

use crate::mesh::{Mesh, MeshError, PskKind};
use crate::peers::{Liveness, PeerAction, PeerEntry, PeerTable, Source};
use crate::roles::RoleSet;
use crate::seams::{Announcement, Clock, Discovered, Discovery, Rng, StateStore, Transport};
use actix::prelude::*;
use lifeboat_config::state::RolesFile;
use lifeboat_protocol::handshake::PskId;
use lifeboat_protocol::message::{Member, MeshGrant, RegisterRefusal, RoleOp};
use lifeboat_protocol::regkey::RegistrationKey;
use lifeboat_protocol::{Message, NodeId, PublicKey, Role, UnixMillis};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------- roles

/// The roles changed; carries the new set.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct RolesChanged(pub Vec<Role>);

/// Add or remove a role.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Role>, String>")]
pub struct ApplyRole {
    /// Add or remove.
    pub op: RoleOp,
    /// Which.
    pub role: Role,
}

/// Read the roles.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Role>")]
pub struct GetRoles;

/// Subscribe to role changes.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SubscribeRoles(pub Recipient<RolesChanged>);

/// Replace the roles with the set the mesh authority granted (a member's roles follow the
/// membership list; see [`crate::mesh`]).
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Role>, String>")]
pub struct SetRoles(pub BTreeSet<Role>);

/// Owns the node's [`RoleSet`].
pub struct RolesActor {
    /// The roles.
    roles: RoleSet,
    /// Persistence.
    store: Box<dyn StateStore>,
    /// Who hears about changes (peers for heartbeats, discovery for announcements).
    subscribers: Vec<Recipient<RolesChanged>>,
}

impl std::fmt::Debug for RolesActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolesActor")
            .field("roles", &self.roles)
            .finish()
    }
}

impl RolesActor {
    /// From persisted roles.
    pub fn new(roles: BTreeSet<Role>, store: Box<dyn StateStore>) -> Self {
        RolesActor {
            roles: RoleSet::new(roles),
            store,
            subscribers: Vec::new(),
        }
    }
}

impl Actor for RolesActor {
    type Context = Context<Self>;
}

impl RolesActor {
    /// Persists and announces `next` if it differs; on a persistence failure keeps the old set.
    fn replace(&mut self, next: RoleSet) -> Result<Vec<Role>, String> {
        if next == self.roles {
            return Ok(self.roles.to_vec());
        }
        let file = RolesFile {
            roles: next.as_set().clone(),
        };
        if let Err(e) = self.store.save_roles(&file) {
            // Persist first: a role that would vanish at restart is not applied.
            tracing::error!(cause = %e, "saving roles failed");
            return Err(format!("could not save roles: {e}"));
        }
        tracing::info!(before = ?self.roles.to_vec(), roles = ?next.to_vec(), "roles changed");
        self.roles = next;
        let now = self.roles.to_vec();
        for s in &self.subscribers {
            s.do_send(RolesChanged(now.clone()));
        }
        Ok(now)
    }
}

impl Handler<ApplyRole> for RolesActor {
    type Result = Result<Vec<Role>, String>;
    fn handle(&mut self, msg: ApplyRole, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.roles.clone();
        next.apply(msg.op, msg.role);
        self.replace(next)
    }
}

impl Handler<SetRoles> for RolesActor {
    type Result = Result<Vec<Role>, String>;
    fn handle(&mut self, msg: SetRoles, _: &mut Context<Self>) -> Self::Result {
        self.replace(RoleSet::new(msg.0))
    }
}

impl Handler<GetRoles> for RolesActor {
    type Result = Vec<Role>;
    fn handle(&mut self, _: GetRoles, _: &mut Context<Self>) -> Vec<Role> {
        self.roles.to_vec()
    }
}

impl Handler<SubscribeRoles> for RolesActor {
    type Result = ();
    fn handle(&mut self, msg: SubscribeRoles, _: &mut Context<Self>) {
        msg.0.do_send(RolesChanged(self.roles.to_vec()));
        self.subscribers.push(msg.0);
    }
}

// ---------------------------------------------------------------- mesh

/// The membership changed (or was first loaded).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct MembersChanged {
    /// Mesh id, if joined.
    pub mesh_id: Option<[u8; 16]>,
    /// Membership version.
    pub version: u64,
    /// Members.
    pub members: Vec<Member>,
    /// Authorities of the mesh.
    pub authorities: Vec<PublicKey>,
    /// True if this node is an authority (it publishes the list to peers).
    pub local_is_authority: bool,
    /// The current mesh secret, published with the list by an authority (so a rotation
    /// reaches every member); redacted in debug output.
    pub secret: Option<Secret>,
    /// Until when the rotated-out secret is accepted (published with the list).
    pub previous_until: Option<UnixMillis>,
}

/// A mesh secret in transit between actors: never shown by `Debug`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl MembersChanged {
    /// The membership list as the authority publishes it.
    pub fn update_message(&self) -> Message {
        Message::MembershipUpdate {
            version: self.version,
            members: self.members.clone(),
            secret: self
                .secret
                .map(|s| lifeboat_protocol::message::MeshSecret(s.0)),
            previous_until: self.previous_until,
        }
    }

    /// The roles the authority granted `id`.
    pub fn granted_roles(&self, id: NodeId) -> Vec<Role> {
        self.members
            .iter()
            .find(|m| m.node_id() == id)
            .map(|m| m.roles.clone())
            .unwrap_or_default()
    }

    /// The member a person means by `s` (node id or unique name).
    pub fn resolve(&self, s: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.node_id().to_string() == s)
            .or_else(|| self.members.iter().find(|m| m.name == s))
    }
}

/// Subscribe to membership changes.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SubscribeMembers(pub Recipient<MembersChanged>);

/// Create a mesh with this node as authority.
#[derive(Message, Debug)]
#[rtype(result = "Result<[u8; 16], MeshError>")]
pub struct CreateMesh {
    /// This node's name.
    pub name: String,
    /// This node's addresses.
    pub addrs: Vec<SocketAddr>,
    /// This node's roles (the first entry of the roles record).
    pub roles: Vec<Role>,
}

/// Grant or withdraw a member's role (authority only).
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Role>, MeshError>")]
pub struct AssignRole {
    /// The member.
    pub target: NodeId,
    /// Add or remove.
    pub op: RoleOp,
    /// Which role.
    pub role: Role,
}

/// Evict a member (authority only).
#[derive(Message, Debug)]
#[rtype(result = "Result<Member, MeshError>")]
pub struct RemoveMember(pub NodeId);

/// Replace the mesh secret (authority only); the old one is accepted for `grace_ms`.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), MeshError>")]
pub struct RotateSecret {
    /// How long the old secret stays accepted.
    pub grace_ms: u64,
}

/// Issue a registration key.
#[derive(Message, Debug)]
#[rtype(result = "Result<RegistrationKey, MeshError>")]
pub struct IssueKey {
    /// Validity in milliseconds.
    pub validity_ms: u64,
    /// Addresses to put in the key.
    pub addrs: Vec<SocketAddr>,
}

/// Resolve a PSK id during a handshake.
#[derive(Message, Debug)]
#[rtype(result = "Option<PskKind>")]
pub struct ResolvePsk(pub PskId);

/// What the handshake needs to know about a peer's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyStatus {
    /// On the membership list.
    pub member: bool,
    /// An authority of the mesh.
    pub authority: bool,
}

/// Check a key.
#[derive(Message, Debug)]
#[rtype(result = "KeyStatus")]
pub struct CheckKey(pub PublicKey);

/// Decide a registration.
#[derive(Message, Debug)]
#[rtype(result = "Result<MeshGrant, RegisterRefusal>")]
pub struct Register {
    /// PSK id used by the joiner.
    pub key_id: PskId,
    /// Joiner's key.
    pub joiner: PublicKey,
    /// Joiner's name.
    pub name: String,
    /// Joiner's addresses.
    pub addrs: Vec<SocketAddr>,
    /// Joiner's clock.
    pub joiner_now: UnixMillis,
}

/// Join a mesh from a grant.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), MeshError>")]
pub struct Join {
    /// The grant.
    pub grant: MeshGrant,
    /// The registrar.
    pub authority: PublicKey,
}

/// A membership list from a peer.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct MembershipIn {
    /// Sender.
    pub from: PublicKey,
    /// Version.
    pub version: u64,
    /// List.
    pub members: Vec<Member>,
    /// The current secret, if the sender published it.
    pub secret: Option<Secret>,
    /// Until when the previous secret is accepted, as the sender published it.
    pub previous_until: Option<UnixMillis>,
}

/// Read the mesh summary.
#[derive(Message, Debug)]
#[rtype(result = "MembersChanged")]
pub struct GetMesh;

/// A member's addresses as seen by the authority.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MemberAddrs {
    /// Member.
    pub id: NodeId,
    /// Addresses.
    pub addrs: Vec<SocketAddr>,
}

/// Owns the node's [`Mesh`].
pub struct MeshActor {
    /// Membership state.
    mesh: Mesh,
    /// Persistence.
    store: Box<dyn StateStore>,
    /// Time.
    clock: Arc<dyn Clock>,
    /// Seeds for secrets.
    rng: Box<dyn Rng>,
    /// Who hears about membership changes.
    subscribers: Vec<Recipient<MembersChanged>>,
}

impl std::fmt::Debug for MeshActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshActor")
            .field("mesh", &self.mesh.mesh_id())
            .finish()
    }
}

impl MeshActor {
    /// Hosts `mesh`.
    pub fn new(
        mesh: Mesh,
        store: Box<dyn StateStore>,
        clock: Arc<dyn Clock>,
        rng: Box<dyn Rng>,
    ) -> Self {
        MeshActor {
            mesh,
            store,
            clock,
            rng,
            subscribers: Vec::new(),
        }
    }

    fn summary(&self) -> MembersChanged {
        MembersChanged {
            mesh_id: self.mesh.mesh_id(),
            version: self.mesh.version(),
            members: self.mesh.members().to_vec(),
            authorities: self
                .mesh
                .file()
                .map(|f| f.authorities.clone())
                .unwrap_or_default(),
            local_is_authority: self.mesh.is_authority(),
            secret: self
                .mesh
                .is_authority()
                .then(|| self.mesh.secret().map(Secret))
                .flatten(),
            previous_until: self
                .mesh
                .file()
                .and_then(|f| f.previous_secret.as_ref().map(|p| p.until)),
        }
    }

    /// Persists and notifies; on a persistence failure restores `before` and returns the error.
    fn commit(&mut self, before: Mesh) -> Result<(), String> {
        if let Some(f) = self.mesh.file() {
            if let Err(e) = self.store.save_mesh(f) {
                self.mesh = before;
                tracing::error!(cause = %e, "saving mesh state failed");
                return Err(e);
            }
        }
        let s = self.summary();
        for sub in &self.subscribers {
            sub.do_send(s.clone());
        }
        Ok(())
    }
}

impl Actor for MeshActor {
    type Context = Context<Self>;
}

impl Handler<SubscribeMembers> for MeshActor {
    type Result = ();
    fn handle(&mut self, msg: SubscribeMembers, _: &mut Context<Self>) {
        msg.0.do_send(self.summary());
        self.subscribers.push(msg.0);
    }
}

impl Handler<CreateMesh> for MeshActor {
    type Result = Result<[u8; 16], MeshError>;
    fn handle(&mut self, msg: CreateMesh, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let now = self.clock.now();
        let seed = self.rng.seed32();
        let id = self
            .mesh
            .create(now, seed, &msg.name, msg.addrs, msg.roles)?
            .mesh_id;
        self.commit(before).map_err(MeshError::Persist)?;
        Ok(id)
    }
}

impl Handler<AssignRole> for MeshActor {
    type Result = Result<Vec<Role>, MeshError>;
    fn handle(&mut self, m: AssignRole, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let (roles, changed) = self.mesh.assign_role(m.target, m.op, m.role)?;
        if changed {
            self.commit(before).map_err(MeshError::Persist)?;
            tracing::info!(node = %m.target, op = ?m.op, role = %m.role, roles = ?roles, "role assignment recorded");
        }
        Ok(roles)
    }
}

impl Handler<RemoveMember> for MeshActor {
    type Result = Result<Member, MeshError>;
    fn handle(&mut self, m: RemoveMember, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let gone = self.mesh.remove_member(m.0)?;
        self.commit(before).map_err(MeshError::Persist)?;
        tracing::warn!(node = %m.0, name = %gone.name, "member removed from the mesh");
        Ok(gone)
    }
}

impl Handler<RotateSecret> for MeshActor {
    type Result = Result<(), MeshError>;
    fn handle(&mut self, m: RotateSecret, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let now = self.clock.now();
        let seed = self.rng.seed32();
        self.mesh.rotate_secret(now, seed, m.grace_ms)?;
        self.commit(before).map_err(MeshError::Persist)?;
        tracing::warn!("mesh secret rotated");
        Ok(())
    }
}

impl Handler<IssueKey> for MeshActor {
    type Result = Result<RegistrationKey, MeshError>;
    fn handle(&mut self, msg: IssueKey, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let now = self.clock.now();
        let seed = self.rng.seed32();
        let key = self.mesh.issue_key(now, msg.validity_ms, seed, msg.addrs)?;
        self.commit(before).map_err(MeshError::Persist)?;
        Ok(key)
    }
}

impl Handler<ResolvePsk> for MeshActor {
    type Result = Option<PskKind>;
    fn handle(&mut self, msg: ResolvePsk, _: &mut Context<Self>) -> Option<PskKind> {
        self.mesh.psk_for(&msg.0, self.clock.now())
    }
}

impl Handler<CheckKey> for MeshActor {
    type Result = MessageResult<CheckKey>;
    fn handle(&mut self, msg: CheckKey, _: &mut Context<Self>) -> Self::Result {
        MessageResult(KeyStatus {
            member: self.mesh.admits(&msg.0),
            authority: self.mesh.is_authority_key(&msg.0),
        })
    }
}

impl Handler<Register> for MeshActor {
    type Result = Result<MeshGrant, RegisterRefusal>;
    fn handle(&mut self, m: Register, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        let now = self.clock.now();
        let grant =
            self.mesh
                .handle_register(now, &m.key_id, m.joiner, &m.name, m.addrs, m.joiner_now)?;
        if self.commit(before).is_err() {
            // Nothing was persisted, so nothing is granted.
            return Err(RegisterRefusal::Unavailable);
        }
        tracing::info!(node = %m.joiner.node_id(), name = %m.name, "node registered");
        Ok(grant)
    }
}

impl Handler<Join> for MeshActor {
    type Result = Result<(), MeshError>;
    fn handle(&mut self, m: Join, _: &mut Context<Self>) -> Self::Result {
        let before = self.mesh.clone();
        self.mesh.join(m.grant, m.authority)?;
        self.commit(before).map_err(MeshError::Persist)
    }
}

impl Handler<MembershipIn> for MeshActor {
    type Result = bool;
    fn handle(&mut self, m: MembershipIn, _: &mut Context<Self>) -> bool {
        let before = self.mesh.clone();
        let now = self.clock.now();
        if self.mesh.handle_membership_update(
            now,
            &m.from,
            m.version,
            m.members,
            m.secret.map(|s| s.0),
            m.previous_until,
        ) {
            return self.commit(before).is_ok();
        }
        false
    }
}

impl Handler<MemberAddrs> for MeshActor {
    type Result = ();
    fn handle(&mut self, m: MemberAddrs, _: &mut Context<Self>) {
        let before = self.mesh.clone();
        if self.mesh.update_member_addrs(m.id, m.addrs) {
            let _ = self.commit(before);
        }
    }
}

impl Handler<GetMesh> for MeshActor {
    type Result = MessageResult<GetMesh>;
    fn handle(&mut self, _: GetMesh, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.summary())
    }
}

// ---------------------------------------------------------------- peers

/// A peer found by discovery.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DiscoveredMsg(pub Discovered);

/// A connection was authenticated.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConnectedMsg {
    /// Peer.
    pub id: NodeId,
    /// Connection generation.
    pub conn: u64,
    /// Remote address.
    pub addr: SocketAddr,
    /// Peer's name.
    pub name: String,
    /// Peer's roles.
    pub roles: Vec<Role>,
    /// Peer's listen port.
    pub listen_port: u16,
    /// We dialed.
    pub outbound: bool,
}

/// A connection closed: peer and connection generation.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DisconnectedMsg(pub NodeId, pub u64);

/// A dial failed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DialFailedMsg(pub SocketAddr);

/// A heartbeat arrived.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct HeartbeatMsg {
    /// Sender.
    pub from: PublicKey,
    /// Sender's name.
    pub name: String,
    /// Sender's roles.
    pub roles: Vec<Role>,
    /// Sender's membership version.
    pub membership_version: u64,
}

/// One row of `lifeboat peers`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerView {
    /// Node id.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Addresses.
    pub addrs: Vec<SocketAddr>,
    /// How found.
    pub found_by: Vec<Source>,
    /// Liveness now.
    pub state: Liveness,
    /// On our membership list.
    pub member: bool,
    /// Connected now.
    pub connected: bool,
    /// Last authenticated contact.
    pub last_contact_ms: Option<u64>,
    /// Milliseconds since last contact.
    pub last_contact_age_ms: Option<u64>,
}

/// List the peers.
#[derive(Message, Debug)]
#[rtype(result = "Vec<PeerView>")]
pub struct ListPeers;

/// Owns the [`PeerTable`].
pub struct PeersActor {
    /// The table.
    table: PeerTable,
    /// Our name (for heartbeats).
    name: String,
    /// Our listen port.
    listen_port: u16,
    /// Our roles (for heartbeats).
    roles: Vec<Role>,
    /// Our membership view.
    mesh: Option<MembersChanged>,
    /// Sends and dials.
    transport: Arc<dyn Transport>,
    /// Time.
    clock: Arc<dyn Clock>,
    /// Mesh actor (to pull newer membership, record addresses).
    mesh_actor: Option<Addr<MeshActor>>,
    /// Timer period.
    tick: Duration,
}

impl std::fmt::Debug for PeersActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeersActor")
            .field("name", &self.name)
            .finish()
    }
}

impl PeersActor {
    /// Hosts `table`.
    pub fn new(
        table: PeerTable,
        name: String,
        listen_port: u16,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        mesh_actor: Option<Addr<MeshActor>>,
        tick: Duration,
    ) -> Self {
        PeersActor {
            table,
            name,
            listen_port,
            roles: Vec::new(),
            mesh: None,
            transport,
            clock,
            mesh_actor,
            tick,
        }
    }

    fn heartbeat(&self) -> Message {
        Message::Heartbeat {
            now: self.clock.now(),
            name: self.name.clone(),
            roles: self.roles.clone(),
            listen_port: self.listen_port,
            membership_version: self.mesh.as_ref().map_or(0, |m| m.version),
        }
    }

    fn run_poll(&mut self) {
        let now = self.clock.now();
        for action in self.table.poll(now) {
            match action {
                PeerAction::Dial { addr, expect } => self.transport.dial(addr, expect),
                PeerAction::Heartbeat(id) => match self.transport.send(id, self.heartbeat()) {
                    Err(crate::seams::TransportError::NotConnected(_)) => {
                        self.table.handle_not_connected(id)
                    }
                    Err(e) => tracing::debug!(peer = %id, cause = %e, "heartbeat not sent"),
                    Ok(()) => {}
                },
                PeerAction::BecameUnreachable(id) => {
                    tracing::warn!(peer = %id, "peer unreachable")
                }
                PeerAction::Forgot(id) => tracing::info!(peer = %id, "peer forgotten"),
            }
        }
    }

    fn view(&self, e: &PeerEntry, now: UnixMillis) -> PeerView {
        // A member's name and roles are the ones on the authority's record; only a stranger's
        // are what it says of itself (heartbeats and mDNS are claims).
        let record = self
            .mesh
            .as_ref()
            .and_then(|m| m.members.iter().find(|x| x.node_id() == e.node_id));
        PeerView {
            node_id: e.node_id.to_string(),
            name: record.map_or_else(|| e.name.clone(), |m| m.name.clone()),
            roles: record.map_or_else(|| e.roles.clone(), |m| m.roles.clone()),
            addrs: e.addrs.iter().copied().collect(),
            found_by: e.sources.iter().copied().collect(),
            state: self.table.liveness(e, now),
            member: e.member,
            connected: e.connected,
            last_contact_ms: e.last_contact.map(|t| t.0),
            last_contact_age_ms: e.last_contact.map(|t| now.millis_since(t)),
        }
    }

    fn publish_membership(&self) {
        let Some(m) = &self.mesh else { return };
        if !m.local_is_authority {
            return;
        }
        let msg = m.update_message();
        for e in self.table.entries().filter(|e| e.connected) {
            let _ = self.transport.send(e.node_id, msg.clone());
        }
    }
}

impl Actor for PeersActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.tick, |act, _| act.run_poll());
    }
}

impl Handler<DiscoveredMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DiscoveredMsg, _: &mut Context<Self>) {
        let d = m.0;
        self.table
            .handle_discovered(self.clock.now(), d.node_id, &d.name, &d.roles, &d.addrs);
    }
}

impl Handler<ConnectedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: ConnectedMsg, _: &mut Context<Self>) {
        let now = self.clock.now();
        self.table.handle_connected(
            now,
            m.id,
            m.conn,
            m.addr,
            &m.name,
            &m.roles,
            m.listen_port,
            m.outbound,
        );
        // Greet at once so the peer sees our roles without waiting a heartbeat period.
        let _ = self.transport.send(m.id, self.heartbeat());
        if let Some(mesh) = &self.mesh {
            if mesh.local_is_authority {
                let _ = self.transport.send(m.id, mesh.update_message());
                if let Some(a) = &self.mesh_actor {
                    let addr = SocketAddr::new(m.addr.ip(), m.listen_port);
                    let _ = a.try_send(MemberAddrs {
                        id: m.id,
                        addrs: vec![addr],
                    });
                }
            }
        }
    }
}

impl Handler<DisconnectedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DisconnectedMsg, _: &mut Context<Self>) {
        self.table.handle_disconnected(self.clock.now(), m.0, m.1);
    }
}

impl Handler<DialFailedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DialFailedMsg, _: &mut Context<Self>) {
        self.table.handle_dial_failed(self.clock.now(), m.0);
    }
}

impl Handler<HeartbeatMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: HeartbeatMsg, _: &mut Context<Self>) {
        let id = m.from.node_id();
        self.table
            .handle_heartbeat(self.clock.now(), id, &m.name, &m.roles);
        let ours = self.mesh.as_ref().map_or(0, |x| x.version);
        let from_authority = self
            .mesh
            .as_ref()
            .is_some_and(|x| x.authorities.contains(&m.from));
        if m.membership_version > ours && from_authority {
            let _ = self.transport.send(id, Message::MembershipRequest);
        }
    }
}

impl Handler<RolesChanged> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: RolesChanged, _: &mut Context<Self>) {
        self.roles = m.0;
        // Tell connected peers now rather than at the next heartbeat.
        let hb = self.heartbeat();
        for e in self.table.entries().filter(|e| e.connected) {
            let _ = self.transport.send(e.node_id, hb.clone());
        }
    }
}

impl Handler<MembersChanged> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: MembersChanged, _: &mut Context<Self>) {
        self.table.set_can_dial(m.mesh_id.is_some());
        self.table.handle_members(self.clock.now(), &m.members);
        let changed = self.mesh.as_ref().map(|x| x.version) != Some(m.version);
        self.mesh = Some(m);
        if changed {
            self.publish_membership();
        }
        self.run_poll();
    }
}

impl Handler<ListPeers> for PeersActor {
    type Result = Vec<PeerView>;
    fn handle(&mut self, _: ListPeers, _: &mut Context<Self>) -> Vec<PeerView> {
        let now = self.clock.now();
        self.table.entries().map(|e| self.view(e, now)).collect()
    }
}

// ---------------------------------------------------------------- discovery

/// Hosts a [`Discovery`] implementation and keeps our announcement current.
pub struct DiscoveryActor {
    /// The mechanism (mDNS in production).
    discovery: Box<dyn Discovery>,
    /// What we announce.
    ann: Announcement,
}

impl std::fmt::Debug for DiscoveryActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryActor")
            .field("ann", &self.ann)
            .finish()
    }
}

impl DiscoveryActor {
    /// Announces `ann` through `discovery` once started.
    pub fn new(discovery: Box<dyn Discovery>, ann: Announcement) -> Self {
        DiscoveryActor { discovery, ann }
    }
}

impl Actor for DiscoveryActor {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.discovery.announce(&self.ann);
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.discovery.withdraw();
    }
}

impl Handler<RolesChanged> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, m: RolesChanged, _: &mut Context<Self>) {
        if self.ann.roles != m.0 {
            self.ann.roles = m.0;
            self.discovery.announce(&self.ann);
        }
    }
}

impl Handler<MembersChanged> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, m: MembersChanged, _: &mut Context<Self>) {
        let mesh = m.mesh_id.as_ref().map(crate::mesh::mesh_id_hex);
        if self.ann.mesh != mesh {
            self.ann.mesh = mesh;
            self.discovery.announce(&self.ann);
        }
    }
}

/// Stop announcing (shutdown): withdraws our record and stops the actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopDiscovery;

impl Handler<StopDiscovery> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, _: StopDiscovery, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Read the mesh secret and, while it is still accepted, the rotated-out one (for the
/// transport only; never logged).
#[derive(Message)]
#[rtype(result = "(Option<[u8; 32]>, Option<[u8; 32]>)")]
pub struct GetSecret;

impl std::fmt::Debug for GetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GetSecret")
    }
}

impl Handler<GetSecret> for MeshActor {
    type Result = MessageResult<GetSecret>;
    fn handle(&mut self, _: GetSecret, _: &mut Context<Self>) -> Self::Result {
        MessageResult((
            self.mesh.secret(),
            self.mesh.previous_secret(self.clock.now()),
        ))
    }
}

/// The membership list as a message, if this node is an authority.
#[derive(Message, Debug)]
#[rtype(result = "Option<Message>")]
pub struct MembershipMessage;

impl Handler<MembershipMessage> for MeshActor {
    type Result = Option<Message>;
    fn handle(&mut self, _: MembershipMessage, _: &mut Context<Self>) -> Option<Message> {
        self.mesh.membership_message()
    }
}
