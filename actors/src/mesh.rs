//! Mesh membership: creating a mesh, issuing registration keys, deciding registrations,
//! admission of peers, and who may administer whom.
//!
//! Call order: [`Mesh::create`] once on the first configuration node; then, on that node,
//! [`Mesh::issue_key`] per joining node and [`Mesh::handle_register`] when one connects with a
//! key. Every node answers [`Mesh::psk_for`] and [`Mesh::admits`] during handshakes and applies
//! [`Mesh::handle_membership_update`] from an authority. Methods that change persisted state
//! return `true`/`Some` and the shell saves [`Mesh::file`].

use lifeboat_config::state::{IssuedKey, MeshFile};
use lifeboat_protocol::handshake::{psk_id, PskId};
use lifeboat_protocol::message::{Member, MeshGrant, RegisterRefusal};
use lifeboat_protocol::regkey::{RegistrationKey, MAX_CLOCK_SKEW_MS};
use lifeboat_protocol::{NodeId, PublicKey, UnixMillis};
use std::net::SocketAddr;

/// How many issued keys are kept (used and expired ones are pruned first).
const MAX_ISSUED_KEYS: usize = 1024;

/// What a PSK id resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PskKind {
    /// The mesh secret: an ordinary mesh connection.
    Mesh([u8; 32]),
    /// A registration key's secret: the peer may only register.
    Registration([u8; 32]),
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
}

