//! `trace` capture: the kernel's block tracepoints in a private tracefs instance
//! (`/sys/kernel/tracing/instances/lifeboat-NODE`). A thread reads its per-CPU buffers in
//! the kernel's binary form (`per_cpu/cpuN/trace_pipe_raw`, decoded by
//! `lifeboat_actors::tracking::raw`: no event is formatted as text) every 50 ms, or at once
//! when a drain asks, orders what it read by time and hands it to the sans-IO [`Tracker`]
//! (`lifeboat_actors::tracking`, which also states the ordering of a cycle). A
//! watchdog thread checks every 100 ms that the instance still traces what it should (tracing
//! on, the event enabled, the filter ours, no overrun counted); anything else, and a failed
//! drain, marks events lost, and the next cycle scans in full. Each drain also compares the
//! disks' request counters with what was traced (see `Tracker::handle_accounting`), which
//! catches what happened between two checks of the watchdog. Only block devices that take
//! requests (`/sys/block/DEV/mq`: loop, NVMe, SCSI, virtio) are traced; their partitions are
//! traced through the whole disk. Image files, device-mapper and other bio-based devices are
//! scanned (protect the disk under them: writes through them are requests on it).

use lifeboat_actors::tracking::{
    Accounting, Dirty, TrackedDisk, Tracker, TrackerStats, MARKER_PREFIX,
};
use lifeboat_protocol::message::{Capture, CaptureReport, TrackingReport};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod reader;
use reader::{check, open_raw, overruns, read_raw, watch};

const TRACEFS: &str = "/sys/kernel/tracing";
const EVENT: &str = "events/block/block_rq_complete";
/// How long a drain waits before it asks the reader for another pass.
const ASK_AGAIN: Duration = Duration::from_millis(20);
/// How long a drain waits for its marker to come back.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The per-CPU buffer of an instance, KiB (`LIFEBOAT_TRACE_BUFFER_KB` overrides it, which the
/// tests use to force overruns).
fn buffer_kb() -> u64 {
    std::env::var("LIFEBOAT_TRACE_BUFFER_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k > 0)
        .unwrap_or(2048)
}

/// How a disk is captured, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Traced (index into the tracker's disks).
    Trace(usize),
    /// Scanned in full every cycle, for this reason.
    Scan(String),
}

/// The monotonic clock in microseconds (the instances' `trace_clock` is `mono`).
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Where tracefs is, mounting it if needed.
fn tracefs() -> Result<PathBuf, String> {
    let root = PathBuf::from(TRACEFS);
    if root.join("instances").is_dir() {
        return Ok(root);
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS])
        .output()
        .map_err(|e| format!("mount tracefs: {e}"))?;
    if root.join("instances").is_dir() {
        Ok(root)
    } else {
        Err(format!(
            "tracefs is not available ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tracefs control file, in one `read` (an event's `filter` answers only the first read of
/// an open file: `read_to_string`'s small first read would cut it at 32 bytes).
fn read_trim(p: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 10];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut buf))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn write_to(p: &Path, v: &str) -> Result<(), String> {
    std::fs::write(p, v).map_err(|e| format!("{}: {e}", p.display()))
}

/// What to trace for the device at `path` of `size` bytes, or why it is scanned.
pub fn resolve(path: &Path, size: u64, block_size: u32) -> Result<TrackedDisk, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_block_device() {
        return Err("an image file: written through the page cache, it is scanned".into());
    }
    let rdev = meta.rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}"))
        .map_err(|e| format!("no sysfs entry for {maj}:{min}: {e}"))?;
    if sys.join("dm").is_dir() {
        return Err("a device-mapper device: protect the disk under it (writes through it are traced there)".into());
    }
    let (disk, start) = if sys.join("partition").exists() {
        let start: u64 = read_trim(&sys.join("start"))?
            .parse()
            .map_err(|_| "unreadable partition start".to_string())?;
        (
            sys.parent().map(Path::to_path_buf).unwrap_or_default(),
            start,
        )
    } else {
        (sys.clone(), 0)
    };
    if !disk.join("mq").is_dir() {
        return Err("not a request-based device (its writes are not traced as requests)".into());
    }
    let dev = read_trim(&disk.join("dev"))?;
    let (a, b) = dev.split_once(':').ok_or("unreadable device number")?;
    let dev = (
        a.parse().map_err(|_| "unreadable device number")?,
        b.parse().map_err(|_| "unreadable device number")?,
    );
    Ok(TrackedDisk {
        dev,
        start_sector: start,
        size,
        block_size,
    })
}

