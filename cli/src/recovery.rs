//! The recovery commands: `drill`, `drill cleanup`, `failover`, `failover commit|cancel`.

use super::*;
use crate::print::bytes;

/// Runs a recovery command.
pub(crate) fn recovery_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Drill { .. } => drill_cmd(dir, cmd),
        Cmd::Reprotect { .. } | Cmd::Failback { .. } => home_cmd(dir, cmd),
        _ => failover_cmd(dir, cmd),
    }
}

fn failover_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Failover {
            action: Some(a), ..
        } => {
            let req = match a {
                FailoverCmd::Commit { machine } => Request::FailoverCommit { machine },
                FailoverCmd::Cancel { machine } => Request::FailoverCancel { machine },
            };
            let v: r::FailoverChanged = get(dir, req)?;
            println!("failover {} of {} {}", v.failover, v.machine, v.state);
        }
        Cmd::Failover {
            action: None,
            machine,
            land,
            shutdown_source,
            planned,
            json,
        } => {
            let (point, to, format, boot_hook, on) = land.parts()?;
            let id = jobs::new_id();
            let v: r::FailedOver = jobs::with_progress(
                dir,
                &id,
                Request::Failover {
                    machine: machine.unwrap_or_default(),
                    point,
                    to,
                    format,
                    boot_hook,
                    shutdown_source,
                    planned,
                    on,
                    job: Some(id.clone()),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                for n in &v.notes {
                    println!("{n}");
                }
                for i in &v.images {
                    println!("{} ({}, verified)", i.display(), v.format);
                }
                println!(
                    "{} failed over from point {} in {:.1} s{}; replication of it stopped. `lifeboat failover commit {}` makes it final, `lifeboat failover cancel {}` undoes it",
                    v.machine,
                    v.point,
                    v.seconds,
                    if v.boot_hook_exit.is_some() { " (boot hook ran)" } else { "" },
                    v.machine,
                    v.machine
                );
            }
        }
        _ => bail!("internal: not a failover command"),
    }
    Ok(())
}

fn home_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Reprotect {
            machine,
            shutdown_hook,
            json,
        } => {
            let v: r::Reprotected = get(
                dir,
                Request::Reprotect {
                    machine,
                    shutdown_hook,
                    job: None,
                },
            )?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} reprotected: {} replicates its failed-over disks from point {} (no initial copy); `lifeboat failback {}` brings it home",
                    v.machine, v.node, v.base_point, v.machine
                );
            }
        }
        Cmd::Failback {
            machine,
            planned,
            json,
        } => {
            let id = jobs::new_id();
            let v: r::FailedBack = jobs::with_progress(
                dir,
                &id,
                Request::Failback {
                    machine,
                    planned,
                    job: Some(id.clone()),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                for n in &v.notes {
                    println!("{n}");
                }
                for d in &v.disks {
                    println!(
                        "disk {}: read and compared {} blocks ({}), wrote {} blocks ({}), fetched {} from the vault",
                        d.name,
                        d.compared_blocks,
                        bytes(d.read_bytes),
                        d.written_blocks,
                        bytes(d.written_bytes),
                        bytes(d.fetched_bytes)
                    );
                }
                println!(
                    "{} failed back from point {} in {:.1} s; its protection resumed from point {}. The recovery site's images stay until you remove them: {}",
                    v.machine,
                    v.from_point,
                    v.seconds,
                    v.point,
                    v.recovery_images
                        .iter()
                        .map(|i| i.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        _ => bail!("internal: not a reprotect or failback command"),
    }
    Ok(())
}

fn drill_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Drill {
            action:
                Some(DrillCmd::Cleanup {
                    machine,
                    notes,
                    json,
                }),
            ..
        } => {
            let v: r::DrillCleaned = get(dir, Request::DrillCleanup { machine, notes })?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "drill {} of {} cleaned up ({} files removed)",
                    v.drill, v.machine, v.removed_files
                );
            }
        }
        Cmd::Drill {
            action: None,
            machine,
            land,
            isolated,
            json,
        } => {
            let (point, to, format, boot_hook, on) = land.parts()?;
            let id = jobs::new_id();
            let v: r::Drilled = jobs::with_progress(
                dir,
                &id,
                Request::Drill {
                    machine: machine.unwrap_or_default(),
                    point,
                    to,
                    format,
                    boot_hook,
                    isolated,
                    on,
                    job: Some(id.clone()),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                for n in &v.notes {
                    println!("{n}");
                }
                for i in &v.images {
                    println!("{} ({}, verified)", i.display(), v.format);
                }
                println!(
                    "drill {} of {} is up from point {} in {:.1} s{}; remove it with `lifeboat drill cleanup {}`",
                    v.drill,
                    v.machine,
                    v.point,
                    v.seconds,
                    if v.boot_hook_exit.is_some() {
                        if v.isolated {
                            " (boot hook ran, isolated)"
                        } else {
                            " (boot hook ran)"
                        }
                    } else {
                        ""
                    },
                    v.machine
                );
            }
        }
        _ => bail!("internal: not a drill command"),
    }
    Ok(())
}

impl LandArgs {
    /// Point, absolute image directory, format, boot hook, target node.
    #[allow(clippy::type_complexity)]
    fn parts(self) -> Result<(String, Option<String>, String, Option<String>, Option<String>)> {
        // A relative --to is this directory's only when the images land here.
        let to = match self.to {
            Some(t) if !t.is_absolute() && self.on.is_none() => {
                Some(std::env::current_dir()?.join(t))
            }
            t => t,
        };
        Ok((
            self.point,
            to.map(|t| t.display().to_string()),
            self.format,
            self.boot_hook,
            self.on,
        ))
    }
}
