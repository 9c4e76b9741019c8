#![allow(clippy::unwrap_used)]
//! Harness for whole-process tests: real `lifeboat node run` daemons in temporary state
//! directories (optionally inside Linux network namespaces), driven through the real CLI.
//!
//! The binary under test is `$LIFEBOAT_BIN`, or `target/<profile>/lifeboat` next to the test
//! executable; `scripts/test` builds it before running the tests. Every wait is bounded and
//! polls for an event; every process, namespace and directory is cleaned up on drop.

pub mod disks;
pub mod fs;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Default bound for waits.
pub const WAIT: Duration = Duration::from_secs(60);

/// Path of the `lifeboat` binary under test.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LIFEBOAT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/test-xxxx -> target/<profile>/lifeboat
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("lifeboat"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build -p lifeboat-cli`, as scripts/test does) or set LIFEBOAT_BIN",
        p.display()
    );
    p
}

/// Polls `f` every 100 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Liveness timing used by tests (fast, still valid).
#[derive(Clone, Debug)]
pub struct Timing {
    /// Heartbeat period, seconds.
    pub heartbeat: u64,
    /// Unreachable after, seconds.
    pub unreachable: u64,
    /// Forget after, seconds.
    pub forget: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: 1,
            unreachable: 3,
            forget: 120,
        }
    }
}

/// A node: a state directory and, once started, its daemon process.
#[derive(Debug)]
pub struct Node {
    /// Name.
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    /// Network namespace to run in.
    pub netns: Option<String>,
    /// Daemon process.
    child: Option<Child>,
    /// Keeps the state dir alive.
    _tmp: tempfile::TempDir,
}

impl Node {
    /// `lifeboat init` a node listening on `listen`, with static `peers` and mDNS on or off.
    pub fn init(name: &str, listen: &str, peers: &[String], mdns: bool, t: &Timing) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("lifeboat-test-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join(name);
        let mut args: Vec<String> = vec![
            "init".into(),
            "--name".into(),
            name.into(),
            "--listen".into(),
            listen.into(),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        let n = Node {
            name: name.into(),
            dir,
            netns: None,
            child: None,
            _tmp: tmp,
        };
        let out = n.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = n.dir.join("lifeboat.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        let text = text
            .replace("mdns = true", &format!("mdns = {mdns}"))
            .replace(
                "heartbeat_interval_secs = 2",
                &format!("heartbeat_interval_secs = {}", t.heartbeat),
            )
            .replace(
                "unreachable_after_secs = 10",
                &format!("unreachable_after_secs = {}", t.unreachable),
            )
            .replace(
                "forget_after_secs = 600",
                &format!("forget_after_secs = {}", t.forget),
            );
        std::fs::write(&cfg, text).expect("write config");
        n
    }

    /// Runs the node inside `ns`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    fn command(&self, env: &[(&str, &str)], wrapper: &[&str]) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.extend(wrapper.iter().map(|s| s.to_string()));
        argv.push(bin().display().to_string());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Runs a CLI command against this node (outside any namespace: the control socket is a
    /// file).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run lifeboat")
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{}: `lifeboat {}` failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "`lifeboat {}` unexpectedly succeeded",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a CLI command with `--json` and parses the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(&mut self) {
        self.start_with(&[], &[]);
    }

    /// Starts the daemon with extra environment (owned pairs).
    pub fn start_env(&mut self, env: &[(String, String)]) {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.start_with(&e, &[]);
    }

    /// Starts the daemon with extra environment and a wrapper command (e.g. faketime).
    pub fn start_with(&mut self, env: &[(&str, &str)], wrapper: &[&str]) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).expect("log");
        use std::os::unix::process::CommandExt;
        let child = self
            .command(env, wrapper)
            // Own process group: wrappers (faketime, ip netns exec) may not exec, and stopping
            // the group stops the daemon too.
            .process_group(0)
            .args(["node", "run", "--state-dir"])
            .arg(&self.dir)
            .env("LIFEBOAT_LOG", "info,lifeboat_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let name = self.name.clone();
        wait_until(&format!("{name} daemon to answer"), WAIT, || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{name} daemon exited with {st}: {}", self.log());
            }
            self.cli(&["status", "--json"]).status.success()
        });
        // A real node keeps its port across restarts (peers know it by that address): a port
        // the OS picked is written into the configuration for the next start.
        let cfg = self.dir.join("lifeboat.toml");
        if let Ok(text) = std::fs::read_to_string(&cfg) {
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("listen = ") && l.ends_with(":0\""))
            {
                let pinned = text.replace(line, &format!("listen = \"{}\"", self.listen()));
                let _ = std::fs::write(&cfg, pinned);
            }
        }
    }

    /// The daemon's process id (the process group leader: a wrapper, if one was used).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Node id.
    pub fn id(&self) -> String {
        self.json(&["status"])["node"]["node_id"]
            .as_str()
            .expect("node id")
            .to_string()
    }

    /// The address it listens on.
    pub fn listen(&self) -> String {
        self.json(&["status"])["node"]["listen"]
            .as_str()
            .expect("listen")
            .to_string()
    }

    /// Its peer table row for `id`, if any.
    pub fn peer(&self, id: &str) -> Option<Value> {
        self.json(&["peers"])
            .as_array()?
            .iter()
            .find(|p| p["node_id"] == id)
            .cloned()
    }

    /// Kills the daemon with SIGKILL (a crash: no cleanup, no shutdown path).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's process group.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
        // A crashed daemon leaves its control socket behind; the next start must cope.
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 10 s) and returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's process group.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(c.id() as i32), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(c.id() as i32), libc::SIGKILL);
        }
        c.wait().ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} daemon log -----\n{}", self.name, self.log());
        }
        self.stop();
    }
}

/// Makes a mesh: `nodes[0]` becomes the configuration node and creates it, the others register
/// with one-time keys.
pub fn form_mesh(nodes: &[&Node]) {
    let cfg = nodes[0];
    cfg.ok(&["role", "add", "configuration"]);
    cfg.ok(&["mesh", "create"]);
    for n in &nodes[1..] {
        let key = cfg.ok(&["key", "issue", "--valid-for", "1h"]);
        n.ok(&["register", key.trim()]);
    }
}

/// True if `viewer` sees `id` reachable and connected.
pub fn sees_reachable(viewer: &Node, id: &str) -> bool {
    viewer
        .peer(id)
        .is_some_and(|p| p["state"] == "reachable" && p["connected"] == true)
}

/// True if running as root with `ip netns` available.
pub fn can_netns() -> bool {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up (and multicast on `lo`, for loopback mDNS).
    pub fn new(tag: &str) -> Netns {
        let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("lbt-{}-{tag}{n}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Lets multicast (mDNS) flow on `lo` inside the namespace.
    pub fn loopback_multicast(&self) {
        self.exec(&["ip", "link", "set", "lo", "multicast", "on"]);
        self.exec(&["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything left inside, then delete.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Hosts on one Ethernet segment: a bridge in its own "switch" namespace, and per host a
/// namespace joined to it by a veth pair, addressed from 198.18.0.0/24 (benchmarking space,
/// RFC 2544: never routed, and used only inside these namespaces).
#[derive(Debug)]
pub struct Segment {
    /// The switch namespace (holds the bridge and the switch ends of the veths).
    pub switch: Netns,
    /// Host namespaces and their addresses.
    pub hosts: Vec<(Netns, String)>,
}

impl Segment {
    /// Builds a segment of `n` hosts.
    pub fn new(n: usize) -> Segment {
        let switch = Netns::new("sw");
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec(&["ip", "link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let h = Netns::new(&format!("h{i}"));
            let port = format!("port{i}");
            let addr = format!("198.18.0.{}", i + 1);
            // Create the pair inside the switch namespace, then move one end to the host.
            switch.exec(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            ]);
            switch.exec(&["ip", "link", "set", "eth0", "netns", &h.name]);
            switch.exec(&["ip", "link", "set", &port, "master", "br0"]);
            switch.exec(&["ip", "link", "set", &port, "up"]);
            h.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            h.exec(&["ip", "link", "set", "eth0", "up"]);
            hosts.push((h, addr));
        }
        Segment { switch, hosts }
    }

    /// Cuts (false) or restores (true) host `i`'s link at the switch.
    pub fn set_link(&self, i: usize, up: bool) {
        self.switch.exec(&[
            "ip",
            "link",
            "set",
            &format!("port{i}"),
            if up { "up" } else { "down" },
        ]);
    }
}

/// A free TCP port on loopback (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The repository's `tools/` directory (npm-installed Azurite lives there).
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Azurite (Microsoft's Azure Storage emulator), started on a free port; killed on drop.
#[derive(Debug)]
pub struct Azurite {
    /// Blob service port.
    pub port: u16,
    /// The process.
    child: Option<Child>,
    /// Its data directory.
    dir: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite (installed by `scripts/test` into `tools/node_modules`).
    pub fn start() -> Azurite {
        let dir = tempfile::Builder::new()
            .prefix("azurite-")
            .tempdir()
            .expect("tempdir");
        let mut a = Azurite {
            port: free_port(),
            child: None,
            dir,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let bin = tools_dir().join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} missing: run scripts/test (it npm-installs Azurite)",
            bin.display()
        );
        let child = Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--location",
            ])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        self.child = Some(child);
        let port = self.port;
        wait_until("azurite to listen", WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// The blob endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment a daemon needs to use this emulator.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint()),
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
        ]
    }

    /// Creates a container.
    pub fn create_container(&self, name: &str) {
        let out = Command::new("node")
            .arg(tools_dir().join("create-container.js"))
            .arg(self.endpoint())
            .arg(name)
            .output()
            .expect("run node");
        assert!(
            out.status.success(),
            "create container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the emulator (a vault outage); its data stays for [`Azurite::restart`]. SIGTERM
    /// first: Azurite persists its metadata database on a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a mesh: `nodes[0]` is the configuration node; each other `(name, role)` registers and
/// is granted its role by the configuration node. Waits until each node holds its role and the
/// configuration node sees everyone connected.
pub fn mesh_of(nodes: &[(&str, &str)], env: &[(String, String)]) -> Vec<Node> {
    let t = Timing::default();
    let mut cfg = Node::init(nodes[0].0, "127.0.0.1:0", &[], false, &t);
    cfg.start_env(env);
    let peers = vec![cfg.listen()];
    let mut all = vec![cfg];
    for (name, _) in &nodes[1..] {
        let mut n = Node::init(name, "127.0.0.1:0", &peers, false, &t);
        n.start_env(env);
        all.push(n);
    }
    {
        let refs: Vec<&Node> = all.iter().collect();
        form_mesh(&refs);
    }
    for (n, (_, role)) in all.iter().zip(nodes).skip(1) {
        grant(&all[0], n, role);
    }
    for n in &all[1..] {
        let id = n.id();
        wait_until(&format!("config to see {} connected", n.name), WAIT, || {
            all[0].peer(&id).is_some_and(|p| p["connected"] == true)
        });
    }
    all
}

/// Creates the `fast` policy on `cfg`: a crash-consistent point every second, no
/// app-consistent points, 1 h retention, an RPO alert above `rpo`.
pub fn fast_policy(cfg: &Node, rpo: &str) {
    cfg.ok(&[
        "policy",
        "create",
        "fast",
        "--rpo-threshold",
        rpo,
        "--retention",
        "1h",
        "--crash-consistent-every",
        "1s",
        "--app-consistent-every",
        "0",
    ]);
}

/// The configuration node `cfg` grants `role` to `n`; waits until `n` holds it.
pub fn grant(cfg: &Node, n: &Node, role: &str) {
    cfg.ok(&["role", "add", role, "--node", &n.id()]);
    wait_until(&format!("{} to hold the {role} role", n.name), WAIT, || {
        n.json(&["role", "list"])["roles"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == role))
    });
}

/// moto's S3 server (an S3 API emulator, conditional puts included), started on a free port;
/// killed on drop. Its objects live in memory: a restart loses them.
#[derive(Debug)]
pub struct S3Emulator {
    /// Port.
    pub port: u16,
    /// The process.
    child: Child,
}

impl S3Emulator {
    /// Starts moto's server (installed by `scripts/test` into `tools/s3-venv`).
    pub fn start() -> S3Emulator {
        let bin = tools_dir().join("s3-venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} missing: run scripts/test (it pip-installs moto)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3Emulator { port, child };
        wait_until("the S3 emulator to listen", WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s3
    }

    /// The endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment a daemon needs to use this emulator (object_store's `AWS_*` variables).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "lifeboat".into()),
            ("AWS_SECRET_ACCESS_KEY", "lifeboat".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates a bucket (the emulator accepts an unsigned `PUT /bucket`).
    pub fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        c.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(
            c,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "create bucket {name}: {}",
            reply.lines().next().unwrap_or("no reply")
        );
    }
}

impl Drop for S3Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `lifeboat ARGS` against `n`'s state directory on a thread: the command's output when
/// it ends (for commands a test interrupts, e.g. by killing a daemon).
pub fn background(n: &Node, args: &[&str]) -> std::thread::JoinHandle<std::process::Output> {
    let (dir, args): (_, Vec<String>) =
        (n.dir.clone(), args.iter().map(|a| a.to_string()).collect());
    std::thread::spawn(move || {
        Command::new(bin())
            .args(&args)
            .arg("--state-dir")
            .arg(&dir)
            .output()
            .expect("run lifeboat")
    })
}
