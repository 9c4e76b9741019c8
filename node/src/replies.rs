//! The control socket's replies, as typed structs shared by the daemon (which builds them) and
//! the CLI (which reads them): one definition of every field a command answers with. On the
//! socket they are JSON (what `--json` prints); neither side reads them by string key.

use lifeboat_protocol::message::{DiskSpec, Policy, Role};
use lifeboat_protocol::vault::Consistency;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Decodes a reply of type `T` (a daemon of another version answers with one line of error).
pub fn decode<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("unexpected reply from the daemon: {e}"))
}

/// Encodes a reply for the socket.
pub fn encode<T: Serialize>(r: &T) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// `status`: this node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Roles held.
    pub roles: Vec<Role>,
    /// QUIC address bound.
    pub listen: Option<SocketAddr>,
    /// Addresses announced to peers.
    pub advertise: Vec<SocketAddr>,
    /// Mesh id (hex), if joined.
    pub mesh_id: Option<String>,
    /// Members of the mesh.
    pub members: usize,
    /// Membership record version.
    pub membership_version: u64,
    /// This node is the mesh authority.
    pub authority: bool,
    /// Authenticated connections.
    pub connected_peers: usize,
    /// State directory.
    pub state_dir: PathBuf,
    /// Software version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: u16,
}

/// `role add|remove|list`: a node's roles.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolesReply {
    /// The node.
    pub node_id: String,
    /// Its roles (granted, in a mesh).
    pub roles: Vec<Role>,
    /// The change is in effect on the node (false: recorded, applied when it connects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// A remark for the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its liveness, as this node sees it (`role list --node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `mesh remove`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Removed {
    /// The member's id.
    pub removed: String,
    /// Its name.
    pub name: String,
    /// The roles it held.
    pub roles: Vec<Role>,
    /// What to do next.
    pub advice: String,
}

/// `mesh rotate-secret`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotated {
    /// Done.
    pub rotated: bool,
    /// How long the previous secret is still accepted, ms.
    pub previous_accepted_for_ms: u64,
}

/// `mesh create` and `register`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Joined {
    /// Mesh id (hex).
    pub mesh_id: String,
    /// The node was a member already.
    #[serde(default)]
    pub already_member: bool,
    /// Members after joining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// The configuration node that admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_node: Option<String>,
}

/// `key issue`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyIssued {
    /// The one-time registration key (a secret: printed once, never logged).
    pub key: String,
    /// Expiry, Unix ms.
    pub expires_ms: u64,
    /// Where the new node will register.
    pub config_addrs: Vec<SocketAddr>,
}

/// `vault create`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaultCreated {
    /// Vault name.
    pub name: String,
    /// Store URL.
    pub url: String,
    /// Vault id.
    pub vault_id: String,
    /// Key check value.
    pub key_check: String,
    /// The recovery key (paper form), shown this once.
    #[serde(default)]
    pub recovery_key: String,
}

/// `vault attach`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaultAttached {
    /// Vault name.
    pub name: String,
    /// Store URL.
    pub url: String,
    /// Machines whose protections came back from the vault's mirror.
    pub machines: Vec<String>,
    /// Recovery points in the vault.
    pub points: usize,
}

/// `vault rekey`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rekeyed {
    /// Sealing keys added so far.
    pub rotations: usize,
}

/// `policy create`, `policy delete`, `unprotect`: what was saved or removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Named {
    /// The name.
    #[serde(alias = "deleted", alias = "unprotected")]
    pub name: String,
}

/// `protect`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Protected {
    /// Machine name.
    pub machine: String,
    /// Its node id.
    pub node_id: String,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// Policy name.
    pub policy: String,
}

/// A point, in replies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointRef {
    /// Point id.
    pub id: String,
    /// Capture time, Unix ms.
    pub captured_ms: u64,
    /// Consistency.
    pub consistency: Consistency,
}

/// A disk of a protection, in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskRef {
    /// Name.
    pub name: String,
    /// Path on the machine.
    pub path: String,
}

