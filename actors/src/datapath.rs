//! Decisions of the replication data path, sans-IO, shared by the daemon (`node::replication`)
//! and the simulation (`simulation::datapath`):
//!
//! - [`ChangeLog`] (mobility side): which committed point a delta is relative to, and when the
//!   change log may move. The durability rule: it moves only after the process server says the
//!   point is committed ([`ChangeLog::handle_committed`]); a failed cycle leaves it where it was,
//!   so the next delta still carries every change since the last committed point; a base the
//!   vault lost ([`PointFailure::BaseUnknown`]) resets it, and the next cycle sends everything.
//! - [`plan_chunks`] (process-server side): which manifest chunks of the base point a new point
//!   may share (no block of the chunk changed, same geometry) and which must be written anew.

use lifeboat_protocol::message::PointFailure;
use lifeboat_protocol::vault::{BlockId, CHUNK_ENTRIES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The mobility node's change log: the last committed point, whose per-block hashes the node
/// keeps (`hashes/<point>/`), and whether the initial copy is done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeLog {
    /// The last point the process server said is committed.
    pub last_point: Option<String>,
    /// The initial full copy is committed.
    pub initial_done: bool,
}

/// What the shell must do when a point is committed, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advance {
    /// Persist the cycle's hash maps under the new point, switch the log to it (one atomic
    /// write), then drop the maps of every other point.
    To(String),
}

impl ChangeLog {
    /// The base of the next delta: the last committed point if a hash map of it is present for
    /// every disk (`maps`), else none (a full copy).
    pub fn base(&self, maps: &[bool]) -> Option<String> {
        self.last_point
            .clone()
            .filter(|_| maps.iter().all(|present| *present))
    }

    /// The delta of candidate `point` was sent whole; its commit is not known yet. The log
    /// stays (it moves on [`ChangeLog::handle_committed`] only).
    pub fn handle_sent(&mut self, point: &str) {
        if crate::plant::active(crate::plant::Plant::AdvanceBeforeCommit) {
            self.handle_committed(point);
        }
    }

    /// The process server committed `point`: the log moves to it.
    pub fn handle_committed(&mut self, point: &str) -> Advance {
        self.last_point = Some(point.to_string());
        self.initial_done = true;
        Advance::To(point.to_string())
    }

    /// A cycle failed with `f`. Returns true if the log was reset (the shell drops every hash
    /// map and persists the log): only when the base is unknown to the vault. Any other failure
    /// leaves the log where it was.
    pub fn handle_failed(&mut self, f: &PointFailure) -> bool {
        if let PointFailure::BaseUnknown { .. } = f {
            self.last_point = None;
            return true;
        }
        false
    }
}

/// Picks the process server of a cycle: the protection's preferred one if it is connected,
/// else the first connected one (the list is the members the configuration node granted the
/// role, never what a peer says of itself).
pub fn pick_process_server(
    preferred: Option<lifeboat_protocol::NodeId>,
    connected: &[lifeboat_protocol::NodeId],
) -> Option<lifeboat_protocol::NodeId> {
    preferred
        .filter(|p| connected.contains(p))
        .or_else(|| connected.first().copied())
}

/// One replication cycle of the mobility side, between the view and the process server's
/// answer. The shell (the daemon's `mobility::cycle`, the simulation's) drives it:
///
/// 1. [`Cycle::begin`] with the change log and which hash maps of its point are present:
///    the base of the delta ([`Cycle::base`]; `None` is a full copy, and the shell must then
///    compare with no map at all).
/// 2. The shell scans ([`DiskScan`]) and sends; [`Cycle::handle_sent`] when the stream was
///    finished whole.
/// 3. [`Cycle::handle_reply`] with the process server's answer (or the failure to get one):
///    the [`CycleOutcome`] says what the shell must persist, in order.
#[derive(Debug)]
pub struct Cycle {
    base: Option<String>,
    session: String,
    sent: bool,
}

/// What the shell must do after a cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CycleOutcome {
    /// The point committed: persist the cycle's hash maps under `point`, then the change log
    /// (one atomic write: it has moved to `point`), then drop every other point's maps.
    Committed {
        /// The new point.
        point: String,
    },
    /// The vault lost the base: drop every hash map and persist the change log (reset); the
    /// next cycle is a full copy.
    Reset(String),
    /// Anything else: nothing moves; every change not yet in a committed point is found again
    /// by the next cycle.
    Failed(String),
}

