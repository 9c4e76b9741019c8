//! Process-server side: receives a replication stream, spools it to local disk, and turns it
//! into a recovery point: block ids, dedup against the vault, zstd + AES-GCM sealing, packs of
//! megabytes, manifest chunks, and the point committed with create-if-absent. Only then is the
//! mobility node told `PointCommitted` (end-to-end acknowledgement: until then it keeps the
//! changes) and the configuration node `PointNotice`.
//!
//! The spool is a bounded FIFO of segment files (`spool/<session>-<n>.seg`): the receiver
//! appends, the processor consumes and deletes. When the spool is full the receiver stops
//! reading, so QUIC flow control pushes back on the mobility node; nothing is dropped. During a
//! vault outage uploads retry with capped backoff while the spool absorbs what it can. The spool
//! is a performance buffer, not a durability boundary: a process server that dies loses only
//! work the mobility node will send again.

mod actor;
mod pack;
mod session;
mod spool;

use super::Repl;
use crate::transport::{FrameReader, FrameWriter};
use crate::vault::Vault;
pub use actor::{Admit, Drain, Health, ProcessServerActor, SetThrottle, Ticket, MAX_SESSIONS};
use lifeboat_actors::datapath;
use lifeboat_actors::seams::{MessageSource, Spool};
use lifeboat_protocol::message::{DeltaHeader, PointFailure, PointSummary};
use lifeboat_protocol::vault::{
    self, BlockId, DiskRecord, PackBuilder, PointRecord, PointStats, CHUNK_ENTRIES, MAX_BLOCK_SIZE,
    VAULT_FORMAT,
};
use lifeboat_protocol::{Message, NodeId};
use pack::{process, Processed};
use serde::{Deserialize, Serialize};
pub use session::run_session;
pub use spool::DirSpool;
use spool::{receive, Segment, SegmentData, SpoolRecord};
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Bytes per spool segment.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Pack size target.
pub const PACK_BYTES: usize = 8 << 20;
/// zstd level for blocks (fast; the CPU budget goes to hashing and sealing).
pub const ZSTD_LEVEL: i32 = 1;
/// Room reserved for a pack: it closes at the first block that takes it past [`PACK_BYTES`]
/// (blocks of up to 2 MiB fit without a reallocation).
const PACK_ROOM: usize = PACK_BYTES + (2 << 20);
/// Pack uploads a session keeps in flight.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Largest disk accepted (64 TiB).
const MAX_DISK_BYTES: u64 = 64 << 40;
/// Most disks per machine.
const MAX_DISKS: usize = 64;
/// Most blocks per session (bounds the manifest kept in memory: 32 bytes per block, 512 MiB
/// at this bound; 1 TiB of disk at 64 KiB blocks; bigger disks take bigger blocks).
const MAX_SESSION_BLOCKS: u64 = 1 << 24;

/// Process-server state and counters.
#[derive(Debug)]
pub struct PsState {
    /// Where segments beyond the memory budget wait.
    spool: Arc<dyn Spool>,
    /// Spool budget in segments.
    budget: Arc<Semaphore>,
    /// Segments that may wait in memory instead of the spool directory.
    mem_budget: Arc<Semaphore>,
    /// Segments allowed in total.
    pub spool_segments: usize,
    /// Bytes currently spooled.
    pub spooled_bytes: AtomicU64,
    /// Sealed bytes uploaded since start.
    pub uploaded_bytes: AtomicU64,
    /// Points committed since start.
    pub points: AtomicU64,
    /// Unix ms of the oldest unprocessed segment (0 = none).
    pub backlog_since: AtomicU64,
    /// Upload failures since start (vault outages).
    pub upload_failures: AtomicU64,
    /// Bytes of packs being uploaded right now.
    pub uploading_bytes: AtomicU64,
    /// Upload bandwidth policy (persisted in `throttle.json`).
    pub throttle: std::sync::Mutex<Option<lifeboat_actors::replication::Throttle>>,
    /// Token bucket enforcing it.
    bucket: tokio::sync::Mutex<lifeboat_actors::replication::TokenBucket>,
}