/// The kernel's encoding of a device number in trace filters (`MAJOR << 20 | MINOR`).
fn kdev((maj, min): (u32, u32)) -> u64 {
    ((maj as u64) << 20) | min as u64
}

struct Shared {
    tracker: Mutex<Tracker>,
    markers: Mutex<Vec<String>>,
    seen: Condvar,
    /// Read passes asked for by drains (the reader makes one at once when this moves).
    asked: Mutex<u64>,
    ask: Condvar,
    stop: AtomicBool,
    dead: AtomicBool,
    overruns: AtomicU64,
}

/// A running trace instance (see the module). Dropping it removes the instance.
pub struct Trace {
    dir: PathBuf,
    filter: String,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    seq: u64,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trace({})", self.dir.display())
    }
}

impl Trace {
    /// Starts tracing `disks` in instance `lifeboat-NAME` (an instance left by a crashed run
    /// is removed first). The tracker's first answer is a full scan.
    pub fn start(name: &str, disks: Vec<TrackedDisk>) -> Result<Trace, String> {
        let root = tracefs()?;
        let dir = root.join("instances").join(format!("lifeboat-{name}"));
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut devs: Vec<u64> = disks.iter().map(|d| kdev(d.dev)).collect();
        devs.sort_unstable();
        devs.dedup();
        // By device only: the kernel drops other disks' requests with an integer compare.
        // Reads of these disks are recorded and dropped by the tracker: matching `rwbs` in
        // the kernel (`rwbs ~ "*W*"`) cost the writers about 10% of their IOPS on a fast
        // disk (bench/tracking.sh), reading a record we skip costs them nothing.
        let filter = devs
            .iter()
            .map(|d| format!("dev == {d}"))
            .collect::<Vec<_>>()
            .join(" || ");
        let setup = || -> Result<(), String> {
            write_to(&dir.join("trace_clock"), "mono")?;
            write_to(&dir.join("buffer_size_kb"), &buffer_kb().to_string())?;
            write_to(&dir.join(EVENT).join("filter"), &filter)?;
            write_to(&dir.join(EVENT).join("enable"), "1")?;
            write_to(&dir.join("tracing_on"), "1")
        };
        if let Err(e) = setup() {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(disks)),
            markers: Mutex::new(Vec::new()),
            seen: Condvar::new(),
            asked: Mutex::new(0),
            ask: Condvar::new(),
            stop: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            overruns: AtomicU64::new(overruns(&dir)),
        });
        let opened = open_raw(&root, &dir);
        let (layout, cpus) = match opened {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        let reader = {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("lifeboat-trace".into())
                .spawn(move || read_raw(cpus, &layout, &s))
                .map_err(|e| e.to_string())?
        };
        let watchdog = {
            let (s, d, f) = (shared.clone(), dir.clone(), filter.clone());
            std::thread::Builder::new()
                .name("lifeboat-trace-watch".into())
                .spawn(move || watch(&d, &f, &s))
                .map_err(|e| e.to_string())?
        };
        tracing::info!(instance = %dir.display(), %filter, "block tracing started");
        Ok(Trace {
            dir,
            filter,
            shared,
            threads: vec![reader, watchdog],
            seq: 0,
        })
    }

    /// Whether the instance stopped being readable (it must be started again).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Relaxed)
    }

    /// The disks traced.
    pub fn disks(&self) -> Vec<TrackedDisk> {
        self.lock().disks().to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.shared
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counters and the blocks waiting, per disk.
    pub fn stats(&self) -> (TrackerStats, Vec<usize>) {
        let t = self.lock();
        (t.stats(), t.pending_blocks())
    }

    /// Before the view: notes the time.
    pub fn begin_view(&self) {
        self.lock().begin_view(mono_us());
    }

    /// After the view: waits until every event traced so far has been read, then takes the
    /// dirty maps, or says why the cycle must scan in full.
    pub fn drain(&mut self) -> Result<Vec<Dirty>, String> {
        self.seq += 1;
        let token = format!("{MARKER_PREFIX}{}-{}", std::process::id(), self.seq);
        let mut devs: Vec<(u32, u32)> = self.lock().disks().iter().map(|d| d.dev).collect();
        devs.sort_unstable();
        devs.dedup();
        let back = (|| {
            if self.is_dead() {
                return Err("the trace instance stopped".to_string());
            }
            check(&self.dir, &self.filter, &self.shared)?;
            // The disks' request counters around the marker (see `Tracker::handle_accounting`).
            let before: Vec<Option<u64>> = devs.iter().map(|&d| completed_writes(d)).collect();
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join("trace_marker"))
                .and_then(|mut f| f.write_all(token.as_bytes()))
                .map_err(|e| format!("trace_marker: {e}"))?;
            let acct: Vec<((u32, u32), Accounting)> = devs
                .iter()
                .zip(before)
                .filter_map(|(&d, before)| {
                    let after = completed_writes(d)?;
                    let inflight = writes_in_flight(d)?;
                    Some((
                        d,
                        Accounting {
                            before: before?,
                            after,
                            inflight,
                        },
                    ))
                })
                .collect();
            let deadline = std::time::Instant::now() + DRAIN_WAIT;
            let mut m = self
                .shared
                .markers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            while !m.contains(&token) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err("the drain marker did not come back from the trace".to_string());
                }
                if self.is_dead() {
                    return Err("the trace instance stopped".to_string());
                }
                // A pass that started before the marker was written may miss it: ask again
                // until it is read.
                self.shared.ask_pass();
                m = self
                    .shared
                    .seen
                    .wait_timeout(m, left.min(ASK_AGAIN))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            m.clear();
            Ok(acct)
        })();
        let mut t = self.lock();
        match back {
            Ok(acct) => {
                t.handle_accounting(&token, &acct);
                tracing::debug!(accounting = ?t.accounting(), "drained");
            }
            Err(e) => t.handle_loss(&e),
        }
        t.take()
    }

    /// A cycle that read `taken` did not commit.
    pub fn give_back(&self, taken: &[Dirty]) {
        self.lock().give_back(taken);
    }

    /// A full scan did not commit: the next cycle scans in full again.
    pub fn full_scan_failed(&self, why: &str) {
        self.lock().full_scan_failed(why);
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ask_pass();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(instance = %self.dir.display(), cause = %e, "could not remove the trace instance");
        }
    }
}

