//! Landing a recovery point on a node: the target of a drill or failover (`--on NODE`, the
//! configuration node by default). The target opens the vault with the job's grant (never
//! saved), restores every disk of the point (every block and Merkle root verified) straight
//! from the vault, keeps each disk's BLAKE3 map if asked (a reprotect's base), converts to
//! qcow2 if asked (`qemu-img`, the copy compared with the verified raw image), and runs the
//! boot hook with the images in its environment, in a fresh network namespace with only
//! loopback if isolated. What a landing makes is recorded in `landings.json` before it is
//! made, so `unland` removes it whatever happened in between.

use super::{load, save, Repl};
use crate::vault::{Vault, VaultConfig};
use lifeboat_protocol::message::{DiskSpec, LandJob, Landed};
use lifeboat_protocol::vault::PointRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest a boot hook may run.
const BOOT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// What a landing made here.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LandingRecord {
    kind: String,
    machine_name: String,
    point: String,
    dir: PathBuf,
    made_dir: bool,
    images: Vec<PathBuf>,
    /// Of the images, the existing devices it wrote onto (never removed).
    #[serde(default)]
    mapped: Vec<PathBuf>,
    started_ms: u64,
}

fn book_path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("landings.json")
}

fn book(repl: &Repl) -> BTreeMap<String, LandingRecord> {
    load(&book_path(repl)).ok().flatten().unwrap_or_default()
}

fn save_book(repl: &Repl, b: &BTreeMap<String, LandingRecord>) -> Result<(), String> {
    save(&book_path(repl), b, 0o600)
}

/// Where a landing keeps the BLAKE3 maps of the disks it restored.
fn maps_dir(repl: &Repl, job: &str) -> PathBuf {
    repl.dir.root.join("landing-maps").join(job)
}

/// Checks what the job needs on this node, before anything is made.
pub fn check_tools(format: &str, isolated: bool, has_hook: bool) -> Result<(), String> {
    let has = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    };
    match format {
        "raw" => {}
        "qcow2" if has("qemu-img") => {}
        "qcow2" => return Err("--format qcow2 needs qemu-img (apt-get install qemu-utils)".into()),
        f => return Err(format!("--format {f:?}: use raw or qcow2")),
    }
    if isolated && !has_hook {
        return Err("--isolated applies to the boot hook; give --boot-hook".into());
    }
    if isolated && !has("unshare") {
        return Err("--isolated needs unshare (util-linux)".into());
    }
    Ok(())
}

/// The vault for `job`: this node's own if the grant is for it, else one opened with the
/// grant for this job only.
async fn job_vault(repl: &Repl, job: &LandJob) -> Result<Arc<Vault>, String> {
    if repl.grant().as_ref() == Some(&job.grant) {
        if let Ok(Some(v)) = repl.open_vault().await {
            return Ok(v);
        }
    }
    let cfg = VaultConfig::from_grant(job.grant.clone());
    let key = cfg.key().ok_or("the grant's key is malformed")?;
    let store = crate::vault::store_from_url(&cfg.url, &cfg.options).map_err(|e| e.to_string())?;
    Ok(Arc::new(
        Vault::open(store, key).await.map_err(|e| e.to_string())?,
    ))
}

/// The landings running on this node, so that `unland` can stop one before removing what it
/// made (the configuration node that asked may have crashed and been restarted meanwhile).
#[derive(Debug, Default)]
pub struct Running(std::sync::Mutex<BTreeMap<String, RunningLanding>>);

#[derive(Clone, Debug)]
struct RunningLanding {
    stop: Arc<tokio::sync::Notify>,
    /// Held by the landing while it runs.
    ended: Arc<tokio::sync::Mutex<()>>,
}

