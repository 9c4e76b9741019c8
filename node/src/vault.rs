//! The vault client: moves the sealed formats of [`lifeboat_protocol::vault`] to and from an
//! object store (`object_store`: local directory, Azure Blob, S3).
//!
//! Writes are ordered so a reader never sees a dangling reference: a pack is written before its
//! index, chunks before the point that names them, and the point last, with create-if-absent
//! (the commit). Every read is verified: AEAD tags, block ids, chunk ids, Merkle roots.

use bytes::Bytes;
use futures_util::StreamExt;
use lifeboat_actors::gc;
use lifeboat_protocol::vault::{
    self, chunk_key, from_rmp, index_key, pack_key, to_rmp, BlockId, DataKey, DiskRecord,
    FormatError, PackBuilder, PackIndex, PointRecord, VaultHeader, CHUNK_ENTRIES, MAX_BLOCK_SIZE,
    VAULT_FORMAT,
};
use lifeboat_protocol::{NodeId, UnixMillis};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
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
        source: object_store::Error,
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

/// How a node reaches a vault (persisted as `vault.json`, 0600).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultConfig {
    /// Vault name.
    pub name: String,
    /// Store URL.
    pub url: String,
    /// Master data key, hex.
    pub master_key: String,
    /// Sealing keys added by `vault rekey`, hex, oldest first (new writes use the newest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<String>,
    /// object_store configuration options.
    pub options: BTreeMap<String, String>,
    /// Options granted to process servers instead of `options` (their own, narrower store
    /// credentials, e.g. a write-and-read SAS without delete); `None`: `options` are granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_options: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultConfig({}, {})", self.name, self.url)
    }
}

impl VaultConfig {
    /// The data key (with its rotations).
    pub fn key(&self) -> Option<DataKey> {
        let master = vault::from_hex::<32>(&self.master_key)?;
        let rotations = self
            .rotations
            .iter()
            .map(|r| vault::from_hex::<32>(r))
            .collect::<Option<Vec<_>>>()?;
        Some(DataKey::with_rotations(master, rotations))
    }
}

/// The directory of a local (`file://`) vault, whose writes need an explicit durability
/// barrier; `None` for cloud stores, whose acknowledged puts are already durable.
pub fn local_root(url: &str) -> Option<std::path::PathBuf> {
    url.strip_prefix("file://")
        .filter(|p| p.starts_with('/'))
        .map(std::path::PathBuf::from)
}

/// Makes `files` under a local vault directory `root` durable: each file's data, then every
/// directory from its parent up to `root` (new files and the fan-out directories created for
/// them). A file that is gone (deleted by garbage collection) needs nothing. An error names the
/// file or directory that could not be synced.
pub async fn sync_paths(root: PathBuf, files: Vec<PathBuf>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || sync_paths_blocking(&root, &files))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

fn sync_paths_blocking(root: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    let named = |p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let sync = |p: &Path, all: bool| {
        let r = std::fs::File::open(p).and_then(|h| if all { h.sync_all() } else { h.sync_data() });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| named(p, e)),
        }
    };
    // A few threads, so the filesystem can fold the syncs into shared journal commits.
    let per_thread = files.len().div_ceil(4).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = files
            .chunks(per_thread)
            .map(|part| s.spawn(move || part.iter().try_for_each(|f| sync(f, false))))
            .collect();
        parts.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked")))
        })
    })?;
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut d = f.parent();
        while let Some(dir) = d.filter(|d| d.starts_with(root)) {
            if !dirs.insert(dir) {
                break;
            }
            d = dir.parent();
        }
    }
    dirs.into_iter().try_for_each(|d| sync(d, true))
}

