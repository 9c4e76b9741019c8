//! The processor: spool segments to sealed blocks (id, dedup, zstd if not yet, AES-GCM), packs
//! uploaded under the bandwidth policy with leases, and the manifest of the new point.

use super::*;
use rand::RngCore;
use session::retry_forever;

/// Consumes segments: ids, dedup, sealing, packing, upload. Returns the new id vectors.
pub(super) async fn process(
    ps: Arc<PsState>,
    vault: Arc<Vault>,
    h: DeltaHeader,
    ids: Vec<Vec<BlockId>>,
    mut rx: mpsc::Receiver<Segment>,
) -> Result<Processed, String> {
    let geometry: Vec<(u64, u32)> = h
        .disks
        .iter()
        .map(|d| (d.size_bytes, d.block_size))
        .collect();
    let mut p = Packer {
        out: Processed {
            touched: vec![Default::default(); ids.len()],
            ids,
            stats: PointStats::default(),
            packs: BTreeSet::new(),
        },
        pack: PackBuilder::with_capacity(PACK_ROOM),
        pending: Arc::default(),
        inflight: Default::default(),
        ps: ps.clone(),
        vault: vault.clone(),
    };
    let mut failure: Option<String> = None;
    while let Some(seg) = rx.recv().await {
        if failure.is_some() {
            // Keep draining so the receiver never blocks on a dead processor.
            continue;
        }
        let (v, geometry) = (vault.clone(), geometry.clone());
        let bytes = seg.bytes;
        let sealed = {
            let pending = p.pending.clone();
            tokio::task::spawn_blocking(move || {
                let r = seal_segment(&v, &geometry, &seg.data, &pending);
                drop(seg);
                r
            })
            .await
            .map_err(|e| e.to_string())?
        };
        ps.spooled_bytes.fetch_sub(
            bytes.min(ps.spooled_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        match sealed {
            Ok(sealed) => {
                if let Err(e) = p.add(sealed).await? {
                    failure = Some(e);
                }
            }
            Err(e) => failure = Some(e),
        }
        if rx.is_empty() {
            ps.backlog_since.store(0, Ordering::Relaxed);
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }
    p.finish().await
}

/// The processor's state: the new id vectors, the pack being filled, the uploads in flight.
struct Packer {
    /// What the commit will need.
    out: Processed,
    /// The pack being filled.
    pack: PackBuilder,
    /// Blocks this session already packed (shared read-only with the sealing thread).
    pending: Arc<std::sync::RwLock<HashSet<BlockId>>>,
    /// Pack uploads in flight, oldest first.
    inflight: std::collections::VecDeque<session::AbortOnDrop<Result<String, String>>>,
    ps: Arc<PsState>,
    vault: Arc<Vault>,
}

impl Packer {
    /// Accounts a sealed segment: ids, dedup, the pack, uploads of full packs. The outer error
    /// ends the session at once (an upload failed); the inner one is a bad record.
    async fn add(&mut self, sealed: Vec<Sealed>) -> Result<Result<(), String>, String> {
        for (disk, index, id, blob, raw_len, in_pack) in sealed {
            let o = &mut self.out;
            if let Some(p) = in_pack {
                o.packs.insert(p);
            }
            let d = disk as usize;
            if d >= o.ids.len() || index as usize >= o.ids[d].len() {
                return Ok(Err("spool record out of range".into()));
            }
            o.ids[d][index as usize] = id;
            o.touched[d].insert(index as usize / CHUNK_ENTRIES);
            o.stats.changed_blocks += 1;
            o.stats.received_bytes += raw_len;
            if id.is_zero() {
                o.stats.zero_blocks += 1;
                continue;
            }
            match blob {
                Some(b)
                    if self
                        .pending
                        .write()
                        .map(|mut p| p.insert(id))
                        .unwrap_or(false) =>
                {
                    o.stats.new_blocks += 1;
                    o.stats.stored_bytes += b.len() as u64;
                    self.pack.add(id, &b);
                }
                _ => o.stats.dedup_blocks += 1,
            }
            if self.pack.len() >= PACK_BYTES {
                self.upload_full().await?;
            }
        }
        Ok(Ok(()))
    }

    /// Uploads the full pack in the background while the next segment is sealed. A few uploads
    /// in flight hide each one's latency (a durable local write waits for the disk, a cloud
    /// put for a round trip); the bound keeps memory to a few packs.
    async fn upload_full(&mut self) -> Result<(), String> {
        if self.inflight.len() >= UPLOADS_IN_FLIGHT {
            if let Some(prev) = self.inflight.pop_front() {
                let p = prev.join().await.map_err(|e| e.to_string())??;
                self.out.packs.insert(p);
            }
        }
        let full = std::mem::replace(&mut self.pack, PackBuilder::with_capacity(PACK_ROOM));
        self.inflight
            .push_back(spawn_upload(self.ps.clone(), self.vault.clone(), full));
        Ok(())
    }

    /// Waits for the uploads and sends the last pack.
    async fn finish(mut self) -> Result<Processed, String> {
        for prev in std::mem::take(&mut self.inflight) {
            self.out
                .packs
                .insert(prev.join().await.map_err(|e| e.to_string())??);
        }
        if !self.pack.is_empty() {
            let last = std::mem::take(&mut self.pack);
            self.out.packs.insert(
                spawn_upload(self.ps.clone(), self.vault.clone(), last)
                    .join()
                    .await
                    .map_err(|e| e.to_string())??,
            );
        }
        Ok(self.out)
    }
}

/// What the processor hands back for the commit.
pub(super) struct Processed {
    /// Block ids per disk.
    pub(super) ids: Vec<Vec<BlockId>>,
    /// Cost.
    pub(super) stats: PointStats,
    /// Packs the point depends on through this session (uploaded or deduplicated).
    pub(super) packs: BTreeSet<String>,
    /// Manifest chunks (per disk) with a changed block.
    pub(super) touched: Vec<std::collections::BTreeSet<usize>>,
}

/// Uploads a full pack on its own task (retrying through vault outages).
fn spawn_upload(
    ps: Arc<PsState>,
    vault: Arc<Vault>,
    pack: PackBuilder,
) -> session::AbortOnDrop<Result<String, String>> {
    session::AbortOnDrop(tokio::spawn(async move {
        let (id, bytes, idx) = pack.finish(vault.fresh_id());
        let size = bytes.len() as u64;
        ps.uploading_bytes.fetch_add(size, Ordering::Relaxed);
        // Bandwidth policy: wait for the bucket before the bytes go out.
        let rate = ps
            .throttle
            .lock()
            .ok()
            .and_then(|t| t.as_ref().and_then(|t| t.rate_at(crate::seams::now())));
        let wait = ps
            .bucket
            .lock()
            .await
            .take(crate::seams::now(), rate, bytes.len() as u64);
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let bytes = bytes::Bytes::from(bytes);
        let n = retry_forever(&ps, &vault, "upload pack", || {
            vault.upload_finished(&id, bytes.clone(), idx.clone())
        })
        .await?;
        ps.uploading_bytes.fetch_sub(size, Ordering::Relaxed);
        ps.uploaded_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(id)
    }))
}

/// (disk, block index, id, sealed blob if new, raw length, vault pack it was deduplicated to).
type Sealed = (u16, u64, BlockId, Option<Vec<u8>>, u64, Option<String>);

/// Reads a segment and seals its blocks (CPU work, on a blocking thread). A block the vault or
/// this session already holds comes back without a blob (dedup). A block the mobility node
/// compressed is decompressed (bounded by its length on the disk `geometry` of (size, block
/// size)) for its id and zero check, and sealed as it came: it is compressed once, at the source.
pub(super) fn seal_segment(
    v: &Vault,
    geometry: &[(u64, u32)],
    data: &SegmentData,
    pending: &std::sync::RwLock<HashSet<BlockId>>,
) -> Result<Vec<Sealed>, String> {
    let mut out = Vec::new();
    let mut seen: HashSet<BlockId> = HashSet::new();
    let mut rng = rand::thread_rng();
    let mut one = |disk: u16, index: u64, data: Option<&[u8]>, zstd: bool| -> Result<(), String> {
        let Some(wire) = data else {
            out.push((disk, index, BlockId::ZERO, None, 0, None));
            return Ok(());
        };
        let plain;
        let data = if zstd {
            let &(size, bs) = geometry
                .get(disk as usize)
                .ok_or("spool record for an unknown disk")?;
            let expect = (bs as u64).min(size.saturating_sub(index * bs as u64)) as usize;
            plain = vault::decompress_block(wire, expect)
                .map_err(|e| format!("block {index} of disk {disk}: {e}"))?;
            if plain.len() != expect {
                return Err(format!(
                    "block {index} of disk {disk} decompressed to {} bytes, expected {expect}",
                    plain.len()
                ));
            }
            &plain[..]
        } else {
            wire
        };
        if vault::is_zero_block(data) {
            out.push((disk, index, BlockId::ZERO, None, data.len() as u64, None));
            return Ok(());
        }
        let id = v.key().block_id(data);
        let planted = lifeboat_actors::plant::active(lifeboat_actors::plant::Plant::DedupCondemned);
        let in_vault = if planted {
            None
        } else {
            v.contains(&id).then(|| v.pack_of(&id)).flatten()
        };
        let known = in_vault.is_some()
            || (planted && v.indexed_anywhere(&id))
            || pending.read().map(|p| p.contains(&id)).unwrap_or(false)
            || !seen.insert(id);
        let blob = (!known).then(|| {
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut nonce);
            if zstd {
                v.key().seal_encoded(&id, vault::MODE_ZSTD, wire, nonce)
            } else {
                v.key().seal_block(&id, data, ZSTD_LEVEL, nonce)
            }
        });
        out.push((disk, index, id, blob, data.len() as u64, in_vault));
        Ok(())
    };
    match data {
        SegmentData::Mem(recs) => {
            for r in recs {
                one(r.disk, r.index, r.data.as_deref().map(|d| &d[..]), r.zstd)?;
            }
        }
        SegmentData::Spilled(spool, name) => {
            let file = spool.read(name)?;
            let mut r: &[u8] = &file;
            let mut len = [0u8; 4];
            loop {
                match r.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(format!("spool read: {e}")),
                }
                let n = u32::from_be_bytes(len) as usize;
                if n > 2 * MAX_BLOCK_SIZE as usize || n > r.len() {
                    return Err("spool record damaged".into());
                }
                let rec: SpoolRecord =
                    vault::from_rmp("spool record", &r[..n]).map_err(|e| e.to_string())?;
                r = &r[n..];
                one(
                    rec.disk,
                    rec.index,
                    rec.data.as_deref().map(|d| &d[..]),
                    rec.zstd,
                )?;
            }
        }
    }
    Ok(out)
}
