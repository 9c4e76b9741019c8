//! Drills (test failovers): a machine's disks brought up from a recovery point, next to
//! production and without touching it, then removed. This build runs drills on the
//! configuration node (the target is this node; `--on NODE` is not built yet).
//!
//! A drill restores every disk of the chosen point from the vault (every block and Merkle root
//! verified), converts the images to qcow2 if asked (`qemu-img`, the result compared with the
//! verified raw image before that is removed), and runs the boot hook with the images in its
//! environment, inside a fresh network namespace with only loopback if `--isolated`. It is
//! recorded in `drills.json` before anything is written, so `drill cleanup` knows what to
//! remove even after a crash; one drill per machine is active at a time.

use super::*;
use std::path::PathBuf;

/// Longest a boot hook may run.
const BOOT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// Past this age without a successful drill, `status` warns.
pub const DRILL_WARN_MS: u64 = 90 * 24 * 3600 * 1000;
/// Drills kept in each machine's history.
const HISTORY: usize = 20;

/// A drill as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillRecord {
    /// Drill id.
    pub id: String,
    /// The point it used.
    pub point: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Where its images are.
    pub dir: PathBuf,
    /// The directory was made by the drill (cleanup removes it).
    pub made_dir: bool,
    /// Its images.
    pub images: Vec<PathBuf>,
    /// Image format.
    pub format: String,
    /// The boot hook ran in an isolated network namespace.
    pub isolated: bool,
    /// Succeeded: images verified and the boot hook (if any) exited 0.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The operator's notes at cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// Each machine's drills.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineDrills {
    /// The drill not cleaned up yet.
    pub active: Option<DrillRecord>,
    /// When the last successful drill ran (Unix ms).
    pub last_ok_ms: Option<u64>,
    /// Drills cleaned up, newest last.
    pub history: Vec<DrillRecord>,
}

fn book_path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("drills.json")
}

/// The drills of every machine (by node id).
pub fn book(repl: &Repl) -> BTreeMap<NodeId, MachineDrills> {
    load(&book_path(repl)).ok().flatten().unwrap_or_default()
}

fn save_book(repl: &Repl, b: &BTreeMap<NodeId, MachineDrills>) -> Result<(), String> {
    save(&book_path(repl), b, 0o600)
}

/// What `drill` is asked.
#[derive(Debug, Clone)]
pub struct DrillAsk {
    /// Machine.
    pub machine: String,
    /// Point selector.
    pub point: String,
    /// Image directory (default: under the state directory).
    pub to: Option<String>,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Boot hook.
    pub boot_hook: Option<String>,
    /// Run the boot hook in an isolated network namespace.
    pub isolated: bool,
    /// Failover: run the machine's shutdown hook first (going on if it is unreachable).
    pub shutdown_source: bool,
    /// Failover: both sites are up; shut down, cut a final point, fail over from it.
    pub planned: bool,
}

/// `lifeboat drill MACHINE ...`.
pub async fn drill(repl: &Repl, ask: DrillAsk) -> Result<Value, String> {
    require_config(repl).await?;
    check_tools(&ask)?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, &ask.machine).await?;
    if let Some(a) = book(repl).get(&id).and_then(|m| m.active.clone()) {
        return Err(format!(
            "a drill of {name} is active since {} ({}); run `lifeboat drill cleanup {name}` first",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.started_ms)
            ),
            a.dir.display()
        ));
    }
    let protection = guard(&repl.cfg.protections).get(&id).cloned();
    let steps = super::source::prepare(repl, id, &name, &ask, protection.as_ref()).await?;
    let ask = steps.narrow(ask);
    let Landing {
        point: p,
        id: drill_id,
        dir,
        made_dir,
        images,
    } = land(repl, &vault, id, &name, &ask, "drills").await?;
    let mut rec = DrillRecord {
        id: drill_id,
        point: p.id.clone(),
        started_ms: crate::seams::now().0,
        dir: dir.clone(),
        made_dir,
        images: images.clone(),
        format: ask.format.clone(),
        isolated: ask.isolated,
        ok: false,
        error: None,
        notes: None,
    };
    // Recorded before anything is written: cleanup finds it whatever happens next.
    record(repl, id, |m| m.active = Some(rec.clone()))?;
    let t0 = std::time::Instant::now();
    let outcome = bring_up(
        "drill", &vault, &p, &ask, &dir, &images, &name, &rec.id, None,
    )
    .await;
    rec.ok = outcome.is_ok();
    rec.error = outcome.as_ref().err().cloned();
    let ok_at = crate::seams::now().0;
    record(repl, id, |m| {
        m.active = Some(rec.clone());
        if rec.ok {
            m.last_ok_ms = Some(ok_at);
        }
    })?;
    let hook_exit = outcome.map_err(|e| {
        format!("drill of {name} failed: {e}; what it made stays for inspection until `lifeboat drill cleanup {name}`")
    })?;
    tracing::info!(machine = %name, point = %p.id, drill = %rec.id, "drill up");
    Ok(crate::replies::encode(&crate::replies::Drilled {
        machine: name,
        drill: rec.id,
        point: p.id.clone(),
        captured_ms: p.captured.0,
        images,
        format: ask.format,
        isolated: ask.isolated,
        boot_hook_exit: hook_exit,
        seconds: t0.elapsed().as_secs_f64(),
        notes: steps.notes,
    }))
}