/// Deletes the staging files (`NAME#<digits>`, see [`crate::direct_io::write_direct`]) under a
/// local vault `root` last modified at least `grace_ms` before `now_ms`: writes that a killed
/// process never renamed into place. A live write is far younger than any grace period (and if
/// one were removed anyway its rename would fail and the put would be retried). Returns files
/// and bytes deleted; what cannot be read or deleted is left for the next pass.
fn sweep_staging(root: &Path, now_ms: u64, grace_ms: u64) -> (u64, u64) {
    let staging = |name: &str| {
        name.rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let (mut files, mut bytes) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(e.path());
                continue;
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(u64::MAX, |d| d.as_millis() as u64);
            if staging(&e.file_name().to_string_lossy())
                && now_ms.saturating_sub(modified) >= grace_ms
                && std::fs::remove_file(e.path()).is_ok()
            {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// Builds an object store from a vault URL and options.
pub fn store_from_url(
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, VaultError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(VaultError::Url(url.into()));
        }
        std::fs::create_dir_all(path).map_err(|e| VaultError::Io {
            path: path.into(),
            source: e,
        })?;
        // Small puts go through the page cache (packs are written direct by `Vault::put`);
        // durability is a barrier at each point commit (see `Vault::barrier`), not a sync per
        // put: syncing a session's files together, once, costs far less than waiting for each
        // pack, chunk and index, and gives a commit the same guarantee.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(|e| {
            VaultError::Store {
                op: "open",
                key: path.into(),
                source: e,
            }
        })?;
        return Ok(Arc::new(fs));
    }
    let built = if let Some(container) = url
        .strip_prefix("az://")
        .or_else(|| url.strip_prefix("azure://"))
    {
        let b =
            object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(container);
        let b = configured(
            b,
            options,
            |b, k: object_store::azure::AzureConfigKey, v| b.with_config(k, v),
        );
        b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
    } else if let Some(bucket) = url.strip_prefix("s3://") {
        let b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let b = configured(
            b,
            options,
            |b, k: object_store::aws::AmazonS3ConfigKey, v| b.with_config(k, v),
        );
        b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
    } else {
        return Err(VaultError::Url(url.into()));
    };
    built.map_err(|e| VaultError::Store {
        op: "open",
        key: url.into(),
        source: e,
    })
}

/// Applies the options whose keys the store's builder knows (others belong to other stores).
fn configured<B, K: std::str::FromStr>(
    mut b: B,
    options: &BTreeMap<String, String>,
    set: impl Fn(B, K, &String) -> B,
) -> B {
    for (k, v) in options {
        if let Ok(key) = k.parse::<K>() {
            b = set(b, key, v);
        }
    }
    b
}

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

/// What a garbage collection did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
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

/// Local objects at least this big (packs) are written with `O_DIRECT` (see
/// [`crate::direct_io::write_direct`]): straight to the device, so the commit barrier only has
/// metadata left to sync, and no page cache is filled with data nobody reads back soon.
const DIRECT_PUT_MIN: usize = 1 << 20;

/// An open vault.
pub struct Vault {
    /// The object store.
    store: Arc<dyn ObjectStore>,
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
    /// Directory of a local vault: [`Vault::barrier`] makes the puts there durable.
    local_root: Option<std::path::PathBuf>,
    /// Local files written since the last barrier.
    unsynced: std::sync::Mutex<Vec<std::path::PathBuf>>,
    /// Serializes barriers: one that finds its files already taken by a running barrier waits
    /// for that barrier to finish before it returns.
    barrier_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.header.name)
    }
}

fn path(key: &str) -> ObjPath {
    ObjPath::from(key)
}

fn random16() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

fn nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Retries `f` with capped, jittered exponential backoff, at most `attempts` times.
pub async fn with_retries<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    attempts: u32,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = 200u64;
    let mut n = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if n + 1 >= attempts => return Err(e),
            Err(e) => {
                n += 1;
                let jitter = rand::thread_rng().next_u64() % (delay / 2 + 1);
                tracing::warn!(op = what, attempt = n, cause = %e, "vault operation failed; retrying");
                tokio::time::sleep(Duration::from_millis(delay / 2 + jitter)).await;
                delay = (delay * 2).min(10_000);
            }
        }
    }
}

