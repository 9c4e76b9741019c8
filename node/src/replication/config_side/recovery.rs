//! Recovery without the primary site. `vault create` prints a recovery key once and stores the
//! data key in the vault wrapped by it (`recovery/key`); the configuration node mirrors its
//! policies and protections into the vault (`recovery/config`, sealed with the data key) when
//! they change. A fresh node at the recovery site that became a configuration node runs
//! `lifeboat vault attach URL --recovery-key-file FILE`: it unwraps the data key, checks it
//! against the vault's header, adopts the vault, and takes the mirrored policies and
//! protections, so the lost site's machines can be listed, drilled and failed over from their
//! points with no help from the old configuration node.

use super::*;
use lifeboat_protocol::vault::recovery::{RecoveryKey, RECOVERY_KEY_OBJECT};

/// What the configuration node mirrors into the vault.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mirror {
    policies: BTreeMap<String, Policy>,
    protections: BTreeMap<NodeId, Protection>,
}

/// A new recovery key for `vault`: its data key is stored wrapped by it. Returns the paper
/// form (shown once, never stored) and the wrap key (hex, kept in `vault.json` for rekeys).
pub(super) async fn new_recovery_key(vault: &Vault) -> Result<(String, String), String> {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let rk = RecoveryKey::from_bytes(b);
    let wrap = rk.wrap_key();
    vault
        .put_recovery_key(&wrap)
        .await
        .map_err(|e| format!("cannot store the wrapped data key: {e}"))?;
    Ok((rk.to_paper(), vault::hex(&wrap)))
}

/// After a rekey, the wrapped copy gets the new rotation (before the rotation is used).
pub(super) async fn rewrap(cfg: &VaultConfig) -> Result<(), String> {
    let Some(wrap) = cfg.recovery_wrap.as_deref().and_then(vault::from_hex::<32>) else {
        tracing::warn!("this vault has no recovery key: a lost configuration node loses it");
        return Ok(());
    };
    let key = cfg.key().ok_or("the vault's key is unreadable")?;
    let store = store_from_url(&cfg.url, &cfg.options).map_err(|e| e.to_string())?;
    let v = Vault::open(store, key).await.map_err(|e| e.to_string())?;
    v.put_recovery_key(&wrap)
        .await
        .map_err(|e| format!("cannot update the wrapped data key: {e}"))
}

/// Mirrors policies and protections into the vault when they changed since the last mirror.
pub(super) async fn mirror(repl: &Repl) {
    let Some(v) = repl.vault() else { return };
    let m = Mirror {
        policies: guard(&repl.cfg.policies).clone(),
        protections: guard(&repl.cfg.protections).clone(),
    };
    let Ok(plain) = serde_json::to_vec(&m) else {
        return;
    };
    let digest = *blake3::hash(&plain).as_bytes();
    if *guard(&repl.cfg.mirrored) == Some(digest) {
        return;
    }
    match v.put_recovery_config(&plain).await {
        Ok(()) => *guard(&repl.cfg.mirrored) = Some(digest),
        Err(e) => tracing::warn!(cause = %e, "cannot mirror the configuration into the vault"),
    }
}

/// `lifeboat vault attach URL --recovery-key-file FILE [--store-option K=V]...`.
pub async fn attach(
    repl: &Repl,
    url: &str,
    options: BTreeMap<String, String>,
    recovery_key: &str,
) -> Result<Value, String> {
    require_config(repl).await?;
    if let Some(c) = guard(&repl.vault_cfg).clone() {
        return Err(format!(
            "this configuration node already has vault {:?} at {}",
            c.name, c.url
        ));
    }
    let store = store_from_url(url, &options).map_err(|e| e.to_string())?;
    let rk = RecoveryKey::parse(recovery_key)?;
    let sealed = store
        .get(RECOVERY_KEY_OBJECT)
        .await
        .map_err(|e| format!("{url} has no recovery key object ({e}); is it a Lifeboat vault made with a recovery key?"))?;
    let key = rk
        .unwrap(&sealed)
        .map_err(|_| "wrong recovery key for this vault".to_string())?;
    let v = Vault::open(store, key.clone())
        .await
        .map_err(|e| e.to_string())?;
    let name = v.header().name.clone();
    let mirrored: Mirror = match v.recovery_config().await.map_err(|e| e.to_string())? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| format!("recovery/config: {e}"))?,
        None => Mirror::default(),
    };
    repl.set_vault_config(VaultConfig {
        name: name.clone(),
        url: url.to_string(),
        master_key: vault::hex(&key.master()),
        rotations: key.rotations().iter().map(|k| vault::hex(k)).collect(),
        options,
        grant_options: None,
        recovery_wrap: Some(vault::hex(&rk.wrap_key())),
    })?;
    guard(&repl.cfg.granted).clear();
    {
        let mut p = guard(&repl.cfg.policies);
        for (k, pol) in mirrored.policies {
            p.entry(k).or_insert(pol);
        }
    }
    save_policies(repl)?;
    let mut machines = Vec::new();
    {
        let mut p = guard(&repl.cfg.protections);
        for (id, prot) in mirrored.protections {
            machines.push(prot.machine_name.clone());
            p.entry(id).or_insert(prot);
        }
    }
    save_protections(repl)?;
    let v = require_vault(repl).await?;
    let points = v.list_points(None).await.map_err(|e| e.to_string())?;
    tracing::warn!(vault = %name, machines = machines.len(), points = points.len(), "vault attached with its recovery key");
    Ok(crate::replies::encode(&crate::replies::VaultAttached {
        name,
        url: url.to_string(),
        machines,
        points: points.len(),
    }))
}
