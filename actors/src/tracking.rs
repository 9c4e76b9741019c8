//! Change tracking from the kernel's block tracepoints, sans-IO: the shell (the mobility node)
//! feeds the events of a private tracefs instance (its per-CPU binary buffers, decoded by
//! [`raw`], merged by time) to a [`Tracker`], which keeps
//! a dirty map per protected disk at the protection's block size, and answers a cycle with the
//! blocks it must read — or with why it cannot (events were lost), in which case the cycle
//! scans the whole disk against the stored hashes.
//!
//! What is traced: `block_rq_complete` (a request-based device's finished requests, in sectors
//! of the whole disk: writes through a partition, device-mapper or LVM on top of the disk are
//! requests on the disk) of writes, discards and write-zeroes (`rwbs` with `W`, `D` or `Z`).
//! A completion is traced before the writer is told its write is done, so a write the writer
//! saw complete before a view was taken is in the buffer when the view is.
//!
//! The order of a cycle ([`Tracker::begin_view`], then the view, then a drain marker, then
//! [`Tracker::take`]): the shell notes the monotonic time `t0`, takes the view (freeze or
//! snapshot), writes a marker into the instance and waits until it reads it back: every event
//! traced before the marker has then been handed to the tracker. `take` returns the dirty map
//! and starts a new one holding the blocks of events at or after `t0` (they may have come after
//! the view: read again next cycle). A block written after the marker is in the next map. A
//! cycle that does not commit gives its map back ([`Tracker::give_back`]).
//!
//! **Accounting.** Around each drain marker the shell reads each disk's count of completed
//! write and discard requests (`/sys/dev/block/M:m/stat`) just before writing the marker
//! (`before`), and again just after it with the writes in flight (`after`, `inflight`);
//! [`Tracker::handle_accounting`] compares the requests the disk completed since the last
//! drain with the events traced before this marker. A request is traced before it is
//! counted, so every request counted by `before` was traced before the marker; the only ones
//! counted now whose event came before the *previous* marker were counted during that
//! marker's window (`after - before`) or in flight just after it (`inflight`). More requests
//! than events plus that slack means events were lost however it happened (tracing switched
//! off and on between two checks of the watchdog, a filter changed and put back, ...), and
//! it is a loss like the others.
//!
//! A loss noticed before the view (a `[LOST]` line, an overrun counter, tracing found off)
//! makes this cycle scan in full. A loss noticed between the view and the take makes this
//! cycle *and the next* scan in full: the events lost may be writes after the view, which only
//! the next cycle reads. (The shell reads the overrun counters after the view, so an overrun
//! before the view is never noticed only after the take.)

use std::collections::BTreeMap;

pub mod raw;

/// Writes past this sector (2^40 sectors: 512 TiB) are taken for garbage.
const MAX_SECTOR: u64 = 1 << 40;

/// Clock slack when deciding whether an event came before the view (trace timestamps are in
/// microseconds).
const SLACK_US: u64 = 1_000;

/// A disk being tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedDisk {
    /// The device whose requests carry its writes (the whole disk; for a partition, its
    /// parent), as (major, minor).
    pub dev: (u32, u32),
    /// Where the protected device starts on it, in 512-byte sectors (a partition's start).
    pub start_sector: u64,
    /// The protected device's size in bytes.
    pub size: u64,
    /// The protection's block size.
    pub block_size: u32,
}

impl TrackedDisk {
    fn blocks(&self) -> usize {
        self.size.div_ceil(self.block_size as u64) as usize
    }
}

/// A set of block indexes (a bitmap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    bits: Vec<u64>,
    count: usize,
}

impl Dirty {
    fn new(blocks: usize) -> Self {
        Dirty {
            bits: vec![0; blocks.div_ceil(64)],
            count: 0,
        }
    }

    /// Marks block `i` (the map grows to hold it: a disk may grow before its new size is
    /// noticed, and a write there must not be lost).
    pub fn mark(&mut self, i: usize) {
        if i / 64 >= self.bits.len() {
            self.bits.resize(i / 64 + 1, 0);
        }
        let m = 1u64 << (i % 64);
        let w = &mut self.bits[i / 64];
        if *w & m == 0 {
            *w |= m;
            self.count += 1;
        }
    }

    /// Whether block `i` is marked.
    pub fn contains(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Blocks marked.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Nothing marked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The marked blocks, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(k, &w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| k * 64 + b)
        })
    }

    /// The marked blocks as ascending runs `[start, end)`.
    pub fn runs(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in self.iter() {
            match out.last_mut() {
                Some((_, end)) if *end == i => *end += 1,
                _ => out.push((i, i + 1)),
            }
        }
        out
    }

    fn union(&mut self, other: &Dirty) {
        for i in other.iter() {
            self.mark(i);
        }
    }
}

