//! `lifeboat quickstart`: a three-node mesh on loopback, run from real `lifeboat node run`
//! processes with temporary state directories. First cut (foundation): configuration node
//! creates the mesh, the other two register with one-time keys, the configuration node assigns
//! the process-server and mobility roles remotely, and every node must see the other two as
//! reachable with the right roles before the peer table is printed.

use crate::control::{self, Request};
use crate::init::{init, InitOptions};
use lifeboat_config::StateDir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(60);

/// A daemon process that is stopped when dropped.
struct Daemon {
    /// Name.
    name: String,
    /// State dir.
    dir: StateDir,
    /// The process.
    child: Child,
}

impl Daemon {
    fn call(&self, req: Request) -> Result<Value, String> {
        control::call(&self.dir.control_socket(), &self.dir.root, &req, STEP)
            .map_err(|e| format!("{}: {e}", self.name))
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
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
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
    let s = d.call(Request::Status)?;
    serde_json::from_value(s["listen"].clone()).map_err(|e| e.to_string())
}

fn node_id(d: &Daemon) -> Result<String, String> {
    Ok(d.call(Request::Status)?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// True if `d` sees `id` reachable with `role`.
fn sees(d: &Daemon, id: &str, role: &str) -> bool {
    d.call(Request::Peers)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|p| {
            p["node_id"] == id
                && p["state"] == "reachable"
                && p["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == role))
        })
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
    let mesh = cfg.call(Request::MeshCreate)?;
    out(&format!(
        "config-1 ({cfg_addr}) created mesh {}",
        mesh["mesh_id"].as_str().unwrap_or("?")
    ));

    let ps = start(exe, &root, "ps-1", vec![cfg_addr])?;
    let mob = start(exe, &root, "mobility-1", vec![cfg_addr])?;
    for d in [&ps, &mob] {
        let key = cfg.call(Request::KeyIssue {
            valid_for_ms: 3_600_000,
        })?;
        let key = key["key"].as_str().unwrap_or_default().to_string();
        let r = d.call(Request::Register { key })?;
        out(&format!(
            "{} registered with a one-time key (mesh members: {})",
            d.name, r["members"]
        ));
    }
    let (ps_id, mob_id, cfg_id) = (node_id(&ps)?, node_id(&mob)?, node_id(&cfg)?);
    wait_for("the configuration node to connect to both nodes", || {
        let peers = cfg.call(Request::Peers).ok()?;
        let n = peers
            .as_array()?
            .iter()
            .filter(|p| p["connected"] == true)
            .count();
        (n >= 2).then_some(())
    })?;
    cfg.call(Request::RoleAdd {
        role: "process-server".into(),
        node: Some(ps_id.clone()),
    })?;
    cfg.call(Request::RoleAdd {
        role: "mobility".into(),
        node: Some(mob_id.clone()),
    })?;
    out("config-1 assigned process-server to ps-1 and mobility to mobility-1 over the mesh");

    let all = [
        (&cfg, &cfg_id, "configuration"),
        (&ps, &ps_id, "process-server"),
        (&mob, &mob_id, "mobility"),
    ];
    for (viewer, vid, _) in all {
        for (_, id, role) in all {
            if id != vid {
                wait_for(&format!("{} to see {id} as {role}", viewer.name), || {
                    sees(viewer, id, role).then_some(())
                })?;
            }
        }
    }
    out("every node sees the other two, authenticated, with their roles:");
    let peers = cfg.call(Request::Peers)?;
    out(&crate::format::peer_table(&peers));
    drop((cfg, ps, mob));
    if keep {
        let kept = tmp.keep();
        out(&format!("kept state directories in {}", kept.display()));
        return Ok(kept);
    }
    Ok(root)
}
