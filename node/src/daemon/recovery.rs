//! The control socket's recovery commands: restore, drill, failover, reprotect, failback and
//! their follow-ups, each run as a job (`config_side::jobs`), and the job listings.

use super::control::on_quic;
use super::*;
use crate::replication::config_side::{self as c, jobs::run_job, DrillAsk};

/// Runs a recovery command (on the network runtime, as a job).
pub(super) async fn recovery_request(ctx: &Ctx, req: Request) -> Result<serde_json::Value, String> {
    let repl = ctx.repl.clone();
    match req {
        Request::Jobs { limit } => c::jobs::list(&repl, limit.unwrap_or(50)),
        Request::Job { id } => c::jobs::get(&repl, &id),
        Request::Restore {
            machine,
            point,
            to,
            job,
        } => {
            on_quic(ctx, async move {
                {
                    let (r, m) = (repl.clone(), machine.clone());
                    run_job(&repl, job, "restore", Some(&machine), move |j| async move {
                        c::restore(&r, &m, &point, &to, &j).await
                    })
                }
                .await
            })
            .await?
        }
        Request::Drill {
            machine,
            point,
            to,
            format,
            boot_hook,
            isolated,
            on,
            disk_map,
            job,
        } => {
            let ask = DrillAsk {
                machine,
                point,
                to,
                format,
                boot_hook,
                isolated,
                on,
                disk_map: disk_specs(disk_map),
                shutdown_source: false,
                planned: false,
            };
            let m = ask.machine.clone();
            on_quic(ctx, async move {
                {
                    let r = repl.clone();
                    run_job(&repl, job, "drill", Some(&m), move |j| async move {
                        c::drill(&r, ask, &j).await
                    })
                }
                .await
            })
            .await?
        }
        Request::Failover {
            machine,
            point,
            to,
            format,
            boot_hook,
            shutdown_source,
            planned,
            on,
            disk_map,
            job,
        } => {
            let ask = DrillAsk {
                machine,
                point,
                to,
                format,
                boot_hook,
                isolated: false,
                on,
                disk_map: disk_specs(disk_map),
                shutdown_source,
                planned,
            };
            let m = ask.machine.clone();
            on_quic(ctx, async move {
                {
                    let r = repl.clone();
                    run_job(&repl, job, "failover", Some(&m), move |j| async move {
                        c::failover(&r, ask, &j).await
                    })
                }
                .await
            })
            .await?
        }
        Request::Reprotect {
            machine,
            shutdown_hook,
            job,
        } => {
            on_quic(ctx, async move {
                {
                    let (r, m) = (repl.clone(), machine.clone());
                    run_job(
                        &repl,
                        job,
                        "reprotect",
                        Some(&machine),
                        move |j| async move { c::reprotect(&r, &m, shutdown_hook, &j).await },
                    )
                }
                .await
            })
            .await?
        }
        Request::Failback {
            machine,
            planned,
            job,
        } => {
            on_quic(ctx, async move {
                {
                    let (r, m) = (repl.clone(), machine.clone());
                    run_job(
                        &repl,
                        job,
                        "failback",
                        Some(&machine),
                        move |j| async move { c::failback(&r, &m, planned, &j).await },
                    )
                }
                .await
            })
            .await?
        }
        Request::FailoverCommit {
            machine,
            discard_points,
        } => {
            on_quic(ctx, async move {
                {
                let (r, m) = (repl.clone(), machine.clone());
                run_job(
                    &repl,
                    None,
                    "failover-commit",
                    Some(&machine),
                    move |j| async move { c::failover_commit(&r, &m, discard_points, &j).await },
                )
            }
            .await
            })
            .await?
        }
        Request::FailoverCancel { machine } => {
            on_quic(ctx, async move {
                {
                    let (r, m) = (repl.clone(), machine.clone());
                    run_job(
                        &repl,
                        None,
                        "failover-cancel",
                        Some(&machine),
                        move |j| async move { c::failover_cancel(&r, &m, &j).await },
                    )
                }
                .await
            })
            .await?
        }
        Request::DrillCleanup { machine, notes } => {
            on_quic(ctx, async move {
                {
                    let (r, m) = (repl.clone(), machine.clone());
                    run_job(
                        &repl,
                        None,
                        "drill-cleanup",
                        Some(&machine),
                        move |j| async move { c::drill_cleanup(&r, &m, notes, &j).await },
                    )
                }
                .await
            })
            .await?
        }
        _ => Err("internal: not a recovery command".into()),
    }
}

fn disk_specs(map: Vec<(String, String)>) -> Vec<lifeboat_protocol::message::DiskSpec> {
    map.into_iter()
        .map(|(name, path)| lifeboat_protocol::message::DiskSpec { name, path })
        .collect()
}
