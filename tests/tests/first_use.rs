//! The edges a new user meets on the first day (issue 12 §1), each driven through the real
//! binary: re-running `init`, a state directory that is a file, a broken pipe, values the
//! simulation cannot honour, a missing disk, a command run on the wrong node, the built-in
//! policy, a policy mistake against a default, and the `points` table.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::process::{Command, Stdio};

fn lifeboat(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lifeboat")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exactly one line, starting `error:`.
fn one_error_line(e: &str) {
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("error: "), "{e}");
}

#[test]
fn init_can_be_run_again_and_a_bad_state_dir_is_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("n1");
    let d = d.to_str().unwrap();
    let first = lifeboat(&["init", "--name", "n1", "--state-dir", d]);
    assert!(first.status.success(), "{}", stderr(&first));
    let id = std::fs::read(t.path().join("n1/identity.key")).unwrap();
    // The same flags again (configuration management re-runs commands): exit 0, same node.
    for args in [&["init", "--name", "n1"][..], &["init"][..]] {
        let again = lifeboat(&[args, &["--state-dir", d]].concat());
        assert!(again.status.success(), "{}", stderr(&again));
        let out = String::from_utf8_lossy(&again.stdout);
        assert!(out.contains("already initialized"), "{out}");
    }
    assert_eq!(std::fs::read(t.path().join("n1/identity.key")).unwrap(), id);
    // Different flags: refused, naming what differs and --force; nothing changes.
    let other = lifeboat(&["init", "--name", "n2", "--state-dir", d]);
    assert_eq!(other.status.code(), Some(1));
    let e = stderr(&other);
    one_error_line(&e);
    assert!(
        e.contains("--name n1 (asked: n2)") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(std::fs::read(t.path().join("n1/identity.key")).unwrap(), id);

    // A state directory that is a file: init and status say what is wrong with the path.
    let f = t.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let f = f.to_str().unwrap();
    for args in [&["init", "--name", "x"][..], &["status"][..]] {
        let o = lifeboat(&[args, &["--state-dir", f]].concat());
        assert!(!o.status.success());
        let e = stderr(&o);
        one_error_line(&e);
        assert!(e.contains("not a directory"), "{args:?}: {e}");
    }
    let missing = t.path().join("nowhere");
    let o = lifeboat(&["status", "--state-dir", missing.to_str().unwrap()]);
    let e = stderr(&o);
    one_error_line(&e);
    assert!(
        e.contains("does not exist") && e.contains("lifeboat init"),
        "{e}"
    );
}

