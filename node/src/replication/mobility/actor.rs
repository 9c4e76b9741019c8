//! The mobility role's actor. It owns the machine's protection job: the loop that runs
//! replication cycles on the policy's schedule (on the replication runtime). A new protection
//! replaces the running job only once that job has ended, so two loops never write the change
//! log at once; removing the protection ends the job, then forgets the local state; at
//! shutdown the job's cycle in flight gets a grace period to commit and is abandoned after it.
//! Abandoning a cycle is safe: the change log moves only on a commit, so every change of an
//! abandoned cycle is found again by the next one.

use super::*;
use actix::prelude::*;

/// Starts protecting with `spec` (persisted first, so a restart resumes it).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Protect(pub ProtectionSpec);

/// Resumes the persisted protection, if any (at daemon start).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Resume;

/// Stops protecting and forgets the local change-tracking state.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unprotect;

/// Ends the job for a shutdown: a cycle in flight gets `grace` to commit. Answers `true` if
/// one was abandoned.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct Shutdown {
    /// How long a cycle in flight may take to commit.
    pub grace: Duration,
}

/// Cuts a point now (after any cycle in flight) and answers with its id once committed.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub struct CutPoint;

/// Runs the protection's shutdown hook (a failover with `--shutdown-source` or `--planned`).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct RunShutdownHook;

/// The running job: its stop signal (with the grace a cycle in flight gets), the queue of
/// requests for a point now, and its task.
#[derive(Debug)]
struct Job {
    stop: watch::Sender<Option<Duration>>,
    cuts: mpsc::Sender<super::CutWaiter>,
    task: tokio::task::JoinHandle<bool>,
}

impl Job {
    /// Asks the job to stop and waits for it; past `grace` (and a second for the loop to
    /// notice) it is aborted. Returns true if a cycle was abandoned.
    async fn end(mut self, grace: Duration) -> bool {
        let _ = self.stop.send(Some(grace));
        match tokio::time::timeout(grace + Duration::from_secs(1), &mut self.task).await {
            Ok(r) => r.unwrap_or(true),
            Err(_) => {
                self.task.abort();
                let _ = (&mut self.task).await;
                true
            }
        }
    }
}

/// The actor.
#[derive(Debug)]
pub struct MobilityActor {
    repl: std::sync::Weak<Repl>,
    rt: tokio::runtime::Handle,
    job: Option<Job>,
}

impl MobilityActor {
    /// The actor of `repl`'s node, running its job on `rt`.
    pub fn new(repl: std::sync::Weak<Repl>, rt: tokio::runtime::Handle) -> Self {
        MobilityActor {
            repl,
            rt,
            job: None,
        }
    }

    /// Replaces the job with `work`, which starts once the previous job has ended (the
    /// previous job's cycle in flight is abandoned: the protection changed).
    fn replace<F>(
        &mut self,
        work: impl FnOnce(watch::Receiver<Option<Duration>>, mpsc::Receiver<super::CutWaiter>) -> F
            + Send
            + 'static,
    ) where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let prev = self.job.take();
        let (stop, rx) = watch::channel(None);
        let (cuts, cuts_rx) = mpsc::channel(16);
        let task = self.rt.spawn(async move {
            if let Some(p) = prev {
                p.end(Duration::ZERO).await;
            }
            work(rx, cuts_rx).await
        });
        self.job = Some(Job { stop, cuts, task });
    }
}

impl Actor for MobilityActor {
    type Context = Context<Self>;
}

impl Handler<Protect> for MobilityActor {
    type Result = Result<(), String>;

    fn handle(&mut self, p: Protect, _: &mut Self::Context) -> Self::Result {
        let spec = p.0;
        for d in &spec.disks {
            if !super::super::valid_disk_name(&d.name) {
                return Err(format!("invalid disk name {:?}", d.name));
            }
            // Checked here, on the machine, before the configuration node records the
            // protection: a missing or unreadable disk is refused with its reason.
            let path = std::path::Path::new(&d.path);
            if path.is_dir() {
                return Err(format!("--disk {}: a directory, not a disk", d.path));
            }
            let disk = crate::disk::Disk::open(path).map_err(|e| format!("--disk {e}"))?;
            if lifeboat_actors::seams::BlockDevice::size(&disk) == 0 {
                return Err(format!("--disk {}: empty (0 bytes)", d.path));
            }
        }
        let repl = self.repl.upgrade().ok_or("node is shutting down")?;
        let old: Option<ProtectionSpec> = load(&protection_path(&repl))?;
        // Different disks: start over (once the old job has ended: it could still commit).
        let fresh = old.as_ref().is_some_and(|o| o.disks != spec.disks);
        save(&protection_path(&repl), &spec, 0o600)?;
        self.replace(move |stop, cuts| async move {
            if fresh {
                forget(&repl);
            }
            run(repl, spec, stop, cuts).await
        });
        Ok(())
    }
}

impl Handler<Resume> for MobilityActor {
    type Result = ();

    fn handle(&mut self, _: Resume, _: &mut Self::Context) {
        let Some(repl) = self.repl.upgrade() else {
            return;
        };
        let spec: ProtectionSpec = match load(&protection_path(&repl)) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(cause = %e, "cannot resume protection");
                return;
            }
        };
        self.replace(move |stop, cuts| run(repl, spec, stop, cuts));
    }
}

impl Handler<Unprotect> for MobilityActor {
    type Result = ();

    fn handle(&mut self, _: Unprotect, _: &mut Self::Context) {
        let Some(repl) = self.repl.upgrade() else {
            return;
        };
        let _ = std::fs::remove_file(protection_path(&repl));
        self.replace(move |_, _| async move {
            forget(&repl);
            tracing::info!("protection removed");
            false
        });
    }
}

impl Handler<CutPoint> for MobilityActor {
    type Result = ResponseFuture<Result<String, String>>;

    fn handle(&mut self, _: CutPoint, _: &mut Self::Context) -> Self::Result {
        let cuts = self.job.as_ref().map(|j| j.cuts.clone());
        Box::pin(async move {
            let cuts = cuts.ok_or("this machine is not protected")?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            cuts.send(tx)
                .await
                .map_err(|_| "this machine is not protected")?;
            rx.await
                .map_err(|_| "protection stopped before the point was cut".to_string())?
        })
    }
}

impl Handler<RunShutdownHook> for MobilityActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, _: RunShutdownHook, _: &mut Self::Context) -> Self::Result {
        let repl = self.repl.upgrade();
        Box::pin(async move {
            let repl = repl.ok_or("node is shutting down")?;
            let spec: Option<ProtectionSpec> = load(&protection_path(&repl))?;
            let cmd = spec
                .ok_or("this machine is not protected")?
                .hooks
                .shutdown
                .ok_or("no shutdown hook is set for this machine (`lifeboat protect ... --shutdown-hook CMD`)")?;
            tracing::warn!("running the shutdown hook (failover)");
            tokio::task::spawn_blocking(move || super::views::run_hook("shutdown", &cmd))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
        })
    }
}

impl Handler<Shutdown> for MobilityActor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, s: Shutdown, _: &mut Self::Context) -> Self::Result {
        let job = self.job.take();
        Box::pin(async move {
            match job {
                Some(j) => j.end(s.grace).await,
                None => false,
            }
        })
    }
}

/// Forgets the local change-tracking state (the change log and the hash maps).
fn forget(repl: &Repl) {
    let _ = std::fs::remove_file(replica_path(repl));
    let _ = std::fs::remove_dir_all(repl.dir.root.join("hashes"));
}
