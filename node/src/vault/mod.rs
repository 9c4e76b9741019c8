//! The vault client: moves the sealed formats of [`lifeboat_protocol::vault`] to and from an
//! object store (`object_store`: local directory, Azure Blob, S3).
//!
//! Writes are ordered so a reader never sees a dangling reference: a pack is written before its
//! index, chunks before the point that names them, and the point last, with create-if-absent
//! (the commit). Every read is verified: AEAD tags, block ids, chunk ids, Merkle roots.

use bytes::Bytes;
use lifeboat_actors::seams::{BlobError, BlobMeta, BlobStore, PutMode};
use lifeboat_protocol::vault::{
    self, chunk_key, from_rmp, index_key, pack_key, to_rmp, BlockId, DataKey, DiskRecord,
    FormatError, PackBuilder, PackIndex, PointRecord, VaultHeader, CHUNK_ENTRIES, MAX_BLOCK_SIZE,
    VAULT_FORMAT,
};
use lifeboat_protocol::{NodeId, UnixMillis};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Vault failures.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store URL is not understood.
    #[error("unsupported vault store {0:?}: use file:///PATH, az://CONTAINER or s3://BUCKET")]
    Url(String),
    /// The object store failed.
    #[error("vault store: {op} {key}: {source}")]
    Store {
        /// Operation.
        op: &'static str,
        /// Object key.
        key: String,
        /// Cause.
        source: BlobError,
    },
    /// An object failed verification.
    #[error("vault object {key} is damaged: {source}")]
    Format {
        /// Object key.
        key: String,
        /// Cause.
        source: FormatError,
    },
    /// The vault has no header (not created, or wrong URL).
    #[error("no vault at {0}; create one with `lifeboat vault create NAME --store URL`")]
    NoVault(String),
    /// The data key does not match the vault.
    #[error("this node's data key does not open vault {0}")]
    WrongKey(String),
    /// A vault already exists there.
    #[error("a vault already exists at {0}")]
    Exists(String),
    /// Restore found damage.
    #[error("disk {disk}: block {block}: {detail}")]
    Corrupt {
        /// Disk name.
        disk: String,
        /// Block index.
        block: u64,
        /// What is wrong.
        detail: String,
    },
    /// Local file I/O during restore.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The point does not exist.
    #[error("no recovery point {0}")]
    NoPoint(String),
}

impl VaultError {
    /// True for a failure that may go away by itself (the store unreachable or refusing for a
    /// while); false for damage, a missing object, a wrong key.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Store { source, .. } => *source != BlobError::NotFound,
            VaultError::Io { .. } => true,
            _ => false,
        }
    }
}

mod blobs;
mod gc;
mod inplace;
mod points;
mod restore;
mod store;

pub use blobs::{sync_paths, ObjectBlobStore};
pub use gc::GcReport;
pub use inplace::InPlaceStats;
pub use restore::RestoreStats;
pub use store::*;

/// Where a block lives.
#[derive(Clone, Debug)]
struct Loc {
    /// Pack id.
    pack: Arc<str>,
    /// Offset in the pack.
    offset: u64,
    /// Sealed length.
    len: u32,
}

/// Block ids the chunk cache holds at most (32 bytes each: 64 MiB).
const CHUNK_CACHE_IDS: usize = 2 << 20;

/// An open vault.
pub struct Vault {
    /// The object store.
    store: Arc<dyn BlobStore>,
    /// Keys.
    key: DataKey,
    /// Header.
    header: VaultHeader,
    /// Block index (block id -> location), built from pack indexes.
    index: RwLock<HashMap<BlockId, Vec<Loc>>>,
    /// Packs whose index is loaded.
    loaded: RwLock<std::collections::HashSet<String>>,
    /// Decrypted point records by object key.
    points: RwLock<BTreeMap<String, PointRecord>>,
    /// Packs condemned by garbage collection (dedup ignores their blocks).
    condemned: RwLock<std::collections::HashSet<String>>,
    /// Verified chunks by id (immutable and content-addressed, so a copy never goes stale;
    /// what garbage collection's mark reads again and again). Bounded by [`CHUNK_CACHE_IDS`].
    chunks: RwLock<HashMap<BlockId, Arc<Vec<BlockId>>>>,
    /// Source of object ids (packs, chunk salts, points) and retry jitter: the OS in the
    /// daemon, a seed in the simulation (so a run replays exactly).
    ids: std::sync::Mutex<rand::rngs::StdRng>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.header.name)
    }
}

