//! Mobility side: change capture of protected disks in `scan` mode, and shipping to a process
//! server.
//!
//! A cycle: (optionally) freeze applications, take a frozen view (snapshot hook, or a reflink
//! clone of image files), thaw; read every block of the view, hash it (BLAKE3) and compare with
//! the hash map of the last *committed* point (`hashes/<disk>.bin`); send changed blocks
//! (all-zero ones as markers) to a process server; when it answers `PointCommitted`, replace the
//! hash map. Until then the old map stands, so every change not yet in a committed point is
//! found again by the next cycle: a crash or a lost process server never loses a change and
//! never forces a full resync.
//!
//! The point is labelled honestly: app-consistent if the freeze hook succeeded and the view was
//! read or cloned while frozen; crash-consistent if read from a snapshot or reflink clone;
//! otherwise not consistent (a live disk read over time).

use super::{load, save, Repl};
use crate::direct_io::Aligned;
use crate::transport::FrameWriter;
use lifeboat_actors::replication::{CycleKind, Scheduler};
use lifeboat_protocol::frame::FrameSealer;
use lifeboat_protocol::message::{
    DeltaBlock, DeltaHeader, DiskInfo, PointFailure, PointSummary, ProtectionReport, ProtectionSpec,
};
use lifeboat_protocol::vault::{self, Consistency};
use lifeboat_protocol::{Envelope, Message, NodeId, Role};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A `DeltaBlocks` frame closes at this many payload bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...or this many blocks (zero markers and well-compressed blocks are small).
const BATCH_BLOCKS: usize = 1024;
/// zstd level for blocks compressed at the source: the fastest, so the protected machine
/// spends little CPU and the network and the process server carry the block once, small.
const WIRE_ZSTD_LEVEL: i32 = 1;
/// How long a cycle waits for the process server's commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Mobility-side state.
#[derive(Debug, Default)]
pub struct MobilityState {
    /// Stops the running protection loop.
    stop: Mutex<Option<watch::Sender<bool>>>,
    /// Latest report (also sent to the configuration node).
    pub report: Mutex<Option<ProtectionReport>>,
    /// Blocks sent by the last cycle.
    pub last_sent_blocks: AtomicU64,
    /// Cycles completed since start.
    pub cycles: AtomicU64,
    /// Progress of the running cycle.
    pub progress: Arc<Progress>,
}

/// Progress of the running cycle (shared with the scanner threads).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the disks scanned so far.
    pub scanned: AtomicU64,
    /// Bytes of the disks in total.
    pub total: AtomicU64,
    /// Changed bytes sent and not yet in a committed point.
    pub pending: AtomicU64,
    /// The cycle copies everything (initial replication or full resync).
    pub full: std::sync::atomic::AtomicBool,
    /// A cycle is running.
    pub running: std::sync::atomic::AtomicBool,
}

/// Persisted progress of a protected machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Replica {
    /// The newest committed point (the base of the next delta).
    pub last_point: Option<String>,
    /// Initial replication finished.
    pub initial_done: bool,
}

fn protection_path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("protection.json")
}
fn replica_path(repl: &Repl) -> PathBuf {
    repl.dir.root.join("replica.json")
}
/// Hash maps are kept per committed point (`hashes/<point>/<disk>.bin`) and `replica.json`
/// names the current one, so switching to a new point is one atomic rename of `replica.json`:
/// a crash in between leaves the old point and its maps intact.
fn hashes_path(repl: &Repl, point: &str, disk: &str) -> PathBuf {
    repl.dir
        .root
        .join("hashes")
        .join(point)
        .join(format!("{disk}.bin"))
}

/// Starts protecting `spec` (persisted first, so a restart resumes it).
pub fn start(repl: &Arc<Repl>, spec: ProtectionSpec) -> Result<(), String> {
    for d in &spec.disks {
        if !super::valid_disk_name(&d.name) {
            return Err(format!("invalid disk name {:?}", d.name));
        }
    }
    let old: Option<ProtectionSpec> = load(&protection_path(repl))?;
    if old.as_ref().is_some_and(|o| o.disks != spec.disks) {
        // Different disks: start over.
        let _ = std::fs::remove_dir_all(repl.dir.root.join("hashes"));
        let _ = std::fs::remove_file(replica_path(repl));
    }
    save(&protection_path(repl), &spec, 0o600)?;
    resume(repl);
    Ok(())
}

