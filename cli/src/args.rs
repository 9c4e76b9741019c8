//! The command line: every command, flag and its help text (clap derive). Parsing only; what a
//! command does is in `main.rs`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use lifeboat_config::STATE_DIR_ENV;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Lifeboat: disaster-recovery replication mesh.
#[derive(Parser, Debug)]
#[command(name = "lifeboat", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// State directory of the node to act on [default: /var/lib/lifeboat for root,
    /// ~/.local/state/lifeboat otherwise].
    #[arg(long, global = true, env = STATE_DIR_ENV, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum LogFormatArg {
    Pretty,
    Json,
}

/// `protect --capture`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum CaptureArg {
    Auto,
    Trace,
    Scan,
}

impl From<CaptureArg> for lifeboat_protocol::message::Capture {
    fn from(c: CaptureArg) -> Self {
        use lifeboat_protocol::message::Capture;
        match c {
            CaptureArg::Auto => Capture::Auto,
            CaptureArg::Trace => Capture::Trace,
            CaptureArg::Scan => Capture::Scan,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Create the state directory, node identity and a documented lifeboat.toml.
    Init {
        /// Node name [default: host name].
        #[arg(long)]
        name: Option<String>,
        /// UDP address to listen on [default: 0.0.0.0:9443].
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
        /// Static peer (repeatable), for links where mDNS does not pass.
        #[arg(long = "peer", value_name = "ADDR:PORT")]
        peers: Vec<SocketAddr>,
        /// Replace an existing identity (the node gets a new id and must register again).
        #[arg(long)]
        force: bool,
    },
    /// Run or stop the node daemon.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Show this node's identity, roles and mesh, and (on the configuration node) the
    /// replication state of protected machines: state, RPO, latest points, process server.
    Status {
        /// Only this machine (node id or name).
        machine: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The vault (on the configuration node).
    Vault {
        #[command(subcommand)]
        cmd: VaultCmd,
    },
    /// Replication policies (on the configuration node).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Protect a machine's disks: initial replication, then continuous delta replication.
    Protect {
        /// The machine: node id or name of a mesh member with the mobility role.
        machine: String,
        /// Block device or image file on that machine (repeatable).
        #[arg(long = "disk", required = true, value_name = "PATH")]
        disks: Vec<String>,
        /// Replication policy [default: default].
        #[arg(long)]
        policy: Option<String>,
        /// Preferred process server (node id or name); any connected one otherwise.
        #[arg(long, value_name = "NODE")]
        process_server: Option<String>,
        /// Quiesce command for app-consistent points (e.g. "fsfreeze -f /mnt").
        #[arg(long, value_name = "CMD")]
        freeze_hook: Option<String>,
        /// Resume command, always run after the freeze hook (e.g. "fsfreeze -u /mnt").
        #[arg(long, value_name = "CMD")]
        thaw_hook: Option<String>,
        /// Command that makes a frozen view and prints "DISK-NAME PATH" lines.
        #[arg(long, value_name = "CMD")]
        snapshot_hook: Option<String>,
        /// Command that shuts the machine (or its applications) down, run by `failover
        /// --shutdown-source` and `--planned` (e.g. "virsh shutdown --domain web").
        #[arg(long, value_name = "CMD")]
        shutdown_hook: Option<String>,
        /// Block size in bytes [default: 65536].
        #[arg(long)]
        block_size: Option<u32>,
        /// How changed blocks are found: `trace` follows the kernel's block tracepoints (block
        /// devices: a cycle reads only what was written; writes through partitions, LVM or
        /// device-mapper on the disk are caught), `scan` reads and hashes every block each
        /// cycle. `auto` traces block devices where tracing is available. Image files are
        /// always scanned (a hypervisor writes them through the page cache, not as requests).
        #[arg(long, value_enum, default_value = "auto")]
        capture: CaptureArg,
    },
    /// Stop protecting a machine (its recovery points stay in the vault).
    Unprotect {
        /// The machine.
        machine: String,
    },
    /// Limit this process server's upload bandwidth to the vault, by work hours.
    Throttle {
        /// Limit during work hours, e.g. 100Mbit.
        #[arg(long, value_name = "RATE")]
        bandwidth_limit: Option<String>,
        /// Limit outside work hours, e.g. 1Gbit [default: the work-hours limit].
        #[arg(long, value_name = "RATE")]
        off_hours_limit: Option<String>,
        /// Work hours, e.g. 08:00-18:00 or 08:00-18:00+01:00 (UTC offset; default UTC).
        #[arg(long, value_name = "HH:MM-HH:MM")]
        work_hours: Option<String>,
        /// Remove the limit.
        #[arg(long, conflicts_with_all = ["bandwidth_limit", "off_hours_limit", "work_hours"])]
        off: bool,
    },
    /// List a machine's recovery points (time, consistency, size, Merkle roots).
    Points {
        /// The machine.
        machine: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drill (test failover): bring a machine's disks up from a recovery point next to
    /// production, which keeps replicating. Images are restored from the vault (every block and
    /// Merkle root verified) on the target node (--on; this configuration node by default),
    /// converted if asked, and handed to the boot hook. `drill cleanup MACHINE` removes them.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Drill {
        #[command(subcommand)]
        action: Option<DrillCmd>,
        /// The machine.
        #[arg(required = true)]
        machine: Option<String>,
        #[command(flatten)]
        land: LandArgs,
        /// Run the boot hook in a fresh network namespace with only loopback, so the drilled
        /// machine cannot reach production.
        #[arg(long)]
        isolated: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fail a machine over to the recovery site: its disks are restored from a recovery point
    /// (every block and Merkle root verified) on the target node (--on; this configuration node
    /// by default) and handed to the boot hook, and its replication stops. Unplanned unless
    /// --planned. Then `failover commit` or `failover cancel`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Failover {
        #[command(subcommand)]
        action: Option<FailoverCmd>,
        /// The machine.
        #[arg(required = true)]
        machine: Option<String>,
        #[command(flatten)]
        land: LandArgs,
        /// Run the machine's shutdown hook (`protect --shutdown-hook`) first; if the machine
        /// is unreachable the failover goes on without it.
        #[arg(long)]
        shutdown_source: bool,
        /// Both sites are healthy: shut the machine down (its shutdown hook), cut a final
        /// point with its last writes, and fail over from that point: no data lost.
        #[arg(long, conflicts_with = "shutdown_source")]
        planned: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicate a failed-over machine (failover committed) from the recovery site: this
    /// node protects its failed-over disks, starting from the failover point (only blocks
    /// changed since the failover move; no initial copy).
    Reprotect {
        /// The machine.
        machine: String,
        /// Command that shuts the machine down at the recovery site (for `failback --planned`).
        #[arg(long, value_name = "CMD")]
        shutdown_hook: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring a reprotected machine home: the recovery site's final point is written onto the
    /// machine's own disks (only the blocks that differ), then the recovery site stops
    /// replicating and the machine's own protection resumes from that point (no initial copy).
    Failback {
        /// The machine.
        machine: String,
        /// Shut the machine down at the recovery site first (`reprotect --shutdown-hook`), so
        /// its final point has its last write.
        #[arg(long)]
        planned: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The newest jobs (long operations on the configuration node): steps, progress, errors.
    Jobs {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One job; with --watch, follow it until it ends (exit 1 if it failed).
    Job {
        /// Job id (from `lifeboat jobs` or a command's output).
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a recovery point's disks as raw images, verifying every block and Merkle root.
    Restore {
        /// The machine.
        machine: String,
        /// latest, latest-app, latest-crash, a point id (prefix), or a time (RFC 3339).
        #[arg(long, default_value = "latest")]
        point: String,
        /// Directory for the images (DISK.img).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add, remove or list roles (configuration, process-server, mobility).
    Role {
        #[command(subcommand)]
        cmd: RoleCmd,
    },
    /// Mesh administration (on the configuration node).
    Mesh {
        #[command(subcommand)]
        cmd: MeshCmd,
    },
    /// Registration keys (on the configuration node).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Join a mesh with a key from `lifeboat key issue`. Give the key as `-` to read it from
    /// standard input, or with --key-file, to keep it out of the process list and shell history.
    Register {
        /// The registration key, or `-` for standard input.
        #[arg(required_unless_present = "key_file")]
        key: Option<String>,
        /// Read the key from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "key")]
        key_file: Option<PathBuf>,
    },
    /// Show known peers: id, name, roles, addresses, how found, last contact.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rehearse the mesh logic (loss, latency, partitions) and the replication data path
    /// (vault faults, crashes, retention, garbage collection) in a deterministic simulation;
    /// a failing run prints the seed that replays it. Runs use every core.
    Simulate {
        /// Seed of the first run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of runs (seeds seed, seed+1, ...).
        #[arg(long, default_value_t = 1)]
        runs: u64,
        /// Nodes in the simulated mesh.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Message loss, per mille (0 to 500: above half, the mesh is not expected to converge,
        /// which the runs check).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=500))]
        loss_permille: u64,
        /// Partition episodes per run.
        #[arg(long, default_value_t = 3)]
        partitions: usize,
        /// Print the event trace.
        #[arg(long)]
        trace: bool,
        /// Rehearse the mesh only (by default each seed also rehearses the replication data
        /// path: the daemon's process-server session, vault client, retention and garbage
        /// collection over a simulated vault with outages, failed and half-done operations,
        /// process-server crashes and clock steps).
        #[arg(long)]
        mesh_only: bool,
        /// (The data path is always rehearsed now; kept for old scripts.)
        #[arg(long, hide = true)]
        data_path: bool,
    },
    /// Lifeboat's main job on a local four-node mesh (configuration, process server, a
    /// protected machine, a recovery-site host): register, assign roles, protect a sample disk
    /// into a local vault, take delta points, restore, drill, fail over, commit, reprotect and
    /// fail back, verifying each step bit-exact.
    Quickstart {
        /// Keep the temporary state directories.
        #[arg(long)]
        keep: bool,
    },
    /// Install Lifeboat on another machine over SSH (on the configuration node): copy this
    /// binary, init, start the daemon (the systemd service where systemd runs), register it
    /// with a fresh one-time key and grant its roles. Run again, it changes nothing.
    PushInstall(PushArgs),
    /// Run this node as a systemd service (restart on failure, hardened) or stop doing so.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCmd {
    /// Write lifeboat.service for this node's state directory, then enable and start it
    /// (where systemd runs). Run again, it changes nothing.
    Install {
        /// Where the unit goes.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Stop, disable and remove lifeboat.service.
    Uninstall {
        /// Where the unit is.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum VaultCmd {
    /// Create the vault and its data key.
    Create {
        /// Vault name.
        name: String,
        /// file:///PATH (default: STATE_DIR/vault), az://CONTAINER or s3://BUCKET.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// object_store option KEY=VALUE (repeatable), e.g. azure_storage_account_name=...
        #[arg(long = "store-option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Give process servers these store options instead of this node's (their own,
        /// narrower credentials: e.g. a SAS that may write and read but not delete). One
        /// KEY=VALUE per line; keeps secrets off the command line.
        #[arg(long, value_name = "FILE")]
        grant_options_file: Option<PathBuf>,
    },
    /// Attach an existing vault with its recovery key, after the configuration node that made
    /// it was lost: this (new) configuration node opens it, takes its mirrored policies and
    /// protections, and can list, drill and fail over the lost site's machines.
    Attach {
        /// file:///PATH, az://CONTAINER or s3://BUCKET.
        url: String,
        /// File holding the recovery key `vault create` printed ("-": standard input). Keeps it
        /// off the command line.
        #[arg(long, value_name = "FILE")]
        recovery_key_file: PathBuf,
        /// object_store option KEY=VALUE (repeatable).
        #[arg(long = "store-option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the vault's data key for new writes (after evicting a process server): process
    /// servers get the new key within seconds; existing points keep restoring.
    Rekey,
    /// Garbage-collect: delete packs and chunks no recovery point references (safe while
    /// replication runs; runs by itself every 15 minutes).
    Gc {
        /// Only touch objects older than this (longer than any upload takes).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCmd {
    /// Create (or replace) a policy.
    Create {
        /// Name.
        name: String,
        /// Alert when RPO exceeds this.
        #[arg(long, default_value = "15m")]
        rpo_threshold: String,
        /// Keep recovery points this long (thinned: all in the last 2 h, then hourly).
        #[arg(long, default_value = "24h")]
        retention: String,
        /// Take a crash-consistent point this often.
        #[arg(long, default_value = "1m")]
        crash_consistent_every: String,
        /// Take an app-consistent point this often ("0" = never).
        #[arg(long, default_value = "1h")]
        app_consistent_every: String,
        /// Longest an app-consistent point may hold the freeze ("0" = no cap): when reading
        /// what changed would take longer, the point is taken crash-consistent instead.
        #[arg(long, default_value = "10s")]
        max_freeze: String,
    },
    /// List policies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one policy.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a policy (refused while machines use it).
    Delete {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// Run the daemon in the foreground (SIGINT/SIGTERM stop it).
    Run,
    /// Ask the running daemon to stop.
    Stop,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RoleCmd {
    /// Add a role (starts at once, persists across restarts).
    Add {
        /// configuration, process-server or mobility.
        #[arg(value_parser = valid_role)]
        role: String,
        /// Grant it to another member, by id or name (on the configuration node; recorded at
        /// once, applied when the member connects).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Remove a role.
    Remove {
        /// configuration, process-server or mobility.
        #[arg(value_parser = valid_role)]
        role: String,
        /// Withdraw it from another member, by id or name (on the configuration node).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// List roles.
    List {
        /// A member's roles as the configuration node granted them (id or name).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum MeshCmd {
    /// Create the mesh secret and membership list (first configuration node only).
    Create,
    /// Evict a member everywhere: its connections are closed and refused from then on.
    Remove {
        /// Node id or name.
        node: String,
    },
    /// Replace the mesh secret; members learn the new one over the mesh. The old one stays
    /// accepted for --grace so that members offline now can come back.
    RotateSecret {
        /// How long the old secret stays accepted (0 = not at all).
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        grace: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCmd {
    /// Print a one-time registration key.
    Issue {
        /// Validity, e.g. 5d, 12h, 30m.
        #[arg(long, default_value = "5d", value_name = "DURATION")]
        valid_for: String,
    },
}

pub(crate) fn valid_role(s: &str) -> Result<String, String> {
    s.parse::<lifeboat_protocol::Role>()
        .map(|r| r.to_string())
        .map_err(|e| e.to_string())
}

/// `drill` subcommands.
#[derive(Subcommand, Debug)]
pub enum DrillCmd {
    /// Remove everything the machine's active drill made, and record it with your notes.
    Cleanup {
        /// The machine.
        machine: String,
        /// What the drill showed (kept in the drill history).
        #[arg(long)]
        notes: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `failover` subcommands.
#[derive(Subcommand, Debug)]
pub enum FailoverCmd {
    /// Make the failover final: the machine lives at this site now (its points stay).
    Commit {
        /// The machine.
        machine: String,
        /// Delete the machine's recovery points except the failover's (reprotect starts from
        /// it); by default they stay until you delete them.
        #[arg(long)]
        discard_points: bool,
    },
    /// Undo the failover (before a commit): the images go and the machine's protection is
    /// given back to it (it must be reachable; it resumes without an initial copy).
    Cancel {
        /// The machine.
        machine: String,
    },
}

/// Where a drill or a failover lands.
#[derive(Args, Debug)]
pub struct LandArgs {
    /// latest (asks the machine, if reachable, to cut a final point and waits for it: the
    /// least data lost), latest-processed (the newest committed point at once: the fastest),
    /// latest-app, latest-crash, a point id (prefix), or a time (RFC 3339).
    #[arg(long, default_value = "latest-processed")]
    pub point: String,
    /// Directory for the images (default: one of its own under the state directory).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Image format: raw, or qcow2 (needs qemu-img).
    #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
    pub format: String,
    /// Command run once the images are ready, to start the machine (virsh, qemu, a cloud
    /// CLI). Its environment: LIFEBOAT_KIND (drill or failover), LIFEBOAT_MACHINE,
    /// LIFEBOAT_POINT, LIFEBOAT_JOB (the drill's or failover's id), LIFEBOAT_FORMAT,
    /// LIFEBOAT_DIR, LIFEBOAT_IMAGES (space-separated paths). Its output goes to
    /// DIR/boot-hook.log.
    #[arg(long, value_name = "CMD")]
    pub boot_hook: Option<String>,
    /// The node the images land on and the boot hook runs on (a mesh member, typically a
    /// hypervisor host at the recovery site; default: this configuration node). It reads the
    /// point straight from the vault, with a key granted for this job only.
    #[arg(long, value_name = "NODE")]
    pub on: Option<String>,
    /// Write disk NAME onto an existing block device of the target instead of an image file
    /// (repeatable); only the blocks that differ from the point are written.
    #[arg(long = "disk-map", value_name = "NAME=DEVICE")]
    pub disk_map: Vec<String>,
}

/// `push-install`.
#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// The machine: a host name or address SSH can reach.
    pub(crate) host: String,
    /// The SSH user (root, or one who can write --remote-bin and --remote-state-dir).
    #[arg(long, value_name = "USER")]
    pub(crate) ssh_user: String,
    /// Private key to log in with [default: ssh's own].
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    pub(crate) ssh_port: u16,
    /// known_hosts file that holds the host's key [default: ssh's own]; the key is checked.
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<PathBuf>,
    /// Role to grant (repeatable).
    #[arg(long = "role", value_parser = valid_role, default_value = "mobility")]
    pub(crate) roles: Vec<String>,
    /// Node name [default: the host's own name].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Where the binary goes on the host.
    #[arg(long, default_value = "/usr/local/bin/lifeboat", value_name = "PATH")]
    pub(crate) remote_bin: PathBuf,
    /// The node's state directory on the host.
    #[arg(long, default_value = "/var/lib/lifeboat", value_name = "DIR")]
    pub(crate) remote_state_dir: PathBuf,
    /// Where the new node reaches this one [default: this node's QUIC port at the address the
    /// host sees this machine from].
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) peer: Option<SocketAddr>,
    /// How long to wait for the node to connect and apply its roles.
    #[arg(long, default_value = "2m")]
    pub(crate) wait: String,
}
