//! A deterministic simulation of the replication data path, through the daemon's own code: the
//! process-server session (`node::replication::ps::run_session`: validation, spool, dedup,
//! sealing, packs, manifest chunks, the barrier → rescue → commit order), the vault client
//! (`node::vault::Vault`: packs, indexes, chunks, points, retention deletes, garbage
//! collection) and the sans-IO decisions (`actors::datapath::ChangeLog`, `plan_chunks`,
//! `actors::gc`, `actors::replication::thin`). Only the disk, the network stream and the
//! object store are simulated ([`blobs::SimBlobStore`], the [`MessageSource`] seam), on
//! simulated time (tokio's paused clock: hours pass in milliseconds), from one seed.
//!
//! What goes wrong, by the seed: slow, failed and half-done (answer lost) store operations,
//! store outages of up to ten minutes, process-server crashes mid-session, partitions that cut
//! a replication stream, answers that never
//! reach the mobility node (its crash), garbage-collection passes cut short (the configuration
//! node's crash), its clock stepping, and the newest point deleted behind everyone's back.
//!
//! Invariants, checked after every cycle and every collection pass, through a fault-free view
//! of the store with a fresh vault client:
//! - every point in the vault expands to exactly the disk at its capture (manifest ids, Merkle
//!   root) and every block it names opens to the right bytes: nothing a live or committing point
//!   references was collected;
//! - a point the mobility node was told is committed stays until retention deletes it;
//! - retention keeps what the policy promises: the newest point and everything captured in
//!   the last two hours;
//! - a transient fault never forces a full resync: only a base that left the vault does.

pub mod blobs;
mod disk;
pub mod spool;

use blobs::{CleanView, SimBlobStore, SimClock, StoreFaults};
use lifeboat_actors::datapath::{ChangeLog, Cycle, CycleOutcome};
use lifeboat_actors::plant::Plant;
use lifeboat_actors::replication::{thin, CycleKind, PointAge, Scheduler, KEEP_ALL_MS};
use lifeboat_actors::seams::{BlobStore, BoxFuture, MessageSource};
use lifeboat_node::replication::ps::{run_session, PsState};
use lifeboat_node::vault::Vault;
use lifeboat_protocol::message::{DeltaHeader, DiskInfo, PointFailure};
use lifeboat_protocol::vault::{self, BlockId, Consistency, DataKey, PointRecord, CHUNK_ENTRIES};
use lifeboat_protocol::{Message, NodeId, UnixMillis};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use spool::SimSpool;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Block size of the simulated disk.
const BLOCK: usize = 4096;
/// Distinct block contents the applications write (see the write mix in `World::mobility`).
const PATTERNS: u16 = 240;
/// The hot region the applications write most: its first block and length.
const HOT_START: usize = 300;
const HOT_BLOCKS: u64 = 64;
/// Distinct contents of the disk at the start.
const FIRST_PATTERNS: u64 = 40;
/// Garbage-collection grace period, ms.
const GRACE_MS: u64 = 30_000;
/// Retention of the simulated policy, s.
const RETENTION_SECS: u64 = 3 * 3600;

/// One run's parameters.
#[derive(Clone, Copy, Debug)]
pub struct DataPathConfig {
    /// Seed of everything.
    pub seed: u64,
    /// How long the run lasts, in cycles on schedule (failed cycles are retried on top).
    pub cycles: u32,
    /// Blocks of the disk.
    pub blocks: usize,
    /// Faults on.
    pub faults: bool,
    /// A planted mistake (needs the `plants` feature).
    pub plant: Plant,
}

