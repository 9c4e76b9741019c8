//! The kernel's binary trace format, sans-IO: the pages a tracefs instance's
//! `per_cpu/cpuN/trace_pipe_raw` hands out, decoded into [`Line`]s with their timestamps.
//!
//! Reading the binary pages instead of the text `trace_pipe` spares the kernel formatting
//! every event as text (a few microseconds each, which a busy disk pays for on the CPUs its
//! writers need) and the reader parsing it back.
//!
//! A page (`events/header_page`) is a timestamp (the first event's), a commit word (the bytes
//! of events that follow, with two flags: events were lost before this page, and their count
//! is stored after the data) and the events. Each event starts with a 32-bit header
//! (`events/header_event`): 5 bits of type or length, 27 bits of time since the previous
//! event. Types 29 to 31 are padding (or a discarded event), a time extension and an absolute
//! timestamp. An event's record starts with `common_type` (the event's `ID`), and its fields
//! are where its `format` file says. Nothing here trusts the page: every read is bounds
//! checked, and a page that does not add up ends its decoding with a [`Line::Lost`] (the
//! cycle then scans in full rather than guess).

use super::{Line, MARKER_PREFIX};

/// Events were lost between the previous page and this one.
const MISSED_EVENTS: u64 = 1 << 31;
/// Their count is stored after the page's data.
const MISSED_STORED: u64 = 1 << 30;
const PADDING: u32 = 29;
const TIME_EXTEND: u32 = 30;
const TIME_STAMP: u32 = 31;
/// Bits of an absolute timestamp event; the rest come from the page.
const ABS_TS_BITS: u32 = 59;

/// A field's place in a record (or in the page header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    offset: usize,
    size: usize,
}

/// Where things are in this kernel's pages and records, read from an instance's format files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    stamp: Field,
    commit: Field,
    data: usize,
    rq_id: u16,
    dev: Field,
    sector: Field,
    nr_sector: Field,
    rwbs: Field,
    print_id: u16,
    buf: usize,
}

/// The `field:` entries of a format file, by name, and its `ID:`.
fn fields(text: &str) -> (Option<u16>, Vec<(String, Field)>) {
    let mut id = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("ID:") {
            id = v.trim().parse().ok();
            continue;
        }
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        // `char rwbs[10]` is named `rwbs`; `__data_loc char[] cmd` is named `cmd`.
        let name = decl
            .and_then(|d| d.rsplit([' ', '\t']).next())
            .map(|n| n.split('[').next().unwrap_or(n).to_string());
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            out.push((name, Field { offset, size }));
        }
    }
    (id, out)
}

fn field(all: &[(String, Field)], name: &str, what: &str) -> Result<Field, String> {
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("the kernel's {what} format has no field {name:?}"))
}

impl Layout {
    /// From the texts of `events/header_page`, `events/block/block_rq_complete/format` and
    /// `events/ftrace/print/format`.
    pub fn parse(header_page: &str, rq_format: &str, print_format: &str) -> Result<Layout, String> {
        let (_, page) = fields(header_page);
        let (rq_id, rq) = fields(rq_format);
        let (print_id, print) = fields(print_format);
        let data = field(&page, "data", "page header")?;
        let layout = Layout {
            stamp: field(&page, "timestamp", "page header")?,
            commit: field(&page, "commit", "page header")?,
            data: data.offset,
            rq_id: rq_id.ok_or("the block_rq_complete format has no ID")?,
            dev: field(&rq, "dev", "block_rq_complete")?,
            sector: field(&rq, "sector", "block_rq_complete")?,
            nr_sector: field(&rq, "nr_sector", "block_rq_complete")?,
            rwbs: field(&rq, "rwbs", "block_rq_complete")?,
            print_id: print_id.ok_or("the print format has no ID")?,
            buf: field(&print, "buf", "print")?.offset,
        };
        let ints = [
            (layout.stamp, "the page timestamp"),
            (layout.commit, "the page commit"),
            (layout.dev, "dev"),
            (layout.sector, "sector"),
            (layout.nr_sector, "nr_sector"),
        ];
        for (f, what) in ints {
            if ![4, 8].contains(&f.size) {
                return Err(format!("{what} is {} bytes (4 or 8 expected)", f.size));
            }
        }
        Ok(layout)
    }