/// One protected machine in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineStatus {
    /// Name.
    pub machine: String,
    /// Node id.
    pub node_id: String,
    /// Policy.
    pub policy: String,
    /// Disks.
    pub disks: Vec<DiskRef>,
    /// State (`initial-replication`, `protected`, `error`, ...).
    pub state: String,
    /// RPO now (the age of the newest point), ms; none before the first point.
    pub rpo_ms: Option<u64>,
    /// Alert threshold, s.
    pub rpo_threshold_secs: u64,
    /// RPO above the threshold.
    pub alert: bool,
    /// Newest point.
    pub latest_point: Option<PointRef>,
    /// The newest point's data path: blocks sent, bytes received, blocks new and
    /// deduplicated, bytes stored.
    #[serde(default)]
    pub latest_stats: Option<lifeboat_protocol::vault::PointStats>,
    /// Newest crash-consistent point.
    pub latest_crash_consistent: Option<PointRef>,
    /// Newest app-consistent point.
    pub latest_app_consistent: Option<PointRef>,
    /// Process server of the newest point.
    pub process_server: Option<String>,
    /// The mobility node's last error.
    pub last_error: Option<String>,
    /// Progress of the cycle under way, percent.
    pub progress_percent: Option<f64>,
    /// Bytes waiting to be sent.
    pub pending_bytes: u64,
    /// When the last successful drill ran (Unix ms).
    #[serde(default)]
    pub last_drill_ms: Option<u64>,
    /// A drill is up (not cleaned up yet).
    #[serde(default)]
    pub drill_active: bool,
    /// No drill succeeded in the last 90 days of protection.
    #[serde(default)]
    pub drill_overdue: bool,
    /// Change capture per disk and tracking's counters (from the machine's last report).
    #[serde(default)]
    pub tracking: Option<lifeboat_protocol::message::TrackingReport>,
    /// The machine's cycle counters since its daemon started (from its last report).
    #[serde(default)]
    pub cycles: Option<lifeboat_protocol::message::CycleCounters>,
    /// Its points this configuration node has taken since it started.
    #[serde(default)]
    pub totals: PointTotals,
}

/// Sums over the points of a machine the configuration node has taken into its catalog since
/// it started (Prometheus counters: they reset when it restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointTotals {
    /// Points.
    pub points: u64,
    /// Payload bytes the process servers received for them.
    pub received_bytes: u64,
    /// Bytes of the blocks they newly stored, before compression and sealing.
    pub new_bytes: u64,
    /// Sealed bytes they added to the vault.
    pub stored_bytes: u64,
}

impl PointTotals {
    /// Adds a point.
    pub fn add(&mut self, s: &lifeboat_protocol::vault::PointStats, block_size: u64) {
        self.points += 1;
        self.received_bytes += s.received_bytes;
        self.new_bytes += s.new_blocks * block_size;
        self.stored_bytes += s.stored_bytes;
    }
}

/// A process server's health: the counters it reports to the configuration node, and its
/// bandwidth policy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PsHealth {
    /// Spool, backlog and upload counters.
    #[serde(flatten)]
    pub counters: lifeboat_protocol::message::PsHealthReport,
    /// Bandwidth policy.
    pub throttle: Option<lifeboat_actors::replication::Throttle>,
}

/// A process server as the configuration node last heard of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PsSeen {
    /// Node id.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// Connected now.
    pub connected: bool,
    /// How long ago its last report came, ms (none: never, since this node started).
    pub reported_ago_ms: Option<u64>,
    /// Its last report.
    pub health: Option<lifeboat_protocol::message::PsHealthReport>,
}

/// `status` (replication): the mesh's machines and this node's process-server health.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplStatus {
    /// Protected machines.
    pub machines: Vec<MachineStatus>,
    /// This node's process-server health (when it is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_server: Option<PsHealth>,
    /// The mesh's process servers as they last reported (configuration node).
    #[serde(default)]
    pub process_servers: Vec<PsSeen>,
    /// The vault's garbage collection (configuration node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcJob>,
    /// Why the configuration node's view is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// The vault's garbage collection, as a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcJob {
    /// When the pass in flight started (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<u64>,
    /// When the last pass ended (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished_ms: Option<u64>,
    /// Why the last pass failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Packs the last pass deleted.
    #[serde(default)]
    pub last_deleted_packs: u64,
    /// Bytes the last pass freed.
    #[serde(default)]
    pub last_freed_bytes: u64,
}

/// `throttle`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThrottleReply {
    /// The policy now.
    pub throttle: Option<lifeboat_actors::replication::Throttle>,
    /// The limit in force now, bytes/s.
    pub now_bytes_per_sec: Option<u64>,
}

/// One row of `peers`.
pub use lifeboat_actors::shell::PeerView;

/// `policy list`.
pub type Policies = BTreeMap<String, Policy>;

