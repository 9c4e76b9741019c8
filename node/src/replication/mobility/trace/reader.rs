//! The trace instance's two threads: the reader, which empties the per-CPU buffers into the
//! tracker, and the watchdog, which checks that the instance still traces what it should.

use super::{read_trim, write_to, Shared, EVENT};
use lifeboat_actors::tracking::raw::Layout;
use lifeboat_actors::tracking::Line;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the reader empties the per-CPU buffers when no drain asks it to (a buffer of
/// 2 MiB holds about 40,000 completions: a disk would need 800,000 writes a second on one CPU
/// to overrun it between two reads).
const READ_EVERY: Duration = Duration::from_millis(50);
/// Pages read from one CPU's buffer in one pass before the next CPU's turn.
const PAGES_PER_PASS: usize = 512;
/// The watchdog's period.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Sum of the instance's per-CPU overrun and dropped-event counters.
pub(super) fn overruns(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("per_cpu"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(e.path().join("stats")) {
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("overrun:")
                    .or_else(|| l.strip_prefix("dropped events:"))
                {
                    n += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    n
}

/// Whether the instance still traces what it should; puts it right and says what was wrong.
pub(super) fn check(dir: &Path, filter: &str, s: &Shared) -> Result<(), String> {
    let mut wrong = None;
    if read_trim(&dir.join("tracing_on"))? != "1" {
        let _ = write_to(&dir.join("tracing_on"), "1");
        wrong = Some("tracing was switched off".to_string());
    }
    if read_trim(&dir.join(EVENT).join("enable"))? != "1" {
        let _ = write_to(&dir.join(EVENT).join("enable"), "1");
        wrong = Some("the block event was disabled".into());
    }
    let now = read_trim(&dir.join(EVENT).join("filter"))?;
    if now != filter {
        let _ = write_to(&dir.join(EVENT).join("filter"), filter);
        wrong = Some(format!("the event filter was changed (to {now:?})"));
    }
    let o = overruns(dir);
    if o != s.overruns.swap(o, Ordering::Relaxed) {
        wrong = Some("the trace buffer overran".into());
    }
    match wrong {
        Some(w) => Err(w),
        None => Ok(()),
    }
}

impl Shared {
    /// Asks the reader for a pass now.
    pub(super) fn ask_pass(&self) {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.ask.notify_all();
    }
}

/// The layout of the instance's binary pages and its per-CPU buffers, opened non-blocking.
pub(super) fn open_raw(root: &Path, dir: &Path) -> Result<(Layout, Vec<std::fs::File>), String> {
    use std::os::unix::fs::OpenOptionsExt;
    // One read each, as the control files (tracefs answers `read_to_string`'s small reads
    // with a cut text).
    let text = |p: &Path| read_trim(p);
    // An instance's events directory has the same formats as the top one; older kernels
    // keep `header_page` only at the top.
    let header = text(&dir.join("events/header_page"))
        .or_else(|_| text(&root.join("events/header_page")))?;
    let layout = Layout::parse(
        &header,
        &text(&dir.join(EVENT).join("format"))?,
        &text(&dir.join("events/ftrace/print/format"))?,
    )?;
    let mut cpus = Vec::new();
    let per_cpu = dir.join("per_cpu");
    for e in std::fs::read_dir(&per_cpu).map_err(|e| format!("{}: {e}", per_cpu.display()))? {
        let p = e.map_err(|e| e.to_string())?.path().join("trace_pipe_raw");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        cpus.push(f);
    }
    if cpus.is_empty() {
        return Err(format!("{}: no CPU buffers", per_cpu.display()));
    }
    Ok((layout, cpus))
}

/// One pass over every CPU's buffer: the pages read are decoded into `events`. Returns
/// whether a CPU had more than [`PAGES_PER_PASS`] pages (another pass is due at once).
fn pass(
    cpus: &[std::fs::File],
    layout: &Layout,
    page: &mut [u8],
    events: &mut Vec<(u64, Line)>,
) -> std::io::Result<bool> {
    let mut more = false;
    for mut f in cpus {
        let mut pages = 0;
        loop {
            match f.read(page) {
                // Empty (0: a page being written as it was looked at).
                Ok(0) => break,
                Ok(n) => layout.decode(&page[..n], events),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            pages += 1;
            if pages == PAGES_PER_PASS {
                more = true;
                break;
            }
        }
    }
    Ok(more)
}

/// The reader: every [`READ_EVERY`], or at once when a drain asks, it empties every CPU's
/// buffer, orders what it read by time (markers included) and hands it to the tracker under
/// one lock. A pass that finds a marker is followed by another before anything is handed
/// over: a CPU read before the marker was written may since have got events traced before
/// it (committed before the marker, so the second pass has them), and sorted with the
/// marker they come before it, as the accounting needs (see `Tracker::handle_accounting`).
pub(super) fn read_raw(cpus: Vec<std::fs::File>, layout: &Layout, s: &Shared) {
    let mut page = vec![0u8; 64 << 10];
    let mut events: Vec<(u64, Line)> = Vec::new();
    let mut answered = 0;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut more = match pass(&cpus, layout, &mut page, &mut events) {
            Ok(more) => more,
            Err(e) => {
                s.dead.store(true, Ordering::Relaxed);
                let mut t = s.tracker.lock().unwrap_or_else(|p| p.into_inner());
                t.handle_loss(&format!("the trace instance went away ({e})"));
                drop(t);
                s.seen.notify_all();
                return;
            }
        };
        if events.iter().any(|(_, l)| matches!(l, Line::Marker(_))) {
            match pass(&cpus, layout, &mut page, &mut events) {
                Ok(m) => more |= m,
                Err(_) => continue,
            }
        }
        if !events.is_empty() {
            // Stable: one CPU's events keep their order at equal times.
            events.sort_by_key(|(ts, _)| *ts);
            let mut markers = Vec::new();
            {
                let mut t = s.tracker.lock().unwrap_or_else(|p| p.into_inner());
                for (_, e) in events.drain(..) {
                    if let Some(m) = t.handle(e) {
                        markers.push(m);
                    }
                }
            }
            if !markers.is_empty() {
                s.markers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(markers);
                s.seen.notify_all();
            }
        }
        if more {
            continue;
        }
        let mut asked = s.asked.lock().unwrap_or_else(|p| p.into_inner());
        if *asked == answered {
            asked = s
                .ask
                .wait_timeout(asked, READ_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        answered = *asked;
    }
}

pub(super) fn watch(dir: &Path, filter: &str, s: &Shared) {
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_EVERY);
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = check(dir, filter, s) {
            tracing::warn!(cause = %e, "block tracing lost events; the next cycle scans in full");
            s.tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle_loss(&e);
        }
    }
}