/// A trace event (a line of the text form `trace_pipe`, or a record of the binary one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A finished request: when (µs of the monotonic clock), on which device, its kind
    /// (`rwbs`), first sector and sectors.
    Request {
        /// Microseconds.
        ts_us: u64,
        /// (major, minor).
        dev: (u32, u32),
        /// It changes the disk (`rwbs` has `W`, `D` or `Z`).
        writes: bool,
        /// First 512-byte sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
    },
    /// A marker written by the shell.
    Marker(String),
    /// The kernel dropped events (`CPU:N [LOST M EVENTS]`).
    Lost(u64),
    /// Anything else.
    Other,
}

/// The marker the shell writes to drain (`trace_marker`).
pub const MARKER_PREFIX: &str = "lifeboat-drain-";

/// Parses a line of `trace_pipe` in the default format with the `mono` clock.
pub fn parse_line(line: &str) -> Line {
    // The hot path first (one line per request), without allocating.
    const EVENT: &str = ": block_rq_complete: ";
    if let Some(at) = line.find(EVENT) {
        return parse_request(line, at, at + EVENT.len()).unwrap_or(Line::Other);
    }
    if let Some(i) = line.find("[LOST ") {
        let n = line[i + 6..]
            .split_ascii_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        return Line::Lost(n);
    }
    if let Some(i) = line.find(MARKER_PREFIX) {
        let token: String = line[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        return Line::Marker(token);
    }
    Line::Other
}

/// `… 1853.572091: block_rq_complete: 7,0 WS () 24000 + 8 be,0,4 [0]`: the timestamp ends
/// at `at`, the event's fields start at `fields`.
fn parse_request(line: &str, at: usize, fields: usize) -> Option<Line> {
    let ts_us = parse_ts(line[..at].rsplit(' ').next()?)?;
    let rest = &line[fields..];
    let mut f = rest.split_ascii_whitespace();
    let (a, b) = f.next()?.split_once(',')?;
    let dev = (a.parse().ok()?, b.parse().ok()?);
    let rwbs = f.next()?;
    // The command (`(...)`), which may hold spaces, ends at the first `)`.
    let mut g = rest[rest.find(')')? + 1..].split_ascii_whitespace();
    let sector = g.next()?.parse().ok()?;
    if g.next()? != "+" {
        return None;
    }
    let sectors = g.next()?.parse().ok()?;
    Some(Line::Request {
        ts_us,
        dev,
        writes: writes(rwbs),
        sector,
        sectors,
    })
}

fn parse_ts(s: &str) -> Option<u64> {
    let (a, b) = s.split_once('.')?;
    let secs: u64 = a.parse().ok()?;
    // Microseconds: the first six digits of the fraction, padded.
    let mut us = 0u64;
    let mut digits = 0;
    for c in b.bytes().take(6) {
        if !c.is_ascii_digit() {
            return None;
        }
        us = us * 10 + u64::from(c - b'0');
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    Some(secs * 1_000_000 + us * 10u64.pow(6 - digits))
}

/// Whether a request changes the disk's content (`rwbs`: a write, discard or write-zeroes).
fn writes(rwbs: &str) -> bool {
    rwbs.contains(['W', 'D', 'Z'])
}

/// Events traced per device.
type Counts = BTreeMap<(u32, u32), u64>;

/// A disk's request accounting read around a drain marker (see the module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Write and discard requests the disk completed, read just before the marker.
    pub before: u64,
    /// The same, read just after the marker was written.
    pub after: u64,
    /// Write requests in flight, read just after the marker was written.
    pub inflight: u64,
}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Write requests seen on tracked disks.
    pub events: u64,
    /// Events the kernel said it dropped.
    pub lost_events: u64,
}

/// The dirty maps of a protection's disks (see the module).
#[derive(Debug)]
pub struct Tracker {
    disks: Vec<TrackedDisk>,
    by_dev: BTreeMap<(u32, u32), Vec<usize>>,
    dirty: Vec<Dirty>,
    carry: Vec<Dirty>,
    view_us: Option<u64>,
    lost: Option<String>,
    /// A loss noticed between [`Tracker::begin_view`] and [`Tracker::take`]: the events lost
    /// may have come after the view, so the cycle after the current one cannot trust its map
    /// either.
    lost_next: Option<String>,
    stats: TrackerStats,
    /// Write requests traced per device (a flush sequence's second completion not counted).
    events_by_dev: Counts,
    /// Recent completions with data, by (device, first sector), oldest first, and how many
    /// of each are waiting: a completion of no sectors at one of them is the second
    /// completion of a write that went through the block layer's flush sequence (the disk
    /// counts that request once).
    recent: std::collections::VecDeque<((u32, u32), u64)>,
    recent_count: std::collections::HashMap<((u32, u32), u64), u32>,
    /// The last marker read, with the events traced per device before it.
    at_marker: Option<(String, Counts)>,
    /// Per device: the accounting at the last drain, and the events traced before its marker.
    acct: BTreeMap<(u32, u32), (Accounting, u64)>,
}

