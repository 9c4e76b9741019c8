//! Recovery: drills (test failovers) from the vault, next to production.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::path::Path;

/// The bytes of a qcow2 image, through `qemu-img convert`.
fn qcow2_bytes(image: &Path, scratch: &Path) -> Vec<u8> {
    let raw = scratch.join("back.raw");
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(raw).unwrap()
}

/// A boot hook that records its environment, tries to reach `port` on the host's loopback,
/// and (if `go` is given) waits for that file before it exits.
fn boot_hook(out: &Path, port: u16, go: Option<&Path>) -> String {
    let wait = go.map_or(String::new(), |g| {
        format!(
            "i=0; while [ ! -e {g} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; ",
            g = g.display()
        )
    });
    format!(
        "env | grep ^LIFEBOAT_ > {o}.env; \
         if timeout 3 bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' 2>/dev/null; \
         then echo reached > {o}.net; else echo unreachable > {o}.net; fi; {wait}true",
        o = out.display()
    )
}

#[test]
fn a_drill_brings_the_point_up_verified_isolated_while_production_keeps_replicating() {
    let (nodes, work, disk, c0) = protected_web();
    let cfg = &nodes[0];
    // A listener on the host: an isolated drill must not reach it, a plain one does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});

    // Bad input: one line, non-zero, nothing made.
    let e = cfg.fails(&["drill", "nosuch"]);
    assert!(e.contains("nosuch") && e.lines().count() == 1, "{e}");
    let e = cfg.fails(&["drill", "web", "--point", "not-a-time"]);
    assert!(e.contains("--point"), "{e}");
    let e = cfg.fails(&["drill", "web", "--isolated"]);
    assert!(e.contains("--boot-hook"), "{e}");
    let e = cfg.fails(&["drill", "cleanup", "web"]);
    assert!(e.contains("no drill of web is active"), "{e}");

    // An isolated qcow2 drill whose boot hook runs until told to stop: meanwhile production
    // keeps committing points.
    let d1 = work.path().join("drill1");
    std::fs::create_dir(&d1).unwrap();
    let go = work.path().join("go");
    let hook = boot_hook(&work.path().join("hook1"), port, Some(&go));
    let started = now_ms();
    let drill = {
        let (bin_dir, d1, hook) = (cfg.dir.clone(), d1.clone(), hook.clone());
        std::thread::spawn(move || {
            std::process::Command::new(bin())
                .args(["drill", "web", "--json"])
                .args(["--to", d1.to_str().unwrap(), "--format", "qcow2"])
                .args(["--boot-hook", &hook, "--isolated"])
                .arg("--state-dir")
                .arg(&bin_dir)
                .output()
                .unwrap()
        })
    };
    wait_until("the boot hook to run", WAIT, || {
        work.path().join("hook1.net").exists()
    });
    let during = point_after(cfg, "web", now_ms());
    assert!(during["captured_ms"].as_u64().unwrap() > started);
    std::fs::write(&go, b"").unwrap();
    let out = drill.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(image.starts_with(&d1) && image.extension().unwrap() == "qcow2");
    assert!(
        qcow2_bytes(&image, work.path()) == c0,
        "the drilled image is the disk at its point"
    );
    let net = std::fs::read_to_string(work.path().join("hook1.net")).unwrap();
    assert_eq!(
        net.trim(),
        "unreachable",
        "the isolated boot hook reached the host"
    );
    let env = std::fs::read_to_string(work.path().join("hook1.env")).unwrap();
    assert!(env.contains("LIFEBOAT_MACHINE=web"), "{env}");
    assert!(
        env.contains(&format!("LIFEBOAT_IMAGES={}", image.display())),
        "{env}"
    );
    assert!(env.contains(&format!("LIFEBOAT_POINT={}", v["point"].as_str().unwrap())));
    // One drill at a time; status shows it.
    let e = cfg.fails(&["drill", "web"]);
    assert!(e.contains("drill cleanup web"), "{e}");
    let st = cfg.json(&["status"]);
    let m = &st["replication"]["machines"][0];
    assert_eq!(m["drill_active"], true, "{m}");
    assert!(m["last_drill_ms"].as_u64().unwrap() >= started);
    assert!(cfg.ok(&["status"]).contains("last successful drill"));

    // Cleanup removes what the drill made (the directory existed before, so it stays).
    cfg.ok(&["drill", "cleanup", "web", "--notes", "booted to login"]);
    assert!(!image.exists());
    assert_eq!(std::fs::read_dir(&d1).unwrap().count(), 0);
    assert_eq!(
        cfg.json(&["status"])["replication"]["machines"][0]["drill_active"],
        false
    );

    // A drill whose boot hook fails: the error says so and how to clean up; it stays up
    // (for inspection) and does not count as a successful drill.
    let last_ok = cfg.json(&["status"])["replication"]["machines"][0]["last_drill_ms"].clone();
    let e = cfg.fails(&[
        "drill",
        "web",
        "--boot-hook",
        "echo no hypervisor >&2; exit 3",
    ]);
    assert!(
        e.contains("boot hook failed") && e.contains("lifeboat drill cleanup web"),
        "{e}"
    );
    let m = &cfg.json(&["status"])["replication"]["machines"][0];
    assert_eq!(m["drill_active"], true, "{m}");
    assert_eq!(
        m["last_drill_ms"], last_ok,
        "a failed drill is not a successful one"
    );
    cfg.ok(&["drill", "cleanup", "web", "--notes", "hook failed"]);

    // A plain raw drill into its own directory, after a change: its boot hook reaches the
    // host, the image is the newest point, and cleanup removes the directory.
    let mut c1 = c0.clone();
    c1[..BS].copy_from_slice(&noise(4242, BS));
    disk.write(&c1);
    point_after(cfg, "web", now_ms());
    let hook = boot_hook(&work.path().join("hook2"), port, None);
    let v = cfg.json(&["drill", "web", "--boot-hook", &hook]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(image.starts_with(cfg.state_dir()), "{}", image.display());
    assert!(std::fs::read(&image).unwrap() == c1);
    let net = std::fs::read_to_string(work.path().join("hook2.net")).unwrap();
    assert_eq!(net.trim(), "reached");
    cfg.ok(&["drill", "cleanup", "web"]);
    assert!(
        !image.parent().unwrap().exists(),
        "the drill's own directory is removed"
    );

    // Onto an existing block device (a loop device here): written, verified, and left in
    // place by cleanup. Bad maps change nothing.
    let backing = work.path().join("dev.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(c1.len() as u64)
        .unwrap();
    let dev = LoopDev::new(&backing);
    let e = cfg.fails(&["drill", "web", "--disk-map", &format!("nosuch={}", dev.0)]);
    assert!(
        e.contains("no disk by that name") && e.lines().count() == 1,
        "{e}"
    );
    let e = cfg.fails(&[
        "drill",
        "web",
        "--disk-map",
        &format!("disk.img={}", backing.display()),
    ]);
    assert!(e.contains("not a block device"), "{e}");
    let v = cfg.json(&["drill", "web", "--disk-map", &format!("disk.img={}", dev.0)]);
    assert_eq!(v["images"][0].as_str().unwrap(), dev.0);
    assert!(
        std::fs::read(&backing).unwrap() == c1,
        "the device holds the point"
    );
    cfg.ok(&["drill", "cleanup", "web"]);
    assert!(Path::new(&dev.0).exists() && std::fs::read(&backing).unwrap() == c1);
}

/// A loop device over a file; detached on drop.
struct LoopDev(String);

impl LoopDev {
    fn new(file: &Path) -> LoopDev {
        let o = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        LoopDev(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_failover_stops_replication_a_cancel_resumes_it_and_a_commit_is_final() {
    let (nodes, work, disk, c0) = protected_web();
    let cfg = &nodes[0];
    let e = cfg.fails(&["failover", "commit", "web"]);
    assert!(
        e.contains("not failed over") && e.lines().count() == 1,
        "{e}"
    );
    let e = cfg.fails(&["failover", "nosuch"]);
    assert!(e.contains("nosuch"), "{e}");

    // The machine changes, the change is committed, then the site is lost: failover.
    let mut c1 = c0.clone();
    c1[3 * BS..4 * BS].copy_from_slice(&noise(31, BS));
    disk.write(&c1);
    point_after(cfg, "web", now_ms());
    let d = work.path().join("fo");
    let v = cfg.json(&[
        "failover",
        "web",
        "--to",
        d.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(
        qcow2_bytes(&image, work.path()) == c1,
        "failed over to the newest point, bit-exact"
    );
    let st = cfg.json(&["status"]);
    assert_eq!(
        st["replication"]["machines"][0]["state"], "failed-over",
        "{st}"
    );
    // Replication of the machine stopped: its job ended (no cycle can start after that), and
    // nothing captured after the failover is committed.
    wait_until("web's protection job to end", WAIT, || {
        nodes[2].log().contains("protection removed")
    });
    let after = now_ms();
    let mut c2 = c1.clone();
    c2[5 * BS..6 * BS].copy_from_slice(&noise(32, BS));
    disk.write(&c2);
    assert!(
        !nodes[2].state_dir().join("protection.json").exists(),
        "web forgot its protection"
    );
    assert!(
        points(cfg, "web")
            .iter()
            .all(|p| p["captured_ms"].as_u64().unwrap() < after),
        "a point was committed after the failover"
    );
    let e = cfg.fails(&["failover", "web"]);
    assert!(e.contains("failed over already"), "{e}");

    // Cancel: the images go, protection resumes from the change log (a delta, not a copy).
    cfg.ok(&["failover", "cancel", "web"]);
    assert!(!image.exists());
    let p = point_after(cfg, "web", now_ms());
    assert!(p["stats"]["changed_blocks"].as_u64().unwrap() < 10, "{p}");
    assert!(
        restore(
            cfg,
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join("r")
        ) == c2
    );

    // Failover again and commit, discarding the older points: final (no cancel), and status
    // says so; only the failover point (reprotect's base) stays.
    let v = cfg.json(&["failover", "web"]);
    assert!(points(cfg, "web").len() > 1);
    cfg.ok(&["failover", "commit", "web", "--discard-points"]);
    let left = points(cfg, "web");
    assert!(left.len() == 1 && left[0]["id"] == v["point"], "{left:?}");
    let e = cfg.fails(&["failover", "cancel", "web"]);
    assert!(e.contains("committed"), "{e}");
    let st = cfg.json(&["status"]);
    assert_eq!(
        st["replication"]["machines"][0]["state"], "failover-committed",
        "{st}"
    );
}

#[test]
fn a_machine_lost_during_its_failover_stops_replicating_when_it_is_back() {
    let (mut nodes, _work, _disk, _c0) = protected_web();
    // The site is lost: the failover does not wait for it beyond a short bound, and the final
    // point it asks for falls back to the newest committed one.
    nodes[2].stop();
    let e = nodes[0].fails(&["failover", "web", "--planned"]);
    assert!(
        e.contains("no shutdown hook") && e.lines().count() == 1,
        "{e}"
    );
    let e = nodes[0].fails(&["failover", "web", "--shutdown-source"]);
    assert!(e.contains("no shutdown hook"), "{e}");
    let newest = points(&nodes[0], "web")
        .into_iter()
        .max_by_key(|p| p["captured_ms"].as_u64())
        .unwrap();
    let t = std::time::Instant::now();
    let v = nodes[0].json(&["failover", "web", "--point", "latest"]);
    assert_eq!(v["point"], newest["id"], "{v}");
    assert!(
        v["notes"][0].as_str().unwrap().contains("no final point"),
        "{v}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
    let protection = nodes[2].state_dir().join("protection.json");
    assert!(protection.exists(), "the lost machine could not be told");
    // Back: it resumes its old protection, reports, and is told to stop.
    nodes[2].start();
    wait_until("the returning machine to drop its protection", WAIT, || {
        !protection.exists()
    });
    assert_eq!(
        nodes[0].json(&["status"])["replication"]["machines"][0]["state"],
        "failed-over"
    );
}

/// A configuration node, a process server and `web`, protected with a policy whose next
/// scheduled point is an hour away (so a newer point can only be one cut on request) and a
/// shutdown hook that makes the machine's last write (`last`) and leaves a mark (`shut`).
fn web_with_shutdown_hook() -> (Vec<Node>, tempfile::TempDir, Disk, Vec<u8>) {
    let nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let cfg = &nodes[0];
    cfg.ok(&["vault", "create", "v1"]);
    cfg.ok(&[
        "policy",
        "create",
        "hourly",
        "--rpo-threshold",
        "2h",
        "--retention",
        "1h",
        "--crash-consistent-every",
        "1h",
        "--app-consistent-every",
        "0",
    ]);
    let work = tempfile::tempdir().unwrap();
    let c0 = initial_disk();
    let disk = Disk::new(&work.path().join("web"), &c0);
    let (w, d) = (work.path().display(), disk.path());
    let dd = d.parent().unwrap().display();
    let shutdown = format!(
        "cp {w}/last {dd}/disk.img.new && flock {dd}/disk.lock mv {dd}/disk.img.new {d} && touch {w}/shut",
        d = d.display()
    );
    let t0 = now_ms();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        disk.path().to_str().unwrap(),
        "--policy",
        "hourly",
        "--snapshot-hook",
        &disk.snapshot_hook(),
        "--shutdown-hook",
        &shutdown,
    ]);
    point_after(cfg, "web", t0);
    (nodes, work, disk, c0)
}

#[test]
fn latest_cuts_a_final_point_and_a_planned_failover_loses_nothing() {
    let (nodes, work, disk, c0) = web_with_shutdown_hook();
    let cfg = &nodes[0];
    let e = cfg.fails(&["failover", "web", "--planned", "--point", "latest-app"]);
    assert!(e.contains("drop --point") && e.lines().count() == 1, "{e}");
    let e = cfg.fails(&["failover", "web", "--planned", "--shutdown-source"]);
    assert!(e.contains("cannot be used with"), "{e}");

    // A write the schedule would not ship for an hour: a drill of `latest` has it.
    let mut c1 = c0.clone();
    c1[7 * BS..8 * BS].copy_from_slice(&noise(71, BS));
    disk.write(&c1);
    let v = cfg.json(&["drill", "web", "--point", "latest"]);
    assert!(
        v["notes"][0].as_str().unwrap().starts_with("final point"),
        "{v}"
    );
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(
        std::fs::read(&image).unwrap() == c1,
        "the drill has the last write"
    );
    cfg.ok(&["drill", "cleanup", "web"]);
    assert!(
        !work.path().join("shut").exists(),
        "a drill shut the machine down"
    );

    // Planned failover: the shutdown hook makes the machine's very last write; the failed-over
    // image has it.
    let mut last = c1.clone();
    last[9 * BS..10 * BS].copy_from_slice(&noise(72, BS));
    std::fs::write(work.path().join("last"), &last).unwrap();
    let v = cfg.json(&["failover", "web", "--planned"]);
    assert!(work.path().join("shut").exists(), "the shutdown hook ran");
    assert!(std::fs::read(disk.path()).unwrap() == last);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(
        std::fs::read(&image).unwrap() == last,
        "the planned failover lost the last write"
    );
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("shutdown hook ran") && notes.contains("no data lost"),
        "{v}"
    );
    assert_eq!(
        cfg.json(&["status"])["replication"]["machines"][0]["state"],
        "failed-over"
    );
}

/// Writes `data` over block `i` of the image at `path`, in place (a running VM's write).
#[test]
fn reprotect_and_failback_move_only_changed_blocks_and_protection_resumes_without_a_copy() {
    // `dr`: a host at the recovery site, where the machine is drilled and failed over.
    let (nodes, work, disk, c0) = protected_web_and(&[("dr", "mobility")]);
    let (cfg, dr) = (&nodes[0], &nodes[3]);
    let e = cfg.fails(&["drill", "web", "--on", "nosuch"]);
    assert!(e.contains("--on") && e.lines().count() == 1, "{e}");
    let v = cfg.json(&["drill", "web", "--on", "dr"]);
    assert_eq!(v["target"], "dr", "{v}");
    let drilled = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(drilled.starts_with(dr.state_dir()), "{}", drilled.display());
    assert!(std::fs::read(&drilled).unwrap() == c0);
    assert!(
        !dr.state_dir().join("vault.json").exists(),
        "the target kept the vault key"
    );
    cfg.ok(&["drill", "cleanup", "web"]);
    assert!(!drilled.exists(), "cleanup on the target");
    let e = cfg.fails(&["reprotect", "web"]);
    assert!(
        e.contains("not failed over") && e.lines().count() == 1,
        "{e}"
    );
    let e = cfg.fails(&["failback", "web"]);
    assert!(e.contains("not failed over"), "{e}");
    let e = cfg.fails(&["reprotect", "nosuch"]);
    assert!(e.contains("nosuch"), "{e}");

    // Unplanned failover to this site; reprotect needs it committed.
    let d = work.path().join("fo");
    let v = cfg.json(&["failover", "web", "--on", "dr", "--to", d.to_str().unwrap()]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(std::fs::read(&image).unwrap() == c0);
    let e = cfg.fails(&["reprotect", "web"]);
    assert!(e.contains("not committed"), "{e}");
    let e = cfg.fails(&["failback", "web"]);
    assert!(e.contains("not reprotected"), "{e}");
    cfg.ok(&["failover", "commit", "web"]);

    // Reprotect: the recovery site replicates the failed-over disk from the failover point.
    let t = now_ms();
    let shut = work.path().join("dr-shut");
    let v = cfg.json(&[
        "reprotect",
        "web",
        "--shutdown-hook",
        &format!("touch {}", shut.display()),
    ]);
    assert_eq!(v["images"][0].as_str().unwrap(), image.to_str().unwrap());
    let e = cfg.fails(&["reprotect", "web"]);
    assert!(e.contains("reprotected already"), "{e}");
    let first = point_after(cfg, "dr", t);
    assert_eq!(
        first["stats"]["changed_blocks"].as_u64().unwrap(),
        0,
        "no initial copy: {first}"
    );
    // The machine runs at the recovery site and changes three blocks.
    let mut cr = c0.clone();
    for (i, seed) in [(2usize, 81u64), (40, 82), (41, 83)] {
        let b = noise(seed, BS);
        cr[i * BS..(i + 1) * BS].copy_from_slice(&b);
        write_block(&image, i, &b);
    }
    let t = now_ms();
    let p = point_after(cfg, "dr", t);
    assert!(
        p["stats"]["changed_blocks"].as_u64().unwrap() <= 3,
        "only the changed blocks moved: {p}"
    );
    assert!(
        restore(
            cfg,
            "dr",
            p["id"].as_str().unwrap(),
            &work.path().join("r1")
        ) == cr
    );
    assert_eq!(
        cfg.json(&["status"])["replication"]["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == "web")
            .unwrap()["state"],
        "reprotected"
    );

    // The original disk took a write the failover lost; failback overwrites it.
    let mut home = c0.clone();
    home[60 * BS..61 * BS].copy_from_slice(&noise(84, BS));
    disk.write(&home);

    // Planned: the copy at the recovery site is shut down (its hook) before its final point.
    let v = cfg.json(&["failback", "web", "--planned"]);
    assert!(
        shut.exists(),
        "the recovery site's shutdown hook did not run"
    );
    assert!(
        std::fs::read(disk.path()).unwrap() == cr,
        "the original disk ends equal to the recovery copy"
    );
    let dk = &v["disks"][0];
    let blocks = (c0.len() / BS) as u64;
    assert_eq!(dk["compared_blocks"].as_u64().unwrap(), blocks, "{v}");
    assert_eq!(dk["read_bytes"].as_u64().unwrap(), c0.len() as u64, "{v}");
    assert_eq!(
        dk["written_blocks"].as_u64().unwrap(),
        4,
        "three changed at the recovery site, one lost write: {v}"
    );
    assert_eq!(dk["written_bytes"].as_u64().unwrap(), 4 * BS as u64);
    assert!(dk["fetched_bytes"].as_u64().unwrap() < 8 * BS as u64, "{v}");
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("shutdown hook ran") && notes.contains("no data lost"),
        "{v}"
    );

    // Home: the recovery site stopped replicating, and web's own protection resumed from the
    // failback point with a delta, not a copy.
    wait_until("the recovery site's protection to end", WAIT, || {
        !dr.state_dir().join("protection.json").exists()
    });
    let mut c3 = cr.clone();
    c3[70 * BS..71 * BS].copy_from_slice(&noise(85, BS));
    disk.write(&c3);
    let t = now_ms();
    let p = point_after(cfg, "web", t);
    assert!(
        p["stats"]["changed_blocks"].as_u64().unwrap() <= 1,
        "protection resumed with a delta: {p}"
    );
    assert!(
        restore(
            cfg,
            "web",
            p["id"].as_str().unwrap(),
            &work.path().join("r2")
        ) == c3
    );
    let st = cfg.json(&["status"]);
    let web = st["replication"]["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == "web")
        .unwrap()
        .clone();
    assert_ne!(web["state"], "reprotected", "{st}");
    assert_ne!(web["state"], "failover-committed", "{st}");
}