impl DataPathConfig {
    /// Defaults for `seed`: 24 cycles over a disk of a manifest chunk and 64 blocks, all faults on.
    pub fn new(seed: u64) -> Self {
        DataPathConfig {
            seed,
            cycles: 24,
            blocks: CHUNK_ENTRIES + 64,
            faults: true,
            plant: Plant::None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPathReport {
    /// Points the mobility node saw committed.
    pub committed: u32,
    /// Cycles that failed.
    pub failed: u32,
    /// Full copies after the first (each caused by a base that left the vault).
    pub full_resyncs: u32,
    /// Process-server crashes mid-session.
    pub ps_crashes: u32,
    /// Mobility-node crashes (down an hour, then back from what it persisted).
    pub mobility_restarts: u32,
    /// Replication streams cut by a partition.
    pub partitions: u32,
    /// Collection passes completed.
    pub gc_passes: u32,
    /// Packs collection deleted.
    pub deleted_packs: u64,
    /// Points retention deleted.
    pub retention_deleted: u32,
    /// Store operations served.
    pub store_ops: u64,
    /// Segments the process servers spilled to their spool.
    pub spilled_segments: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// The first invariant violation, if any.
    pub violation: Option<String>,
}

/// Runs one simulated protection on a paused clock.
pub fn run(cfg: DataPathConfig) -> DataPathReport {
    #[cfg(feature = "plants")]
    lifeboat_actors::plant::set(cfg.plant);
    #[cfg(not(feature = "plants"))]
    if cfg.plant != Plant::None {
        return DataPathReport {
            violation: Some("planted mistakes need the `plants` feature".into()),
            ..Default::default()
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return DataPathReport {
                violation: Some(format!("cannot start the simulation runtime: {e}")),
                ..Default::default()
            }
        }
    };
    rt.block_on(World::new(cfg).run())
}

/// Runs `runs` seeds from `first`; returns the first report with a violation, if any.
pub fn run_many(
    first: u64,
    runs: u64,
    f: impl Fn(u64) -> DataPathConfig,
) -> Option<DataPathReport> {
    (first..first + runs)
        .map(|s| run(f(s)))
        .find(|r| r.violation.is_some())
}

/// What every part of the world shares: the store, the truth, the record of what happened.
struct Shared {
    clock: SimClock,
    store: Arc<SimBlobStore>,
    key: DataKey,
    machine: NodeId,
    /// Each block content's bytes and id, by value.
    blocks: Arc<Vec<(Vec<u8>, BlockId)>>,
    /// The disk at each capture (by capture time): what a point of that capture must restore to.
    truth: Mutex<BTreeMap<u64, Vec<u16>>>,
    /// Points the mobility node was told are committed (id → capture).
    acknowledged: Mutex<BTreeMap<String, u64>>,
    /// Points someone set out to delete (retention, or the simulation behind everyone's back).
    deleting: Mutex<BTreeSet<String>>,
    report: Mutex<DataPathReport>,
    /// The checks' own vault client (over the fault-free view) and the points it verified.
    checker: tokio::sync::Mutex<Option<Checker>>,
}

/// What the checks keep between checks.
struct Checker {
    vault: Vault,
    /// Points verified whole, with the block contents each names.
    seen: BTreeMap<String, BTreeSet<u16>>,
}

impl Shared {
    fn violate(&self, what: String) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if r.violation.is_none() {
            r.violation = Some(what);
        }
    }

    fn violated(&self) -> bool {
        self.report
            .lock()
            .map(|r| r.violation.is_some())
            .unwrap_or(true)
    }

    fn count(&self, f: impl FnOnce(&mut DataPathReport)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }

    /// Opens a vault client over the faulty store, retrying through faults (as a daemon does).
    async fn open(&self, seed: u64) -> Vault {
        let mut wait = 100;
        loop {
            match Vault::open(self.store.clone(), self.key.clone()).await {
                Ok(v) => return v.seeded(seed),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    wait = (wait * 2).min(30_000);
                }
            }
        }
    }

    /// Checks every point in the vault against the truth, through a fault-free view: a point
    /// seen for the first time is expanded and compared whole; every point, every time, must
    /// still have its chunks, and every block any of them names must still open.
    async fn check_vault(&self, when: &str, blocks_too: bool) {
        let mut checker = self.checker.lock().await;
        if checker.is_none() {
            let clean: Arc<dyn BlobStore> = Arc::new(CleanView(self.store.clone()));
            match Vault::open(clean, self.key.clone()).await {
                Ok(v) => {
                    *checker = Some(Checker {
                        vault: v,
                        seen: BTreeMap::new(),
                    })
                }
                Err(e) => return self.violate(format!("{when}: the vault does not open: {e}")),
            }
        }
        let Some(c) = checker.as_mut() else { return };
        if let Err(e) = c.vault.refresh_index().await {
            return self.violate(format!("{when}: the pack indexes do not load: {e}"));
        }
        let points = match c.vault.list_points(Some(&self.machine)).await {
            Ok(p) => p,
            Err(e) => return self.violate(format!("{when}: the points do not list: {e}")),
        };
        let mut blocks: BTreeSet<u16> = BTreeSet::new();
        for p in &points {
            if !c.seen.contains_key(&p.id) {
                match self.check_point(&c.vault, p).await {
                    Ok(values) => {
                        c.seen.insert(p.id.clone(), values);
                    }
                    Err(e) => {
                        return self
                            .violate(format!("{when}: point {} ({}): {e}", p.id, p.captured.0))
                    }
                }
            }
            for d in &p.disks {
                if let Some(gone) = d
                    .chunks
                    .iter()
                    .find(|k| !self.store.has(&vault::chunk_key(k)))
                {
                    return self.violate(format!(
                        "{when}: point {}: chunk {} was deleted",
                        p.id,
                        gone.to_hex()
                    ));
                }
            }
            blocks.extend(c.seen.get(&p.id).into_iter().flatten());
        }
        for val in blocks.into_iter().filter(|_| blocks_too) {
            let (want, id) = &self.blocks[val as usize];
            match c.vault.read_block(id, BLOCK).await {
                Ok(got) if got == *want => {}
                Ok(_) => {
                    return self.violate(format!(
                        "{when}: block {} opens to the wrong bytes",
                        id.to_hex()
                    ))
                }
                Err(e) => {
                    return self.violate(format!(
                        "{when}: block {} that a point names cannot be read: {e}",
                        id.to_hex()
                    ))
                }
            }
        }
        let listed: BTreeSet<&str> = points.iter().map(|p| p.id.as_str()).collect();
        let deleting = self.deleting.lock().map(|d| d.clone()).unwrap_or_default();
        let acked = self
            .acknowledged
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        if let Some(lost) = acked
            .keys()
            .find(|id| !listed.contains(id.as_str()) && !deleting.contains(*id))
        {
            self.violate(format!("{when}: acknowledged point {lost} is gone"));
        }
    }

    /// One point: its manifest is the disk at its capture, its Merkle root matches, and each
    /// block it names opens to its bytes. Returns the block contents it names.
    async fn check_point(&self, v: &Vault, p: &PointRecord) -> Result<BTreeSet<u16>, String> {
        let truth = self
            .truth
            .lock()
            .ok()
            .and_then(|t| t.get(&p.captured.0).cloned())
            .ok_or("no capture at that time: a point nobody sent")?;
        let d = p.disks.first().ok_or("no disk")?;
        let ids = v.disk_ids(d).await.map_err(|e| e.to_string())?;
        let root = v.key().merkle_root(d.size_bytes, d.block_size, &d.chunks);
        if root != d.merkle_root {
            return Err("Merkle root does not match its chunks".into());
        }
        if ids.len() != truth.len() {
            return Err(format!(
                "{} blocks, the disk has {}",
                ids.len(),
                truth.len()
            ));
        }
        let mut checked = BTreeSet::new();
        for (i, (id, val)) in ids.iter().zip(&truth).enumerate() {
            let want = self.blocks[*val as usize].1;
            if *id != want {
                return Err(format!(
                    "block {i} does not restore to the disk at its capture"
                ));
            }
            if *val != 0 && checked.insert(*val) {
                let got = v
                    .read_block(id, BLOCK)
                    .await
                    .map_err(|e| format!("block {i} cannot be read: {e}"))?;
                if got != self.blocks[*val as usize].0 {
                    return Err(format!("block {i} opens to the wrong bytes"));
                }
            }
        }
        Ok(checked)
    }
}

/// The mobility node's state between cycles.
struct Mobility {
    /// The disk, one content value per block.
    disk: Vec<u16>,
    /// The change log (shared with the daemon).
    log: ChangeLog,
    /// The hash maps kept by point (`hashes/<point>/`).
    maps: BTreeMap<String, Vec<[u8; 32]>>,
    /// The process server, while it is up.
    ps: Option<ProcessServer>,
    /// The last capture time (captures are strictly increasing).
    last_capture: u64,
    /// A base left the vault: full copies are expected until one commits.
    resync_pending: bool,
    /// The scanner's read buffers, kept between cycles.
    buffers: Arc<lifeboat_node::replication::mobility::ScanBuffers>,
}

/// A process server: its state, its vault client, its spool.
type ProcessServer = (Arc<PsState>, Arc<Vault>, Arc<SimSpool>);

/// A segment a finished session left in the spool, if any. Segments go with the session's
/// processor, whose last sealing may still be running on a blocking thread: a bounded wait.
async fn spool_leak(spool: &SimSpool) -> Option<String> {
    for _ in 0..2_000 {
        if spool.names().is_empty() {
            return None;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    spool.names().into_iter().next()
}

/// A replication stream held in memory.
struct MemStream {
    msgs: VecDeque<Message>,
    /// Simulated network time per message, ms.
    per_msg_ms: u64,
    /// A partition cuts the stream after this many more messages.
    cut_after: Option<usize>,
}

impl MessageSource for MemStream {
    fn next_message(&mut self) -> BoxFuture<'_, Result<Option<Message>, String>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(self.per_msg_ms)).await;
            match &mut self.cut_after {
                Some(0) => return Err("connection lost (simulated partition)".into()),
                Some(n) => *n -= 1,
                None => {}
            }
            Ok(self.msgs.pop_front())
        })
    }
}

