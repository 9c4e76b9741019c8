//! The process-server role's actor. It owns the role's state ([`PsState`]: spool budget,
//! counters, upload throttle) and hands it to each session it admits (at most
//! [`MAX_SESSIONS`] at once, through the session's [`Ticket`]); it answers health and throttle
//! requests; and at shutdown it drains the sessions: no new session is admitted, the running
//! ones get a grace period to commit, and whatever is still running then is told to stop (it
//! is abandoned safely: nothing was acknowledged, and the mobility node sends the same changes
//! again to whichever process server it reaches next).

use super::PsState;
use crate::replies::PsHealth;
use actix::prelude::*;
use lifeboat_actors::replication::Throttle;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Sessions served at once; more are refused (the mobility node retries with backoff).
pub const MAX_SESSIONS: usize = 64;

/// Admits one session, or says why not.
#[derive(Debug, Message)]
#[rtype(result = "Result<Ticket, String>")]
pub struct Admit;

/// A session ended (sent by its [`Ticket`] when dropped).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Done(u64);

/// Stops admitting sessions; lets the running ones finish for up to `grace`, then tells the
/// rest to stop. Answers once none is left (or a further `grace` has passed).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Drain {
    /// How long running sessions may take to finish.
    pub grace: Duration,
}

/// This process server's health (spool use, backlog age, uploads).
#[derive(Debug, Message)]
#[rtype(result = "PsHealth")]
pub struct Health;

/// Sets the upload bandwidth policy (the caller has persisted it).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SetThrottle(pub Option<Throttle>);

/// A running session's admission: holding it is being in flight; dropping it ends it.
#[derive(Debug)]
pub struct Ticket {
    /// The role's state, for the session.
    pub ps: Arc<PsState>,
    id: u64,
    addr: Addr<ProcessServerActor>,
    stop: watch::Receiver<bool>,
}

impl Ticket {
    /// Resolves when the session must stop (the daemon is shutting down).
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.addr.do_send(Done(self.id));
    }
}

/// The actor.
#[derive(Debug)]
pub struct ProcessServerActor {
    ps: Arc<PsState>,
    next: u64,
    /// Sessions in flight and their stop signals.
    live: HashMap<u64, watch::Sender<bool>>,
    /// Draining: no new session is admitted.
    draining: bool,
    /// Who waits for the last session to end.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Actor for ProcessServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(2 * MAX_SESSIONS);
    }
}

impl ProcessServerActor {
    /// The actor of the role whose state is `ps`.
    pub fn new(ps: PsState) -> Self {
        ProcessServerActor {
            ps: Arc::new(ps),
            next: 0,
            live: HashMap::new(),
            draining: false,
            waiters: Vec::new(),
        }
    }

    /// Sessions in flight.
    pub fn in_flight(&self) -> usize {
        self.live.len()
    }