impl Cycle {
    /// Starts a cycle of session `session` against `log`, whose point's hash map is present
    /// for each disk as `maps` says.
    pub fn begin(log: &ChangeLog, maps: &[bool], session: String) -> Cycle {
        Cycle {
            base: log.base(maps),
            session,
            sent: false,
        }
    }

    /// The base of the delta (`None`: a full copy).
    pub fn base(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// The session id (the candidate point until it commits).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The delta was sent whole; its commit is not known yet.
    pub fn handle_sent(&mut self, log: &mut ChangeLog) {
        self.sent = true;
        log.handle_sent(&self.session);
    }

    /// The process server's answer (or `Err` with why there is none). A committed point
    /// whose id is malformed, or an answer to a delta that was never sent whole, moves nothing.
    pub fn handle_reply(
        self,
        log: &mut ChangeLog,
        reply: Result<lifeboat_protocol::message::PointSummary, PointFailure>,
    ) -> CycleOutcome {
        match reply {
            Ok(s) if !self.sent => CycleOutcome::Failed(format!(
                "point {} reported committed before its delta was sent",
                s.id
            )),
            Ok(s) if lifeboat_protocol::vault::from_hex::<16>(&s.id).is_none() => {
                CycleOutcome::Failed("process server returned an invalid point id".into())
            }
            Ok(s) => {
                let Advance::To(point) = log.handle_committed(&s.id);
                CycleOutcome::Committed { point }
            }
            Err(f) => {
                let why = f.to_string();
                if log.handle_failed(&f) {
                    CycleOutcome::Reset(why)
                } else {
                    CycleOutcome::Failed(why)
                }
            }
        }
    }
}

/// One chunk of a new point's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkPlan {
    /// The base point's chunk, shared as it is.
    Shared(BlockId),
    /// A new chunk of the ids `[start, end)` of the disk.
    New {
        /// First block.
        start: usize,
        /// One past the last block.
        end: usize,
    },
}

/// The base disk a new manifest may share chunks with.
#[derive(Clone, Copy, Debug)]
pub struct BaseDisk<'a> {
    /// Its size, bytes.
    pub size_bytes: u64,
    /// Its block size.
    pub block_size: u32,
    /// Its chunk ids.
    pub chunks: &'a [BlockId],
}

/// Plans the chunks of a disk of `blocks` blocks (`size_bytes`, `block_size`) whose blocks in
/// the chunks numbered `touched` changed since `base`. A base chunk is shared only when the
/// geometry is the same and no block of it changed; every other chunk is written anew.
pub fn plan_chunks(
    base: Option<BaseDisk<'_>>,
    size_bytes: u64,
    block_size: u32,
    blocks: usize,
    touched: &BTreeSet<usize>,
) -> Vec<ChunkPlan> {
    let same_geometry =
        base.is_some_and(|b| b.size_bytes == size_bytes && b.block_size == block_size);
    (0..blocks.div_ceil(CHUNK_ENTRIES))
        .map(|k| {
            let shared = base
                .and_then(|b| b.chunks.get(k))
                .filter(|_| same_geometry && !touched.contains(&k));
            match shared {
                Some(id) => ChunkPlan::Shared(*id),
                None => ChunkPlan::New {
                    start: k * CHUNK_ENTRIES,
                    end: ((k + 1) * CHUNK_ENTRIES).min(blocks),
                },
            }
        })
        .collect()
}

/// True if block `i` (hash `hash`, all zero or not) changed since the base whose per-block
/// hashes are `old`. With no base (the initial copy) unsent blocks are zero at the process
/// server, so only non-zero blocks count as changed.
pub fn block_changed(old: Option<&[[u8; 32]]>, i: usize, hash: &[u8; 32], zero: bool) -> bool {
    match old {
        Some(o) => o.get(i) != Some(hash),
        None => !zero,
    }
}

/// Cuts a disk's changed blocks into `DeltaBlocks` batches: a batch goes when it holds
/// `max_blocks` blocks or `max_bytes` of payload, or when the stream has been quiet for
/// `keepalive_ms` (then even an empty batch goes, so a long scan of an unchanged disk still
/// tells the process server it is alive). Times are the caller's monotonic milliseconds.
#[derive(Debug)]
pub struct Batcher {
    blocks: Vec<lifeboat_protocol::message::DeltaBlock>,
    bytes: usize,
    last_send_ms: u64,
    max_blocks: usize,
    max_bytes: usize,
    keepalive_ms: u64,
}

