//! The daemon's [`BlobStore`]: an `object_store` store (a local directory, Azure Blob, S3) with
//! the local fast path: big objects (packs) written with `O_DIRECT`, small ones through the
//! page cache, and a durability barrier that syncs exactly the files written since the last
//! one (cloud stores acknowledge a put once it is durable, so there it is a no-op).

use bytes::Bytes;
use futures_util::StreamExt;
use lifeboat_actors::seams::{BlobError, BlobMeta, BlobStore, BoxFuture, PutMode};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Local objects at least this big (packs) are written with `O_DIRECT` (see
/// [`crate::direct_io::write_direct`]): straight to the device, so the commit barrier only has
/// metadata left to sync, and no page cache is filled with data nobody reads back soon.
const DIRECT_PUT_MIN: usize = 1 << 20;

/// An `object_store` store as a [`BlobStore`].
pub struct ObjectBlobStore {
    /// The store.
    store: Arc<dyn ObjectStore>,
    /// Directory of a local store: [`BlobStore::barrier`] makes the puts there durable.
    local_root: Option<PathBuf>,
    /// Local files written since the last barrier.
    unsynced: std::sync::Mutex<Vec<PathBuf>>,
    /// Serializes barriers: one that finds its files already taken by a running barrier waits
    /// for that barrier to finish before it returns.
    barrier_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectBlobStore({})", self.store)
    }
}

fn failed(e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        e => BlobError::Failed(e.to_string()),
    }
}

impl ObjectBlobStore {
    /// Wraps `store`; `local_root` is the directory of a local store (see
    /// [`super::local_root`]).
    pub fn new(store: Arc<dyn ObjectStore>, local_root: Option<PathBuf>) -> Self {
        ObjectBlobStore {
            store,
            local_root,
            unsynced: Default::default(),
            barrier_lock: Default::default(),
        }
    }

    /// Writes a local store's big overwritten object (a pack) with `O_DIRECT`. False if the
    /// object is not one, or the filesystem refuses `O_DIRECT`: the caller then puts it through
    /// the store.
    async fn put_direct(&self, key: &str, body: &Bytes, mode: PutMode) -> Result<bool, BlobError> {
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
            .map_err(|e| BlobError::Failed(format!("{}: {e}", dest.display())))
    }

    async fn put_inner(&self, key: &str, body: Bytes, mode: PutMode) -> Result<bool, BlobError> {
        let stored = if self.put_direct(key, &body, mode).await? {
            true
        } else {
            let opts = PutOptions {
                mode: match mode {
                    PutMode::Create => object_store::PutMode::Create,
                    PutMode::Overwrite => object_store::PutMode::Overwrite,
                },
                ..Default::default()
            };
            match self
                .store
                .put_opts(&ObjPath::from(key), PutPayload::from(body), opts)
                .await
            {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                Err(e) => return Err(failed(e)),
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

    async fn barrier_inner(&self) -> Result<(), BlobError> {
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
        if let Err(e) = done {
            // Still unsynced: the next barrier tries them again.
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(files);
            return Err(BlobError::Failed(format!(
                "cannot make vault writes durable (sync of {}): {e}",
                root.display()
            )));
        }
        Ok(())
    }
}

impl BlobStore for ObjectBlobStore {
    fn describe(&self) -> String {
        self.store.to_string()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        Box::pin(async move {
            let r = self.store.get(&ObjPath::from(key)).await.map_err(failed)?;
            r.bytes().await.map_err(failed)
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        Box::pin(async move {
            self.store
                .get_range(&ObjPath::from(key), range)
                .await
                .map_err(failed)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(self.put_inner(key, body, mode))
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, BlobError>> {
        Box::pin(async move {
            match self.store.head(&ObjPath::from(key)).await {
                Ok(m) => Ok(Some(meta(m))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>> {
        Box::pin(async move {
            let p = ObjPath::from(prefix);
            let mut s = self.store.list(Some(&p));
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                out.push(meta(m.map_err(failed)?));
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            match self.store.delete(&ObjPath::from(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), BlobError>> {
        Box::pin(self.barrier_inner())
    }

    fn sweep(&self, now_ms: u64, grace_ms: u64) -> BoxFuture<'_, (u64, u64)> {
        let root = self.local_root.clone();
        Box::pin(async move {
            let Some(root) = root else { return (0, 0) };
            tokio::task::spawn_blocking(move || sweep_staging(&root, now_ms, grace_ms))
                .await
                .unwrap_or_default()
        })
    }
}

fn meta(m: object_store::ObjectMeta) -> BlobMeta {
    BlobMeta {
        key: m.location.to_string(),
        size: m.size,
        modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_store_syncs_what_it_wrote_at_each_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vault");
        std::fs::create_dir_all(&root).unwrap();
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
        let s = ObjectBlobStore::new(Arc::new(fs), Some(root.clone()));
        let pending = || s.unsynced.lock().unwrap().clone();
        let body = || Bytes::from_static(b"x");
        assert!(s.put("chunks/ab/c", body(), PutMode::Create).await.unwrap());
        assert!(s.put("points/p", body(), PutMode::Create).await.unwrap());
        // An object that already exists (create-if-absent) is named for the next barrier too:
        // it may be another writer's, not yet durable.
        assert!(!s.put("points/p", body(), PutMode::Create).await.unwrap());
        let files = pending();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.starts_with(&root) && f.exists()));
        s.barrier().await.unwrap();
        assert!(pending().is_empty(), "a barrier leaves nothing unsynced");
        // An object deleted before the barrier (garbage collection) needs no sync.
        s.put("gc/condemned/x", Bytes::new(), PutMode::Overwrite)
            .await
            .unwrap();
        std::fs::remove_file(root.join("gc/condemned/x")).unwrap();
        s.barrier().await.unwrap();
        // Listing is sorted and recursive; head and delete of an absent object are not errors.
        let keys: Vec<String> = s
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["chunks/ab/c", "points/p"]);
        assert_eq!(s.head("nope").await.unwrap(), None);
        s.delete("nope").await.unwrap();
        assert_eq!(s.get("nope").await.unwrap_err(), BlobError::NotFound);
        // Only file:// vaults take barriers; a cloud put is durable when acknowledged.
        assert!(super::super::local_root("az://c").is_none());
        assert_eq!(
            super::super::local_root("file:///v"),
            Some(PathBuf::from("/v"))
        );
    }
}