impl PsState {
    /// Creates the spool (removing segments of sessions that died with a previous process).
    pub fn new(
        dir: &lifeboat_config::StateDir,
        max_bytes: u64,
        memory_bytes: u64,
    ) -> Result<Self, String> {
        let spool = Arc::new(DirSpool::open(dir.root.join("spool"))?);
        let segs = (max_bytes / SEGMENT_BYTES).max(2) as usize;
        let throttle = super::load(&dir.root.join("throttle.json"))?;
        Ok(PsState::with(
            spool,
            segs,
            (memory_bytes / SEGMENT_BYTES) as usize,
            throttle,
        ))
    }

    /// A process server over `spool` with room for `segments` of [`SEGMENT_BYTES`], of which
    /// `in_memory` wait in memory: the simulation's.
    pub fn with_spool(spool: Arc<dyn Spool>, segments: usize, in_memory: usize) -> Self {
        PsState::with(spool, segments.max(2), in_memory, None)
    }

    fn with(
        spool: Arc<dyn Spool>,
        segments: usize,
        in_memory: usize,
        throttle: Option<lifeboat_actors::replication::Throttle>,
    ) -> Self {
        PsState {
            spool,
            budget: Arc::new(Semaphore::new(segments)),
            mem_budget: Arc::new(Semaphore::new(in_memory)),
            spool_segments: segments,
            spooled_bytes: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            points: AtomicU64::new(0),
            backlog_since: AtomicU64::new(0),
            upload_failures: AtomicU64::new(0),
            uploading_bytes: AtomicU64::new(0),
            throttle: std::sync::Mutex::new(throttle),
            bucket: tokio::sync::Mutex::new(Default::default()),
        }
    }

    /// Segments in use.
    pub fn segments_in_use(&self) -> usize {
        self.spool_segments - self.budget.available_permits()
    }
}

/// Why a session failed, as the mobility node must act on it.
#[derive(Debug)]
enum SessionError {
    /// The base point is not usable: the mobility node must resync.
    BaseUnknown(String),
    /// The header is not acceptable.
    Invalid(String),
    /// Anything else: retry later.
    Failed(String),
}

impl From<String> for SessionError {
    fn from(s: String) -> Self {
        SessionError::Failed(s)
    }
}

impl From<&str> for SessionError {
    fn from(s: &str) -> Self {
        SessionError::Failed(s.to_string())
    }
}

impl From<SessionError> for PointFailure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::BaseUnknown(detail) => PointFailure::BaseUnknown { detail },
            SessionError::Invalid(reason) => PointFailure::Refused { reason },
            SessionError::Failed(reason) => PointFailure::Failed { reason },
        }
    }
}

fn validate(h: &DeltaHeader, from: NodeId) -> Result<(), String> {
    if h.machine != from {
        return Err("a mobility node may only replicate its own machine".into());
    }
    if h.disks.is_empty() || h.disks.len() > MAX_DISKS {
        return Err(format!("{} disks (1..={MAX_DISKS} allowed)", h.disks.len()));
    }
    if vault::from_hex::<16>(&h.session).is_none() {
        return Err("invalid session id".into());
    }
    let total: u64 = h
        .disks
        .iter()
        .map(|d| d.size_bytes.div_ceil(d.block_size.max(1) as u64))
        .sum();
    if total > MAX_SESSION_BLOCKS {
        return Err(format!(
            "{total} blocks exceed the {MAX_SESSION_BLOCKS} a session may carry; protect with a larger --block-size"
        ));
    }
    for d in &h.disks {
        if !super::valid_disk_name(&d.name) {
            return Err(format!("invalid disk name {:?}", d.name));
        }
        if d.block_size < 4096 || d.block_size > MAX_BLOCK_SIZE || !d.block_size.is_power_of_two() {
            return Err(format!("invalid block size {}", d.block_size));
        }
        if d.size_bytes == 0 || d.size_bytes > MAX_DISK_BYTES {
            return Err(format!("invalid disk size {}", d.size_bytes));
        }
    }
    Ok(())
}