impl Vault {
    /// Creates a vault in `store` (fails if one exists).
    pub async fn create(
        store: Arc<dyn ObjectStore>,
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
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(&path("vault.json"), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(header),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(VaultError::Exists(store.to_string()))
            }
            Err(e) => Err(VaultError::Store {
                op: "create",
                key: "vault.json".into(),
                source: e,
            }),
        }
    }

    /// Opens the vault in `store` with `key` and loads its block index.
    pub async fn open(store: Arc<dyn ObjectStore>, key: DataKey) -> Result<Vault, VaultError> {
        let raw = match store.get(&path("vault.json")).await {
            Ok(r) => r.bytes().await.map_err(|e| VaultError::Store {
                op: "get",
                key: "vault.json".into(),
                source: e,
            })?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(VaultError::NoVault(store.to_string()))
            }
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
            local_root: None,
            unsynced: Default::default(),
            barrier_lock: Default::default(),
        };
        v.refresh_condemned().await?;
        v.refresh_index().await?;
        Ok(v)
    }

    /// Marks the vault as local at `root` (see [`local_root`]): commits then sync it.
    pub fn durable_at(mut self, root: Option<std::path::PathBuf>) -> Vault {
        self.local_root = root;
        self
    }

    /// Durability barrier: every object put so far survives a crash of the vault host once this
    /// returns. A no-op for cloud stores (a put is acknowledged once durable); for a local vault
    /// the files written since the last barrier and their directories are synced (only those:
    /// unrelated dirty data on the same filesystem is not waited for).
    pub async fn barrier(&self) -> Result<(), VaultError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let _one = self.barrier_lock.lock().await;
        let files = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|p| p.into_inner()));
        if files.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let done = sync_paths(root.clone(), files.clone()).await;
        tracing::debug!(
            files = files.len(),
            ms = started.elapsed().as_millis() as u64,
            "vault barrier"
        );
        if let Err(source) = done {
            // Still unsynced: the next barrier tries them again.
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(files);
            return Err(VaultError::Io {
                path: format!(
                    "cannot make vault writes durable (sync of {})",
                    root.display()
                ),
                source,
            });
        }
        Ok(())
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

    async fn get(&self, key: &str) -> Result<Bytes, VaultError> {
        let r = self
            .store
            .get(&path(key))
            .await
            .map_err(|e| VaultError::Store {
                op: "get",
                key: key.into(),
                source: e,
            })?;
        r.bytes().await.map_err(|e| VaultError::Store {
            op: "get",
            key: key.into(),
            source: e,
        })
    }

    async fn list_meta(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, VaultError> {
        let p = path(prefix);
        let mut s = self.store.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            out.push(m.map_err(|e| VaultError::Store {
                op: "list",
                key: prefix.into(),
                source: e,
            })?);
        }
        Ok(out)
    }

    async fn delete_key(&self, key: &str) -> Result<(), VaultError> {
        match self.store.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(VaultError::Store {
                op: "delete",
                key: key.into(),
                source: e,
            }),
        }
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
        packs: &std::collections::HashSet<String>,
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

    /// Ends the leases of a committed session's packs.
    pub async fn release(&self, packs: &std::collections::HashSet<String>) {
        for p in packs {
            let _ = self.delete_key(&format!("gc/inflight/{p}")).await;
        }
    }

    /// True if an object exists (names come from validated fields, never raw network text).
    pub async fn has_object(&self, key: &str) -> Result<bool, VaultError> {
        self.head_exists(key).await
    }

    async fn head_exists(&self, key: &str) -> Result<bool, VaultError> {
        match self.store.head(&path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(VaultError::Store {
                op: "head",
                key: key.into(),
                source: e,
            }),
        }
    }

    /// Garbage collection, safe while process servers write:
    ///
    /// 1. mark: every block and chunk referenced by a point now in the vault;
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
        rep.points = points.len() as u64;
        rep.live_blocks = live.len() as u64;
        let age = |m: &object_store::ObjectMeta| {
            now_ms.saturating_sub(m.last_modified.timestamp_millis().max(0) as u64)
        };
        let condemned_at: BTreeMap<String, u64> = self
            .list_meta("gc/condemned")
            .await?
            .iter()
            .filter_map(|m| m.location.filename().map(|f| (f.to_string(), age(m))))
            .collect();
        let leases: BTreeMap<String, u64> = self
            .list_meta("gc/inflight")
            .await?
            .iter()
            .filter_map(|m| m.location.filename().map(|f| (f.to_string(), age(m))))
            .collect();
        // 2 and 3. Packs.
        for m in self.list_meta("packs").await? {
            let k = m.location.to_string();
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
            let facts = gc::PackFacts {
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
            match gc::decide_pack(&facts, grace_ms) {
                gc::PackAction::Keep => {}
                gc::PackAction::Uncondemn => {
                    self.uncondemn(&pack).await?;
                    rep.rescued += 1;
                }
                gc::PackAction::Delete => {
                    // Announce first (a tombstone that outlives the pack), then re-check rescues.
                    self.put(
                        &format!("gc/deleted/{pack}"),
                        Bytes::new(),
                        PutMode::Overwrite,
                    )
                    .await?;
                    if self.exists_under(&format!("gc/rescue/{pack}")).await? {
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
                gc::PackAction::Condemn { repack } => {
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
            if gc::lease_expired(*a) {
                self.delete_key(&format!("gc/inflight/{p}")).await?;
            }
        }
        // Tombstones of deleted packs are kept a week (far longer than any upload session).
        for m in self.list_meta("gc/deleted").await? {
            if gc::tombstone_expired(age(&m)) {
                self.delete_key(m.location.as_ref()).await?;
            }
        }
        // 4. Chunks.
        for m in self.list_meta("chunks").await? {
            let name = m.location.filename().unwrap_or_default().to_string();
            let Some(id) = vault::from_hex::<32>(&name).map(BlockId) else {
                continue;
            };
            if gc::chunk_is_garbage(live_chunks.contains(&id), age(&m), grace_ms) {
                self.delete_key(m.location.as_ref()).await?;
                rep.deleted_chunks += 1;
            }
        }
        // 5. Staging files of writes a killed process never renamed into place (a local vault
        // only; listings skip them, so nothing else would remove them).
        if let Some(root) = self.local_root.clone() {
            let (files, bytes) =
                tokio::task::spawn_blocking(move || sweep_staging(&root, now_ms, grace_ms))
                    .await
                    .unwrap_or_default();
            rep.deleted_staging = files;
            rep.freed_bytes += bytes;
        }
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

    async fn list(&self, prefix: &str) -> Result<Vec<String>, VaultError> {
        let p = path(prefix);
        let mut s = self.store.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            let m = m.map_err(|e| VaultError::Store {
                op: "list",
                key: prefix.into(),
                source: e,
            })?;
            out.push(m.location.to_string());
        }
        out.sort();
        Ok(out)
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
                    source: object_store::Error::NotFound { .. },
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
        let body: Bytes = body.into();
        let stored = if self.put_direct(key, &body, &mode).await? {
            true
        } else {
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path(key), PutPayload::from(body), opts)
                .await
            {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                Err(e) => {
                    return Err(VaultError::Store {
                        op: "put",
                        key: key.into(),
                        source: e,
                    })
                }
            }
        };
        // The next barrier syncs it. An object that already existed (create-if-absent) is
        // synced too: it may be another writer's, not yet durable, and about to be named.
        if let Some(root) = &self.local_root {
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(root.join(key));
        }
        Ok(stored)
    }

    /// Writes a local vault's big overwritten object (a pack) with `O_DIRECT` (see
    /// [`DIRECT_PUT_MIN`]). False if the object is not one, or the filesystem refuses
    /// `O_DIRECT`: the caller then puts it through the store.
    async fn put_direct(
        &self,
        key: &str,
        body: &Bytes,
        mode: &PutMode,
    ) -> Result<bool, VaultError> {
        let (Some(root), PutMode::Overwrite, true) =
            (&self.local_root, mode, body.len() >= DIRECT_PUT_MIN)
        else {
            return Ok(false);
        };
        let dest = root.join(key);
        let (file, data) = (dest.clone(), body.clone());
        tokio::task::spawn_blocking(move || crate::direct_io::write_direct(&file, &data))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|source| VaultError::Io {
                path: dest.display().to_string(),
                source,
            })
    }

    /// Uploads a finished pack, then its index, then makes its blocks visible. Returns bytes.
    pub async fn upload_pack(&self, pack: PackBuilder) -> Result<u64, VaultError> {
        if pack.is_empty() {
            return Ok(0);
        }
        let (id, bytes, idx) = pack.finish(random16());
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
        with_retries("put pack", 8, || {
            self.put(&pk, bytes.clone(), PutMode::Overwrite)
        })
        .await?;
        with_retries("put index", 8, || {
            self.put(&ik, sealed_idx.clone(), PutMode::Overwrite)
        })
        .await?;
        self.add_index(&id, idx);
        Ok(n)
    }

    /// Stores a manifest chunk (content-addressed: an existing one is reused).
    pub async fn put_chunk(&self, ids: &[BlockId]) -> Result<BlockId, VaultError> {
        let salt = random16();
        let id = self.key.chunk_id(&salt, ids);
        let sealed = self.key.seal_chunk(&salt, ids, nonce());
        let k = chunk_key(&id);
        with_retries("put chunk", 8, || {
            self.put(&k, sealed.clone(), PutMode::Create)
        })
        .await?;
        Ok(id)
    }

    /// Reads and verifies a manifest chunk.
    pub async fn get_chunk(&self, id: &BlockId) -> Result<Vec<BlockId>, VaultError> {
        let k = chunk_key(id);
        let raw = self.get(&k).await?;
        self.key
            .open_chunk(id, &raw)
            .map_err(|e| VaultError::Format { key: k, source: e })
    }

    /// Commits a point (create-if-absent). Everything it references must already be stored.
    /// Durable on return: a barrier before the put makes what the point references durable
    /// first (a crash can never leave a point naming lost objects), one after makes the point
    /// itself durable before anyone is told it is committed.
    pub async fn commit_point(&self, rec: &PointRecord) -> Result<(), VaultError> {
        self.barrier().await?;
        let k = rec.object_key();
        let sealed = Bytes::from(rec.seal(&self.key, nonce()));
        let created = with_retries("commit point", 8, || {
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

    /// Deletes a point (retention). Blocks and chunks it alone referenced become garbage; they
    /// are not removed here.
    pub async fn delete_point(&self, rec: &PointRecord) -> Result<(), VaultError> {
        let k = rec.object_key();
        match self.store.delete(&path(&k)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(VaultError::Store {
                    op: "delete",
                    key: k,
                    source: e,
                })
            }
        }
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
            .get_range(&path(&k), loc.offset..loc.offset + loc.len as u64)
            .await
            .map_err(|e| VaultError::Store {
                op: "get_range",
                key: k.clone(),
                source: e,
            })?;
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

    /// Restores a disk to `out` (a raw image), verifying every block and the Merkle root.
    pub async fn restore_disk(
        &self,
        d: &DiskRecord,
        out: &Path,
    ) -> Result<RestoreStats, VaultError> {
        let corrupt = |block: u64, detail: String| VaultError::Corrupt {
            disk: d.name.clone(),
            block,
            detail,
        };
        if d.block_size == 0 || d.block_size > MAX_BLOCK_SIZE {
            return Err(corrupt(0, format!("invalid block size {}", d.block_size)));
        }
        let root = self.key.merkle_root(d.size_bytes, d.block_size, &d.chunks);
        if root != d.merkle_root {
            return Err(corrupt(0, "Merkle root does not match the manifest".into()));
        }
        let io = |e: std::io::Error| VaultError::Io {
            path: out.display().to_string(),
            source: e,
        };
        if d.chunks.len() as u64 != d.blocks().div_ceil(CHUNK_ENTRIES as u64) {
            return Err(corrupt(
                0,
                format!(
                    "manifest has {} chunks for {} blocks",
                    d.chunks.len(),
                    d.blocks()
                ),
            ));
        }
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
        let result = self.restore_into(d, &staging).await;
        let result = result.and_then(|stats| {
            std::fs::rename(&staging, out).map_err(io)?;
            Ok(stats)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        result
    }

    /// Writes the verified blocks of `d` into the new file `out`.
    async fn restore_into(&self, d: &DiskRecord, out: &Path) -> Result<RestoreStats, VaultError> {
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
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
            while let Some((at, data)) = rx.blocking_recv() {
                if stopped() {
                    return Ok(());
                }
                w.write(at, &data)?;
            }
            if stopped() {
                return Ok(());
            }
            w.finish()
        });
        let mut stats = RestoreStats::default();
        let fetched = self.restore_blocks(d, &tx, &mut stats).await;
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
            (Ok(false), Ok(())) => Err(io(std::io::Error::other("restore writer stopped"))),
            (Ok(true), Ok(())) => Ok(stats),
        }
    }

    /// Fetches, verifies and hands to `tx` (block offset, plaintext) every non-zero block of
    /// `d`. Returns false if the writer went away first (its own result says why).
    async fn restore_blocks(
        &self,
        d: &DiskRecord,
        tx: &tokio::sync::mpsc::Sender<(u64, Vec<u8>)>,
        stats: &mut RestoreStats,
    ) -> Result<bool, VaultError> {
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
            // Group the chunk's blocks by pack and fetch contiguous runs with one ranged read.
            let mut wanted: Vec<(u64, BlockId, Loc)> = Vec::new();
            for (j, id) in ids.iter().enumerate() {
                let block = (ci * CHUNK_ENTRIES + j) as u64;
                if id.is_zero() {
                    stats.zero_blocks += 1;
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
                    .get_range(&path(&k), start..end)
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
                    if tx.send((block * bs, data)).await.is_err() {
                        return Ok(false);
                    }
                    stats.blocks += 1;
                }
                i = j;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new local vault under `dir` (syncing at barriers) and its root directory.
    async fn local_vault(dir: &Path) -> (Vault, PathBuf) {
        let root = dir.join("vault");
        let url = format!("file://{}", root.display());
        let store = store_from_url(&url, &BTreeMap::new()).unwrap();
        let key = DataKey::from_master([7; 32]);
        Vault::create(store.clone(), "t", &key, UnixMillis(1))
            .await
            .unwrap();
        let v = Vault::open(store, key)
            .await
            .unwrap()
            .durable_at(local_root(&url));
        (v, root)
    }

    #[tokio::test]
    async fn gc_removes_abandoned_staging_files_of_a_local_vault_and_nothing_else() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (v, root) = local_vault(dir.path()).await;
        let mut pack = PackBuilder::new();
        pack.add(BlockId([1; 32]), &[5u8; 2 << 20]);
        v.upload_pack(pack).await.unwrap();
        let packs = root.join("packs/ab");
        std::fs::create_dir_all(&packs).unwrap();
        let hour = Duration::from_secs(3600);
        let now = std::time::SystemTime::now();
        let file = |name: &str, age: Duration| {
            let p = packs.join(name);
            std::fs::write(&p, [0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - age).unwrap();
            p
        };
        let abandoned = file("x.pack#4242", 2 * hour);
        let live = file("y.pack#4243", Duration::ZERO);
        let named = file("z#not-staging", 2 * hour);
        let before: Vec<_> = walk_files(&root);
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let rep = v.gc(now_ms, hour.as_millis() as u64).await.unwrap();
        assert_eq!(rep.deleted_staging, 1);
        assert!(!abandoned.exists() && live.exists() && named.exists());
        let mut after = walk_files(&root);
        after.push(abandoned);
        after.sort();
        assert_eq!(
            after, before,
            "gc removed something other than the staging file"
        );
    }

    fn walk_files(d: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk_files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_local_vault_syncs_what_it_wrote_at_each_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let (v, root) = local_vault(dir.path()).await;
        let pending = || v.unsynced.lock().unwrap().clone();
        v.put_chunk(&[BlockId::ZERO; 3]).await.unwrap();
        let body = || Bytes::from_static(b"x");
        assert!(v.put("points/p", body(), PutMode::Create).await.unwrap());
        // An object that already exists (create-if-absent) is named for the next barrier too:
        // it may be another writer's, not yet durable.
        assert!(!v.put("points/p", body(), PutMode::Create).await.unwrap());
        let files = pending();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.starts_with(&root) && f.exists()));
        v.barrier().await.unwrap();
        assert!(pending().is_empty(), "a barrier leaves nothing unsynced");
        // An object deleted before the barrier (garbage collection) needs no sync.
        v.put(
            "gc/condemned/x",
            Bytes::from_static(b""),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
        std::fs::remove_file(root.join("gc/condemned/x")).unwrap();
        v.barrier().await.unwrap();
        // Only file:// vaults take barriers; a cloud put is durable when acknowledged.
        assert!(local_root("az://c").is_none());
        assert_eq!(
            local_root("file:///v"),
            Some(std::path::PathBuf::from("/v"))
        );
    }
}