/// Where a drill or a failover lands: the chosen point, a fresh id, the image directory (and
/// whether it was made here), and the image paths, none of which exists yet.
pub(super) struct Landing {
    pub(super) point: PointRecord,
    pub(super) id: String,
    pub(super) dir: PathBuf,
    pub(super) made_dir: bool,
    pub(super) images: Vec<PathBuf>,
}

/// Chooses the point of `machine` and the images' place (under `sub` of the state directory
/// unless `--to` says otherwise).
pub(super) async fn land(
    repl: &Repl,
    vault: &Vault,
    machine: NodeId,
    name: &str,
    ask: &DrillAsk,
    sub: &str,
) -> Result<Landing, String> {
    let pts = vault
        .list_points(Some(&machine))
        .await
        .map_err(|e| e.to_string())?;
    let point = select_point(&pts, &ask.point)?.clone();
    let id = {
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        vault::hex(&b)
    };
    let (dir, made_dir) = drill_dir(repl, ask, sub, name, &id)?;
    let ext = if ask.format == "qcow2" {
        "qcow2"
    } else {
        "img"
    };
    let images: Vec<PathBuf> = point
        .disks
        .iter()
        .map(|d| dir.join(format!("{}.{ext}", d.name)))
        .collect();
    if let Some(clash) = images.iter().find(|i| i.exists()) {
        return Err(format!(
            "{} exists; give an empty --to directory",
            clash.display()
        ));
    }
    Ok(Landing {
        point,
        id,
        dir,
        made_dir,
        images,
    })
}

/// The format and the tools it needs are there, before anything is written.
pub(super) fn check_tools(ask: &DrillAsk) -> Result<(), String> {
    let has = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    match ask.format.as_str() {
        "raw" => {}
        "qcow2" if has("qemu-img") => {}
        "qcow2" => return Err("--format qcow2 needs qemu-img (apt-get install qemu-utils)".into()),
        f => return Err(format!("--format {f:?}: use raw or qcow2")),
    }
    if ask.isolated && ask.boot_hook.is_none() {
        return Err("--isolated applies to the boot hook; give --boot-hook".into());
    }
    if ask.isolated && !has("unshare") {
        return Err("--isolated needs unshare (util-linux)".into());
    }
    Ok(())
}

/// The drill's image directory: `--to` (absolute), or one of its own in the state directory.
pub(super) fn drill_dir(
    repl: &Repl,
    ask: &DrillAsk,
    sub: &str,
    name: &str,
    id: &str,
) -> Result<(PathBuf, bool), String> {
    let dir = match &ask.to {
        Some(t) => PathBuf::from(t),
        None => repl.dir.root.join(sub).join(format!("{name}-{id}")),
    };
    if !dir.is_absolute() {
        return Err("--to must be an absolute directory".into());
    }
    if dir.exists() && !dir.is_dir() {
        return Err(format!("--to {}: not a directory", dir.display()));
    }
    let made = !dir.exists();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((dir, made))
}

fn record(repl: &Repl, id: NodeId, f: impl FnOnce(&mut MachineDrills)) -> Result<(), String> {
    let mut b = book(repl);
    f(b.entry(id).or_default());
    save_book(repl, &b)
}