/// `node stop`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopping {
    /// Stopping.
    pub stopping: bool,
}

/// A disk of a point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointDisk {
    /// Name.
    pub name: String,
    /// Size, bytes.
    pub size_bytes: u64,
    /// Merkle root, hex.
    pub merkle_root: String,
}

/// A recovery point, in `points` and `restore`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointInfo {
    /// Id.
    pub id: String,
    /// Machine name.
    pub machine: String,
    /// Capture time, Unix ms.
    pub captured_ms: u64,
    /// Commit time, Unix ms.
    pub committed_ms: u64,
    /// Consistency.
    pub consistency: Consistency,
    /// The point its delta was relative to.
    pub parent: Option<String>,
    /// Cost.
    pub stats: lifeboat_protocol::vault::PointStats,
    /// Disks.
    pub disks: Vec<PointDisk>,
}

/// A restored disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoredDisk {
    /// Name.
    pub name: String,
    /// Image written.
    pub image: PathBuf,
    /// Size, bytes.
    pub size_bytes: u64,
    /// Merkle root, hex (verified).
    pub merkle_root: String,
    /// Blocks.
    pub blocks: u64,
    /// All-zero blocks.
    pub zero_blocks: u64,
    /// Bytes read from the vault.
    pub fetched_bytes: u64,
    /// Time taken.
    pub seconds: f64,
}

/// `drill`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Drilled {
    /// Machine.
    pub machine: String,
    /// Drill id.
    pub drill: String,
    /// The point.
    pub point: String,
    /// Its capture time (Unix ms).
    pub captured_ms: u64,
    /// The node it landed on.
    #[serde(default)]
    pub target: String,
    /// The images, verified.
    pub images: Vec<std::path::PathBuf>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The boot hook ran isolated.
    pub isolated: bool,
    /// The boot hook's exit code, if one ran.
    pub boot_hook_exit: Option<i32>,
    /// How long the drill took to come up.
    pub seconds: f64,
    /// What was asked of the machine first (shutdown hook, final point), one line each.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}

/// `failover`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedOver {
    /// Machine.
    pub machine: String,
    /// Failover id.
    pub failover: String,
    /// The point.
    pub point: String,
    /// Its capture time (Unix ms).
    pub captured_ms: u64,
    /// The node it landed on.
    #[serde(default)]
    pub target: String,
    /// The images, verified.
    pub images: Vec<std::path::PathBuf>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The boot hook's exit code, if one ran.
    pub boot_hook_exit: Option<i32>,
    /// How long it took to come up.
    pub seconds: f64,
    /// What was asked of the machine first (shutdown hook, final point), one line each.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}

/// `failover commit` / `failover cancel`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverChanged {
    /// Machine.
    pub machine: String,
    /// Failover id.
    pub failover: String,
    /// `committed` or `cancelled`.
    pub state: String,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
    /// Points deleted by `commit --discard-points`.
    #[serde(default)]
    pub discarded_points: usize,
}

/// `drill cleanup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillCleaned {
    /// Machine.
    pub machine: String,
    /// Drill id.
    pub drill: String,
    /// Files removed.
    pub removed_files: usize,
    /// The drill had succeeded.
    pub ok: bool,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}

/// `restore`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Restored {
    /// Machine name.
    pub machine: String,
    /// The point.
    pub point: PointInfo,
    /// Disks written.
    pub disks: Vec<RestoredDisk>,
    /// Every block verified.
    pub verified: bool,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}

/// `reprotect`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reprotected {
    /// Machine.
    pub machine: String,
    /// The node its failed-over disks replicate from.
    pub node: String,
    /// That node's first point: the failover point, cloned (no initial copy).
    pub base_point: String,
    /// The disks protected.
    pub images: Vec<std::path::PathBuf>,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}

/// `failback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedBack {
    /// Machine.
    pub machine: String,
    /// The point written onto its disks (its own copy; its protection resumes from it).
    pub point: String,
    /// The recovery site's point it copies.
    pub from_point: String,
    /// What each disk cost.
    pub disks: Vec<lifeboat_protocol::message::FailbackDisk>,
    /// The recovery site's images (left in place; remove them once the machine is verified).
    pub recovery_images: Vec<std::path::PathBuf>,
    /// How long it took.
    pub seconds: f64,
    /// What was asked of the recovery site first (final point, shutdown hook).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The job that ran it.
    #[serde(default)]
    pub job: Option<String>,
}
