//! Views of the protected disks for one cycle: the freeze, thaw and snapshot hooks, reflink
//! clones of image files, or the disks themselves; and the consistency label they earn.

use super::*;

/// Longest a hook may run before it is killed and the cycle fails.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn run_hook(what: &str, cmd: &str) -> Result<String, String> {
    use std::io::Read as _;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what} hook: {e}"))?;
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(|e| format!("{what} hook: {e}"))? {
            Some(st) => break st,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} hook `{cmd}` did not finish within {}s and was killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!(
            "{what} hook `{cmd}` failed ({status}): {}",
            err.trim()
        ));
    }
    Ok(out)
}

/// Thaws on drop, so no error path leaves applications frozen.
pub(super) struct Frozen(Option<String>);

impl Frozen {
    /// Whether the freeze hook ran and the thaw has not yet.
    pub(super) fn is_frozen(&self) -> bool {
        self.0.is_some()
    }

    pub(super) fn thaw(&mut self) {
        if let Some(cmd) = self.0.take() {
            if let Err(e) = run_hook("thaw", &cmd) {
                tracing::error!(cause = %e, "THAW FAILED: applications may still be frozen");
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Removes the cycle's temporary clones on drop.
pub(super) struct Views {
    pub(super) paths: Vec<PathBuf>,
    temp: Option<PathBuf>,
}

impl Drop for Views {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

fn reflink_clones(repl: &Repl, spec: &ProtectionSpec) -> Option<Views> {
    let dir = repl.dir.root.join("views");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let mut paths = Vec::new();
    for d in &spec.disks {
        let meta = std::fs::metadata(&d.path).ok()?;
        if !meta.is_file() {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let dst = dir.join(&d.name);
        let ok = Command::new("cp")
            .arg("--reflink=always")
            .arg(&d.path)
            .arg(&dst)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        paths.push(dst);
    }
    Some(Views {
        paths,
        temp: Some(dir),
    })
}

/// Takes the frozen view for a cycle; returns the paths to read and the consistency label.
pub(super) fn take_views(
    repl: &Repl,
    spec: &ProtectionSpec,
    kind: CycleKind,
) -> Result<(Views, Consistency, Frozen), String> {
    let mut frozen = Frozen(None);
    let mut app = false;
    if kind.app {
        if let Some(f) = &spec.hooks.freeze {
            run_hook("freeze", f)?;
            frozen =
                Frozen(Some(spec.hooks.thaw.clone().unwrap_or_default()).filter(|s| !s.is_empty()));
            app = true;
        }
    }
    if let Some(snap) = &spec.hooks.snapshot {
        let out = run_hook("snapshot", snap)?;
        let mut paths = Vec::new();
        for d in &spec.disks {
            let p = out
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(n, _)| *n == d.name)
                .map(|(_, p)| PathBuf::from(p.trim()))
                .ok_or_else(|| format!("snapshot hook gave no view for disk {}", d.name))?;
            paths.push(p);
        }
        frozen.thaw();
        let c = if app {
            Consistency::AppConsistent
        } else {
            Consistency::CrashConsistent
        };
        return Ok((Views { paths, temp: None }, c, frozen));
    }
    if let Some(v) = reflink_clones(repl, spec) {
        frozen.thaw();
        let c = if app {
            Consistency::AppConsistent
        } else {
            Consistency::CrashConsistent
        };
        return Ok((v, c, frozen));
    }
    // No frozen view: read the disks themselves (while frozen, if the freeze hook ran).
    let paths = spec.disks.iter().map(|d| PathBuf::from(&d.path)).collect();
    let c = if app {
        Consistency::AppConsistent
    } else {
        Consistency::NotConsistent
    };
    Ok((Views { paths, temp: None }, c, frozen))
}
