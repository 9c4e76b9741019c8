//! `lifeboat`: one binary for the daemon and its CLI. Thin: parses arguments, installs tracing,
//! and calls into `lifeboat-node`. Every error is one line on stderr and a non-zero exit.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use lifeboat_config::{default_state_dir, StateDir};
use lifeboat_node::control::{self, Request};
use lifeboat_node::replies::{self as r, decode};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod args;
mod jobs;
mod print;
mod push;
mod recovery;
mod service;
mod simulate;
use args::*;
use print::{print_points, print_status};
use simulate::{simulate, SimOpts};

fn secs(flag: &str, v: &str) -> Result<u64> {
    if v == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(v)
        .with_context(|| format!("--{flag} {v:?}: use a duration like 30s, 15m, 24h or 7d"))?;
    Ok(d.as_secs())
}

fn millis(flag: &str, v: &str) -> Result<u64> {
    if v == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(v)
        .with_context(|| format!("--{flag} {v:?}: use a duration like 500ms, 10s or 1m"))?;
    Ok(d.as_millis() as u64)
}

fn age(ms: u64) -> String {
    format!("{} ago", lifeboat_protocol::time::human_duration(ms))
}

fn when(ms: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms.map(|t| age(now.saturating_sub(t)))
        .unwrap_or_else(|| "-".into())
}

fn install_tracing(format: LogFormatArg) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == LogFormatArg::Json {
        b.json().init();
    } else {
        b.init();
    }
}

fn call(dir: &StateDir, req: Request) -> Result<serde_json::Value> {
    if !dir.root.exists() {
        bail!(
            "state directory {} does not exist; run `lifeboat init --state-dir {}` first",
            dir.root.display(),
            dir.root.display()
        );
    }
    control::call(
        &dir.control_socket(),
        &dir.root,
        &req,
        Duration::from_secs(60),
    )
    .map_err(|e| anyhow!(e))
}

