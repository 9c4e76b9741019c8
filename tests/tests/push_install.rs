//! Whole-process test: the configuration node push-installs a node onto another host (a
//! network namespace) through a real OpenSSH server, which then joins the mesh with its role;
//! a re-run changes nothing; a host of another OS or architecture, an unknown host key and a
//! missing identity file are refused with one line and nothing copied.

use lifeboat_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// An OpenSSH server inside `ns`, killed on drop.
struct Sshd {
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts sshd in `ns` on `addr:port`; `extra` lines go into its configuration.
fn sshd(ns: &Netns, dir: &Path, addr: &str, port: u16, extra: &str) -> Sshd {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "this test needs the OpenSSH server (scripts/test installs openssh-server)"
    );
    std::fs::create_dir_all("/run/sshd").expect("sshd privilege separation directory");
    let cfg = dir.join(format!("sshd-{port}.conf"));
    let log = dir.join(format!("sshd-{port}.log"));
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress {addr}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {d}/sshd-{port}.pid\n{extra}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
        ])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sshd");
    let s = Sshd { child };
    wait_until("sshd to listen", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server listening"))
    });
    s
}

/// `lifeboat push-install` run on the configuration node, inside its namespace.
fn push(cfg: &Node, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", cfg.netns.as_deref().unwrap()])
        .arg(bin())
        .arg("push-install")
        .args(args)
        .arg("--state-dir")
        .arg(&cfg.dir)
        .stdin(Stdio::null())
        .output()
        .expect("run lifeboat")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn push_install_puts_a_node_on_another_host_over_ssh_and_it_joins_with_its_role() {
    assert!(
        can_netns(),
        "this test needs root and `ip netns` (CI runs as root)"
    );
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let seg = Segment::new(2);
    let (host, addr) = (&seg.hosts[1].0, seg.hosts[1].1.clone());
    keygen(&d.join("id"));
    keygen(&d.join("host"));
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
    let host_pub = std::fs::read_to_string(d.join("host.pub")).unwrap();
    let host_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let kh = d.join("known_hosts");
    std::fs::write(
        &kh,
        format!("{addr} {k}\n[{addr}]:2222 {k}\n", k = host_key.join(" ")),
    )
    .unwrap();
    // A second server whose `uname` reports another OS and architecture.
    let fake = d.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("uname"),
        "#!/bin/sh\ncase \"$1\" in -s) echo Darwin;; -m) echo arm64;; -n) echo mac;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(fake.join("uname"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ssh = sshd(host, d, &addr, 22, "");
    let _ssh_foreign = sshd(
        host,
        d,
        &addr,
        2222,
        &format!("SetEnv PATH={}:/usr/bin:/bin", fake.display()),
    );

    let t = Timing::default();
    let mut cfg = Node::init("cfg", "0.0.0.0:9443", &[], false, &t).in_netns(&seg.hosts[0].0.name);
    cfg.start();
    form_mesh(&[&cfg]);

    let remote = d.join("remote");
    let remote_bin: PathBuf = remote.join("bin/lifeboat");
    let remote_state = remote.join("state");
    let id = d.join("id").display().to_string();
    let khs = kh.display().to_string();
    let rb = remote_bin.display().to_string();
    let rs = remote_state.display().to_string();
    let common = [
        "--ssh-user",
        "root",
        "--identity",
        &id,
        "--known-hosts",
        &khs,
        "--remote-bin",
        &rb,
        "--remote-state-dir",
        &rs,
        "--wait",
        "90s",
    ];
    let mut args = vec![addr.as_str(), "--name", "web-9"];
    args.extend_from_slice(&common);

    let out = push(&cfg, &args);
    let (so, se) = text(&out);
    assert!(out.status.success(), "push-install failed: {so}{se}");
    for step in [
        "probe: root@",
        "copied: ",
        "init: ",
        "daemon: started",
        "register: joined",
        "done: web-9",
    ] {
        assert!(so.contains(step), "no {step:?} in:\n{so}");
    }
    // The binary there is this one, the identity is private, and the node is in the mesh with
    // its role, connected.
    assert_eq!(
        std::fs::read(&remote_bin).unwrap(),
        std::fs::read(bin()).unwrap(),
        "the copied binary differs"
    );
    let mode = std::fs::metadata(remote_state.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity.key mode {mode:o}");
    let peers = cfg.json(&["peers"]);
    let web = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web-9")
        .unwrap_or_else(|| panic!("web-9 not among the peers: {peers}"))
        .clone();
    assert_eq!(web["connected"], true, "{web}");
    let roles = cfg.json(&["role", "list", "--node", "web-9"]);
    assert_eq!(roles["roles"], serde_json::json!(["mobility"]), "{roles}");
    assert_eq!(roles["applied"], true, "{roles}");
    // The one-time key went over SSH's standard input: it is in no log on either side.
    let remote_log = std::fs::read_to_string(remote_state.join("node.log")).unwrap_or_default();
    for (what, t) in [
        ("output", format!("{so}{se}")),
        ("remote log", remote_log),
        ("log", cfg.log()),
    ] {
        assert!(
            !t.contains("lbk1-"),
            "a registration key is in the {what}: {t}"
        );
    }

    // Again: nothing changes.
    let out = push(&cfg, &args);
    let (so, se) = text(&out);
    assert!(out.status.success(), "re-run failed: {so}{se}");
    assert!(so.contains("unchanged"), "{so}");
    assert!(so.contains("already initialized"), "{so}");
    assert!(so.contains("daemon: already running"), "{so}");
    assert!(so.contains("is a member already"), "{so}");
    let roles2 = cfg.json(&["role", "list", "--node", "web-9"]);
    assert_eq!(roles2["node_id"], roles["node_id"], "the node id changed");

    // An upgrade: the host runs another build (here: one byte longer); pushing this one
    // restarts the daemon on it, and the node comes back with its role.
    let older = remote_bin.with_extension("older");
    let mut b = std::fs::read(&remote_bin).unwrap();
    b.push(0);
    std::fs::write(&older, b).unwrap();
    std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&older, &remote_bin).unwrap();
    let out = push(&cfg, &args);
    let (so, se) = text(&out);
    assert!(out.status.success(), "upgrade failed: {so}{se}");
    for step in [
        "daemon: stopped, to restart",
        "daemon: started",
        "done: web-9",
    ] {
        assert!(so.contains(step), "no {step:?} in:\n{so}");
    }
    assert_eq!(
        std::fs::read(&remote_bin).unwrap(),
        std::fs::read(bin()).unwrap()
    );
    let starts = std::fs::read_to_string(remote_state.join("node.log"))
        .unwrap()
        .matches("lifeboat node starting")
        .count();
    assert_eq!(starts, 2, "the daemon was not restarted once");
    let roles3 = cfg.json(&["role", "list", "--node", "web-9"]);
    assert_eq!(roles3["node_id"], roles["node_id"]);
    assert_eq!(roles3["applied"], true, "{roles3}");

    // A host this binary cannot serve: refused after the probe, nothing copied.
    let other_bin = d.join("other/bin/lifeboat").display().to_string();
    let mut args = vec![addr.as_str(), "--ssh-port", "2222"];
    args.extend_from_slice(&common);
    let pos = args.iter().position(|a| *a == "--remote-bin").unwrap();
    args[pos + 1] = &other_bin;
    let out = push(&cfg, &args);
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert_eq!(se.trim().lines().count(), 1, "{se}");
    assert!(
        se.contains("refusing root@") && se.contains("runs Darwin arm64"),
        "{se}"
    );
    assert!(
        !Path::new(&other_bin).exists(),
        "a binary was copied to a refused host"
    );

    // A host whose key is not the one known: ssh refuses it, so does push-install.
    let empty = d.join("known_hosts.empty");
    std::fs::write(&empty, "").unwrap();
    let es = empty.display().to_string();
    let mut args = vec![addr.as_str()];
    args.extend_from_slice(&common);
    let pos = args.iter().position(|a| *a == "--known-hosts").unwrap();
    args[pos + 1] = &es;
    let out = push(&cfg, &args);
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert_eq!(se.trim().lines().count(), 1, "{se}");
    assert!(se.contains("Host key verification failed"), "{se}");

    // A missing identity file, a relative remote path and a configuration role: one line each.
    for (flag, bad, says) in [
        (
            "--identity",
            "/nonexistent/id",
            "--identity /nonexistent/id",
        ),
        ("--remote-bin", "bin/lifeboat", "must be an absolute path"),
    ] {
        let mut args = vec![addr.as_str()];
        args.extend_from_slice(&common);
        let pos = args.iter().position(|a| *a == flag).unwrap();
        args[pos + 1] = bad;
        let out = push(&cfg, &args);
        let (_, se) = text(&out);
        assert!(!out.status.success());
        assert_eq!(se.trim().lines().count(), 1, "{se}");
        assert!(se.contains(says), "{se}");
    }
    // A configuration node the host could not reach: refused before anything is copied.
    let mut args = vec![addr.as_str(), "--peer", "127.0.0.1:9443"];
    args.extend_from_slice(&common);
    let pos = args.iter().position(|a| *a == "--remote-bin").unwrap();
    args[pos + 1] = &other_bin;
    let out = push(&cfg, &args);
    let (_, se) = text(&out);
    assert!(!out.status.success());
    assert_eq!(se.trim().lines().count(), 1, "{se}");
    assert!(
        se.contains("loopback address") && se.contains("cannot reach"),
        "{se}"
    );
    assert!(
        !Path::new(&other_bin).exists(),
        "a binary was copied for an unreachable mesh"
    );
    let mut args = vec![addr.as_str(), "--role", "configuration"];
    args.extend_from_slice(&common);
    let (_, se) = text(&push(&cfg, &args));
    assert!(se.contains("one configuration node"), "{se}");
    cfg.stop();
}
