//! The spool: a replication stream cut into segments, kept in memory while the processor keeps
//! up and written to `spool/` beyond that, within the spool budget (full = stop reading = QUIC
//! backpressure).

use super::*;

/// One spooled block.
#[derive(Serialize, Deserialize)]
pub(super) struct SpoolRecord {
    pub(super) disk: u16,
    pub(super) index: u64,
    pub(super) data: Option<serde_bytes::ByteBuf>,
    /// `data` is zstd-compressed (as the mobility node sent it).
    #[serde(default)]
    pub(super) zstd: bool,
}

/// A closed segment handed to the processor (holds one unit of spool budget). Its file goes
/// with it, whatever happens to the session.
pub(super) struct Segment {
    /// Where its records are.
    pub(super) data: SegmentData,
    /// Its size.
    pub(super) bytes: u64,
    /// Spool budget.
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
    /// Memory budget, for segments kept in memory.
    pub(super) _mem: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A segment's records: in memory while the processor keeps up, in the spool when it falls
/// behind.
pub(super) enum SegmentData {
    /// Records in memory, as received (no serialization on the fast path).
    Mem(Vec<SpoolRecord>),
    /// Records in the spool, under a name.
    Spilled(Arc<dyn Spool>, String),
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let SegmentData::Spilled(spool, name) = &self.data {
            spool.remove(name);
        }
    }
}

/// The daemon's spool: segment files in the state directory's `spool/`, which is emptied at
/// start (segments of sessions that died with a previous process are never resumed: their
/// mobility nodes send the changes again). Not synced: a segment matters only to the live
/// session that wrote it, so forcing it to the platter would cost throughput and buy no
/// durability.
#[derive(Debug)]
pub struct DirSpool {
    dir: PathBuf,
}

impl DirSpool {
    /// Creates (or empties) the spool directory.
    pub fn open(dir: PathBuf) -> Result<DirSpool, String> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(DirSpool { dir })
    }
}

impl Spool for DirSpool {
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!("spool write failed (disk full?): {e}")
        })
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.dir.join(name)).map_err(|e| format!("spool read: {e}"))
    }

    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

/// Encodes a segment's records for the spool: each as its length (4 bytes, big-endian) and
/// its MessagePack.
pub(super) fn encode_records(recs: &[SpoolRecord], bytes: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(bytes as usize);
    for r in recs {
        let rec = vault::to_rmp(r);
        buf.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        buf.extend_from_slice(&rec);
    }
    buf
}

/// Reads the stream into spool segments. Returns the announced block count. A segment goes
/// from the spool with its `Segment`, whatever happens to the session; a failed write leaves
/// nothing behind.
pub(super) async fn receive(
    ps: &PsState,
    h: &DeltaHeader,
    r: &mut dyn MessageSource,
    tx: mpsc::Sender<Segment>,
) -> Result<(u64, Option<u64>), String> {
    let mut seg: Option<(
        Vec<SpoolRecord>,
        u64,
        u64,
        tokio::sync::OwnedSemaphorePermit,
    )> = None;
    let mut n = 0u32;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(300), r.next_message())
            .await
            .map_err(|_| "replication stream stalled for 5 minutes".to_string())??
            .ok_or("replication stream ended before DeltaEnd")?;
        match msg {
            Message::DeltaBlocks { disk, blocks } => {
                let d = h
                    .disks
                    .get(disk as usize)
                    .ok_or("block for an unknown disk")?;
                let nblocks = d.size_bytes.div_ceil(d.block_size as u64);
                for b in blocks {
                    if b.index >= nblocks {
                        return Err(format!(
                            "block {} beyond the end of disk {}",
                            b.index, d.name
                        ));
                    }
                    if let Some(data) = &b.data {
                        let expect =
                            (d.block_size as u64).min(d.size_bytes - b.index * d.block_size as u64);
                        // A compressed block must be smaller than the block (its decompressed
                        // length is checked when it is sealed).
                        if (b.zstd && data.len() as u64 >= expect)
                            || (!b.zstd && data.len() as u64 != expect)
                        {
                            return Err(format!(
                                "block {} of {} has {} bytes, expected {expect}",
                                b.index,
                                d.name,
                                data.len()
                            ));
                        }
                    }
                    if seg.is_none() {
                        // Wait for spool room: this is the backpressure point.
                        let permit = ps
                            .budget
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|e| e.to_string())?;
                        n += 1;
                        seg = Some((Vec::new(), 0, n as u64, permit));
                    }
                    if let Some((recs, bytes, _, _)) = seg.as_mut() {
                        *bytes += 16 + b.data.as_ref().map_or(0, |d| d.len() as u64);
                        recs.push(SpoolRecord {
                            disk,
                            index: b.index,
                            data: b.data,
                            zstd: b.zstd,
                        });
                    }
                    if seg.as_ref().is_some_and(|s| s.1 >= SEGMENT_BYTES) {
                        close_segment(ps, h, seg.take(), &tx).await?;
                    }
                }
            }
            Message::DeltaEnd {
                sent_blocks,
                freeze_ms,
            } => {
                close_segment(ps, h, seg.take(), &tx).await?;
                return Ok((sent_blocks, freeze_ms));
            }
            other => {
                return Err(format!(
                    "unexpected message in a replication stream: {}",
                    other.kind()
                ))
            }
        }
    }
}

async fn close_segment(
    ps: &PsState,
    h: &DeltaHeader,
    seg: Option<(
        Vec<SpoolRecord>,
        u64,
        u64,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    tx: &mpsc::Sender<Segment>,
) -> Result<(), String> {
    let Some((recs, bytes, n, permit)) = seg else {
        return Ok(());
    };
    ps.spooled_bytes.fetch_add(bytes, Ordering::Relaxed);
    // Kept in memory while the processor keeps up (a few segments), else spilled to the spool.
    let (data, mem) = match ps.mem_budget.clone().try_acquire_owned() {
        Ok(m) => (SegmentData::Mem(recs), Some(m)),
        Err(_) => {
            let name = format!("{}-{n:06}.seg", h.session);
            ps.spool.write(&name, &encode_records(&recs, bytes))?;
            (SegmentData::Spilled(ps.spool.clone(), name), None)
        }
    };
    let _ = ps.backlog_since.compare_exchange(
        0,
        crate::seams::now().0,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    tx.send(Segment {
        data,
        bytes,
        _permit: permit,
        _mem: mem,
    })
    .await
    .map_err(|_| "processor stopped".to_string())
}
