//! Real applications under replication: an ext4 filesystem on a loop device, written by fio and
//! by a SQLite database during replication, protected with fsfreeze freeze/thaw hooks. The
//! restored app-consistent image, and the images a drill and a failover bring up from a final
//! point, must pass `e2fsck -fn` and `PRAGMA integrity_check` (and the latter two equal the
//! source).

use lifeboat_tests::disks::*;
use lifeboat_tests::fs::{sh, Ext4};
use lifeboat_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Background writers: fio random writes and SQLite transactions.
struct Workload {
    stop: Arc<AtomicBool>,
    sqlite: Option<std::thread::JoinHandle<u64>>,
    fio: Child,
}

impl Workload {
    fn start(mnt: &Path) -> Workload {
        use std::os::unix::process::CommandExt;
        let fio = Command::new("fio")
            // --thread: jobs are threads of one process, and its own process group is killed
            // whole, so no orphan keeps the mount busy.
            .process_group(0)
            .args([
                "--name=churn",
                "--thread",
                "--rw=randwrite",
                "--bs=4k",
                "--size=8m",
                "--time_based",
                "--runtime=600",
                "--ioengine=psync",
                "--fsync=32",
            ])
            .arg(format!("--directory={}", mnt.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fio (scripts/test installs it)");
        let db = mnt.join("app.db");
        sh(&[
            "sqlite3",
            db.to_str().unwrap(),
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sqlite = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let sql = format!("BEGIN; INSERT INTO t(v) SELECT randomblob(3000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3); UPDATE t SET v = randomblob(100) WHERE id = {}; COMMIT;", n % 50 + 1);
                if Command::new("sqlite3")
                    .arg(&db)
                    .arg(&sql)
                    .status()
                    .is_ok_and(|st| st.success())
                {
                    n += 1;
                }
            }
            n
        });
        Workload {
            stop,
            sqlite: Some(sqlite),
            fio,
        }
    }

    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: plain kill(2) on our own child's process group.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.fio.id() as i32), libc::SIGKILL);
        }
        let _ = self.fio.wait();
        self.sqlite
            .take()
            .map(|h| h.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn an_app_consistent_point_of_a_busy_ext4_filesystem_passes_fsck_and_sqlite_integrity() {
    assert!(
        can_netns(),
        "this test needs root (loop devices, mount, fsfreeze); CI runs as root"
    );
    let nodes = mesh_of(
        &[("config", ""), ("ps", "process-server"), ("db", "mobility")],
        &[],
    );
    let cfg = &nodes[0];
    let work = tempfile::tempdir().unwrap();
    cfg.ok(&["vault", "create", "v1"]);
    cfg.ok(&[
        "policy",
        "create",
        "apps",
        "--rpo-threshold",
        "5m",
        "--retention",
        "1h",
        "--crash-consistent-every",
        "1s",
        "--app-consistent-every",
        "2s",
    ]);
    let fs = Ext4::new(work.path(), 64);
    let mut load = Workload::start(&fs.mnt);
    let m = fs.mnt.display().to_string();
    let t0 = now_ms();
    cfg.ok(&[
        "protect",
        "db",
        "--disk",
        &fs.dev,
        "--policy",
        "apps",
        "--freeze-hook",
        &format!("fsfreeze -f {m}"),
        "--thaw-hook",
        &format!("fsfreeze -u {m}"),
    ]);
    // Let the workload run across several points, then take an app-consistent one.
    let first = point_after(cfg, "db", t0);
    let mut app = None;
    wait_until(
        "an app-consistent point taken while the workload runs",
        WAIT,
        || {
            app = points(cfg, "db").into_iter().find(|p| {
                p["consistency"] == "app-consistent"
                    && p["captured_ms"].as_u64().unwrap_or(0)
                        > first["captured_ms"].as_u64().unwrap_or(0) + 2000
            });
            app.is_some()
        },
    );
    let rows = load.stop();
    assert!(rows > 0, "the SQLite workload made no progress");
    let app = app.unwrap();
    assert!(
        app["stats"]["changed_blocks"].as_u64().unwrap() > 0,
        "the workload changed nothing between points"
    );

    let out = work.path().join("restored");
    cfg.ok(&[
        "restore",
        "db",
        "--point",
        app["id"].as_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ]);
    let name = app["disks"][0]["name"].as_str().unwrap().to_string();
    let img = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&name))
        .unwrap();
    check_image(&img, work.path(), "restored");

    // Drill and fail over the machine from a final point, with the workload stopped and the
    // filesystem unmounted (as a machine shut down for a planned failover) so the source holds
    // still: each image equals the source and passes e2fsck and SQLite's own integrity check.
    // (The source is read through the loop device's backing file: the block device's own
    // page cache can be stale against what the filesystem wrote.)
    sh(&["umount", &m]);
    let source = std::fs::read(work.path().join("fs.img")).unwrap();
    let v = cfg.json(&["drill", "db", "--point", "latest"]);
    assert!(
        v["notes"][0].as_str().unwrap().starts_with("final point"),
        "{v}"
    );
    let drilled = PathBuf::from(v["images"][0].as_str().unwrap());
    assert!(
        std::fs::read(&drilled).unwrap() == source,
        "the drilled image is not the source"
    );
    check_image(&drilled, work.path(), "drilled");
    cfg.ok(&["drill", "cleanup", "db"]);
    let v = cfg.json(&["failover", "db", "--point", "latest"]);
    let failed_over = PathBuf::from(v["images"][0].as_str().unwrap());
    assert!(
        std::fs::read(&failed_over).unwrap() == source,
        "the failed-over image is not the source"
    );
    check_image(&failed_over, work.path(), "failed-over");
}

/// The image passes `e2fsck -fn`, mounts, and its SQLite database passes `PRAGMA
/// integrity_check` with rows in it.
fn check_image(img: &Path, work: &Path, what: &str) {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn failed on the {what} image:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // Mount the image read-only and check the database.
    let rmnt = work.join(format!("mnt-{what}"));
    std::fs::create_dir_all(&rmnt).unwrap();
    let dev = sh(&[
        "losetup",
        "--find",
        "--show",
        "--read-only",
        img.to_str().unwrap(),
    ]);
    let mounted = Command::new("mount")
        .args(["-o", "ro,noload", &dev])
        .arg(&rmnt)
        .status()
        .unwrap()
        .success();
    let check = mounted.then(|| {
        Command::new("sqlite3")
            .arg(format!(
                "file:{}?immutable=1",
                rmnt.join("app.db").display()
            ))
            .arg("PRAGMA integrity_check; SELECT count(*) > 0 FROM t;")
            .output()
            .unwrap()
    });
    let _ = Command::new("umount").arg(&rmnt).status();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(mounted, "the {what} filesystem does not mount");
    let check = check.unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        text.trim(),
        "ok\n1",
        "PRAGMA integrity_check of the {what} image: {text} {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