impl Batcher {
    /// An empty batcher at `now_ms`.
    pub fn new(now_ms: u64, max_blocks: usize, max_bytes: usize, keepalive_ms: u64) -> Self {
        Batcher {
            blocks: Vec::new(),
            bytes: 0,
            last_send_ms: now_ms,
            max_blocks,
            max_bytes,
            keepalive_ms,
        }
    }

    fn take(&mut self, now_ms: u64) -> Vec<lifeboat_protocol::message::DeltaBlock> {
        self.bytes = 0;
        self.last_send_ms = now_ms;
        std::mem::take(&mut self.blocks)
    }

    /// A changed block with `payload` bytes on the wire; returns the batch to send, if due.
    pub fn handle_changed(
        &mut self,
        b: lifeboat_protocol::message::DeltaBlock,
        payload: usize,
        now_ms: u64,
    ) -> Option<Vec<lifeboat_protocol::message::DeltaBlock>> {
        self.blocks.push(b);
        self.bytes += payload;
        let due = self.blocks.len() >= self.max_blocks
            || self.bytes >= self.max_bytes
            || now_ms.saturating_sub(self.last_send_ms) > self.keepalive_ms;
        due.then(|| self.take(now_ms))
    }

    /// An unchanged block; returns a batch (possibly empty) when the stream has been quiet for
    /// the keepalive period.
    pub fn handle_unchanged(
        &mut self,
        now_ms: u64,
    ) -> Option<Vec<lifeboat_protocol::message::DeltaBlock>> {
        (now_ms.saturating_sub(self.last_send_ms) > self.keepalive_ms).then(|| self.take(now_ms))
    }

    /// The last batch, if it holds anything.
    pub fn finish(mut self) -> Option<Vec<lifeboat_protocol::message::DeltaBlock>> {
        (!self.blocks.is_empty()).then(|| self.take(0))
    }
}

/// zstd level of blocks compressed at the source: the fastest, so the protected machine spends
/// little CPU and the network and the process server carry the block once, small.
pub const WIRE_ZSTD_LEVEL: i32 = 1;

/// One disk's scan, fed its blocks in order by the shell (the daemon's read-ahead threads, the
/// simulation's disk in memory): each block is hashed (BLAKE3) and compared with the base's
/// hash ([`block_changed`]); a changed block is compressed for the wire (all-zero ones go as
/// markers) and batched ([`Batcher`]). The new hash map is what the change log moves to once
/// the point commits.
#[derive(Debug)]
pub struct DiskScan {
    old: Option<Vec<[u8; 32]>>,
    hashes: Vec<[u8; 32]>,
    batcher: Batcher,
    block_size: usize,
    zero_hash: [u8; 32],
    sent: u64,
}

/// What one block did.
#[derive(Debug)]
pub struct Scanned {
    /// It changed since the base (it is in the delta).
    pub changed: bool,
    /// A batch due to be sent.
    pub batch: Option<Vec<lifeboat_protocol::message::DeltaBlock>>,
}

/// A finished scan.
#[derive(Debug)]
pub struct ScanDone {
    /// The last batch, if it holds anything.
    pub batch: Option<Vec<lifeboat_protocol::message::DeltaBlock>>,
    /// Every block's hash: the disk's map once the point commits.
    pub hashes: Vec<[u8; 32]>,
    /// Blocks in the delta.
    pub sent: u64,
}

impl DiskScan {
    /// A scan of a disk of `blocks` blocks of `block_size` against the base's hashes `old`
    /// (`None`: a full copy), batching as `batcher` does.
    pub fn new(
        blocks: usize,
        block_size: u32,
        old: Option<Vec<[u8; 32]>>,
        batcher: Batcher,
    ) -> Self {
        let bs = block_size as usize;
        DiskScan {
            old,
            hashes: Vec::with_capacity(blocks),
            batcher,
            block_size: bs,
            zero_hash: *blake3::hash(&vec![0u8; bs]).as_bytes(),
            sent: 0,
        }
    }

