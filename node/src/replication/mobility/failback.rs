//! Failback on the machine that comes home: a point of it (the recovery site's last state,
//! cloned under this machine by the configuration node) is written onto its own disks, only
//! the blocks that differ; then the change log is seeded with that point, so the protection
//! given back next ships a delta, not an initial copy. The vault grant is the job's: it is
//! never saved here and is gone when the job ends.

use super::*;
use crate::vault::{store_from_url, Vault, VaultConfig};
use lifeboat_protocol::message::{FailbackDisk, FailbackJob};

/// Makes this machine's change log start at committed point `point`, whose disks' BLAKE3
/// maps are `hashes` (in the order of `disks`): the next cycle is a delta against it.
pub fn adopt_point(
    repl: &Repl,
    point: &str,
    disks: &[DiskSpec],
    hashes: &[Vec<[u8; 32]>],
) -> Result<(), String> {
    let log = Replica {
        last_point: Some(point.to_string()),
        initial_done: true,
    };
    persist_point(repl, disks, &log, point, hashes)
}

/// Runs a failback job (see the module).
pub async fn failback(repl: &Arc<Repl>, job: FailbackJob) -> Result<Vec<FailbackDisk>, String> {
    if protection_path(repl).exists() {
        return Err("this machine is protected: its protection must stop before a failback writes its disks".into());
    }
    for d in &job.disks {
        if !crate::replication::valid_disk_name(&d.name) || !Path::new(&d.path).is_absolute() {
            return Err(format!("invalid disk {:?} at {:?}", d.name, d.path));
        }
    }
    let cfg = VaultConfig::from_grant(job.grant);
    let key = cfg.key().ok_or("the grant's key is malformed")?;
    let store = store_from_url(&cfg.url, &cfg.options).map_err(|e| e.to_string())?;
    let v = Vault::open(store, key).await.map_err(|e| e.to_string())?;
    let pts = v
        .list_points(Some(&repl.local))
        .await
        .map_err(|e| e.to_string())?;
    let p = pts
        .iter()
        .find(|p| p.id == job.point)
        .ok_or_else(|| format!("point {} of this machine is not in the vault", job.point))?;
    let mut out = Vec::new();
    let mut hashes = Vec::new();
    for d in &job.disks {
        let rec = p
            .disks
            .iter()
            .find(|r| r.name == d.name)
            .ok_or_else(|| format!("point {} has no disk {}", p.id, d.name))?;
        tracing::warn!(disk = %d.name, path = %d.path, point = %p.id, "failback: writing the point onto the disk");
        let (s, h) = v
            .restore_in_place(rec, Path::new(&d.path))
            .await
            .map_err(|e| format!("disk {}: {e}", d.name))?;
        out.push(FailbackDisk {
            name: d.name.clone(),
            read_bytes: s.read_bytes,
            compared_blocks: s.compared_blocks,
            written_blocks: s.written_blocks,
            written_bytes: s.written_bytes,
            fetched_bytes: s.fetched_bytes,
        });
        hashes.push(h);
    }
    adopt_point(repl, &p.id, &job.disks, &hashes)?;
    tracing::warn!(point = %p.id, "failback written; protection resumes from this point");
    Ok(out)
}
