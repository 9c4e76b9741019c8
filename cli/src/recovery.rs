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
                FailoverCmd::Commit {
                    machine,
                    discard_points,
                } => Request::FailoverCommit {
                    machine,
                    discard_points,
                },
                FailoverCmd::Cancel { machine } => Request::FailoverCancel { machine },
            };
            let v: r::FailoverChanged = get(dir, req)?;
            println!("failover {} of {} {}", v.failover, v.machine, v.state);
            if v.discarded_points > 0 {
                println!("{} older recovery points deleted", v.discarded_points);
            }
        }
        Cmd::Failover {
            action: None,
            machine,
            land,
            shutdown_source,
            planned,
            json,
        } => {
            let Land {
                point,
                to,
                format,
                boot_hook,
                on,
                disk_map,
            } = land.parts()?;
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
                    disk_map,
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
            let Land {
                point,
                to,
                format,
                boot_hook,
                on,
                disk_map,
            } = land.parts()?;
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
                    disk_map,
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
    /// The request's landing fields (a relative --to is this directory's only when the
    /// images land here).
    fn parts(self) -> Result<Land> {
        let to = match self.to {
            Some(t) if !t.is_absolute() && self.on.is_none() => {
                Some(std::env::current_dir()?.join(t))
            }
            t => t,
        };
        let disk_map = self
            .disk_map
            .iter()
            .map(|m| {
                m.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| anyhow!("--disk-map {m:?}: use NAME=DEVICE"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Land {
            point: self.point,
            to: to.map(|t| t.display().to_string()),
            format: self.format,
            boot_hook: self.boot_hook,
            on: self.on,
            disk_map,
        })
    }
}

/// Where and how a drill or failover lands.
struct Land {
    point: String,
    to: Option<String>,
    format: String,
    boot_hook: Option<String>,
    on: Option<String>,
    disk_map: Vec<(String, String)>,
}