/// [`start`] for a shared reference (the configuration node protecting itself).
pub fn start_arc(repl: &Repl, spec: ProtectionSpec) -> Result<(), String> {
    let me = repl
        .me
        .lock()
        .ok()
        .and_then(|m| m.upgrade())
        .ok_or("node is shutting down")?;
    start(&me, spec)
}

/// Resumes the persisted protection, if any (at daemon start).
pub fn resume(repl: &Arc<Repl>) {
    let spec: ProtectionSpec = match load(&protection_path(repl)) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(cause = %e, "cannot resume protection");
            return;
        }
    };
    let (tx, rx) = watch::channel(false);
    if let Ok(mut g) = repl.mob.stop.lock() {
        if let Some(old) = g.replace(tx) {
            let _ = old.send(true);
        }
    }
    let r = repl.clone();
    tokio::spawn(async move { run(r, spec, rx).await });
}

/// Stops protecting and forgets the local change-tracking state.
pub fn stop(repl: &Repl) {
    if let Ok(mut g) = repl.mob.stop.lock() {
        if let Some(old) = g.take() {
            let _ = old.send(true);
        }
    }
    let _ = std::fs::remove_file(protection_path(repl));
    let _ = std::fs::remove_file(replica_path(repl));
    let _ = std::fs::remove_dir_all(repl.dir.root.join("hashes"));
}

async fn run(repl: Arc<Repl>, spec: ProtectionSpec, mut stop: watch::Receiver<bool>) {
    let mut sched = Scheduler::new(&spec.policy, spec.hooks.freeze.is_some());
    tracing::info!(disks = spec.disks.len(), "protection started");
    loop {
        if *stop.borrow() {
            tracing::info!("protection stopped");
            return;
        }
        let now = crate::seams::now();
        if let Some(kind) = sched.poll(now) {
            // While the cycle runs, tell the configuration node how far it got.
            let reporter = {
                let r = repl.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let last = load::<Replica>(&replica_path(&r))
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        report(&r, last.initial_done, last.last_point, None, None).await;
                    }
                })
            };
            let outcome = cycle(&repl, &spec, kind).await;
            reporter.abort();
            repl.mob.progress.running.store(false, Ordering::Relaxed);
            match outcome {
                Ok(s) => {
                    sched.handle_done(now, kind);
                    repl.mob.cycles.fetch_add(1, Ordering::Relaxed);
                    report(
                        &repl,
                        true,
                        Some(s.id.clone()),
                        None,
                        Some(s.process_server),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "replication cycle failed; changes are kept for the next one");
                    sched.handle_failed(crate::seams::now(), rand::random());
                    let last = load::<Replica>(&replica_path(&repl))
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    report(&repl, last.initial_done, last.last_point, Some(e), None).await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn report(
    repl: &Repl,
    initial_done: bool,
    last_point: Option<String>,
    err: Option<String>,
    ps: Option<NodeId>,
) {
    let pr = &repl.mob.progress;
    let running = pr.running.load(Ordering::Relaxed);
    let full = running && pr.full.load(Ordering::Relaxed);
    let total = pr.total.load(Ordering::Relaxed).max(1);
    let r = ProtectionReport {
        machine: repl.local,
        initial: !initial_done,
        resync: full && initial_done,
        progress_permille: if full {
            (pr.scanned.load(Ordering::Relaxed).min(total) * 1000 / total) as u16
        } else {
            1000
        },
        pending_bytes: if running {
            pr.pending.load(Ordering::Relaxed)
        } else {
            0
        },
        last_point,
        last_error: err,
        process_server: ps,
    };
    if let Ok(mut g) = repl.mob.report.lock() {
        *g = Some(r.clone());
    }
    repl.tell_authorities(Message::Report(r)).await;
}

/// Picks a process server: the preferred one if connected, else any connected one.
async fn pick_ps(repl: &Repl, preferred: Option<NodeId>) -> Result<NodeId, String> {
    let all = repl.connected_with(Role::ProcessServer).await;
    if let Some(p) = preferred {
        if all.contains(&p) {
            return Ok(p);
        }
    }
    all.first()
        .copied()
        .ok_or_else(|| "no process server is reachable (assign one with `lifeboat role add process-server --node ID`)".into())
}

/// Longest a hook may run before it is killed and the cycle fails.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

fn run_hook(what: &str, cmd: &str) -> Result<String, String> {
    use std::io::Read as _;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what} hook: {e}"))?;
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(|e| format!("{what} hook: {e}"))? {
            Some(st) => break st,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} hook `{cmd}` did not finish within {}s and was killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!(
            "{what} hook `{cmd}` failed ({status}): {}",
            err.trim()
        ));
    }
    Ok(out)
}

