//! `lifeboat init`: creates a node's state directory, identity, TLS certificate and documented
//! configuration. Idempotent: an initialized directory is left as it is unless `force`.

use crate::tls::TlsIdentity;
use lifeboat_config::{state, Config, ConfigError, StateDir};
use lifeboat_protocol::StaticKeypair;
use rand::RngCore;
use std::net::SocketAddr;

/// What `init` should create.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Node name (default: the host name).
    pub name: Option<String>,
    /// Listen address (default 0.0.0.0:9443).
    pub listen: Option<SocketAddr>,
    /// Static peers.
    pub peers: Vec<SocketAddr>,
    /// Replace an existing identity (the node gets a new id and leaves its mesh).
    pub force: bool,
}

/// What `init` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InitReport {
    /// Node id.
    pub node_id: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// True if nothing was changed (already initialized).
    pub unchanged: bool,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| lifeboat_config::validate_name(s).is_ok())
        .unwrap_or_else(|| "lifeboat".into())
}

/// Initializes `dir`.
pub fn init(dir: &StateDir, opts: &InitOptions) -> Result<InitReport, ConfigError> {
    dir.create()?;
    let exists = dir.identity_path().exists();
    if exists && !opts.force {
        let kp = state::load_identity(dir)?;
        if dir.config_path().exists() {
            // A re-run with the flags it was initialized with changes nothing (configuration
            // management re-runs commands); different ones are refused, naming --force.
            let c = Config::load(&dir.config_path())?;
            let mut differs = Vec::new();
            if let Some(n) = opts.name.as_ref().filter(|n| **n != c.node.name) {
                differs.push(format!("--name {} (asked: {n})", c.node.name));
            }
            if let Some(l) = opts.listen.filter(|l| *l != c.node.listen) {
                differs.push(format!("--listen {} (asked: {l})", c.node.listen));
            }
            if !opts.peers.is_empty() && opts.peers != c.discovery.peers {
                differs.push(format!(
                    "--peer {:?} (asked: {:?})",
                    c.discovery.peers, opts.peers
                ));
            }
            if !differs.is_empty() {
                return Err(ConfigError::InitDiffers {
                    what: differs.join(", "),
                    path: dir.config_path(),
                });
            }
        } else {
            write_config(dir, opts)?;
        }
        return Ok(InitReport {
            node_id: kp.node_id().to_string(),
            fingerprint: kp.public.fingerprint().to_string(),
            unchanged: true,
        });
    }
    if let Some(n) = &opts.name {
        lifeboat_config::validate_name(n)?;
    }
    let mut seed = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let kp = StaticKeypair::generate(seed);
    let tls = TlsIdentity::generate().map_err(|msg| ConfigError::Invalid { field: "tls", msg })?;
    tls.save(&dir.tls_cert_path(), &dir.tls_key_path())?;
    write_config(dir, opts)?;
    if opts.force {
        // A new identity is a new node: it must register again.
        for p in [dir.mesh_path(), dir.roles_path()] {
            let _ = std::fs::remove_file(p);
        }
    }
    state::save_identity(dir, &kp, opts.force)?;
    Ok(InitReport {
        node_id: kp.node_id().to_string(),
        fingerprint: kp.public.fingerprint().to_string(),
        unchanged: false,
    })
}

fn write_config(dir: &StateDir, opts: &InitOptions) -> Result<(), ConfigError> {
    let name = opts.name.clone().unwrap_or_else(hostname);
    let listen = opts
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], lifeboat_protocol::DEFAULT_PORT)));
    let text = Config::default_toml(&name, listen, &opts.peers);
    // Validate what we write, so a bad --name fails here and not at `node run`.
    Config::parse(&text, &dir.config_path())?;
    state::write_file_atomic(&dir.config_path(), text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            name: Some("alpha".into()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            peers: vec![],
            force: false,
        }
    }

    #[test]
    fn init_is_idempotent_and_force_replaces_the_identity() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path().join("n"));
        let a = init(&dir, &opts()).unwrap();
        assert!(!a.unchanged);
        let b = init(
            &dir,
            &InitOptions {
                name: None,
                listen: None,
                ..opts()
            },
        )
        .unwrap();
        assert!(b.unchanged);
        assert_eq!(a.node_id, b.node_id);
        // The same flags again: nothing changes.
        let again = init(&dir, &opts()).unwrap();
        assert!(again.unchanged);
        assert_eq!(again.node_id, a.node_id);
        let err = init(
            &dir,
            &InitOptions {
                name: Some("beta".into()),
                ..opts()
            },
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::InitDiffers { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(
            err.to_string().contains("--name alpha (asked: beta)"),
            "{err}"
        );
        let c = init(
            &dir,
            &InitOptions {
                force: true,
                ..opts()
            },
        )
        .unwrap();
        assert_ne!(a.node_id, c.node_id);
        Config::load(&dir.config_path()).unwrap();
    }

    #[test]
    fn a_bad_name_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::new(t.path().join("n"));
        let err = init(
            &dir,
            &InitOptions {
                name: Some("no spaces".into()),
                ..opts()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("node.name"), "{err}");
        assert!(!dir.identity_path().exists());
    }
}
