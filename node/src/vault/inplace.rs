//! In-place restores (failback): a point written onto the disk it came home to, moving only
//! the blocks that differ. Every block of the disk is read and identified with the vault's
//! keyed block id; only blocks whose id differs from the point's are fetched (verified as in a
//! restore) and written. Point clones: the same content under another machine's name, sharing
//! every chunk (a reprotected or failed-back machine's first point, with no copy).

use super::*;

/// Counters of an in-place restore.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InPlaceStats {
    /// Bytes of the disk read and compared.
    pub read_bytes: u64,
    /// Blocks compared.
    pub compared_blocks: u64,
    /// Blocks that differed from the point and were written.
    pub written_blocks: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Bytes fetched from the vault.
    pub fetched_bytes: u64,
}

/// Reads of the compare pass.
const READ: usize = 4 << 20;

impl Vault {
    /// Makes the disk at `target` (an image file, resized to the point's disk if it differs,
    /// or a block device at least as large) equal to `d`, writing only the blocks that differ;
    /// synced on return. Returns the counters and every block's BLAKE3 hash afterwards (the
    /// mobility change log's map of the point).
    pub async fn restore_in_place(
        &self,
        d: &DiskRecord,
        target: &Path,
    ) -> Result<(InPlaceStats, Vec<[u8; 32]>), VaultError> {
        self.check_manifest(d)?;
        let ids = self.disk_ids(d).await?;
        let io = |e: std::io::Error| VaultError::Io {
            path: target.display().to_string(),
            source: e,
        };
        let bs = d.block_size as usize;
        let (key, path, size) = (self.key.clone(), target.to_path_buf(), d.size_bytes);
        let (file, mut hashes, differ, mut stats) =
            tokio::task::spawn_blocking(move || compare(&key, &path, size, bs, &ids))
                .await
                .map_err(|e| io(std::io::Error::other(e.to_string())))?
                .map_err(io)?;
        let file = Arc::new(file);
        // Differing blocks that are zero in the point are written here; the rest are fetched.
        let zero = vec![0u8; bs];
        for (&b, _) in differ.iter().filter(|(_, z)| **z) {
            let len = bs.min((size - b * bs as u64) as usize);
            std::os::unix::fs::FileExt::write_all_at(&*file, &zero[..len], b * bs as u64)
                .map_err(io)?;
            hashes[b as usize] = *blake3::hash(&zero[..len]).as_bytes();
            stats.written_blocks += 1;
            stats.written_bytes += len as u64;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(((32 << 20) / bs).max(2));
        let f = file.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut wrote = Vec::new();
            while let Some((at, data)) = rx.blocking_recv() {
                std::os::unix::fs::FileExt::write_all_at(&*f, &data, at)?;
                wrote.push((at, *blake3::hash(&data).as_bytes(), data.len()));
                if wrote.len() == 1 {
                    crate::failpoint::pause("inplace/wrote");
                }
            }
            Ok::<_, std::io::Error>(wrote)
        });
        let mut rs = RestoreStats::default();
        let want = |b: u64| differ.get(&b) == Some(&false);
        let fetched = self.restore_blocks(d, &want, &tx, &mut rs, None).await;
        drop(tx);
        let wrote = writer
            .await
            .map_err(|e| io(std::io::Error::other(e.to_string())))?
            .map_err(io)?;
        if !fetched? {
            return Err(io(std::io::Error::other("the writer stopped")));
        }
        for (at, h, len) in wrote {
            hashes[(at / bs as u64) as usize] = h;
            stats.written_blocks += 1;
            stats.written_bytes += len as u64;
        }
        stats.fetched_bytes = rs.fetched_bytes;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| io(std::io::Error::other(e.to_string())))?
            .map_err(io)?;
        Ok((stats, hashes))
    }

    /// Commits a copy of `src` under `machine` (a fresh id; the same capture time, disks and
    /// chunks: nothing is copied). The chunks are leased until the copy is committed, and the
    /// source must still exist after the lease is taken, so garbage collection cannot take
    /// them in between.
    pub async fn clone_point(
        &self,
        src: &PointRecord,
        machine: NodeId,
        machine_name: &str,
        now: UnixMillis,
    ) -> Result<PointRecord, VaultError> {
        let id = vault::hex(&self.fresh_id());
        let lease = format!("clone-{id}");
        let chunks: Vec<BlockId> = src
            .disks
            .iter()
            .flat_map(|d| d.chunks.iter().copied())
            .collect();
        self.lease(&lease, &chunks).await?;
        let result = async {
            if !self.has_object(&src.object_key()).await? {
                return Err(VaultError::Corrupt {
                    disk: String::new(),
                    block: 0,
                    detail: format!("point {} left the vault", src.id),
                });
            }
            let rec = PointRecord {
                id,
                machine,
                machine_name: machine_name.to_string(),
                committed: now,
                parent: None,
                stats: Default::default(),
                ..src.clone()
            };
            self.commit_point(&rec).await?;
            Ok(rec)
        }
        .await;
        self.end_lease(&lease).await;
        result
    }
}

/// The compare pass: opens `path` for writing (an image file is resized to `size`), reads
/// every block and compares its keyed id with the point's. Returns the file, every block's
/// BLAKE3 hash (final for the blocks that match), the differing blocks (true: zero in the
/// point) and the read counters.
#[allow(clippy::type_complexity)]
fn compare(
    key: &DataKey,
    path: &Path,
    size: u64,
    bs: usize,
    ids: &[BlockId],
) -> std::io::Result<(
    std::fs::File,
    Vec<[u8; 32]>,
    BTreeMap<u64, bool>,
    InPlaceStats,
)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        if meta.len() != size {
            file.set_len(size)?;
        }
    } else {
        let have = lifeboat_actors::seams::BlockDevice::size(
            &crate::disk::Disk::open(path).map_err(std::io::Error::other)?,
        );
        if have < size {
            return Err(std::io::Error::other(format!(
                "the device holds {have} bytes; the point's disk has {size}"
            )));
        }
    }
    let mut stats = InPlaceStats::default();
    let mut hashes = Vec::with_capacity(ids.len());
    let mut differ = BTreeMap::new();
    let mut block = 0usize;
    stats.read_bytes = each_block(&file, size, bs, |data| {
        let want = ids.get(block).copied().unwrap_or(BlockId::ZERO);
        let local = if vault::is_zero_block(data) {
            BlockId::ZERO
        } else {
            key.block_id(data)
        };
        if local != want {
            differ.insert(block as u64, want.is_zero());
        }
        hashes.push(*blake3::hash(data).as_bytes());
        block += 1;
    })?;
    stats.compared_blocks = block as u64;
    Ok((file, hashes, differ, stats))
}

/// Calls `f` with each block of the first `size` bytes of `file` (the last one short if
/// `size` is not a multiple of `bs`), reading 4 MiB at a time. Returns the bytes read.
fn each_block(
    file: &std::fs::File,
    size: u64,
    bs: usize,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let per = (READ / bs).max(1);
    let mut buf = vec![0u8; per * bs];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], at)?;
        buf[..n].chunks(bs).for_each(&mut f);
        at += n as u64;
    }
    Ok(at)
}