/// Restores (and converts) every disk, then runs the boot hook. Returns its exit code. With
/// `hashes_to`, each restored disk's BLAKE3 map is written there (`DISK.bin`) before anything
/// can change it: the base a reprotect starts from.
#[allow(clippy::too_many_arguments)]
pub(super) async fn bring_up(
    kind: &str,
    vault: &Vault,
    p: &PointRecord,
    ask: &DrillAsk,
    dir: &Path,
    images: &[PathBuf],
    name: &str,
    drill_id: &str,
    hashes_to: Option<&Path>,
) -> Result<Option<i32>, String> {
    for (d, image) in p.disks.iter().zip(images) {
        let raw = if ask.format == "qcow2" {
            image.with_extension("img.partial")
        } else {
            image.clone()
        };
        vault
            .restore_disk(d, &raw)
            .await
            .map_err(|e| format!("restore of disk {} failed: {e}", d.name))?;
        if let Some(to) = hashes_to {
            let (raw2, bs) = (raw.clone(), d.block_size as usize);
            let h = tokio::task::spawn_blocking(move || crate::vault::hash_image(&raw2, bs))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", raw.display()))?;
            save_hashes(&to.join(format!("{}.bin", d.name)), &h)?;
        }
        if ask.format == "qcow2" {
            let (raw2, img2) = (raw.clone(), image.clone());
            tokio::task::spawn_blocking(move || to_qcow2(&raw2, &img2))
                .await
                .map_err(|e| e.to_string())??;
        }
    }
    let Some(hook) = &ask.boot_hook else {
        return Ok(None);
    };
    let env: Vec<(String, String)> = vec![
        ("LIFEBOAT_MACHINE".into(), name.to_string()),
        ("LIFEBOAT_POINT".into(), p.id.clone()),
        ("LIFEBOAT_JOB".into(), drill_id.to_string()),
        ("LIFEBOAT_KIND".into(), kind.to_string()),
        ("LIFEBOAT_FORMAT".into(), ask.format.clone()),
        ("LIFEBOAT_DIR".into(), dir.display().to_string()),
        (
            "LIFEBOAT_IMAGES".into(),
            images
                .iter()
                .map(|i| i.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    let (hook, isolated, log) = (hook.clone(), ask.isolated, dir.join("boot-hook.log"));
    tokio::task::spawn_blocking(move || run_boot_hook(&hook, isolated, &env, &log))
        .await
        .map_err(|e| e.to_string())?
        .map(Some)
}

/// Writes a BLAKE3 map (32 bytes a block), 0600.
pub(super) fn save_hashes(path: &Path, h: &[[u8; 32]]) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    lifeboat_config::state::write_file_atomic(path, &h.concat(), 0o600)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a BLAKE3 map written by [`save_hashes`].
pub(super) fn load_hashes(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() % 32 != 0 {
        return Err(format!("{}: truncated", path.display()));
    }
    Ok(b.chunks_exact(32)
        .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
        .collect())
}

/// Converts a verified raw image to qcow2, checks the copy against it, removes the raw one.
fn to_qcow2(raw: &Path, out: &Path) -> Result<(), String> {
    let run = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let o = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "qemu-img {}: {}",
                args.first().and_then(|a| a.to_str()).unwrap_or(""),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(())
    };
    let (r, q) = (raw.as_os_str(), out.as_os_str());
    run(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        r,
        q,
    ])?;
    run(&[
        "compare".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        r,
        q,
    ])
    .map_err(|e| format!("the qcow2 image differs from the verified raw image: {e}"))?;
    let _ = std::fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    std::fs::remove_file(raw).map_err(|e| format!("{}: {e}", raw.display()))
}

/// Runs the boot hook (in a fresh network namespace with only loopback up if `isolated`),
/// its output into `log`. Returns its exit code; a failure or a timeout is an error.
fn run_boot_hook(
    hook: &str,
    isolated: bool,
    env: &[(String, String)],
    log: &Path,
) -> Result<i32, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = if isolated {
        let mut c = std::process::Command::new("unshare");
        c.args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up 2>/dev/null; exec sh -c \"$1\"",
            "sh",
            hook,
        ]);
        c
    } else {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", hook]);
        c
    };
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("boot hook: {e}"))?;
    let deadline = std::time::Instant::now() + BOOT_HOOK_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| format!("boot hook: {e}"))? {
            Some(st) if st.success() => return Ok(0),
            Some(st) => {
                return Err(format!(
                    "boot hook failed ({st}); its output is in {}",
                    log.display()
                ))
            }
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "boot hook did not finish within {} s and was killed",
                    BOOT_HOOK_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Removes a drill's or failover's images, partial images and hook log, and its directory if
/// it made it and it is empty (anything else in it is not ours). Returns the files removed.
pub(super) fn remove_images(
    images: &[PathBuf],
    dir: &Path,
    made_dir: bool,
) -> Result<usize, String> {
    let mut removed = 0;
    for i in images.iter().chain([&dir.join("boot-hook.log")]) {
        for p in [i.clone(), i.with_extension("img.partial")] {
            match std::fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
    }
    if made_dir {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(removed)
}

/// `lifeboat drill cleanup MACHINE [--notes TEXT]`: removes what the active drill made and
/// records it (with the notes) in the machine's history.
pub async fn cleanup(repl: &Repl, machine: &str, notes: Option<String>) -> Result<Value, String> {
    require_config(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let Some(mut rec) = book(repl).get(&id).and_then(|m| m.active.clone()) else {
        return Err(format!("no drill of {name} is active"));
    };
    let removed = remove_images(&rec.images, &rec.dir, rec.made_dir)?;
    rec.notes = notes;
    record(repl, id, |m| {
        m.active = None;
        m.history.push(rec.clone());
        let over = m.history.len().saturating_sub(HISTORY);
        m.history.drain(..over);
    })?;
    tracing::info!(machine = %name, drill = %rec.id, "drill cleaned up");
    Ok(crate::replies::encode(&crate::replies::DrillCleaned {
        machine: name,
        drill: rec.id,
        removed_files: removed,
        ok: rec.ok,
    }))
}
