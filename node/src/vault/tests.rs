//! Unit tests of the vault client against a local store.

use super::*;
use std::path::PathBuf;

/// A new local vault under `dir` (syncing at barriers) and its root directory.
async fn local_vault(dir: &Path) -> (Vault, PathBuf) {
    let root = dir.join("vault");
    let url = format!("file://{}", root.display());
    let store = store_from_url(&url, &BTreeMap::new()).unwrap();
    let key = DataKey::from_master([7; 32]);
    Vault::create(store.clone(), "t", &key, UnixMillis(1))
        .await
        .unwrap();
    let v = Vault::open(store, key).await.unwrap();
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
