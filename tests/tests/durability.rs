//! Crashes and outages: `kill -9` of a process server during upload (its machines move to
//! another one, nothing committed or acknowledged is lost), `kill -9` of a mobility node in the
//! middle of a cycle (it resumes without a full resync), and a vault outage (the spool absorbs,
//! an RPO alert is raised, replication catches up with nothing lost).

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::time::Duration;

/// A configuration node with a local vault and the `fast` policy, a process server, and a
/// mobility node `web`.
fn web_site() -> (Vec<Node>, tempfile::TempDir) {
    let nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    nodes[0].ok(&["vault", "create", "v1"]);
    fast_policy(&nodes[0], "10m");
    (nodes, tempfile::tempdir().unwrap())
}

/// A 32 MiB disk: big enough that a rewrite of half of it takes a while to upload.
fn big_disk(seed: u64) -> Vec<u8> {
    (0..512u64)
        .flat_map(|i| {
            if i % 3 == 1 {
                vec![0u8; BS]
            } else {
                noise(seed * 10_000 + i, BS)
            }
        })
        .collect()
}

fn protect(cfg: &Node, machine: &str, disk: &Disk, ps: Option<&str>) {
    let hook = disk.snapshot_hook();
    let path = disk.path();
    let mut args = vec![
        "protect",
        machine,
        "--disk",
        path.to_str().unwrap(),
        "--policy",
        "fast",
        "--snapshot-hook",
        &hook,
    ];
    if let Some(p) = ps {
        args.extend(["--process-server", p]);
    }
    cfg.ok(&args);
}