/// A command's typed reply.
fn get<T: serde::de::DeserializeOwned>(dir: &StateDir, req: Request) -> Result<T> {
    decode(call(dir, req)?).map_err(|e| anyhow!(e))
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Roles as the CLI takes them (`process-server`), comma-separated, or `-`.
fn role_names(roles: &[lifeboat_protocol::message::Role]) -> String {
    let names: Vec<String> = roles
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The registration key from the argument, standard input (`-`) or a file, trimmed.
fn read_key(arg: Option<String>, file: Option<PathBuf>) -> Result<String> {
    let text = match (arg.as_deref(), file) {
        (_, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read the key file {}", f.display()))?,
        (Some("-"), None) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)
                .context("cannot read the key from standard input")?;
            s
        }
        (Some(k), None) => k.to_string(),
        (None, None) => {
            anyhow::bail!("give the key, `-` to read it from standard input, or --key-file FILE")
        }
    };
    let key = text.trim().to_string();
    if key.is_empty() {
        anyhow::bail!("the registration key is empty");
    }
    Ok(key)
}

fn roles_line(v: &r::RolesReply) -> String {
    let note = match v.note.as_deref() {
        Some(n) if !n.is_empty() => format!(" ({n})"),
        _ => String::new(),
    };
    format!("{}: {}{note}", v.node_id, role_names(&v.roles))
}

fn run(cli: Cli) -> Result<()> {
    // Absolute, so that what the node derives from it (the default vault's file:// URL, the
    // daemon's paths) does not depend on the working directory.
    let root = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    let dir = StateDir::new(std::path::absolute(&root).unwrap_or(root));
    match cli.cmd {
        Cmd::Init {
            name,
            listen,
            peers,
            force,
        } => {
            let r = lifeboat_node::init::init(
                &dir,
                &lifeboat_node::init::InitOptions {
                    name,
                    listen,
                    peers,
                    force,
                },
            )?;
            if r.unchanged {
                println!("{} is already initialized: node {} (fingerprint {}); pass --force to start over", dir.root.display(), r.node_id, r.fingerprint);
            } else {
                println!(
                    "initialized {}: node {} (fingerprint {})",
                    dir.root.display(),
                    r.node_id,
                    r.fingerprint
                );
                println!("next: lifeboat node run --state-dir {}", dir.root.display());
            }
        }
        Cmd::Node { cmd: NodeCmd::Run } => {
            let cfg_format = lifeboat_config::Config::load(&dir.config_path())
                .ok()
                .map(|c| c.log.format);
            let fmt = cli.log_format.unwrap_or(match cfg_format {
                Some(lifeboat_config::LogFormat::Json) => LogFormatArg::Json,
                _ => LogFormatArg::Pretty,
            });
            install_tracing(fmt);
            lifeboat_node::daemon::run(dir)?;
        }
        Cmd::Node { cmd: NodeCmd::Stop } => {
            call(&dir, Request::Shutdown)?;
            println!("stopping");
        }
        Cmd::Simulate {
            seed,
            runs,
            nodes,
            loss_permille,
            partitions,
            trace,
            mesh_only,
            data_path: _,
        } => {
            if !(2..=64).contains(&nodes) {
                bail!("--nodes must be between 2 and 64");
            }
            if loss_permille > 1000 {
                bail!("--loss-permille must be at most 1000");
            }
            let opts = SimOpts {
                nodes,
                loss_permille,
                partitions,
                trace,
                data_path: !mesh_only,
            };
            simulate(seed, runs.max(1), opts)?;
        }
        Cmd::Service {
            cmd: ServiceCmd::Install { unit_dir },
        } => service::install(&dir.root, &unit_dir)?,
        Cmd::Service {
            cmd: ServiceCmd::Uninstall { unit_dir },
        } => service::uninstall(&unit_dir)?,
        Cmd::PushInstall(a) => {
            let wait = humantime::parse_duration(&a.wait)
                .with_context(|| format!("--wait {:?}: use a duration like 2m or 90s", a.wait))?;
            let o = push::PushOpts {
                host: a.host,
                user: a.ssh_user,
                ssh_port: a.ssh_port,
                identity: a.identity,
                known_hosts: a.known_hosts,
                roles: a.roles,
                name: a.name,
                remote_bin: a.remote_bin,
                remote_state_dir: a.remote_state_dir,
                peer: a.peer,
                wait,
            };
            push::push_install(&dir, &o)?;
        }
        Cmd::Quickstart { keep } => {
            let exe = std::env::current_exe().context("cannot locate the lifeboat binary")?;
            lifeboat_node::quickstart::run(&exe, keep, &mut |line| println!("{line}"))
                .map_err(|e| anyhow!("quickstart failed: {e}"))?;
            println!("quickstart OK");
        }
        cmd @ (Cmd::Role { .. }
        | Cmd::Mesh { .. }
        | Cmd::Key { .. }
        | Cmd::Register { .. }
        | Cmd::Peers { .. }) => mesh_cmd(&dir, cmd)?,
        cmd @ (Cmd::Vault { .. } | Cmd::Policy { .. }) => vault_cmd(&dir, cmd)?,
        cmd @ (Cmd::Protect { .. } | Cmd::Throttle { .. } | Cmd::Unprotect { .. }) => {
            protect_cmd(&dir, cmd)?
        }
        cmd @ (Cmd::Jobs { .. } | Cmd::Job { .. }) => jobs::jobs_cmd(&dir, cmd)?,
        cmd @ (Cmd::Drill { .. }
        | Cmd::Failover { .. }
        | Cmd::Reprotect { .. }
        | Cmd::Failback { .. }) => recovery::recovery_cmd(&dir, cmd)?,
        cmd => replication_cmd(&dir, cmd)?,
    }
    Ok(())
}

/// Mesh membership, roles, registration keys and peers.
fn mesh_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Role { cmd } => {
            let (req, json) = match cmd {
                RoleCmd::Add { role, node } => (Request::RoleAdd { role, node }, false),
                RoleCmd::Remove { role, node } => (Request::RoleRemove { role, node }, false),
                RoleCmd::List { node, json } => (Request::RoleList { node }, json),
            };
            let v: r::RolesReply = get(dir, req)?;
            if json {
                print_json(&v);
            } else {
                println!("{}", roles_line(&v));
            }
        }
        Cmd::Mesh {
            cmd: MeshCmd::Create,
        } => {
            let v: r::Joined = get(dir, Request::MeshCreate)?;
            println!("created mesh {}", v.mesh_id);
            println!("next: lifeboat key issue   (one key per joining node)");
        }
        Cmd::Mesh {
            cmd: MeshCmd::Remove { node },
        } => {
            let v: r::Removed = get(dir, Request::MeshRemove { node })?;
            println!("removed {} ({}) from the mesh", v.name, v.removed);
            println!("{}", v.advice);
        }
        Cmd::Mesh {
            cmd: MeshCmd::RotateSecret { grace },
        } => {
            let grace_ms = if grace == "0" {
                0
            } else {
                humantime::parse_duration(&grace)
                    .with_context(|| format!("--grace {grace:?}: use a duration like 7d or 12h"))?
                    .as_millis() as u64
            };
            let _: r::Rotated = get(dir, Request::MeshRotateSecret { grace_ms })?;
            println!(
                "mesh secret rotated; the old one is accepted for {}",
                lifeboat_protocol::time::human_duration(grace_ms)
            );
        }
        Cmd::Key {
            cmd: KeyCmd::Issue { valid_for },
        } => {
            let d = humantime::parse_duration(&valid_for).with_context(|| {
                format!("--valid-for {valid_for:?}: use a duration like 5d, 12h or 30m")
            })?;
            let v: r::KeyIssued = get(
                dir,
                Request::KeyIssue {
                    valid_for_ms: d.as_millis() as u64,
                },
            )?;
            println!("{}", v.key);
            eprintln!(
                "valid for {} (one node, once); on the joining node run: lifeboat register KEY",
                lifeboat_protocol::time::human_duration(d.as_millis() as u64)
            );
        }
        Cmd::Register { key, key_file } => {
            let key = read_key(key, key_file)?;
            let v: r::Joined = get(dir, Request::Register { key })?;
            if v.already_member {
                println!("already a member of mesh {}", v.mesh_id);
            } else {
                println!(
                    "joined mesh {} ({} members, configuration node {})",
                    v.mesh_id,
                    v.members.unwrap_or(0),
                    v.configuration_node.as_deref().unwrap_or("?")
                );
            }
        }
        Cmd::Peers { json } => {
            let v: Vec<r::PeerView> = get(dir, Request::Peers)?;
            if json {
                print_json(&v);
            } else {
                println!("{}", lifeboat_node::format::peer_table(&v));
            }
        }
        _ => bail!("internal: not a mesh command"),
    }
    Ok(())
}

