//! `lifeboat quickstart`: Lifeboat's main job on embedded defaults, on this machine.
//!
//! Four real `lifeboat node run` processes on loopback with temporary state directories: the
//! configuration node creates the mesh, the other three register with one-time keys, the
//! configuration node assigns the process-server and mobility roles over the mesh, and every
//! node must see the others with their roles. Then it creates a local vault, protects a
//! generated sample disk on the mobility node, waits for the initial replication and two delta
//! points, restores the latest point and checks it bit-exact against the disk, drills it, and
//! runs the recovery story (`quickstart_recovery`): failover to the recovery site's node,
//! commit, reprotect, changes there, failback with the bytes moved, protected again.

use crate::control::{self, Request};
use crate::init::{init, InitOptions};
use crate::replies::{self, NodeStatus, PointInfo, ReplStatus, Restored, VaultCreated};
use lifeboat_actors::peers::Liveness;
use lifeboat_actors::shell::PeerView;
use lifeboat_config::StateDir;
use lifeboat_protocol::message::Role;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(60);

/// A daemon process that is stopped when dropped.
pub(crate) struct Daemon {
    /// Name.
    name: String,
    /// State dir.
    dir: StateDir,
    /// The process.
    child: Child,
}

impl Daemon {
    pub(crate) fn call(&self, req: Request) -> Result<Value, String> {
        control::call(&self.dir.control_socket(), &self.dir.root, &req, STEP)
            .map_err(|e| format!("{}: {e}", self.name))
    }

    /// A typed reply.
    pub(crate) fn get<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, String> {
        replies::decode(self.call(req)?)
    }

