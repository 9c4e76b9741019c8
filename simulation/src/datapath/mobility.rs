//! The mobility node and its process server, cycle after cycle: the daemon's scheduler, the
//! applications writing, the cycle state machine (`actors::datapath::Cycle`), the daemon's
//! scanner over a frozen view, and one process-server session through the daemon's
//! `run_session`, with crashes, lost answers, slow links and partitions.

use super::*;

/// The mobility node's state between cycles.
pub(super) struct Mobility {
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

impl World {
    /// The mobility node and its process server, cycle after cycle.
    pub(super) async fn mobility(&mut self) {
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
        let outcome = cyc.handle_reply(&mut m.log, answer);
        self.settle(m, cycle, outcome, base, (captured, hashes))
    }

    /// What the mobility node does with a cycle's outcome (the daemon's order: the maps of the
    /// new point, then the log; or the maps dropped), and the checks on it.
    fn settle(
        &mut self,
        m: &mut Mobility,
        cycle: u32,
        outcome: CycleOutcome,
        base: Option<String>,
        (captured, hashes): (u64, Vec<[u8; 32]>),
    ) -> Result<bool, String> {
        let s = self.shared.clone();
        match outcome {
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
