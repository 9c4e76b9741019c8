//! The configuration role's actor. It owns the role's long-running work: the duties loop
//! (keep the vault open, grant it to process servers, retention, RPO alerts; once a second)
//! and garbage collection as a visible job: one pass at a time, started by the schedule or by
//! `lifeboat vault gc`, shown in `status` while it runs and with its outcome after. At
//! shutdown both are stopped; a pass cut short is safe (the collector's protocol is built for
//! a crash at any step, and the simulation cuts passes short on purpose).

use super::*;
use crate::replies::GcJob;
use crate::vault::GcReport;
use actix::prelude::*;
use std::time::Duration;

/// Starts the duties loop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StartDuties;

/// Runs one collection pass with grace period `grace_ms`, unless one is running already.
/// Answers with the pass's report when it ends.
#[derive(Debug, Message)]
#[rtype(result = "Result<GcReport, String>")]
pub struct Collect {
    /// Grace period of the pass.
    pub grace_ms: u64,
}

/// The collection job, for `status`.
#[derive(Debug, Message)]
#[rtype(result = "GcJob")]
pub struct JobView;

/// Stops the duties loop and any pass in flight.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A pass ended (from its task).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Finished(Result<GcReport, String>);

/// The actor.
#[derive(Debug)]
pub struct ConfigActor {
    repl: std::sync::Weak<Repl>,
    rt: tokio::runtime::Handle,
    duties: Option<tokio::task::JoinHandle<()>>,
    /// The pass in flight: when it started, its task, who waits for its report.
    running: Option<(UnixMillis, tokio::task::JoinHandle<()>)>,
    waiters: Vec<tokio::sync::oneshot::Sender<Result<GcReport, String>>>,
    view: GcJob,
}

impl ConfigActor {
    /// The actor of `repl`'s node, running its work on `rt`.
    pub fn new(repl: std::sync::Weak<Repl>, rt: tokio::runtime::Handle) -> Self {
        ConfigActor {
            repl,
            rt,
            duties: None,
            running: None,
            waiters: Vec::new(),
            view: GcJob::default(),
        }
    }
}

impl Actor for ConfigActor {
    type Context = Context<Self>;
}

impl Handler<StartDuties> for ConfigActor {
    type Result = ();

    fn handle(&mut self, _: StartDuties, _: &mut Self::Context) {
        let Some(repl) = self.repl.upgrade() else {
            return;
        };
        if let Some(old) = self.duties.take() {
            old.abort();
        }
        self.duties = Some(self.rt.spawn(async move {
            loop {
                repl.drop_vault_unless_needed().await;
                if let Err(e) = repl.open_vault().await {
                    tracing::warn!(cause = %e, "vault not reachable yet");
                }
                tick(&repl).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
}

impl Handler<Collect> for ConfigActor {
    type Result = ResponseFuture<Result<GcReport, String>>;

    fn handle(&mut self, c: Collect, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some((started, _)) = &self.running {
            let ago = crate::seams::now().millis_since(*started);
            let msg = format!(
                "a garbage collection is already running (started {} ago); `lifeboat status` shows when it ends",
                lifeboat_protocol::time::human_duration(ago)
            );
            return Box::pin(async move { Err(msg) });
        }
        let Some(repl) = self.repl.upgrade() else {
            return Box::pin(async { Err("daemon is shutting down".to_string()) });
        };
        self.waiters.push(tx);
        let me = ctx.address();
        let started = crate::seams::now();
        let task = self.rt.spawn(async move {
            let r = collect(&repl, c.grace_ms).await;
            me.do_send(Finished(r));
        });
        self.running = Some((started, task));
        self.view.running_since_ms = Some(started.0);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the garbage collection was stopped".into()))
        })
    }
}

impl Handler<Finished> for ConfigActor {
    type Result = ();

    fn handle(&mut self, f: Finished, _: &mut Self::Context) {
        self.running = None;
        self.view.running_since_ms = None;
        self.view.last_finished_ms = Some(crate::seams::now().0);
        self.view.last_error = f.0.as_ref().err().cloned();
        if let Ok(r) = &f.0 {
            self.view.last_deleted_packs = r.deleted_packs;
            self.view.last_freed_bytes = r.freed_bytes;
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(f.0.clone());
        }
    }
}

impl Handler<JobView> for ConfigActor {
    type Result = MessageResult<JobView>;

    fn handle(&mut self, _: JobView, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.view.clone())
    }
}

impl Handler<Shutdown> for ConfigActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        if let Some(d) = self.duties.take() {
            d.abort();
        }
        if let Some((_, t)) = self.running.take() {
            t.abort();
            tracing::info!("garbage collection stopped for shutdown (safe: the next pass goes on)");
        }
        self.view.running_since_ms = None;
        self.waiters.clear();
    }
}

/// One collection pass.
async fn collect(repl: &Repl, grace_ms: u64) -> Result<GcReport, String> {
    require_config(repl).await?;
    let vault = require_vault(repl).await?;
    let r = vault
        .gc(crate::seams::now().0, grace_ms)
        .await
        .map_err(|e| format!("garbage collection failed: {e}"))?;
    tracing::info!(
        condemned = r.condemned,
        repacked = r.repacked,
        deleted_packs = r.deleted_packs,
        rescued = r.rescued,
        deleted_chunks = r.deleted_chunks,
        freed_bytes = r.freed_bytes,
        "vault garbage collection"
    );
    Ok(r)
}
