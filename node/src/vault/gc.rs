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

/// What a pass's mark found live.
#[derive(Default)]
struct Mark {
    /// Points listed.
    points: u64,
    /// Chunks referenced or leased.
    chunks: std::collections::HashSet<BlockId>,
    /// Blocks they name.
    blocks: std::collections::HashSet<BlockId>,
}

/// What a pass knows when it judges one pack.
struct PassFacts<'a> {
    /// Live blocks.
    live: &'a std::collections::HashSet<BlockId>,
    /// Condemned packs and the age of their condemnation.
    condemned_at: &'a BTreeMap<String, u64>,
    /// Upload leases and their age.
    leases: &'a BTreeMap<String, u64>,
    /// Age of the pack object.
    age_ms: u64,
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
        let mark = self.mark(now_ms).await?;
        rep.points = mark.points;
        rep.live_blocks = mark.blocks.len() as u64;
        let age = |m: &BlobMeta| now_ms.saturating_sub(m.modified_ms);
        let ages = |prefix: &'static str| async move {
            self.list_meta(prefix).await.map(|l| {
                l.iter()
                    .map(|m| (m.file_name().to_string(), age(m)))
                    .collect::<BTreeMap<String, u64>>()
            })
        };
        let condemned_at = ages("gc/condemned").await?;
        let leases = ages("gc/inflight").await?;
        // 2 and 3. Packs.
        for m in self.list_meta("packs").await? {
            let facts = PassFacts {
                live: &mark.blocks,
                condemned_at: &condemned_at,
                leases: &leases,
                age_ms: age(&m),
            };
            self.judge_pack(&m, &facts, grace_ms, &mut rep).await?;
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
            if plan::chunk_is_garbage(mark.chunks.contains(&id), age(&m), grace_ms) {
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

    /// The mark: every chunk and block the points reference, then (listed after them) every
    /// chunk a session in progress leased and its blocks (see [`Vault::lease`]).
    async fn mark(&self, now_ms: u64) -> Result<Mark, VaultError> {
        let points = self.list_points(None).await?;
        let mut mark = Mark {
            points: points.len() as u64,
            ..Default::default()
        };
        let referenced = points
            .iter()
            .flat_map(|p| p.disks.iter().flat_map(|d| d.chunks.iter().copied()))
            .collect::<Vec<_>>();
        for c in referenced {
            if mark.chunks.insert(c) {
                let ids = self.get_chunk(&c).await?;
                mark.blocks.extend(ids.into_iter().filter(|b| !b.is_zero()));
            }
        }
        // A leased chunk not written yet is skipped.
        for c in self.leased_chunks(now_ms).await? {
            if mark.chunks.insert(c) {
                match self.get_chunk(&c).await {
                    Ok(ids) => mark.blocks.extend(ids.into_iter().filter(|b| !b.is_zero())),
                    Err(VaultError::Store {
                        source: BlobError::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(mark)
    }

    /// Gathers one pack's facts, asks the plan, and performs its answer.
    async fn judge_pack(
        &self,
        m: &BlobMeta,
        pass: &PassFacts<'_>,
        grace_ms: u64,
        rep: &mut GcReport,
    ) -> Result<(), VaultError> {
        let Some(pack) = m
            .key
            .strip_suffix(".pack")
            .and_then(|s| s.rsplit('/').next())
            .filter(|p| vault::from_hex::<16>(p).is_some())
            .map(str::to_string)
        else {
            return Ok(());
        };
        let ik = index_key(&pack);
        let idx: PackIndex = match self.get(&ik).await {
            Ok(raw) => {
                let plain = self
                    .key
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
            Err(_) => return Ok(()),
        };
        // Live entries whose block has no other copy in a pack that is not condemned.
        let (live_e, dead_e): (Vec<&vault::IndexEntry>, Vec<&vault::IndexEntry>) = idx
            .entries
            .iter()
            .partition(|e| pass.live.contains(&e.id) && !self.copy_elsewhere(&e.id, &pack));
        let condemned_age_ms = pass.condemned_at.get(&pack).copied();
        let facts = plan::PackFacts {
            age_ms: pass.age_ms,
            size_bytes: m.size,
            live_entries: live_e.len(),
            dead_entries: dead_e.len(),
            dead_bytes: dead_e.iter().map(|e| e.len as u64).sum(),
            condemned_age_ms,
            // Asked only of condemned packs (a rescue matters only to them).
            rescued: condemned_age_ms.is_some()
                && self.exists_under(&format!("gc/rescue/{pack}")).await?,
            lease_age_ms: pass.leases.get(&pack).copied(),
        };
        match plan::decide_pack(&facts, grace_ms) {
            plan::PackAction::Keep => {}
            plan::PackAction::Uncondemn => {
                self.uncondemn(&pack).await?;
                rep.rescued += 1;
            }
            plan::PackAction::Delete => self.delete_pack(&pack, m, rep).await?,
            plan::PackAction::Condemn { repack } => {
                if repack {
                    self.repack(&m.key, &live_e).await?;
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
        Ok(())
    }

    /// Deletes a condemned pack: the tombstone first (it outlives the pack), the rescues
    /// checked again (a rescue found now saves it), then index, pack and mark.
    async fn delete_pack(
        &self,
        pack: &str,
        m: &BlobMeta,
        rep: &mut GcReport,
    ) -> Result<(), VaultError> {
        self.put(
            &format!("gc/deleted/{pack}"),
            Bytes::new(),
            PutMode::Overwrite,
        )
        .await?;
        let ignore = lifeboat_actors::plant::active(lifeboat_actors::plant::Plant::GcIgnoresRescue);
        if !ignore && self.exists_under(&format!("gc/rescue/{pack}")).await? {
            self.delete_key(&format!("gc/deleted/{pack}")).await?;
            self.uncondemn(pack).await?;
            rep.rescued += 1;
            return Ok(());
        }
        self.delete_key(&index_key(pack)).await?;
        self.delete_key(&m.key).await?;
        self.delete_key(&format!("gc/condemned/{pack}")).await?;
        rep.deleted_packs += 1;
        rep.freed_bytes += m.size;
        Ok(())
    }

    /// Copies a pack's live sealed blocks, as they are, into a new pack.
    async fn repack(&self, key: &str, live: &[&vault::IndexEntry]) -> Result<(), VaultError> {
        let raw = self.get(key).await?;
        let mut nb = PackBuilder::new();
        for e in live {
            let b = raw
                .get(e.offset as usize..e.offset as usize + e.len as usize)
                .ok_or_else(|| VaultError::Format {
                    key: key.to_string(),
                    source: FormatError::Malformed {
                        what: "pack",
                        msg: "entry beyond the end".into(),
                    },
                })?;
            nb.add(e.id, b);
        }
        self.upload_pack(nb).await?;
        Ok(())
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
