use super::*;
use crate::tracking::parse_line;
use proptest::prelude::*;

/// Pages and format files read from a Linux 6.18 instance that traced a loop device (7,0)
/// while `dd` wrote to it, a drain marker was written, and `blkdiscard` discarded a range;
/// `trace.txt` is the same buffer read as text (the instance's `trace` file).
const HEADER_PAGE: &str = include_str!("testdata/header_page");
const RQ_FORMAT: &str = include_str!("testdata/block_rq_complete.format");
const PRINT_FORMAT: &str = include_str!("testdata/print.format");
const CPU0: &[u8] = include_bytes!("testdata/cpu0.page");
const CPU1: &[u8] = include_bytes!("testdata/cpu1.page");
const TEXT: &str = include_str!("testdata/trace.txt");

fn layout() -> Layout {
    Layout::parse(HEADER_PAGE, RQ_FORMAT, PRINT_FORMAT).unwrap()
}

fn decode(pages: &[&[u8]]) -> Vec<(u64, Line)> {
    let l = layout();
    let mut out = Vec::new();
    for p in pages {
        l.decode(p, &mut out);
    }
    out.sort_by_key(|(ts, _)| *ts);
    out
}

#[test]
fn the_kernels_format_files_give_the_layout() {
    let l = layout();
    assert_eq!((l.rq_id, l.print_id), (2107, 5));
    assert_eq!(l.dev, Field { offset: 8, size: 4 });
    assert_eq!(
        l.sector,
        Field {
            offset: 16,
            size: 8
        }
    );
    assert_eq!(
        l.nr_sector,
        Field {
            offset: 24,
            size: 4
        }
    );
    assert_eq!(
        l.rwbs,
        Field {
            offset: 34,
            size: 10
        }
    );
    assert_eq!((l.data, l.commit.size, l.buf), (16, 8, 16));
    let e = Layout::parse(
        HEADER_PAGE,
        "ID: 3\n\tfield:dev_t dev;\toffset:8;\tsize:4;",
        PRINT_FORMAT,
    )
    .unwrap_err();
    assert!(e.contains("sector"), "{e}");
    assert!(Layout::parse("", RQ_FORMAT, PRINT_FORMAT).is_err());
}