/// The simulated world.
struct World {
    cfg: DataPathConfig,
    shared: Arc<Shared>,
    rng: ChaCha8Rng,
}

impl World {
    fn new(cfg: DataPathConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let faults = if cfg.faults {
            StoreFaults {
                put_fails: 15,
                put_answer_lost: 10,
                get_fails: 10,
                list_fails: 10,
                slow: 20,
            }
        } else {
            StoreFaults::default()
        };
        let clock = SimClock::new(1_800_000_000_000);
        let store = Arc::new(SimBlobStore::new(rng.next_u64(), clock, faults));
        let mut master = [0u8; 32];
        rng.fill_bytes(&mut master);
        let key = DataKey::from_master(master);
        let blocks = Arc::new(disk::contents(PATTERNS, &key));
        let shared = Arc::new(Shared {
            clock,
            store,
            key,
            machine: NodeId([7; 10]),
            blocks,
            truth: Mutex::default(),
            acknowledged: Mutex::default(),
            deleting: Mutex::default(),
            report: Mutex::default(),
            checker: Default::default(),
        });
        World { cfg, shared, rng }
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.cfg.faults && self.rng.next_u64() % 1000 < permille
    }

    async fn run(mut self) -> DataPathReport {
        let s = self.shared.clone();
        // The vault, created on the configuration node (an existing one: our lost answer).
        loop {
            match Vault::create(s.store.clone(), "sim", &s.key, UnixMillis(s.clock.now())).await {
                Ok(_) | Err(lifeboat_node::vault::VaultError::Exists(_)) => break,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let config = tokio::spawn(config_node(
            s.clone(),
            self.rng.next_u64(),
            self.cfg,
            stop.clone(),
        ));
        self.mobility().await;
        stop.notify_one();
        let _ = config.await;
        if !s.violated() {
            s.check_vault("at the end", true).await;
        }
        let mut r = s.report.lock().map(|r| r.clone()).unwrap_or_default();
        r.store_ops = s.store.ops();
        r.sim_ms = s.clock.now() - 1_800_000_000_000;
        r
    }

    /// The mobility node and its process server, cycle after cycle.
    async fn mobility(&mut self) {
        let s = self.shared.clone();
        let blocks = self.cfg.blocks;
        let disk: Vec<u16> = (0..blocks)
            .map(|i| {
                if i % 5 == 0 {
                    0
                } else {
                    1 + (self.rng.next_u64() % FIRST_PATTERNS) as u16
                }
            })
            .collect();
        let mut m = Mobility {
            disk,
            log: ChangeLog::default(),
            maps: BTreeMap::new(),
            ps: None,
            last_capture: 0,
            resync_pending: false,
            buffers: Arc::default(),
        };
        // The daemon's scheduler, on the daemon's default periods scaled to the simulation:
        // a crash-consistent point every fifteen minutes, an app-consistent one every hour.
        let policy = lifeboat_protocol::message::Policy {
            crash_consistent_every_secs: 900,
            app_consistent_every_secs: 3600,
            ..lifeboat_protocol::message::Policy::default_policy()
        };
        let mut sched = Scheduler::new(&policy, true);
        let mut cycle = 0;
        // The run lasts as long as `cycles` cycles on schedule would (retries after failures
        // come on top).
        let end =
            s.clock.now() + u64::from(self.cfg.cycles) * policy.crash_consistent_every_secs * 1000;
        while s.clock.now() < end {
            if s.violated() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1_000 + self.rng.next_u64() % 30_000)).await;
            // The mobility node crashes and is back an hour later: what it persisted (the
            // change log, the hash maps) survives; its scheduler and buffers do not.
            if self.chance(1) {
                tokio::time::sleep(Duration::from_millis(3_600_000)).await;
                sched = Scheduler::new(&policy, true);
                m.buffers = Arc::default();
                s.count(|r| r.mobility_restarts += 1);
            }
            let started = UnixMillis(s.clock.now());
            let Some(kind) = sched.poll(started) else {
                continue;
            };
            // What the applications wrote since the last cycle.
            // Half the writes come from the few contents the disk started with (dedup
            // everywhere), half from many (contents that come and go, so packs die).
            // Most writes land in a hot region (a database's busy pages, a log), so what one
            // cycle wrote is soon overwritten and its pack dies.
            for _ in 0..(self.rng.next_u64() % 60) {
                let at = self.rng.next_u64();
                let b = if at % 10 < 7 {
                    HOT_START + (at / 10 % HOT_BLOCKS) as usize
                } else {
                    (at / 10 % blocks as u64) as usize
                };
                let r = self.rng.next_u64();
                m.disk[b] = match r % 14 {
                    0 => 0,
                    1..=6 => 1 + (r / 14 % FIRST_PATTERNS) as u16,
                    _ => 1 + (r / 14 % PATTERNS as u64) as u16,
                };
            }
            if self.chance(30) {
                s.store.outage(self.rng.next_u64() % 600_000);
            }
            // Someone deletes the newest point behind everyone's back.
            if self.chance(15) {
                self.lose_newest_point().await;
            }
            match self.cycle(&mut m, cycle, kind).await {
                Ok(true) => sched.handle_done(started, kind),
                Ok(false) => sched.handle_failed(UnixMillis(s.clock.now()), self.rng.next_u64()),
                Err(v) => return s.violate(v),
            }
            // Only collection deletes blocks: their check follows each pass.
            s.check_vault(&format!("after cycle {cycle}"), false).await;
            cycle += 1;
        }
    }