fn nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

impl Vault {
    /// Creates a vault in `store` (fails if one exists).
    pub async fn create(
        store: Arc<dyn BlobStore>,
        name: &str,
        key: &DataKey,
        now: UnixMillis,
    ) -> Result<VaultHeader, VaultError> {
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let header = VaultHeader {
            format: VAULT_FORMAT,
            name: name.into(),
            id: vault::hex(&id),
            created: now,
            block_size: vault::DEFAULT_BLOCK_SIZE,
            key_check: key.key_check(),
        };
        let body = serde_json::to_vec_pretty(&header).unwrap_or_default();
        match store
            .put("vault.json", Bytes::from(body), PutMode::Create)
            .await
        {
            Ok(true) => Ok(header),
            Ok(false) => Err(VaultError::Exists(store.describe())),
            Err(e) => Err(VaultError::Store {
                op: "create",
                key: "vault.json".into(),
                source: e,
            }),
        }
    }

    /// Opens the vault in `store` with `key` and loads its block index.
    pub async fn open(store: Arc<dyn BlobStore>, key: DataKey) -> Result<Vault, VaultError> {
        let raw = match store.get("vault.json").await {
            Ok(r) => r,
            Err(BlobError::NotFound) => return Err(VaultError::NoVault(store.describe())),
            Err(e) => {
                return Err(VaultError::Store {
                    op: "get",
                    key: "vault.json".into(),
                    source: e,
                })
            }
        };
        let header: VaultHeader = serde_json::from_slice(&raw).map_err(|e| VaultError::Format {
            key: "vault.json".into(),
            source: FormatError::Malformed {
                what: "vault header",
                msg: e.to_string(),
            },
        })?;
        if header.key_check != key.key_check() {
            return Err(VaultError::WrongKey(header.name));
        }
        let v = Vault {
            store,
            key,
            header,
            index: RwLock::new(HashMap::new()),
            loaded: RwLock::new(Default::default()),
            points: RwLock::new(BTreeMap::new()),
            condemned: RwLock::new(Default::default()),
            chunks: RwLock::new(HashMap::new()),
            ids: std::sync::Mutex::new(rand::rngs::StdRng::from_entropy()),
        };
        v.refresh_condemned().await?;
        v.refresh_index().await?;
        Ok(v)
    }

    /// Draws object ids and retry jitter from `seed` instead of the OS (the simulation: the
    /// same seed makes the same objects in the same order).
    pub fn seeded(self, seed: u64) -> Vault {
        if let Ok(mut r) = self.ids.lock() {
            *r = rand::rngs::StdRng::seed_from_u64(seed);
        }
        self
    }

    /// A fresh random 16-byte id (packs, points, chunk salts).
    pub fn fresh_id(&self) -> [u8; 16] {
        let mut n = [0u8; 16];
        if let Ok(mut r) = self.ids.lock() {
            r.fill_bytes(&mut n);
        }
        n
    }

    /// Jitter for a retry's backoff.
    pub fn jitter(&self) -> u64 {
        self.ids.lock().map(|mut r| r.next_u64()).unwrap_or(0)
    }

    /// Retries `f` with capped, jittered exponential backoff, at most `attempts` times.
    pub async fn retry<T, F, Fut>(&self, what: &str, attempts: u32, f: F) -> Result<T, VaultError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, VaultError>>,
    {
        with_retries(what, attempts, || self.jitter(), f).await
    }

    /// Durability barrier: every object put so far survives a crash of the vault host once this
    /// returns (see [`BlobStore::barrier`]).
    pub async fn barrier(&self) -> Result<(), VaultError> {
        self.store
            .barrier()
            .await
            .map_err(|source| VaultError::Store {
                op: "barrier",
                key: self.store.describe(),
                source,
            })
    }

    /// The header.
    pub fn header(&self) -> &VaultHeader {
        &self.header
    }

    /// The data key.
    pub fn key(&self) -> &DataKey {
        &self.key
    }

