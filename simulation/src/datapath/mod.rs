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
mod config;
mod disk;
mod mobility;
pub mod spool;

use blobs::{CleanView, SimBlobStore, SimClock, StoreFaults};
use config::config_node;
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
}

#[cfg(test)]
mod tests;