    /// One cycle, through the daemon's cycle state machine (`actors::datapath::Cycle`): capture,
    /// the base, the daemon's scan, one process-server session, and the change log moved (or
    /// not) by its outcome. Returns whether a point committed.
    async fn cycle(
        &mut self,
        m: &mut Mobility,
        cycle: u32,
        kind: CycleKind,
    ) -> Result<bool, String> {
        let s = self.shared.clone();
        let captured = s.clock.now().max(m.last_capture + 1);
        m.last_capture = captured;
        let snapshot = m.disk.clone();
        if let Ok(mut t) = s.truth.lock() {
            t.insert(captured, snapshot.clone());
        }
        let present = vec![m
            .log
            .last_point
            .as_ref()
            .is_some_and(|p| m.maps.contains_key(p))];
        let session = vault::hex(&self.rng.next_u64().to_le_bytes().repeat(2));
        let mut cyc = Cycle::begin(&m.log, &present, session);
        let base = cyc.base().map(str::to_string);
        if base.is_none() && m.log.initial_done && !m.resync_pending {
            return Err(format!(
                "cycle {cycle}: a full copy although no base left the vault"
            ));
        }
        // The scan is the daemon's: its reader threads over a frozen view, its hashing, diff,
        // wire compression and batching.
        let old = base.as_ref().and_then(|b| m.maps.get(b)).cloned();
        let view = disk::View {
            values: snapshot.clone(),
            contents: s.blocks.clone(),
        };
        let (msgs, hashes) =
            disk::delta(view, &m.buffers, old).map_err(|e| format!("cycle {cycle}: {e}"))?;
        let header = DeltaHeader {
            session: cyc.session().to_string(),
            machine: s.machine,
            machine_name: "sim".into(),
            base: base.clone(),
            captured: UnixMillis(captured),
            consistency: if kind.app {
                Consistency::AppConsistent
            } else {
                Consistency::CrashConsistent
            },
            disks: vec![DiskInfo {
                name: "disk0".into(),
                size_bytes: (snapshot.len() * BLOCK) as u64,
                block_size: BLOCK as u32,
            }],
        };
        let cut_after = self
            .chance(40)
            .then(|| (self.rng.next_u64() % msgs.len() as u64) as usize);
        if cut_after.is_some() {
            s.count(|r| r.partitions += 1);
        }
        let mut src = MemStream {
            msgs,
            // Mostly a fast link; now and then a slow or throttled one, so sessions overlap
            // collection passes (the race the rescue protocol exists for).
            per_msg_ms: if self.chance(200) {
                10_000 + self.rng.next_u64() % 110_000
            } else {
                1 + self.rng.next_u64() % 50
            },
            cut_after,
        };
        cyc.handle_sent(&mut m.log);
        let answer = self.session(&mut m.ps, header, &mut src).await;
        match cyc.handle_reply(&mut m.log, answer) {
            CycleOutcome::Committed { point } => {
                m.maps.clear();
                m.maps.insert(point.clone(), hashes);
                if let Ok(mut a) = s.acknowledged.lock() {
                    a.insert(point, captured);
                }
                s.count(|r| r.committed += 1);
                m.resync_pending = false;
                Ok(true)
            }
            CycleOutcome::Reset(why) => {
                s.count(|r| {
                    r.failed += 1;
                    r.full_resyncs += 1;
                });
                m.maps.clear();
                m.resync_pending = true;
                let gone = base
                    .as_ref()
                    .is_some_and(|b| s.deleting.lock().is_ok_and(|d| d.contains(b)));
                if !gone {
                    return Err(format!(
                        "cycle {cycle}: a full resync although base {base:?} was never deleted: {why}"
                    ));
                }
                Ok(false)
            }
            CycleOutcome::Failed(_) => {
                s.count(|r| r.failed += 1);
                Ok(false)
            }
        }
    }

