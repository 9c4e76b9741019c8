//! The typed messages nodes exchange, and the [`Envelope`] that carries the protocol version.
//!
//! Every message is encoded with rmp-serde inside a frame (see [`crate::frame`]). Adding a variant
//! is backwards compatible only within a protocol version bump: peers negotiate the version in the
//! handshake and refuse envelopes of another version.

use crate::identity::{NodeId, PublicKey};
use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

mod health;
mod recovery;
mod tracking;
pub use health::PsHealthReport;
pub use recovery::{FailbackDisk, FailbackJob, LandJob, Landed};
pub use tracking::{Capture, CaptureReport, CycleCounters, TrackingReport};

/// A role a node can take. Roles are data: a node can hold any subset, changed at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Registration, inventory, policies, jobs, recovery-point catalog, alerts.
    Configuration,
    /// Receives deltas, spools, compresses, encrypts and uploads them to the vault.
    ProcessServer,
    /// Runs on a protected machine: tracks disk changes and ships them.
    Mobility,
}

impl Role {
    /// Every role, in display order.
    pub const ALL: [Role; 3] = [Role::Configuration, Role::ProcessServer, Role::Mobility];

    /// The role's name as typed on the command line and shown in tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Configuration => "configuration",
            Role::ProcessServer => "process-server",
            Role::Mobility => "mobility",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error parsing a role name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role {0:?}: expected configuration, process-server or mobility")]
pub struct RoleParseError(pub String);

impl FromStr for Role {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleParseError(s.to_string()))
    }
}

/// Formats a role list as `configuration,mobility` (or `-` when empty).
pub fn roles_to_string(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "-".into();
    }
    roles.iter().map(Role::as_str).collect::<Vec<_>>().join(",")
}

/// A member of the mesh, as kept on the configuration node's membership list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Member {
    /// The member's static public key; admission checks it.
    pub public_key: PublicKey,
    /// Human name chosen at `lifeboat init`.
    pub name: String,
    /// Addresses the member was last known to listen on. (IPv6 scope ids are host-local and
    /// not carried on the wire.)
    #[cfg_attr(test, proptest(strategy = "arb_addrs()"))]
    pub addrs: Vec<SocketAddr>,
    /// When the member joined.
    pub joined: UnixMillis,
    /// The roles the configuration node granted this member: the only record of roles any
    /// node acts on (what a node says about itself in handshakes, heartbeats and mDNS is for
    /// display).
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl Member {
    /// The member's node id.
    pub fn node_id(&self) -> NodeId {
        self.public_key.node_id()
    }
}

/// What a node says about itself in the handshake (messages 2 and 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// Human name of the node.
    pub name: String,
    /// Roles the node holds now.
    pub roles: Vec<Role>,
    /// UDP port the node accepts QUIC connections on.
    pub listen_port: u16,
    /// The mesh the node belongs to, if it has joined one.
    pub mesh_id: Option<[u8; 16]>,
    /// Protocol version: in message 2 the version the responder chose, in message 3 an echo.
    pub version: u16,
}

/// Role change requested of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RoleOp {
    /// Add the role (idempotent).
    Add,
    /// Remove the role (idempotent).
    Remove,
}

/// Why a configuration node refused a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RegisterRefusal {
    /// The registration key expired at the given time (configuration node's clock).
    Expired {
        /// Expiry instant of the key.
        expired_at: UnixMillis,
    },
    /// The one-time key was already used by another node.
    AlreadyUsed,
    /// The key is not one this configuration node issued (or the mesh was recreated).
    UnknownKey,
    /// The configuration node could not record the registration (its disk); nothing changed.
    Unavailable,
    /// Another member already has this name (names are unique: they are how people name
    /// machines in commands).
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// The two clocks differ by more than the allowed skew.
    ClockSkew {
        /// Joining node's clock minus the configuration node's clock, in milliseconds.
        skew_ms: i64,
        /// Largest allowed absolute skew, in milliseconds.
        max_ms: u64,
    },
}

