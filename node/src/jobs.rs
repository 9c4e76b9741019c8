//! Jobs: every long operation on the configuration node (drill, drill cleanup, failover, its
//! commit and cancel, reprotect, failback, restore, garbage collection) is a job with steps,
//! progress (bytes done of a total), timestamps and, if it failed, a reason. Jobs are kept in an
//! embedded database (redb, `jobs.redb` in the state directory): each step and each progress
//! checkpoint (at most one a second) is its own durable transaction, so a job's record is
//! never torn. A job that a previous run of the daemon left running (a restart, `kill -9`)
//! ends failed at start, naming the step it was in; the operation's own records say how to
//! retry or undo it (a failover that did not come up can be run again or cancelled; an
//! active drill is cleaned up).

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Jobs kept (the oldest ended ones go first).
const KEEP: usize = 500;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Running.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended with an error.
    Failed,
}

/// One step of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepRecord {
    /// What it does.
    pub name: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

/// A job as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// What kind of operation.
    pub kind: String,
    /// The machine it is about.
    pub machine: Option<String>,
    /// Where it stands.
    pub state: JobState,
    /// Its steps, the current one last.
    pub steps: Vec<StepRecord>,
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in all (0: unknown).
    pub bytes_total: u64,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The daemon run that started it.
    pub run: String,
}

/// The job database.
pub struct Jobs {
    db: Database,
    run: String,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jobs({})", self.run)
    }
}

fn now_ms() -> u64 {
    crate::seams::now().0
}

fn db_err(e: impl std::fmt::Display) -> String {
    format!("job database: {e}")
}