#[test]
fn a_closed_pipe_ends_output_quietly_and_impossible_simulations_are_refused() {
    // `simulate --trace | head -n 1`: the reader goes after one line.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' simulate --runs 1 --trace | head -n 1 >/dev/null",
            bin().display()
        ))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!e.contains("panicked") && !e.contains("Broken pipe"), "{e}");

    let o = lifeboat(&["simulate", "--runs", "1", "--loss-permille", "1000"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    one_error_line(&e);
    assert!(
        e.contains("--loss-permille") && e.contains("0..=500"),
        "{e}"
    );
}

#[test]
fn commands_on_the_wrong_node_or_with_a_missing_disk_are_refused_with_the_reason() {
    let nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let (cfg, web) = (&nodes[0], &nodes[2]);
    cfg.ok(&["vault", "create", "v1"]);
    let w = tempfile::tempdir().unwrap();

    // The configuration node's status shows the process servers' health as they report it,
    // not an empty block of its own (it is not one).
    let ps_id = nodes[1].id();
    wait_until("the process server's report", WAIT, || {
        cfg.json(&["status"])["replication"]["process_servers"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|p| p["node_id"] == ps_id && p["health"].is_object())
            })
    });
    let st = cfg.json(&["status"]);
    assert!(st["replication"].get("process_server").is_none(), "{st}");
    let text = cfg.ok(&["status"]);
    assert!(
        text.contains(&format!("process server ps ({ps_id}): spool 0/")),
        "{text}"
    );
    // Nodes are named by name as well as id.
    cfg.ok(&["role", "add", "mobility", "--node", "ps"]);
    let roles = cfg.ok(&["role", "list", "--node", "ps"]);
    assert!(roles.contains("mobility"), "{roles}");
    cfg.ok(&["role", "remove", "mobility", "--node", "ps"]);

    // A disk that is not on the machine: refused, nothing recorded.
    for (disk, why) in [
        ("/nonexistent", "No such file"),
        ("/tmp", "a directory, not a disk"),
    ] {
        let e = cfg.fails(&["protect", "web", "--disk", disk]);
        one_error_line(&e);
        assert!(e.contains(disk) && e.contains(why), "{e}");
    }
    let st = cfg.json(&["status"]);
    assert_eq!(st["replication"]["machines"], serde_json::json!([]), "{st}");

    // No RPO before the first point: a snapshot hook that always fails.
    let disk = Disk::new(w.path(), &initial_disk());
    let p = disk.path();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        p.to_str().unwrap(),
        "--snapshot-hook",
        "exit 3",
    ]);
    wait_until("the failed cycle's error", WAIT, || {
        cfg.json(&["status"])["replication"]["machines"][0]["last_error"].is_string()
    });
    let m = &cfg.json(&["status"])["replication"]["machines"][0];
    assert!(m["rpo_ms"].is_null(), "{m}");
    let text = cfg.ok(&["status", "web"]);
    assert!(text.contains("rpo -"), "{text}");
    cfg.ok(&["unprotect", "web"]);

    // throttle where nothing is uploaded; restore away from the catalog.
    let e = web.fails(&["throttle", "--bandwidth-limit", "10Mbit"]);
    one_error_line(&e);
    assert!(e.contains("not a process server"), "{e}");
    let e = web.fails(&["restore", "web", "--to", w.path().to_str().unwrap()]);
    one_error_line(&e);
    assert!(
        e.contains("runs on the configuration node") && e.contains(&cfg.id()),
        "{e}"
    );

    // The built-in policy, and a mistake against a default.
    let e = cfg.fails(&["policy", "delete", "default"]);
    one_error_line(&e);
    assert!(e.contains("built in"), "{e}");
    let e = cfg.fails(&[
        "policy",
        "create",
        "p",
        "--retention",
        "1h",
        "--crash-consistent-every",
        "2h",
    ]);
    one_error_line(&e);
    assert!(
        e.contains("--retention (1h") && e.contains("--crash-consistent-every (2h"),
        "{e}"
    );

    // The points table: every row's columns start where the header's do.
    fast_policy(cfg, "10m");
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        p.to_str().unwrap(),
        "--policy",
        "fast",
    ]);
    let t = now_ms();
    point_after(cfg, "web", t);
    let table = cfg.ok(&["points", "web"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let starts = |l: &str| -> Vec<usize> {
        // Where each run of two or more spaces ends: a column boundary.
        let b = l.as_bytes();
        (1..b.len())
            .filter(|&i| b[i] != b' ' && b[i - 1] == b' ' && i >= 2 && b[i - 2] == b' ')
            .collect()
    };
    let ends = |l: &str, col: &str| l.find(col).unwrap() + col.len();
    for row in lines {
        // Left columns start with the header's; numeric columns end with it.
        let s = starts(row);
        assert!(s.contains(&header.find("CAPTURED").unwrap()), "{table}");
        assert!(s.contains(&header.find("CONSISTENCY").unwrap()), "{table}");
        assert!(s.contains(&header.find("MERKLE ROOTS").unwrap()), "{table}");
        for col in ["CHANGED", "STORED", "FREEZE"] {
            let end = ends(header, col);
            assert!(
                row.as_bytes()[end - 1] != b' ' && row.as_bytes()[end] == b' ',
                "{col} misaligned:\n{table}"
            );
        }
    }
}
