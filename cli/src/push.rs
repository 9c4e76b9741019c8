//! `lifeboat push-install HOST`: the configuration node installs a node on another machine over
//! SSH (the reference's process server pushes its mobility service the same way).
//!
//! Steps, each printed: probe the host (OS, architecture, systemd, the address it sees us
//! from), copy this very binary (atomically, then run it there to prove it starts), `init`,
//! start the daemon (the systemd service where systemd runs, a detached daemon otherwise),
//! register it with a fresh one-time key, and grant its roles, waiting until the node has
//! connected and applied them. Every step is idempotent, so a failed push can be run again.
//!
//! Secrets: the registration key goes to the remote `register -` on the SSH channel's standard
//! input, never on a command line (local or remote) and never in a log. SSH runs in batch mode
//! (no password prompts) and keeps its host-key checking; `--known-hosts` names the file.

use anyhow::{anyhow, bail, Context, Result};
use lifeboat_config::StateDir;
use lifeboat_node::control::Request;
use lifeboat_node::replies as r;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `push-install` was asked to do.
#[derive(Debug)]
pub(crate) struct PushOpts {
    pub host: String,
    pub user: String,
    pub ssh_port: u16,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub roles: Vec<String>,
    pub name: Option<String>,
    pub remote_bin: PathBuf,
    pub remote_state_dir: PathBuf,
    pub peer: Option<SocketAddr>,
    pub wait: Duration,
}

/// The host as the probe found it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub os: String,
    pub arch: String,
    pub hostname: String,
    pub systemd: bool,
    /// Our address as the host sees it (`$SSH_CONNECTION`'s first field).
    pub our_ip: Option<IpAddr>,
}

const PROBE: &str = "uname -s; uname -m; uname -n; \
    if [ -d /run/systemd/system ]; then echo systemd; else echo none; fi; \
    echo \"${SSH_CONNECTION:-}\"";

/// Parses the probe's output.
pub(crate) fn parse_probe(out: &str) -> Result<Probe> {
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    if lines.len() < 4 {
        bail!("the host answered the probe with {out:?}; is its shell a POSIX shell?");
    }
    Ok(Probe {
        os: lines[0].to_string(),
        arch: lines[1].to_string(),
        hostname: lines[2].to_string(),
        systemd: lines[3] == "systemd",
        our_ip: lines
            .get(4)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| a.parse().ok()),
    })
}

/// Why this binary cannot serve a host of `os`/`arch` (uname's spelling), if it cannot.
pub(crate) fn unsupported(os: &str, arch: &str) -> Option<String> {
    let here_os = std::env::consts::OS;
    let here_arch = std::env::consts::ARCH;
    let arch_ok = match here_arch {
        "x86_64" => matches!(arch, "x86_64" | "amd64"),
        "aarch64" => matches!(arch, "aarch64" | "arm64"),
        other => arch == other,
    };
    if os.eq_ignore_ascii_case(here_os) && arch_ok {
        return None;
    }
    Some(format!(
        "it runs {os} {arch}, and push-install copies this binary, built for {here_os} {here_arch}; \
         install a build for {os} {arch} there by hand"
    ))
}

/// Quotes a word for the remote POSIX shell.
pub(crate) fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One SSH connection's settings.
struct Ssh<'a> {
    o: &'a PushOpts,
}