    fn stop(&mut self) {
        let _ = self.call(Request::Shutdown);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Polls `f` until it yields `Some`, at most [`STEP`].
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(
    exe: &Path,
    root: &Path,
    name: &str,
    peers: Vec<std::net::SocketAddr>,
) -> Result<Daemon, String> {
    let dir = StateDir::new(root.join(name));
    init(
        &dir,
        &InitOptions {
            name: Some(name.to_string()),
            listen: Some("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?),
            peers,
            force: false,
        },
    )
    .map_err(|e| e.to_string())?;
    // Keep the demo on this machine: no mDNS announcements on the LAN.
    let cfg_path = dir.config_path();
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| e.to_string())?;
    std::fs::write(&cfg_path, text.replace("mdns = true", "mdns = false"))
        .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(root.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["node", "run", "--state-dir"])
        .arg(&dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let mut d = Daemon {
        name: name.to_string(),
        dir,
        child,
    };
    wait_for(&format!("{name} to start"), || {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Some(Err(format!(
                "{name} exited with {status}; see {}",
                root.join(format!("{name}.log")).display()
            )));
        }
        d.call(Request::Status).ok().map(|_| Ok(()))
    })??;
    Ok(d)
}

fn listen_addr(d: &Daemon) -> Result<std::net::SocketAddr, String> {
    d.get::<NodeStatus>(Request::Status)?
        .listen
        .ok_or_else(|| format!("{} has no listening address", d.name))
}

fn node_id(d: &Daemon) -> Result<String, String> {
    Ok(d.get::<NodeStatus>(Request::Status)?.node_id)
}

/// True if `d` sees `id` reachable with `role`.
fn sees(d: &Daemon, id: &str, role: Role) -> bool {
    d.get::<Vec<PeerView>>(Request::Peers)
        .unwrap_or_default()
        .iter()
        .any(|p| p.node_id == id && p.state == Liveness::Reachable && p.roles.contains(&role))
}

/// Deterministic sample content: random-looking, zero and repeated blocks.
pub(crate) fn sample_block(i: u64, len: usize) -> Vec<u8> {
    match i % 5 {
        1 | 3 => vec![0; len],
        2 => vec![(i % 251) as u8; len],
        _ => {
            let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        }
    }
}

/// Changes the sample disk atomically (write a new file, rename it under the snapshot lock).
pub(crate) fn write_disk(dir: &Path, content: &[u8]) -> Result<(), String> {
    let tmp = dir.join("disk.img.new");
    std::fs::write(&tmp, content).map_err(|e| e.to_string())?;
    let ok = Command::new("flock")
        .arg(dir.join("disk.lock"))
        .arg("mv")
        .arg(&tmp)
        .arg(dir.join("disk.img"))
        .status()
        .map_err(|e| format!("flock: {e}"))?
        .success();
    ok.then_some(())
        .ok_or_else(|| "could not update the sample disk".into())
}

fn points(cfg: &Daemon, machine: &str) -> Result<Vec<PointInfo>, String> {
    cfg.get(Request::Points {
        machine: machine.into(),
    })
}

fn point_after(cfg: &Daemon, t: u64) -> Result<PointInfo, String> {
    point_of_after(cfg, "mobility-1", t)
}

pub(crate) fn point_of_after(cfg: &Daemon, machine: &str, t: u64) -> Result<PointInfo, String> {
    wait_for(&format!("a recovery point of {machine}"), || {
        points(cfg, machine)
            .ok()?
            .into_iter()
            .filter(|p| p.captured_ms > t)
            .min_by_key(|p| p.captured_ms)
    })
}

pub(crate) fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn replicate(root: &Path, cfg: &Daemon, out: &mut dyn FnMut(&str)) -> Result<(), String> {
    let v: VaultCreated = cfg.get(Request::VaultCreate {
        name: "quickstart".into(),
        store: None,
        options: vec![],
        grant_options: None,
    })?;
    out(&format!("created vault {} at {}", v.name, v.url));
    cfg.call(Request::PolicyCreate {
        policy: lifeboat_protocol::message::Policy {
            name: "quickstart".into(),
            rpo_threshold_secs: 60,
            retention_secs: 3600,
            crash_consistent_every_secs: 2,
            app_consistent_every_secs: 0,
            max_freeze_ms: lifeboat_protocol::message::default_max_freeze_ms(),
        },
    })?;
    // A 32 MiB sample disk on the mobility node, with crash-consistent views from a snapshot
    // hook (a copy taken under the same lock the disk's writer holds).
    let bs = 65536usize;
    let dir = root.join("sample");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut disk: Vec<u8> = (0..512u64).flat_map(|i| sample_block(i, bs)).collect();
    write_disk(&dir, &disk)?;
    let d = dir.display();
    let hook = format!(
        "flock {d}/disk.lock cp {d}/disk.img {d}/view.img && echo \"disk.img {d}/view.img\""
    );
    let t = crate::seams::now().0;
    cfg.call(Request::Protect {
        machine: "mobility-1".into(),
        disks: vec![dir.join("disk.img").display().to_string()],
        policy: Some("quickstart".into()),
        process_server: None,
        hooks: lifeboat_protocol::message::Hooks {
            freeze: None,
            thaw: None,
            snapshot: Some(hook),
            shutdown: None,
        },
        block_size: None,
        capture: Default::default(),
    })?;
    out("protecting mobility-1's 32 MiB sample disk (policy: a crash-consistent point every 2 s)");
    let p = point_after(cfg, t)?;
    out(&format!(
        "initial replication: point {} ({}), {} blocks sent, {} stored, {} deduplicated",
        short(&p.id),
        p.consistency,
        p.stats.changed_blocks,
        p.stats.new_blocks,
        p.stats.dedup_blocks
    ));
    for round in 1..=2u64 {
        // Change 1% of the blocks.
        for k in 0..5u64 {
            let b = ((round * 97 + k * 101) % 512) as usize;
            disk[b * bs..(b + 1) * bs].copy_from_slice(&sample_block(1000 * round + k, bs));
        }
        write_disk(&dir, &disk)?;
        let t = crate::seams::now().0;
        let p = point_after(cfg, t)?;
        out(&format!(
            "delta point {}: point {} ({}), {} blocks sent",
            round,
            short(&p.id),
            p.consistency,
            p.stats.changed_blocks
        ));
    }
    let to = root.join("restored");
    let r: Restored = cfg.get(Request::Restore {
        machine: "mobility-1".into(),
        point: "latest".into(),
        to: to.display().to_string(),
        job: None,
    })?;
    let restored = std::fs::read(to.join("disk.img")).map_err(|e| e.to_string())?;
    if restored != disk {
        return Err("the restored image differs from the source disk".into());
    }
    out(&format!(
        "restored point {} to {}: every block and the Merkle root verified, bit-exact with the source",
        short(&r.point.id),
        to.join("disk.img").display()
    ));
    drill(cfg, &disk, out)?;
    super::quickstart_recovery::recover(cfg, &dir, &mut disk, out)?;
    let st: ReplStatus = cfg.get(Request::ReplStatus { machine: None })?;
    if let Some(m) = st.machines.first() {
        out(&format!(
            "status: {} is {}, RPO {}",
            m.machine,
            m.state,
            m.rpo_ms.map_or(
                "- (no point yet)".into(),
                lifeboat_protocol::time::human_duration
            )
        ));
    }
    Ok(())
}

/// A drill of the newest point next to production: the images verified from the vault, a
/// boot hook that finds them, the image compared with the source, then cleaned up.
fn drill(cfg: &Daemon, disk: &[u8], out: &mut dyn FnMut(&str)) -> Result<(), String> {
    let started = crate::seams::now().0;
    let d: replies::Drilled = cfg.get(Request::Drill {
        machine: "mobility-1".into(),
        point: "latest-processed".into(),
        to: None,
        format: "raw".into(),
        boot_hook: Some("test -s \"$LIFEBOAT_IMAGES\" && echo \"booting $LIFEBOAT_MACHINE from $LIFEBOAT_IMAGES\"".into()),
        isolated: false,
        on: None,
        disk_map: vec![],
        job: None,
    })?;
    let image = d.images.first().ok_or("the drill made no image")?;
    let got = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    if got != disk {
        return Err("the drilled image differs from the source disk".into());
    }
    out(&format!(
        "drill {} of {} up from point {} in {:.1} s (boot hook ran); image bit-exact with the source",
        d.drill,
        d.machine,
        short(&d.point),
        d.seconds
    ));
    let c: replies::DrillCleaned = cfg.get(Request::DrillCleanup {
        machine: "mobility-1".into(),
        notes: Some("quickstart".into()),
    })?;
    if image.exists() {
        return Err("drill cleanup left the image behind".into());
    }
    let p = point_after(cfg, started)?;
    out(&format!(
        "drill {} cleaned up ({} files removed); production kept replicating (point {} captured after the drill began)",
        c.drill,
        c.removed_files,
        short(&p.id)
    ));
    Ok(())
}

/// Runs the quickstart; `keep` leaves the state directories in place. Returns the report.
pub fn run(exe: &Path, keep: bool, out: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
    let tmp = tempfile::Builder::new()
        .prefix("lifeboat-quickstart-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = tmp.path().to_path_buf();
    out(&format!("state directories under {}", root.display()));

    let cfg = start(exe, &root, "config-1", vec![])?;
    let cfg_addr = listen_addr(&cfg)?;
    cfg.call(Request::RoleAdd {
        role: "configuration".into(),
        node: None,
    })?;
    let mesh: replies::Joined = cfg.get(Request::MeshCreate)?;
    out(&format!(
        "config-1 ({cfg_addr}) created mesh {}",
        mesh.mesh_id
    ));

    let ps = start(exe, &root, "ps-1", vec![cfg_addr])?;
    let mob = start(exe, &root, "mobility-1", vec![cfg_addr])?;
    // The recovery site's host: drills and failovers land there.
    let rec = start(exe, &root, "recovery-1", vec![cfg_addr])?;
    for d in [&ps, &mob, &rec] {
        let key: replies::KeyIssued = cfg.get(Request::KeyIssue {
            valid_for_ms: 3_600_000,
        })?;
        let r: replies::Joined = d.get(Request::Register { key: key.key })?;
        out(&format!(
            "{} registered with a one-time key (mesh members: {})",
            d.name,
            r.members.unwrap_or(0)
        ));
    }
    let (ps_id, mob_id, cfg_id) = (node_id(&ps)?, node_id(&mob)?, node_id(&cfg)?);
    let rec_id = node_id(&rec)?;
    wait_for(
        "the configuration node to connect to the other nodes",
        || {
            let peers: Vec<PeerView> = cfg.get(Request::Peers).ok()?;
            let n = peers.iter().filter(|p| p.connected).count();
            (n >= 3).then_some(())
        },
    )?;
    cfg.call(Request::RoleAdd {
        role: "process-server".into(),
        node: Some(ps_id.clone()),
    })?;
    cfg.call(Request::RoleAdd {
        role: "mobility".into(),
        node: Some(mob_id.clone()),
    })?;
    cfg.call(Request::RoleAdd {
        role: "mobility".into(),
        node: Some(rec_id.clone()),
    })?;
    out("config-1 granted process-server to ps-1 and mobility to mobility-1 and recovery-1 (the membership record every node acts on)");
    for (d, role) in [
        (&ps, Role::ProcessServer),
        (&mob, Role::Mobility),
        (&rec, Role::Mobility),
    ] {
        wait_for(&format!("{} to apply its granted role", d.name), || {
            let r: replies::RolesReply = d.get(Request::RoleList { node: None }).ok()?;
            r.roles.contains(&role).then_some(())
        })?;
    }

    let all = [
        (&cfg, &cfg_id, Role::Configuration),
        (&ps, &ps_id, Role::ProcessServer),
        (&mob, &mob_id, Role::Mobility),
        (&rec, &rec_id, Role::Mobility),
    ];
    for (viewer, vid, _) in all {
        for (_, id, role) in all {
            if id != vid {
                wait_for(&format!("{} to see {id} as {role:?}", viewer.name), || {
                    sees(viewer, id, role).then_some(())
                })?;
            }
        }
    }
    out("every node sees the others, authenticated, with their roles:");
    let peers: Vec<PeerView> = cfg.get(Request::Peers)?;
    out(&crate::format::peer_table(&peers));

    replicate(&root, &cfg, out)?;
    drop((cfg, ps, mob, rec));
    if keep {
        let kept = tmp.keep();
        out(&format!("kept state directories in {}", kept.display()));
        return Ok(kept);
    }
    Ok(root)
}
