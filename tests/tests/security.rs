//! Whole-process security tests. Each plays one compromised member (root on its machine: its
//! identity key and the mesh secret are the attacker's) against real daemons, performs the
//! attack, and shows it refused with a clear log line on the victim. `docs/SECURITY.md` is the
//! threat model these tests check.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(20);

/// A configuration node with a local vault, a process server, a protected machine `web-1`
/// with a first point, and `intruder`, a member with the mobility role: the attacker.
struct Site {
    cfg: Node,
    ps: Node,
    web: Node,
    evil: Node,
    _work: tempfile::TempDir,
    web_disk: Disk,
}

fn site() -> Site {
    let mut nodes = mesh_of(
        &[
            ("config", "configuration"),
            ("ps", "process-server"),
            ("web-1", "mobility"),
            ("intruder", "mobility"),
        ],
        &[],
    );
    let evil = nodes.pop().unwrap();
    let web = nodes.pop().unwrap();
    let ps = nodes.pop().unwrap();
    let cfg = nodes.pop().unwrap();
    cfg.ok(&["vault", "create", "v1"]);
    fast_policy(&cfg, "1m");
    let work = tempfile::tempdir().unwrap();
    let web_disk = Disk::new(&work.path().join("web"), &initial_disk());
    cfg.ok(&[
        "protect",
        "web-1",
        "--disk",
        web_disk.path().to_str().unwrap(),
        "--policy",
        "fast",
    ]);
    point_after(&cfg, "web-1", 0);
    Site {
        cfg,
        ps,
        web,
        evil,
        _work: work,
        web_disk,
    }
}

/// Waits until `n`'s log shows `line`.
fn logs(n: &Node, line: &str) {
    wait_until(&format!("{} to log {line:?}", n.name), SOON, || {
        n.log().contains(line)
    });
}

#[path = "security/impostor.rs"]
mod impostor;
use impostor::Impostor;

fn now_unix() -> lifeboat_protocol::UnixMillis {
    lifeboat_protocol::UnixMillis(now_ms())
}

#[test]
fn a_member_cannot_register_under_a_name_another_member_holds() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    let mut web = Node::init("web-1", "127.0.0.1:0", &[], false, &t);
    web.start();
    form_mesh(&[&cfg, &web]);
    let mut spoof = Node::init("web-1", "127.0.0.1:0", &[], false, &t);
    spoof.start();
    let key = cfg.ok(&["key", "issue"]);
    let err = spoof.fails(&["register", key.trim()]);
    assert!(err.contains("already named \"web-1\""), "{err}");
    // The refusal burned nothing: the same key admits a node with its own name.
    let mut other = Node::init("web-2", "127.0.0.1:0", &[], false, &t);
    other.start();
    other.ok(&["register", key.trim()]);
    // Names resolve to one member; commands are about that member's id.
    let web_id = web.id();
    let v = cfg.json(&["role", "list", "--node", "web-1"]);
    assert_eq!(v["node_id"], web_id.as_str());
}

