//! The vault (creation with its recovery key, rekey) and replication policies, on the
//! configuration node.

use super::*;

/// `lifeboat vault create NAME [--store URL] [--store-option K=V]...`
pub async fn vault_create(
    repl: &Repl,
    name: &str,
    url: Option<String>,
    options: BTreeMap<String, String>,
    grant_options: Option<BTreeMap<String, String>>,
) -> Result<Value, String> {
    require_config(repl).await?;
    if let Some(c) = guard(&repl.vault_cfg).clone() {
        return Err(format!(
            "this configuration node already has vault {:?} at {}",
            c.name, c.url
        ));
    }
    Name::parse("vault", name).map_err(|e| e.to_string())?;
    let url = url.unwrap_or_else(|| format!("file://{}", repl.dir.root.join("vault").display()));
    let mut master = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut master);
    let key = DataKey::from_master(master);
    let store = store_from_url(&url, &options).map_err(|e| e.to_string())?;
    let header = Vault::create(store, name, &key.clone(), crate::seams::now())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(root) = crate::vault::local_root(&url) {
        let header_file = root.join("vault.json");
        crate::vault::sync_paths(root, vec![header_file])
            .await
            .map_err(|e| format!("cannot make the new vault durable: {e}"))?;
    }
    let store = store_from_url(&url, &options).map_err(|e| e.to_string())?;
    let opened = Vault::open(store, key).await.map_err(|e| e.to_string())?;
    let (paper, wrap) = recovery::new_recovery_key(&opened).await?;
    repl.set_vault_config(VaultConfig {
        name: name.into(),
        url: url.clone(),
        master_key: vault::hex(&master),
        rotations: Vec::new(),
        options,
        grant_options,
        recovery_wrap: Some(wrap),
    })?;
    guard(&repl.cfg.granted).clear();
    require_vault(repl).await?;
    Ok(crate::replies::encode(&crate::replies::VaultCreated {
        name: name.to_string(),
        url,
        vault_id: header.id,
        key_check: header.key_check,
        recovery_key: paper,
    }))
}

/// `lifeboat vault rekey`: a new sealing key for everything written from now on. Process
/// servers get it with a fresh grant; what was sealed before keeps opening with its own key.
/// Whoever holds only the old keys (an evicted process server) can read and forge nothing
/// sealed after this.
pub async fn vault_rekey(repl: &Repl) -> Result<Value, String> {
    require_config(repl).await?;
    require_vault(repl).await?;
    let mut cfg = guard(&repl.vault_cfg)
        .clone()
        .ok_or("no vault yet; create one with `lifeboat vault create NAME`")?;
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    cfg.rotations.push(vault::hex(&k));
    let n = cfg.rotations.len();
    // The recovery copy learns the new key before anything is sealed with it.
    recovery::rewrap(&cfg).await?;
    repl.set_vault_config(cfg)?;
    // Every process server gets the new key with its next grant (within a second).
    guard(&repl.cfg.granted).clear();
    require_vault(repl).await?;
    tracing::warn!(rotations = n, "vault data key rotated for new writes");
    Ok(crate::replies::encode(&crate::replies::Rekeyed {
        rotations: n,
    }))
}

pub(super) fn save_policies(repl: &Repl) -> Result<(), String> {
    let p = guard(&repl.cfg.policies).clone();
    save(&repl.dir.root.join("policies.json"), &p, 0o644)
}

/// All policies, the built-in default included.
pub fn policies(repl: &Repl) -> BTreeMap<String, Policy> {
    let mut p = guard(&repl.cfg.policies).clone();
    p.entry("default".into())
        .or_insert_with(Policy::default_policy);
    p
}

/// Validates a policy.
pub fn validate_policy(p: &Policy) -> Result<(), String> {
    Name::parse("policy", &p.name).map_err(|e| e.to_string())?;
    if p.crash_consistent_every_secs == 0 {
        return Err("--crash-consistent-every must be at least 1s".into());
    }
    // Each message gives the values in force (a flag left out has its default), so that a
    // clash with a default is plain.
    let h = |secs: u64| lifeboat_protocol::time::human_duration(secs * 1000);
    let every = h(p.crash_consistent_every_secs);
    if p.retention_secs < p.crash_consistent_every_secs {
        return Err(format!(
            "--retention ({}) is shorter than --crash-consistent-every ({every}): no point would be kept",
            h(p.retention_secs)
        ));
    }
    if p.rpo_threshold_secs < p.crash_consistent_every_secs {
        return Err(format!(
            "--rpo-threshold ({}) is shorter than --crash-consistent-every ({every}): every point would raise an alert; give a longer --rpo-threshold",
            h(p.rpo_threshold_secs)
        ));
    }
    if p.app_consistent_every_secs != 0
        && p.app_consistent_every_secs < p.crash_consistent_every_secs
    {
        return Err(format!(
            "--app-consistent-every ({}) must be 0 (never) or at least --crash-consistent-every ({every})",
            h(p.app_consistent_every_secs)
        ));
    }
    if p.retention_secs > 365 * 86_400 {
        return Err("--retention above one year is not supported".into());
    }
    Ok(())
}

/// `lifeboat policy create`.
pub async fn policy_create(repl: &Repl, p: Policy) -> Result<Value, String> {
    require_config(repl).await?;
    validate_policy(&p)?;
    guard(&repl.cfg.policies).insert(p.name.clone(), p.clone());
    save_policies(repl)?;
    Ok(serde_json::to_value(p).unwrap_or_default())
}

/// `lifeboat policy delete`.
pub async fn policy_delete(repl: &Repl, name: &str) -> Result<Value, String> {
    require_config(repl).await?;
    let used: Vec<String> = guard(&repl.cfg.protections)
        .values()
        .filter(|p| p.spec.policy.name == name)
        .map(|p| p.machine_name.clone())
        .collect();
    if !used.is_empty() {
        return Err(format!(
            "policy {name} is used by {}; unprotect them or protect them with another policy first",
            used.join(", ")
        ));
    }
    if guard(&repl.cfg.policies).remove(name).is_none() {
        if name == "default" {
            return Err("the default policy is built in and cannot be deleted; change it with `lifeboat policy create default ...`".into());
        }
        return Err(format!(
            "no policy named {name}; see `lifeboat policy list`"
        ));
    }
    save_policies(repl)?;
    Ok(crate::replies::encode(&crate::replies::Named {
        name: name.to_string(),
    }))
}
