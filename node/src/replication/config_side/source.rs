//! What a drill or a failover asks of the protected machine before it lands: its shutdown hook
//! (`--shutdown-source`, `--planned`) and a final point (`--point latest`, `--planned`).
//!
//! An unplanned failover never waits on a dead site: a machine that is not connected is
//! skipped at once (and told to stop when it comes back), and one that is connected gets a
//! bounded time for each step. A planned failover needs both sites: it refuses to start
//! unless the machine is reachable and has a shutdown hook, and fails (having changed nothing
//! at the recovery site) if the hook or the final point fails.

use super::*;
use std::time::Duration;

/// Longest a shutdown hook may take, as seen from here (the machine kills it at 120 s).
const HOOK_WAIT: Duration = Duration::from_secs(130);
/// Longest the final point may take to be cut and committed.
const FINAL_POINT_WAIT: Duration = Duration::from_secs(600);

/// What the machine's answer was (short-lived: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Asked {
    /// It answered with this.
    Answered(Message),
    /// It refused or failed, and said why.
    Refused(String),
    /// It could not be reached (or did not answer in time).
    Unreachable(String),
}

/// Asks the machine `id` (this node's own mobility actor if it is this node) for `msg`.
async fn ask_machine(repl: &Repl, id: NodeId, msg: Message, wait: Duration) -> Asked {
    if id == repl.local {
        use crate::replication::mobility::{CutPoint, RunShutdownHook};
        let r = match msg {
            Message::CutPoint { .. } => match repl.mobility.send(CutPoint).await {
                Ok(r) => r.map(|point| Message::PointCut { point }),
                Err(_) => return Asked::Unreachable("this node is shutting down".into()),
            },
            Message::ShutdownSource { .. } => match repl.mobility.send(RunShutdownHook).await {
                Ok(r) => r.map(|()| Message::Accept),
                Err(_) => return Asked::Unreachable("this node is shutting down".into()),
            },
            _ => return Asked::Refused("not a request for a machine".into()),
        };
        return match r {
            Ok(m) => Asked::Answered(m),
            Err(e) => Asked::Refused(e),
        };
    }
    match repl.net.request_within(id, msg, wait).await {
        Ok(Message::Error { message }) => Asked::Refused(message),
        Ok(m) => Asked::Answered(m),
        Err(e) => Asked::Unreachable(e.to_string()),
    }
}

/// What was asked of the machine: the exact point to land (a final point), and what happened,
/// for the reply.
#[derive(Debug, Default)]
pub(super) struct SourceSteps {
    /// The final point's id, if one was cut.
    pub(super) point: Option<String>,
    /// What happened, one line each.
    pub(super) notes: Vec<String>,
}

impl SourceSteps {
    /// `ask` with its point narrowed to the final point, if one was cut.
    pub(super) fn narrow(&self, mut ask: DrillAsk) -> DrillAsk {
        if let Some(p) = &self.point {
            ask.point = p.clone();
        }
        ask
    }
}

/// Runs the steps `ask` names against machine `id` (named `name`, protected by `protection`).
pub(super) async fn prepare(
    repl: &Repl,
    id: NodeId,
    name: &str,
    ask: &DrillAsk,
    protection: Option<&Protection>,
) -> Result<SourceSteps, String> {
    let mut out = SourceSteps::default();
    let has_hook = protection.is_some_and(|p| p.spec.hooks.shutdown.is_some());
    if ask.planned {
        if !matches!(ask.point.as_str(), "latest" | "latest-processed") {
            return Err("--planned fails over from the final point it cuts; drop --point".into());
        }
        if !has_hook {
            return Err(format!(
                "--planned shuts {name} down first, and it has no shutdown hook (`lifeboat protect {name} ... --shutdown-hook CMD`)"
            ));
        }
        let shutdown = Message::ShutdownSource { machine: id };
        match ask_machine(repl, id, shutdown, HOOK_WAIT).await {
            Asked::Answered(_) => out.notes.push(format!("{name}'s shutdown hook ran")),
            Asked::Refused(e) => {
                return Err(format!(
                    "the shutdown hook of {name} failed: {e}; nothing was failed over"
                ))
            }
            Asked::Unreachable(e) => return Err(format!(
                "{name} is unreachable ({e}); a planned failover needs both sites up (fail over without --planned)"
            )),
        }
        match ask_machine(repl, id, Message::CutPoint { machine: id }, FINAL_POINT_WAIT).await {
            Asked::Answered(Message::PointCut { point }) => {
                out.notes.push(format!("final point {point} cut after the shutdown: no data lost"));
                out.point = Some(point);
                return Ok(out);
            }
            Asked::Answered(m) => {
                return Err(format!("{name} answered the final point with {}", m.kind()))
            }
            Asked::Refused(e) | Asked::Unreachable(e) => return Err(format!(
                "{name} is shut down but its final point failed: {e}; retry, or fail over without --planned"
            )),
        }
    }
    if ask.shutdown_source {
        if !has_hook {
            return Err(format!(
                "{name} has no shutdown hook (`lifeboat protect {name} ... --shutdown-hook CMD`); fail over without --shutdown-source"
            ));
        }
        let shutdown = Message::ShutdownSource { machine: id };
        match ask_machine(repl, id, shutdown, HOOK_WAIT).await {
            Asked::Answered(_) => out.notes.push(format!("{name}'s shutdown hook ran")),
            Asked::Refused(e) => {
                return Err(format!(
                    "the shutdown hook of {name} failed: {e}; nothing was failed over (fix it, or fail over without --shutdown-source)"
                ))
            }
            Asked::Unreachable(e) => out.notes.push(format!(
                "{name} is unreachable ({e}): its shutdown hook did not run"
            )),
        }
    }
    if ask.point == "latest" {
        match ask_machine(
            repl,
            id,
            Message::CutPoint { machine: id },
            FINAL_POINT_WAIT,
        )
        .await
        {
            Asked::Answered(Message::PointCut { point }) => {
                out.notes.push(format!("final point {point} cut"));
                out.point = Some(point);
            }
            Asked::Answered(m) => out.notes.push(format!(
                "no final point ({name} answered {}): the newest committed point",
                m.kind()
            )),
            Asked::Refused(e) | Asked::Unreachable(e) => out
                .notes
                .push(format!("no final point ({e}): the newest committed point")),
        }
    }
    Ok(out)
}
