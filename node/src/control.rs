//! The local control socket: how the `lifeboat` CLI talks to the daemon of a state directory.
//!
//! A Unix stream socket at `STATE_DIR/control.sock`, mode 0600 (only the node's owner may
//! control it). One request per connection: the client writes one JSON line, the daemon answers
//! with one JSON line. Requests are bounded in size.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest request or response line.
pub const MAX_LINE: usize = 1 << 20;

/// A request to the daemon.
/// A secret in a request: never printed by `Debug` (requests may be logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Node summary.
    Status,
    /// Add a role, locally or on `node`.
    RoleAdd {
        /// Role name.
        role: String,
        /// Remote node id.
        node: Option<String>,
    },
    /// Remove a role, locally or on `node`.
    RoleRemove {
        /// Role name.
        role: String,
        /// Remote node id.
        node: Option<String>,
    },
    /// List roles, locally or of `node`.
    RoleList {
        /// Remote node id.
        node: Option<String>,
    },
    /// Create a mesh on this (configuration) node.
    MeshCreate,
    /// Evict a member (authority).
    MeshRemove {
        /// Node id or name.
        node: String,
    },
    /// Replace the mesh secret (authority).
    MeshRotateSecret {
        /// How long the old secret stays accepted, in milliseconds.
        grace_ms: u64,
    },
    /// Issue a registration key.
    KeyIssue {
        /// Validity in milliseconds.
        valid_for_ms: u64,
    },
    /// Join a mesh with a registration key.
    Register {
        /// The key text.
        key: String,
    },
    /// The peer table.
    Peers,
    /// Create the vault (configuration node).
    VaultCreate {
        /// Vault name.
        name: String,
        /// Store URL (default: a directory under the state dir).
        store: Option<String>,
        /// object_store options.
        options: Vec<(String, String)>,
        /// Options for process servers instead of `options` (their own credentials).
        #[serde(default)]
        grant_options: Option<Vec<(String, String)>>,
    },
    /// Attach an existing vault with its recovery key (configuration node of a new site).
    VaultAttach {
        /// Store URL.
        url: String,
        /// object_store options.
        options: Vec<(String, String)>,
        /// The recovery key (paper form).
        recovery_key: SecretText,
    },
    /// Rotate the vault's sealing key for new writes.
    VaultRekey,
    /// Garbage-collect the vault now.
    VaultGc {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
    /// Create or replace a policy.
    PolicyCreate {
        /// The policy.
        policy: lifeboat_protocol::message::Policy,
    },
    /// List policies.
    PolicyList,
    /// Delete a policy.
    PolicyDelete {
        /// Name.
        name: String,
    },
    /// Protect a machine's disks.
    Protect {
        /// Machine (node id or name).
        machine: String,
        /// Disk paths on the machine.
        disks: Vec<String>,
        /// Policy name.
        policy: Option<String>,
        /// Preferred process server.
        process_server: Option<String>,
        /// Hooks.
        hooks: lifeboat_protocol::message::Hooks,
        /// Block size.
        block_size: Option<u32>,
        /// How changed blocks are found.
        #[serde(default)]
        capture: lifeboat_protocol::message::Capture,
    },
    /// Stop protecting a machine.
    Unprotect {
        /// Machine.
        machine: String,
    },
    /// Recovery points of a machine.
    Points {
        /// Machine.
        machine: String,
    },
    /// Restore a point to raw images.
    Restore {
        /// Machine.
        machine: String,
        /// Point selector.
        point: String,
        /// Target directory.
        to: String,
        /// Job id (the caller's, to watch it).
        #[serde(default)]
        job: Option<String>,
    },
    /// Drill (test failover) a machine from a recovery point.
    Drill {
        /// Machine.
        machine: String,
        /// Point selector.
        point: String,
        /// Image directory.
        to: Option<String>,
        /// `raw` or `qcow2`.
        format: String,
        /// Boot hook.
        boot_hook: Option<String>,
        /// Run the boot hook in an isolated network namespace.
        isolated: bool,
        /// Target node (default: this configuration node).
        #[serde(default)]
        on: Option<String>,
        /// Disks onto existing block devices of the target (name, device).
        #[serde(default)]
        disk_map: Vec<(String, String)>,
        /// Job id (the caller's, to watch it).
        #[serde(default)]
        job: Option<String>,
    },
    /// Fail a machine over to this site from a recovery point.
    Failover {
        /// Machine.
        machine: String,
        /// Point selector.
        point: String,
        /// Image directory.
        to: Option<String>,
        /// `raw` or `qcow2`.
        format: String,
        /// Boot hook.
        boot_hook: Option<String>,
        /// Run the machine's shutdown hook first (going on if it is unreachable).
        #[serde(default)]
        shutdown_source: bool,
        /// Both sites are up: shut the machine down, cut a final point, fail over from it.
        #[serde(default)]
        planned: bool,
        /// Target node (default: this configuration node).
        #[serde(default)]
        on: Option<String>,
        /// Disks onto existing block devices of the target (name, device).
        #[serde(default)]
        disk_map: Vec<(String, String)>,
        /// Job id (the caller's, to watch it).
        #[serde(default)]
        job: Option<String>,
    },
    /// Make a machine's failover final.
    FailoverCommit {
        /// Machine.
        machine: String,
        /// Delete the machine's points but the failover's.
        #[serde(default)]
        discard_points: bool,
    },
    /// Undo a machine's failover (before a commit).
    FailoverCancel {
        /// Machine.
        machine: String,
    },
    /// Replicate a failed-over machine's disks from the recovery site.
    Reprotect {
        /// Machine.
        machine: String,
        /// Shutdown hook of the machine at the recovery site (for `failback --planned`).
        shutdown_hook: Option<String>,
        /// Job id (the caller's, to watch it).
        #[serde(default)]
        job: Option<String>,
    },
    /// Bring a reprotected machine home.
    Failback {
        /// Machine.
        machine: String,
        /// Shut the recovery site's copy down first and fail back from its final point.
        planned: bool,
        /// Job id (the caller's, to watch it).
        #[serde(default)]
        job: Option<String>,
    },
    /// The newest jobs (configuration node).
    Jobs {
        /// How many.
        limit: Option<usize>,
    },
    /// One job.
    Job {
        /// Its id.
        id: String,
    },
    /// Remove what a machine's active drill made.
    DrillCleanup {
        /// Machine.
        machine: String,
        /// The operator's notes.
        notes: Option<String>,
    },
    /// Set this process server's upload bandwidth policy.
    Throttle {
        /// Limit during work hours (e.g. "100Mbit").
        work: Option<String>,
        /// Limit outside work hours.
        off: Option<String>,
        /// Work hours, "HH:MM-HH:MM[+HH:MM]".
        hours: Option<String>,
        /// Remove the limit.
        clear: bool,
    },
    /// Replication status.
    ReplStatus {
        /// One machine, or all.
        machine: Option<String>,
    },
    /// Stop the daemon.
    Shutdown,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// Success with a JSON payload.
    Ok(serde_json::Value),
    /// Failure with a one-line reason.
    Err(String),
}

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens.
    #[error("no lifeboat daemon is running for {dir} (start it with `lifeboat node run --state-dir {dir}`)")]
    NotRunning {
        /// State dir.
        dir: String,
    },
    /// The state directory is missing or not a directory.
    #[error("{0}")]
    BadDir(String),
    /// The daemon refused the request.
    #[error("{0}")]
    Daemon(String),
    /// Talking to the daemon failed.
    #[error("control socket: {0}")]
    Io(String),
}