    /// Blocks in the index.
    pub fn indexed_blocks(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    fn store_err(op: &'static str, key: &str) -> impl FnOnce(BlobError) -> VaultError {
        let key = key.to_string();
        move |source| VaultError::Store { op, key, source }
    }

    async fn get(&self, key: &str) -> Result<Bytes, VaultError> {
        self.store
            .get(key)
            .await
            .map_err(Self::store_err("get", key))
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<BlobMeta>, VaultError> {
        self.store
            .list(prefix)
            .await
            .map_err(Self::store_err("list", prefix))
    }

    async fn delete_key(&self, key: &str) -> Result<(), VaultError> {
        self.store
            .delete(key)
            .await
            .map_err(Self::store_err("delete", key))
    }

    async fn exists_under(&self, prefix: &str) -> Result<bool, VaultError> {
        Ok(!self.list(prefix).await?.is_empty())
    }

    /// Process-server side of the garbage-collection protocol, run just before a commit: every
    /// pack the new point depends on through this session (uploaded or deduplicated) that GC has
    /// condemned meanwhile is rescued; then, if any of them has a deletion tombstone, the session
    /// must fail (its mobility node retries, and dedup no longer offers that pack).
    pub async fn rescue(
        &self,
        session: &str,
        packs: &std::collections::BTreeSet<String>,
    ) -> Result<(), VaultError> {
        self.refresh_condemned().await?;
        let at_risk: Vec<String> = packs
            .iter()
            .filter(|p| self.is_condemned(p))
            .cloned()
            .collect();
        for p in &at_risk {
            self.put(
                &format!("gc/rescue/{p}/{session}"),
                Bytes::new(),
                PutMode::Overwrite,
            )
            .await?;
        }
        for p in packs {
            if self.head_exists(&format!("gc/deleted/{p}")).await?
                || !self.head_exists(&index_key(p)).await?
            {
                // Forget the vanished pack so the retry uploads those blocks afresh.
                self.refresh_index().await?;
                return Err(VaultError::Exists(format!(
                    "pack {p} was garbage-collected during the session; the session is retried with fresh blocks"
                )));
            }
        }
        Ok(())
    }

    /// True if an object exists (names come from validated fields, never raw network text).
    pub async fn has_object(&self, key: &str) -> Result<bool, VaultError> {
        self.head_exists(key).await
    }

    async fn head_exists(&self, key: &str) -> Result<bool, VaultError> {
        self.store
            .head(key)
            .await
            .map(|m| m.is_some())
            .map_err(Self::store_err("head", key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, VaultError> {
        Ok(self
            .list_meta(prefix)
            .await?
            .into_iter()
            .map(|m| m.key)
            .collect())
    }

    /// Loads the indexes of packs not yet known and forgets packs that are gone. A block held by
    /// several packs (after a repack) is located in a pack that is not condemned.
    pub async fn refresh_index(&self) -> Result<(), VaultError> {
        let mut present = std::collections::HashSet::new();
        for k in self.list("packs").await? {
            let Some(pack) = k.strip_suffix(".idx").and_then(|s| s.rsplit('/').next()) else {
                continue;
            };
            if vault::from_hex::<16>(pack).is_none() {
                continue;
            }
            present.insert(pack.to_string());
            if self
                .loaded
                .read()
                .map(|l| l.contains(pack))
                .unwrap_or(false)
            {
                continue;
            }
            let raw = match self.get(&k).await {
                Ok(r) => r,
                // Deleted by garbage collection between list and get.
                Err(VaultError::Store {
                    source: BlobError::NotFound,
                    ..
                }) => {
                    present.remove(pack);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let plain = self
                .key
                .open_object("idx", &raw)
                .map_err(|e| VaultError::Format {
                    key: k.clone(),
                    source: e,
                })?;
            let idx: PackIndex =
                from_rmp("pack index", &plain).map_err(|e| VaultError::Format {
                    key: k.clone(),
                    source: e,
                })?;
            self.add_index(pack, idx);
        }
        if let Ok(mut i) = self.index.write() {
            i.retain(|_, locs| {
                locs.retain(|l| present.contains(&*l.pack));
                !locs.is_empty()
            });
        }
        if let Ok(mut l) = self.loaded.write() {
            l.retain(|p| present.contains(p));
        }
        Ok(())
    }

    fn add_index(&self, pack: &str, idx: PackIndex) {
        let p: Arc<str> = Arc::from(pack);
        if let Ok(mut i) = self.index.write() {
            for e in idx.entries {
                let locs = i.entry(e.id).or_default();
                if !locs.iter().any(|l| *l.pack == *pack) {
                    locs.push(Loc {
                        pack: p.clone(),
                        offset: e.offset,
                        len: e.len,
                    });
                }
            }
        }
        if let Ok(mut l) = self.loaded.write() {
            l.insert(pack.to_string());
        }
    }

    fn is_condemned(&self, pack: &str) -> bool {
        self.condemned
            .read()
            .map(|c| c.contains(pack))
            .unwrap_or(false)
    }

    /// Reloads the set of packs condemned by garbage collection.
    pub async fn refresh_condemned(&self) -> Result<(), VaultError> {
        let mut set = std::collections::HashSet::new();
        for k in self.list("gc/condemned").await? {
            if let Some(p) = k
                .rsplit('/')
                .next()
                .filter(|p| vault::from_hex::<16>(p).is_some())
            {
                set.insert(p.to_string());
            }
        }
        if let Ok(mut c) = self.condemned.write() {
            *c = set;
        }
        Ok(())
    }

    /// Where block `id` is, preferring packs that are not condemned.
    fn best_loc(&self, id: &BlockId) -> Option<Loc> {
        let i = self.index.read().ok()?;
        let locs = i.get(id)?;
        locs.iter()
            .find(|l| !self.is_condemned(&l.pack))
            .or_else(|| locs.first())
            .cloned()
    }

    /// The pack holding `id` that is not condemned, if any.
    pub fn pack_of(&self, id: &BlockId) -> Option<String> {
        self.best_loc(id)
            .filter(|l| !self.is_condemned(&l.pack))
            .map(|l| l.pack.to_string())
    }

    /// True if any pack holds `id`, condemned or not (what dedup must not use; see
    /// [`lifeboat_actors::plant::Plant::DedupCondemned`]).
    pub fn indexed_anywhere(&self, id: &BlockId) -> bool {
        self.index.read().is_ok_and(|i| i.contains_key(id))
    }

    /// True if a pack other than `pack`, not condemned, also holds `id`.
    fn copy_elsewhere(&self, id: &BlockId, pack: &str) -> bool {
        self.index
            .read()
            .ok()
            .and_then(|i| {
                i.get(id).map(|locs| {
                    locs.iter()
                        .any(|l| *l.pack != *pack && !self.is_condemned(&l.pack))
                })
            })
            .unwrap_or(false)
    }

    /// True if the vault holds block `id`. Blocks only in condemned packs do not count: a new
    /// point must not start depending on a pack that garbage collection is about to delete.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.pack_of(id).is_some()
    }

    async fn put(
        &self,
        key: &str,
        body: impl Into<Bytes>,
        mode: PutMode,
    ) -> Result<bool, VaultError> {
        self.store
            .put(key, body.into(), mode)
            .await
            .map_err(Self::store_err("put", key))
    }

    /// Uploads a finished pack, then its index, then makes its blocks visible. Returns bytes.
    pub async fn upload_pack(&self, pack: PackBuilder) -> Result<u64, VaultError> {
        if pack.is_empty() {
            return Ok(0);
        }
        let (id, bytes, idx) = pack.finish(self.fresh_id());
        self.upload_finished(&id, Bytes::from(bytes), idx).await
    }

    /// Uploads a finished pack (`bytes` is cheap to clone for retries), then its index, then
    /// makes its blocks visible. Returns bytes.
    pub async fn upload_finished(
        &self,
        id: &str,
        bytes: Bytes,
        idx: PackIndex,
    ) -> Result<u64, VaultError> {
        let id = id.to_string();
        let n = bytes.len() as u64;
        let sealed_idx = Bytes::from(self.key.seal_object("idx", nonce(), &to_rmp(&idx)));
        let (pk, ik) = (pack_key(&id), index_key(&id));
        self.retry("put pack", 8, || {
            self.put(&pk, bytes.clone(), PutMode::Overwrite)
        })
        .await?;
        self.retry("put index", 8, || {
            self.put(&ik, sealed_idx.clone(), PutMode::Overwrite)
        })
        .await?;
        self.add_index(&id, idx);
        Ok(n)
    }

    /// Writes `recovery/key`: the data key (with its rotations) wrapped by `wrap_key`.
    pub async fn put_recovery_key(&self, wrap_key: &[u8; 32]) -> Result<(), VaultError> {
        let sealed = Bytes::from(vault::recovery::wrap_keys(wrap_key, &self.key, nonce()));
        let k = vault::recovery::RECOVERY_KEY_OBJECT;
        self.retry("put recovery key", 8, || {
            self.put(k, sealed.clone(), PutMode::Overwrite)
        })
        .await?;
        self.barrier().await
    }

    /// Writes `recovery/config` (sealed with the data key): the configuration node's state a
    /// node attached with the recovery key starts from.
    pub async fn put_recovery_config(&self, plain: &[u8]) -> Result<(), VaultError> {
        let k = vault::recovery::RECOVERY_CONFIG_OBJECT;
        let sealed = Bytes::from(self.key.seal_object(k, nonce(), plain));
        self.retry("put recovery config", 8, || {
            self.put(k, sealed.clone(), PutMode::Overwrite)
        })
        .await?;
        self.barrier().await
    }

    /// Reads `recovery/config`, if there is one.
    pub async fn recovery_config(&self) -> Result<Option<Vec<u8>>, VaultError> {
        let k = vault::recovery::RECOVERY_CONFIG_OBJECT;
        if !self.has_object(k).await? {
            return Ok(None);
        }
        let raw = self.get(k).await?;
        self.key
            .open_object(k, &raw)
            .map(Some)
            .map_err(|source| VaultError::Format {
                key: k.into(),
                source,
            })
    }

    /// Stores a manifest chunk (content-addressed: an existing one is reused).
    pub async fn put_chunk(&self, ids: &[BlockId]) -> Result<BlockId, VaultError> {
        let (id, sealed) = self.seal_chunk(ids);
        self.put_sealed_chunk(&id, sealed).await?;
        Ok(id)
    }

    /// Seals a manifest chunk: its id (known before it is stored, so it can be leased first)
    /// and its object.
    pub fn seal_chunk(&self, ids: &[BlockId]) -> (BlockId, Bytes) {
        let salt = self.fresh_id();
        let id = self.key.chunk_id(&salt, ids);
        (id, Bytes::from(self.key.seal_chunk(&salt, ids, nonce())))
    }

    /// Stores a chunk sealed by [`Vault::seal_chunk`].
    pub async fn put_sealed_chunk(&self, id: &BlockId, sealed: Bytes) -> Result<(), VaultError> {
        let k = chunk_key(id);
        self.retry("put chunk", 8, || {
            self.put(&k, sealed.clone(), PutMode::Create)
        })
        .await?;
        Ok(())
    }

    /// Reads and verifies a manifest chunk (a copy verified before is used again).
    pub async fn get_chunk(&self, id: &BlockId) -> Result<Vec<BlockId>, VaultError> {
        if let Some(c) = self.chunks.read().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(c.to_vec());
        }
        let k = chunk_key(id);
        let raw = self.get(&k).await?;
        let ids = self
            .key
            .open_chunk(id, &raw)
            .map_err(|e| VaultError::Format { key: k, source: e })?;
        if let Ok(mut c) = self.chunks.write() {
            if c.len() * CHUNK_ENTRIES >= CHUNK_CACHE_IDS {
                c.clear();
            }
            c.insert(*id, Arc::new(ids.clone()));
        }
        Ok(ids)
    }

    /// The block ids of a disk, expanded from its chunks (verifying each chunk).
    pub async fn disk_ids(&self, d: &DiskRecord) -> Result<Vec<BlockId>, VaultError> {
        let mut ids = Vec::with_capacity(d.blocks() as usize);
        for c in &d.chunks {
            ids.extend(self.get_chunk(c).await?);
        }
        Ok(ids)
    }

    /// Reads, opens and verifies one block.
    pub async fn read_block(&self, id: &BlockId, max_len: usize) -> Result<Vec<u8>, VaultError> {
        let loc = self.locate(id).await.ok_or_else(|| VaultError::Format {
            key: id.to_hex(),
            source: FormatError::Malformed {
                what: "index",
                msg: "block not in the vault".into(),
            },
        })?;
        let k = pack_key(&loc.pack);
        let raw = self
            .store
            .get_range(&k, loc.offset..loc.offset + loc.len as u64)
            .await
            .map_err(Self::store_err("get_range", &k))?;
        self.key
            .open_block(id, &raw, max_len)
            .map_err(|e| VaultError::Format { key: k, source: e })
    }

    async fn locate(&self, id: &BlockId) -> Option<Loc> {
        if let Some(l) = self.best_loc(id) {
            return Some(l);
        }
        let _ = self.refresh_index().await;
        self.best_loc(id)
    }
}
#[cfg(test)]
mod tests;
