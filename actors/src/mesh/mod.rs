//! Mesh membership: creating a mesh, issuing registration keys, deciding registrations,
//! admission of peers, and who may administer whom.
//!
//! Call order: [`Mesh::create`] once on the first configuration node; then, on that node,
//! [`Mesh::issue_key`] per joining node and [`Mesh::handle_register`] when one connects with a
//! key. Every node answers [`Mesh::psk_for`] and [`Mesh::admits`] during handshakes and applies
//! [`Mesh::handle_membership_update`] from an authority. Methods that change persisted state
//! return `true`/`Some` and the shell saves [`Mesh::file`].
//!
//! Authority model: the membership list is the one record of who belongs to the mesh and which
//! roles each member holds ([`Member::roles`]). Only the authority edits it
//! ([`Mesh::assign_role`], [`Mesh::remove_member`], [`Mesh::rotate_secret`]); every other node
//! takes it, whole and versioned, from an authenticated authority connection and acts on it,
//! never on what a peer says about itself. Names are unique (a registration under a taken name
//! is refused) and are for display: decisions resolve them to node ids first.

use lifeboat_config::state::{IssuedKey, MeshFile, PreviousSecret};
use lifeboat_protocol::handshake::{psk_id, PskId};
use lifeboat_protocol::message::{Member, MeshGrant, RegisterRefusal, RoleOp};
use lifeboat_protocol::regkey::{RegistrationKey, MAX_CLOCK_SKEW_MS};
use lifeboat_protocol::{NodeId, PublicKey, Role, UnixMillis};
use std::net::SocketAddr;

/// How many issued keys are kept (used and expired ones are pruned first).
const MAX_ISSUED_KEYS: usize = 1024;
/// Longest validity of a registration key (the reference product's cap).
pub const MAX_KEY_VALIDITY_MS: u64 = 5 * 86_400_000;
/// How long a rotated-out mesh secret stays accepted by default (`mesh rotate-secret`).
pub const DEFAULT_SECRET_GRACE_MS: u64 = 7 * 86_400_000;

/// What a PSK id resolves to.
#[derive(Clone, PartialEq, Eq)]
pub enum PskKind {
    /// The mesh secret: an ordinary mesh connection.
    Mesh([u8; 32]),
    /// A registration key's secret: the peer may only register.
    Registration([u8; 32]),
}

impl std::fmt::Debug for PskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PskKind::Mesh(_) => "PskKind::Mesh(..)",
            PskKind::Registration(_) => "PskKind::Registration(..)",
        })
    }
}

/// Errors of mesh administration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeshError {
    /// The node already belongs to a mesh.
    #[error("this node already belongs to mesh {0}; a node joins one mesh (run `lifeboat init --force` in a new state dir to start over)")]
    AlreadyMember(String),
    /// The node belongs to no mesh.
    #[error("this node belongs to no mesh; run `lifeboat mesh create` on the first configuration node, or `lifeboat register KEY` here")]
    NoMesh,
    /// Only the mesh's configuration node may do this.
    #[error("only a configuration node that administers the mesh can do this")]
    NotAuthority,
    /// The change could not be saved; nothing was changed.
    #[error("could not save the mesh state ({0}); nothing was changed, fix the state directory and retry")]
    Persist(String),
    /// No member has this id or name.
    #[error("no member of this mesh is named or has the id {0:?}; see `lifeboat peers`")]
    UnknownMember(String),
    /// The authority cannot remove itself.
    #[error("a configuration node cannot remove itself from the mesh it administers")]
    RemoveSelf,
    /// A key validity out of range.
    #[error("a registration key is valid for 1s to 5d (the reference product's cap); got {0}")]
    Validity(String),
}

/// Mesh state of one node.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// This node's static key.
    local: PublicKey,
    /// Persisted mesh state, if the node belongs to a mesh.
    file: Option<MeshFile>,
}

/// The member of `members` a person means by `s`: ids first, then (unique) names. Every
/// lookup of a member by what a person typed goes through here.
pub fn resolve_member<'a>(members: &'a [Member], s: &str) -> Option<&'a Member> {
    members
        .iter()
        .find(|m| m.node_id().to_string() == s)
        .or_else(|| members.iter().find(|m| m.name == s))
}

/// The roles the record `members` grants `id` (none for a non-member).
pub fn granted_roles(members: &[Member], id: NodeId) -> Vec<Role> {
    members
        .iter()
        .find(|m| m.node_id() == id)
        .map(|m| m.roles.clone())
        .unwrap_or_default()
}

