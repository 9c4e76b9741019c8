//! Restores: every block of a point's disk fetched, verified (AEAD tag, block id, chunk ids,
//! Merkle root) and written through a new private staging file renamed into place.

use super::*;

/// Counters of a restore.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RestoreStats {
    /// Blocks written.
    pub blocks: u64,
    /// All-zero blocks (left sparse).
    pub zero_blocks: u64,
    /// Bytes fetched from the vault.
    pub fetched_bytes: u64,
}

impl Vault {
    /// A disk's manifest is whole: a sane block size, the Merkle root over its chunks, one
    /// chunk per CHUNK_ENTRIES blocks.
    pub(super) fn check_manifest(&self, d: &DiskRecord) -> Result<(), VaultError> {
        let corrupt = |detail: String| VaultError::Corrupt {
            disk: d.name.clone(),
            block: 0,
            detail,
        };
        if d.block_size == 0 || d.block_size > MAX_BLOCK_SIZE {
            return Err(corrupt(format!("invalid block size {}", d.block_size)));
        }
        let root = self.key.merkle_root(d.size_bytes, d.block_size, &d.chunks);
        if root != d.merkle_root {
            return Err(corrupt("Merkle root does not match the manifest".into()));
        }
        if d.chunks.len() as u64 != d.blocks().div_ceil(CHUNK_ENTRIES as u64) {
            return Err(corrupt(format!(
                "manifest has {} chunks for {} blocks",
                d.chunks.len(),
                d.blocks()
            )));
        }
        Ok(())
    }

    /// Restores a disk to `out` (a raw image), verifying every block and the Merkle root.
    pub async fn restore_disk(
        &self,
        d: &DiskRecord,
        out: &Path,
    ) -> Result<RestoreStats, VaultError> {
        self.restore_disk_counted(d, out, None).await
    }