impl Jobs {
    /// Opens (or creates) the database at `path`, and ends failed every job a previous run
    /// left running.
    pub fn open(path: &Path) -> Result<Arc<Jobs>, String> {
        let db = Database::create(path).map_err(db_err)?;
        let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let mut run = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut run);
        let jobs = Arc::new(Jobs {
            db,
            run: lifeboat_protocol::vault::hex(&run),
        });
        for mut r in jobs.list(usize::MAX)? {
            if r.state == JobState::Running {
                let step = r
                    .steps
                    .last()
                    .map_or("starting".to_string(), |s| s.name.clone());
                r.state = JobState::Failed;
                r.error = Some(format!(
                    "interrupted: the configuration node stopped (restart or crash) during \"{step}\"; {}",
                    retry_hint(&r)
                ));
                r.ended_ms = Some(now_ms());
                r.updated_ms = now_ms();
                if let Some(s) = r.steps.last_mut() {
                    s.ended_ms.get_or_insert(now_ms());
                }
                jobs.put(&r)?;
                tracing::warn!(job = %r.id, kind = %r.kind, "a job was interrupted and ends failed");
            }
        }
        Ok(jobs)
    }

    fn put(&self, r: &JobRecord) -> Result<(), String> {
        let body = serde_json::to_vec(r).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(db_err)?;
            t.insert(r.id.as_str(), body.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<JobRecord>, String> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match t.get(id).map_err(db_err)? {
            Some(v) => Ok(serde_json::from_slice(v.value()).ok()),
            None => Ok(None),
        }
    }

    /// The newest `limit` jobs, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<JobRecord>, String> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(db_err(e)),
        };
        let mut out: Vec<JobRecord> = t
            .iter()
            .map_err(db_err)?
            .filter_map(|e| e.ok())
            .filter_map(|(_, v)| serde_json::from_slice(v.value()).ok())
            .collect();
        out.sort_by(|a: &JobRecord, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
        out.truncate(limit);
        Ok(out)
    }

    /// Drops the oldest ended jobs beyond the ones kept.
    fn prune(&self) -> Result<(), String> {
        let all = self.list(usize::MAX)?;
        if all.len() <= KEEP {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(db_err)?;
            for r in all[KEEP..].iter().filter(|r| r.state != JobState::Running) {
                t.remove(r.id.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Starts a job (`id`: the caller's, for watching it; else a fresh one).
    pub fn start(
        self: &Arc<Self>,
        id: Option<String>,
        kind: &str,
        machine: Option<&str>,
    ) -> Result<Arc<Job>, String> {
        let id = match id {
            Some(i)
                if !i.is_empty()
                    && i.len() <= 64
                    && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                i
            }
            Some(_) => return Err("invalid job id".into()),
            None => {
                let mut b = [0u8; 8];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
                lifeboat_protocol::vault::hex(&b)
            }
        };
        if self.get(&id)?.is_some() {
            return Err(format!("job {id} exists"));
        }
        let now = now_ms();
        let rec = JobRecord {
            id,
            kind: kind.into(),
            machine: machine.map(str::to_string),
            state: JobState::Running,
            steps: vec![],
            bytes_done: 0,
            bytes_total: 0,
            started_ms: now,
            updated_ms: now,
            ended_ms: None,
            error: None,
            run: self.run.clone(),
        };
        self.put(&rec)?;
        let _ = self.prune();
        Ok(Arc::new(Job {
            jobs: self.clone(),
            rec: Mutex::new(rec),
            done: Arc::new(AtomicU64::new(0)),
        }))
    }
}

/// What an operator can do about an interrupted job.
fn retry_hint(r: &JobRecord) -> String {
    let m = r.machine.as_deref().unwrap_or("MACHINE");
    match r.kind.as_str() {
        "failover" => {
            format!("run `lifeboat failover {m}` again, or `lifeboat failover cancel {m}`")
        }
        "drill" => format!("`lifeboat drill cleanup {m}` removes what it made"),
        "failback" => format!(
            "the recovery site still runs and replicates: run `lifeboat failback {m}` again"
        ),
        "reprotect" => format!("run `lifeboat reprotect {m}` again"),
        "initial-replication" | "resync" => {
            "the machine goes on copying; a new job follows it when it next reports".into()
        }
        _ => "run it again".into(),
    }
}

/// A running job.
#[derive(Debug)]
pub struct Job {
    jobs: Arc<Jobs>,
    rec: Mutex<JobRecord>,
    done: Arc<AtomicU64>,
}

impl Job {
    /// Its id.
    pub fn id(&self) -> String {
        self.rec.lock().map(|r| r.id.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut JobRecord)) {
        let Ok(mut r) = self.rec.lock() else { return };
        f(&mut r);
        r.updated_ms = now_ms();
        r.bytes_done = self.done.load(Ordering::Relaxed).max(r.bytes_done);
        if let Err(e) = self.jobs.put(&r) {
            tracing::warn!(job = %r.id, cause = %e, "cannot record the job");
        }
    }

    /// Ends the current step and starts `name`.
    pub fn step(&self, name: &str) {
        let now = now_ms();
        let mut kind = String::new();
        self.update(|r| {
            if let Some(s) = r.steps.last_mut() {
                s.ended_ms.get_or_insert(now);
            }
            r.steps.push(StepRecord {
                name: name.into(),
                started_ms: now,
                ended_ms: None,
            });
            kind.clone_from(&r.kind);
        });
        crate::failpoint::pause(&format!("job/{kind}/{name}"));
    }

    /// Sets the bytes in all (the progress counter restarts at 0).
    pub fn set_total(&self, bytes: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.update(|r| {
            r.bytes_total = bytes;
            r.bytes_done = 0;
        });
    }

    /// Bytes in all (0: unknown).
    pub fn total(&self) -> u64 {
        self.rec.lock().map(|r| r.bytes_total).unwrap_or(0)
    }

    /// The counter of bytes done, for the work to bump.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Records the progress counter if it moved.
    pub fn checkpoint(&self) {
        let d = self.done.load(Ordering::Relaxed);
        if self.rec.lock().map(|r| r.bytes_done != d).unwrap_or(false) {
            self.update(|_| {});
        }
    }

    /// Ends the job with `result`.
    pub fn finish<T>(&self, result: &Result<T, String>) {
        let now = now_ms();
        self.update(|r| {
            if let Some(s) = r.steps.last_mut() {
                s.ended_ms.get_or_insert(now);
            }
            r.ended_ms = Some(now);
            match result {
                Ok(_) => {
                    r.state = JobState::Succeeded;
                    if r.bytes_total > 0 {
                        r.bytes_done = r.bytes_total;
                    }
                }
                Err(e) => {
                    r.state = JobState::Failed;
                    r.error = Some(e.clone());
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_a_reopen_and_a_running_one_ends_failed_with_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let (ok_id, run_id) = {
            let jobs = Jobs::open(&path).unwrap();
            let ok = jobs.start(None, "restore", Some("web")).unwrap();
            ok.step("restoring");
            ok.set_total(100);
            ok.progress().fetch_add(40, Ordering::Relaxed);
            ok.checkpoint();
            assert_eq!(jobs.get(&ok.id()).unwrap().unwrap().bytes_done, 40);
            ok.finish(&Ok::<(), String>(()));
            let running = jobs
                .start(Some("watch-me".into()), "failover", Some("web"))
                .unwrap();
            running.step("landing on dr");
            assert!(jobs.start(Some("watch-me".into()), "drill", None).is_err());
            assert!(jobs.start(Some("bad id!".into()), "drill", None).is_err());
            (ok.id(), running.id())
            // dropped without finishing: as if the daemon were killed
        };
        let jobs = Jobs::open(&path).unwrap();
        let ok = jobs.get(&ok_id).unwrap().unwrap();
        assert_eq!(ok.state, JobState::Succeeded);
        assert_eq!(ok.bytes_done, 100);
        let r = jobs.get(&run_id).unwrap().unwrap();
        assert_eq!(r.state, JobState::Failed);
        let e = r.error.unwrap();
        assert!(
            e.contains("landing on dr") && e.contains("failover cancel web"),
            "{e}"
        );
        assert!(r.steps[0].ended_ms.is_some());
        assert_eq!(jobs.list(10).unwrap().len(), 2);
    }
}
