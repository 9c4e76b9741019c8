//! The configuration node: retention and garbage collection on its own schedule and clock.

use super::*;

/// The configuration node: retention and garbage collection on its own schedule and clock,
/// each pass followed by the checks. Crashes cut passes short; its clock steps.
pub(super) async fn config_node(
    s: Arc<Shared>,
    seed: u64,
    cfg: DataPathConfig,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vault: Option<Vault> = None;
    let mut skew: i64 = 0;
    loop {
        let wait = Duration::from_millis(60_000 + rng.next_u64() % 600_000);
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if s.violated() {
            return;
        }
        let faults = cfg.faults;
        if faults && rng.next_u64() % 1000 < 40 {
            // An NTP step, within the grace period (collection is safe while the configuration
            // node's clock is within the grace period of the store's; the daemon's is an hour).
            skew = (rng.next_u64() % GRACE_MS) as i64 - (GRACE_MS / 2) as i64;
        }
        let now = (s.clock.now() as i64 + skew) as u64;
        let v = match vault.take() {
            Some(v) => v,
            None => s.open(rng.next_u64()).await,
        };
        let crash = faults && rng.next_u64() % 1000 < 80;
        let budget = Duration::from_millis(if crash {
            rng.next_u64() % 3_000
        } else {
            3_600_000
        });
        let pass = async {
            retention(&s, &v, now).await;
            v.gc(now, GRACE_MS).await
        };
        match tokio::time::timeout(budget, pass).await {
            Ok(Ok(rep)) => {
                s.count(|r| {
                    r.gc_passes += 1;
                    r.deleted_packs += rep.deleted_packs;
                });
                vault = Some(v);
            }
            Ok(Err(_)) => vault = Some(v),
            // Crashed mid-pass: the next pass starts from a fresh process.
            Err(_) => {}
        }
        s.check_vault("after a collection pass", true).await;
    }
}

/// The daemon's retention rule applied to the vault, then its promise checked.
async fn retention(s: &Shared, v: &Vault, now: u64) {
    let Ok(points) = v.list_points(Some(&s.machine)).await else {
        return;
    };
    let ages: Vec<PointAge> = points
        .iter()
        .map(|p| PointAge {
            id: p.id.clone(),
            captured: p.captured,
            consistency: p.consistency,
        })
        .collect();
    let drop: BTreeSet<String> = thin(&ages, UnixMillis(now), RETENTION_SECS)
        .into_iter()
        .collect();
    let newest = points.iter().map(|p| p.captured.0).max();
    for p in &points {
        let promised =
            Some(p.captured.0) == newest || now.saturating_sub(p.captured.0) <= KEEP_ALL_MS;
        if drop.contains(&p.id) {
            if promised {
                s.violate(format!(
                    "retention deletes point {} although the policy promises to keep it",
                    p.id
                ));
                return;
            }
            if let Ok(mut d) = s.deleting.lock() {
                d.insert(p.id.clone());
            }
            if v.delete_point(p).await.is_ok() {
                s.count(|r| r.retention_deleted += 1);
            }
        }
    }
}