impl Ssh<'_> {
    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"])
            .args([
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
            ])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-p", &self.o.ssh_port.to_string(), "-l", &self.o.user]);
        if let Some(id) = &self.o.identity {
            c.arg("-i").arg(id).args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(kh) = &self.o.known_hosts {
            c.arg("-o")
                .arg(format!("UserKnownHostsFile={}", kh.display()));
        }
        c.arg("--").arg(&self.o.host).arg(remote);
        c
    }

    /// Runs `remote` on the host with `input` on its standard input; its standard output, or
    /// an error with the last line it wrote on standard error.
    fn run(&self, what: &str, remote: &str, input: Input<'_>) -> Result<String> {
        let mut c = self.command(remote);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(match input {
            Input::None => Stdio::null(),
            _ => Stdio::piped(),
        });
        let mut child = c
            .spawn()
            .context("cannot run ssh (install the OpenSSH client)")?;
        if let Some(mut stdin) = child.stdin.take() {
            let res = match input {
                Input::Bytes(b) => stdin.write_all(b),
                Input::File(p) => std::fs::File::open(p)
                    .and_then(|mut f| std::io::copy(&mut f, &mut stdin).map(|_| ())),
                Input::None => Ok(()),
            };
            drop(stdin);
            if let Err(e) = res {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!("{what} on {}: {}", self.o.host, last_line(&out.stderr, &e));
            }
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let why = last_line(&out.stderr, &format!("exit {}", out.status));
            bail!("{what} on {}: {why}", self.o.host);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

enum Input<'a> {
    None,
    Bytes(&'a [u8]),
    File(&'a Path),
}

fn last_line(stderr: &[u8], otherwise: &dyn std::fmt::Display) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .last()
        .map(str::to_string)
        .unwrap_or_else(|| otherwise.to_string())
}

/// The remote `lifeboat --state-dir DIR ARGS...` as a shell command.
fn remote_cli(o: &PushOpts, args: &[&str]) -> String {
    let mut words = vec![
        sh_quote(&o.remote_bin.to_string_lossy()),
        "--state-dir".to_string(),
        sh_quote(&o.remote_state_dir.to_string_lossy()),
    ];
    words.extend(args.iter().map(|a| sh_quote(a)));
    words.join(" ")
}

/// Runs the push, printing each step on standard output.
pub(crate) fn push_install(dir: &StateDir, o: &PushOpts) -> Result<()> {
    for role in &o.roles {
        if role == "configuration" {
            bail!("--role configuration: a mesh has one configuration node, this one");
        }
    }
    if let Some(id) = &o.identity {
        std::fs::metadata(id).with_context(|| format!("--identity {}", id.display()))?;
    }
    for (flag, p) in [
        ("--remote-bin", &o.remote_bin),
        ("--remote-state-dir", &o.remote_state_dir),
    ] {
        if !p.is_absolute() {
            bail!("{flag} {} must be an absolute path", p.display());
        }
    }
    // This node must be the configuration node of a mesh: it issues the key and grants roles.
    let me: r::NodeStatus = crate::get(dir, Request::Status)?;
    if !me.authority {
        bail!(
            "this node ({}) is not the configuration node of a mesh; run push-install there",
            me.name
        );
    }
    let ssh = Ssh { o };
    let target = format!("{}@{}", o.user, o.host);

    let probe = parse_probe(&ssh.run("probe", PROBE, Input::None)?)?;
    if let Some(why) = unsupported(&probe.os, &probe.arch) {
        bail!("refusing {target}: {why}");
    }
    println!(
        "probe: {target} is {} {} ({}), {}",
        probe.os,
        probe.arch,
        probe.hostname,
        if probe.systemd {
            "systemd runs"
        } else {
            "no systemd"
        }
    );

    let name = o.name.clone().unwrap_or_else(|| probe.hostname.clone());
    let peer = match o.peer {
        Some(p) => Some(p),
        None => our_address(&me, probe.our_ip),
    };
    // A configuration node bound to loopback cannot be reached from another machine.
    if let Some(p) = peer.filter(|p| p.ip().is_loopback()) {
        if !probe.our_ip.is_some_and(|ip| ip.is_loopback()) {
            bail!(
                "the new node would dial this one at {p}, a loopback address {} cannot reach; \
                 listen on a reachable address (`[node] listen` in lifeboat.toml) or pass \
                 --peer ADDR:PORT",
                o.host
            );
        }
    }
    let exe = std::env::current_exe().context("cannot locate this lifeboat binary")?;
    let bin = sh_quote(&o.remote_bin.to_string_lossy());
    let parent = sh_quote(
        &o.remote_bin
            .parent()
            .unwrap_or(Path::new("/"))
            .to_string_lossy(),
    );
    // The digests before and after tell whether the binary changed (an upgrade: a running
    // daemon is restarted on it below).
    let copy = format!(
        "set -e; umask 022; mkdir -p {parent}; old=$(cksum 2>/dev/null < {bin} || true); \
         cat > {bin}.part.$$; chmod 0755 {bin}.part.$$; mv -f {bin}.part.$$ {bin}; \
         {bin} --version; echo \"$old\"; cksum < {bin}"
    );
    let said = ssh.run("copying the binary", &copy, Input::File(&exe))?;
    let mut lines = said.lines().map(str::trim);
    let version = lines.next().unwrap_or_default();
    let (old, new) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let changed = old != new;
    let ours = format!("lifeboat {}", env!("CARGO_PKG_VERSION"));
    if version != ours {
        bail!(
            "the binary copied to {}:{} says {version:?}, not {ours:?}",
            o.host,
            o.remote_bin.display(),
        );
    }
    println!(
        "copied: {} ({ours}, runs there{})",
        o.remote_bin.display(),
        if changed { "" } else { "; unchanged" }
    );

    let mut init = vec!["init".to_string(), "--name".into(), name.clone()];
    if let Some(p) = peer {
        init.push("--peer".into());
        init.push(p.to_string());
    }
    let init_refs: Vec<&str> = init.iter().map(String::as_str).collect();
    let said = ssh.run("init", &remote_cli(o, &init_refs), Input::None)?;
    println!("init: {}", said.lines().next().unwrap_or("done").trim());

    let status_cmd = remote_cli(o, &["status", "--json"]);
    let mut running = ssh.run("status", &status_cmd, Input::None).is_ok();
    if running && changed {
        // Upgrade: the daemon runs the old binary until it restarts.
        let stop = format!(
            "{} node stop > /dev/null; i=0; while {status_cmd} > /dev/null 2>&1; do \
             i=$((i+1)); if [ $i -ge 600 ]; then echo 'the daemon did not stop within 60 s' >&2; \
             exit 1; fi; sleep 0.1; done",
            remote_cli(o, &[])
        );
        ssh.run("stopping the daemon for the new binary", &stop, Input::None)?;
        running = false;
        println!("daemon: stopped, to restart on the new binary");
    }
    if probe.systemd {
        // `service install` enables and starts the unit (again, after a stop for an upgrade).
        let said = ssh.run(
            "service install",
            &remote_cli(o, &["service", "install"]),
            Input::None,
        )?;
        println!(
            "service: {}",
            said.lines().last().unwrap_or("installed").trim()
        );
    } else if running {
        println!("daemon: already running");
    } else {
        let log = sh_quote(&o.remote_state_dir.join("node.log").to_string_lossy());
        let start = format!(
            "setsid -f {} node run >> {log} 2>&1 < /dev/null",
            remote_cli(o, &[])
        );
        ssh.run("starting the daemon", &start, Input::None)?;
        println!(
            "daemon: started in the background (no systemd there: it will not start again after a reboot)"
        );
    }
    // Wait (bounded, on the host) until the daemon answers.
    let wait_up = format!(
        "i=0; while ! {status_cmd} > /dev/null 2>&1; do i=$((i+1)); \
         if [ $i -ge 300 ]; then {status_cmd}; exit 1; fi; sleep 0.1; done; {status_cmd}"
    );
    let st = ssh.run("waiting for the daemon", &wait_up, Input::None)?;
    let st: r::NodeStatus = serde_json::from_str::<serde_json::Value>(&st)
        .ok()
        .and_then(|v| serde_json::from_value(v["node"].clone()).ok())
        .ok_or_else(|| anyhow!("the daemon on {} answered status with {st:?}", o.host))?;
    let node_id = st.node_id.clone();

    if st.mesh_id.is_some() && st.mesh_id == me.mesh_id {
        println!("register: {name} ({node_id}) is a member already");
    } else {
        let key: r::KeyIssued = crate::get(
            dir,
            Request::KeyIssue {
                valid_for_ms: 15 * 60 * 1000,
            },
        )?;
        let said = ssh.run(
            "register",
            &remote_cli(o, &["register", "-"]),
            Input::Bytes(key.key.as_bytes()),
        )?;
        println!("register: {}", said.lines().next().unwrap_or("done").trim());
    }

    for role in &o.roles {
        let _: r::RolesReply = crate::get(
            dir,
            Request::RoleAdd {
                role: role.clone(),
                node: Some(node_id.clone()),
            },
        )?;
    }
    let deadline = Instant::now() + o.wait;
    loop {
        let v: r::RolesReply = crate::get(
            dir,
            Request::RoleList {
                node: Some(node_id.clone()),
            },
        )?;
        let held = crate::role_names(&v.roles);
        let has_all = o
            .roles
            .iter()
            .all(|want| held.split(',').any(|h| h == want));
        if has_all && v.applied == Some(true) {
            println!("done: {name} ({node_id}) is connected with roles {held}, applied");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "{name} ({node_id}) is installed and registered, but has not applied its roles \
                 within {}s (state {}); check `lifeboat peers` and {}/node.log there, then run \
                 push-install again",
                o.wait.as_secs(),
                v.state.as_deref().unwrap_or("unknown"),
                o.remote_state_dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The address the new node should dial us at: our QUIC port at the address the host sees us
/// from (or our bound address, if it is specific).
fn our_address(me: &r::NodeStatus, seen: Option<IpAddr>) -> Option<SocketAddr> {
    let listen = me.listen?;
    if !listen.ip().is_unspecified() {
        return Some(listen);
    }
    seen.map(|ip| SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_parsed_and_foreign_hosts_are_refused() {
        let p = parse_probe("Linux\nx86_64\nweb-1\nnone\n10.0.0.5 52000 10.0.0.9 22\n").unwrap();
        assert_eq!(p.hostname, "web-1");
        assert!(!p.systemd);
        assert_eq!(p.our_ip, Some("10.0.0.5".parse().unwrap()));
        let p = parse_probe("Linux\nx86_64\nweb-1\nsystemd\n\n").unwrap();
        assert!(p.systemd);
        assert_eq!(p.our_ip, None);
        assert!(parse_probe("sh: uname: not found\n").is_err());
        let here = std::env::consts::ARCH;
        assert_eq!(unsupported("Linux", here), None);
        let why = unsupported("Darwin", here).unwrap();
        assert!(why.contains("runs Darwin"), "{why}");
        let other = if here == "x86_64" { "armv7l" } else { "x86_64" };
        assert!(unsupported("Linux", other).unwrap().contains(other));
    }

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(
            sh_quote("/usr/local/bin/lifeboat"),
            "/usr/local/bin/lifeboat"
        );
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(sh_quote(""), "''");
    }
}