/// Write and discard requests the disk `dev` has completed (`/sys/dev/block/M:m/stat`: write
/// I/Os, and discard I/Os where the kernel counts them), or `None` if unreadable (no check).
fn completed_writes((maj, min): (u32, u32)) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/stat")).ok()?;
    let f: Vec<u64> = s
        .split_ascii_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some(f.get(4)? + f.get(11).copied().unwrap_or(0))
}

/// Write requests in flight on the disk `dev` (`/sys/dev/block/M:m/inflight`).
fn writes_in_flight((maj, min): (u32, u32)) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/inflight")).ok()?;
    s.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// A protection's change capture: each disk's mode, the trace instance of the traced ones,
/// and the counters reported in `status`.
#[derive(Debug)]
pub struct Capturing {
    name: String,
    want: Capture,
    paths: Vec<PathBuf>,
    block_size: u32,
    modes: Vec<Mode>,
    trace: Option<Trace>,
    full_scans: u64,
    last_full_scan: Option<String>,
    last_freeze_ms: Option<u64>,
    last_read_bytes: u64,
    /// Bytes per ms the last cycle that read much read at.
    read_rate: Option<f64>,
    freeze_skipped: Option<String>,
    downgraded: bool,
}

/// What a cycle reads of each disk: only these blocks, or everything (a full scan).
pub type Plan = Vec<Option<Dirty>>;