/// The vault and the policies.
fn vault_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Vault {
            cmd:
                VaultCmd::Create {
                    name,
                    store,
                    options,
                    grant_options_file,
                },
        } => {
            let opts = parse_options(&options)?;
            let grant_options = match grant_options_file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    let mut out = Vec::new();
                    for (i, l) in text.lines().map(str::trim).enumerate() {
                        if l.is_empty() || l.starts_with('#') {
                            continue;
                        }
                        // The line may hold a secret: say where, not what.
                        let (k, v) = l.split_once('=').ok_or_else(|| {
                            anyhow!("{} line {}: use KEY=VALUE", f.display(), i + 1)
                        })?;
                        out.push((k.trim().to_string(), v.trim().to_string()));
                    }
                    Some(out)
                }
                None => None,
            };
            let v: r::VaultCreated = get(
                dir,
                Request::VaultCreate {
                    name,
                    store,
                    options: opts,
                    grant_options,
                },
            )?;
            println!("created vault {} at {}", v.name, v.url);
            println!("RECOVERY KEY (shown this once: write it down and keep it away from this site; with it a new configuration node opens this vault if this one is lost):");
            println!("  {}", v.recovery_key);
        }
        Cmd::Vault {
            cmd:
                VaultCmd::Attach {
                    url,
                    recovery_key_file,
                    options,
                    json,
                },
        } => {
            let text = if recovery_key_file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read the recovery key from standard input")?;
                s
            } else {
                std::fs::read_to_string(&recovery_key_file)
                    .with_context(|| format!("cannot read {}", recovery_key_file.display()))?
            };
            let v: r::VaultAttached = get(
                dir,
                Request::VaultAttach {
                    url,
                    options: parse_options(&options)?,
                    recovery_key: control::SecretText(text.trim().to_string()),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "attached vault {} at {}: {} recovery points; machines of the lost site: {}",
                    v.name,
                    v.url,
                    v.points,
                    if v.machines.is_empty() {
                        "none mirrored".to_string()
                    } else {
                        v.machines.join(", ")
                    }
                );
            }
        }
        Cmd::Vault {
            cmd: VaultCmd::Rekey,
        } => {
            let v: r::Rekeyed = get(dir, Request::VaultRekey)?;
            println!(
                "vault key rotated ({} rotation(s)); new writes are sealed with the new key, process servers receive it now",
                v.rotations
            );
        }
        Cmd::Vault {
            cmd: VaultCmd::Gc { grace, json },
        } => {
            let grace_ms = secs("grace", &grace)? * 1000;
            let v: lifeboat_node::vault::GcReport = get(dir, Request::VaultGc { grace_ms })?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "garbage collection: {} packs deleted ({} bytes), {} condemned, {} repacked, {} rescued, {} chunks deleted; {} points reference {} blocks",
                    v.deleted_packs, v.freed_bytes, v.condemned, v.repacked, v.rescued, v.deleted_chunks, v.points, v.live_blocks
                );
            }
        }
        Cmd::Policy { cmd } => policy_cmd(dir, cmd)?,
        _ => bail!("internal: not a vault command"),
    }
    Ok(())
}