impl Tracker {
    /// Tracks `disks`. The first cycle cannot trust it: nothing was traced before it started
    /// (the caller scans in full once, see [`Tracker::take`]).
    pub fn new(disks: Vec<TrackedDisk>) -> Self {
        let mut by_dev: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for (i, d) in disks.iter().enumerate() {
            by_dev.entry(d.dev).or_default().push(i);
        }
        let fresh = |d: &TrackedDisk| Dirty::new(d.blocks());
        Tracker {
            dirty: disks.iter().map(fresh).collect(),
            carry: disks.iter().map(fresh).collect(),
            by_dev,
            disks,
            view_us: None,
            lost: Some("tracking started: writes before it are unknown".into()),
            lost_next: None,
            stats: TrackerStats::default(),
            events_by_dev: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            recent_count: std::collections::HashMap::new(),
            at_marker: None,
            acct: BTreeMap::new(),
        }
    }

    /// The disks.
    pub fn disks(&self) -> &[TrackedDisk] {
        &self.disks
    }

    /// Counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Blocks marked and not yet taken, per disk.
    pub fn pending_blocks(&self) -> Vec<usize> {
        self.dirty.iter().map(Dirty::len).collect()
    }

    /// Disk `k` is `size` bytes now: the next take is a full scan.
    pub fn handle_resize(&mut self, k: usize, size: u64) {
        if let Some(d) = self.disks.get_mut(k) {
            d.size = size;
        }
        self.handle_loss("a disk was resized");
    }