#[test]
fn a_member_cannot_protect_unprotect_or_read_another_machine() {
    let s = site();
    let web_id = s.web.id();
    let marker = s._work.path().join("pwned");
    let hook = format!("touch {}", marker.display());
    for target in ["web-1", web_id.as_str()] {
        // Another machine's disks, hooks that would run as root there, and itself as the
        // process server that would receive the data.
        let err = s.evil.fails(&[
            "protect",
            target,
            "--disk",
            "/etc/shadow",
            "--process-server",
            "intruder",
            "--snapshot-hook",
            &hook,
        ]);
        assert!(
            err.contains("only protect, unprotect or list the points of its own machine"),
            "{err}"
        );
        let err = s.evil.fails(&["unprotect", target]);
        assert!(err.contains("its own machine"), "{err}");
        let err = s.evil.fails(&["points", target]);
        assert!(err.contains("its own machine"), "{err}");
    }
    logs(&s.cfg, "refused a forwarded command");
    // Status from a member shows its own machine only.
    let st = s.evil.ok(&["status", "--json"]);
    assert!(!st.contains(&web_id), "{st}");
    // Even for itself, a member names only a granted process server.
    let own = s._work.path().join("own.img");
    std::fs::write(&own, vec![1u8; 1 << 20]).unwrap();
    let err = s.evil.fails(&[
        "protect",
        "intruder",
        "--disk",
        own.to_str().unwrap(),
        "--process-server",
        "intruder",
    ]);
    assert!(
        err.contains("does not hold the process-server role"),
        "{err}"
    );
    // The victim's protection is untouched and keeps producing points; no hook ran.
    let t = now_ms();
    point_after(&s.cfg, "web-1", t);
    let st = s.cfg.json(&["status", "web-1"]);
    let disks = st["replication"]["machines"][0]["disks"].to_string();
    assert!(
        disks.contains(s.web_disk.path().to_str().unwrap()),
        "{disks}"
    );
    assert!(!disks.contains("shadow"), "{disks}");
    assert!(!marker.exists(), "a hook from another member ran");
}

#[test]
fn a_member_cannot_take_a_role_or_the_vault_key() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    let peers = vec![cfg.listen()];
    let mut ps = Node::init("ps", "127.0.0.1:0", &peers, false, &t);
    let mut evil = Node::init("intruder", "127.0.0.1:0", &peers, false, &t);
    ps.start();
    evil.start();
    form_mesh(&[&cfg, &ps, &evil]);
    cfg.ok(&["vault", "create", "v1"]);
    // Asking is refused...
    let err = evil.fails(&["role", "add", "process-server"]);
    assert!(err.contains("granted by its configuration node"), "{err}");
    // ...and so is claiming: root on the machine writes the roles file and restarts. The node
    // takes its roles from the configuration node's record again; nothing is granted to it.
    evil.stop();
    std::fs::write(
        evil.state_dir().join("roles.json"),
        r#"{"roles":["configuration","process-server","mobility"]}"#,
    )
    .unwrap();
    evil.start();
    let evil_id = evil.id();
    wait_until("the intruder to be connected", SOON, || {
        cfg.peer(&evil_id).is_some_and(|p| p["connected"] == true)
    });
    wait_until("the intruder's claimed roles to be reset", SOON, || {
        evil.json(&["role", "list"])["roles"]
            .as_array()
            .is_some_and(|r| r.is_empty())
    });
    // A grant round runs while the intruder is connected: the real process server gets the
    // vault, the intruder does not.
    grant(&cfg, &ps, "process-server");
    wait_until("the process server to receive the vault", SOON, || {
        ps.state_dir().join("vault.json").exists()
    });
    assert!(!evil.state_dir().join("vault.json").exists());
    let peer = cfg.peer(&evil_id).unwrap();
    assert_eq!(peer["roles"], serde_json::json!([]), "{peer}");

    // Without the mobility role it cannot write points through the process server either.
    evil.stop();
    let imp = Impostor::connect(evil.state_dir(), &ps.listen());
    let reply = imp.ask(lifeboat_protocol::Message::DeltaBegin(
        lifeboat_protocol::message::DeltaHeader {
            session: "00".repeat(16),
            machine: evil_id.parse().unwrap(),
            machine_name: "intruder".into(),
            base: None,
            captured: now_unix(),
            consistency: lifeboat_protocol::vault::Consistency::CrashConsistent,
            disks: vec![],
        },
    ));
    match reply {
        lifeboat_protocol::Message::PointFailed(
            lifeboat_protocol::message::PointFailure::Refused { reason },
        ) => {
            assert!(reason.contains("mobility role"), "{reason}")
        }
        other => panic!("the process server accepted a stream: {other:?}"),
    }
    logs(&ps, "refused a replication stream");
    assert!(ps
        .log()
        .contains("has not granted the sender the mobility role"));
}