/// Protection, status, points and restores.
fn replication_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Status { machine, json } => {
            let v: r::NodeStatus = get(dir, Request::Status)?;
            let repl: r::ReplStatus = get(
                dir,
                Request::ReplStatus {
                    machine: machine.clone(),
                },
            )?;
            if json {
                print_json(&serde_json::json!({ "node": v, "replication": repl }));
            } else {
                print_status(&v, &repl, machine.is_some());
            }
        }
        Cmd::Points { machine, json } => {
            let v: Vec<r::PointInfo> = get(dir, Request::Points { machine })?;
            if json {
                print_json(&v);
            } else {
                print_points(&v);
            }
        }
        Cmd::Restore {
            machine,
            point,
            to,
            json,
        } => {
            let to = if to.is_absolute() {
                to
            } else {
                std::env::current_dir()?.join(to)
            };
            let id = jobs::new_id();
            let v: r::Restored = jobs::with_progress(
                dir,
                &id,
                Request::Restore {
                    machine,
                    point,
                    to: to.display().to_string(),
                    job: Some(id.clone()),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                for d in &v.disks {
                    println!(
                        "{} -> {} ({} bytes, Merkle root {} verified)",
                        d.name,
                        d.image.display(),
                        d.size_bytes,
                        d.merkle_root
                    );
                }
                println!("restored point {} ({})", v.point.id, v.point.consistency);
            }
        }
        _ => bail!("internal: not a replication command"),
    }
    Ok(())
}

/// mimalloc instead of glibc's malloc: the process server moves megabyte buffers between threads
/// (segments, sealed blocks, packs), which glibc's per-thread arenas kept long after they were
/// freed (peak RSS doubled once packs were written direct).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A usage error on one line: what was wrong, and the allowed values if clap lists them.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect();
    let msg = parts.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    format!("{msg} (see --help)")
}

fn main() -> ExitCode {
    use clap::error::ErrorKind;
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", usage_error(&e));
            return ExitCode::from(2);
        }
    };
    // A command whose output is piped into `head` ends quietly when the reader goes (as
    // Unix tools do), instead of panicking in println!. Not the daemon nor the quickstart's
    // in-process nodes: they must see EPIPE on a socket as an error, not die of it.
    if !matches!(
        cli.cmd,
        Cmd::Node { cmd: NodeCmd::Run } | Cmd::Quickstart { .. }
    ) {
        // SAFETY: before any thread starts; restores the default action of one signal.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.lines().next().unwrap_or("failed"));
            ExitCode::FAILURE
        }
    }
}

