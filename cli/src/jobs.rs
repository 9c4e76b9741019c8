//! Jobs on the terminal: `jobs`, `job ID [--watch]`, and the progress that `drill`,
//! `failover`, `failback` and `restore` show while they run (a bar on a terminal, a line per
//! step otherwise; always on standard error, so `--json` output stays clean).

use super::*;
use crate::print::bytes;
use lifeboat_node::jobs::{JobRecord, JobState};
use std::io::IsTerminal;

/// A fresh job id for a command to watch (random; the time if the OS has no randomness).
pub(crate) fn new_id() -> String {
    let mut b = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
        .to_le_bytes();
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Shows a job's progress.
struct View {
    bar: Option<indicatif::ProgressBar>,
    last_step: String,
}

impl View {
    fn new() -> View {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        View {
            bar,
            last_step: String::new(),
        }
    }

    fn show(&mut self, j: &JobRecord) {
        let step = j.steps.last().map(|s| s.name.clone()).unwrap_or_default();
        match &self.bar {
            Some(b) => {
                b.set_length(j.bytes_total);
                b.set_position(j.bytes_done.min(j.bytes_total));
                b.set_message(step.clone());
                b.tick();
            }
            None if step != self.last_step && !step.is_empty() => {
                let of = if j.bytes_total > 0 {
                    format!(" ({} of {})", bytes(j.bytes_done), bytes(j.bytes_total))
                } else {
                    String::new()
                };
                eprintln!("[job {}] {step}{of}", j.id);
            }
            None => {}
        }
        self.last_step = step;
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Sends `req` (which carries job id `id`) and shows the job's progress until it answers.
pub(crate) fn with_progress<T: serde::de::DeserializeOwned>(
    dir: &StateDir,
    id: &str,
    req: Request,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.clone();
    std::thread::spawn(move || {
        let _ = tx.send(call(&d, req));
    });
    let mut view = View::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(300)) {
            Ok(r) => {
                view.finish();
                return decode(r?).map_err(|e| anyhow!(e));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(j) = get::<JobRecord>(dir, Request::Job { id: id.into() }) {
                    view.show(&j);
                }
            }
            Err(e) => bail!("internal: {e}"),
        }
    }
}

fn state(s: JobState) -> &'static str {
    match s {
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn describe(j: &JobRecord) -> String {
    let step = j.steps.last().map(|s| s.name.as_str()).unwrap_or("-");
    let progress = if j.bytes_total > 0 {
        format!("{} of {}", bytes(j.bytes_done), bytes(j.bytes_total))
    } else {
        "-".into()
    };
    format!(
        "{:<16} {:<16} {:<10} {:<9} {:<20} {:<22} {step}",
        j.id,
        j.kind,
        j.machine.as_deref().unwrap_or("-"),
        state(j.state),
        when(j.started_ms),
        progress
    )
}

/// `lifeboat jobs [--json]` and `lifeboat job ID [--watch] [--json]`.
pub(crate) fn jobs_cmd(dir: &StateDir, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Jobs { json, limit } => {
            let v: Vec<JobRecord> = get(dir, Request::Jobs { limit: Some(limit) })?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "{:<16} {:<16} {:<10} {:<9} {:<20} {:<22} STEP",
                "JOB", "KIND", "MACHINE", "STATE", "STARTED", "PROGRESS"
            );
            for j in &v {
                println!("{}", describe(j));
                if let Some(e) = &j.error {
                    println!("{:<16} error: {e}", "");
                }
            }
        }
        Cmd::Job { id, watch, json } => {
            let mut view = View::new();
            let j = loop {
                let j: JobRecord = get(dir, Request::Job { id: id.clone() })?;
                if !watch || j.state != JobState::Running {
                    break j;
                }
                view.show(&j);
                std::thread::sleep(Duration::from_millis(300));
            };
            view.finish();
            if json {
                print_json(&j);
            } else {
                println!(
                    "job {} ({}{}): {}",
                    j.id,
                    j.kind,
                    j.machine
                        .as_ref()
                        .map(|m| format!(" of {m}"))
                        .unwrap_or_default(),
                    state(j.state)
                );
                for s in &j.steps {
                    let took = s
                        .ended_ms
                        .map(|e| format!("{:.1} s", e.saturating_sub(s.started_ms) as f64 / 1000.0))
                        .unwrap_or_else(|| "running".into());
                    println!("  {} {:<60} {took}", when(s.started_ms), s.name);
                }
                if j.bytes_total > 0 {
                    println!("  {} of {}", bytes(j.bytes_done), bytes(j.bytes_total));
                }
                if let Some(e) = &j.error {
                    println!("  error: {e}");
                }
            }
            if j.state == JobState::Failed {
                bail!("job {} failed: {}", j.id, j.error.unwrap_or_default());
            }
        }
        _ => bail!("internal: not a jobs command"),
    }
    Ok(())
}
