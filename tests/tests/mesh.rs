//! Three real `lifeboat node run` processes: static peers on loopback, mDNS on loopback (inside
//! a private network namespace so nothing is announced on the host's LAN), registration and
//! its refusals, roles at run time.

use lifeboat_tests::*;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(15);

fn roles_of(viewer: &Node, id: &str) -> Vec<String> {
    viewer
        .peer(id)
        .and_then(|p| p["roles"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str().map(String::from))
        .collect()
}

#[test]
fn static_peers_register_heartbeat_and_share_roles_assigned_at_run_time() {
    let t = Timing::default();
    let mut a = Node::init("alpha", "127.0.0.1:0", &[], false, &t);
    a.start();
    let a_addr = a.listen();
    let mut b = Node::init("bravo", "127.0.0.1:0", &[a_addr.clone()], false, &t);
    let mut c = Node::init("charlie", "127.0.0.1:0", &[a_addr], false, &t);
    b.start();
    c.start();
    form_mesh(&[&a, &b, &c]);
    let (ia, ib, ic) = (a.id(), b.id(), c.id());
    for (v, others) in [(&a, [&ib, &ic]), (&b, [&ia, &ic]), (&c, [&ia, &ib])] {
        for id in others {
            wait_until(&format!("{} to see {id}", v.name), WAIT, || {
                sees_reachable(v, id)
            });
        }
    }
    // Heartbeats keep contact fresh: the last contact is younger than two heartbeat periods.
    wait_until("a fresh heartbeat", SOON, || {
        a.peer(&ib)
            .and_then(|p| p["last_contact_age_ms"].as_u64())
            .is_some_and(|ms| ms < 2_000)
    });

    // Roles are granted, never claimed: a member cannot give itself a role; the configuration
    // node grants it, by name or id, and every node sees it within seconds.
    let err = c.fails(&["role", "add", "mobility"]);
    assert!(err.contains("granted by its configuration node"), "{err}");
    a.ok(&["role", "add", "mobility", "--node", "charlie"]);
    for v in [&a, &b] {
        wait_until(
            &format!("{} to see charlie's mobility role", v.name),
            SOON,
            || roles_of(v, &ic).contains(&"mobility".to_string()),
        );
    }

    // The configuration node assigns a role remotely; it persists across a restart.
    a.ok(&["role", "add", "process-server", "--node", &ib]);
    wait_until("bravo to apply its granted role", SOON, || {
        b.ok(&["role", "list"]).contains("process-server")
    });
    wait_until("charlie to see bravo's new role", SOON, || {
        roles_of(&c, &ib).contains(&"process-server".to_string())
    });
    b.stop();
    b.start();
    assert!(b.ok(&["role", "list"]).contains("process-server"));
    wait_until("bravo to reconnect after restart", WAIT, || {
        sees_reachable(&a, &ib)
    });

    // Only a configuration node may assign roles to others.
    let err = b.fails(&["role", "add", "mobility", "--node", &ic]);
    assert!(err.contains("granted by its configuration node"), "{err}");
    assert!(!c.ok(&["role", "list"]).contains("process-server"));

    // Removing works the same way.
    a.ok(&["role", "remove", "process-server", "--node", &ib]);
    wait_until("bravo to drop its withdrawn role", SOON, || {
        !b.ok(&["role", "list"]).contains("process-server")
    });
}

#[test]
fn registration_refuses_expired_reused_and_clock_skewed_keys() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    cfg.ok(&["role", "add", "configuration"]);
    cfg.ok(&["mesh", "create"]);

    let mut late = Node::init("late", "127.0.0.1:0", &[], false, &t);
    late.start();
    let short = cfg.ok(&["key", "issue", "--valid-for", "1s"]);
    let deadline = std::time::Instant::now() + Duration::from_millis(1_500);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = late.fails(&["register", short.trim()]);
    assert!(err.contains("expired"), "{err}");

    let key = cfg.ok(&["key", "issue"]);
    let mut first = Node::init("first", "127.0.0.1:0", &[], false, &t);
    first.start();
    first.ok(&["register", key.trim()]);
    // Registering again with the same key is harmless for the same node...
    assert!(first
        .ok(&["register", key.trim()])
        .contains("already a member"));
    // ...and refused for any other node.
    let err = late.fails(&["register", key.trim()]);
    assert!(err.contains("already used"), "{err}");

    // A node whose clock is 7 minutes ahead is told the skew and how to fix it.
    let mut skewed = Node::init("skewed", "127.0.0.1:0", &[], false, &t);
    skewed.start_with(
        &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
        &["faketime", "-f", "+7m"],
    );
    let key = cfg.ok(&["key", "issue"]);
    let err = skewed.fails(&["register", key.trim()]);
    assert!(err.contains("clock skew of 7m00s"), "{err}");
    assert!(err.contains("ahead of") && err.contains("NTP"), "{err}");
    // The refusal did not burn the key: a node with a good clock can still use it.
    late.ok(&["register", key.trim()]);

    // Damaged and foreign keys fail locally with a clear message.
    let err = late.fails(&["register", "hello"]);
    assert!(err.contains("not a lifeboat registration key"), "{err}");
}

