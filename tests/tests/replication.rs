//! Replication end to end with real daemons: every recovery point restores bit-exact to a copy
//! of the source taken at its capture; deltas move only changed blocks; zero blocks are never
//! stored; identical blocks of two machines are stored once; a corrupted pack fails restore
//! loudly. The same suite runs against the local-directory vault, against Azure Blob on
//! Azurite and against S3 on moto's S3 server.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Site {
    cfg: Node,
    _ps: Node,
    _mob: Node,
    _mob2: Node,
}

fn site(env: &[(String, String)]) -> Site {
    let t = Timing::default();
    let mut cfg = Node::init("config", "127.0.0.1:0", &[], false, &t);
    cfg.start_env(env);
    let peers = vec![cfg.listen()];
    let mut ps = Node::init("ps", "127.0.0.1:0", &peers, false, &t);
    let mut mob = Node::init("web", "127.0.0.1:0", &peers, false, &t);
    let mut mob2 = Node::init("db", "127.0.0.1:0", &peers, false, &t);
    for n in [&mut ps, &mut mob, &mut mob2] {
        n.start_env(env);
    }
    form_mesh(&[&cfg, &ps, &mob, &mob2]);
    grant(&cfg, &ps, "process-server");
    grant(&cfg, &mob, "mobility");
    grant(&cfg, &mob2, "mobility");
    for n in [&ps, &mob, &mob2] {
        let id = n.id();
        wait_until(
            &format!("config to see {} connected with its role", n.name),
            WAIT,
            || {
                cfg.peer(&id).is_some_and(|p| {
                    p["connected"] == true && p["roles"].as_array().is_some_and(|r| !r.is_empty())
                })
            },
        );
    }
    Site {
        cfg,
        _ps: ps,
        _mob: mob,
        _mob2: mob2,
    }
}