#[test]
fn forged_point_notices_are_refused_and_change_nothing() {
    let mut s = site();
    let web_id: lifeboat_protocol::NodeId = s.web.id().parse().unwrap();
    let cfg_addr = s.cfg.listen();
    let notice = |id: &str, captured| {
        lifeboat_protocol::Message::PointNotice(lifeboat_protocol::message::PointSummary {
            id: id.into(),
            machine: web_id,
            captured,
            committed: captured,
            consistency: lifeboat_protocol::vault::Consistency::AppConsistent,
            stats: Default::default(),
            process_server: web_id,
        })
    };
    let day_ahead = lifeboat_protocol::UnixMillis(now_ms() + 86_400_000);
    // From a member that is no process server.
    s.evil.stop();
    let imp = Impostor::connect(s.evil.state_dir(), &cfg_addr);
    imp.tell(notice(&"ab".repeat(16), day_ahead));
    logs(&s.cfg, "refused a message");
    assert!(s
        .cfg
        .log()
        .contains("has not granted the sender the process-server role"));
    // From a compromised process server: a future time, and a point the vault does not hold.
    s.ps.stop();
    let imp = Impostor::connect(s.ps.state_dir(), &cfg_addr);
    imp.tell(notice(&"cd".repeat(16), day_ahead));
    logs(&s.cfg, "claims a capture time in the future");
    imp.tell(notice(&"ef".repeat(16), now_unix()));
    logs(&s.cfg, "is not in the vault");
    // The catalog still names a real point, and the RPO reflects the real one.
    let st = s.cfg.json(&["status", "web-1"]);
    let latest = st["replication"]["machines"][0]["latest_point"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        points(&s.cfg, "web-1")
            .iter()
            .any(|p| p["id"] == latest.as_str()),
        "catalog names {latest}, which is not a committed point"
    );
    assert!(
        !latest.starts_with("abab") && !latest.starts_with("cdcd") && !latest.starts_with("efef")
    );
}

#[test]
fn restore_replaces_a_planted_symlink_and_writes_private_images() {
    let s = site();
    let out = s._work.path().join("restored");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = s._work.path().join("precious.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("disk.img")).unwrap();
    let p = point_after(&s.cfg, "web-1", 0);
    let got = restore(&s.cfg, "web-1", p["id"].as_str().unwrap(), &out);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep me",
        "restore wrote through a symlink"
    );
    let m = std::fs::symlink_metadata(out.join("disk.img")).unwrap();
    assert!(
        m.file_type().is_file(),
        "the symlink was replaced by the image"
    );
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert!(
        got == initial_disk(),
        "the restored image differs from the disk"
    );
    // A directory restore creates is private too; no staging file is left behind.
    let fresh = s._work.path().join("new-dir");
    restore(&s.cfg, "web-1", "latest", &fresh);
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let names: Vec<String> = std::fs::read_dir(&fresh)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["disk.img".to_string()]);
}

#[test]
fn a_point_copied_under_another_machine_does_not_verify() {
    let s = site();
    let (web_id, evil_id) = (s.web.id(), s.evil.id());
    let vault = s.cfg.state_dir().join("vault").join("points");
    let src = std::fs::read_dir(vault.join(&web_id))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.to_string_lossy().contains('#'))
        .unwrap();
    std::fs::create_dir_all(vault.join(&evil_id)).unwrap();
    std::fs::copy(&src, vault.join(&evil_id).join(src.file_name().unwrap())).unwrap();
    assert!(points(&s.cfg, "intruder").is_empty());
    logs(
        &s.cfg,
        "ignoring a point object that does not verify under its name",
    );
    let to = s._work.path().join("stolen");
    let err = s
        .cfg
        .fails(&["restore", "intruder", "--to", to.to_str().unwrap()]);
    assert!(err.contains("no recovery point"), "{err}");
    // The real machine's points still list and restore.
    assert!(!points(&s.cfg, "web-1").is_empty());
}