#[test]
fn three_nodes_on_loopback_find_each_other_by_mdns() {
    assert!(
        can_netns(),
        "this test needs root and `ip netns` (CI runs as root)"
    );
    let ns = Netns::new("mdns");
    ns.loopback_multicast();
    let t = Timing::default();
    let mut nodes: Vec<Node> = ["mike", "november", "oscar"]
        .iter()
        .map(|n| Node::init(n, "127.0.0.1:0", &[], true, &t).in_netns(&ns.name))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    // Before any registration, discovery alone shows every node to every other.
    for (i, v) in nodes.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                wait_until(
                    &format!("{} to discover {id} by mDNS", v.name),
                    WAIT,
                    || {
                        v.peer(id).is_some_and(|p| {
                            p["found_by"]
                                .as_array()
                                .is_some_and(|f| f.iter().any(|x| x == "mdns"))
                        })
                    },
                );
            }
        }
    }
    // Our own record is never listed.
    for (v, id) in nodes.iter().zip(&ids) {
        assert!(v.peer(id).is_none(), "{} lists itself", v.name);
    }
    form_mesh(&[&nodes[0], &nodes[1], &nodes[2]]);
    for (i, v) in nodes.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                wait_until(&format!("{} to reach {id}", v.name), WAIT, || {
                    sees_reachable(v, id)
                });
            }
        }
    }
}

#[test]
fn bad_input_gets_a_one_line_error_and_a_non_zero_exit() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(&missing)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (&["node", "run"][..], "lifeboat init --state-dir"),
        (&["peers"][..], "lifeboat init --state-dir"),
        (&["role", "add", "storage"][..], "unknown role"),
        (
            &["key", "issue", "--valid-for", "soon"][..],
            "use a duration like",
        ),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    // A config file with a typo names the field.
    let n = Node::init("typo", "127.0.0.1:0", &[], false, &Timing::default());
    let cfg = n.dir.join("lifeboat.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("heartbeat_interval_secs", "heartbeat_secs");
    std::fs::write(&cfg, text).unwrap();
    let err = n.fails(&["node", "run"]);
    assert!(err.contains("heartbeat_secs"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_role_granted_to_a_disconnected_member_is_recorded_and_applied_when_it_connects() {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start();
    let mut m = Node::init("member-1", "127.0.0.1:0", &[cfg.listen()], false, &t);
    m.start();
    form_mesh(&[&cfg, &m]);
    let id = m.id();
    m.stop();
    wait_until("the member to be disconnected", WAIT, || {
        cfg.peer(&id).is_none_or(|p| p["connected"] == false)
    });
    // By name, while the member is away: recorded at once, said to be pending.
    let out = cfg.ok(&["role", "add", "mobility", "--node", "member-1"]);
    assert!(
        out.contains("recorded; the node applies it when it connects"),
        "{out}"
    );
    let v = cfg.json(&["role", "list", "--node", "member-1"]);
    assert_eq!(v["roles"], serde_json::json!(["mobility"]));
    assert_eq!(v["applied"], false, "{v}");
    assert!(cfg
        .ok(&["role", "list", "--node", "member-1"])
        .contains("pending"));
    // The member, stopped, has not heard of it.
    let roles = std::fs::read_to_string(m.dir.join("roles.json")).unwrap_or_default();
    assert!(!roles.contains("mobility"), "{roles}");
    m.start();
    wait_until("the member to apply the role it was granted", WAIT, || {
        m.ok(&["role", "list"]).contains("mobility")
    }); // The configuration node sees it applied (the member's heartbeats say so).
    wait_until("role list --node to show it applied", WAIT, || {
        cfg.json(&["role", "list", "--node", "member-1"])["applied"] == true
    });
}