#[test]
fn a_killed_process_server_loses_nothing_and_its_machines_move_to_another() {
    let mut nodes = mesh_of(
        &[
            ("config", ""),
            ("ps1", "process-server"),
            ("ps2", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let cfg = &nodes[0];
    let work = tempfile::tempdir().unwrap();
    cfg.ok(&["vault", "create", "v1"]);
    fast_policy(cfg, "10m");
    let c0 = big_disk(1);
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    protect(cfg, "web", &disk, Some("ps1"));
    // A slow link from ps1 to the vault, so that the kill below lands during an upload.
    nodes[1].ok(&["throttle", "--bandwidth-limit", "40Mbit"]);
    // A slow link from ps1 to the vault, so that the kill below lands during an upload.
    nodes[1].ok(&["throttle", "--bandwidth-limit", "40Mbit"]);
    let p0 = point_after(cfg, "web", t0);
    // The preferred process server serves the machine (the very first cycle may have gone to
    // ps2 if ps1 had not received the vault yet).
    let ps1_id = nodes[1].id();
    wait_until("ps1 to serve web", WAIT, || {
        cfg.json(&["status", "web"])["replication"]["machines"][0]["process_server"]
            == ps1_id.as_str()
    });

    // Rewrite half the disk, then kill the process server while it works on it.
    let mut c1 = c0.clone();
    for b in (0..512).step_by(2) {
        c1[b * BS..(b + 1) * BS].copy_from_slice(&noise(77_000 + b as u64, BS));
    }
    disk.write(&c1);
    let t1 = now_ms();
    wait_until("ps1 to be uploading the big delta", WAIT, || {
        nodes[1].json(&["status"])["replication"]["process_server"]["uploading_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    nodes[1].kill9();

    // The machine moves to ps2 by itself and the change arrives whole.
    let cfg = &nodes[0];
    let p1 = point_after(cfg, "web", t1);
    let out = work.path().join("r1");
    assert!(
        restore(cfg, "web", p1["id"].as_str().unwrap(), &out) == c1,
        "the delta survived the crash bit-exact"
    );
    let ps2_id = nodes[2].id();
    wait_until("status to show ps2 serving web", WAIT, || {
        cfg.json(&["status", "web"])["replication"]["machines"][0]["process_server"]
            == ps2_id.as_str()
    });
    // Earlier points are intact.
    assert!(
        restore(
            cfg,
            "web",
            p0["id"].as_str().unwrap(),
            &work.path().join("r0")
        ) == c0
    );

    // The killed process server comes back; nothing it held was needed, nothing is corrupt.
    nodes[1].start();
    let cfg = &nodes[0];
    for p in points(cfg, "web").iter().rev().take(5) {
        let id = p["id"].as_str().unwrap();
        restore(cfg, "web", id, &work.path().join(format!("v-{id}")));
    }
}

#[test]
fn a_killed_mobility_node_resumes_without_a_full_resync() {
    let (mut nodes, work) = web_site();
    let c0 = big_disk(2);
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    protect(&nodes[0], "web", &disk, None);
    let p0 = point_after(&nodes[0], "web", t0);
    let full = p0["stats"]["changed_blocks"].as_u64().unwrap();

    // Change 8 blocks and kill the mobility node while it ships them.
    let mut c1 = c0.clone();
    for b in [3usize, 50, 51, 200, 201, 202, 400, 511] {
        c1[b * BS..(b + 1) * BS].copy_from_slice(&noise(55_000 + b as u64, BS));
    }
    disk.write(&c1);
    let t1 = now_ms();
    let web_dir = nodes[2].dir.clone();
    wait_until("a cycle to start on the changed disk", WAIT, || {
        std::fs::metadata(web_dir.join("../web")).is_ok() && now_ms() > t1 + 200
    });
    nodes[2].kill9();
    nodes[2].start();
    let cfg = &nodes[0];
    let p1 = point_after(cfg, "web", t1);
    assert!(
        restore(
            cfg,
            "web",
            p1["id"].as_str().unwrap(),
            &work.path().join("r1")
        ) == c1
    );
    // No point after the initial one re-sent the disk: at most the 8 changed blocks each.
    for p in points(cfg, "web").iter().filter(|p| p["id"] != p0["id"]) {
        let n = p["stats"]["changed_blocks"].as_u64().unwrap();
        assert!(
            n <= 8,
            "a point re-sent {n} of {full} blocks: a full resync"
        );
    }
}

#[test]
fn a_base_point_lost_from_the_vault_makes_the_next_point_a_verified_full_copy() {
    let (mut nodes, work) = web_site();
    let c0 = big_disk(4);
    let disk = Disk::new(&work.path().join("web"), &c0);
    protect(&nodes[0], "web", &disk, None);
    let p0 = point_after(&nodes[0], "web", 0);
    let full = p0["stats"]["changed_blocks"].as_u64().unwrap();
    // The vault loses every point of the machine (an operator's mistake, a bucket restored
    // from an old backup) while the mobility node still holds the change log of the last one.
    let web_id = nodes[2].id();
    nodes[2].stop();
    let dir = nodes[0].dir.join("vault").join("points").join(&web_id);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut c1 = c0.clone();
    c1[7 * BS..8 * BS].copy_from_slice(&noise(77_777, BS));
    disk.write(&c1);
    let t1 = now_ms();
    nodes[2].start();
    // The process server answers that the base is unknown (a typed failure, not a wording);
    // the mobility node drops its change log and the next point carries every block.
    let p1 = point_after(&nodes[0], "web", t1);
    let nonzero = blocks(&c1)
        .iter()
        .filter(|b| b.iter().any(|x| *x != 0))
        .count() as u64;
    assert!(full > 300);
    assert_eq!(p1["stats"]["changed_blocks"].as_u64().unwrap(), nonzero);
    assert!(nodes[1].log().contains("base point unknown"));
    assert!(
        restore(
            &nodes[0],
            "web",
            p1["id"].as_str().unwrap(),
            &work.path().join("r")
        ) == c1
    );
}

#[test]
fn a_vault_outage_is_absorbed_alerted_and_caught_up() {
    let mut az = Azurite::start();
    az.create_container("vault");
    let mut nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &az.env(),
    );
    // This process server keeps no spool in memory: the outage must go to its spool directory.
    nodes[1].stop();
    let cfg_path = nodes[1].dir.join("lifeboat.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("spool_memory_bytes = 67108864", "spool_memory_bytes = 0");
    std::fs::write(&cfg_path, text).unwrap();
    nodes[1].start_env(&az.env());
    let cfg = &nodes[0];
    let work = tempfile::tempdir().unwrap();
    cfg.ok(&["vault", "create", "v1", "--store", "az://vault"]);
    fast_policy(cfg, "4s");
    let c0 = big_disk(3);
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    protect(cfg, "web", &disk, None);
    point_after(cfg, "web", t0);

    az.stop();
    let mut c1 = c0.clone();
    for b in 0..64usize {
        c1[b * BS..(b + 1) * BS].copy_from_slice(&noise(88_000 + b as u64, BS));
    }
    disk.write(&c1);
    let t1 = now_ms();
    // The process server holds the delta in its spool while the vault is away...
    wait_until(
        "the process server to spool to disk during the outage",
        WAIT,
        || {
            nodes[1].json(&["status"])["replication"]["process_server"]["spooled_bytes"]
                .as_u64()
                .unwrap_or(0)
                > 0
                && std::fs::read_dir(nodes[1].dir.join("spool"))
                    .map(|d| d.count() > 0)
                    .unwrap_or(false)
        },
    );
    // ...and the configuration node raises the RPO alert.
    wait_until("an RPO alert", WAIT, || {
        cfg.json(&["status", "web"])["replication"]["machines"][0]["alert"] == true
    });
    wait_until("the alert in the log", WAIT, || {
        cfg.log().contains("ALERT: RPO above threshold")
    });

    az.restart();
    let p1 = point_after(cfg, "web", t1);
    assert!(
        restore(
            cfg,
            "web",
            p1["id"].as_str().unwrap(),
            &work.path().join("r1")
        ) == c1
    );
    wait_until("the alert to clear", WAIT, || {
        cfg.json(&["status", "web"])["replication"]["machines"][0]["alert"] == false
    });
    let _ = Duration::ZERO;
}

#[test]
fn retention_thins_old_points_and_the_newest_still_restores() {
    let (mut nodes, work) = web_site();
    let c0 = big_disk(4);
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    protect(&nodes[0], "web", &disk, None);
    point_after(&nodes[0], "web", t0);
    wait_until("four points", WAIT, || points(&nodes[0], "web").len() >= 4);
    let early: Vec<String> = points(&nodes[0], "web")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    // Three hours later (for the configuration node's clock) these points are past the
    // "everything of the last 2 hours" window and the 1 h retention.
    nodes[0].stop();
    nodes[0].start_with(
        &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
        &["faketime", "-f", "+3h"],
    );
    let cfg = &nodes[0];
    wait_until("retention to run", WAIT, || {
        cfg.log().contains("retention thinned recovery points")
    });
    let left: Vec<String> = points(cfg, "web")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    // (The last of them may still have been the newest point when retention ran: kept.)
    for id in &early[..early.len() - 1] {
        assert!(!left.contains(id), "point {id} outlived its retention");
    }
    assert!(!left.is_empty(), "the newest point is always kept");
    assert!(restore(cfg, "web", "latest", &work.path().join("r")) == c0);
}

fn dir_bytes(d: &std::path::Path) -> u64 {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn garbage_collection_frees_unreferenced_blocks_while_replication_runs() {
    let (mut nodes, work) = web_site();
    let mut content = big_disk(5);
    let disk = std::sync::Arc::new(Disk::new(&work.path().join("web"), &content));
    let t0 = now_ms();
    protect(&nodes[0], "web", &disk, None);
    let mut last = point_after(&nodes[0], "web", t0);
    // Rewrite a quarter of the disk three times: the old versions become garbage once their
    // points are gone.
    for r in 1..=3u64 {
        for b in (0..512usize).filter(|b| b % 4 == r as usize % 4) {
            content[b * BS..(b + 1) * BS].copy_from_slice(&noise(r * 100_000 + b as u64, BS));
        }
        disk.write(&content);
        last = point_after(&nodes[0], "web", now_ms());
    }
    let _ = last;
    // Age the old points out (configuration node 3 h ahead), as retention would in time.
    nodes[0].stop();
    nodes[0].start_with(
        &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
        &["faketime", "-f", "+3h"],
    );
    wait_until("retention to run", WAIT, || {
        nodes[0].log().contains("retention thinned recovery points")
    });
    let packs = nodes[0].dir.join("vault/packs");
    let before = dir_bytes(&packs);

    // Keep changing the disk while garbage collection runs twice (condemn, then delete).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (disk, stop, mut content) = (disk.clone(), stop.clone(), content.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let b = (i * 37 % 512) as usize;
                content[b * BS..(b + 1) * BS].copy_from_slice(&noise(900_000 + i, BS));
                disk.write(&content);
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(150));
            }
            content
        })
    };
    let cfg = &nodes[0];
    let g1 = cfg.json(&["vault", "gc", "--grace", "0s"]);
    let g2 = cfg.json(&["vault", "gc", "--grace", "0s"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let final_content = writer.join().unwrap();
    let t_end = now_ms();
    assert!(g1["condemned"].as_u64().unwrap() > 0, "{g1}");
    assert!(g2["deleted_packs"].as_u64().unwrap() > 0, "{g2}");
    let after = dir_bytes(&packs);
    assert!(after < before, "packs {before} -> {after} bytes");
    // Collection is a job of the configuration node: its last pass is in `status`.
    let job = &cfg.json(&["status"])["replication"]["gc"];
    assert!(job["last_finished_ms"].as_u64().is_some(), "{job}");
    assert!(job.get("running_since_ms").is_none(), "{job}");
    assert!(
        cfg.ok(&["status"]).contains("vault gc    last pass"),
        "status shows the collection job"
    );

    // Nothing a point references was lost: every point restores (every block verified), and
    // the newest is the disk as it is.
    let p = point_after(cfg, "web", t_end);
    assert!(
        restore(
            cfg,
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join("final")
        ) == final_content
    );
    for (i, p) in points(cfg, "web").iter().enumerate() {
        restore(
            cfg,
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join(format!("all-{i}")),
        );
    }
}

#[test]
fn initial_replication_reports_progress_and_pending_bytes() {
    let (nodes, work) = web_site();
    let cfg = &nodes[0];
    // A slow link to the vault (40 Mbit/s) makes the initial copy of ~21 MiB take seconds.
    nodes[1].ok(&["throttle", "--bandwidth-limit", "40Mbit"]);
    let disk = Disk::new(&work.path().join("web"), &big_disk(6));
    let t0 = now_ms();
    protect(cfg, "web", &disk, None);
    let mut seen = serde_json::Value::Null;
    wait_until(
        "status to show the initial replication under way",
        WAIT,
        || {
            let m = cfg.json(&["status", "web"])["replication"]["machines"][0].clone();
            let ok =
                m["state"] == "initial-replication" && m["pending_bytes"].as_u64().unwrap_or(0) > 0;
            if ok {
                seen = m;
            }
            ok
        },
    );
    assert!(seen["progress_percent"].as_f64().unwrap() > 0.0, "{seen}");
    assert!(seen["latest_point"].is_null());
    point_after(cfg, "web", t0);
    wait_until("the machine to be protected", WAIT, || {
        cfg.json(&["status", "web"])["replication"]["machines"][0]["state"] == "protected"
    });
}

#[test]
fn a_process_server_stopped_mid_session_drains_it_exits_cleanly_and_nothing_is_lost() {
    let (mut nodes, work) = web_site();
    let c0 = big_disk(3);
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t0 = now_ms();
    // A slow link to the vault: the initial copy is still uploading when the stop comes.
    nodes[1].ok(&["throttle", "--bandwidth-limit", "16Mbit"]);
    protect(&nodes[0], "web", &disk, Some("ps"));
    wait_until("ps to be uploading the initial copy", WAIT, || {
        nodes[1].json(&["status"])["replication"]["process_server"]["uploading_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let started = std::time::Instant::now();
    let status = nodes[1].stop().expect("the process server was running");
    let took = started.elapsed();
    assert!(status.success(), "SIGTERM mid-session exits 0: {status:?}");
    // The drain's grace period (3 s) and then a prompt stop: well inside the 10 s the harness
    // (like systemd) gives before SIGKILL.
    assert!(took < Duration::from_secs(9), "stopped in {took:?}");
    let log = nodes[1].log();
    assert!(
        log.contains("draining replication sessions"),
        "the stop waited for the session: {log}"
    );
    // Nothing was acknowledged for the abandoned session; back up, the process server takes
    // the copy again and the point restores bit-exact.
    nodes[1].start();
    nodes[1].ok(&["throttle", "--off"]);
    let p = point_after(&nodes[0], "web", t0);
    let out = work.path().join("r");
    assert!(
        restore(&nodes[0], "web", p["id"].as_str().unwrap(), &out) == c0,
        "the point after the interrupted session restores bit-exact"
    );
}

#[test]
fn a_mobility_node_stopped_mid_cycle_exits_cleanly_and_its_changes_go_into_the_next_point() {
    let (mut nodes, work) = web_site();
    let c0 = big_disk(5);
    let disk = Disk::new(&work.path().join("web"), &c0);
    // A slow process server: the initial copy's cycle is still in flight when the stop comes.
    nodes[1].ok(&["throttle", "--bandwidth-limit", "16Mbit"]);
    protect(&nodes[0], "web", &disk, Some("ps"));
    wait_until("ps to be uploading the initial copy", WAIT, || {
        nodes[1].json(&["status"])["replication"]["process_server"]["uploading_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let started = std::time::Instant::now();
    let status = nodes[2].stop().expect("the mobility node was running");
    let took = started.elapsed();
    assert!(status.success(), "SIGTERM mid-cycle exits 0: {status:?}");
    assert!(took < Duration::from_secs(9), "stopped in {took:?}");
    let log = nodes[2].log();
    assert!(
        log.contains("replication cycle abandoned"),
        "the stop abandoned the cycle in flight: {log}"
    );
    // Its change log did not move (the process server may still commit the abandoned delta
    // if it had it whole: that point is the disk at its capture). Back up, the mobility node
    // sends what changed since its last committed point, and the point restores bit-exact.
    let mut c1 = c0.clone();
    c1[..BS].copy_from_slice(&noise(77, BS));
    disk.write(&c1);
    nodes[1].ok(&["throttle", "--off"]);
    let t1 = now_ms();
    nodes[2].start();
    let p = point_after(&nodes[0], "web", t1);
    assert!(
        restore(
            &nodes[0],
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join("r")
        ) == c1,
        "the first point after the restart is the disk as it is"
    );
    for (i, p) in points(&nodes[0], "web").iter().enumerate() {
        let got = restore(
            &nodes[0],
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join(format!("p{i}")),
        );
        assert!(
            got == c0 || got == c1,
            "every point is the disk at a capture"
        );
    }
}
