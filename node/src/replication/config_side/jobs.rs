//! Operations as jobs (`crate::jobs`): each long configuration-node command runs under a job
//! whose progress is recorded once a second, and whose id goes back in the reply.

use super::*;
use crate::jobs::Job;

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