/// Hex of a mesh id, as shown to people.
pub fn mesh_id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Mesh {
    /// Mesh state loaded from disk.
    pub fn new(local: PublicKey, file: Option<MeshFile>) -> Self {
        Mesh { local, file }
    }

    /// The persisted form.
    pub fn file(&self) -> Option<&MeshFile> {
        self.file.as_ref()
    }

    /// Mesh id, if joined.
    pub fn mesh_id(&self) -> Option<[u8; 16]> {
        self.file.as_ref().map(|f| f.mesh_id)
    }

    /// True if this node administers the mesh.
    pub fn is_authority(&self) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| f.authorities.contains(&self.local))
    }

    /// Creates a new mesh with this node as its authority and first member.
    pub fn create(
        &mut self,
        now: UnixMillis,
        seed: [u8; 32],
        name: &str,
        addrs: Vec<SocketAddr>,
        roles: Vec<Role>,
    ) -> Result<&MeshFile, MeshError> {
        if let Some(f) = &self.file {
            return Err(MeshError::AlreadyMember(mesh_id_hex(&f.mesh_id)));
        }
        let secret = blake3::derive_key("lifeboat mesh secret v1", &seed);
        let id = blake3::derive_key("lifeboat mesh id v1", &seed);
        let mut mesh_id = [0u8; 16];
        mesh_id.copy_from_slice(&id[..16]);
        Ok(self.file.insert(MeshFile {
            mesh_id,
            secret,
            authorities: vec![self.local],
            membership_version: 1,
            members: vec![Member {
                public_key: self.local,
                name: name.to_string(),
                addrs,
                joined: now,
                roles,
            }],
            issued_keys: Vec::new(),
            previous_secret: None,
        }))
    }

    /// Issues a one-time registration key valid for `validity_ms`.
    pub fn issue_key(
        &mut self,
        now: UnixMillis,
        validity_ms: u64,
        seed: [u8; 32],
        config_addrs: Vec<SocketAddr>,
    ) -> Result<RegistrationKey, MeshError> {
        if validity_ms == 0 || validity_ms > MAX_KEY_VALIDITY_MS {
            return Err(MeshError::Validity(
                lifeboat_protocol::time::human_duration(validity_ms),
            ));
        }
        let local = self.local;
        let f = self.authority_file()?;
        let secret = blake3::derive_key("lifeboat registration secret v1", &seed);
        let key = RegistrationKey {
            mesh_id: f.mesh_id,
            config_fingerprint: local.fingerprint(),
            config_addrs,
            secret,
            issued: now,
            expires: now.plus_millis(validity_ms),
        };
        // Forget unused keys a month after expiry (until then a late user is told "expired",
        // not "unknown"), then bound the list.
        f.issued_keys
            .retain(|k| k.used_by.is_some() || k.expires.plus_millis(30 * 86_400_000) > now);
        if f.issued_keys.len() >= MAX_ISSUED_KEYS {
            f.issued_keys.remove(0);
        }
        f.issued_keys.push(IssuedKey {
            key_id: key.key_id(),
            secret,
            issued: now,
            expires: key.expires,
            used_by: None,
        });
        Ok(key)
    }

    fn authority_file(&mut self) -> Result<&mut MeshFile, MeshError> {
        let local = self.local;
        let f = self.file.as_mut().ok_or(MeshError::NoMesh)?;
        if !f.authorities.contains(&local) {
            return Err(MeshError::NotAuthority);
        }
        Ok(f)
    }

    /// Resolves the PSK a connecting peer names in handshake message 1. Registration keys
    /// resolve while they are unexpired (a used key stays resolvable until then, so its node can
    /// retry a registration whose answer it lost, and so a late user hears "already used").
    pub fn psk_for(&self, id: &PskId, now: UnixMillis) -> Option<PskKind> {
        let f = self.file.as_ref()?;
        if psk_id(&f.secret) == *id {
            return Some(PskKind::Mesh(f.secret));
        }
        if let Some(p) = &f.previous_secret {
            if psk_id(&p.secret) == *id && now < p.until {
                return Some(PskKind::Mesh(p.secret));
            }
        }
        if !f.authorities.contains(&self.local) {
            return None;
        }
        f.issued_keys
            .iter()
            .find(|k| k.key_id == *id && now < k.expires.plus_millis(MAX_CLOCK_SKEW_MS))
            .map(|k| PskKind::Registration(k.secret))
    }

    /// The mesh secret, if joined.
    pub fn secret(&self) -> Option<[u8; 32]> {
        self.file.as_ref().map(|f| f.secret)
    }

    /// The rotated-out secret a dialer may fall back to while it is still accepted (a member
    /// that was offline at the rotation still knows only that one).
    pub fn previous_secret(&self, now: UnixMillis) -> Option<[u8; 32]> {
        let p = self.file.as_ref()?.previous_secret.as_ref()?;
        (now < p.until).then_some(p.secret)
    }

    /// The roles the authority granted `id` (empty for a non-member).
    pub fn granted_roles(&self, id: NodeId) -> Vec<Role> {
        granted_roles(self.members(), id)
    }

    /// The member a person means by `s`: its node id, or its (unique) name.
    pub fn resolve(&self, s: &str) -> Option<&Member> {
        resolve_member(self.members(), s)
    }

    /// Grants or withdraws a role of member `target` (authority only). Returns the member's
    /// roles after the change and whether anything changed (the version is bumped then).
    pub fn assign_role(
        &mut self,
        target: NodeId,
        op: RoleOp,
        role: Role,
    ) -> Result<(Vec<Role>, bool), MeshError> {
        let f = self.authority_file()?;
        let m = f
            .members
            .iter_mut()
            .find(|m| m.node_id() == target)
            .ok_or_else(|| MeshError::UnknownMember(target.to_string()))?;
        let had = m.roles.contains(&role);
        let changed = match op {
            RoleOp::Add if !had => {
                m.roles.push(role);
                m.roles.sort();
                true
            }
            RoleOp::Remove if had => {
                m.roles.retain(|r| *r != role);
                true
            }
            _ => false,
        };
        let roles = m.roles.clone();
        if changed {
            f.membership_version += 1;
        }
        Ok((roles, changed))
    }

    /// Evicts a member (authority only): it leaves the list, so every node refuses its
    /// connections once the new version reaches it. Its unused keys are moot (keys are
    /// one-time) and its roles go with it.
    pub fn remove_member(&mut self, target: NodeId) -> Result<Member, MeshError> {
        if target == self.local.node_id() {
            return Err(MeshError::RemoveSelf);
        }
        let f = self.authority_file()?;
        let i = f
            .members
            .iter()
            .position(|m| m.node_id() == target)
            .ok_or_else(|| MeshError::UnknownMember(target.to_string()))?;
        let m = f.members.remove(i);
        f.membership_version += 1;
        Ok(m)
    }

    /// Replaces the mesh secret (authority only). The old one stays accepted for `grace_ms`
    /// so members offline now can return and learn the new one with the next membership list.
    pub fn rotate_secret(
        &mut self,
        now: UnixMillis,
        seed: [u8; 32],
        grace_ms: u64,
    ) -> Result<(), MeshError> {
        let f = self.authority_file()?;
        let old = f.secret;
        f.secret = blake3::derive_key("lifeboat mesh secret v1", &seed);
        f.previous_secret = Some(PreviousSecret {
            secret: old,
            until: now.plus_millis(grace_ms),
        });
        f.membership_version += 1;
        Ok(())
    }

    /// True if `key` is on the membership list.
    pub fn admits(&self, key: &PublicKey) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| f.members.iter().any(|m| m.public_key == *key))
    }

    /// True if `key` administers the mesh (may assign roles remotely, publish membership).
    pub fn is_authority_key(&self, key: &PublicKey) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| f.authorities.contains(key))
    }

    /// Members, if joined.
    pub fn members(&self) -> &[Member] {
        self.file
            .as_ref()
            .map(|f| f.members.as_slice())
            .unwrap_or(&[])
    }

    /// Membership version (0 if not joined).
    pub fn version(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.membership_version)
    }

    /// Decides a registration. `key_id` is the PSK id the joiner's handshake used; `joiner` its
    /// authenticated key; `joiner_now` its clock. On success the joiner is a member.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_register(
        &mut self,
        now: UnixMillis,
        key_id: &PskId,
        joiner: PublicKey,
        name: &str,
        addrs: Vec<SocketAddr>,
        joiner_now: UnixMillis,
    ) -> Result<MeshGrant, RegisterRefusal> {
        let f = self
            .authority_file()
            .map_err(|_| RegisterRefusal::UnknownKey)?;
        let joiner_id = joiner.node_id();
        // A name may not be another member's name, nor another member's id (ids resolve
        // first, but a person reading a table should not be misled either).
        if f.members
            .iter()
            .any(|m| m.public_key != joiner && (m.name == name || m.node_id().to_string() == name))
        {
            return Err(RegisterRefusal::NameTaken {
                name: name.to_string(),
            });
        }
        let key = f
            .issued_keys
            .iter_mut()
            .find(|k| k.key_id == *key_id)
            .ok_or(RegisterRefusal::UnknownKey)?;
        match key.used_by {
            // A retry by the same node (its reply was lost) gets the grant again, unchanged; a
            // node that was removed since cannot use its old key to come back.
            Some(id) if id == joiner_id && f.members.iter().any(|m| m.public_key == joiner) => {
                return Ok(MeshGrant {
                    mesh_id: f.mesh_id,
                    mesh_secret: f.secret,
                    membership_version: f.membership_version,
                    members: f.members.clone(),
                });
            }
            Some(_) => return Err(RegisterRefusal::AlreadyUsed),
            None => {
                if now >= key.expires {
                    return Err(RegisterRefusal::Expired {
                        expired_at: key.expires,
                    });
                }
                let skew_ms = joiner_now.signed_diff(now);
                if skew_ms.unsigned_abs() > MAX_CLOCK_SKEW_MS {
                    return Err(RegisterRefusal::ClockSkew {
                        skew_ms,
                        max_ms: MAX_CLOCK_SKEW_MS,
                    });
                }
                key.used_by = Some(joiner_id);
            }
        }
        match f.members.iter_mut().find(|m| m.public_key == joiner) {
            Some(m) => {
                m.name = name.to_string();
                m.addrs = addrs;
            }
            // A new member holds no role until the authority grants one.
            None => f.members.push(Member {
                public_key: joiner,
                name: name.to_string(),
                addrs,
                joined: now,
                roles: Vec::new(),
            }),
        }
        f.membership_version += 1;
        Ok(MeshGrant {
            mesh_id: f.mesh_id,
            mesh_secret: f.secret,
            membership_version: f.membership_version,
            members: f.members.clone(),
        })
    }

    /// Joins a mesh from a grant received at registration (`authority` = the registrar's key).
    pub fn join(&mut self, grant: MeshGrant, authority: PublicKey) -> Result<(), MeshError> {
        if let Some(f) = &self.file {
            if f.mesh_id != grant.mesh_id {
                return Err(MeshError::AlreadyMember(mesh_id_hex(&f.mesh_id)));
            }
        }
        self.file = Some(MeshFile {
            mesh_id: grant.mesh_id,
            secret: grant.mesh_secret,
            authorities: vec![authority],
            membership_version: grant.membership_version,
            members: grant.members,
            issued_keys: Vec::new(),
            previous_secret: None,
        });
        Ok(())
    }

    /// Applies a membership list (and the current secret, if it was rotated) from `from`.
    /// Returns true if it was newer and accepted.
    pub fn handle_membership_update(
        &mut self,
        now: UnixMillis,
        from: &PublicKey,
        version: u64,
        members: Vec<Member>,
        secret: Option<[u8; 32]>,
        previous_until: Option<UnixMillis>,
    ) -> bool {
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        if !f.authorities.contains(from) || version <= f.membership_version {
            return false;
        }
        f.membership_version = version;
        f.members = members;
        if let Some(s) = secret.filter(|s| *s != f.secret) {
            f.previous_secret = Some(PreviousSecret {
                secret: f.secret,
                until: previous_until.unwrap_or(now),
            });
            f.secret = s;
        }
        true
    }

    /// The membership list as a message, if this node is an authority (sent to a newly
    /// connected peer, and in answer to [`Message::MembershipRequest`]).
    pub fn membership_message(&self) -> Option<lifeboat_protocol::Message> {
        let f = self.file.as_ref()?;
        self.is_authority()
            .then(|| lifeboat_protocol::Message::MembershipUpdate {
                version: f.membership_version,
                members: f.members.clone(),
                secret: Some(lifeboat_protocol::message::MeshSecret(f.secret)),
                previous_until: f.previous_secret.as_ref().map(|p| p.until),
            })
    }

    /// True if a heartbeat from `from` announcing membership `version` means we should ask it
    /// for the list (it is an authority and has a newer one).
    pub fn wants_membership_from(&self, from: &PublicKey, version: u64) -> bool {
        version > self.version() && self.is_authority_key(from)
    }

    /// Records a member's current addresses (authority side, from heartbeats). Returns true if
    /// the list changed (and its version was bumped).
    pub fn update_member_addrs(&mut self, id: NodeId, addrs: Vec<SocketAddr>) -> bool {
        let Ok(f) = self.authority_file() else {
            return false;
        };
        let Some(m) = f.members.iter_mut().find(|m| m.node_id() == id) else {
            return false;
        };
        if m.addrs == addrs || addrs.is_empty() {
            return false;
        }
        m.addrs = addrs;
        f.membership_version += 1;
        true
    }
}

#[cfg(test)]
mod tests;