impl fmt::Display for RegisterRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::time::human_duration;
        match self {
            RegisterRefusal::Expired { expired_at } => write!(
                f,
                "registration key expired at {}; issue a new one with `lifeboat key issue` on the configuration node",
                crate::time::rfc3339(*expired_at)
            ),
            RegisterRefusal::NameTaken { name } => write!(
                f,
                "another member of the mesh is already named {name:?}; names are unique, choose another with `lifeboat init --name NAME --force` in this state dir"
            ),
            RegisterRefusal::AlreadyUsed => f.write_str(
                "registration key was already used; each key admits one node, issue a new one with `lifeboat key issue`",
            ),
            RegisterRefusal::UnknownKey => f.write_str(
                "registration key is unknown to the configuration node (was the mesh recreated?); issue a new one with `lifeboat key issue`",
            ),
            RegisterRefusal::Unavailable => f.write_str(
                "the configuration node could not record the registration (see its log); the key is still valid, retry later",
            ),
            RegisterRefusal::ClockSkew { skew_ms, max_ms } => write!(
                f,
                "clock skew of {} (this node is {} the configuration node) exceeds the allowed {}; synchronize the clocks (enable NTP, e.g. `timedatectl set-ntp true` or chrony) and retry",
                human_duration(skew_ms.unsigned_abs()),
                if *skew_ms > 0 { "ahead of" } else { "behind" },
                human_duration(*max_ms)
            ),
        }
    }
}

/// A mesh secret on the wire: shown redacted by `Debug`, so no log line can carry it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct MeshSecret(pub [u8; 32]);

impl fmt::Debug for MeshSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshSecret(..)")
    }
}

/// What a joining node receives when registration succeeds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MeshGrant {
    /// Identifier of the mesh.
    pub mesh_id: [u8; 16],
    /// The mesh secret: the Noise PSK of every mesh connection.
    pub mesh_secret: [u8; 32],
    /// Membership list version.
    pub membership_version: u64,
    /// The current membership list (including the new member).
    pub members: Vec<Member>,
}

impl fmt::Debug for MeshGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshGrant")
            .field("mesh_id", &self.mesh_id)
            .field("membership_version", &self.membership_version)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A replication policy (the reference product's "replication policy").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Policy {
    /// Name.
    pub name: String,
    /// RPO above this raises an alert (seconds).
    pub rpo_threshold_secs: u64,
    /// Recovery points are kept this long (seconds), thinned as documented.
    pub retention_secs: u64,
    /// A crash-consistent point is taken this often (seconds).
    pub crash_consistent_every_secs: u64,
    /// An app-consistent point is taken this often (seconds; 0 = never).
    pub app_consistent_every_secs: u64,
    /// Longest an app-consistent point may hold the freeze hook, ms (0: no cap). A point
    /// whose reads would take longer (what change tracking has marked, at the last cycle's
    /// rate) is taken crash-consistent instead, and the machine's status says so.
    #[serde(default = "default_max_freeze_ms")]
    pub max_freeze_ms: u64,
}

/// The freeze cap of a policy that names none: 10 s (what VSS allows a writer on Windows).
pub fn default_max_freeze_ms() -> u64 {
    10_000
}

impl Policy {
    /// The built-in default: tighter than the reference product's (RPO alert at 15 min,
    /// 24 h retention, app-consistent every hour) and a crash-consistent point every minute
    /// instead of every 5 minutes.
    pub fn default_policy() -> Self {
        Policy {
            name: "default".into(),
            rpo_threshold_secs: 15 * 60,
            retention_secs: 24 * 3600,
            crash_consistent_every_secs: 60,
            app_consistent_every_secs: 3600,
            max_freeze_ms: default_max_freeze_ms(),
        }
    }
}

/// A disk to protect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DiskSpec {
    /// Name, unique within the machine (derived from the path by default).
    pub name: String,
    /// Block device or image file on the protected machine.
    pub path: String,
}

/// Commands run around a cycle on the protected machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hooks {
    /// Quiesces applications (e.g. `fsfreeze -f /mnt`); its success makes points app-consistent.
    pub freeze: Option<String>,
    /// Resumes them (e.g. `fsfreeze -u /mnt`); always run after `freeze`.
    pub thaw: Option<String>,
    /// Makes a frozen view; prints, one per line, `NAME PATH` of the view of each disk.
    pub snapshot: Option<String>,
    /// Shuts the machine's applications or the machine down (e.g. `virsh shutdown web`), run
    /// by a failover with `--shutdown-source` or `--planned`.
    #[serde(default)]
    pub shutdown: Option<String>,
}

/// What the configuration node asks a mobility node to protect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ProtectionSpec {
    /// The machine (its mobility node).
    pub machine: NodeId,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// Policy.
    pub policy: Policy,
    /// Preferred process server (any connected one otherwise).
    pub process_server: Option<NodeId>,
    /// Hooks.
    pub hooks: Hooks,
    /// Block size in bytes.
    pub block_size: u32,
    /// How changed blocks are found.
    #[serde(default)]
    pub capture: Capture,
}