/// Thaws on drop, so no error path leaves applications frozen.
struct Frozen(Option<String>);

impl Frozen {
    fn thaw(&mut self) {
        if let Some(cmd) = self.0.take() {
            if let Err(e) = run_hook("thaw", &cmd) {
                tracing::error!(cause = %e, "THAW FAILED: applications may still be frozen");
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Removes the cycle's temporary clones on drop.
struct Views {
    paths: Vec<PathBuf>,
    temp: Option<PathBuf>,
}

impl Drop for Views {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

fn reflink_clones(repl: &Repl, spec: &ProtectionSpec) -> Option<Views> {
    let dir = repl.dir.root.join("views");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let mut paths = Vec::new();
    for d in &spec.disks {
        let meta = std::fs::metadata(&d.path).ok()?;
        if !meta.is_file() {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let dst = dir.join(&d.name);
        let ok = Command::new("cp")
            .arg("--reflink=always")
            .arg(&d.path)
            .arg(&dst)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        paths.push(dst);
    }
    Some(Views {
        paths,
        temp: Some(dir),
    })
}

/// Takes the frozen view for a cycle; returns the paths to read and the consistency label.
fn take_views(
    repl: &Repl,
    spec: &ProtectionSpec,
    kind: CycleKind,
) -> Result<(Views, Consistency, Frozen), String> {
    let mut frozen = Frozen(None);
    let mut app = false;
    if kind.app {
        if let Some(f) = &spec.hooks.freeze {
            run_hook("freeze", f)?;
            frozen =
                Frozen(Some(spec.hooks.thaw.clone().unwrap_or_default()).filter(|s| !s.is_empty()));
            app = true;
        }
    }
    if let Some(snap) = &spec.hooks.snapshot {
        let out = run_hook("snapshot", snap)?;
        let mut paths = Vec::new();
        for d in &spec.disks {
            let p = out
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(n, _)| *n == d.name)
                .map(|(_, p)| PathBuf::from(p.trim()))
                .ok_or_else(|| format!("snapshot hook gave no view for disk {}", d.name))?;
            paths.push(p);
        }
        frozen.thaw();
        let c = if app {
            Consistency::AppConsistent
        } else {
            Consistency::CrashConsistent
        };
        return Ok((Views { paths, temp: None }, c, frozen));
    }
    if let Some(v) = reflink_clones(repl, spec) {
        frozen.thaw();
        let c = if app {
            Consistency::AppConsistent
        } else {
            Consistency::CrashConsistent
        };
        return Ok((v, c, frozen));
    }
    // No frozen view: read the disks themselves (while frozen, if the freeze hook ran).
    let paths = spec.disks.iter().map(|d| PathBuf::from(&d.path)).collect();
    let c = if app {
        Consistency::AppConsistent
    } else {
        Consistency::NotConsistent
    };
    Ok((Views { paths, temp: None }, c, frozen))
}

/// Opens a disk for a scan; returns the file, its size and whether it reads with `O_DIRECT`.
///
/// Block devices and image files are both read with `O_DIRECT` where the filesystem allows it
/// (tmpfs does not): a block device's cache can be stale against what a filesystem on it just
/// flushed, the kernel writes dirty cached pages back before a direct read of a file (so the
/// view is the same), a direct read is DMA'd into our buffer instead of copied out of the page
/// cache (on the benchmark VM that copy cost more CPU than hashing), and a scan of the whole
/// disk every cycle does not evict the applications' working set. For an image file, whatever
/// its page cache already holds is copied from there (see [`cached_chunks`]).
fn open_disk(path: &Path) -> Result<(std::fs::File, u64, bool), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block_dev = meta.file_type().is_block_device();
    let open = |direct: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    let (mut f, direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if !block_dev && e.raw_os_error() == Some(libc::EINVAL) => (
            open(false).map_err(|e| format!("{}: {e}", path.display()))?,
            false,
        ),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    use std::io::Seek;
    let size = if block_dev {
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| e.to_string())?
    } else {
        meta.len()
    };
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    Ok((f, size, direct))
}

/// Bytes per read of a scan (a multiple of every allowed block size up to 4 MiB).
const READ_BYTES: usize = 4 << 20;
/// Reader threads: each has one read in flight, so the device sees this queue depth.
const READ_LANES: usize = 3;
/// Buffers per reader thread (how far it may run ahead of the hasher).
const READ_BUFFERS: usize = 2;

/// One read of a scan: `len` bytes of the disk from byte `at`.
struct Span {
    at: u64,
    len: usize,
    buf: Aligned,
}

/// Reads a disk front to back with [`READ_LANES`] threads (span `k` is read by lane
/// `k % READ_LANES` with positional reads, so the device has several reads in flight while the
/// scanner hashes) and hands the spans out in order.
struct ReadAhead {
    full: Vec<std::sync::mpsc::Receiver<Result<Span, String>>>,
    free: Vec<std::sync::mpsc::SyncSender<Aligned>>,
    next: usize,
}

impl ReadAhead {
    fn start(path: PathBuf, f: std::fs::File, size: u64, direct: bool) -> ReadAhead {
        // An image file's page cache is the truth about its content (unlike a block device's,
        // which a filesystem on it bypasses): what is cached already (typically the blocks just
        // changed) is copied from the cache, and only the rest is read direct, so the scan
        // neither waits for the device nor evicts anything.
        let cached = direct
            .then(|| std::fs::File::open(&path).ok())
            .flatten()
            .filter(|c| c.metadata().is_ok_and(|m| m.is_file()));
        let disk = Arc::new(LaneDisk {
            path,
            file: f,
            cached,
            size,
        });
        let mut full = Vec::new();
        let mut free = Vec::new();
        for lane in 0..READ_LANES {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            let (free_tx, free_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            for _ in 0..READ_BUFFERS {
                let _ = free_tx.send(Aligned::new(READ_BYTES));
            }
            let disk = disk.clone();
            std::thread::spawn(move || read_lane(lane, &disk, direct, full_tx, free_rx));
            full.push(full_rx);
            free.push(free_tx);
        }
        ReadAhead {
            full,
            free,
            next: 0,
        }
    }

    /// The next span in disk order.
    fn next(&mut self) -> Result<Span, String> {
        let lane = self.next % READ_LANES;
        self.next += 1;
        self.full[lane]
            .recv()
            .map_err(|_| "disk reader stopped".to_string())?
    }

    /// Returns the buffer of `span` for reuse.
    fn recycle(&self, at: u64, buf: Aligned) {
        let lane = (at / READ_BYTES as u64) as usize % READ_LANES;
        let _ = self.free[lane].send(buf);
    }
}

/// The disk the reader threads share.
struct LaneDisk {
    path: PathBuf,
    /// Opened by [`open_disk`] (direct where allowed).
    file: std::fs::File,
    /// A buffered handle of an image file read direct, for what its page cache holds.
    cached: Option<std::fs::File>,
    size: u64,
}

/// One reader thread: reads spans `lane`, `lane + READ_LANES`, ... until the disk ends or the
/// scanner goes away.
fn read_lane(
    lane: usize,
    disk: &LaneDisk,
    direct: bool,
    full: std::sync::mpsc::SyncSender<Result<Span, String>>,
    free: std::sync::mpsc::Receiver<Aligned>,
) {
    let size = disk.size;
    let mut device = DeviceReads {
        disk,
        direct,
        buffered: None,
    };
    let mut cached = disk.cached.as_ref();
    let mut k = lane as u64;
    loop {
        let at = k * READ_BYTES as u64;
        if at >= size {
            return;
        }
        let Ok(mut buf) = free.recv() else { return };
        let span = (size - at).min(READ_BYTES as u64) as usize;
        // Which chunks to copy from the page cache (asked without starting any I/O).
        let plan = cached.and_then(|c| Some((c, cached_chunks(c, at, span)?)));
        let in_cache = |pos: usize| plan.as_ref().is_some_and(|(_, m)| m[pos / CACHE_CHUNK]);
        let mut pos = 0;
        let mut res = Ok(());
        while pos < span && res.is_ok() {
            // A run of chunks that are all cached, or all not.
            let here = in_cache(pos);
            let mut end = (pos + CACHE_CHUNK).min(span);
            while end < span && in_cache(end) == here {
                end = (end + CACHE_CHUNK).min(span);
            }
            let mut got = pos;
            if let (true, Some((c, _))) = (here, &plan) {
                match read_cached(c, &mut buf.buf(span)[pos..end], at + pos as u64) {
                    // Whole pages only, so that a direct read can go on from there.
                    Ok(n) => {
                        got = if pos + n == end {
                            end
                        } else {
                            (pos + n) & !4095
                        }
                    }
                    // Evicted since it was asked: read direct.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // RWF_NOWAIT unsupported here: read direct from now on.
                    Err(_) => cached = None,
                }
            }
            res = device.fill(&mut buf, at, span, got, end);
            pos = end;
        }
        let stop = res.is_err();
        if full
            .send(res.map(|()| Span { at, len: span, buf }))
            .is_err()
            || stop
        {
            return;
        }
        k += READ_LANES as u64;
    }
}

/// How a reader thread reads what it does not copy from the page cache.
struct DeviceReads<'a> {
    disk: &'a LaneDisk,
    /// Reads are direct (until the filesystem refuses them).
    direct: bool,
    /// A buffered handle, once direct reads were refused (some filesystems accept the flag at
    /// open only).
    buffered: Option<std::fs::File>,
}

impl DeviceReads<'_> {
    /// Fills bytes `got..end` of `buf`, the span of `span` bytes at disk byte `at`.
    fn fill(
        &mut self,
        buf: &mut Aligned,
        at: u64,
        span: usize,
        mut got: usize,
        end: usize,
    ) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let path = self.disk.path.as_path();
        while got < end {
            // A direct read must ask for whole aligned sectors, even for the tail.
            let stop = if self.direct && end == span {
                span.next_multiple_of(4096)
            } else {
                end
            };
            let file = self.buffered.as_ref().unwrap_or(&self.disk.file);
            match file.read_at(&mut buf.buf(stop)[got..], at + got as u64) {
                Ok(0) => {
                    return Err(format!(
                        "{}: short read at byte {} (disk shrank?)",
                        path.display(),
                        at + got as u64
                    ))
                }
                Ok(r) => got += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    let g = std::fs::File::open(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    self.buffered = Some(g);
                    self.direct = false;
                }
                Err(e) => return Err(format!("{}: byte {}: {e}", path.display(), at + got as u64)),
            }
        }
        Ok(())
    }
}

/// Granularity of cache-first reads: a chunk is copied from the page cache only if all of it
/// is cached (the rest is read direct, which stays coherent with the cache).
const CACHE_CHUNK: usize = 64 << 10;

/// For each [`CACHE_CHUNK`] of the `len` bytes of `f` at `at` (page-aligned), whether the page
/// cache holds all of it; `None` if that cannot be asked. Asked with `mincore` on a mapping that
/// is never touched: unlike a probing read (even `RWF_NOWAIT`), asking starts no readahead,
/// which would read the disk twice, once into the cache and once direct.
fn cached_chunks(f: &std::fs::File, at: u64, len: usize) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    if page == 0 || !CACHE_CHUNK.is_multiple_of(page) || !at.is_multiple_of(page as u64) {
        return None;
    }
    let map_len = len.next_multiple_of(page);
    let off = libc::off_t::try_from(at).ok()?;
    let mut pages = vec![0u8; map_len / page];
    // SAFETY: a fresh read-only shared mapping that is never dereferenced: it is only asked
    // about with `mincore` (into `pages`, one byte per page as required) and unmapped.
    #[allow(unsafe_code)]
    let asked = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            off,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        let r = libc::mincore(p, map_len, pages.as_mut_ptr());
        libc::munmap(p, map_len);
        r == 0
    };
    asked.then(|| {
        pages
            .chunks(CACHE_CHUNK / page)
            .map(|c| c.iter().all(|b| b & 1 == 1))
            .collect()
    })
}

