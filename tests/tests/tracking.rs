//! `trace` capture: an ext4 filesystem on a loop device, written by fio (random writes with
//! verify) while it replicates with the kernel's block tracepoints. Each checked point restores
//! bit-exact to the view it was read from (a snapshot hook copies the device with `O_DIRECT`
//! and keeps the copy); no write is missed across a `kill -9` of the mobility node, a forced
//! buffer overrun, tracing switched off and the event disabled under the daemon, and a resize;
//! each loss is a full scan whose reason `status` shows; a quiet disk's cycle reads next to
//! nothing; the final point equals the device.

use lifeboat_tests::disks::point_after;
use lifeboat_tests::fs::{sh, Ext4};
use lifeboat_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// fio writing random 4 KiB blocks with verify into a file of the filesystem, rate-limited.
struct Fio(Child);

impl Fio {
    fn start(mnt: &Path) -> Fio {
        use std::os::unix::process::CommandExt;
        let c = Command::new("fio")
            .process_group(0)
            .args([
                "--name=churn",
                "--thread",
                "--rw=randwrite",
                "--bs=4k",
                "--size=16m",
                "--rate=4m",
                "--time_based",
                "--runtime=600",
                "--ioengine=psync",
                "--fsync=16",
                "--verify=crc32c",
                "--do_verify=0",
                "--verify_backlog=256",
            ])
            .arg(format!("--directory={}", mnt.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fio (scripts/test installs it)");
        Fio(c)
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's process group.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// A configuration node with a local vault, a process server, and `web` (mobility).
fn mesh() -> Vec<Node> {
    let nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    nodes[0].ok(&["vault", "create", "v1"]);
    nodes
}

/// `web`'s tracking report in `status`.
fn tracking(cfg: &Node) -> Value {
    cfg.json(&["status"])["replication"]["machines"][0]["tracking"].clone()
}

/// Waits until a cycle scanned in full for a reason containing `why` (alternatives separated
/// by `|`: a loss can be noticed first by either of two checks).
fn full_scan_for(cfg: &Node, why: &str) {
    full_scan_since(cfg, 0, why, || {});
}

/// The full scans counted so far.
fn full_scans(cfg: &Node) -> u64 {
    tracking(cfg)["full_scans"].as_u64().unwrap_or(0)
}

/// Waits until more than `n` full scans were counted and the last was for `why` (see
/// [`full_scan_for`]), running `poke` at each look.
fn full_scan_since(cfg: &Node, n: u64, why: &str, mut poke: impl FnMut()) {
    let mut last = Value::Null;
    wait_until(&format!("a full scan because {why}"), WAIT, || {
        poke();
        last = tracking(cfg);
        last["full_scans"].as_u64().unwrap_or(0) > n
            && last["last_full_scan"]
                .as_str()
                .is_some_and(|r| why.split('|').any(|w| r.contains(w)))
    });
}

/// [`full_scan_for`], running `poke` at each look.
fn full_scan_for_with(cfg: &Node, why: &str, poke: impl FnMut()) {
    full_scan_since(cfg, 0, why, poke);
}

/// The views the snapshot hook kept: (wall-clock ns, path), oldest first.
fn views(dir: &Path) -> Vec<(u128, PathBuf)> {
    let mut v: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".img")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The first point captured after `t` restores bit-exact to the view it was read from (the
/// first view the hook made after its capture time).
fn check_point_after(cfg: &Node, t: u64, kept: &Path, work: &Path, disk: &str) -> Value {
    let p = point_after(cfg, "web", t);
    let captured = p["captured_ms"].as_u64().unwrap() as u128 * 1_000_000;
    let view = views(kept)
        .into_iter()
        .find(|(ns, _)| *ns >= captured)
        .map(|(_, p)| p)
        .expect("the view of the point");
    let to = work.join(format!("r-{}", p["id"].as_str().unwrap()));
    cfg.ok(&[
        "restore",
        "web",
        "--point",
        p["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    let got = std::fs::read(to.join(format!("{disk}.img"))).unwrap();
    let want = std::fs::read(&view).unwrap();
    assert_eq!(got.len(), want.len());
    let bad: Vec<usize> = got
        .chunks(4096)
        .zip(want.chunks(4096))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    assert!(
        bad.is_empty(),
        "point {} differs from its view {} in 4 KiB blocks {bad:?}",
        p["id"],
        view.display()
    );
    std::fs::remove_dir_all(&to).unwrap();
    p
}

#[test]
fn trace_capture_reads_what_was_written_and_misses_no_write_across_every_loss() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let fs = Ext4::new(w, 48);
    let disk = Path::new(&fs.dev)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let kept = w.join("views");
    std::fs::create_dir_all(&kept).unwrap();
    let mut nodes = mesh();
    let cfg = &nodes[0];
    fast_policy(cfg, "10m");
    // The view: the device read with O_DIRECT (not its page cache), kept under its time.
    let hook = format!(
        "dd if={dev} of={w}/view.img bs=4M iflag=direct status=none && cp {w}/view.img {k}/$(date +%s%N).img && ls {k} | sort -n | head -n -16 | sed 's|^|{k}/|' | xargs -r rm -f && echo \"{disk} {w}/view.img\"",
        dev = fs.dev,
        w = w.display(),
        k = kept.display(),
    );
    let t = now_ms();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        &fs.dev,
        "--policy",
        "fast",
        "--capture",
        "trace",
        "--snapshot-hook",
        &hook,
    ]);
    check_point_after(cfg, t, &kept, w, &disk);
    let tr = tracking(cfg);
    assert_eq!(tr["disks"][0]["mode"], "trace", "{tr}");
    let _fio = Fio::start(&fs.mnt);

    // Under churn, points follow the writes exactly.
    wait_until("traced writes", WAIT, || {
        tracking(&nodes[0])["events"].as_u64() > Some(100)
    });
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);

    // kill -9 of the mobility node: what it had traced is gone; it scans in full once.
    nodes[2].kill9();
    let t = now_ms();
    nodes[2].start();
    full_scan_for(&nodes[0], "tracking started");
    check_point_after(&nodes[0], t, &kept, w, &disk);

    // A tiny trace buffer overruns under the churn.
    nodes[2].stop();
    nodes[2].start_env(&[("LIFEBOAT_TRACE_BUFFER_KB".into(), "4".into())]);
    // A burst of small direct writes fills it faster than it is read.
    let burst = fs.mnt.join("burst");
    full_scan_for_with(&nodes[0], "overr", || {
        sh(&[
            "dd",
            "if=/dev/zero",
            &format!("of={}", burst.display()),
            "bs=4k",
            "count=4000",
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ]);
    });
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    nodes[2].stop();
    nodes[2].start();
    let web = nodes[2].id();
    let inst = PathBuf::from(format!("/sys/kernel/tracing/instances/lifeboat-{web}"));
    wait_until("tracking to resume", WAIT, || {
        let t = now_ms();
        let p = point_after(&nodes[0], "web", t);
        p["captured_ms"].as_u64() > Some(t) && tracking(&nodes[0])["disks"][0]["mode"] == "trace"
    });

    // Someone switches tracing off, then disables the event.
    let n = full_scans(&nodes[0]);
    std::fs::write(inst.join("tracing_on"), "0").unwrap();
    full_scan_since(&nodes[0], n, "switched off|not traced", || {});
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    let n = full_scans(&nodes[0]);
    std::fs::write(inst.join("events/block/block_rq_complete/enable"), "0").unwrap();
    full_scan_since(&nodes[0], n, "disabled|not traced", || {});
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    // Someone switches tracing off and on again, quickly (between two checks of the
    // watchdog, most times) while writes go on: the disk's request counters show requests
    // that were never traced. (A toggle the watchdog happens to see says "switched off": the
    // toggle is repeated until one slips past it.)
    // (The instance may be between a stop and a restart of the daemon's: then there is
    // nothing to switch.)
    let n = full_scans(&nodes[0]);
    full_scan_since(&nodes[0], n, "not traced", || {
        let _ = std::fs::write(inst.join("tracing_on"), "0");
        sh(&[
            "dd",
            "if=/dev/urandom",
            &format!("of={}", burst.display()),
            "bs=4k",
            "count=16",
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ]);
        let _ = std::fs::write(inst.join("tracing_on"), "1");
    });
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    // Someone removes the instance: the kernel refuses while the daemon reads it (EBUSY); if
    // it ever lets it go, the daemon notices and traces again after a full scan.
    match std::fs::remove_dir(&inst) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EBUSY), "{e}"),
        Ok(()) => full_scan_for(&nodes[0], "went away"),
    }

    // The device grows.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fs.img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    sh(&["losetup", "-c", &fs.dev]);
    full_scan_for(&nodes[0], "resized");
    let t = now_ms();
    check_point_after(&nodes[0], t, &kept, w, &disk);
    let t = now_ms();
    let p = check_point_after(&nodes[0], t, &kept, w, &disk);
    assert!(p["stats"]["changed_blocks"].as_u64().is_some(), "{p}");

    // Quiet: the writes stop, and a cycle reads next to nothing.
    drop(_fio);
    sh(&["sync"]);
    let t = now_ms();
    point_after(&nodes[0], "web", t);
    let t = now_ms();
    point_after(&nodes[0], "web", t);
    let tr = tracking(&nodes[0]);
    assert!(
        tr["last_read_bytes"].as_u64().unwrap() < 4 << 20,
        "a quiet cycle read the disk: {tr}"
    );
    assert!(tr["events"].as_u64().unwrap() > 0, "{tr}");

    // Unmounted, the final point equals the device (read through its backing file).
    sh(&["umount", fs.mnt.to_str().unwrap()]);
    let t = now_ms();
    let p = check_point_after(&nodes[0], t, &kept, w, &disk);
    let to = w.join("final");
    nodes[0].ok(&[
        "restore",
        "web",
        "--point",
        p["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(to.join(format!("{disk}.img"))).unwrap() == std::fs::read(&fs.img).unwrap(),
        "the final point differs from the device"
    );
    nodes.clear();
}

/// What a [`writes_through`] test protects.
#[derive(Clone, Copy, PartialEq)]
enum Protect {
    /// The loop device (the disk).
    Disk,
    /// What sits on it (a partition): its range of the disk, `(first sector, sectors)`.
    Top(u64, u64),
}

/// A loop device (64 MiB) with `layer` on it, and a protection traced with `--capture trace`
/// (no snapshot hook: cycles read the device itself) of the disk or of the layer: writes
/// through the layer (and, when the layer is protected, writes to the disk beside it) must
/// all be in the next traced point, with no full scan.
fn writes_through(
    stack: &str,
    protect: Protect,
    layer: impl FnOnce(&str) -> Option<(String, Box<dyn FnOnce()>)>,
) {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let dev = sh(&[
        "losetup",
        "--find",
        "--show",
        "--partscan",
        img.to_str().unwrap(),
    ]);
    let detach = scopeguard(dev.clone());
    let Some((top, teardown)) = layer(&dev) else {
        return;
    };
    let protected = match protect {
        Protect::Disk => dev.clone(),
        Protect::Top(..) => top.clone(),
    };
    let nodes = mesh();
    let cfg = &nodes[0];
    fast_policy(cfg, "10m");
    let t = now_ms();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        &protected,
        "--policy",
        "fast",
        "--capture",
        "trace",
    ]);
    point_after(cfg, "web", t);
    assert_eq!(
        tracking(cfg)["disks"][0]["mode"],
        "trace",
        "{stack}: {}",
        tracking(cfg)
    );
    let t = now_ms();
    point_after(cfg, "web", t);
    let scans = tracking(cfg)["full_scans"].as_u64().unwrap();
    let dd = |to: &str, seek: &str| {
        sh(&[
            "dd",
            "if=/dev/urandom",
            &format!("of={to}"),
            "bs=64k",
            "count=16",
            &format!("seek={seek}"),
            "oflag=direct",
            "status=none",
        ]);
    };
    dd(&top, "3");
    if protect != Protect::Disk {
        // Beside the layer, on the disk: not part of the protected device, but its
        // neighbours' writes must not disturb its map either.
        dd(&dev, "900");
    }
    let t = now_ms();
    let p = point_after(cfg, "web", t);
    let tr = tracking(cfg);
    assert_eq!(
        tr["full_scans"].as_u64().unwrap(),
        scans,
        "{stack}: a full scan: {tr}"
    );
    if protect != Protect::Disk {
        assert!(
            p["stats"]["changed_blocks"].as_u64().is_some_and(|n| n > 0),
            "{stack}: the writes through it were not read: {p}"
        );
    }
    let to = work.path().join("r");
    cfg.ok(&[
        "restore",
        "web",
        "--point",
        p["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    let name = Path::new(&protected)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let disk = std::fs::read(&img).unwrap();
    let want = match protect {
        Protect::Disk => &disk[..],
        Protect::Top(first, n) => &disk[first as usize * 512..(first + n) as usize * 512],
    };
    assert!(
        std::fs::read(to.join(format!("{name}.img"))).unwrap() == want,
        "{stack}: the writes through it are not in the traced point"
    );
    drop(nodes);
    teardown();
    drop(detach);
}

/// Detaches a loop device when dropped.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn scopeguard(dev: String) -> Detach {
    Detach(dev)
}

/// Partition 1 of `dev`, from sector 2048, 32 MiB long: an MBR holds it; a kernel that
/// reads no partition table (built without MSDOS support) is given it with `addpart`
/// (BLKPG, which needs no table parser). Skips, saying why, only if neither works.
fn partition(dev: &str) -> Option<(String, Box<dyn FnOnce()>)> {
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&(PART.0 as u32).to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&(PART.1 as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
        f.write_all_at(&mbr, 0).unwrap();
        f.sync_all().unwrap();
    }
    let _ = Command::new("blockdev").args(["--rereadpt", dev]).status();
    let name = Path::new(dev)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let sys = PathBuf::from(format!("/sys/block/{name}/{name}p1/dev"));
    if !sys.exists() {
        let out = Command::new("addpart")
            .args([dev, "1", &PART.0.to_string(), &PART.1.to_string()])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipped: this kernel reads no partition table of {dev} and refuses addpart ({}); a partition's writes are requests on its disk, which is what is traced",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
    }
    let num = std::fs::read_to_string(&sys).unwrap();
    let part = format!("{dev}p1");
    if !Path::new(&part).exists() {
        let (a, b) = num.trim().split_once(':').unwrap();
        sh(&["mknod", &part, "b", a, b]);
    }
    Some((part, Box::new(|| {}) as Box<dyn FnOnce()>))
}

/// The test partition: first sector and sectors.
const PART: (u64, u64) = (2048, 65536);

#[test]
fn writes_through_a_partition_are_traced_on_the_disk() {
    writes_through("a partition", Protect::Disk, partition);
}

#[test]
fn a_protected_partition_is_traced_through_its_disk() {
    writes_through(
        "a protected partition",
        Protect::Top(PART.0, PART.1),
        partition,
    );
}

#[test]
fn writes_through_device_mapper_are_traced_on_the_disk_under_it() {
    writes_through("a device-mapper linear device", Protect::Disk, |dev| {
        // The kernel has device-mapper when its control device is registered (built in, or
        // once dm_mod is loaded).
        let _ = Command::new("modprobe").arg("dm_mod").output();
        let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        if !misc
            .lines()
            .any(|l| l.trim_end().ends_with(" device-mapper"))
        {
            eprintln!("skipped: this kernel has no device-mapper (no device-mapper in /proc/misc, and no dm_mod to load); writes through it are requests on the disk under it, which is what is traced");
            return None;
        }
        let has_dmsetup = Command::new("dmsetup")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            has_dmsetup,
            "the kernel has device-mapper but dmsetup does not work (scripts/test installs it)"
        );
        let name = format!("lifeboat-test-{}", std::process::id());
        let table = format!("0 131072 linear {dev} 0");
        sh(&["dmsetup", "create", &name, "--table", &table]);
        let n = name.clone();
        Some((
            format!("/dev/mapper/{name}"),
            Box::new(move || {
                let _ = Command::new("dmsetup").args(["remove", &n]).status();
            }) as Box<dyn FnOnce()>,
        ))
    });
}

#[test]
fn an_app_consistent_point_freezes_only_while_it_reads_what_changed_and_within_the_cap() {
    let work = tempfile::tempdir().unwrap();
    let fs = Ext4::new(work.path(), 48);
    let nodes = mesh();
    let cfg = &nodes[0];
    // App-consistent points every second, the freeze capped at 1 ms: only a cycle with next to
    // nothing to read may freeze.
    cfg.ok(&[
        "policy",
        "create",
        "tight",
        "--crash-consistent-every",
        "1s",
        "--app-consistent-every",
        "1s",
        "--max-freeze",
        "1ms",
    ]);
    let mnt = fs.mnt.to_str().unwrap();
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        &fs.dev,
        "--policy",
        "tight",
        "--capture",
        "trace",
        "--freeze-hook",
        &format!("fsfreeze -f {mnt}"),
        "--thaw-hook",
        &format!("fsfreeze -u {mnt}"),
    ]);
    // The first cycles must read the whole disk: no freeze, and status says why.
    let mut skipped = String::new();
    wait_until("an app-consistent point refused the freeze", WAIT, || {
        skipped = tracking(cfg)["last_freeze_skipped"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !skipped.is_empty()
    });
    assert!(
        skipped.contains("crash-consistent") && skipped.contains("1 ms"),
        "{skipped}"
    );
    // Quiet: an app-consistent point freezes, briefly, and the point records how long.
    let mut app = Value::Null;
    wait_until("an app-consistent point", WAIT, || {
        app = lifeboat_tests::disks::points(cfg, "web")
            .into_iter()
            .find(|p| p["consistency"] == "app-consistent")
            .unwrap_or(Value::Null);
        !app.is_null()
    });
    let ms = app["stats"]["freeze_ms"]
        .as_u64()
        .expect("freeze_ms recorded");
    assert!(ms < 5_000, "{app}");
    assert!(tracking(cfg)["last_freeze_ms"].as_u64().is_some());
    // 16 MiB written: the next app-consistent point due is refused the freeze again.
    sh(&[
        "dd",
        "if=/dev/urandom",
        &format!("of={mnt}/big"),
        "bs=1M",
        "count=16",
        "conv=fsync",
        "status=none",
    ]);
    wait_until("a refusal for the new writes", WAIT, || {
        let s = tracking(cfg)["last_freeze_skipped"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        s != skipped && s.contains("MiB")
    });
}