    fn wake_if_idle(&mut self) {
        if self.live.is_empty() {
            for w in self.waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Handler<Admit> for ProcessServerActor {
    type Result = Result<Ticket, String>;

    fn handle(&mut self, _: Admit, ctx: &mut Self::Context) -> Self::Result {
        if self.draining {
            return Err("this process server is shutting down".into());
        }
        if self.live.len() >= MAX_SESSIONS {
            return Err(format!(
                "this process server already serves {MAX_SESSIONS} sessions; retry later"
            ));
        }
        self.next += 1;
        let (tx, rx) = watch::channel(false);
        self.live.insert(self.next, tx);
        Ok(Ticket {
            ps: self.ps.clone(),
            id: self.next,
            addr: ctx.address(),
            stop: rx,
        })
    }
}

impl Handler<Done> for ProcessServerActor {
    type Result = ();

    fn handle(&mut self, d: Done, _: &mut Self::Context) {
        self.live.remove(&d.0);
        self.wake_if_idle();
    }
}

impl Handler<Health> for ProcessServerActor {
    type Result = MessageResult<Health>;

    fn handle(&mut self, _: Health, _: &mut Self::Context) -> Self::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let ps = &self.ps;
        let now = crate::seams::now();
        let since = ps.backlog_since.load(Relaxed);
        let throttle = ps.throttle.lock().ok().and_then(|t| t.clone());
        MessageResult(PsHealth {
            counters: lifeboat_protocol::message::PsHealthReport {
                spool_segments_used: ps.segments_in_use() as u64,
                spool_segments_max: ps.spool_segments as u64,
                spooled_bytes: ps.spooled_bytes.load(Relaxed),
                backlog_age_ms: if since == 0 {
                    0
                } else {
                    now.0.saturating_sub(since)
                },
                uploaded_bytes: ps.uploaded_bytes.load(Relaxed),
                uploading_bytes: ps.uploading_bytes.load(Relaxed),
                points_committed: ps.points.load(Relaxed),
                upload_failures: ps.upload_failures.load(Relaxed),
                upload_limit_bytes_per_sec_now: throttle.as_ref().and_then(|t| t.rate_at(now)),
            },
            throttle,
        })
    }
}

impl Handler<SetThrottle> for ProcessServerActor {
    type Result = ();

    fn handle(&mut self, t: SetThrottle, _: &mut Self::Context) {
        if let Ok(mut g) = self.ps.throttle.lock() {
            *g = t.0;
        }
    }
}

impl Handler<Drain> for ProcessServerActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, d: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let running = self.live.len();
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.wake_if_idle();
        if running > 0 {
            tracing::info!(
                sessions = running,
                "draining replication sessions before shutdown"
            );
            // Past the grace period, whatever still runs is told to stop.
            ctx.run_later(d.grace, |a, _| {
                for stop in a.live.values() {
                    let _ = stop.send(true);
                }
            });
        }
        let limit = d.grace * 2;
        Box::pin(async move {
            let _ = tokio::time::timeout(limit, rx).await;
            running
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Addr<ProcessServerActor> {
        let dir = tempfile::tempdir().unwrap();
        let spool = super::super::DirSpool::open(dir.path().join("spool")).unwrap();
        ProcessServerActor::new(PsState::with_spool(Arc::new(spool), 4, 4)).start()
    }

    #[actix::test]
    async fn a_drain_waits_for_running_sessions_then_stops_the_rest() {
        let a = actor();
        let quick = a.send(Admit).await.unwrap().unwrap();
        let mut slow = a.send(Admit).await.unwrap().unwrap();
        // The slow session runs until it is told to stop.
        let stopped = tokio::spawn(async move {
            slow.stopped().await;
            drop(slow);
        });
        let drain = {
            let a = a.clone();
            tokio::spawn(async move {
                a.send(Drain {
                    grace: Duration::from_millis(300),
                })
                .await
            })
        };
        // Once the drain has begun (admissions are refused), the quick session ends within
        // the grace period.
        for _ in 0..10_000 {
            match a.send(Admit).await.unwrap() {
                Err(_) => break,
                Ok(t) => drop(t),
            }
            tokio::task::yield_now().await;
        }
        drop(quick);
        // Both sessions were running when the drain began (a probe may have been too).
        let running = drain.await.unwrap().unwrap();
        assert!(running >= 2, "{running}");
        tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .expect("the slow session was told to stop")
            .unwrap();
        // Draining: nothing new is admitted.
        let e = a.send(Admit).await.unwrap().unwrap_err();
        assert!(e.contains("shutting down"), "{e}");
    }

    #[actix::test]
    async fn sessions_beyond_the_bound_are_refused() {
        let a = actor();
        let mut held = Vec::new();
        for _ in 0..MAX_SESSIONS {
            held.push(a.send(Admit).await.unwrap().unwrap());
        }
        let e = a.send(Admit).await.unwrap().unwrap_err();
        assert!(e.contains("retry later"), "{e}");
        held.pop();
        // The ended session's slot is free again (its Done arrives before the next Admit).
        assert!(a.send(Admit).await.unwrap().is_ok());
    }
}
