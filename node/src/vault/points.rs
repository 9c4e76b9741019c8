//! Recovery-point objects: the commit (create-if-absent between two durability barriers),
//! deletion by retention, and listings that verify every point under its own name.

use super::*;

impl Vault {
    /// Commits a point (create-if-absent). Everything it references must already be stored.
    /// Durable on return: a barrier before the put makes what the point references durable
    /// first (a crash can never leave a point naming lost objects), one after makes the point
    /// itself durable before anyone is told it is committed.
    pub async fn commit_point(&self, rec: &PointRecord) -> Result<(), VaultError> {
        self.barrier().await?;
        let k = rec.object_key();
        let sealed = Bytes::from(rec.seal(&self.key, nonce()));
        let created = self
            .retry("commit point", 8, || {
                self.put(&k, sealed.clone(), PutMode::Create)
            })
            .await?;
        // The key holds a random point id: an existing object is our own earlier attempt whose
        // answer was lost.
        let _ = created;
        self.barrier().await?;
        if let Ok(mut p) = self.points.write() {
            p.insert(k, rec.clone());
        }
        Ok(())
    }

    /// Takes (or widens) session `session`'s lease on `chunks`: while it lasts (until
    /// [`Vault::end_lease`], or [`lifeboat_actors::gc::LEASE_EXPIRES_MS`] for a session that
    /// died), garbage collection counts those chunks, and the blocks they name, as live. A
    /// session leases its base point's chunks before it checks the base is still there, and
    /// its new chunks before it checks they are: a collection pass lists points before leases,
    /// so whatever the order of the two, a chunk the new point will name is never deleted.
    pub async fn lease(&self, session: &str, chunks: &[BlockId]) -> Result<(), VaultError> {
        let body = Bytes::from(
            self.key
                .seal_object("lease", nonce(), &to_rmp(&chunks.to_vec())),
        );
        let k = vault::lease_key(session);
        self.retry("put lease", 8, || {
            self.put(&k, body.clone(), PutMode::Overwrite)
        })
        .await
        .map(|_| ())
    }

    /// Ends a session's lease (best effort: one left behind expires).
    pub async fn end_lease(&self, session: &str) {
        let _ = self.delete_key(&vault::lease_key(session)).await;
    }

    /// The chunks of every lease younger than the expiry at `now_ms` (expired ones deleted).
    pub(super) async fn leased_chunks(&self, now_ms: u64) -> Result<Vec<BlockId>, VaultError> {
        let mut out = Vec::new();
        for m in self.list_meta("gc/leases").await? {
            if lifeboat_actors::gc::lease_expired(now_ms.saturating_sub(m.modified_ms)) {
                self.delete_key(&m.key).await?;
                continue;
            }
            let raw = match self.get(&m.key).await {
                Ok(r) => r,
                // Ended between the listing and the read.
                Err(VaultError::Store {
                    source: BlobError::NotFound,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let plain = self
                .key
                .open_object("lease", &raw)
                .map_err(|e| VaultError::Format {
                    key: m.key.clone(),
                    source: e,
                })?;
            let ids: Vec<BlockId> = from_rmp("lease", &plain).map_err(|e| VaultError::Format {
                key: m.key.clone(),
                source: e,
            })?;
            out.extend(ids);
        }
        Ok(out)
    }

    /// Deletes a point (retention). Blocks and chunks it alone referenced become garbage; they
    /// are not removed here.
    pub async fn delete_point(&self, rec: &PointRecord) -> Result<(), VaultError> {
        let k = rec.object_key();
        self.delete_key(&k).await?;
        if let Ok(mut p) = self.points.write() {
            p.remove(&k);
        }
        Ok(())
    }

    /// Lists points, oldest first (of one machine, or all).
    pub async fn list_points(
        &self,
        machine: Option<&NodeId>,
    ) -> Result<Vec<PointRecord>, VaultError> {
        let prefix = match machine {
            Some(m) => format!("points/{m}"),
            None => "points".into(),
        };
        let mut out = Vec::new();
        let mut listed = std::collections::BTreeSet::new();
        for k in self.list(&prefix).await? {
            // Names from the store are checked before use: points/<node id>/<ms>-<hex id>.
            let mut parts = k.split('/');
            let (Some("points"), Some(m), Some(leaf), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if m.parse::<NodeId>().is_err() || leaf.len() != 16 + 1 + 32 {
                continue;
            }
            listed.insert(k.clone());
            if let Some(r) = self.points.read().ok().and_then(|p| p.get(&k).cloned()) {
                out.push(r);
                continue;
            }
            let raw = self.get(&k).await?;
            // Bound to its name: a point copied under another machine's prefix (or forged
            // without the key) fails here, and is left out rather than blocking the listing.
            let rec = match PointRecord::open(&self.key, &k, &raw) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = %k, cause = %e, "ignoring a point object that does not verify under its name");
                    continue;
                }
            };
            if let Ok(mut p) = self.points.write() {
                p.insert(k, rec.clone());
            }
            out.push(rec);
        }
        // Points deleted by another node's retention drop out of the cache too.
        if let Ok(mut p) = self.points.write() {
            p.retain(|k, _| !k.starts_with(&format!("{prefix}/")) || listed.contains(k));
        }
        out.sort_by_key(|p| (p.captured, p.id.clone()));
        Ok(out)
    }
}