#[test]
fn an_evicted_member_is_cut_off_and_a_rotated_secret_reaches_the_others() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    let peers = vec![cfg.listen()];
    let mut a = Node::init("alpha", "127.0.0.1:0", &peers, false, &t);
    let mut evil = Node::init("intruder", "127.0.0.1:0", &peers, false, &t);
    a.start();
    evil.start();
    form_mesh(&[&cfg, &a]);
    let evil_key = cfg.ok(&["key", "issue"]);
    evil.ok(&["register", evil_key.trim()]);
    let (ia, ie) = (a.id(), evil.id());
    for v in [&cfg, &a] {
        wait_until(&format!("{} to see the intruder", v.name), SOON, || {
            sees_reachable(v, &ie)
        });
    }
    let out = cfg.ok(&["mesh", "remove", "intruder"]);
    assert!(out.contains("removed intruder"), "{out}");
    for v in [&cfg, &a] {
        wait_until(&format!("{} to drop the intruder", v.name), SOON, || {
            v.peer(&ie).is_none_or(|p| p["connected"] == false)
        });
    }
    logs(
        &cfg,
        "closing the connection of a node that is no longer a member",
    );
    // It cannot come back: its dials are refused.
    logs(&cfg, "is not on the membership list of this mesh");
    let mesh_version = |n: &Node| {
        let m: Value =
            serde_json::from_slice(&std::fs::read(n.state_dir().join("mesh.json")).unwrap())
                .unwrap();
        (
            m["membership_version"].as_u64().unwrap(),
            m["secret"].clone(),
        )
    };
    // It receives nothing: a later change reaches alpha, not the intruder.
    let (evil_version, _) = mesh_version(&evil);
    grant(&cfg, &a, "mobility");
    let (cfg_version, _) = mesh_version(&cfg);
    assert!(cfg_version > evil_version);
    assert_eq!(mesh_version(&evil).0, evil_version);

    // Rotating the secret: members learn the new one over the mesh and reconnect with it.
    let (_, old) = mesh_version(&cfg);
    cfg.ok(&["mesh", "rotate-secret", "--grace", "0"]);
    let (_, new) = mesh_version(&cfg);
    assert_ne!(old, new);
    wait_until("alpha to learn the new secret", SOON, || {
        mesh_version(&a).1 == new
    });
    a.stop();
    a.start();
    wait_until("alpha to reconnect with the new secret", SOON, || {
        sees_reachable(&cfg, &ia)
    });
    // The evicted node still knows only the old secret: refused at the handshake.
    evil.stop();
    evil.start();
    logs(&cfg, "unknown mesh secret or registration key");
    assert!(cfg.peer(&ie).is_none_or(|p| p["connected"] == false));
    // Nor can it come back with the registration key it once used (still unexpired), even
    // after root wipes its mesh state to look like a fresh node.
    evil.stop();
    std::fs::remove_file(evil.state_dir().join("mesh.json")).unwrap();
    evil.start();
    let err = evil.fails(&["register", evil_key.trim()]);
    assert!(err.contains("already used"), "{err}");
    let members = cfg.json(&["status"])["node"]["members"].as_u64().unwrap();
    assert_eq!(members, 2, "the intruder is not back on the record");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_flood_of_unauthenticated_connections_costs_little_and_members_still_connect() {
    const CONNECTIONS: usize = 300;
    /// Bound on what the flood may add to the daemon's resident memory.
    const MAX_GROWTH: u64 = 96 << 20;
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    let mut m = Node::init("member", "127.0.0.1:0", &[cfg.listen()], false, &t);
    m.start();
    form_mesh(&[&cfg, &m]);
    let mid = m.id();
    wait_until("the member to connect", SOON, || sees_reachable(&cfg, &mid));
    m.stop();
    let pid = cfg.pid().unwrap();
    let before = rss(pid);
    let addr: std::net::SocketAddr = cfg.listen().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each connection completes QUIC (TLS) but never the Noise handshake: it opens as many
    // streams as it may and pushes as much as flow control lets it, then sits there.
    let flood = rt.block_on(async {
        use lifeboat_node::tls::{self, TlsIdentity, Tuning};
        let ep = tls::endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TlsIdentity::generate().unwrap(),
            &Tuning::default(),
        )
        .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let Ok(connecting) = ep.connect(addr, "lifeboat") else {
                continue;
            };
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await
            else {
                continue;
            };
            tasks.push(tokio::spawn(async move {
                let junk = vec![0x41u8; 1 << 20];
                let mut streams = Vec::new();
                // A handshake record that claims 65000 bytes and never completes.
                if let Ok((mut s, r)) = conn.open_bi().await {
                    let mut rec = 65_000u16.to_be_bytes().to_vec();
                    rec.extend_from_slice(&junk[..60_000]);
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&rec)).await;
                    streams.push((s, r));
                }
                for _ in 0..8 {
                    match tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await {
                        Ok(Ok(mut s)) => {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), s.write_all(&junk))
                                    .await;
                        }
                        _ => break,
                    }
                }
                // Hold the connection (and its streams) open until the test ends.
                let _ = tokio::time::timeout(Duration::from_secs(120), conn.closed()).await;
                drop(streams);
            }));
        }
        (ep, tasks)
    });
    let during = rss(pid);
    eprintln!(
        "daemon RSS before the flood {} MiB, during {} MiB ({CONNECTIONS} connections)",
        before >> 20,
        during >> 20
    );
    assert!(
        during < before + MAX_GROWTH,
        "the flood grew the daemon from {before} to {during} bytes"
    );
    // A member connects while the flood holds its connections.
    m.start();
    wait_until("the member to connect during the flood", SOON, || {
        sees_reachable(&cfg, &mid)
    });
    logs(
        &cfg,
        "handshake slots full: dropping the oldest unauthenticated connection",
    );
    let (ep, tasks) = flood;
    for t in tasks {
        t.abort();
    }
    ep.close(0u32.into(), b"done");
    drop(rt);
}