    /// Decodes one page read from `trace_pipe_raw` into `out`, as (nanoseconds of the
    /// instance's clock, event). Events that are neither block completions nor drain markers
    /// are skipped. A page that does not add up ends with a [`Line::Lost`].
    pub fn decode(&self, page: &[u8], out: &mut Vec<(u64, Line)>) {
        let (Some(mut ts), Some(commit)) = (uint(page, self.stamp), uint(page, self.commit)) else {
            out.push((0, Line::Lost(1)));
            return;
        };
        let len = (commit & !(MISSED_EVENTS | MISSED_STORED)) as usize;
        let Some(data) = page.get(self.data..self.data.saturating_add(len)) else {
            out.push((ts, Line::Lost(1)));
            return;
        };
        if commit & MISSED_EVENTS != 0 {
            let stored = (commit & MISSED_STORED != 0)
                .then(|| {
                    uint(
                        page,
                        Field {
                            offset: self.data + len,
                            size: self.commit.size,
                        },
                    )
                })
                .flatten();
            out.push((ts, Line::Lost(stored.unwrap_or(1).max(1))));
        }
        let mut i = 0;
        while i + 4 <= data.len() {
            let Some(h) = u32_at(data, i) else { break };
            let (kind, delta) = (h & 31, u64::from(h >> 5));
            let arg = u32_at(data, i + 4).map(u64::from);
            let (body, next) = match (kind, arg) {
                // The rest of the page is empty.
                (PADDING, _) if delta == 0 => break,
                (PADDING, Some(n)) => {
                    ts = ts.wrapping_add(delta);
                    (None, (i + 4).checked_add(n as usize))
                }
                (TIME_EXTEND, Some(ext)) => {
                    ts = ts.wrapping_add((ext << 27) | delta);
                    (None, Some(i + 8))
                }
                (TIME_STAMP, Some(hi)) => {
                    let abs = (hi << 27) | delta;
                    let mask = (1u64 << ABS_TS_BITS) - 1;
                    ts = (ts & !mask) | (abs & mask);
                    (None, Some(i + 8))
                }
                (0, Some(n)) => {
                    ts = ts.wrapping_add(delta);
                    let end = (i + 4).checked_add(n as usize);
                    (end.and_then(|e| data.get(i + 8..e)), end)
                }
                (1..=28, _) => {
                    ts = ts.wrapping_add(delta);
                    let end = i + 4 + 4 * kind as usize;
                    (data.get(i + 4..end), Some(end))
                }
                _ => (None, None),
            };
            let Some(next) = next.filter(|&n| n > i && n <= data.len()) else {
                out.push((ts, Line::Lost(1)));
                return;
            };
            if let Some(rec) = body {
                if let Some(line) = self.record(rec, ts) {
                    out.push((ts, line));
                }
            }
            i = next;
        }
    }

    /// One record, if it is a block completion or a drain marker.
    fn record(&self, rec: &[u8], ts: u64) -> Option<Line> {
        let id = u16::from_le_bytes([*rec.first()?, *rec.get(1)?]);
        if id == self.rq_id {
            let dev = uint(rec, self.dev)?;
            let rwbs = rec.get(self.rwbs.offset..self.rwbs.offset + self.rwbs.size)?;
            let rwbs = &rwbs[..rwbs.iter().position(|&b| b == 0).unwrap_or(rwbs.len())];
            return Some(Line::Request {
                // Rounded as the text form rounds.
                ts_us: ts.saturating_add(500) / 1_000,
                dev: ((dev >> 20) as u32, (dev & 0xf_ffff) as u32),
                writes: rwbs.iter().any(|b| matches!(b, b'W' | b'D' | b'Z')),
                sector: uint(rec, self.sector)?,
                sectors: uint(rec, self.nr_sector)?,
            });
        }
        if id == self.print_id {
            let text = rec.get(self.buf..)?;
            let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
            let text = std::str::from_utf8(text).ok()?;
            let at = text.find(MARKER_PREFIX)?;
            let token: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            return Some(Line::Marker(token));
        }
        None
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// A little-endian integer of 4 or 8 bytes.
fn uint(b: &[u8], f: Field) -> Option<u64> {
    let s = b.get(f.offset..f.offset.checked_add(f.size)?)?;
    match f.size {
        4 => Some(u64::from(u32::from_le_bytes(s.try_into().ok()?))),
        8 => Some(u64::from_le_bytes(s.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