#[test]
fn real_pages_decode_to_what_the_text_form_says() {
    let raw = decode(&[CPU0, CPU1]);
    let text: Vec<Line> = TEXT.lines().map(parse_line).collect();
    assert_eq!(text.len(), 21);
    let raw_lines: Vec<Line> = raw.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(
        raw_lines, text,
        "merged by time, the pages are the text, in order"
    );
    // The text has microseconds; the pages nanoseconds of the same clock.
    let Line::Request { ts_us, .. } = &text[0] else {
        panic!()
    };
    assert_eq!((raw[0].0 + 500) / 1_000, *ts_us);
    assert!(raw.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn a_tracker_fed_pages_marks_what_the_text_form_marks() {
    use crate::tracking::{TrackedDisk, Tracker};
    let d = TrackedDisk {
        dev: (7, 0),
        start_sector: 0,
        size: 64 << 20,
        block_size: 4096,
    };
    let (mut a, mut b) = (Tracker::new(vec![d.clone()]), Tracker::new(vec![d]));
    let _ = (a.take(), b.take());
    let ma: Vec<String> = decode(&[CPU1, CPU0])
        .into_iter()
        .filter_map(|(_, l)| a.handle(l))
        .collect();
    let mb: Vec<String> = TEXT.lines().filter_map(|l| b.handle_line(l)).collect();
    assert_eq!(ma, vec!["lifeboat-drain-42-1".to_string()]);
    assert_eq!(ma, mb);
    let (ta, tb) = (a.take().unwrap(), b.take().unwrap());
    assert_eq!(ta, tb);
    // 1 + 2 + 16 blocks written, 16 discarded.
    assert_eq!(ta[0].len(), 1 + 2 + 16 + 16);
}

/// A page of `events` (header words and bodies), with `flags` in the commit word.
fn page(ts: u64, events: &[u8], flags: u64, stored: Option<u64>) -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    p[..8].copy_from_slice(&ts.to_le_bytes());
    p[8..16].copy_from_slice(&(events.len() as u64 | flags).to_le_bytes());
    p[16..16 + events.len()].copy_from_slice(events);
    if let Some(n) = stored {
        p[16 + events.len()..24 + events.len()].copy_from_slice(&n.to_le_bytes());
    }
    p
}

fn header(kind: u32, delta: u32) -> [u8; 4] {
    (kind | (delta << 5)).to_le_bytes()
}

/// A block_rq_complete record (52 bytes) in this kernel's layout.
fn rq_record(dev: u32, sector: u64, n: u32, rwbs: &str) -> Vec<u8> {
    let mut r = vec![0u8; 52];
    r[..2].copy_from_slice(&2107u16.to_le_bytes());
    r[8..12].copy_from_slice(&dev.to_le_bytes());
    r[16..24].copy_from_slice(&sector.to_le_bytes());
    r[24..28].copy_from_slice(&n.to_le_bytes());
    r[34..34 + rwbs.len()].copy_from_slice(rwbs.as_bytes());
    r
}

#[test]
fn time_extensions_long_events_padding_and_lost_flags_decode() {
    let mut ev = Vec::new();
    // A small event 10 ns after the page's time.
    ev.extend(header(13, 10));
    ev.extend(rq_record(7 << 20, 8, 8, "W"));
    // A discarded event (padding with a length) 5 ns later: skipped, its time kept.
    ev.extend(header(PADDING, 5));
    ev.extend(8u32.to_le_bytes());
    ev.extend([0u8; 4]);
    // A time extension of 2^27 + 1 ns.
    ev.extend(header(TIME_EXTEND, 1));
    ev.extend(1u32.to_le_bytes());
    // A long event (type 0: its length, which counts itself, in the next word).
    ev.extend(header(0, 7));
    ev.extend(56u32.to_le_bytes());
    ev.extend(rq_record((259 << 20) | 3, 16, 8, "R"));
    // An absolute timestamp.
    ev.extend(header(TIME_STAMP, 3));
    ev.extend(0u32.to_le_bytes());
    ev.extend(header(13, 0));
    ev.extend(rq_record(7 << 20, 24, 0, "FWS"));
    let p = page(1_000_000, &ev, MISSED_EVENTS | MISSED_STORED, Some(42));
    let mut out = Vec::new();
    layout().decode(&p, &mut out);
    let t1 = 1_000_010;
    let t2 = t1 + 5 + (1 << 27) + 1 + 7;
    assert_eq!(
        out,
        vec![
            (1_000_000, Line::Lost(42)),
            (
                t1,
                Line::Request {
                    ts_us: (t1 + 500) / 1000,
                    dev: (7, 0),
                    writes: true,
                    sector: 8,
                    sectors: 8
                }
            ),
            (
                t2,
                Line::Request {
                    ts_us: (t2 + 500) / 1000,
                    dev: (259, 3),
                    writes: false,
                    sector: 16,
                    sectors: 8
                }
            ),
            (
                3,
                Line::Request {
                    ts_us: 0,
                    dev: (7, 0),
                    writes: true,
                    sector: 24,
                    sectors: 0
                }
            ),
        ]
    );
    // Lost events without their count.
    let mut out = Vec::new();
    layout().decode(&page(9, &[], MISSED_EVENTS, None), &mut out);
    assert_eq!(out, vec![(9, Line::Lost(1))]);
}

#[test]
fn pages_that_do_not_add_up_end_in_a_loss() {
    let l = layout();
    let mut rec = header(13, 1).to_vec();
    rec.extend(rq_record(7 << 20, 8, 8, "W"));
    // A commit longer than the page.
    let mut p = page(0, &rec, 0, None);
    p[8..16].copy_from_slice(&5000u64.to_le_bytes());
    let mut out = Vec::new();
    l.decode(&p, &mut out);
    assert!(matches!(out.as_slice(), [(_, Line::Lost(1))]), "{out:?}");
    // An event running past the data.
    let mut out = Vec::new();
    l.decode(&page(0, &rec[..40], 0, None), &mut out);
    assert!(matches!(out.as_slice(), [(_, Line::Lost(1))]), "{out:?}");
    // A page cut short.
    let mut out = Vec::new();
    l.decode(&[1, 2, 3], &mut out);
    assert_eq!(out, vec![(0, Line::Lost(1))]);
}

proptest! {
    /// Whatever a page holds, decoding ends without a panic.
    #[test]
    fn any_page_decodes_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), len in 0u64..700) {
        let mut p = bytes.clone();
        if p.len() >= 16 {
            p[8..16].copy_from_slice(&len.to_le_bytes());
        }
        let mut out = Vec::new();
        layout().decode(&p, &mut out);
        // Flip bits of the real pages too.
        let mut q = CPU1.to_vec();
        for (k, b) in bytes.iter().enumerate() {
            let at = (k * 7 + *b as usize) % q.len();
            q[at] ^= b;
        }
        layout().decode(&q, &mut out);
    }
}
