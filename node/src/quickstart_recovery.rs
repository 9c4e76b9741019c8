//! The quickstart's recovery story: mobility-1 fails over to recovery-1 from a final point,
//! the failover is committed, recovery-1 reprotects it (no initial copy), the machine changes
//! at the recovery site, and it fails back to mobility-1 writing only the changed blocks;
//! then mobility-1 replicates again with a delta. Every step is verified.

use crate::control::Request;
use crate::quickstart::{point_of_after, sample_block, short, write_disk, Daemon};
use crate::replies::{FailedBack, FailedOver, FailoverChanged, Reprotected};
use std::path::Path;

/// Runs the story; `disk` is mobility-1's sample disk as it is now (updated to the end state).
pub(crate) fn recover(
    cfg: &Daemon,
    dir: &Path,
    disk: &mut Vec<u8>,
    out: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let bs = 65536usize;
    // A last write the schedule has not shipped yet: `--point latest` asks for it.
    disk[..bs].copy_from_slice(&sample_block(7777, bs));
    write_disk(dir, disk)?;
    let fo: FailedOver = cfg.get(Request::Failover {
        machine: "mobility-1".into(),
        point: "latest".into(),
        to: None,
        format: "raw".into(),
        boot_hook: Some("echo \"starting $LIFEBOAT_MACHINE from $LIFEBOAT_IMAGES\"".into()),
        shutdown_source: false,
        planned: false,
        on: Some("recovery-1".into()),
        disk_map: vec![],
        job: None,
    })?;
    let image = fo
        .images
        .first()
        .ok_or("the failover made no image")?
        .clone();
    if std::fs::read(&image).map_err(|e| e.to_string())? != *disk {
        return Err("the failed-over image differs from the source's last write".into());
    }
    out(&format!(
        "failed over mobility-1 to {} from final point {} in {:.1} s; image bit-exact with the source's last write",
        fo.target,
        short(&fo.point),
        fo.seconds
    ));
    let _: FailoverChanged = cfg.get(Request::FailoverCommit {
        machine: "mobility-1".into(),
        discard_points: false,
    })?;
    out("failover committed");
    let t = crate::seams::now().0;
    let rp: Reprotected = cfg.get(Request::Reprotect {
        machine: "mobility-1".into(),
        shutdown_hook: None,
        job: None,
    })?;
    let first = point_of_after(cfg, "recovery-1", t - 1)?;
    if first.stats.changed_blocks != 0 {
        return Err(format!(
            "reprotect sent {} blocks; nothing had changed",
            first.stats.changed_blocks
        ));
    }
    out(&format!(
        "reprotected: {} replicates the failed-over disk from point {}; its first point sent 0 blocks (no initial copy)",
        rp.node,
        short(&rp.base_point)
    ));
    // The machine runs at the recovery site and writes 5 blocks.
    let mut at_recovery = disk.clone();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(|e| e.to_string())?;
        for k in 0..5u64 {
            let b = (100 + 37 * k as usize) % 512;
            let data = sample_block(9000 + k, bs);
            at_recovery[b * bs..(b + 1) * bs].copy_from_slice(&data);
            f.write_all_at(&data, (b * bs) as u64)
                .map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string())?;
    }
    let t = crate::seams::now().0;
    let p = point_of_after(cfg, "recovery-1", t)?;
    out(&format!(
        "changes at the recovery site: point {} of recovery-1 sent {} blocks",
        short(&p.id),
        p.stats.changed_blocks
    ));
    let fb: FailedBack = cfg.get(Request::Failback {
        machine: "mobility-1".into(),
        planned: false,
        job: None,
    })?;
    let home = std::fs::read(dir.join("disk.img")).map_err(|e| e.to_string())?;
    if home != at_recovery {
        return Err("after failback mobility-1's disk differs from the recovery copy".into());
    }
    let d = fb.disks.first().ok_or("failback reported no disk")?;
    let differing = disk
        .chunks(bs)
        .zip(at_recovery.chunks(bs))
        .filter(|(a, b)| a != b)
        .count() as u64;
    if d.written_blocks != differing {
        return Err(format!(
            "failback wrote {} blocks; {differing} differed",
            d.written_blocks
        ));
    }
    out(&format!(
        "failed back to mobility-1 in {:.1} s: read and compared {} MiB, wrote {} blocks ({} KiB), fetched {} KiB from the vault; the disk equals the recovery copy",
        fb.seconds,
        d.read_bytes >> 20,
        d.written_blocks,
        d.written_bytes >> 10,
        d.fetched_bytes >> 10
    ));
    *disk = at_recovery;
    disk[bs..2 * bs].copy_from_slice(&sample_block(9100, bs));
    write_disk(dir, disk)?;
    let t = crate::seams::now().0;
    let p = point_of_after(cfg, "mobility-1", t)?;
    if p.stats.changed_blocks > 1 {
        return Err(format!(
            "protection resumed with {} blocks sent for a 1-block change",
            p.stats.changed_blocks
        ));
    }
    out(&format!(
        "mobility-1 is protected again: point {} sent {} block for a 1-block change (no initial copy)",
        short(&p.id),
        p.stats.changed_blocks
    ));
    Ok(())
}