impl Capturing {
    /// Starts capturing the disks at `paths` as `want` says (instance `lifeboat-NAME`).
    pub fn start(name: &str, want: Capture, paths: &[PathBuf], block_size: u32) -> Capturing {
        let mut c = Capturing {
            name: name.to_string(),
            want,
            paths: paths.to_vec(),
            block_size,
            modes: vec![],
            trace: None,
            full_scans: 0,
            last_full_scan: None,
            last_freeze_ms: None,
            last_read_bytes: 0,
            read_rate: None,
            freeze_skipped: None,
            downgraded: false,
        };
        c.restart();
        c
    }

    /// (Re)resolves every disk and starts a fresh instance for the traced ones.
    fn restart(&mut self) {
        self.trace = None;
        let mut disks = Vec::new();
        self.modes = self
            .paths
            .iter()
            .map(|p| {
                if self.want == Capture::Scan {
                    return Mode::Scan("scan capture was chosen".into());
                }
                let size = match crate::disk::Disk::open(p) {
                    Ok(d) => lifeboat_actors::seams::BlockDevice::size(&d),
                    Err(e) => return Mode::Scan(e),
                };
                match resolve(p, size, self.block_size) {
                    Ok(d) => {
                        disks.push(d);
                        Mode::Trace(disks.len() - 1)
                    }
                    Err(why) => Mode::Scan(why),
                }
            })
            .collect();
        if disks.is_empty() {
            return;
        }
        match Trace::start(&self.name, disks) {
            Ok(t) => self.trace = Some(t),
            Err(e) => {
                tracing::warn!(cause = %e, "block tracing is unavailable; the disks are scanned");
                for m in &mut self.modes {
                    if matches!(m, Mode::Trace(_)) {
                        *m = Mode::Scan(format!("block tracing is unavailable: {e}"));
                    }
                }
            }
        }
    }

    /// Before the view is taken.
    pub fn begin_view(&mut self) {
        if self.trace.as_ref().is_some_and(Trace::is_dead) {
            let why = self
                .trace
                .as_ref()
                .and_then(|t| t.lock().loss().map(str::to_string));
            tracing::warn!(
                "the trace instance stopped; tracing starts again (this cycle scans in full)"
            );
            self.restart();
            if let (Some(t), Some(why)) = (&self.trace, why) {
                t.lock().replace_loss(why);
            }
        }
        if let Some(t) = &self.trace {
            t.begin_view();
        }
    }

    /// After the view: what to read of each disk. `sizes` are the disks' sizes now (a resize
    /// means a full scan and a new instance).
    pub fn plan(&mut self, sizes: &[u64]) -> Plan {
        // A resize is a full scan; the instance goes on (its maps grow with the disk).
        if let Some(t) = &self.trace {
            let now = t.disks();
            for (m, s) in self.modes.iter().zip(sizes) {
                if let Mode::Trace(i) = m {
                    if now.get(*i).is_some_and(|d| d.size != *s) {
                        t.lock().handle_resize(*i, *s);
                    }
                }
            }
        }
        let taken = match self.trace.as_mut() {
            Some(t) => t.drain(),
            None => Err(String::new()),
        };
        match taken {
            Ok(maps) => self
                .modes
                .iter()
                .map(|m| match m {
                    Mode::Trace(i) => maps.get(*i).cloned(),
                    Mode::Scan(_) => None,
                })
                .collect(),
            Err(why) => {
                if self.trace.is_some() && !why.is_empty() {
                    tracing::warn!(cause = %why, "change tracking cannot be trusted for this cycle; it scans in full");
                    self.full_scans += 1;
                    self.last_full_scan = Some(why);
                }
                vec![None; self.modes.len()]
            }
        }
    }

