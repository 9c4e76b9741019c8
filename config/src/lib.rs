//! Lifeboat's configuration and on-disk state.
//!
//! - [`Config`]: the typed, validated `lifeboat.toml` (every field documented, units in names).
//! - [`StateDir`]: the layout of a node's state directory and where it defaults to.
//! - [`state`]: persisted node state (identity, roles, mesh membership), written atomically.
//!
//! Nothing here talks to the network; the daemon (`lifeboat-node`) loads these at start.

mod config;
pub mod state;
mod statedir;

pub use config::{
    validate_name, Config, DiscoveryConfig, LogFormat, NodeConfig, DEFAULT_CONFIG_TOML,
};
pub use statedir::{default_state_dir, StateDir, STATE_DIR_ENV};

use std::path::PathBuf;

/// Errors loading or saving configuration and state.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The state directory or a required file in it does not exist.
    #[error("{what} not found at {path}; run `lifeboat init --state-dir {dir}` first")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// The file looked for.
        path: PathBuf,
        /// The state directory.
        dir: PathBuf,
    },
    /// The configuration file is not valid TOML or has unknown/mistyped fields.
    #[error("{path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser's message.
        msg: String,
    },
    /// A field has a value that makes no sense.
    #[error("invalid configuration: {field}: {msg}")]
    Invalid {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong and what would be right.
        msg: String,
    },
    /// A persisted state file is damaged.
    #[error("state file {path} is damaged ({msg}); restore it from backup or re-run `lifeboat init --force`")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Refusing to overwrite an identity.
    #[error("{path} already holds a node identity; pass --force to replace it (the node will get a new id and must register again)")]
    IdentityExists {
        /// The identity file.
        path: PathBuf,
    },
    /// `init` on an initialized node with flags that differ from its configuration.
    #[error("this node is already initialized with {what}; pass --force to replace its identity and configuration (the node will get a new id and must register again), or edit {path}")]
    InitDiffers {
        /// What differs, as `--flag: now (asked: new)`.
        what: String,
        /// The configuration file.
        path: PathBuf,
    },
    /// The state directory exists and others may read it; it would hold secrets.
    #[error("state directory {path} is accessible by other users (mode {mode:04o}) and would hold secrets; run `chmod 700 {path}` or choose another --state-dir")]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The state directory path is taken by something that is not a directory.
    #[error("state directory {path} exists but is not a directory; remove it or choose another --state-dir")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Underlying I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.into(),
            source,
        }
    }
}
