//! `lifeboat service install|uninstall`: the node as a systemd service.
//!
//! The unit runs `lifeboat node run` for one state directory, restarts it on failure, and is
//! hardened as far as the roles allow: a mobility node reads block devices, writes the
//! kernel's tracefs (so /sys stays writable: no ProtectKernelTunables) and runs the user's
//! freeze and snapshot hooks; a target writes images where `--to` says and block devices on
//! failback (so the file system stays writable: no ProtectSystem=strict or ProtectHome).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit's file name.
pub(crate) const UNIT: &str = "lifeboat.service";

/// The unit text for `exe` serving `state_dir`.
pub(crate) fn unit(exe: &Path, state_dir: &Path) -> String {
    format!(
        "# Written by `lifeboat service install`; `lifeboat service uninstall` removes it.
[Unit]
Description=Lifeboat disaster-recovery node ({dir})
Documentation=https://github.com/lifeboat-dr/lifeboat
After=network-online.target
Wants=network-online.target
# Not before `lifeboat init` has made the node (the Debian package installs the unit first).
ConditionPathExists={dir}/identity.key

[Service]
Type=simple
ExecStart={exe} node run --state-dir {dir}
ExecStop={exe} node stop --state-dir {dir}
Restart=on-failure
RestartSec=5s
TimeoutStopSec=60s
LimitNOFILE=65536
UMask=0077
# Hardening that leaves what the roles need: block devices, tracefs, hooks, image targets.
NoNewPrivileges=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=~user
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        dir = state_dir.display(),
    )
}

/// True if systemd manages this machine.
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("systemctl {}", args.join(" ")))?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Writes (or rewrites) the unit into `unit_dir` and, where systemd runs, enables and starts
/// it. Run again with the same state directory, it changes nothing and succeeds.
pub(crate) fn install(state_dir: &Path, unit_dir: &Path) -> Result<()> {
    if !state_dir.join("identity.key").exists() {
        bail!(
            "{} is not an initialized node; run `lifeboat init --state-dir {}` first",
            state_dir.display(),
            state_dir.display()
        );
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot locate the lifeboat binary")?;
    let path = unit_dir.join(UNIT);
    let text = unit(&exe, state_dir);
    let same = std::fs::read_to_string(&path).is_ok_and(|t| t == text);
    if !same {
        std::fs::create_dir_all(unit_dir)
            .with_context(|| format!("cannot create {}", unit_dir.display()))?;
        lifeboat_config::state::write_file_atomic(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "{} {}",
        if same { "unchanged:" } else { "wrote" },
        path.display()
    );
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT])?;
        println!("enabled and started {UNIT}");
    } else {
        eprintln!(
            "warning: systemd is not running on this machine: the unit is written but not enabled; on a systemd host run `systemctl enable --now {UNIT}`"
        );
    }
    Ok(())
}

/// Stops, disables and removes the unit; nothing to remove is not an error.
pub(crate) fn uninstall(unit_dir: &Path) -> Result<()> {
    let path: PathBuf = unit_dir.join(UNIT);
    if systemd_running() && path.exists() {
        systemctl(&["disable", "--now", UNIT])?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} is not installed", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_debian_package_ships_the_unit_service_install_writes() {
        let shipped = include_str!("../debian/lifeboat.service");
        let written = super::unit(
            std::path::Path::new("/usr/bin/lifeboat"),
            std::path::Path::new("/var/lib/lifeboat"),
        )
        .replace(
            "# Written by `lifeboat service install`; `lifeboat service uninstall` removes it.\n",
            "",
        );
        assert_eq!(
            shipped.lines().skip(1).collect::<Vec<_>>(),
            written.lines().collect::<Vec<_>>(),
            "cli/debian/lifeboat.service differs from service::unit(/usr/bin/lifeboat, /var/lib/lifeboat)"
        );
    }
}