/// Why nothing answers for `dir`: what is wrong with the path, if something is.
fn not_running(dir: &Path) -> ControlError {
    let d = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => ControlError::BadDir(format!(
            "state directory {d} exists but is not a directory; remove it or choose another --state-dir"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ControlError::BadDir(format!(
            "state directory {d} does not exist; create this node with `lifeboat init --state-dir {d}`"
        )),
        Err(e) => ControlError::BadDir(format!("state directory {d}: {e}")),
        Ok(_) => ControlError::NotRunning {
            dir: d.to_string(),
        },
    }
}

/// Sends `req` to the daemon of `dir` and waits (bounded by `timeout`) for the answer.
pub fn call(
    socket: &Path,
    dir: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    let mut s = UnixStream::connect(socket).map_err(|_| not_running(dir))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| ControlError::Io(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| ControlError::Io(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Io(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| ControlError::Io(e.to_string()))?;
    let mut r = BufReader::new(s).take(MAX_LINE as u64);
    let mut out = String::new();
    r.read_line(&mut out).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ControlError::Io(format!(
            "the daemon did not answer within {}s",
            timeout.as_secs()
        )),
        _ => ControlError::Io(e.to_string()),
    })?;
    match serde_json::from_str::<Response>(&out) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Err(e)) => Err(ControlError::Daemon(e)),
        Err(e) => Err(ControlError::Io(format!("bad answer from daemon: {e}"))),
    }
}

use std::io::Read;

/// True if a daemon answers on `socket`.
pub fn is_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}