    /// [`Vault::restore_disk`], adding the bytes of the disk restored so far to `done`.
    pub async fn restore_disk_counted(
        &self,
        d: &DiskRecord,
        out: &Path,
        done: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<RestoreStats, VaultError> {
        self.restore_disk_with(d, out, done, false)
            .await
            .map(|(s, _)| s)
    }

    /// [`Vault::restore_disk_counted`], also returning every block's BLAKE3 hash (a mobility
    /// change log's map of the image), computed by the writer as it writes: no second read.
    pub async fn restore_disk_mapped(
        &self,
        d: &DiskRecord,
        out: &Path,
        done: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<(RestoreStats, Vec<[u8; 32]>), VaultError> {
        self.restore_disk_with(d, out, done, true).await
    }

    async fn restore_disk_with(
        &self,
        d: &DiskRecord,
        out: &Path,
        done: Option<&std::sync::atomic::AtomicU64>,
        map: bool,
    ) -> Result<(RestoreStats, Vec<[u8; 32]>), VaultError> {
        self.check_manifest(d)?;
        let io = |e: std::io::Error| VaultError::Io {
            path: out.display().to_string(),
            source: e,
        };
        // The image is written to a new staging file beside `out` (created exclusively, never
        // through a symlink, mode 0600) and renamed over `out` only once complete and verified:
        // a symlink planted at `out` is replaced, never followed, and a failed restore leaves
        // no half-written image under the final name.
        let staging = out.with_file_name(format!(
            ".{}.partial-{:08x}",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            rand::random::<u32>()
        ));
        let result = self.restore_into(d, &staging, done, map).await;
        let result = result.and_then(|r| {
            std::fs::rename(&staging, out).map_err(io)?;
            Ok(r)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        result
    }

    /// Writes the verified blocks of `d` into the new file `out`.
    async fn restore_into(
        &self,
        d: &DiskRecord,
        out: &Path,
        done: Option<&std::sync::atomic::AtomicU64>,
        map: bool,
    ) -> Result<(RestoreStats, Vec<[u8; 32]>), VaultError> {
        let io = |e: std::io::Error| VaultError::Io {
            path: out.display().to_string(),
            source: e,
        };
        let bs = d.block_size as u64;
        let mut w = crate::direct_io::BlockWriter::create(out, d.size_bytes).map_err(io)?;
        // Blocks are written on their own thread while the next ones are fetched and verified
        // (at most about 32 MiB of them queued). A failed restore stops the writer before it
        // writes anything more, and is only reported once the writer is gone, so a restore that
        // follows to the same file never meets a stale writer.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(((32 << 20) / bs as usize).max(2));
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = abort.clone();
        // With `map`, the writer hashes each block it writes; blocks never written are zero.
        let (size, blocks) = (d.size_bytes, d.blocks() as usize);
        let writer = std::thread::spawn(move || -> std::io::Result<Vec<[u8; 32]>> {
            let mut hashes = Vec::new();
            if map {
                let zero = vec![0u8; bs as usize];
                let full = *blake3::hash(&zero).as_bytes();
                hashes = vec![full; blocks];
                if let Some(last) = hashes.last_mut() {
                    let tail = (size - (blocks as u64 - 1) * bs) as usize;
                    *last = *blake3::hash(&zero[..tail]).as_bytes();
                }
            }
            let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
            while let Some((at, data)) = rx.blocking_recv() {
                if stopped() {
                    return Ok(hashes);
                }
                if map {
                    hashes[(at / bs) as usize] = *blake3::hash(&data).as_bytes();
                }
                w.write(at, &data)?;
            }
            if stopped() {
                return Ok(hashes);
            }
            w.finish()?;
            Ok(hashes)
        });
        let mut stats = RestoreStats::default();
        let fetched = self
            .restore_blocks(d, &|_| true, &tx, &mut stats, done)
            .await;
        if fetched.is_err() {
            abort.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(tx);
        let wrote = tokio::task::spawn_blocking(move || {
            writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("restore writer panicked")))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match (fetched, wrote) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(io(e)),
            // The writer only stops early on an error; be sure anyway.
            (Ok(false), Ok(_)) => Err(io(std::io::Error::other("restore writer stopped"))),
            (Ok(true), Ok(hashes)) => Ok((stats, hashes)),
        }
    }

    /// Fetches, verifies and hands to `tx` (block offset, plaintext) every non-zero block of
    /// `d` that `want` (by block index) asks for. Returns false if the writer went away first
    /// (its own result says why).
    pub(super) async fn restore_blocks(
        &self,
        d: &DiskRecord,
        wanted_block: &(dyn Fn(u64) -> bool + Sync),
        tx: &tokio::sync::mpsc::Sender<(u64, Vec<u8>)>,
        stats: &mut RestoreStats,
        done: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<bool, VaultError> {
        let count = |n: u64| {
            if let Some(d) = done {
                d.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let corrupt = |block: u64, detail: String| VaultError::Corrupt {
            disk: d.name.clone(),
            block,
            detail,
        };
        let bs = d.block_size as u64;
        for (ci, c) in d.chunks.iter().enumerate() {
            let ids = self
                .get_chunk(c)
                .await
                .map_err(|e| corrupt((ci * CHUNK_ENTRIES) as u64, e.to_string()))?;
            // Every chunk covers exactly CHUNK_ENTRIES blocks, the last one the rest: a chunk
            // of another length would leave blocks unwritten or point past the disk's end.
            let first = (ci * CHUNK_ENTRIES) as u64;
            let want = (d.blocks() - first).min(CHUNK_ENTRIES as u64) as usize;
            if ids.len() != want {
                return Err(corrupt(
                    first,
                    format!("chunk {} has {} entries, not {want}", c.to_hex(), ids.len()),
                ));
            }
            // Group the chunk's blocks by pack and fetch contiguous runs with one ranged read.
            let mut wanted: Vec<(u64, BlockId, Loc)> = Vec::new();
            for (j, id) in ids.iter().enumerate() {
                let block = (ci * CHUNK_ENTRIES + j) as u64;
                if id.is_zero() {
                    stats.zero_blocks += 1;
                    count(bs.min(d.size_bytes - block * bs));
                    continue;
                }
                if !wanted_block(block) {
                    continue;
                }
                let loc = self.locate(id).await.ok_or_else(|| {
                    corrupt(
                        block,
                        format!("block {} is missing from the vault", id.to_hex()),
                    )
                })?;
                wanted.push((block, *id, loc));
            }
            wanted.sort_by(|a, b| (&a.2.pack, a.2.offset).cmp(&(&b.2.pack, b.2.offset)));
            let mut i = 0;
            while i < wanted.len() {
                let mut j = i + 1;
                let mut end = wanted[i].2.offset + wanted[i].2.len as u64;
                while j < wanted.len()
                    && wanted[j].2.pack == wanted[i].2.pack
                    && wanted[j].2.offset == end
                    && end - wanted[i].2.offset < (8 << 20)
                {
                    end += wanted[j].2.len as u64;
                    j += 1;
                }
                let start = wanted[i].2.offset;
                let k = pack_key(&wanted[i].2.pack);
                let raw = self
                    .store
                    .get_range(&k, start..end)
                    .await
                    .map_err(|e| corrupt(wanted[i].0, format!("reading {k}: {e}")))?;
                stats.fetched_bytes += raw.len() as u64;
                for (block, id, loc) in &wanted[i..j] {
                    let s = (loc.offset - start) as usize;
                    let sealed = raw
                        .get(s..s + loc.len as usize)
                        .ok_or_else(|| corrupt(*block, format!("{k} is truncated")))?;
                    let data = self
                        .key
                        .open_block(id, sealed, d.block_size as usize)
                        .map_err(|e| {
                            corrupt(*block, format!("{e} (pack {k}, id {})", id.to_hex()))
                        })?;
                    let expect = bs.min(d.size_bytes - block * bs) as usize;
                    if data.len() != expect {
                        return Err(corrupt(
                            *block,
                            format!("block has {} bytes, expected {expect}", data.len()),
                        ));
                    }
                    let n = data.len() as u64;
                    if tx.send((block * bs, data)).await.is_err() {
                        return Ok(false);
                    }
                    count(n);
                    stats.blocks += 1;
                }
                i = j;
            }
        }
        Ok(true)
    }
}