    /// Blocks seen so far (the index of the next one).
    pub fn seen(&self) -> usize {
        self.hashes.len()
    }

    /// Blocks up to `i` (exclusive) are unchanged since the base (change tracking says so):
    /// their hashes are the base's, and they are not read. Without a base (a full copy)
    /// nothing can be skipped, and this does nothing.
    pub fn skip_to(&mut self, i: usize) {
        let from = self.hashes.len();
        if let Some(old) = &self.old {
            if from < i {
                self.hashes.extend_from_slice(&old[from..i.min(old.len())]);
            }
        }
    }

    /// The next block's bytes (short only at the end of the disk), at the shell's monotonic
    /// `now_ms`.
    pub fn handle_block(&mut self, data: &[u8], now_ms: u64) -> Scanned {
        use lifeboat_protocol::vault;
        let i = self.hashes.len();
        // One zero check per block; a full-size zero block's hash is a constant.
        let zero = vault::is_zero_block(data);
        let h = if zero && data.len() == self.block_size {
            self.zero_hash
        } else {
            *blake3::hash(data).as_bytes()
        };
        let changed = block_changed(self.old.as_deref(), i, &h, zero);
        self.hashes.push(h);
        let batch = if changed {
            self.sent += 1;
            let (payload, zstd) = if zero {
                (None, false)
            } else {
                let (mode, p) = vault::encode_block(data, WIRE_ZSTD_LEVEL);
                (
                    Some(serde_bytes::ByteBuf::from(p.into_owned())),
                    mode == vault::MODE_ZSTD,
                )
            };
            let len = payload.as_ref().map_or(0, |p| p.len());
            let b = lifeboat_protocol::message::DeltaBlock {
                index: i as u64,
                data: payload,
                zstd,
            };
            self.batcher.handle_changed(b, len, now_ms)
        } else {
            self.batcher.handle_unchanged(now_ms)
        };
        Scanned { changed, batch }
    }