/// Reads from `f` at `at` only what its page cache holds (`preadv2` with `RWF_NOWAIT`): the
/// byte count (short where the cache ends), or `WouldBlock` if the first page is not cached.
fn read_cached(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let off = libc::off_t::try_from(at).map_err(|_| std::io::Error::other("offset"))?;
    // SAFETY: `iov` points at `buf`, which is valid for writes of its length for the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => std::io::ErrorKind::WouldBlock.into(),
            _ => e,
        });
    }
    Ok(n as usize)
}

/// What the scanner hands to the sender.
enum Scan {
    /// A sealed `DeltaBlocks` frame.
    Frame(Vec<u8>),
    /// The disk is done; the sealer goes back to the stream.
    Done {
        hashes: Vec<[u8; 32]>,
        sent: u64,
        sealer: FrameSealer,
    },
}

/// Encodes and seals a batch on the scanner's thread (the sender then only hands bytes to QUIC).
fn seal_batch(
    sealer: &mut FrameSealer,
    disk: u16,
    blocks: Vec<DeltaBlock>,
) -> Result<Scan, String> {
    // The payloads plus a few bytes of framing per block and for the envelope.
    let hint = blocks
        .iter()
        .map(|b| b.data.as_ref().map_or(0, |d| d.len()) + 16)
        .sum::<usize>()
        + 256;
    let mut out = Vec::new();
    sealer
        .seal_sized(
            &Envelope::new(Message::DeltaBlocks { disk, blocks }),
            hint,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
    Ok(Scan::Frame(out))
}

/// Reads and hashes a disk on a blocking thread; changed blocks go out through `tx`, sealed
/// as frames of disk number `disk`.
fn scan_disk(
    path: PathBuf,
    disk: u16,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    mut sealer: FrameSealer,
    tx: mpsc::Sender<Result<Scan, String>>,
    progress: Arc<Progress>,
) {
    let res = (|| -> Result<(), String> {
        let (f, size, direct) = open_disk(&path)?;
        let bs = block_size as usize;
        let n = size.div_ceil(block_size as u64) as usize;
        let mut spans = ReadAhead::start(path.clone(), f, size, direct);
        let mut hashes = Vec::with_capacity(n);
        let zero_hash = *blake3::hash(&vec![0u8; bs]).as_bytes();
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut sent = 0u64;
        // A long scan of an unchanged disk still tells the process server it is alive.
        let mut last_send = std::time::Instant::now();
        let (mut wait_read, mut wait_send) = (Duration::ZERO, Duration::ZERO);
        let began = std::time::Instant::now();
        while hashes.len() < n {
            let t0 = std::time::Instant::now();
            let Span { at, len: span, buf } = spans.next()?;
            wait_read += t0.elapsed();
            let first = (at / bs as u64) as usize;
            for (j, data) in buf.data(span).chunks(bs).enumerate() {
                let i = first + j;
                let want = data.len();
                progress.scanned.fetch_add(want as u64, Ordering::Relaxed);
                // One zero check per block; a full-size zero block's hash is a constant.
                let zero = vault::is_zero_block(data);
                let h = if zero && want == bs {
                    zero_hash
                } else {
                    *blake3::hash(data).as_bytes()
                };
                let changed = match &old {
                    Some(o) => o.get(i) != Some(&h),
                    // Initial replication: unsent blocks are zero, so zero blocks need no marker.
                    None => !zero,
                };
                hashes.push(h);
                if !changed && last_send.elapsed() > Duration::from_secs(30) {
                    last_send = std::time::Instant::now();
                    batch_bytes = 0;
                    if tx
                        .blocking_send(seal_batch(&mut sealer, disk, std::mem::take(&mut batch)))
                        .is_err()
                    {
                        return Err("sender stopped".into());
                    }
                }
                if changed {
                    sent += 1;
                    progress.pending.fetch_add(want as u64, Ordering::Relaxed);
                    let (payload, zstd) = if zero {
                        (None, false)
                    } else {
                        let (mode, p) = vault::encode_block(data, WIRE_ZSTD_LEVEL);
                        batch_bytes += p.len();
                        (
                            Some(serde_bytes::ByteBuf::from(p.into_owned())),
                            mode == vault::MODE_ZSTD,
                        )
                    };
                    batch.push(DeltaBlock {
                        index: i as u64,
                        data: payload,
                        zstd,
                    });
                    if batch.len() >= BATCH_BLOCKS
                        || batch_bytes >= BATCH_BYTES
                        || last_send.elapsed() > Duration::from_secs(30)
                    {
                        batch_bytes = 0;
                        last_send = std::time::Instant::now();
                        if tx
                            .blocking_send(seal_batch(
                                &mut sealer,
                                disk,
                                std::mem::take(&mut batch),
                            ))
                            .is_err()
                        {
                            return Err("sender stopped".into());
                        }
                        wait_send += last_send.elapsed();
                    }
                }
            }
            spans.recycle(at, buf);
        }
        if !batch.is_empty()
            && tx
                .blocking_send(seal_batch(&mut sealer, disk, batch))
                .is_err()
        {
            return Err("sender stopped".into());
        }
        tracing::debug!(
            disk = %path.display(),
            ms = began.elapsed().as_millis() as u64,
            read_wait_ms = wait_read.as_millis() as u64,
            send_wait_ms = wait_send.as_millis() as u64,
            direct,
            "disk scanned"
        );
        let _ = tx.blocking_send(Ok(Scan::Done {
            hashes,
            sent,
            sealer,
        }));
        Ok(())
    })();
    if let Err(e) = res {
        let _ = tx.blocking_send(Err(e));
    }
}

fn load_hashes(path: &Path, blocks: usize) -> Option<Vec<[u8; 32]>> {
    let b = std::fs::read(path).ok()?;
    if b.len() != blocks * 32 {
        return None;
    }
    Some(
        b.chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect(),
    )
}

async fn send_disk(
    w: &mut FrameWriter,
    disk: u16,
    path: PathBuf,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    progress: Arc<Progress>,
) -> Result<(Vec<[u8; 32]>, u64), String> {
    let (tx, mut rx) = mpsc::channel(4);
    let sealer = w.lend_sealer().map_err(|e| e.to_string())?;
    let scanner = tokio::task::spawn_blocking(move || {
        scan_disk(path, disk, block_size, old, sealer, tx, progress)
    });
    let mut result = Err("scanner ended without a result".to_string());
    while let Some(item) = rx.recv().await {
        match item {
            Ok(Scan::Frame(sealed)) => {
                if let Err(e) = w.write_sealed(sealed).await {
                    result = Err(format!("sending to the process server: {e}"));
                    break;
                }
            }
            Ok(Scan::Done {
                hashes,
                sent,
                sealer,
            }) => {
                w.return_sealer(sealer);
                result = Ok((hashes, sent));
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(rx);
    let _ = scanner.await;
    result
}

async fn cycle(
    repl: &Arc<Repl>,
    spec: &ProtectionSpec,
    kind: CycleKind,
) -> Result<PointSummary, String> {
    let ps = pick_ps(repl, spec.process_server).await?;
    let mut replica: Replica = load(&replica_path(repl))?.unwrap_or_default();
    // The capture time is taken before the view: every write completed before it is in the
    // point (a snapshot taken later may contain later writes too, never fewer).
    let captured = crate::seams::now();
    let (r2, s2) = (repl.clone(), spec.clone());
    let (views, consistency, mut frozen) =
        tokio::task::spawn_blocking(move || take_views(&r2, &s2, kind))
            .await
            .map_err(|e| e.to_string())??;
    // Geometry, and the old hash maps (a missing or mismatched map means a full copy).
    let mut infos = Vec::new();
    let mut olds = Vec::new();
    for (d, p) in spec.disks.iter().zip(&views.paths) {
        let (_, size, _) = open_disk(p)?;
        if size == 0 {
            return Err(format!("disk {} ({}) is empty", d.name, p.display()));
        }
        let blocks = size.div_ceil(spec.block_size as u64) as usize;
        olds.push(
            replica
                .last_point
                .as_ref()
                .and_then(|pt| load_hashes(&hashes_path(repl, pt, &d.name), blocks)),
        );
        infos.push(DiskInfo {
            name: d.name.clone(),
            size_bytes: size,
            block_size: spec.block_size,
        });
    }
    let base = if replica.last_point.is_some() && olds.iter().all(Option::is_some) {
        replica.last_point.clone()
    } else {
        olds.iter_mut().for_each(|o| *o = None);
        None
    };
    let pr = &repl.mob.progress;
    pr.scanned.store(0, Ordering::Relaxed);
    pr.pending.store(0, Ordering::Relaxed);
    pr.total
        .store(infos.iter().map(|d| d.size_bytes).sum(), Ordering::Relaxed);
    pr.full.store(base.is_none(), Ordering::Relaxed);
    pr.running.store(true, Ordering::Relaxed);
    let mut session = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut session);
    let header = DeltaHeader {
        session: vault::hex(&session),
        machine: repl.local,
        machine_name: repl.name.clone(),
        base: base.clone(),
        captured,
        consistency,
        disks: infos,
    };
    let (mut w, mut r) = repl
        .net
        .open_bi(ps)
        .await
        .map_err(|e| format!("process server {ps}: {e}"))?;
    w.send(Message::DeltaBegin(header))
        .await
        .map_err(|e| e.to_string())?;
    let mut new_hashes = Vec::new();
    let mut sent = 0;
    for (i, (p, old)) in views.paths.iter().zip(olds).enumerate() {
        let (h, n) = send_disk(
            &mut w,
            i as u16,
            p.clone(),
            spec.block_size,
            old,
            repl.mob.progress.clone(),
        )
        .await?;
        new_hashes.push(h);
        sent += n;
    }
    frozen.thaw();
    drop(views);
    tracing::debug!(
        sent,
        elapsed_ms = crate::seams::now().millis_since(captured),
        "delta sent"
    );
    w.send(Message::DeltaEnd { sent_blocks: sent })
        .await
        .map_err(|e| e.to_string())?;
    w.finish();
    repl.mob.last_sent_blocks.store(sent, Ordering::Relaxed);
    let reply = tokio::time::timeout(COMMIT_TIMEOUT, r.expect())
        .await
        .map_err(|_| "process server did not commit within an hour".to_string())?
        .map_err(|e| format!("process server {ps}: {e}"))?;
    match reply {
        Message::PointCommitted(s) => {
            // Only now does the change log move forward: maps of the new point first, then the
            // atomic switch in replica.json, then the old maps go.
            if vault::from_hex::<16>(&s.id).is_none() {
                return Err("process server returned an invalid point id".into());
            }
            std::fs::create_dir_all(repl.dir.root.join("hashes").join(&s.id))
                .map_err(|e| e.to_string())?;
            for (d, h) in spec.disks.iter().zip(&new_hashes) {
                let mut b = Vec::with_capacity(h.len() * 32);
                h.iter().for_each(|x| b.extend_from_slice(x));
                lifeboat_config::state::write_file_atomic(
                    &hashes_path(repl, &s.id, &d.name),
                    &b,
                    0o600,
                )
                .map_err(|e| e.to_string())?;
            }
            replica.last_point = Some(s.id.clone());
            replica.initial_done = true;
            save(&replica_path(repl), &replica, 0o600)?;
            if let Ok(rd) = std::fs::read_dir(repl.dir.root.join("hashes")) {
                for e in rd.flatten() {
                    if e.file_name().to_str() != Some(s.id.as_str()) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            tracing::info!(point = %s.id, %consistency, sent, base = ?base, "point committed");
            Ok(s)
        }
        Message::PointFailed(reason) => {
            if let PointFailure::BaseUnknown { .. } = reason {
                // The vault lost our base: drop the maps so the next cycle sends everything.
                let _ = std::fs::remove_dir_all(repl.dir.root.join("hashes"));
                replica.last_point = None;
                save(&replica_path(repl), &replica, 0o600)?;
            }
            Err(format!("process server {ps} could not commit: {reason}"))
        }
        other => Err(format!(
            "unexpected reply from process server: {}",
            other.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a whole image through the scan's readers.
    fn read_all(path: &Path) -> Vec<u8> {
        let (f, size, direct) = open_disk(path).unwrap();
        let mut ra = ReadAhead::start(path.to_path_buf(), f, size, direct);
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let Span { at, len, buf } = ra.next().unwrap();
            assert_eq!(at, out.len() as u64);
            out.extend_from_slice(buf.data(len));
            ra.recycle(at, buf);
        }
        out
    }

    #[test]
    fn a_scan_reads_partly_cached_image_files_exactly() {
        // A real filesystem (tmpfs refuses O_DIRECT), so both halves of the read path run:
        // pages still in the cache and pages read direct, meeting inside one 4 MiB span.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("disk.img");
        let size = 3 * READ_BYTES + 12_345; // an unaligned tail
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // Evict the second half of the second span, and everything from the third on, from the
        // cache (ranges aligned to 2 MiB: the kernel keeps a large folio a range only partly
        // covers).
        use std::os::fd::AsRawFd;
        for (off, len) in [(READ_BYTES + (2 << 20), 2 << 20), (2 * READ_BYTES, 0)] {
            #[allow(unsafe_code)]
            // SAFETY: a valid descriptor; the call only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), off as i64, len, libc::POSIX_FADV_DONTNEED);
            }
        }
        // The second span really is split: its head comes from the cache, the rest is not there.
        let second = cached_chunks(&f, READ_BYTES as u64, READ_BYTES).unwrap();
        assert!(
            second.iter().any(|&c| c) && second.iter().any(|&c| !c),
            "expected a partly cached span, got {second:?}"
        );
        let got = read_all(&path);
        assert!(
            got == data,
            "the scan read different bytes than the file holds"
        );
        // Reading the evicted part direct brought none of it into the cache (a probing read
        // would have started readahead there, reading the disk twice).
        let third = cached_chunks(&f, 2 * READ_BYTES as u64, READ_BYTES).unwrap();
        assert!(
            third.iter().all(|&c| !c),
            "the scan filled the page cache: {third:?}"
        );
        // A dirty (unsynced) change is seen too, whichever path serves it.
        let g = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        g.write_at(b"changed", READ_BYTES as u64 + 5).unwrap();
        let mut want = data.clone();
        want[READ_BYTES + 5..READ_BYTES + 12].copy_from_slice(b"changed");
        assert!(
            read_all(&path) == want,
            "a change still in the page cache was missed"
        );
    }
}
