//! Unit tests of the scan.

use super::*;

/// Reads a whole image through the scan's readers.
fn read_all(path: &Path) -> Vec<u8> {
    let dev = Disk::open(path).unwrap();
    let size = dev.size();
    let mut ra = ReadAhead::start(Arc::new(dev), &Arc::default());
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let Span { at, len, buf } = ra.next().unwrap();
        assert_eq!(at, out.len() as u64);
        out.extend_from_slice(buf.data(len));
        ra.recycle(at, buf);
    }
    out
}

#[test]
fn a_scan_reads_partly_cached_image_files_exactly() {
    // A real filesystem (tmpfs refuses O_DIRECT), so both halves of the read path run:
    // pages still in the cache and pages read direct, meeting inside one 4 MiB span.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = dir.path().join("disk.img");
    let size = 3 * READ_BYTES + 12_345; // an unaligned tail
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    f.sync_all().unwrap();
    // Evict the second half of the second span, and everything from the third on, from the
    // cache (ranges aligned to 2 MiB: the kernel keeps a large folio a range only partly
    // covers).
    use std::os::fd::AsRawFd;
    for (off, len) in [(READ_BYTES + (2 << 20), 2 << 20), (2 * READ_BYTES, 0)] {
        #[allow(unsafe_code)]
        // SAFETY: a valid descriptor; the call only drops clean cached pages.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), off as i64, len, libc::POSIX_FADV_DONTNEED);
        }
    }
    // The second span really is split: its head comes from the cache, the rest is not there.
    let second = crate::disk::cached_chunks(&f, READ_BYTES as u64, READ_BYTES).unwrap();
    assert!(
        second.iter().any(|&c| c) && second.iter().any(|&c| !c),
        "expected a partly cached span, got {second:?}"
    );
    let got = read_all(&path);
    assert!(
        got == data,
        "the scan read different bytes than the file holds"
    );
    // Reading the evicted part direct brought none of it into the cache (a probing read
    // would have started readahead there, reading the disk twice).
    let third = crate::disk::cached_chunks(&f, 2 * READ_BYTES as u64, READ_BYTES).unwrap();
    assert!(
        third.iter().all(|&c| !c),
        "the scan filled the page cache: {third:?}"
    );
    // A dirty (unsynced) change is seen too, whichever path serves it.
    let g = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    use std::os::unix::fs::FileExt;
    g.write_at(b"changed", READ_BYTES as u64 + 5).unwrap();
    let mut want = data.clone();
    want[READ_BYTES + 5..READ_BYTES + 12].copy_from_slice(b"changed");
    assert!(
        read_all(&path) == want,
        "a change still in the page cache was missed"
    );
}
