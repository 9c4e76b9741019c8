//! The recovery jobs a configuration node sends: a landing (drill or failover target) and
//! a failback, and their answers.

use super::*;

/// A point to bring up on a target node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LandJob {
    /// `drill` or `failover`.
    pub kind: String,
    /// The drill's or failover's id.
    pub job: String,
    /// The machine whose point it is.
    pub machine: NodeId,
    /// Its name.
    pub machine_name: String,
    /// The point id.
    pub point: String,
    /// The vault, for this job only.
    pub grant: VaultGrant,
    /// Image directory (absolute; default: one of its own under the target's state directory).
    pub dir: Option<String>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Boot hook.
    pub boot_hook: Option<String>,
    /// Run the boot hook in a fresh network namespace with only loopback.
    pub isolated: bool,
    /// Keep each disk's BLAKE3 map as restored (a reprotect's base).
    pub keep_maps: bool,
    /// Disks written onto existing block devices (the point's disk name, the device) instead
    /// of image files: only the blocks that differ are written.
    #[serde(default)]
    pub disk_map: Vec<DiskSpec>,
}

/// What a landing made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Landed {
    /// Image directory.
    pub dir: String,
    /// Images, verified.
    pub images: Vec<String>,
    /// The boot hook's exit code, if one ran.
    pub boot_hook_exit: Option<i32>,
    /// Why it failed after it began (what it made stays until it is unlanded).
    pub error: Option<String>,
}

/// A failback job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FailbackJob {
    /// The machine (the receiving mobility node).
    pub machine: NodeId,
    /// The vault, for this job only.
    pub grant: VaultGrant,
    /// The point (of this machine) to write.
    pub point: String,
    /// Where each of its disks goes (the point's disk name, the local path).
    pub disks: Vec<DiskSpec>,
}

/// What failing back one disk cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FailbackDisk {
    /// Disk name.
    pub name: String,
    /// Bytes of the local disk read and compared.
    pub read_bytes: u64,
    /// Blocks compared.
    pub compared_blocks: u64,
    /// Blocks that differed and were written.
    pub written_blocks: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Bytes fetched from the vault.
    pub fetched_bytes: u64,
}
