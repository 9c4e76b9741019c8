//! The typed `lifeboat.toml`. Unknown fields are errors (a typo must not silently fall back to a
//! default); every value is validated on load with a message naming the field.

use crate::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The configuration file `lifeboat init` writes. `{name}`, `{listen}` and `{peers}` are filled
/// in; everything else documents the defaults.
pub const DEFAULT_CONFIG_TOML: &str = r#"# Lifeboat node configuration, written by `lifeboat init`.
# Every field is optional unless marked required; the value shown is the default.

[node]
# Human name of this node, shown in `lifeboat peers` (required; letters, digits, '-', '_', '.').
name = "{name}"
# UDP address QUIC listens on. One port carries control and data. Default port: 9443.
listen = "{listen}"
# Addresses other nodes should use to reach this one (put in registration keys and
# announcements). Empty = every non-loopback interface address plus the listen port
# (loopback addresses are used when the node listens on loopback only).
advertise = []

[discovery]
# Announce and browse `_lifeboat._udp.local.` by mDNS on the local link.
mdns = true
# Static peers (ADDR:PORT) for WAN links and overlays where multicast does not pass.
peers = [{peers}]
# Seconds between authenticated heartbeats to every connected peer.
heartbeat_interval_secs = 2
# A peer not heard from for this many seconds is shown as unreachable.
unreachable_after_secs = 10
# A peer not heard from for this many seconds is forgotten (removed from the table).
forget_after_secs = 600

[replication]
# Process server: most bytes of replication data spooled on local disk (under the state
# directory) before mobility nodes are made to wait. Default 1 GiB.
spool_max_bytes = 1073741824
# Of that, bytes held in memory while uploads keep up (spilled to disk beyond). Default 64 MiB.
spool_memory_bytes = 67108864

[log]
# Log format on stderr: "pretty" for people, "json" for collectors.
format = "pretty"

# The HTTP listener: Prometheus metrics at /metrics on every node. Off unless set. Keep it
# on loopback (or a management network): it serves what `lifeboat status` shows.
# [http]
# listen = "127.0.0.1:9464"

# Alert delivery (configuration node): each alert transition (raised, cleared) is POSTed as
# JSON to this URL (http or https), retried with backoff. Off unless set.
# [alerts]
# webhook = "http://127.0.0.1:9000/lifeboat"
"#;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity-independent node settings.
    pub node: NodeConfig,
    /// Peer discovery and liveness.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Replication.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP listener (metrics).
    #[serde(default)]
    pub http: HttpConfig,
    /// Alert delivery.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// `[alerts]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// URL alert transitions are POSTed to. None: not delivered (logged and in `status`).
    pub webhook: Option<String>,
}

/// `[http]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address of the listener (`/metrics`). None: no listener.
    pub listen: Option<SocketAddr>,
}

/// `[replication]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Spool bound of a process server, bytes. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Part of the spool kept in memory, bytes. Default 64 MiB.
    pub spool_memory_bytes: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            spool_max_bytes: 1 << 30,
            spool_memory_bytes: 64 << 20,
        }
    }
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Human name of the node. Required.
    pub name: String,
    /// UDP listen address of QUIC. Default `0.0.0.0:9443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Addresses to advertise; empty means derived from interfaces. Default empty.
    #[serde(default)]
    pub advertise: Vec<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], lifeboat_protocol::DEFAULT_PORT))
}

/// `[discovery]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// mDNS announce and browse. Default true.
    pub mdns: bool,
    /// Static peers. Default empty.
    pub peers: Vec<SocketAddr>,
    /// Heartbeat period in seconds. Default 2.
    pub heartbeat_interval_secs: u64,
    /// Seconds of silence before a peer is unreachable. Default 10.
    pub unreachable_after_secs: u64,
    /// Seconds of silence before a peer is forgotten. Default 600.
    pub forget_after_secs: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mdns: true,
            peers: Vec::new(),
            heartbeat_interval_secs: 2,
            unreachable_after_secs: 10,
            forget_after_secs: 600,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Format on stderr. Default pretty.
    pub format: LogFormat,
}