/// What a process server needs to reach the vault.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VaultGrant {
    /// Vault name.
    pub name: String,
    /// Store URL (`file:///...`, `az://container`, `s3://bucket`).
    pub url: String,
    /// Data key (master).
    pub master_key: [u8; 32],
    /// Sealing keys added by rotations, oldest first (new objects are sealed with the newest).
    #[serde(default)]
    pub rotations: Vec<[u8; 32]>,
    /// Store options (object_store configuration keys).
    pub options: Vec<(String, String)>,
}

impl fmt::Debug for VaultGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultGrant({}, {})", self.name, self.url)
    }
}

/// Disk geometry in a delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DiskInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size.
    pub block_size: u32,
}

/// Opens a replication stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeltaHeader {
    /// Session id (hex of 16 bytes).
    pub session: String,
    /// Protected machine.
    pub machine: NodeId,
    /// Its name.
    pub machine_name: String,
    /// Point this delta is relative to (None: initial replication; unsent blocks are zero).
    pub base: Option<String>,
    /// Capture time.
    pub captured: UnixMillis,
    /// Consistency of the captured view.
    pub consistency: crate::vault::Consistency,
    /// Disks.
    pub disks: Vec<DiskInfo>,
}

/// One changed block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeltaBlock {
    /// Block index in the disk.
    pub index: u64,
    /// Content; `None` for an all-zero block.
    #[cfg_attr(test, proptest(strategy = "arb_block_data()"))]
    pub data: Option<serde_bytes::ByteBuf>,
    /// `data` is a zstd frame of the block (the mobility node compresses blocks that do not
    /// look random, so they cross the network once, small). The process server decompresses
    /// it, bounded by the block size, to compute the block's id: the id is always of the
    /// plaintext.
    #[serde(default)]
    pub zstd: bool,
}

/// A committed point, as reported to the mobility and configuration nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PointSummary {
    /// Point id.
    pub id: String,
    /// Machine.
    pub machine: NodeId,
    /// Capture time.
    pub captured: UnixMillis,
    /// Commit time.
    pub committed: UnixMillis,
    /// Consistency.
    pub consistency: crate::vault::Consistency,
    /// Cost.
    pub stats: crate::vault::PointStats,
    /// Process server that committed it.
    pub process_server: NodeId,
}

/// Why a process server did not commit a point: what the mobility node must do next depends
/// on the kind, never on the wording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PointFailure {
    /// The delta's base point is not in the vault, or no longer matches the disks: the change
    /// log must be dropped and the next cycle must send every block.
    BaseUnknown {
        /// What did not match.
        detail: String,
    },
    /// The stream was refused (the sender's role, or an invalid header): retrying the same
    /// stream to this node will not help.
    Refused {
        /// Why.
        reason: String,
    },
    /// The point could not be committed now (vault, spool, a broken stream): retry later,
    /// with the same base.
    Failed {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for PointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointFailure::BaseUnknown { detail } => {
                write!(f, "base point unknown ({detail}); a full resync is needed")
            }
            PointFailure::Refused { reason } => write!(f, "refused: {reason}"),
            PointFailure::Failed { reason } => f.write_str(reason),
        }
    }
}

/// Replication state of a protected machine, as its mobility node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ProtectionReport {
    /// Machine.
    pub machine: NodeId,
    /// Initial replication not finished yet.
    pub initial: bool,
    /// A full resync is running (the vault lost the base point, or the disks changed).
    pub resync: bool,
    /// Progress of the running cycle, per mille.
    pub progress_permille: u16,
    /// Bytes changed and not yet in a committed point.
    pub pending_bytes: u64,
    /// Latest committed point known to the mobility node.
    pub last_point: Option<String>,
    /// Last error, if the last cycle failed.
    pub last_error: Option<String>,
    /// Process server of the last cycle.
    pub process_server: Option<NodeId>,
    /// Bytes of the disks scanned by the running full copy (initial replication or resync).
    #[serde(default)]
    pub scanned_bytes: u64,
    /// Bytes of the disks in all.
    #[serde(default)]
    pub total_bytes: u64,
    /// Change tracking.
    #[serde(default)]
    pub tracking: TrackingReport,
    /// Cycle counters.
    #[serde(default)]
    pub counters: CycleCounters,
}