    /// One process-server session through the daemon's `run_session`, with the process server
    /// (re)opened after a crash, a crash at a random moment, and the answer lost on the way
    /// back (the mobility node crashed before it persisted it).
    async fn session(
        &mut self,
        ps: &mut Option<ProcessServer>,
        header: DeltaHeader,
        src: &mut MemStream,
    ) -> Result<lifeboat_protocol::message::PointSummary, PointFailure> {
        let s = self.shared.clone();
        let (state, v, spool) = match ps.as_ref() {
            Some(p) => p.clone(),
            None => {
                let v = Arc::new(s.open(self.rng.next_u64()).await);
                // Half the process servers keep segments in memory, half spill every one to
                // a spool whose disk fills up now and then.
                let full = if self.cfg.faults { 20 } else { 0 };
                let spool = Arc::new(SimSpool::new(self.rng.next_u64(), full));
                let in_memory = if self.rng.next_u64().is_multiple_of(2) {
                    4
                } else {
                    0
                };
                let state = Arc::new(PsState::with_spool(spool.clone(), 4, in_memory));
                let p = (state, v, spool);
                *ps = Some(p.clone());
                p
            }
        };
        let crash_at = self.chance(60).then(|| self.rng.next_u64() % 1_500);
        let session = run_session(&state, &v, NodeId([9; 10]), s.machine, header, src);
        let outcome = match crash_at {
            Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), session).await {
                Ok(o) => o,
                Err(_) => {
                    s.count(|r| r.ps_crashes += 1);
                    *ps = None;
                    return Err(PointFailure::Failed {
                        reason: "process server crashed".into(),
                    });
                }
            },
            None => session.await,
        };
        s.count(|r| r.spilled_segments += spool.take_writes());
        if let Some(leak) = spool_leak(&spool).await {
            s.violate(format!("a session left segment {leak} in the spool"));
        }
        match outcome {
            Ok(_) if self.chance(30) => Err(PointFailure::Failed {
                reason: "answer lost".into(),
            }),
            o => o,
        }
    }

    /// Deletes the newest point straight from the store (and says so).
    async fn lose_newest_point(&mut self) {
        let s = &self.shared;
        let keys = s.store.keys("points/");
        let Some(k) = keys.last() else { return };
        let id = k.rsplit('-').next().unwrap_or_default().to_string();
        if let Ok(mut d) = s.deleting.lock() {
            d.insert(id);
        }
        s.store.remove(k);
    }
}