#[test]
fn keys_live_at_most_five_days_and_register_reads_them_off_the_command_line() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    cfg.ok(&["role", "add", "configuration"]);
    cfg.ok(&["mesh", "create"]);
    let err = cfg.fails(&["key", "issue", "--valid-for", "6d"]);
    assert!(err.contains("1s to 5d"), "{err}");
    // From standard input.
    let mut a = Node::init("alpha", "127.0.0.1:0", &[], false, &t);
    a.start();
    let key = cfg.ok(&["key", "issue", "--valid-for", "5d"]);
    let mut child = Command::new(bin())
        .args(["register", "-", "--state-dir"])
        .arg(a.state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("joined mesh"));
    // From a file.
    let mut b = Node::init("bravo", "127.0.0.1:0", &[], false, &t);
    b.start();
    let key = cfg.ok(&["key", "issue"]);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), key).unwrap();
    let out = b.ok(&["register", "--key-file", f.path().to_str().unwrap()]);
    assert!(out.contains("joined mesh"), "{out}");
    // An existing state directory others can read is refused, not silently chmodded.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(bin())
        .args(["init", "--name", "x", "--state-dir"])
        .arg(open.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accessible by other users"), "{err}");
    let mode = std::fs::metadata(open.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(!Path::new(&open.path().join("identity.key")).exists());
}

#[test]
fn a_rekeyed_vault_seals_new_points_with_a_key_the_old_one_cannot_open() {
    use lifeboat_node::vault::{store_from_url, Vault, VaultConfig};
    let s = site();
    let web_id: lifeboat_protocol::NodeId = s.web.id().parse().unwrap();
    let read_cfg = |n: &Node| -> VaultConfig {
        serde_json::from_slice(&std::fs::read(n.state_dir().join("vault.json")).unwrap()).unwrap()
    };
    // What an evicted process server would still hold.
    let old = read_cfg(&s.ps);
    assert!(old.rotations.is_empty());
    let out = s.cfg.ok(&["vault", "rekey"]);
    assert!(out.contains("1 rotation"), "{out}");
    wait_until("the process server to receive the new key", SOON, || {
        read_cfg(&s.ps).rotations.len() == 1
    });
    // Points committed from here on are sealed with the new key.
    let t = now_ms() + 2_000;
    let newer = point_after(&s.cfg, "web-1", t);
    let all = points(&s.cfg, "web-1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listed = |c: &VaultConfig| -> Vec<String> {
        rt.block_on(async {
            let store = store_from_url(&c.url, &c.options).unwrap();
            let v = Vault::open(store, c.key().unwrap()).await.unwrap();
            v.list_points(Some(&web_id))
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect()
        })
    };
    let with_old = listed(&old);
    let with_new = listed(&read_cfg(&s.cfg));
    assert_eq!(
        with_new.len(),
        all.len(),
        "the current key opens every point"
    );
    assert!(
        !with_old.contains(&newer["id"].as_str().unwrap().to_string()),
        "the old key opened a point sealed after the rotation"
    );
    assert!(
        !with_old.is_empty(),
        "points sealed before still open with the old key"
    );
    // Every point, before and after the rotation, restores bit-exact.
    for p in [&all[0], &newer] {
        let to = s
            ._work
            .path()
            .join(format!("r-{}", p["id"].as_str().unwrap()));
        let got = restore(&s.cfg, "web-1", p["id"].as_str().unwrap(), &to);
        assert!(got == initial_disk(), "point {} differs", p["id"]);
    }
}

#[test]
fn process_servers_get_their_own_store_credentials_not_the_configuration_nodes() {
    let az = Azurite::start();
    az.create_container("vault");
    let nodes = mesh_of(
        &[
            ("config", "configuration"),
            ("ps", "process-server"),
            ("web-1", "mobility"),
        ],
        &az.env(),
    );
    let (cfg, ps) = (&nodes[0], &nodes[1]);
    // The configuration node holds the account key; process servers get a narrower set.
    let grant = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        grant.path(),
        "# process-server credentials\nazure_storage_account_name = devstoreaccount1\nazure_storage_use_emulator=true\n",
    )
    .unwrap();
    const ACCOUNT_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    cfg.ok(&[
        "vault",
        "create",
        "v1",
        "--store",
        "az://vault",
        "--store-option",
        &format!("azure_storage_account_key={ACCOUNT_KEY}"),
        "--grant-options-file",
        grant.path().to_str().unwrap(),
    ]);
    wait_until("the process server to receive its grant", SOON, || {
        ps.state_dir().join("vault.json").exists()
    });
    let granted: Value =
        serde_json::from_slice(&std::fs::read(ps.state_dir().join("vault.json")).unwrap()).unwrap();
    assert_eq!(
        granted["options"],
        serde_json::json!({
            "azure_storage_account_name": "devstoreaccount1",
            "azure_storage_use_emulator": "true"
        })
    );
    let text = std::fs::read_to_string(ps.state_dir().join("vault.json")).unwrap();
    assert!(
        !text.contains(ACCOUNT_KEY),
        "the configuration node's key was copied"
    );
    let mode = std::fs::metadata(ps.state_dir().join("vault.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Replication works with the process server's own options.
    let work = tempfile::tempdir().unwrap();
    let disk = Disk::new(&work.path().join("web"), &initial_disk());
    cfg.ok(&["protect", "web-1", "--disk", disk.path().to_str().unwrap()]);
    let p = point_after(cfg, "web-1", 0);
    let got = restore(
        cfg,
        "web-1",
        p["id"].as_str().unwrap(),
        &work.path().join("r"),
    );
    assert!(got == initial_disk());
}