/// A wire message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Message {
    /// Responder's verdict after the handshake: the peer is admitted.
    Accept,
    /// Responder's verdict after the handshake: the peer is refused, and why.
    Refuse {
        /// Human-readable reason.
        reason: String,
    },
    /// Periodic liveness and state announcement between admitted peers.
    Heartbeat {
        /// Sender's clock.
        now: UnixMillis,
        /// Sender's name.
        name: String,
        /// Sender's roles.
        roles: Vec<Role>,
        /// Sender's listen port.
        listen_port: u16,
        /// Version of the membership list the sender holds.
        membership_version: u64,
    },
    /// A joining node asks to be registered (on a connection keyed by a registration key).
    Register {
        /// Joining node's name.
        name: String,
        /// Joining node's clock, for the skew check.
        now: UnixMillis,
        /// Addresses the joining node listens on.
        #[cfg_attr(test, proptest(strategy = "arb_addrs()"))]
        addrs: Vec<SocketAddr>,
    },
    /// Registration succeeded.
    Registered(MeshGrant),
    /// Registration refused.
    RegisterRefused(RegisterRefusal),
    /// The configuration node's current membership list.
    MembershipUpdate {
        /// Version; members ignore versions older than theirs.
        version: u64,
        /// The whole list, with the roles granted to each member.
        members: Vec<Member>,
        /// The mesh secret, when it was rotated (members switch to it; the previous one stays
        /// accepted for a grace period so that members offline at the rotation can return).
        #[serde(default)]
        secret: Option<MeshSecret>,
        /// Until when the secret before the last rotation is still accepted (the grace the
        /// authority chose; members keep the same).
        #[serde(default)]
        previous_until: Option<UnixMillis>,
    },
    /// Ask for the membership list (sent when a heartbeat shows a newer version).
    MembershipRequest,
    /// Configuration node to process server: the vault and its data key.
    VaultGrant(VaultGrant),
    /// Configuration node to mobility node: protect these disks.
    Protect(ProtectionSpec),
    /// Configuration node to mobility node: stop protecting.
    Unprotect {
        /// The machine.
        machine: NodeId,
    },
    /// Mobility to process server: first frame of a replication stream.
    DeltaBegin(DeltaHeader),
    /// Mobility to process server: changed blocks of one disk.
    DeltaBlocks {
        /// Disk index in the header.
        disk: u16,
        /// Blocks.
        blocks: Vec<DeltaBlock>,
    },
    /// Mobility to process server: end of the stream.
    DeltaEnd {
        /// Blocks sent in total (cross-check).
        sent_blocks: u64,
        /// How long an app-consistent point held the freeze hook, ms (recorded with it).
        #[serde(default)]
        freeze_ms: Option<u64>,
    },
    /// Process server to mobility: the point is committed in the vault.
    PointCommitted(PointSummary),
    /// Process server to mobility: the point could not be committed.
    PointFailed(PointFailure),
    /// Process server to configuration node: a point was committed.
    PointNotice(PointSummary),
    /// Mobility to configuration node: replication state.
    Report(ProtectionReport),
    /// Any member to the configuration node: run this replication command (JSON of the
    /// control request) on my behalf.
    Admin {
        /// The control request, JSON.
        request: String,
    },
    /// The result of an [`Message::Admin`]: JSON on success, a one-line reason on failure.
    AdminReply {
        /// Success.
        ok: bool,
        /// JSON or reason.
        body: String,
    },
    /// Opaque bulk bytes (throughput probes; later, replication payloads).
    Bulk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A request failed; the text says why.
    Error {
        /// Human-readable reason.
        message: String,
    },
    /// Configuration node to mobility node: cut a point now (after any cycle in flight) and
    /// answer with it once it is committed (a failover's or drill's final point).
    CutPoint {
        /// The machine.
        machine: NodeId,
    },
    /// The answer to [`Message::CutPoint`]: the committed point's id.
    PointCut {
        /// Point id.
        point: String,
    },
    /// Configuration node to mobility node: run the machine's shutdown hook (a failover with
    /// `--shutdown-source` or `--planned`). Answered with `Accept` once it exited 0.
    ShutdownSource {
        /// The machine.
        machine: NodeId,
    },
    /// Configuration node to a mobility node: write a point of this machine onto its disks,
    /// only the blocks that differ (failback). The grant is for this job only: the node keeps
    /// no copy of the key.
    Failback(FailbackJob),
    /// The answer to [`Message::Failback`]: what each disk cost.
    FailedBack(Vec<FailbackDisk>),
    /// Configuration node to a target node: bring a point up here (drill or failover).
    Land(LandJob),
    /// The answer to [`Message::Land`].
    Landed(Landed),
    /// A target node to the configuration node, while a landing runs: the bytes of the point
    /// restored so far (the job's progress). Taken only from the node the job landed on.
    LandProgress {
        /// The landing's job id.
        job: String,
        /// Bytes restored so far.
        done_bytes: u64,
    },
    /// Configuration node to a target node: remove what a landing made.
    Unland {
        /// The landing's job id.
        job: String,
    },
    /// Configuration node to a target node with the mobility role: seed the change log with
    /// a point (a reprotect of disks a failover landed here).
    AdoptPoint {
        /// The failover's job id (whose block maps this node kept).
        job: String,
        /// The point (of this node) the log starts from.
        point: String,
        /// The disks: the point's names, the landed images.
        disks: Vec<DiskSpec>,
    },
    /// Process server to configuration node: its health (status, metrics).
    PsHealth(PsHealthReport),
}

