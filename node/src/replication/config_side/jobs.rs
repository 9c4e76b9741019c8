//! Operations as jobs (`crate::jobs`): each long configuration-node command runs under a job
//! whose progress is recorded once a second, and whose id goes back in the reply.

use super::*;
use crate::jobs::Job;
use std::sync::atomic::Ordering;

/// Runs `work` as a job of `kind` about `machine` (`id`: the caller's, so it can watch it).
pub async fn run_job<F, Fut>(
    repl: &Repl,
    id: Option<String>,
    kind: &str,
    machine: Option<&str>,
    work: F,
) -> Result<Value, String>
where
    F: FnOnce(Arc<Job>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let job = repl.jobs.start(id, kind, machine)?;
    let ticker = {
        let j = job.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                j.checkpoint();
            }
        })
    };
    let r = work(job.clone()).await;
    ticker.abort();
    job.finish(&r);
    r.map(|mut v| {
        if let Some(o) = v.as_object_mut() {
            o.insert("job".into(), job.id().into());
        }
        v
    })
}

/// `lifeboat jobs`: the newest jobs.
pub fn list(repl: &Repl, limit: usize) -> Result<Value, String> {
    Ok(serde_json::to_value(repl.jobs.list(limit)?).unwrap_or_default())
}

/// `lifeboat job ID`.
pub fn get(repl: &Repl, id: &str) -> Result<Value, String> {
    let j = repl.jobs.get(id)?.ok_or_else(|| format!("no job {id}"))?;
    Ok(serde_json::to_value(j).unwrap_or_default())
}

/// Initial replications and resyncs as jobs, followed from the machines' reports: a job starts
/// with the first report of a full copy, takes its bytes from each report, and succeeds with
/// the first report that says the copy is committed.
pub fn track_full_copy(repl: &Repl, from: NodeId, r: &ProtectionReport) {
    let full = r.initial || r.resync;
    let mut running = guard(&repl.cfg.copy_jobs);
    match (running.get(&from).cloned(), full) {
        (None, true) => {
            let name = guard(&repl.cfg.protections)
                .get(&from)
                .map(|p| p.machine_name.clone())
                .unwrap_or_else(|| from.to_string());
            let kind = if r.initial {
                "initial-replication"
            } else {
                "resync"
            };
            match repl.jobs.start(None, kind, Some(&name)) {
                Ok(j) => {
                    j.step(&format!("copying every block of {name}'s disks"));
                    j.set_total(r.total_bytes);
                    j.progress().store(r.scanned_bytes, Ordering::Relaxed);
                    j.checkpoint();
                    running.insert(from, j);
                }
                Err(e) => {
                    tracing::warn!(machine = %name, cause = %e, "cannot record the full copy as a job")
                }
            }
        }
        (Some(j), true) => {
            if r.total_bytes > 0 && j.total() != r.total_bytes {
                j.set_total(r.total_bytes);
            }
            j.progress().store(r.scanned_bytes, Ordering::Relaxed);
            j.checkpoint();
        }
        (Some(j), false) => {
            // A copy that began and ended between two reports: its size comes with the end.
            if j.total() == 0 && r.total_bytes > 0 {
                j.set_total(r.total_bytes);
            }
            j.finish(&Ok::<(), String>(()));
            running.remove(&from);
        }
        (None, false) => {}
    }
}

/// Ends machine `id`'s full-copy job, if one runs, failed for `why`.
pub fn end_full_copy(repl: &Repl, id: NodeId, why: &str) {
    if let Some(j) = guard(&repl.cfg.copy_jobs).remove(&id) {
        j.finish(&Err::<(), String>(why.to_string()));
    }
}