/// Serves one replication stream whose first frame was `DeltaBegin(header)`.
pub async fn serve(
    repl: Arc<Repl>,
    from: NodeId,
    header: DeltaHeader,
    mut w: FrameWriter,
    mut r: FrameReader,
) {
    let mut ticket = match repl.ps_actor.send(Admit).await {
        Ok(Ok(t)) => t,
        Ok(Err(reason)) => return refuse(w, reason).await,
        Err(_) => return refuse(w, "this process server is shutting down".into()).await,
    };
    let ps = ticket.ps.clone();
    let outcome = match repl.open_vault().await {
        Ok(Some(vault)) => {
            tokio::select! {
                out = run_session(&ps, &vault, repl.local, from, header, &mut r) => out,
                // Shutting down past the drain's grace period: the session is abandoned
                // (nothing was acknowledged; the mobility node sends it again).
                _ = ticket.stopped() => Err(PointFailure::Failed {
                    reason: "the process server is shutting down".into(),
                }),
            }
        }
        Ok(None) => Err(PointFailure::Failed {
            reason: "this process server has no vault yet (create one on the configuration node)"
                .into(),
        }),
        Err(e) => Err(PointFailure::Failed {
            reason: format!("vault unavailable: {e}"),
        }),
    };
    let reply = match outcome {
        Ok(summary) => {
            repl.tell_authorities(Message::PointNotice(summary.clone()))
                .await;
            Message::PointCommitted(summary)
        }
        Err(failure) => {
            tracing::warn!(machine = %from, reason = %failure, "replication session failed");
            Message::PointFailed(failure)
        }
    };
    drop(ticket);
    if w.send(reply).await.is_ok() {
        w.finish();
    }
}

/// Answers a stream this process server does not take now (the mobility node retries later,
/// with the same base).
async fn refuse(mut w: FrameWriter, reason: String) {
    tracing::debug!(cause = %reason, "replication session refused");
    if w.send(Message::PointFailed(PointFailure::Failed { reason }))
        .await
        .is_ok()
    {
        w.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::pack::seal_segment;
    use super::*;
    use lifeboat_protocol::vault::DataKey;
    use lifeboat_protocol::UnixMillis;

    fn text(len: usize) -> Vec<u8> {
        (0..len as u32)
            .flat_map(|i| format!("{i} lifeboat vault ").into_bytes())
            .take(len)
            .collect()
    }

    fn rec(index: u64, data: &[u8], zstd: bool) -> SpoolRecord {
        SpoolRecord {
            disk: 0,
            index,
            data: Some(serde_bytes::ByteBuf::from(data.to_vec())),
            zstd,
        }
    }

    #[tokio::test]
    async fn blocks_compressed_at_the_source_are_verified_and_stored_once() {
        let store: Arc<dyn lifeboat_actors::seams::BlobStore> =
            Arc::new(crate::vault::ObjectBlobStore::new(
                Arc::new(object_store::memory::InMemory::new()),
                None,
            ));
        let key = DataKey::from_master([3; 32]);
        Vault::create(store.clone(), "t", &key, UnixMillis(0))
            .await
            .unwrap();
        let v = Vault::open(store, key.clone()).await.unwrap();
        let block = text(65536);
        let (mode, z) = vault::encode_block(&block, 1);
        assert_eq!(mode, vault::MODE_ZSTD);
        let geometry = [(3 * 65536u64, 65536u32)];
        let pending = std::sync::RwLock::default();
        // The same block compressed and raw: one id, stored once, opens to the plaintext.
        let recs = SegmentData::Mem(vec![rec(0, &z, true), rec(1, &block, false)]);
        let out = seal_segment(&v, &geometry, &recs, &pending).unwrap();
        assert_eq!(out[0].2, key.block_id(&block));
        assert_eq!(out[1].2, out[0].2);
        assert_eq!(out[0].4, 65536, "raw length is counted, not wire length");
        let blob = out[0].3.as_ref().expect("new block sealed");
        assert!(out[1].3.is_none(), "second copy deduplicated");
        assert!(blob.len() < block.len() / 4, "stored compressed, as sent");
        assert_eq!(key.open_block(&out[0].2, blob, 65536).unwrap(), block);

        // A frame that inflates to the wrong length, or past the block, is refused.
        let (_, short) = vault::encode_block(&block[..60000], 1);
        let e = seal_segment(
            &v,
            &geometry,
            &SegmentData::Mem(vec![rec(2, &short, true)]),
            &pending,
        )
        .unwrap_err();
        assert!(e.contains("decompressed to 60000 bytes"), "{e}");
        let big = text(1 << 20);
        let (_, bomb) = vault::encode_block(&big, 1);
        assert!(seal_segment(
            &v,
            &geometry,
            &SegmentData::Mem(vec![rec(2, &bomb, true)]),
            &pending
        )
        .is_err());
        assert!(seal_segment(
            &v,
            &geometry,
            &SegmentData::Mem(vec![rec(2, b"junk", true)]),
            &pending
        )
        .is_err());
    }
}
