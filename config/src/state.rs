//! Persisted node state: identity, roles and mesh membership. Files are JSON, written atomically
//! (temp + fsync + rename), secrets with mode 0600. A damaged file is reported, never replaced.

use crate::statedir::write_atomic;

/// Writes a file atomically with the given mode (temp, fsync, rename).
pub fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ConfigError> {
    write_atomic(path, data, mode)
}
use crate::{ConfigError, StateDir};
use lifeboat_protocol::message::Member;
use lifeboat_protocol::{NodeId, PublicKey, Role, StaticKeypair, UnixMillis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConfigError::Corrupt {
                path: path.to_path_buf(),
                msg: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::io(path, e)),
    }
}

fn save_json<T: Serialize>(path: &Path, v: &T, mode: u32) -> Result<(), ConfigError> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| ConfigError::Corrupt {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    write_atomic(path, &bytes, mode)
}

/// Loads the node's identity.
pub fn load_identity(dir: &StateDir) -> Result<StaticKeypair, ConfigError> {
    let path = dir.identity_path();
    let kp: StaticKeypair = load_json(&path)?.ok_or_else(|| ConfigError::Missing {
        what: "node identity",
        path: path.clone(),
        dir: dir.root.clone(),
    })?;
    if lifeboat_protocol::identity::public_from_private(&kp.private) != kp.public {
        return Err(ConfigError::Corrupt {
            path,
            msg: "public key does not match private key".into(),
        });
    }
    Ok(kp)
}

/// Saves the identity (0600). Refuses to replace an existing one unless `force`.
pub fn save_identity(dir: &StateDir, kp: &StaticKeypair, force: bool) -> Result<(), ConfigError> {
    let path = dir.identity_path();
    if path.exists() && !force {
        return Err(ConfigError::IdentityExists { path });
    }
    save_json(&path, kp, 0o600)
}

/// Roles assigned to this node (persisted so they survive restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolesFile {
    /// The roles.
    pub roles: BTreeSet<Role>,
}

/// Loads roles (empty if never saved).
pub fn load_roles(dir: &StateDir) -> Result<RolesFile, ConfigError> {
    Ok(load_json(&dir.roles_path())?.unwrap_or_default())
}

/// Saves roles.
pub fn save_roles(dir: &StateDir, roles: &RolesFile) -> Result<(), ConfigError> {
    save_json(&dir.roles_path(), roles, 0o600)
}

/// A registration key issued by this (configuration) node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// PSK id of the key's secret.
    pub key_id: [u8; 16],
    /// The one-time secret.
    pub secret: [u8; 32],
    /// Issue time.
    pub issued: UnixMillis,
    /// Expiry time.
    pub expires: UnixMillis,
    /// The node that used it, once used.
    pub used_by: Option<NodeId>,
}

/// Mesh membership as this node knows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshFile {
    /// Mesh identifier.
    pub mesh_id: [u8; 16],
    /// Mesh secret (Noise PSK).
    pub secret: [u8; 32],
    /// Static keys of the configuration nodes that administer the mesh (may assign roles
    /// remotely and publish membership).
    pub authorities: Vec<PublicKey>,
    /// Membership list version.
    pub membership_version: u64,
    /// Members.
    pub members: Vec<Member>,
    /// Registration keys issued here (only on an authority).
    #[serde(default)]
    pub issued_keys: Vec<IssuedKey>,
    /// The secret before the last rotation, still accepted from members until `until` so that
    /// members offline at the rotation can come back and learn the new one.
    #[serde(default)]
    pub previous_secret: Option<PreviousSecret>,
}

/// Debug output names the mesh and its members, never a secret.
impl std::fmt::Debug for MeshFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshFile")
            .field("mesh_id", &self.mesh_id)
            .field("membership_version", &self.membership_version)
            .field("members", &self.members)
            .field("issued_keys", &self.issued_keys.len())
            .finish_non_exhaustive()
    }
}

/// A rotated-out mesh secret and how long it is still accepted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The old secret.
    pub secret: [u8; 32],
    /// Accepted until this instant.
    pub until: UnixMillis,
}

impl std::fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreviousSecret(until {})", self.until)
    }
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IssuedKey(expires {}, used by {:?})",
            self.expires, self.used_by
        )
    }
}

/// Loads the mesh file, if this node belongs to a mesh.
pub fn load_mesh(dir: &StateDir) -> Result<Option<MeshFile>, ConfigError> {
    load_json(&dir.mesh_path())
}

/// Saves the mesh file (0600: it holds the mesh secret).
pub fn save_mesh(dir: &StateDir, mesh: &MeshFile) -> Result<(), ConfigError> {
    save_json(&dir.mesh_path(), mesh, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_private_and_not_replaced_without_force() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path());
        let kp = StaticKeypair::generate([5; 32]);
        save_identity(&dir, &kp, false).unwrap();
        let mode = std::fs::metadata(dir.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            save_identity(&dir, &StaticKeypair::generate([6; 32]), false),
            Err(ConfigError::IdentityExists { .. })
        ));
        assert_eq!(load_identity(&dir).unwrap().public, kp.public);
        save_identity(&dir, &StaticKeypair::generate([6; 32]), true).unwrap();
        assert_ne!(load_identity(&dir).unwrap().public, kp.public);
    }

    #[test]
    fn damaged_state_is_reported_not_replaced() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path());
        std::fs::write(dir.roles_path(), b"{nope").unwrap();
        let err = load_roles(&dir).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(std::fs::read(dir.roles_path()).unwrap(), b"{nope");
    }

    #[test]
    fn roles_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path());
        assert!(load_roles(&dir).unwrap().roles.is_empty());
        let r = RolesFile {
            roles: [Role::Mobility, Role::Configuration].into_iter().collect(),
        };
        save_roles(&dir, &r).unwrap();
        assert_eq!(load_roles(&dir).unwrap(), r);
    }
}