    /// Why the next take will be a full scan, if it will.
    pub fn loss(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// The next take is a full scan for `why` (instead of any reason given before).
    pub fn replace_loss(&mut self, why: String) {
        self.lost = Some(why);
    }

    /// Events may have been lost for `why`: the next take says so. Noticed after the view
    /// began, the take after it says so too (what was lost may be writes after the view).
    pub fn handle_loss(&mut self, why: &str) {
        if self.lost.is_none() {
            self.lost = Some(why.to_string());
        }
        if self.view_us.is_some() && self.lost_next.is_none() {
            self.lost_next = Some(why.to_string());
        }
    }

    /// A line of `trace_pipe` (the text form); returns the marker it holds, if any.
    pub fn handle_line(&mut self, line: &str) -> Option<String> {
        self.handle(parse_line(line))
    }

    /// An event, read from the text form or the binary one ([`raw`]); returns the marker it
    /// holds, if any. Events must come in the order they were traced, markers included.
    pub fn handle(&mut self, line: Line) -> Option<String> {
        match line {
            Line::Request {
                ts_us,
                dev,
                writes: true,
                sector,
                sectors,
            } => {
                if !self.by_dev.contains_key(&dev) {
                    return None;
                }
                self.stats.events += 1;
                if self.is_request(dev, sector, sectors) {
                    *self.events_by_dev.entry(dev).or_default() += 1;
                }
                let ix = self.by_dev.get(&dev)?;
                let late = self.view_us.is_some_and(|v| ts_us + SLACK_US >= v);
                for &k in ix {
                    let d = &self.disks[k];
                    let (from, to) = (sector, sector + sectors.max(1));
                    // A whole disk takes every write (it may have grown); a partition, those
                    // within it.
                    let end = if d.start_sector == 0 {
                        MAX_SECTOR
                    } else {
                        d.start_sector + d.size.div_ceil(512)
                    };
                    if to <= d.start_sector || from >= end {
                        continue;
                    }
                    let bs = d.block_size as u64;
                    let a = (from.max(d.start_sector) - d.start_sector) * 512 / bs;
                    let b = ((to.min(end) - d.start_sector) * 512).div_ceil(bs);
                    for i in a..b {
                        self.dirty[k].mark(i as usize);
                        if late {
                            self.carry[k].mark(i as usize);
                        }
                    }
                }
                None
            }
            Line::Marker(m) => {
                self.at_marker = Some((m.clone(), self.events_by_dev.clone()));
                Some(m)
            }
            Line::Lost(n) => {
                self.stats.lost_events += n;
                self.handle_loss(&format!(
                    "the kernel dropped {n} trace events (buffer overrun)"
                ));
                None
            }
            _ => None,
        }
    }

    /// Whether a completion is a request of its own (see `recent`).
    fn is_request(&mut self, dev: (u32, u32), sector: u64, sectors: u64) -> bool {
        const RECENT: usize = 8192;
        let key = (dev, sector);
        if sectors > 0 {
            self.recent.push_back(key);
            *self.recent_count.entry(key).or_default() += 1;
            if self.recent.len() > RECENT {
                if let Some(old) = self.recent.pop_front() {
                    if let Some(n) = self.recent_count.get_mut(&old) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.recent_count.remove(&old);
                        }
                    }
                }
            }
            return true;
        }
        match self.recent_count.get_mut(&key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    self.recent_count.remove(&key);
                }
                false
            }
            _ => true,
        }
    }

    /// The drain marker `token` came back; `now` holds each traced device's accounting read
    /// around it. A device that completed more write requests since the last drain than were
    /// traced (beyond the slack of that drain's window) lost events: a loss (see the module).
    pub fn handle_accounting(&mut self, token: &str, now: &[((u32, u32), Accounting)]) {
        let Some((_, counts)) = self.at_marker.take().filter(|(m, _)| m == token) else {
            return;
        };
        for &(dev, a) in now {
            let traced = counts.get(&dev).copied().unwrap_or(0);
            if let Some(&(prev, prev_traced)) = self.acct.get(&dev) {
                if a.before < prev.before {
                    self.handle_loss(&format!(
                        "the request counters of disk {}:{} went back (the device was replaced)",
                        dev.0, dev.1
                    ));
                } else {
                    let completed = a.before - prev.before;
                    let slack = prev.after.saturating_sub(prev.before) + prev.inflight;
                    let seen = traced.saturating_sub(prev_traced);
                    if completed > seen + slack {
                        self.handle_loss(&format!(
                            "disk {}:{} completed {} write requests that were not traced (tracing was paused or its events lost)",
                            dev.0,
                            dev.1,
                            completed - seen - slack
                        ));
                    }
                }
            }
            self.acct.insert(dev, (a, traced));
        }
    }

    /// Per device, the accounting at the last drain and the events traced before its marker
    /// (for the shell's debug log).
    pub fn accounting(&self) -> Vec<((u32, u32), Accounting, u64)> {
        self.acct.iter().map(|(d, (a, e))| (*d, *a, *e)).collect()
    }

    /// The shell is about to take the view; `now_us` is the monotonic clock.
    pub fn begin_view(&mut self, now_us: u64) {
        self.view_us = Some(now_us);
    }

    /// After the drain marker came back: the blocks each disk's cycle must read, or why the
    /// cycle must scan in full (events lost, or tracking just started). Either way a new map
    /// starts, holding the blocks of events that may have come after the view.
    pub fn take(&mut self) -> Result<Vec<Dirty>, String> {
        let next: Vec<Dirty> = std::mem::take(&mut self.carry);
        self.carry = self.disks.iter().map(|d| Dirty::new(d.blocks())).collect();
        let taken = std::mem::replace(&mut self.dirty, next);
        self.view_us = None;
        let lost = std::mem::replace(&mut self.lost, self.lost_next.take());
        match lost {
            Some(why) => Err(why),
            None => Ok(taken),
        }
    }

    /// A cycle that read `taken` did not commit: its blocks are dirty again.
    pub fn give_back(&mut self, taken: &[Dirty]) {
        for (d, t) in self.dirty.iter_mut().zip(taken) {
            d.union(t);
        }
    }

    /// A full scan did not commit: the next cycle must scan in full again.
    pub fn full_scan_failed(&mut self, why: &str) {
        self.handle_loss(why);
    }
}

/// The read rate assumed before a cycle has measured one: 200 MB/s.
const ASSUMED_BYTES_PER_MS: f64 = 200_000.0;

/// How long an app-consistent point would hold the freeze reading `bytes` at `bytes_per_ms`
/// (the last cycle's rate, if measured), ms.
pub fn freeze_estimate_ms(bytes: u64, bytes_per_ms: Option<f64>) -> u64 {
    let rate = bytes_per_ms
        .filter(|r| r.is_finite() && *r > 0.0)
        .unwrap_or(ASSUMED_BYTES_PER_MS);
    (bytes as f64 / rate).ceil() as u64
}

/// Whether an app-consistent point may freeze: `Err(why)` when reading `bytes` would hold the
/// freeze longer than `max_ms` (0: no cap).
pub fn freeze_allowed(bytes: u64, bytes_per_ms: Option<f64>, max_ms: u64) -> Result<(), String> {
    let est = freeze_estimate_ms(bytes, bytes_per_ms);
    if max_ms == 0 || est <= max_ms {
        return Ok(());
    }
    Err(format!(
        "the app-consistent point due was taken crash-consistent: reading {} MiB under the freeze would take about {est} ms, over the policy's cap of {max_ms} ms",
        bytes.div_ceil(1 << 20)
    ))
}

#[cfg(test)]
#[path = "tracking_tests.rs"]
mod tests;
