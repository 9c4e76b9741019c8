//! A protected disk as the scan reads it: the real [`BlockDevice`]. Every `unsafe` call of
//! the read path is here (`mincore` on a mapping never touched, `preadv2` with `RWF_NOWAIT`).
//!
//! Block devices and image files are both read with `O_DIRECT` where the filesystem allows it
//! (tmpfs does not): a block device's cache can be stale against what a filesystem on it just
//! flushed, the kernel writes dirty cached pages back before a direct read of a file (so the
//! view is the same), a direct read is DMA'd into the caller's buffer instead of copied out of
//! the page cache (on the benchmark VM that copy cost more CPU than hashing), and a scan of the
//! whole disk every cycle does not evict the applications' working set. For an image file,
//! whatever its page cache already holds is copied from there (see [`cached_chunks`]).

use crate::direct_io::{Aligned, ALIGN};
use lifeboat_actors::seams::BlockDevice;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Granularity of cache-first reads: a chunk is copied from the page cache only if all of it
/// is cached (the rest is read direct, which stays coherent with the cache).
pub const CACHE_CHUNK: usize = 64 << 10;

/// A disk (block device or image file) open for scanning.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    /// Opened direct where allowed.
    file: std::fs::File,
    size: u64,
    /// Reads are direct (until the filesystem refuses them: some accept the flag at open only).
    direct: AtomicBool,
    /// A buffered handle, once direct reads were refused.
    buffered: OnceLock<std::fs::File>,
    /// A buffered handle of an image file read direct, for what its page cache holds (`None`
    /// for block devices: a filesystem on one bypasses its cache).
    cached: Option<std::fs::File>,
    /// `RWF_NOWAIT` works here.
    nowait: AtomicBool,
}

impl Disk {
    /// Opens a disk for a scan.
    pub fn open(path: &Path) -> Result<Disk, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let block_dev = meta.file_type().is_block_device();
        let open = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.read(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (f, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if !block_dev && e.raw_os_error() == Some(libc::EINVAL) => (
                open(false).map_err(|e| format!("{}: {e}", path.display()))?,
                false,
            ),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let size = if block_dev {
            use std::io::Seek;
            let mut f = &f;
            f.seek(std::io::SeekFrom::End(0))
                .map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            meta.len()
        };
        // An image file's page cache is the truth about its content (unlike a block device's,
        // which a filesystem on it bypasses): what is cached already (typically the blocks
        // just changed) is copied from the cache, and only the rest is read direct, so the
        // scan neither waits for the device nor evicts anything.
        let cached = (direct && !block_dev)
            .then(|| std::fs::File::open(path).ok())
            .flatten();
        Ok(Disk {
            path: path.to_path_buf(),
            file: f,
            size,
            direct: AtomicBool::new(direct),
            buffered: OnceLock::new(),
            cached,
            nowait: AtomicBool::new(true),
        })
    }

    /// True while reads go direct.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    fn err(&self, at: u64, e: impl std::fmt::Display) -> String {
        format!("{}: byte {at}: {e}", self.path.display())
    }

    /// Fills `buf` from the device (not the page cache) at `at`.
    fn read_device(&self, buf: &mut [u8], at: u64) -> Result<(), String> {
        let aligned =
            (buf.as_ptr() as usize).is_multiple_of(ALIGN) && at.is_multiple_of(ALIGN as u64);
        if self.is_direct() && !aligned {
            // Through an aligned bounce buffer (not the scan's path: its buffers are aligned).
            let start = at - at % ALIGN as u64;
            let len = ((at - start) as usize + buf.len()).next_multiple_of(ALIGN);
            let mut bounce = Aligned::new(len);
            self.read_min(bounce.buf(len), start, len)?;
            let off = (at - start) as usize;
            let n = buf.len();
            buf.copy_from_slice(&bounce.data(len)[off..off + n]);
            return Ok(());
        }
        let whole = buf.len() - buf.len() % ALIGN;
        if self.is_direct() && whole < buf.len() {
            // The tail of an unaligned disk: whole sectors into a bounce buffer.
            self.read_min(&mut buf[..whole], at, whole)?;
            let mut bounce = Aligned::new(ALIGN);
            let tail_at = at + whole as u64;
            self.read_min(bounce.buf(ALIGN), tail_at, buf.len() - whole)?;
            let n = buf.len() - whole;
            buf[whole..].copy_from_slice(&bounce.data(ALIGN)[..n]);
            return Ok(());
        }
        let n = buf.len();
        self.read_min(buf, at, n)
    }

