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

mod actor;
mod failback;
mod scan;
mod trace;
mod views;

pub use actor::{CutPoint, MobilityActor, Protect, Resume, RunShutdownHook, Shutdown, Unprotect};
pub use failback::{adopt_point, failback};

use super::{load, save, Repl};
use crate::direct_io::Aligned;
use crate::transport::FrameWriter;
use lifeboat_actors::datapath::{pick_process_server, Batcher, Cycle, CycleOutcome};
use lifeboat_actors::replication::{CycleKind, Scheduler};
use lifeboat_protocol::frame::FrameSealer;
use lifeboat_protocol::message::{
    DeltaBlock, DeltaHeader, DiskInfo, DiskSpec, PointSummary, ProtectionReport, ProtectionSpec,
};
use lifeboat_protocol::vault::{self, Consistency};
use lifeboat_protocol::{Envelope, Message, NodeId, Role};
use scan::{load_hashes, send_disk};
pub use scan::{scan_device, ScanBuffers};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use views::take_views;

/// A `DeltaBlocks` frame closes at this many payload bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...or this many blocks (zero markers and well-compressed blocks are small).
const BATCH_BLOCKS: usize = 1024;
/// A scan that found nothing to send for this long sends an empty batch (the process server
/// then knows the mobility node is alive).
const KEEPALIVE_MS: u64 = 30_000;
/// How long a cycle waits for the process server's commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Mobility-side state.
#[derive(Debug, Default)]
pub struct MobilityState {
    /// Latest report (also sent to the configuration node).
    pub report: Mutex<Option<ProtectionReport>>,
    /// Blocks sent by the last cycle.
    pub last_sent_blocks: AtomicU64,
    /// Cycles completed since start.
    pub cycles: AtomicU64,
    /// Progress of the running cycle.
    pub progress: Arc<Progress>,
    /// Drills and failovers landing on this node now.
    pub landings: crate::replication::landing::Running,
    /// Change tracking's state, for reports.
    pub tracking: Mutex<lifeboat_protocol::message::TrackingReport>,
    /// Cycles failed since start.
    pub failed: AtomicU64,
    /// Bytes the cycles read since start.
    pub read_bytes: AtomicU64,
    /// Changed bytes the cycles sent since start.
    pub sent_bytes: AtomicU64,
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

/// Persisted progress of a protected machine (`replica.json`): the change log's state machine,
/// shared with the simulation.
pub type Replica = lifeboat_actors::datapath::ChangeLog;

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

/// Who waits for a point cut on request: answered with the id of the first point committed
/// by a cycle that started after the request arrived, or with why that cycle failed.
pub type CutWaiter = tokio::sync::oneshot::Sender<Result<String, String>>;

/// The protection loop: a cycle whenever the scheduler says one is due or someone waits for a
/// point (`cuts`), until `stop` says so (with the grace a cycle in flight gets to commit).
/// Returns true if it abandoned one.
async fn run(
    repl: Arc<Repl>,
    spec: ProtectionSpec,
    mut stop: watch::Receiver<Option<Duration>>,
    mut cuts: mpsc::Receiver<CutWaiter>,
) -> bool {
    let mut sched = Scheduler::new(&spec.policy, spec.hooks.freeze.is_some());
    let mut waiting: Vec<CutWaiter> = Vec::new();
    let paths: Vec<PathBuf> = spec.disks.iter().map(|d| PathBuf::from(&d.path)).collect();
    let names: Vec<String> = spec.disks.iter().map(|d| d.name.clone()).collect();
    let mut capture = trace::Capturing::start(
        &repl.local.to_string(),
        spec.capture,
        &paths,
        spec.block_size,
    );
    if let Ok(mut t) = repl.mob.tracking.lock() {
        *t = capture.report(&names);
    }
    tracing::info!(disks = spec.disks.len(), "protection started");
    loop {
        if stop.borrow().is_some() {
            tracing::info!("protection stopped");
            return false;
        }
        let now = crate::seams::now();
        // Requests that arrived during the last cycle wait for this one.
        while let Ok(w) = cuts.try_recv() {
            waiting.push(w);
        }
        let due = if waiting.is_empty() {
            sched.poll(now)
        } else {
            sched.force()
        };
        if let Some(kind) = due {
            let answering = std::mem::take(&mut waiting);
            // While the cycle runs, tell the configuration node how far it got.
            let _reporter = {
                let r = repl.clone();
                AbortOnDrop(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let last = load::<Replica>(&replica_path(&r))
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        report(&r, last.initial_done, last.last_point, None, None).await;
                    }
                }))
            };
            let outcome = {
                let mut running = std::pin::pin!(cycle(&repl, &spec, kind, &mut capture));
                tokio::select! {
                    o = &mut running => o,
                    _ = stop.changed() => {
                        let grace = stop.borrow().unwrap_or_default();
                        match tokio::time::timeout(grace, &mut running).await {
                            Ok(o) => o,
                            Err(_) => {
                                repl.mob.progress.running.store(false, Ordering::Relaxed);
                                tracing::info!("replication cycle abandoned (protection stopping); its changes go into the next point");
                                return true;
                            }
                        }
                    }
                }
            };
            repl.mob.progress.running.store(false, Ordering::Relaxed);
            let pr = &repl.mob.progress;
            repl.mob
                .read_bytes
                .fetch_add(pr.scanned.load(Ordering::Relaxed), Ordering::Relaxed);
            repl.mob
                .sent_bytes
                .fetch_add(pr.pending.load(Ordering::Relaxed), Ordering::Relaxed);
            if outcome.is_err() {
                repl.mob.failed.fetch_add(1, Ordering::Relaxed);
            }
            if outcome.is_ok() {
                capture.handle_committed(repl.mob.progress.scanned.load(Ordering::Relaxed));
            }
            if let Ok(mut t) = repl.mob.tracking.lock() {
                *t = capture.report(&names);
            }
            match outcome {
                Ok(s) => {
                    for w in answering {
                        let _ = w.send(Ok(s.id.clone()));
                    }
                    // A point taken crash-consistent for the freeze cap leaves one due.
                    let done = if capture.take_downgraded() {
                        CycleKind { app: false }
                    } else {
                        kind
                    };
                    sched.handle_done(now, done);
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
                    let _ = capture.take_downgraded();
                    for w in answering {
                        let _ = w.send(Err(e.clone()));
                    }
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
            Some(w) = cuts.recv() => waiting.push(w),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
        scanned_bytes: if full {
            pr.scanned.load(Ordering::Relaxed)
        } else {
            0
        },
        total_bytes: pr.total.load(Ordering::Relaxed),
        tracking: repl
            .mob
            .tracking
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default(),
        counters: lifeboat_protocol::message::CycleCounters {
            committed: repl.mob.cycles.load(Ordering::Relaxed),
            failed: repl.mob.failed.load(Ordering::Relaxed),
            read_bytes: repl.mob.read_bytes.load(Ordering::Relaxed),
            sent_bytes: repl.mob.sent_bytes.load(Ordering::Relaxed),
        },
    };
    if let Ok(mut g) = repl.mob.report.lock() {
        *g = Some(r.clone());
    }
    repl.tell_authorities(Message::Report(r)).await;
}

/// Picks a process server: the preferred one if connected, else any connected one.
async fn pick_ps(repl: &Repl, preferred: Option<NodeId>) -> Result<NodeId, String> {
    let connected = repl.connected_with(Role::ProcessServer).await;
    pick_process_server(preferred, &connected)
        .ok_or_else(|| "no process server is reachable (assign one with `lifeboat role add process-server --node ID`)".into())
}

/// Each disk's geometry, and the hash map of the last committed point for each (`None`: a
/// missing or mismatched map, which means a full copy).
#[allow(clippy::type_complexity)]
fn geometry(
    repl: &Repl,
    spec: &ProtectionSpec,
    paths: &[PathBuf],
    replica: &Replica,
) -> Result<(Vec<DiskInfo>, Vec<Option<Vec<[u8; 32]>>>), String> {
    let mut infos = Vec::new();
    let mut olds = Vec::new();
    for (d, p) in spec.disks.iter().zip(paths) {
        let size = lifeboat_actors::seams::BlockDevice::size(&crate::disk::Disk::open(p)?);
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
    Ok((infos, olds))
}

/// The process server committed `point` and the change log moved to it: the maps of the new
/// point first, then the atomic switch in `replica.json`, then the old maps go.
fn persist_point(
    repl: &Repl,
    disks: &[DiskSpec],
    replica: &Replica,
    point: &str,
    new_hashes: &[Vec<[u8; 32]>],
) -> Result<(), String> {
    std::fs::create_dir_all(repl.dir.root.join("hashes").join(point)).map_err(|e| e.to_string())?;
    for (d, h) in disks.iter().zip(new_hashes) {
        let mut b = Vec::with_capacity(h.len() * 32);
        h.iter().for_each(|x| b.extend_from_slice(x));
        lifeboat_config::state::write_file_atomic(&hashes_path(repl, point, &d.name), &b, 0o600)
            .map_err(|e| e.to_string())?;
    }
    save(&replica_path(repl), replica, 0o600)?;
    if let Ok(rd) = std::fs::read_dir(repl.dir.root.join("hashes")) {
        for e in rd.flatten() {
            if e.file_name().to_str() != Some(point) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

async fn cycle(
    repl: &Arc<Repl>,
    spec: &ProtectionSpec,
    kind: CycleKind,
    capture: &mut trace::Capturing,
) -> Result<PointSummary, String> {
    let ps = pick_ps(repl, spec.process_server).await?;
    // An app-consistent point holds the freeze while it reads: not if that would outlast the
    // policy's cap (the point is crash-consistent then, and the scheduler still wants one).
    let kind = if kind.app && !capture.may_freeze(spec.policy.max_freeze_ms) {
        CycleKind { app: false }
    } else {
        kind
    };
    let mut replica: Replica = load(&replica_path(repl))?.unwrap_or_default();
    // The capture time is taken before the view: every write completed before it is in the
    // point (a snapshot taken later may contain later writes too, never fewer). Change
    // tracking notes the time before the view and drains after it (`lifeboat_actors::tracking`).
    let captured = crate::seams::now();
    capture.begin_view();
    let froze = std::time::Instant::now();
    let (r2, s2) = (repl.clone(), spec.clone());
    let (views, consistency, mut frozen) =
        tokio::task::spawn_blocking(move || take_views(&r2, &s2, kind))
            .await
            .map_err(|e| e.to_string())??;
    let (infos, mut olds) = match geometry(repl, spec, &views.paths, &replica) {
        Ok(g) => g,
        Err(e) => {
            frozen.thaw();
            return Err(e);
        }
    };
    let sizes: Vec<u64> = infos.iter().map(|d| d.size_bytes).collect();
    let plan = capture.plan(&sizes);
    let out: Result<PointSummary, String> = async {
        let maps: Vec<bool> = olds.iter().map(Option::is_some).collect();
        let mut session = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut session);
        let mut cyc = Cycle::begin(&replica, &maps, vault::hex(&session));
        let base = cyc.base().map(str::to_string);
        if base.is_none() {
            olds.iter_mut().for_each(|o| *o = None);
        }
        let pr = &repl.mob.progress;
        pr.scanned.store(0, Ordering::Relaxed);
        pr.pending.store(0, Ordering::Relaxed);
        pr.total
            .store(infos.iter().map(|d| d.size_bytes).sum(), Ordering::Relaxed);
        pr.full.store(base.is_none(), Ordering::Relaxed);
        pr.running.store(true, Ordering::Relaxed);
        let header = DeltaHeader {
            session: cyc.session().to_string(),
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
        let reading = std::time::Instant::now();
        for (i, (p, old)) in views.paths.iter().zip(olds).enumerate() {
            // Traced: only the dirty blocks are read (the others' hashes are the base's).
            let dirty = old.as_ref().and(plan.get(i).cloned().flatten());
            let (h, n) = send_disk(
                &mut w,
                i as u16,
                p.clone(),
                spec.block_size,
                old,
                dirty,
                repl.mob.progress.clone(),
            )
            .await?;
            new_hashes.push(h);
            sent += n;
        }
        capture.handle_read(
            repl.mob.progress.scanned.load(Ordering::Relaxed),
            reading.elapsed().as_millis() as u64,
        );
        let freeze_ms = frozen
            .is_frozen()
            .then(|| froze.elapsed().as_millis() as u64);
        if let Some(ms) = freeze_ms {
            capture.handle_freeze(ms);
        }
        frozen.thaw();
        drop(views);
        tracing::debug!(
            sent,
            elapsed_ms = crate::seams::now().millis_since(captured),
            "delta sent"
        );
        w.send(Message::DeltaEnd {
            sent_blocks: sent,
            freeze_ms,
        })
        .await
        .map_err(|e| e.to_string())?;
        w.finish();
        cyc.handle_sent(&mut replica);
        repl.mob.last_sent_blocks.store(sent, Ordering::Relaxed);
        let reply = tokio::time::timeout(COMMIT_TIMEOUT, r.expect())
            .await
            .map_err(|_| "process server did not commit within an hour".to_string())?
            .map_err(|e| format!("process server {ps}: {e}"))?;
        let s = settle(repl, spec, ps, cyc, &mut replica, reply, &new_hashes)?;
        tracing::info!(point = %s.id, %consistency, sent, base = ?base, "point committed");
        Ok(s)
    }
    .await;
    frozen.thaw();
    if let Err(e) = &out {
        capture.handle_failed(&plan, e);
    }
    out
}

/// The process server's reply to a cycle, through the cycle state machine; persists what it
/// says, in its order.
fn settle(
    repl: &Repl,
    spec: &ProtectionSpec,
    ps: NodeId,
    cyc: Cycle,
    replica: &mut Replica,
    reply: Message,
    new_hashes: &[Vec<[u8; 32]>],
) -> Result<PointSummary, String> {
    let answer = match reply {
        Message::PointCommitted(s) => Ok(s),
        Message::PointFailed(f) => Err(f),
        other => {
            return Err(format!(
                "unexpected reply from process server: {}",
                other.kind()
            ))
        }
    };
    let summary = answer.as_ref().ok().cloned();
    match (cyc.handle_reply(replica, answer), summary) {
        (CycleOutcome::Committed { point }, Some(s)) => {
            persist_point(repl, &spec.disks, replica, &point, new_hashes)?;
            Ok(s)
        }
        (CycleOutcome::Reset(why), _) => {
            // The vault lost our base: drop the maps so the next cycle sends everything.
            let _ = std::fs::remove_dir_all(repl.dir.root.join("hashes"));
            save(&replica_path(repl), replica, 0o600)?;
            Err(format!("process server {ps} could not commit: {why}"))
        }
        (CycleOutcome::Failed(why), _) | (CycleOutcome::Committed { point: why }, None) => {
            Err(format!("process server {ps} could not commit: {why}"))
        }
    }
}
