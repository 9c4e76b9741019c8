use super::*;

fn disk(start_sector: u64, size: u64) -> TrackedDisk {
    TrackedDisk {
        dev: (7, 3),
        start_sector,
        size,
        block_size: 65536,
    }
}

fn rq(ts: &str, dev: &str, rwbs: &str, sector: u64, n: u64) -> String {
    format!("     kworker/1:1-57      [001] ..s..  {ts}: block_rq_complete: {dev} {rwbs} () {sector} + {n} be,0,4 [0]")
}

#[test]
fn lines_of_trace_pipe_parse() {
    assert_eq!(
        parse_line(&rq("1853.572091", "7,0", "WS", 24000, 8)),
        Line::Request {
            ts_us: 1_853_572_091,
            dev: (7, 0),
            writes: true,
            sector: 24000,
            sectors: 8
        }
    );
    // A command with spaces in it.
    let l =
        "  fio-9 [000] .....   12.5: block_rq_complete: 259,1 W (2a 00 00 x) 8 + 16 none,0,0 [0]";
    assert!(matches!(
        parse_line(l),
        Line::Request {
            ts_us: 12_500_000,
            sector: 8,
            sectors: 16,
            ..
        }
    ));
    assert_eq!(parse_line("CPU:1 [LOST 42 EVENTS]"), Line::Lost(42));
    assert_eq!(
        parse_line(" bash-1 [000] ..... 1.0: tracing_mark_write: lifeboat-drain-7f3a"),
        Line::Marker("lifeboat-drain-7f3a".into())
    );
    assert_eq!(parse_line("garbage"), Line::Other);
    assert_eq!(
        parse_line("x: block_rq_complete: 7,0 W () nan + 8"),
        Line::Other
    );
    assert_eq!(
        parse_line("x 1.0: block_rq_complete: 7 W () 8 + 8 a [0]"),
        Line::Other
    );
}

#[test]
fn writes_mark_their_blocks_reads_and_other_devices_do_not() {
    let mut t = Tracker::new(vec![disk(0, 1 << 20)]);
    assert!(t.take().is_err(), "the first cycle scans in full");
    t.handle_line(&rq("1.0", "7,3", "W", 0, 8)); // block 0
    t.handle_line(&rq("1.0", "7,3", "WS", 127, 2)); // blocks 0 and 1 (sectors 127-128)
    t.handle_line(&rq("1.0", "7,3", "R", 512, 8)); // a read
    t.handle_line(&rq("1.0", "7,4", "W", 512, 8)); // another device
    t.handle_line(&rq("1.0", "7,3", "D", 1920, 128)); // a discard: blocks 15
    t.handle_line(&rq("1.0", "7,3", "W", 4096, 8)); // past the end: it may have grown
    let m = t.take().unwrap();
    assert_eq!(m[0].iter().collect::<Vec<_>>(), vec![0, 1, 15, 32]);
    t.handle_resize(0, 4 << 20);
    assert!(t.take().unwrap_err().contains("resized"));
    assert_eq!(m[0].runs(), vec![(0, 2), (15, 16), (32, 33)]);
    assert_eq!(t.stats().events, 4, "writes on the tracked device");
    assert!(t.take().unwrap()[0].is_empty(), "taken blocks are gone");
}

#[test]
fn a_partition_maps_to_its_own_blocks() {
    // A partition from sector 2048, 1 MiB long, on the traced disk.
    let mut t = Tracker::new(vec![disk(2048, 1 << 20)]);
    let _ = t.take();
    t.handle_line(&rq("1.0", "7,3", "W", 2048 + 128, 8)); // its block 1
    t.handle_line(&rq("1.0", "7,3", "W", 100, 8)); // before it
    t.handle_line(&rq("1.0", "7,3", "W", 2048 + 2047, 8)); // straddles its end: block 15
    assert_eq!(t.take().unwrap()[0].iter().collect::<Vec<_>>(), vec![1, 15]);
}