fn suite(store: Option<String>, env: Vec<(String, String)>, corrupt_local_pack: bool) {
    let s = site(&env);
    let cfg = &s.cfg;
    let work = tempfile::tempdir().unwrap();
    let mut create = vec!["vault", "create", "v1"];
    if let Some(u) = &store {
        create.extend(["--store", u.as_str()]);
    }
    cfg.ok(&create);
    // The process server uploads under a bandwidth policy (generous enough not to slow the test).
    let out = s._ps.ok(&[
        "throttle",
        "--bandwidth-limit",
        "800Mbit",
        "--off-hours-limit",
        "2Gbit",
        "--work-hours",
        "00:00-24:00",
    ]);
    assert!(out.contains("upload limit now 800.0 Mbit/s"), "{out}");
    let st = s._ps.json(&["status"]);
    assert_eq!(
        st["replication"]["process_server"]["upload_limit_bytes_per_sec_now"],
        100_000_000
    );
    let err = s._ps.fails(&["throttle", "--bandwidth-limit", "lots"]);
    assert!(err.contains("use a rate like"), "{err}");
    fast_policy(cfg, "1m");

    // Round 0: initial replication.
    let c0 = initial_disk();
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    let hook = disk.snapshot_hook();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        disk.path().to_str().unwrap(),
        "--policy",
        "fast",
        "--snapshot-hook",
        &hook,
    ]);
    let p0 = point_after(cfg, "web", t0);
    assert_eq!(p0["consistency"], "crash-consistent");
    let nonzero = blocks(&c0)
        .iter()
        .filter(|b| b.iter().any(|x| *x != 0))
        .count() as u64;
    assert_eq!(
        p0["stats"]["changed_blocks"], nonzero,
        "initial replication sends every non-zero block once"
    );
    assert_eq!(
        p0["stats"]["zero_blocks"], 0,
        "zero blocks are not even sent"
    );
    assert_eq!(
        p0["stats"]["new_blocks"],
        distinct_nonzero(&[&c0]) as u64,
        "duplicates within the disk are stored once"
    );

    // Round 1: one block overwritten, one zeroed.
    let mut c1 = c0.clone();
    c1[5 * BS..6 * BS].copy_from_slice(&noise(999, BS));
    c1[..BS].fill(0);
    disk.write(&c1);
    let t1 = now_ms();
    let p1 = point_after(cfg, "web", t1);
    let p0c = p0["captured_ms"].as_u64().unwrap();
    let p1c = p1["captured_ms"].as_u64().unwrap();
    assert_eq!(
        stat_between(cfg, "web", p0c, p1c, "changed_blocks"),
        2,
        "only changed blocks move"
    );
    assert_eq!(stat_between(cfg, "web", p0c, p1c, "zero_blocks"), 1);
    assert_eq!(stat_between(cfg, "web", p0c, p1c, "new_blocks"), 1);

    // Round 2: ~2% of blocks, one of them a copy of an existing block (dedup).
    let mut c2 = c1.clone();
    c2[9 * BS..10 * BS].copy_from_slice(&noise(1234, BS));
    c2[13 * BS..14 * BS].copy_from_slice(&c1[4 * BS..5 * BS].to_vec());
    c2[100 * BS..100 * BS + 17].copy_from_slice(b"seventeen bytes!!");
    disk.write(&c2);
    let t2 = now_ms();
    let p2 = point_after(cfg, "web", t2);
    let p2c = p2["captured_ms"].as_u64().unwrap();
    assert_eq!(stat_between(cfg, "web", p1c, p2c, "changed_blocks"), 3);
    assert_eq!(stat_between(cfg, "web", p1c, p2c, "new_blocks"), 2);
    assert_eq!(stat_between(cfg, "web", p1c, p2c, "dedup_blocks"), 1);
    // A cycle with no change still proves the disk's state (RPO), at no storage cost.
    let idle = point_after(cfg, "web", p2c);
    assert_eq!(idle["stats"]["changed_blocks"], 0);
    assert_eq!(idle["stats"]["stored_bytes"], 0);
    assert_eq!(
        idle["disks"][0]["merkle_root"],
        p2["disks"][0]["merkle_root"]
    );

    // Every point restores bit-exact to the source at its capture.
    for (p, c) in [(&p0, &c0), (&p1, &c1), (&p2, &c2)] {
        let id = p["id"].as_str().unwrap();
        let out = work.path().join(format!("restore-{id}"));
        assert!(
            restore(cfg, "web", id, &out) == *c,
            "point {id} does not restore bit-exact"
        );
    }
    assert!(restore(cfg, "web", "latest", &work.path().join("latest")) == c2);

    // A second machine with the same content: its blocks are already in the vault.
    let disk2 = Disk::new(&work.path().join("db"), &c0);
    let t3 = now_ms();
    let hook2 = disk2.snapshot_hook();
    // Another member may not put commands (hooks) on a machine other than itself.
    let err = s._ps.fails(&[
        "protect",
        "db",
        "--disk",
        "/dev/null",
        "--snapshot-hook",
        "touch /tmp/pwned",
    ]);
    assert!(
        err.contains("only protect, unprotect or list the points of its own machine"),
        "{err}"
    );
    // Protect from another node: the command reaches the configuration node over the mesh.
    s._mob2.ok(&[
        "protect",
        "db",
        "--disk",
        disk2.path().to_str().unwrap(),
        "--policy",
        "fast",
        "--snapshot-hook",
        &hook2,
    ]);
    let q0 = point_after(cfg, "db", t3);
    assert_eq!(
        q0["stats"]["new_blocks"], 0,
        "identical blocks of two machines are stored once"
    );
    assert_eq!(q0["stats"]["dedup_blocks"], nonzero);
    assert!(restore(cfg, "db", "latest", &work.path().join("db-restore")) == c0);
    let from_member = s._mob2.json(&["points", "db"]);
    assert_eq!(
        from_member.as_array().map(|a| !a.is_empty()),
        Some(true),
        "points from a member: {from_member}"
    );

    // Across the whole vault, stored blocks are exactly the distinct non-zero contents.
    let stored: u64 = ["web", "db"]
        .iter()
        .flat_map(|m| points(cfg, m))
        .map(|p| p["stats"]["new_blocks"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(stored, distinct_nonzero(&[&c0, &c1, &c2]) as u64);

    let status = cfg.json(&["status", "web"]);
    let m = &status["replication"]["machines"][0];
    assert_eq!(m["state"], "protected", "{status}");
    assert!(m["rpo_ms"].as_u64().expect("an RPO once a point exists") < 60_000);
    assert!(m["latest_crash_consistent"]["id"].is_string());

    if corrupt_local_pack {
        // Damage the packs (one byte each): restore must fail loudly and say which disk and block.
        let vault = cfg.dir.join("vault/packs");
        for pack in walk(&vault)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        {
            let mut b = std::fs::read(&pack).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            std::fs::write(&pack, b).unwrap();
        }
        let id = p0["id"].as_str().unwrap();
        let err = cfg.fails(&[
            "restore",
            "web",
            "--point",
            id,
            "--to",
            work.path().join("bad").to_str().unwrap(),
        ]);
        assert!(err.contains("disk disk.img: block "), "{err}");
        assert!(
            err.contains("authentication failed") || err.contains("does not match"),
            "{err}"
        );
    }
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn local_vault_points_restore_bit_exact_and_deltas_move_only_changes() {
    suite(None, vec![], true);
}

#[test]
fn azure_vault_on_azurite_points_restore_bit_exact_and_deltas_move_only_changes() {
    let az = Azurite::start();
    az.create_container("vault");
    suite(Some("az://vault".into()), az.env(), false);
    let _ = Duration::from_secs(0);
}

#[test]
fn s3_vault_on_moto_points_restore_bit_exact_and_deltas_move_only_changes() {
    let s3 = S3Emulator::start();
    s3.create_bucket("vault");
    suite(Some("s3://vault".into()), s3.env(), false);
}