/// Mesh state of one node.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// This node's static key.
    local: PublicKey,
    /// Persisted mesh state, if the node belongs to a mesh.
    file: Option<MeshFile>,
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
            }],
            issued_keys: Vec::new(),
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
        let key = f
            .issued_keys
            .iter_mut()
            .find(|k| k.key_id == *key_id)
            .ok_or(RegisterRefusal::UnknownKey)?;
        match key.used_by {
            // A retry by the same node (its reply was lost) gets the grant again, unchanged.
            Some(id) if id == joiner_id => {
                if f.members.iter().any(|m| m.public_key == joiner) {
                    return Ok(MeshGrant {
                        mesh_id: f.mesh_id,
                        mesh_secret: f.secret,
                        membership_version: f.membership_version,
                        members: f.members.clone(),
                    });
                }
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
            None => f.members.push(Member {
                public_key: joiner,
                name: name.to_string(),
                addrs,
                joined: now,
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
        });
        Ok(())
    }

    /// Applies a membership list from `from`. Returns true if it was newer and accepted.
    pub fn handle_membership_update(
        &mut self,
        from: &PublicKey,
        version: u64,
        members: Vec<Member>,
    ) -> bool {
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        if !f.authorities.contains(from) || version <= f.membership_version {
            return false;
        }
        f.membership_version = version;
        f.members = members;
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
mod tests {
    use super::*;
    use lifeboat_protocol::StaticKeypair;

    const DAY: u64 = 86_400_000;

    fn authority() -> (Mesh, PublicKey) {
        let cfg = StaticKeypair::generate([1; 32]).public;
        let mut m = Mesh::new(cfg, None);
        m.create(UnixMillis(1_000), [9; 32], "cfg", vec![]).unwrap();
        (m, cfg)
    }

    #[test]
    fn a_fresh_key_admits_one_node_once() {
        let (mut m, _) = authority();
        let k = m
            .issue_key(UnixMillis(1_000), 5 * DAY, [2; 32], vec![])
            .unwrap();
        let a = StaticKeypair::generate([3; 32]).public;
        let b = StaticKeypair::generate([4; 32]).public;
        let now = UnixMillis(2_000);
        assert!(matches!(
            m.psk_for(&k.key_id(), UnixMillis(2_000)),
            Some(PskKind::Registration(_))
        ));
        let g = m
            .handle_register(now, &k.key_id(), a, "a", vec![], now)
            .unwrap();
        assert_eq!(g.members.len(), 2);
        assert!(m.admits(&a));
        // The same node may retry; another may not reuse the key.
        assert!(m
            .handle_register(now, &k.key_id(), a, "a", vec![], now)
            .is_ok());
        assert_eq!(
            m.handle_register(now, &k.key_id(), b, "b", vec![], now),
            Err(RegisterRefusal::AlreadyUsed)
        );
        assert!(!m.admits(&b));
    }

    #[test]
    fn expired_keys_and_skewed_clocks_are_refused() {
        let (mut m, _) = authority();
        let k = m
            .issue_key(UnixMillis(1_000), DAY, [2; 32], vec![])
            .unwrap();
        let a = StaticKeypair::generate([3; 32]).public;
        let late = UnixMillis(1_000 + DAY);
        assert_eq!(
            m.handle_register(late, &k.key_id(), a, "a", vec![], late),
            Err(RegisterRefusal::Expired {
                expired_at: UnixMillis(1_000 + DAY)
            })
        );
        let now = UnixMillis(10_000_000);
        let skewed = UnixMillis(10_000_000 + 7 * 60_000);
        assert_eq!(
            m.handle_register(now, &k.key_id(), a, "a", vec![], skewed),
            Err(RegisterRefusal::ClockSkew {
                skew_ms: 7 * 60_000,
                max_ms: MAX_CLOCK_SKEW_MS
            })
        );
        let fine = UnixMillis(10_000_000 - 4 * 60_000);
        assert!(m
            .handle_register(now, &k.key_id(), a, "a", vec![], fine)
            .is_ok());
    }

    #[test]
    fn unknown_keys_and_non_authorities_are_refused() {
        let (mut m, cfg) = authority();
        let a = StaticKeypair::generate([3; 32]).public;
        assert_eq!(
            m.handle_register(UnixMillis(1), &[0; 16], a, "a", vec![], UnixMillis(1)),
            Err(RegisterRefusal::UnknownKey)
        );
        let k = m
            .issue_key(UnixMillis(1_000), DAY, [2; 32], vec![])
            .unwrap();
        let grant = m
            .handle_register(
                UnixMillis(2_000),
                &k.key_id(),
                a,
                "a",
                vec![],
                UnixMillis(2_000),
            )
            .unwrap();
        let mut joined = Mesh::new(a, None);
        joined.join(grant, cfg).unwrap();
        assert!(joined.admits(&cfg));
        assert!(!joined.is_authority());
        assert_eq!(
            joined.issue_key(UnixMillis(1), DAY, [1; 32], vec![]).err(),
            Some(MeshError::NotAuthority)
        );
        // Registration keys are only resolvable on the authority.
        assert_eq!(joined.psk_for(&k.key_id(), UnixMillis(2_000)), None);
        assert!(matches!(
            joined.psk_for(&psk_id(&joined.secret().unwrap()), UnixMillis(2_000)),
            Some(PskKind::Mesh(_))
        ));
    }

    #[test]
    fn membership_updates_come_only_from_authorities_and_only_forward() {
        let (m, cfg) = authority();
        let a = StaticKeypair::generate([3; 32]).public;
        let grant = MeshGrant {
            mesh_id: m.mesh_id().unwrap(),
            mesh_secret: m.secret().unwrap(),
            membership_version: 5,
            members: m.members().to_vec(),
        };
        let mut joined = Mesh::new(a, None);
        joined.join(grant, cfg).unwrap();
        assert!(!joined.handle_membership_update(&a, 9, vec![]));
        assert!(!joined.handle_membership_update(&cfg, 4, vec![]));
        assert!(joined.handle_membership_update(&cfg, 6, vec![]));
        assert_eq!(joined.version(), 6);
    }

    #[test]
    fn a_node_joins_one_mesh() {
        let (mut m, _) = authority();
        assert!(matches!(
            m.create(UnixMillis(1), [1; 32], "x", vec![]),
            Err(MeshError::AlreadyMember(_))
        ));
    }
}