    /// The cycle that read `plan` did not commit: its blocks stay dirty.
    pub fn handle_failed(&mut self, plan: &Plan, why: &str) {
        let Some(t) = &self.trace else { return };
        let traced: Vec<usize> = self
            .modes
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m, Mode::Trace(_)))
            .map(|(k, _)| k)
            .collect();
        if traced
            .iter()
            .any(|&k| plan.get(k).is_none_or(Option::is_none))
        {
            t.full_scan_failed(why);
        } else {
            let mut maps = vec![Dirty::default(); t.disks().len()];
            for (m, p) in self.modes.iter().zip(plan) {
                if let (Mode::Trace(i), Some(d)) = (m, p) {
                    maps[*i] = d.clone();
                }
            }
            t.give_back(&maps);
        }
    }

    /// The freeze of an app-consistent point lasted `ms`.
    pub fn handle_freeze(&mut self, ms: u64) {
        self.last_freeze_ms = Some(ms);
    }

    /// A cycle committed after reading `bytes` of the disks.
    pub fn handle_committed(&mut self, bytes: u64) {
        self.last_read_bytes = bytes;
    }

    /// A cycle read `bytes` in `ms` (its rate estimates the next freeze).
    pub fn handle_read(&mut self, bytes: u64, ms: u64) {
        if bytes >= 1 << 20 && ms > 0 {
            self.read_rate = Some(bytes as f64 / ms as f64);
        }
    }

    /// Before an app-consistent cycle's view: whether reading what it must read under the
    /// freeze fits in `max_ms`. If not, this cycle is crash-consistent (see
    /// [`Capturing::take_downgraded`]) and the reason is reported.
    pub fn may_freeze(&mut self, max_ms: u64) -> bool {
        let (pending, loss) = match &self.trace {
            Some(t) => {
                let g = t.lock();
                (g.pending_blocks(), g.loss().is_some())
            }
            None => (vec![], true),
        };
        let bytes: u64 = self
            .modes
            .iter()
            .zip(&self.paths)
            .map(|(m, p)| match m {
                Mode::Trace(i) if !loss => {
                    pending.get(*i).copied().unwrap_or(0) as u64 * self.block_size as u64
                }
                _ => crate::disk::Disk::open(p)
                    .map(|d| lifeboat_actors::seams::BlockDevice::size(&d))
                    .unwrap_or(0),
            })
            .sum();
        match lifeboat_actors::tracking::freeze_allowed(bytes, self.read_rate, max_ms) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(cause = %why, "no freeze for this point");
                self.freeze_skipped = Some(why);
                self.downgraded = true;
                false
            }
        }
    }

    /// Whether the last cycle was taken crash-consistent instead of app-consistent (once).
    pub fn take_downgraded(&mut self) -> bool {
        std::mem::take(&mut self.downgraded)
    }

    /// For reports.
    pub fn report(&self, names: &[String]) -> TrackingReport {
        let (stats, pending) = self.trace.as_ref().map(Trace::stats).unwrap_or_default();
        let disks = self
            .modes
            .iter()
            .zip(names)
            .map(|(m, n)| match m {
                Mode::Trace(_) => CaptureReport {
                    disk: n.clone(),
                    mode: "trace".into(),
                    reason: None,
                },
                Mode::Scan(why) => CaptureReport {
                    disk: n.clone(),
                    mode: "scan".into(),
                    reason: Some(why.clone()),
                },
            })
            .collect();
        TrackingReport {
            disks,
            events: stats.events,
            lost_events: stats.lost_events,
            full_scans: self.full_scans,
            last_full_scan: self.last_full_scan.clone(),
            dirty_bytes: pending.iter().sum::<usize>() as u64 * self.block_size as u64,
            last_freeze_ms: self.last_freeze_ms,
            last_read_bytes: self.last_read_bytes,
            last_freeze_skipped: self.freeze_skipped.clone(),
        }
    }
}
