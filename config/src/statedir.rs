//! The state directory: one per node, chosen by `--state-dir`, `LIFEBOAT_STATE_DIR`, or the
//! default (`/var/lib/lifeboat` for root, `$XDG_STATE_HOME/lifeboat` or
//! `~/.local/state/lifeboat` for other users). Several nodes on one machine simply use several
//! state directories.
//!
//! ```text
//! DIR/lifeboat.toml      configuration (documented, editable)
//! DIR/identity.key       long-term X25519 key pair (0600)
//! DIR/tls.key, tls.crt   per-node self-signed QUIC certificate and key (0600)
//! DIR/roles.json         roles assigned at run time
//! DIR/mesh.json          mesh secret and membership (0600)
//! DIR/control.sock       the daemon's local control socket (0600)
//! ```

use crate::ConfigError;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "LIFEBOAT_STATE_DIR";

/// The default state directory for the current user.
pub fn default_state_dir() -> PathBuf {
    // SAFETY-free: geteuid has no failure mode.
    if is_root() {
        return PathBuf::from("/var/lib/lifeboat");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("lifeboat");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/lifeboat"),
        None => PathBuf::from(".lifeboat"),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A node's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    /// Root of the directory.
    pub root: PathBuf,
}

impl StateDir {
    /// Wraps a path (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// `lifeboat.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("lifeboat.toml")
    }
    /// `identity.key`.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    /// `tls.key`.
    pub fn tls_key_path(&self) -> PathBuf {
        self.root.join("tls.key")
    }
    /// `tls.crt`.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.root.join("tls.crt")
    }
    /// `roles.json`.
    pub fn roles_path(&self) -> PathBuf {
        self.root.join("roles.json")
    }
    /// `mesh.json`.
    pub fn mesh_path(&self) -> PathBuf {
        self.root.join("mesh.json")
    }
    /// `control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// Errors unless `lifeboat init` has run here.
    pub fn ensure_initialized(&self) -> Result<(), ConfigError> {
        for (what, path) in [
            ("state directory", self.root.clone()),
            ("configuration", self.config_path()),
            ("node identity", self.identity_path()),
        ] {
            if !path.exists() {
                return Err(ConfigError::Missing {
                    what,
                    path,
                    dir: self.root.clone(),
                });
            }
        }
        Ok(())
    }

    /// Creates the directory (0700) if needed. An existing one is never changed behind the
    /// user's back: one that others may access is refused with what to do.
    pub fn create(&self) -> Result<(), ConfigError> {
        match fs::metadata(&self.root) {
            Ok(m) if !m.is_dir() => Err(ConfigError::NotADirectory {
                path: self.root.clone(),
            }),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(ConfigError::InsecureDir {
                path: self.root.clone(),
                mode: m.permissions().mode() & 0o7777,
            }),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::os::unix::fs::DirBuilderExt::mode(
                    fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(&self.root)
                .map_err(|e| ConfigError::io(&self.root, e))?;
                // The umask may have narrowed the mode further; never wider than 0700.
                fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                    .map_err(|e| ConfigError::io(&self.root, e))
            }
            Err(e) => Err(ConfigError::io(&self.root, e)),
        }
    }
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync dir) with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ConfigError::io(&tmp, e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| ConfigError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| ConfigError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ConfigError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| ConfigError::io(path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