    /// Reads at least `need` bytes into `buf` at `at` (a direct read of a tail may ask for
    /// whole sectors past the end of the disk: what is there comes back short).
    fn read_min(&self, buf: &mut [u8], at: u64, need: usize) -> Result<(), String> {
        let mut got = 0;
        while got < need {
            match self.handle().read_at(&mut buf[got..], at + got as u64) {
                Ok(0) => return Err(self.err(at + got as u64, "short read (disk shrank?)")),
                Ok(r) => got += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.is_direct() && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.go_buffered()?
                }
                Err(e) => return Err(self.err(at + got as u64, e)),
            }
        }
        Ok(())
    }

    fn handle(&self) -> &std::fs::File {
        match self.buffered.get() {
            Some(b) if !self.is_direct() => b,
            _ => &self.file,
        }
    }

    /// Direct reads were refused: read buffered from now on.
    fn go_buffered(&self) -> Result<(), String> {
        if self.buffered.get().is_none() {
            let g = std::fs::File::open(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            let _ = self.buffered.set(g);
        }
        self.direct.store(false, Ordering::Relaxed);
        Ok(())
    }
}

impl BlockDevice for Disk {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        let span = buf.len();
        // Which chunks to copy from the page cache (asked without starting any I/O).
        let plan = match (&self.cached, self.nowait.load(Ordering::Relaxed)) {
            (Some(c), true) => cached_chunks(c, at, span).map(|m| (c, m)),
            _ => None,
        };
        let in_cache = |pos: usize| plan.as_ref().is_some_and(|(_, m)| m[pos / CACHE_CHUNK]);
        let mut pos = 0;
        while pos < span {
            // A run of chunks that are all cached, or all not.
            let here = in_cache(pos);
            let mut end = (pos + CACHE_CHUNK).min(span);
            while end < span && in_cache(end) == here {
                end = (end + CACHE_CHUNK).min(span);
            }
            let mut got = pos;
            if let (true, Some((c, _))) = (here, &plan) {
                match read_cached(c, &mut buf[pos..end], at + pos as u64) {
                    // Whole pages only, so that a direct read can go on from there.
                    Ok(n) => {
                        got = if pos + n == end {
                            end
                        } else {
                            (pos + n) & !4095
                        }
                    }
                    // Evicted since it was asked: read direct.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // RWF_NOWAIT unsupported here: read direct from now on.
                    Err(_) => self.nowait.store(false, Ordering::Relaxed),
                }
            }
            if got < end {
                self.read_device(&mut buf[got..end], at + got as u64)?;
            }
            pos = end;
        }
        Ok(())
    }
}

/// For each [`CACHE_CHUNK`] of the `len` bytes of `f` at `at` (page-aligned), whether the page
/// cache holds all of it; `None` if that cannot be asked. Asked with `mincore` on a mapping that
/// is never touched: unlike a probing read (even `RWF_NOWAIT`), asking starts no readahead,
/// which would read the disk twice, once into the cache and once direct.
pub fn cached_chunks(f: &std::fs::File, at: u64, len: usize) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    if page == 0 || !CACHE_CHUNK.is_multiple_of(page) || !at.is_multiple_of(page as u64) {
        return None;
    }
    let map_len = len.next_multiple_of(page);
    let off = libc::off_t::try_from(at).ok()?;
    let mut pages = vec![0u8; map_len / page];
    // SAFETY: a fresh read-only shared mapping that is never dereferenced: it is only asked
    // about with `mincore` (into `pages`, one byte per page as required) and unmapped.
    #[allow(unsafe_code)]
    let asked = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            off,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        let r = libc::mincore(p, map_len, pages.as_mut_ptr());
        libc::munmap(p, map_len);
        r == 0
    };
    asked.then(|| {
        pages
            .chunks(CACHE_CHUNK / page)
            .map(|c| c.iter().all(|b| b & 1 == 1))
            .collect()
    })
}

/// Reads from `f` at `at` only what its page cache holds (`preadv2` with `RWF_NOWAIT`): the
/// byte count (short where the cache ends), or `WouldBlock` if the first page is not cached.
fn read_cached(f: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let off = libc::off_t::try_from(at).map_err(|_| std::io::Error::other("offset"))?;
    // SAFETY: `iov` points at `buf`, which is valid for writes of its length for the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => std::io::ErrorKind::WouldBlock.into(),
            _ => e,
        });
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the fast path does not serve (an unaligned offset, a misaligned buffer, a tail
    /// past the last whole sector) still return exactly the file's bytes, read direct.
    #[test]
    fn unaligned_reads_of_a_direct_disk_return_its_bytes() {
        // A real filesystem: tmpfs refuses O_DIRECT.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("disk.img");
        let data: Vec<u8> = (0..3 * 4096 + 777u32)
            .map(|i| (i * 13 + i / 511) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let d = Disk::open(&path).unwrap();
        assert_eq!(d.size(), data.len() as u64);
        for (at, len) in [
            (0, data.len()),
            (1, 4096),
            (4095, 2),
            (5000, 7000),
            (8192, 4096 + 777),
        ] {
            // Into a buffer one byte off alignment.
            let mut raw = vec![0u8; len + 1];
            let buf = &mut raw[1..];
            d.read_at(at as u64, buf).unwrap();
            assert!(
                buf == &data[at..at + len],
                "bytes {at}..{} differ",
                at + len
            );
        }
        assert!(
            d.read_at(data.len() as u64 - 10, &mut [0u8; 20]).is_err(),
            "a read past the end is an error"
        );
    }
}
