//! Garbage collection of a vault: gathers the facts of a listing, asks the sans-IO plan
//! ([`lifeboat_actors::gc`]) and performs its answers in the safe order.

use super::*;
use lifeboat_actors::gc as plan;

/// What a garbage collection did.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    /// Points in the vault.
    pub points: u64,
    /// Distinct blocks they reference.
    pub live_blocks: u64,
    /// Packs newly condemned.
    pub condemned: u64,
    /// Packs repacked (live blocks moved to a new pack).
    pub repacked: u64,
    /// Packs deleted.
    pub deleted_packs: u64,
    /// Condemned packs saved by a reference or a rescue.
    pub rescued: u64,
    /// Chunks deleted.
    pub deleted_chunks: u64,
    /// Abandoned staging files deleted (local vaults).
    pub deleted_staging: u64,
    /// Bytes of packs deleted.
    pub freed_bytes: u64,
}

impl Vault {
    /// Garbage collection, safe while process servers write:
    ///
    /// 1. mark: every block and chunk referenced by a point now in the vault, or leased by a
    ///    session in progress (listed after the points; see [`Vault::lease`]);
    /// 2. packs older than `grace_ms` with no live block are *condemned* (a marker object);
    ///    packs with at least half dead bytes are repacked (live sealed blocks copied to a new
    ///    pack) and the old one condemned. Deduplication ignores condemned packs;
    /// 3. a pack condemned for at least `grace_ms` is deleted, unless the current mark
    ///    needs it again or a process server rescued it (`gc/rescue/`). Deletion is announced
    ///    first with a tombstone (`gc/deleted/`, kept a week) and the rescue markers re-checked,
    ///    so a concurrent commit either sees the tombstone and fails, or GC sees the rescue;
    /// 4. chunks older than `grace_ms` that no point references are deleted;
    /// 5. in a local vault, staging files older than `grace_ms` are deleted ([`sweep_staging`]).
    pub async fn gc(&self, now_ms: u64, grace_ms: u64) -> Result<GcReport, VaultError> {
        let mut rep = GcReport::default();
        // Packs written by an earlier pass (repacks) are durable before any pack they replace
        // can be deleted below.
        self.barrier().await?;
        self.refresh_condemned().await?;
        self.refresh_index().await?;
        // 1. Mark.
        let points = self.list_points(None).await?;
        let mut live_chunks = std::collections::HashSet::new();
        let mut live = std::collections::HashSet::new();
        for p in &points {
            for d in &p.disks {
                for c in &d.chunks {
                    if live_chunks.insert(*c) {
                        live.extend(
                            self.get_chunk(c)
                                .await?
                                .into_iter()
                                .filter(|b| !b.is_zero()),
                        );
                    }
                }
            }
        }
        // Chunks (and their blocks) that sessions in progress will reference: listed after
        // the points (see `Vault::lease`). A leased chunk not written yet is skipped.
        for c in self.leased_chunks(now_ms).await? {
            if live_chunks.insert(c) {
                match self.get_chunk(&c).await {
                    Ok(ids) => live.extend(ids.into_iter().filter(|b| !b.is_zero())),
                    Err(VaultError::Store {
                        source: BlobError::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        rep.points = points.len() as u64;
        rep.live_blocks = live.len() as u64;
        let age = |m: &BlobMeta| now_ms.saturating_sub(m.modified_ms);
        let condemned_at: BTreeMap<String, u64> = self
            .list_meta("gc/condemned")
            .await?
            .iter()
            .map(|m| (m.file_name().to_string(), age(m)))
            .collect();
        let leases: BTreeMap<String, u64> = self
            .list_meta("gc/inflight")
            .await?
            .iter()
            .map(|m| (m.file_name().to_string(), age(m)))
            .collect();
        // 2 and 3. Packs.
        for m in self.list_meta("packs").await? {
            let k = m.key.clone();
            let Some(pack) = k
                .strip_suffix(".pack")
                .and_then(|s| s.rsplit('/').next())
                .map(str::to_string)
            else {
                continue;
            };
            if vault::from_hex::<16>(&pack).is_none() {
                continue;
            }
            let ik = index_key(&pack);
            let idx: PackIndex = match self.get(&ik).await {
                Ok(raw) => {
                    let plain =
                        self.key
                            .open_object("idx", &raw)
                            .map_err(|e| VaultError::Format {
                                key: ik.clone(),
                                source: e,
                            })?;
                    from_rmp("pack index", &plain).map_err(|e| VaultError::Format {
                        key: ik.clone(),
                        source: e,
                    })?
                }
                // A pack without an index is an upload in progress (or interrupted): leave it.
                Err(_) => continue,
            };
            // Live entries whose block has no other copy in a pack that is not condemned.
            let (live_e, dead_e): (Vec<&vault::IndexEntry>, Vec<&vault::IndexEntry>) = idx
                .entries
                .iter()
                .partition(|e| live.contains(&e.id) && !self.copy_elsewhere(&e.id, &pack));
            let condemned_age_ms = condemned_at.get(&pack).copied();
            let facts = plan::PackFacts {
                age_ms: age(&m),
                size_bytes: m.size,
                live_entries: live_e.len(),
                dead_entries: dead_e.len(),
                dead_bytes: dead_e.iter().map(|e| e.len as u64).sum(),
                condemned_age_ms,
                // Asked only of condemned packs (a rescue matters only to them).
                rescued: condemned_age_ms.is_some()
                    && self.exists_under(&format!("gc/rescue/{pack}")).await?,
                lease_age_ms: leases.get(&pack).copied(),
            };
            match plan::decide_pack(&facts, grace_ms) {
                plan::PackAction::Keep => {}
                plan::PackAction::Uncondemn => {
                    self.uncondemn(&pack).await?;
                    rep.rescued += 1;
                }
                plan::PackAction::Delete => {
                    // Announce first (a tombstone that outlives the pack), then re-check rescues.
                    self.put(
                        &format!("gc/deleted/{pack}"),
                        Bytes::new(),
                        PutMode::Overwrite,
                    )
                    .await?;
                    let ignore = lifeboat_actors::plant::active(
                        lifeboat_actors::plant::Plant::GcIgnoresRescue,
                    );
                    if !ignore && self.exists_under(&format!("gc/rescue/{pack}")).await? {
                        self.delete_key(&format!("gc/deleted/{pack}")).await?;
                        self.uncondemn(&pack).await?;
                        rep.rescued += 1;
                        continue;
                    }
                    self.delete_key(&ik).await?;
                    self.delete_key(&k).await?;
                    self.delete_key(&format!("gc/condemned/{pack}")).await?;
                    rep.deleted_packs += 1;
                    rep.freed_bytes += m.size;
                }
                plan::PackAction::Condemn { repack } => {
                    if repack {
                        // Copy the live sealed blocks as they are into a new pack.
                        let raw = self.get(&k).await?;
                        let mut nb = PackBuilder::new();
                        for e in &live_e {
                            let b = raw
                                .get(e.offset as usize..e.offset as usize + e.len as usize)
                                .ok_or_else(|| VaultError::Format {
                                    key: k.clone(),
                                    source: FormatError::Malformed {
                                        what: "pack",
                                        msg: "entry beyond the end".into(),
                                    },
                                })?;
                            nb.add(e.id, b);
                        }
                        self.upload_pack(nb).await?;
                        rep.repacked += 1;
                    }
                    self.put(
                        &format!("gc/condemned/{pack}"),
                        Bytes::new(),
                        PutMode::Overwrite,
                    )
                    .await?;
                    // From now on its blocks count as copies only in other packs.
                    if let Ok(mut c) = self.condemned.write() {
                        c.insert(pack.clone());
                    }
                    rep.condemned += 1;
                }
            }
        }
        for (p, a) in &leases {
            if plan::lease_expired(*a) {
                self.delete_key(&format!("gc/inflight/{p}")).await?;
            }
        }
        // Tombstones of deleted packs are kept a week (far longer than any upload session).
        for m in self.list_meta("gc/deleted").await? {
            if plan::tombstone_expired(age(&m)) {
                self.delete_key(&m.key).await?;
            }
        }
        // 4. Chunks.
        for m in self.list_meta("chunks").await? {
            let name = m.file_name().to_string();
            let Some(id) = vault::from_hex::<32>(&name).map(BlockId) else {
                continue;
            };
            if plan::chunk_is_garbage(live_chunks.contains(&id), age(&m), grace_ms) {
                self.delete_key(&m.key).await?;
                rep.deleted_chunks += 1;
            }
        }
        // 5. Staging files of writes a killed process never renamed into place (a local vault
        // only; listings skip them, so nothing else would remove them).
        let (files, bytes) = self.store.sweep(now_ms, grace_ms).await;
        rep.deleted_staging = files;
        rep.freed_bytes += bytes;
        self.refresh_condemned().await?;
        self.refresh_index().await?;
        Ok(rep)
    }

    async fn uncondemn(&self, pack: &str) -> Result<(), VaultError> {
        for k in self.list(&format!("gc/rescue/{pack}")).await? {
            self.delete_key(&k).await?;
        }
        self.delete_key(&format!("gc/condemned/{pack}")).await?;
        if let Ok(mut c) = self.condemned.write() {
            c.remove(pack);
        }
        Ok(())
    }
}
