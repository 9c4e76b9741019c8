//! How a node reaches a vault: its persisted configuration, the store behind a URL, and
//! retries of store operations.

use super::*;

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
    /// The key that wraps the data key in `recovery/key` (hex; derived from the recovery key,
    /// which is never stored): a rekey wraps the new rotation with it. Never granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_wrap: Option<String>,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultConfig({}, {})", self.name, self.url)
    }
}

impl VaultConfig {
    /// The configuration a grant from the configuration node gives.
    pub fn from_grant(g: lifeboat_protocol::message::VaultGrant) -> Self {
        VaultConfig {
            name: g.name,
            url: g.url,
            master_key: vault::hex(&g.master_key),
            rotations: g.rotations.iter().map(|k| vault::hex(k)).collect(),
            options: g.options.into_iter().collect(),
            grant_options: None,
            recovery_wrap: None,
        }
    }

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

/// Builds an object store from a vault URL and options.
pub fn store_from_url(
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn BlobStore>, VaultError> {
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
                source: BlobError::Failed(e.to_string()),
            }
        })?;
        return Ok(Arc::new(ObjectBlobStore::new(
            Arc::new(fs),
            local_root(url),
        )));
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
        b.build()
            .map(|s| Arc::new(s) as Arc<dyn object_store::ObjectStore>)
    } else if let Some(bucket) = url.strip_prefix("s3://") {
        let b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let b = configured(
            b,
            options,
            |b, k: object_store::aws::AmazonS3ConfigKey, v| b.with_config(k, v),
        );
        b.build()
            .map(|s| Arc::new(s) as Arc<dyn object_store::ObjectStore>)
    } else {
        return Err(VaultError::Url(url.into()));
    };
    let built = built.map_err(|e| VaultError::Store {
        op: "open",
        key: url.into(),
        source: BlobError::Failed(e.to_string()),
    })?;
    Ok(Arc::new(ObjectBlobStore::new(built, None)))
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

/// Retries `f` with capped, jittered exponential backoff (jitter drawn from `jitter`), at most
/// `attempts` times.
pub async fn with_retries<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    attempts: u32,
    mut jitter: impl FnMut() -> u64,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = lifeboat_actors::backoff::Backoff::new(100, 10_000);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if backoff.failures() + 1 >= attempts => return Err(e),
            Err(e) => {
                let wait = backoff.fail(jitter());
                tracing::warn!(op = what, attempt = backoff.failures(), cause = %e, "vault operation failed; retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}