/// The replication policies.
fn policy_cmd(dir: &StateDir, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Create {
            name,
            rpo_threshold,
            retention,
            crash_consistent_every,
            app_consistent_every,
            max_freeze,
        } => {
            let policy = lifeboat_protocol::message::Policy {
                name,
                rpo_threshold_secs: secs("rpo-threshold", &rpo_threshold)?,
                retention_secs: secs("retention", &retention)?,
                crash_consistent_every_secs: secs(
                    "crash-consistent-every",
                    &crash_consistent_every,
                )?,
                app_consistent_every_secs: secs("app-consistent-every", &app_consistent_every)?,
                max_freeze_ms: millis("max-freeze", &max_freeze)?,
            };
            let v: lifeboat_protocol::message::Policy = get(dir, Request::PolicyCreate { policy })?;
            println!("policy {} saved", v.name);
        }
        PolicyCmd::List { json } => {
            let v: r::Policies = get(dir, Request::PolicyList)?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{:<16} {:>10} {:>10} {:>12} {:>12}",
                    "NAME", "RPO ALERT", "RETENTION", "CRASH EVERY", "APP EVERY"
                );
                let h = |s: u64| match s {
                    0 => "never".to_string(),
                    s => lifeboat_protocol::time::human_duration(s * 1000),
                };
                for (n, p) in &v {
                    println!(
                        "{n:<16} {:>10} {:>10} {:>12} {:>12}",
                        h(p.rpo_threshold_secs),
                        h(p.retention_secs),
                        h(p.crash_consistent_every_secs),
                        h(p.app_consistent_every_secs)
                    );
                }
            }
        }
        PolicyCmd::Show { name } => {
            let v: r::Policies = get(dir, Request::PolicyList)?;
            let p = v
                .get(&name)
                .ok_or_else(|| anyhow!("no policy named {name}"))?;
            print_json(p);
        }
        PolicyCmd::Delete { name } => {
            let _: r::Named = get(dir, Request::PolicyDelete { name: name.clone() })?;
            println!("policy {name} deleted");
        }
    }
    Ok(())
}

/// Protection and the upload bandwidth policy.
fn protect_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Protect {
            machine,
            disks,
            policy,
            process_server,
            freeze_hook,
            thaw_hook,
            snapshot_hook,
            shutdown_hook,
            block_size,
            capture,
        } => {
            if freeze_hook.is_some() != thaw_hook.is_some() {
                bail!("--freeze-hook and --thaw-hook go together (an application frozen without a thaw stays frozen)");
            }
            let hooks = lifeboat_protocol::message::Hooks {
                freeze: freeze_hook,
                thaw: thaw_hook,
                snapshot: snapshot_hook,
                shutdown: shutdown_hook,
            };
            let v: r::Protected = get(
                dir,
                Request::Protect {
                    machine,
                    disks,
                    policy,
                    process_server,
                    hooks,
                    block_size,
                    capture: capture.into(),
                },
            )?;
            println!(
                "protecting {} ({} disks, policy {}); initial replication starts now, see `lifeboat status`",
                v.machine,
                v.disks.len(),
                v.policy
            );
        }
        Cmd::Throttle {
            bandwidth_limit,
            off_hours_limit,
            work_hours,
            off,
        } => {
            let v: r::ThrottleReply = get(
                dir,
                Request::Throttle {
                    work: bandwidth_limit,
                    off: off_hours_limit,
                    hours: work_hours,
                    clear: off,
                },
            )?;
            match v.now_bytes_per_sec {
                Some(r) => println!("upload limit now {:.1} Mbit/s", r as f64 * 8.0 / 1e6),
                None if off => println!("upload limit removed"),
                None => println!("no upload limit in force now (outside the limited hours)"),
            }
        }
        Cmd::Unprotect { machine } => {
            let _: r::Named = get(
                dir,
                Request::Unprotect {
                    machine: machine.clone(),
                },
            )?;
            println!("{machine} is no longer protected (its recovery points stay in the vault)");
        }
        _ => bail!("internal: not a protection command"),
    }
    Ok(())
}

/// `--store-option KEY=VALUE` arguments.
fn parse_options(options: &[String]) -> Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("--store-option {o:?}: use KEY=VALUE"))
        })
        .collect()
}