impl Message {
    /// The variant's name, for logs (never the content, which may hold secrets).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Accept => "accept",
            Message::Refuse { .. } => "refuse",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Register { .. } => "register",
            Message::Registered(_) => "registered",
            Message::RegisterRefused(_) => "register-refused",
            Message::MembershipUpdate { .. } => "membership-update",
            Message::MembershipRequest => "membership-request",
            Message::VaultGrant(_) => "vault-grant",
            Message::Protect(_) => "protect",
            Message::Unprotect { .. } => "unprotect",
            Message::DeltaBegin(_) => "delta-begin",
            Message::DeltaBlocks { .. } => "delta-blocks",
            Message::DeltaEnd { .. } => "delta-end",
            Message::PointCommitted(_) => "point-committed",
            Message::PointFailed(_) => "point-failed",
            Message::PointNotice(_) => "point-notice",
            Message::Report(_) => "report",
            Message::PsHealth(_) => "ps-health",
            Message::Admin { .. } => "admin",
            Message::AdminReply { .. } => "admin-reply",
            Message::Bulk(_) => "bulk",
            Message::Error { .. } => "error",
            Message::CutPoint { .. } => "cut-point",
            Message::PointCut { .. } => "point-cut",
            Message::ShutdownSource { .. } => "shutdown-source",
            Message::Failback(_) => "failback",
            Message::FailedBack(_) => "failed-back",
            Message::Land(_) => "land",
            Message::Landed(_) => "landed",
            Message::LandProgress { .. } => "land-progress",
            Message::Unland { .. } => "unland",
            Message::AdoptPoint { .. } => "adopt-point",
        }
    }
}

/// What a frame carries: the protocol version and one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Envelope {
    /// Protocol version the sender speaks on this connection.
    pub version: u16,
    /// The message.
    pub msg: Message,
}

impl Envelope {
    /// Wraps a message with the current protocol version.
    pub fn new(msg: Message) -> Self {
        Envelope {
            version: crate::PROTOCOL_VERSION,
            msg,
        }
    }
}

/// Optional block payloads for property tests.
#[cfg(test)]
pub(crate) fn arb_block_data(
) -> impl proptest::strategy::Strategy<Value = Option<serde_bytes::ByteBuf>> {
    use proptest::prelude::*;
    proptest::option::of(
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(serde_bytes::ByteBuf::from),
    )
}

/// Wire-representable socket addresses: serde carries neither IPv6 flow info nor scope id.
#[cfg(test)]
pub(crate) fn arb_addrs() -> impl proptest::strategy::Strategy<Value = Vec<SocketAddr>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        (any::<std::net::IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
        0..4,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("storage".parse::<Role>().is_err());
        assert_eq!(roles_to_string(&[]), "-");
        assert_eq!(
            roles_to_string(&[Role::Configuration, Role::Mobility]),
            "configuration,mobility"
        );
    }

    #[test]
    fn clock_skew_refusal_says_how_much_and_what_to_do() {
        let s = RegisterRefusal::ClockSkew {
            skew_ms: -432_000,
            max_ms: 300_000,
        }
        .to_string();
        assert!(s.contains("7m12s"), "{s}");
        assert!(s.contains("behind"), "{s}");
        assert!(s.contains("NTP"), "{s}");
    }
}