/// Longest `unland` waits for a running landing to stop.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Brings `job`'s point up on this node. `Err` if nothing was made; once something may have
/// been, a failure is `Landed::error` (and `unland` removes what was made). An `unland` of the
/// job while it runs stops it.
pub async fn land(
    repl: &Repl,
    job: LandJob,
    done: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Landed, String> {
    let id = job.job.clone();
    let me = RunningLanding {
        stop: Arc::new(tokio::sync::Notify::new()),
        ended: Arc::new(tokio::sync::Mutex::new(())),
    };
    let held = me.ended.clone().lock_owned().await;
    {
        let mut running = repl.mob.landings.0.lock().map_err(|_| "internal: lock")?;
        if running.contains_key(&id) {
            return Err(format!("landing {id} is running on this node"));
        }
        running.insert(id.clone(), me.clone());
    }
    let out = tokio::select! {
        r = land_now(repl, job, done) => r,
        _ = me.stop.notified() => Err(format!("landing {id} was stopped: it is being removed")),
    };
    if let Ok(mut running) = repl.mob.landings.0.lock() {
        running.remove(&id);
    }
    drop(held);
    out
}

async fn land_now(
    repl: &Repl,
    job: LandJob,
    done: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Landed, String> {
    check_tools(&job.format, job.isolated, job.boot_hook.is_some())?;
    if !super::valid_disk_name(&job.job) || !super::valid_disk_name(&job.machine_name) {
        return Err("invalid job id or machine name".into());
    }
    if book(repl).contains_key(&job.job) {
        return Err(format!("landing {} exists on this node", job.job));
    }
    let vault = job_vault(repl, &job).await?;
    let pts = vault
        .list_points(Some(&job.machine))
        .await
        .map_err(|e| e.to_string())?;
    let p = pts
        .into_iter()
        .find(|p| p.id == job.point)
        .ok_or_else(|| format!("point {} is not in the vault", job.point))?;
    for m in &job.disk_map {
        if !p.disks.iter().any(|d| d.name == m.name) {
            return Err(format!(
                "--disk-map {}: point {} has no disk by that name",
                m.name, p.id
            ));
        }
        let meta = std::fs::metadata(&m.path).map_err(|e| format!("--disk-map {}: {e}", m.path))?;
        if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            return Err(format!("--disk-map {}: not a block device", m.path));
        }
    }
    let sub = format!("{}s", job.kind);
    let (dir, made_dir) = image_dir(repl, job.dir.as_deref(), &sub, &job.machine_name, &job.job)?;
    // Refused from here on, the directory made for it goes again: a refusal changes nothing.
    let refuse = |e: String| {
        if made_dir {
            let _ = std::fs::remove_dir(&dir);
        }
        e
    };
    let mapped_to = |name: &str| {
        job.disk_map
            .iter()
            .find(|m| m.name == name)
            .map(|m| PathBuf::from(&m.path))
    };
    let images: Vec<PathBuf> = p
        .disks
        .iter()
        .map(|d| mapped_to(&d.name).unwrap_or_else(|| dir.join(image_file(&d.name, &job.format))))
        .collect();
    let mapped: Vec<PathBuf> = images
        .iter()
        .filter(|i| {
            job.disk_map
                .iter()
                .any(|m| Path::new(&m.path) == i.as_path())
        })
        .cloned()
        .collect();
    if let Some(clash) = images.iter().find(|i| i.exists() && !mapped.contains(i)) {
        return Err(refuse(format!(
            "{} exists; give an empty --to directory",
            clash.display()
        )));
    }
    let mut b = book(repl);
    b.insert(
        job.job.clone(),
        LandingRecord {
            kind: job.kind.clone(),
            machine_name: job.machine_name.clone(),
            point: p.id.clone(),
            dir: dir.clone(),
            made_dir,
            images: images.clone(),
            mapped: mapped.clone(),
            started_ms: crate::seams::now().0,
        },
    );
    save_book(repl, &b).map_err(refuse)?;
    let maps = job.keep_maps.then(|| maps_dir(repl, &job.job));
    let outcome = bring_up(
        &vault,
        &p,
        &job,
        (&dir, &images, &mapped),
        maps.as_deref(),
        done.as_deref(),
    )
    .await;
    let (boot_hook_exit, error) = match outcome {
        Ok(x) => (x, None),
        Err(e) => (None, Some(e)),
    };
    Ok(Landed {
        dir: dir.display().to_string(),
        images: images.iter().map(|i| i.display().to_string()).collect(),
        boot_hook_exit,
        error,
    })
}

/// The image file of disk `name` in `format`: `NAME.img` (a name that already ends in `.img`
/// or `.raw` as it is), or `NAME.qcow2` (without such an ending).
pub fn image_file(name: &str, format: &str) -> String {
    let stem = name
        .strip_suffix(".img")
        .or_else(|| name.strip_suffix(".raw"))
        .unwrap_or(name);
    match format {
        "qcow2" => format!("{stem}.qcow2"),
        _ if stem != name => name.to_string(),
        _ => format!("{name}.img"),
    }
}

/// Removes what landing `job` made here (images, partial images, hook log, kept maps, and
/// the directory if it made it and it is empty). Returns the files removed; an unknown job
/// removes nothing (a retried cleanup).
pub async fn unland(repl: &Repl, job: &str) -> Result<usize, String> {
    crate::failpoint::pause_async("unland").await;
    let running = repl
        .mob
        .landings
        .0
        .lock()
        .ok()
        .and_then(|mut r| r.remove(job));
    if let Some(r) = running {
        r.stop.notify_one();
        let _ended = tokio::time::timeout(STOP_WAIT, r.ended.lock())
            .await
            .map_err(|_| {
                format!(
                    "landing {job} did not stop within {} s",
                    STOP_WAIT.as_secs()
                )
            })?;
    }
    let mut b = book(repl);
    let Some(r) = b.get(job).cloned() else {
        return Ok(0);
    };
    let made: Vec<PathBuf> = r
        .images
        .iter()
        .filter(|i| !r.mapped.contains(i))
        .cloned()
        .collect();
    let removed = remove_images(&made, &r.dir, r.made_dir)?;
    let _ = std::fs::remove_dir_all(maps_dir(repl, job));
    b.remove(job);
    save_book(repl, &b)?;
    Ok(removed)
}

/// Seeds this node's change log with `point` for the disks landing `job` brought up (its
/// kept maps): a reprotect starts with a delta, not a copy.
pub fn adopt(repl: &Repl, job: &str, point: &str, disks: &[DiskSpec]) -> Result<(), String> {
    crate::failpoint::pause("adopt");
    let Some(r) = book(repl).get(job).cloned() else {
        return Err(format!("no landing {job} on this node"));
    };
    for d in disks {
        if !r.images.iter().any(|i| i.display().to_string() == d.path) {
            return Err(format!("{} is not an image landing {job} made", d.path));
        }
    }
    let dir = maps_dir(repl, job);
    let maps = disks
        .iter()
        .map(|d| load_hashes(&dir.join(format!("{}.bin", d.name))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the landing's block maps are missing ({e})"))?;
    super::mobility::adopt_point(repl, point, disks, &maps)
}

/// The image directory: `dir` (absolute), or one of its own in the state directory.
fn image_dir(
    repl: &Repl,
    dir: Option<&str>,
    sub: &str,
    name: &str,
    id: &str,
) -> Result<(PathBuf, bool), String> {
    let dir = match dir {
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

/// Restores (and converts) every disk, then runs the boot hook. Returns its exit code. With
/// `maps_to`, each restored disk's BLAKE3 map is written there (`DISK.bin`) before anything
/// can change it: the base a reprotect starts from.
async fn bring_up(
    vault: &Vault,
    p: &PointRecord,
    job: &LandJob,
    (dir, images, mapped): (&Path, &[PathBuf], &[PathBuf]),
    maps_to: Option<&Path>,
    done: Option<&std::sync::atomic::AtomicU64>,
) -> Result<Option<i32>, String> {
    for (d, image) in p.disks.iter().zip(images) {
        if mapped.contains(image) {
            // An existing device: only the blocks that differ from the point are written.
            let (_, map) = vault.restore_in_place(d, image).await.map_err(|e| {
                format!(
                    "writing disk {} onto {} failed: {e}",
                    d.name,
                    image.display()
                )
            })?;
            if let Some(to) = maps_to {
                save_hashes(&to.join(format!("{}.bin", d.name)), &map)?;
            }
            continue;
        }
        let raw = if job.format == "qcow2" {
            image.with_extension("img.partial")
        } else {
            image.clone()
        };
        let failed = |e| format!("restore of disk {} failed: {e}", d.name);
        match maps_to {
            // The map is taken as the blocks are written: before anything can change them.
            Some(to) => {
                let (_, map) = vault
                    .restore_disk_mapped(d, &raw, done)
                    .await
                    .map_err(failed)?;
                save_hashes(&to.join(format!("{}.bin", d.name)), &map)?;
            }
            None => {
                vault
                    .restore_disk_counted(d, &raw, done)
                    .await
                    .map_err(failed)?;
            }
        }
        if job.format == "qcow2" {
            let (raw2, img2) = (raw.clone(), image.clone());
            tokio::task::spawn_blocking(move || to_qcow2(&raw2, &img2))
                .await
                .map_err(|e| e.to_string())??;
        }
    }
    crate::failpoint::pause_async("land/restored").await;
    let Some(hook) = &job.boot_hook else {
        return Ok(None);
    };
    let env: Vec<(String, String)> = vec![
        ("LIFEBOAT_MACHINE".into(), job.machine_name.clone()),
        ("LIFEBOAT_POINT".into(), p.id.clone()),
        ("LIFEBOAT_JOB".into(), job.job.clone()),
        ("LIFEBOAT_KIND".into(), job.kind.clone()),
        ("LIFEBOAT_FORMAT".into(), job.format.clone()),
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
    let (hook, isolated, log) = (hook.clone(), job.isolated, dir.join("boot-hook.log"));
    tokio::task::spawn_blocking(move || run_boot_hook(&hook, isolated, &env, &log))
        .await
        .map_err(|e| e.to_string())?
        .map(Some)
}

/// Writes a BLAKE3 map (32 bytes a block), 0600.
pub fn save_hashes(path: &Path, h: &[[u8; 32]]) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    lifeboat_config::state::write_file_atomic(path, &h.concat(), 0o600)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a BLAKE3 map written by [`save_hashes`].
pub fn load_hashes(path: &Path) -> Result<Vec<[u8; 32]>, String> {
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

/// Removes a drill's or failover's images, partial images and hook log, and its directory if
/// it made it and it is empty (anything else in it is not ours). Returns the files removed.
fn remove_images(images: &[PathBuf], dir: &Path, made_dir: bool) -> Result<usize, String> {
    let mut removed = 0;
    // A restore's staging files (`.NAME.partial-XXXXXXXX`), left by a crash in the middle.
    let prefixes: Vec<String> = images
        .iter()
        .flat_map(|i| [i.clone(), i.with_extension("img.partial")])
        .filter_map(|i| Some(format!(".{}.partial-", i.file_name()?.to_string_lossy())))
        .collect();
    let staging: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|f| {
                let f = f.to_string_lossy();
                prefixes.iter().any(|x| f.starts_with(x.as_str()))
            })
        })
        .collect();
    for p in &staging {
        match std::fs::remove_file(p) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
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