impl Config {
    /// Renders the documented default file for a new node.
    pub fn default_toml(name: &str, listen: SocketAddr, peers: &[SocketAddr]) -> String {
        let peers = peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        DEFAULT_CONFIG_TOML
            .replace("{name}", name)
            .replace("{listen}", &listen.to_string())
            .replace("{peers}", &peers)
    }

    /// Parses and validates configuration text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.node.name)?;
        if let Some(u) = &self.alerts.webhook {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.contains(char::is_whitespace)
            {
                return Err(ConfigError::Invalid {
                    field: "alerts.webhook",
                    msg: "give an http:// or https:// URL".into(),
                });
            }
        }
        let d = &self.discovery;
        if d.heartbeat_interval_secs == 0 || d.heartbeat_interval_secs > 3600 {
            return Err(ConfigError::Invalid {
                field: "discovery.heartbeat_interval_secs",
                msg: format!(
                    "{} is out of range; use 1..=3600",
                    d.heartbeat_interval_secs
                ),
            });
        }
        if d.unreachable_after_secs < 2 * d.heartbeat_interval_secs {
            return Err(ConfigError::Invalid {
                field: "discovery.unreachable_after_secs",
                msg: format!(
                    "{} must be at least twice heartbeat_interval_secs ({}), or every lost heartbeat marks peers unreachable",
                    d.unreachable_after_secs, d.heartbeat_interval_secs
                ),
            });
        }
        if d.forget_after_secs <= d.unreachable_after_secs {
            return Err(ConfigError::Invalid {
                field: "discovery.forget_after_secs",
                msg: format!(
                    "{} must be greater than unreachable_after_secs ({})",
                    d.forget_after_secs, d.unreachable_after_secs
                ),
            });
        }
        if self.replication.spool_max_bytes < (32 << 20) {
            return Err(ConfigError::Invalid {
                field: "replication.spool_max_bytes",
                msg: format!(
                    "{} is too small; use at least 33554432 (32 MiB)",
                    self.replication.spool_max_bytes
                ),
            });
        }
        for p in &d.peers {
            if p.port() == 0 || p.ip().is_unspecified() {
                return Err(ConfigError::Invalid {
                    field: "discovery.peers",
                    msg: format!("{p} is not a reachable address; give ADDR:PORT of a peer"),
                });
            }
        }
        Ok(())
    }
}

/// Checks a node name.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    lifeboat_protocol::name::Name::parse("machine", name)
        .map(|_| ())
        .map_err(|e| ConfigError::Invalid {
            field: "node.name",
            msg: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_documented_defaults() {
        let text = Config::default_toml(
            "alpha",
            "127.0.0.1:9443".parse().unwrap(),
            &["10.1.2.3:9443".parse().unwrap()],
        );
        let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.node.name, "alpha");
        assert_eq!(cfg.discovery.peers.len(), 1);
        assert_eq!(
            DiscoveryConfig {
                peers: vec![],
                ..cfg.discovery.clone()
            },
            DiscoveryConfig::default()
        );
        assert_eq!(cfg.log.format, LogFormat::Pretty);
    }

    #[test]
    fn unknown_fields_are_errors_naming_them() {
        let err = Config::parse("[node]\nname='a'\nlisten_port=1\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn nonsense_values_are_refused() {
        let err = Config::parse(
            "[node]\nname='a'\n[discovery]\nheartbeat_interval_secs=5\nunreachable_after_secs=6\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unreachable_after_secs"), "{err}");
        assert!(Config::parse("[node]\nname='a b'\n", Path::new("x")).is_err());
        assert!(Config::parse("[node]\nname='a'\nlisten='nowhere'\n", Path::new("x")).is_err());
    }
}