#[test]
fn events_that_may_follow_the_view_are_read_again_next_cycle() {
    let mut t = Tracker::new(vec![disk(0, 1 << 20)]);
    let _ = t.take();
    t.handle_line(&rq("10.0", "7,3", "W", 0, 8));
    t.begin_view(20_000_000);
    t.handle_line(&rq("10.5", "7,3", "W", 128, 8)); // before the view
    t.handle_line(&rq("20.0", "7,3", "W", 256, 8)); // at the view: maybe after it
    let m = t.take().unwrap();
    assert_eq!(m[0].iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(t.take().unwrap()[0].iter().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_loss_forces_a_full_scan_once_and_a_failed_cycle_gives_its_blocks_back() {
    let mut t = Tracker::new(vec![disk(0, 1 << 20)]);
    let _ = t.take();
    t.handle_line(&rq("1.0", "7,3", "W", 0, 8));
    t.handle_line("CPU:0 [LOST 3 EVENTS]");
    let e = t.take().unwrap_err();
    assert!(e.contains("dropped 3"), "{e}");
    assert_eq!(t.stats().lost_events, 3);
    t.handle_line(&rq("2.0", "7,3", "W", 128, 8));
    let m = t.take().unwrap();
    t.give_back(&m);
    assert_eq!(t.pending_blocks(), vec![1]);
    t.full_scan_failed("vault down");
    assert!(t.take().is_err());
}

#[test]
fn a_loss_noticed_after_the_view_also_makes_the_next_cycle_scan_in_full() {
    let mut t = Tracker::new(vec![disk(0, 1 << 20)]);
    let _ = t.take();
    t.begin_view(20_000_000);
    // Reported while the cycle drains: the lost events may be writes after the view.
    t.handle_line("CPU:1 [LOST 5 EVENTS]");
    t.handle_line(&rq("20.5", "7,3", "W", 0, 8));
    assert!(t.take().unwrap_err().contains("dropped 5"));
    let e = t.take().unwrap_err();
    assert!(e.contains("dropped 5"), "{e}");
    assert!(t.take().is_ok());
    // Before the view, one full scan is enough.
    t.handle_loss("tracing was switched off");
    t.begin_view(30_000_000);
    assert!(t.take().is_err());
    assert!(t.take().is_ok());
}

/// One drain: begin the view, the marker line, the accounting, the take.
fn drain(t: &mut Tracker, n: u32, ts: u64, a: Accounting) -> Result<Vec<Dirty>, String> {
    t.begin_view(ts * 1_000_000);
    let token = format!("{MARKER_PREFIX}1-{n}");
    let line = format!("  <...>-1 [000] ..... {ts}.000001: tracing_mark_write: {token}");
    assert_eq!(t.handle_line(&line), Some(token.clone()));
    t.handle_accounting(&token, &[((7, 3), a)]);
    t.take()
}

#[test]
fn requests_the_disk_completed_that_were_not_traced_are_a_loss() {
    let mut t = Tracker::new(vec![disk(0, 1 << 20)]);
    let acct = |before, after, inflight| Accounting {
        before,
        after,
        inflight,
    };
    // The first drain is a full scan anyway and sets the baseline.
    assert!(drain(&mut t, 1, 10, acct(100, 100, 0)).is_err());
    // Three requests completed, three traced: no loss.
    for i in 0..3 {
        t.handle_line(&rq(&format!("11.{i}"), "7,3", "WS", i * 128, 8));
    }
    assert_eq!(drain(&mut t, 2, 12, acct(103, 105, 4)).unwrap()[0].len(), 3);
    // Those counted in the last marker's window and in flight after it (2 + 4) may have been
    // traced before it: six completed, none traced since, is still no loss.
    assert!(drain(&mut t, 3, 13, acct(109, 109, 0)).is_ok());
    // Tracing switched off and on between two watchdog checks: five writes completed, one
    // traced. This cycle and the next scan in full.
    t.handle_line(&rq("13.5", "7,3", "W", 0, 8));
    let e = drain(&mut t, 4, 14, acct(114, 114, 0)).unwrap_err();
    assert!(e.contains("4 write requests that were not traced"), "{e}");
    assert!(drain(&mut t, 5, 15, acct(114, 114, 0)).is_err());
    assert!(drain(&mut t, 6, 16, acct(114, 114, 0)).is_ok());
    // Events after the marker count for the next drain, not this one.
    t.begin_view(17_000_000);
    let token = format!("{MARKER_PREFIX}1-7");
    t.handle_line(&format!(
        " x [000] ..... 17.000001: tracing_mark_write: {token}"
    ));
    t.handle_line(&rq("17.5", "7,3", "W", 0, 8));
    t.handle_accounting(&token, &[((7, 3), acct(114, 114, 0))]);
    assert!(t.take().is_ok());
    assert!(drain(&mut t, 8, 18, acct(115, 115, 0)).is_ok());
    // A write through the flush sequence completes twice (the second time with no sectors)
    // and is counted once by the disk; an empty write of its own counts.
    t.handle_line(&rq("18.1", "7,3", "WSM", 256, 8));
    t.handle_line(&rq("18.2", "7,3", "WSM", 256, 0));
    t.handle_line(&rq("18.3", "7,3", "WS", 512, 0));
    assert!(drain(&mut t, 10, 19, acct(117, 117, 0)).is_ok());
    t.handle_line(&rq("19.1", "7,3", "WSM", 256, 8));
    t.handle_line(&rq("19.2", "7,3", "WSM", 256, 0));
    assert!(drain(&mut t, 11, 20, acct(119, 119, 0))
        .unwrap_err()
        .contains("1 write requests"));
    assert!(drain(&mut t, 12, 21, acct(119, 119, 0)).is_err());
    assert!(drain(&mut t, 13, 22, acct(119, 119, 0)).is_ok());
    // Counters that went back: the device was replaced.
    let e = drain(&mut t, 14, 23, acct(3, 3, 0)).unwrap_err();
    assert!(e.contains("went back"), "{e}");
    // An accounting for a marker that is not the last one read is ignored.
    t.handle_accounting("lifeboat-drain-other", &[((7, 3), acct(0, 0, 0))]);
}

#[test]
fn the_freeze_is_capped_by_the_estimated_read_time() {
    // 1 GiB at 100 MB/s: about 10.7 s.
    assert_eq!(freeze_estimate_ms(1 << 30, Some(100_000.0)), 10_738);
    assert!(freeze_allowed(1 << 30, Some(100_000.0), 20_000).is_ok());
    let e = freeze_allowed(1 << 30, Some(100_000.0), 10_000).unwrap_err();
    assert!(e.contains("1024 MiB") && e.contains("10738 ms"), "{e}");
    assert!(freeze_allowed(u64::MAX / 2, None, 0).is_ok(), "0: no cap");
    // No rate measured yet, or a nonsense one: 200 MB/s.
    assert_eq!(freeze_estimate_ms(200_000_000, None), 1_000);
    assert_eq!(freeze_estimate_ms(200_000_000, Some(f64::NAN)), 1_000);
}
