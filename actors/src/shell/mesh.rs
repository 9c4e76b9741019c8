//! The mesh actor: hosts the node's [`Mesh`] (membership, granted roles, registration keys,
//! eviction, secret rotation), persists it and publishes changes.

use super::*;

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
        crate::mesh::granted_roles(&self.members, id)
    }

    /// The member a person means by `s` (node id or unique name).
    pub fn resolve(&self, s: &str) -> Option<&Member> {
        crate::mesh::resolve_member(&self.members, s)
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