    /// The end of the disk.
    pub fn finish(self) -> ScanDone {
        ScanDone {
            batch: self.batcher.finish(),
            hashes: self.hashes,
            sent: self.sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_moves_only_on_commit_and_resets_only_when_the_base_is_unknown() {
        let mut log = ChangeLog::default();
        assert_eq!(log.base(&[true]), None, "nothing committed: a full copy");
        assert_eq!(log.handle_committed("p1"), Advance::To("p1".into()));
        assert_eq!(log.base(&[true, true]), Some("p1".into()));
        assert_eq!(log.base(&[true, false]), None, "a missing map: a full copy");
        let failed = PointFailure::Failed {
            reason: "vault down".into(),
        };
        assert!(!log.handle_failed(&failed));
        assert_eq!(
            log.base(&[true]),
            Some("p1".into()),
            "a failure keeps the base"
        );
        assert!(log.handle_failed(&PointFailure::BaseUnknown {
            detail: "gone".into()
        }));
        assert_eq!(log.base(&[true]), None);
        assert!(log.initial_done, "the initial copy stays done");
    }

    #[test]
    fn a_cycle_moves_the_log_only_on_a_well_formed_commit_of_a_sent_delta() {
        use lifeboat_protocol::message::PointSummary;
        use lifeboat_protocol::NodeId;
        let summary = |id: &str| PointSummary {
            id: id.into(),
            machine: NodeId([2; 10]),
            captured: lifeboat_protocol::UnixMillis(1),
            committed: lifeboat_protocol::UnixMillis(2),
            consistency: lifeboat_protocol::vault::Consistency::CrashConsistent,
            stats: Default::default(),
            process_server: NodeId([1; 10]),
        };
        let good = "00112233445566778899aabbccddeeff";
        let mut log = ChangeLog::default();
        let c = Cycle::begin(&log, &[true], "s1".into());
        assert_eq!(c.base(), None, "nothing committed: a full copy");
        assert!(
            matches!(
                c.handle_reply(&mut log, Ok(summary(good))),
                CycleOutcome::Failed(_)
            ),
            "an answer to a delta never sent whole"
        );
        assert_eq!(log.last_point, None);
        let mut c = Cycle::begin(&log, &[true], "s2".into());
        c.handle_sent(&mut log);
        assert!(matches!(
            c.handle_reply(&mut log, Ok(summary("zz"))),
            CycleOutcome::Failed(_)
        ));
        assert_eq!(log.last_point, None, "a malformed id moves nothing");
        let mut c = Cycle::begin(&log, &[true], "s3".into());
        c.handle_sent(&mut log);
        assert_eq!(
            c.handle_reply(&mut log, Ok(summary(good))),
            CycleOutcome::Committed { point: good.into() }
        );
        let mut c = Cycle::begin(&log, &[true], "s4".into());
        assert_eq!(c.base(), Some(good));
        c.handle_sent(&mut log);
        let lost = PointFailure::BaseUnknown {
            detail: "gone".into(),
        };
        assert!(matches!(
            c.handle_reply(&mut log, Err(lost)),
            CycleOutcome::Reset(_)
        ));
        assert_eq!(Cycle::begin(&log, &[true], "s5".into()).base(), None);
    }

    #[test]
    fn the_preferred_process_server_is_used_only_while_connected() {
        use lifeboat_protocol::NodeId;
        let (a, b) = (NodeId([1; 10]), NodeId([2; 10]));
        assert_eq!(pick_process_server(Some(b), &[a, b]), Some(b));
        assert_eq!(pick_process_server(Some(b), &[a]), Some(a));
        assert_eq!(pick_process_server(None, &[]), None);
    }

    #[test]
    fn only_untouched_chunks_of_the_same_geometry_are_shared() {
        let base_chunks = [BlockId([1; 32]), BlockId([2; 32]), BlockId([3; 32])];
        let blocks = 2 * CHUNK_ENTRIES + 5;
        let size = blocks as u64 * 4096;
        let base = BaseDisk {
            size_bytes: size,
            block_size: 4096,
            chunks: &base_chunks,
        };
        let touched: BTreeSet<usize> = [1].into_iter().collect();
        let plan = plan_chunks(Some(base), size, 4096, blocks, &touched);
        assert_eq!(
            plan,
            vec![
                ChunkPlan::Shared(base_chunks[0]),
                ChunkPlan::New {
                    start: CHUNK_ENTRIES,
                    end: 2 * CHUNK_ENTRIES
                },
                ChunkPlan::Shared(base_chunks[2]),
            ]
        );
        // The disk grew: nothing is shared.
        let grown = plan_chunks(Some(base), size + 4096, 4096, blocks + 1, &BTreeSet::new());
        assert!(grown.iter().all(|c| matches!(c, ChunkPlan::New { .. })));
        assert_eq!(
            grown.last(),
            Some(&ChunkPlan::New {
                start: 2 * CHUNK_ENTRIES,
                end: blocks + 1
            })
        );
    }

    #[test]
    fn batches_close_on_count_bytes_or_quiet_and_the_rest_goes_at_the_end() {
        use lifeboat_protocol::message::DeltaBlock;
        let blk = |i| DeltaBlock {
            index: i,
            data: None,
            zstd: false,
        };
        let mut b = Batcher::new(0, 3, 100, 30_000);
        assert!(b.handle_changed(blk(0), 10, 1).is_none());
        assert!(b.handle_changed(blk(1), 10, 2).is_none());
        assert_eq!(b.handle_changed(blk(2), 10, 3).map(|v| v.len()), Some(3));
        assert_eq!(
            b.handle_changed(blk(3), 200, 4).map(|v| v.len()),
            Some(1),
            "bytes"
        );
        assert!(b.handle_unchanged(30_004).is_none());
        assert_eq!(b.handle_unchanged(30_005), Some(vec![]), "keepalive");
        assert!(b.handle_changed(blk(4), 1, 30_006).is_none());
        assert_eq!(b.finish().map(|v| v[0].index), Some(4));
        assert!(Batcher::new(0, 3, 100, 1).finish().is_none());
    }

    #[test]
    fn a_block_changed_if_its_hash_differs_or_on_the_initial_copy_if_not_zero() {
        let old = [[1u8; 32], [2u8; 32]];
        assert!(!block_changed(Some(&old), 0, &[1; 32], false));
        assert!(block_changed(Some(&old), 1, &[1; 32], false));
        assert!(
            block_changed(Some(&old), 2, &[1; 32], true),
            "beyond the old end"
        );
        assert!(block_changed(None, 0, &[1; 32], false));
        assert!(!block_changed(None, 0, &[0; 32], true));
    }
}
