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

/// A segment's records: in memory while the processor keeps up, on disk when it falls behind.
pub(super) enum SegmentData {
    /// Records in memory, as received (no serialization on the fast path).
    Mem(Vec<SpoolRecord>),
    /// Records in a spool file.
    File(PathBuf),
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let SegmentData::File(p) = &self.data {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Reads the stream into spool segments. Returns the announced block count. On failure the
/// segment being written is removed (closed ones go with their `Segment`).
pub(super) async fn receive(
    ps: &PsState,
    h: &DeltaHeader,
    r: &mut dyn MessageSource,
    tx: mpsc::Sender<Segment>,
) -> Result<u64, String> {
    let mut current: Option<PathBuf> = None;
    let res = receive_inner(ps, h, r, tx, &mut current).await;
    if res.is_err() {
        if let Some(p) = current {
            let _ = std::fs::remove_file(p);
        }
    }
    res
}

async fn receive_inner(
    ps: &PsState,
    h: &DeltaHeader,
    r: &mut dyn MessageSource,
    tx: mpsc::Sender<Segment>,
    current: &mut Option<PathBuf>,
) -> Result<u64, String> {
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
                        close_segment(ps, h, seg.take(), &tx, current).await?;
                    }
                }
            }
            Message::DeltaEnd { sent_blocks } => {
                close_segment(ps, h, seg.take(), &tx, current).await?;
                return Ok(sent_blocks);
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
    current: &mut Option<PathBuf>,
) -> Result<(), String> {
    let Some((recs, bytes, n, permit)) = seg else {
        return Ok(());
    };
    ps.spooled_bytes.fetch_add(bytes, Ordering::Relaxed);
    // Kept in memory while the processor keeps up (a few segments), else spilled to the spool
    // directory. No fsync: a segment matters only to the live session that wrote it (segments of
    // a crashed process are discarded at start and the mobility node re-sends), so forcing it to
    // the platter would cost throughput and buy no durability.
    let (data, mem) = match ps.mem_budget.clone().try_acquire_owned() {
        Ok(m) => (SegmentData::Mem(recs), Some(m)),
        Err(_) => {
            let path = ps.spool_dir.join(format!("{}-{n:06}.seg", h.session));
            *current = Some(path.clone());
            let mut buf = Vec::with_capacity(bytes as usize);
            for r in &recs {
                let rec = vault::to_rmp(r);
                buf.extend_from_slice(&(rec.len() as u32).to_be_bytes());
                buf.extend_from_slice(&rec);
            }
            std::fs::write(&path, &buf)
                .map_err(|e| format!("spool write failed (disk full?): {e}"))?;
            *current = None;
            (SegmentData::File(path), None)
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
