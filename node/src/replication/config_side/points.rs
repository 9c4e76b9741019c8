//! Recovery points as the configuration node shows and restores them: listing, the point
//! selectors (`latest`, `latest-app`, `latest-crash`, an id prefix, a time) and restores.

use super::*;

fn point_info(p: &PointRecord) -> crate::replies::PointInfo {
    crate::replies::PointInfo {
        id: p.id.clone(),
        machine: p.machine_name.clone(),
        captured_ms: p.captured.0,
        committed_ms: p.committed.0,
        consistency: p.consistency,
        parent: p.parent.clone(),
        stats: p.stats,
        disks: p
            .disks
            .iter()
            .map(|d| crate::replies::PointDisk {
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                merkle_root: d.merkle_root.to_hex(),
            })
            .collect(),
    }
}

/// `lifeboat points MACHINE`.
pub async fn points(repl: &Repl, machine: &str) -> Result<Value, String> {
    let vault = require_vault(repl).await?;
    let (id, _) = resolve_machine(repl, machine).await?;
    let pts = vault
        .list_points(Some(&id))
        .await
        .map_err(|e| e.to_string())?;
    Ok(crate::replies::encode(
        &pts.iter().map(point_info).collect::<Vec<_>>(),
    ))
}

/// Picks a point: `latest`, `latest-app`, `latest-crash`, an id (or unique prefix), or a time
/// (RFC 3339: the newest point captured at or before it).
pub fn select_point<'a>(pts: &'a [PointRecord], sel: &str) -> Result<&'a PointRecord, String> {
    let newest =
        |f: &dyn Fn(&PointRecord) -> bool| pts.iter().filter(|p| f(p)).max_by_key(|p| p.captured);
    let found = match sel {
        // The newest committed point. (`latest` does not yet ask the machine to cut a final
        // point first: both take the newest committed one.)
        "latest" | "latest-processed" => newest(&|_| true),
        "latest-app" => newest(&|p| p.consistency == Consistency::AppConsistent),
        "latest-crash" => newest(&|p| p.consistency != Consistency::NotConsistent),
        s if s.len() >= 6 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
            let m: Vec<&PointRecord> = pts.iter().filter(|p| p.id.starts_with(s)).collect();
            if m.len() > 1 {
                return Err(format!("point id prefix {s} is ambiguous"));
            }
            m.into_iter().next()
        }
        s => {
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|_| format!("--point {s:?}: use latest, latest-processed, latest-app, latest-crash, a point id, or a time like 2026-11-26T08:00:00Z"))?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            newest(&|p| p.captured.0 <= ms)
        }
    };
    found.ok_or_else(|| format!("no recovery point matches {sel:?}"))
}

/// `lifeboat restore MACHINE --point P --to DIR`: raw images, every block verified.
pub async fn restore(
    repl: &Repl,
    machine: &str,
    point: &str,
    to: &str,
    job: &crate::jobs::Job,
) -> Result<Value, String> {
    require_config(repl).await?;
    let vault = require_vault(repl).await?;
    let (id, name) = resolve_machine(repl, machine).await?;
    let pts = vault
        .list_points(Some(&id))
        .await
        .map_err(|e| e.to_string())?;
    let p = select_point(&pts, point)?.clone();
    let dir = Path::new(to);
    if !dir.is_absolute() {
        return Err("--to must be an absolute directory".into());
    }
    // Directories created here are private: images hold a machine's data.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| format!("{to}: {e}"))?;
    let mut disks = Vec::new();
    job.set_total(p.disks.iter().map(|d| d.size_bytes).sum());
    job.step("restoring and verifying");
    let done = job.progress();
    for d in &p.disks {
        if !crate::replication::valid_disk_name(&d.name) {
            return Err(format!("point {} has an invalid disk name", p.id));
        }
        let out = dir.join(crate::replication::landing::image_file(&d.name, "raw"));
        let t0 = std::time::Instant::now();
        let stats = vault
            .restore_disk_counted(d, &out, Some(&done))
            .await
            .map_err(|e| format!("restore of {name} point {} failed: {e}", p.id))?;
        disks.push(crate::replies::RestoredDisk {
            name: d.name.clone(),
            image: out,
            size_bytes: d.size_bytes,
            merkle_root: d.merkle_root.to_hex(),
            blocks: stats.blocks,
            zero_blocks: stats.zero_blocks,
            fetched_bytes: stats.fetched_bytes,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    tracing::info!(machine = %name, point = %p.id, "restore verified");
    Ok(crate::replies::encode(&crate::replies::Restored {
        job: None,
        machine: name,
        point: point_info(&p),
        disks,
        verified: true,
    }))
}