/// The configuration node: retention and garbage collection on its own schedule and clock,
/// each pass followed by the checks. Crashes cut passes short; its clock steps.
async fn config_node(
    s: Arc<Shared>,
    seed: u64,
    cfg: DataPathConfig,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vault: Option<Vault> = None;
    let mut skew: i64 = 0;
    loop {
        let wait = Duration::from_millis(60_000 + rng.next_u64() % 600_000);
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if s.violated() {
            return;
        }
        let faults = cfg.faults;
        if faults && rng.next_u64() % 1000 < 40 {
            // An NTP step, within the grace period (collection is safe while the configuration
            // node's clock is within the grace period of the store's; the daemon's is an hour).
            skew = (rng.next_u64() % GRACE_MS) as i64 - (GRACE_MS / 2) as i64;
        }
        let now = (s.clock.now() as i64 + skew) as u64;
        let v = match vault.take() {
            Some(v) => v,
            None => s.open(rng.next_u64()).await,
        };
        let crash = faults && rng.next_u64() % 1000 < 80;
        let budget = Duration::from_millis(if crash {
            rng.next_u64() % 3_000
        } else {
            3_600_000
        });
        let pass = async {
            retention(&s, &v, now).await;
            v.gc(now, GRACE_MS).await
        };
        match tokio::time::timeout(budget, pass).await {
            Ok(Ok(rep)) => {
                s.count(|r| {
                    r.gc_passes += 1;
                    r.deleted_packs += rep.deleted_packs;
                });
                vault = Some(v);
            }
            Ok(Err(_)) => vault = Some(v),
            // Crashed mid-pass: the next pass starts from a fresh process.
            Err(_) => {}
        }
        s.check_vault("after a collection pass", true).await;
    }
}

/// The daemon's retention rule applied to the vault, then its promise checked.
async fn retention(s: &Shared, v: &Vault, now: u64) {
    let Ok(points) = v.list_points(Some(&s.machine)).await else {
        return;
    };
    let ages: Vec<PointAge> = points
        .iter()
        .map(|p| PointAge {
            id: p.id.clone(),
            captured: p.captured,
            consistency: p.consistency,
        })
        .collect();
    let drop: BTreeSet<String> = thin(&ages, UnixMillis(now), RETENTION_SECS)
        .into_iter()
        .collect();
    let newest = points.iter().map(|p| p.captured.0).max();
    for p in &points {
        let promised =
            Some(p.captured.0) == newest || now.saturating_sub(p.captured.0) <= KEEP_ALL_MS;
        if drop.contains(&p.id) {
            if promised {
                s.violate(format!(
                    "retention deletes point {} although the policy promises to keep it",
                    p.id
                ));
                return;
            }
            if let Ok(mut d) = s.deleting.lock() {
                d.insert(p.id.clone());
            }
            if v.delete_point(p).await.is_ok() {
                s.count(|r| r.retention_deleted += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
