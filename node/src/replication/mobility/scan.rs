//! Reading, hashing and shipping a disk: `O_DIRECT` positional reads on reader threads ahead
//! of the hasher (cached runs copied from the page cache, asked with `mincore`), the
//! comparison with the last committed point's hashes, and sealed batches of changed blocks.

use super::*;

/// Opens a disk for a scan; returns the file, its size and whether it reads with `O_DIRECT`.
///
/// Block devices and image files are both read with `O_DIRECT` where the filesystem allows it
/// (tmpfs does not): a block device's cache can be stale against what a filesystem on it just
/// flushed, the kernel writes dirty cached pages back before a direct read of a file (so the
/// view is the same), a direct read is DMA'd into our buffer instead of copied out of the page
/// cache (on the benchmark VM that copy cost more CPU than hashing), and a scan of the whole
/// disk every cycle does not evict the applications' working set. For an image file, whatever
/// its page cache already holds is copied from there (see [`cached_chunks`]).
pub(super) fn open_disk(path: &Path) -> Result<(std::fs::File, u64, bool), String> {
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
    let (mut f, direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if !block_dev && e.raw_os_error() == Some(libc::EINVAL) => (
            open(false).map_err(|e| format!("{}: {e}", path.display()))?,
            false,
        ),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    use std::io::Seek;
    let size = if block_dev {
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| e.to_string())?
    } else {
        meta.len()
    };
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    Ok((f, size, direct))
}

/// Bytes per read of a scan (a multiple of every allowed block size up to 4 MiB).
const READ_BYTES: usize = 4 << 20;
/// Reader threads: each has one read in flight, so the device sees this queue depth.
const READ_LANES: usize = 3;
/// Buffers per reader thread (how far it may run ahead of the hasher).
const READ_BUFFERS: usize = 2;

/// One read of a scan: `len` bytes of the disk from byte `at`.
struct Span {
    at: u64,
    len: usize,
    buf: Aligned,
}

/// Reads a disk front to back with [`READ_LANES`] threads (span `k` is read by lane
/// `k % READ_LANES` with positional reads, so the device has several reads in flight while the
/// scanner hashes) and hands the spans out in order.
struct ReadAhead {
    full: Vec<std::sync::mpsc::Receiver<Result<Span, String>>>,
    free: Vec<std::sync::mpsc::SyncSender<Aligned>>,
    next: usize,
}

impl ReadAhead {
    fn start(path: PathBuf, f: std::fs::File, size: u64, direct: bool) -> ReadAhead {
        // An image file's page cache is the truth about its content (unlike a block device's,
        // which a filesystem on it bypasses): what is cached already (typically the blocks just
        // changed) is copied from the cache, and only the rest is read direct, so the scan
        // neither waits for the device nor evicts anything.
        let cached = direct
            .then(|| std::fs::File::open(&path).ok())
            .flatten()
            .filter(|c| c.metadata().is_ok_and(|m| m.is_file()));
        let disk = Arc::new(LaneDisk {
            path,
            file: f,
            cached,
            size,
        });
        let mut full = Vec::new();
        let mut free = Vec::new();
        for lane in 0..READ_LANES {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            let (free_tx, free_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            for _ in 0..READ_BUFFERS {
                let _ = free_tx.send(Aligned::new(READ_BYTES));
            }
            let disk = disk.clone();
            std::thread::spawn(move || read_lane(lane, &disk, direct, full_tx, free_rx));
            full.push(full_rx);
            free.push(free_tx);
        }
        ReadAhead {
            full,
            free,
            next: 0,
        }
    }

    /// The next span in disk order.
    fn next(&mut self) -> Result<Span, String> {
        let lane = self.next % READ_LANES;
        self.next += 1;
        self.full[lane]
            .recv()
            .map_err(|_| "disk reader stopped".to_string())?
    }

    /// Returns the buffer of `span` for reuse.
    fn recycle(&self, at: u64, buf: Aligned) {
        let lane = (at / READ_BYTES as u64) as usize % READ_LANES;
        let _ = self.free[lane].send(buf);
    }
}

/// The disk the reader threads share.
struct LaneDisk {
    path: PathBuf,
    /// Opened by [`open_disk`] (direct where allowed).
    file: std::fs::File,
    /// A buffered handle of an image file read direct, for what its page cache holds.
    cached: Option<std::fs::File>,
    size: u64,
}

/// One reader thread: reads spans `lane`, `lane + READ_LANES`, ... until the disk ends or the
/// scanner goes away.
fn read_lane(
    lane: usize,
    disk: &LaneDisk,
    direct: bool,
    full: std::sync::mpsc::SyncSender<Result<Span, String>>,
    free: std::sync::mpsc::Receiver<Aligned>,
) {
    let size = disk.size;
    let mut device = DeviceReads {
        disk,
        direct,
        buffered: None,
    };
    let mut cached = disk.cached.as_ref();
    let mut k = lane as u64;
    loop {
        let at = k * READ_BYTES as u64;
        if at >= size {
            return;
        }
        let Ok(mut buf) = free.recv() else { return };
        let span = (size - at).min(READ_BYTES as u64) as usize;
        // Which chunks to copy from the page cache (asked without starting any I/O).
        let plan = cached.and_then(|c| Some((c, cached_chunks(c, at, span)?)));
        let in_cache = |pos: usize| plan.as_ref().is_some_and(|(_, m)| m[pos / CACHE_CHUNK]);
        let mut pos = 0;
        let mut res = Ok(());
        while pos < span && res.is_ok() {
            // A run of chunks that are all cached, or all not.
            let here = in_cache(pos);
            let mut end = (pos + CACHE_CHUNK).min(span);
            while end < span && in_cache(end) == here {
                end = (end + CACHE_CHUNK).min(span);
            }
            let mut got = pos;
            if let (true, Some((c, _))) = (here, &plan) {
                match read_cached(c, &mut buf.buf(span)[pos..end], at + pos as u64) {
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
                    Err(_) => cached = None,
                }
            }
            res = device.fill(&mut buf, at, span, got, end);
            pos = end;
        }
        let stop = res.is_err();
        if full
            .send(res.map(|()| Span { at, len: span, buf }))
            .is_err()
            || stop
        {
            return;
        }
        k += READ_LANES as u64;
    }
}

/// How a reader thread reads what it does not copy from the page cache.
struct DeviceReads<'a> {
    disk: &'a LaneDisk,
    /// Reads are direct (until the filesystem refuses them).
    direct: bool,
    /// A buffered handle, once direct reads were refused (some filesystems accept the flag at
    /// open only).
    buffered: Option<std::fs::File>,
}

impl DeviceReads<'_> {
    /// Fills bytes `got..end` of `buf`, the span of `span` bytes at disk byte `at`.
    fn fill(
        &mut self,
        buf: &mut Aligned,
        at: u64,
        span: usize,
        mut got: usize,
        end: usize,
    ) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let path = self.disk.path.as_path();
        while got < end {
            // A direct read must ask for whole aligned sectors, even for the tail.
            let stop = if self.direct && end == span {
                span.next_multiple_of(4096)
            } else {
                end
            };
            let file = self.buffered.as_ref().unwrap_or(&self.disk.file);
            match file.read_at(&mut buf.buf(stop)[got..], at + got as u64) {
                Ok(0) => {
                    return Err(format!(
                        "{}: short read at byte {} (disk shrank?)",
                        path.display(),
                        at + got as u64
                    ))
                }
                Ok(r) => got += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    let g = std::fs::File::open(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    self.buffered = Some(g);
                    self.direct = false;
                }
                Err(e) => return Err(format!("{}: byte {}: {e}", path.display(), at + got as u64)),
            }
        }
        Ok(())
    }
}

/// Granularity of cache-first reads: a chunk is copied from the page cache only if all of it
/// is cached (the rest is read direct, which stays coherent with the cache).
const CACHE_CHUNK: usize = 64 << 10;

/// For each [`CACHE_CHUNK`] of the `len` bytes of `f` at `at` (page-aligned), whether the page
/// cache holds all of it; `None` if that cannot be asked. Asked with `mincore` on a mapping that
/// is never touched: unlike a probing read (even `RWF_NOWAIT`), asking starts no readahead,
/// which would read the disk twice, once into the cache and once direct.
fn cached_chunks(f: &std::fs::File, at: u64, len: usize) -> Option<Vec<bool>> {
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

/// What the scanner hands to the sender.
enum Scan {
    /// A sealed `DeltaBlocks` frame.
    Frame(Vec<u8>),
    /// The disk is done; the sealer goes back to the stream.
    Done {
        hashes: Vec<[u8; 32]>,
        sent: u64,
        sealer: FrameSealer,
    },
}

/// Encodes and seals a batch on the scanner's thread (the sender then only hands bytes to QUIC).
fn seal_batch(
    sealer: &mut FrameSealer,
    disk: u16,
    blocks: Vec<DeltaBlock>,
) -> Result<Scan, String> {
    // The payloads plus a few bytes of framing per block and for the envelope.
    let hint = blocks
        .iter()
        .map(|b| b.data.as_ref().map_or(0, |d| d.len()) + 16)
        .sum::<usize>()
        + 256;
    let mut out = Vec::new();
    sealer
        .seal_sized(
            &Envelope::new(Message::DeltaBlocks { disk, blocks }),
            hint,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
    Ok(Scan::Frame(out))
}

/// Reads and hashes a disk on a blocking thread; changed blocks go out through `tx`, sealed
/// as frames of disk number `disk`.
fn scan_disk(
    path: PathBuf,
    disk: u16,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    mut sealer: FrameSealer,
    tx: mpsc::Sender<Result<Scan, String>>,
    progress: Arc<Progress>,
) {
    let res = (|| -> Result<(), String> {
        let (f, size, direct) = open_disk(&path)?;
        let bs = block_size as usize;
        let n = size.div_ceil(block_size as u64) as usize;
        let mut spans = ReadAhead::start(path.clone(), f, size, direct);
        let mut hashes = Vec::with_capacity(n);
        let zero_hash = *blake3::hash(&vec![0u8; bs]).as_bytes();
        let began = std::time::Instant::now();
        let now = || began.elapsed().as_millis() as u64;
        let mut batcher = Batcher::new(0, BATCH_BLOCKS, BATCH_BYTES, KEEPALIVE_MS);
        let mut sent = 0u64;
        let (mut wait_read, mut wait_send) = (Duration::ZERO, Duration::ZERO);
        let mut send = |batch: Vec<DeltaBlock>, sealer: &mut FrameSealer| {
            let t = std::time::Instant::now();
            let r = tx.blocking_send(seal_batch(sealer, disk, batch));
            wait_send += t.elapsed();
            r.map_err(|_| "sender stopped".to_string())
        };
        while hashes.len() < n {
            let t0 = std::time::Instant::now();
            let Span { at, len: span, buf } = spans.next()?;
            wait_read += t0.elapsed();
            let first = (at / bs as u64) as usize;
            for (j, data) in buf.data(span).chunks(bs).enumerate() {
                let i = first + j;
                let want = data.len();
                progress.scanned.fetch_add(want as u64, Ordering::Relaxed);
                // One zero check per block; a full-size zero block's hash is a constant.
                let zero = vault::is_zero_block(data);
                let h = if zero && want == bs {
                    zero_hash
                } else {
                    *blake3::hash(data).as_bytes()
                };
                let changed = block_changed(old.as_deref(), i, &h, zero);
                hashes.push(h);
                let due = if changed {
                    sent += 1;
                    progress.pending.fetch_add(want as u64, Ordering::Relaxed);
                    let (payload, zstd) = if zero {
                        (None, false)
                    } else {
                        let (mode, p) = vault::encode_block(data, WIRE_ZSTD_LEVEL);
                        (
                            Some(serde_bytes::ByteBuf::from(p.into_owned())),
                            mode == vault::MODE_ZSTD,
                        )
                    };
                    let len = payload.as_ref().map_or(0, |p| p.len());
                    let b = DeltaBlock {
                        index: i as u64,
                        data: payload,
                        zstd,
                    };
                    batcher.handle_changed(b, len, now())
                } else {
                    batcher.handle_unchanged(now())
                };
                if let Some(batch) = due {
                    send(batch, &mut sealer)?;
                }
            }
            spans.recycle(at, buf);
        }
        if let Some(batch) = batcher.finish() {
            send(batch, &mut sealer)?;
        }
        tracing::debug!(
            disk = %path.display(),
            ms = began.elapsed().as_millis() as u64,
            read_wait_ms = wait_read.as_millis() as u64,
            send_wait_ms = wait_send.as_millis() as u64,
            direct,
            "disk scanned"
        );
        let _ = tx.blocking_send(Ok(Scan::Done {
            hashes,
            sent,
            sealer,
        }));
        Ok(())
    })();
    if let Err(e) = res {
        let _ = tx.blocking_send(Err(e));
    }
}

pub(super) fn load_hashes(path: &Path, blocks: usize) -> Option<Vec<[u8; 32]>> {
    let b = std::fs::read(path).ok()?;
    if b.len() != blocks * 32 {
        return None;
    }
    Some(
        b.chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect(),
    )
}

pub(super) async fn send_disk(
    w: &mut FrameWriter,
    disk: u16,
    path: PathBuf,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    progress: Arc<Progress>,
) -> Result<(Vec<[u8; 32]>, u64), String> {
    let (tx, mut rx) = mpsc::channel(4);
    let sealer = w.lend_sealer().map_err(|e| e.to_string())?;
    let scanner = tokio::task::spawn_blocking(move || {
        scan_disk(path, disk, block_size, old, sealer, tx, progress)
    });
    let mut result = Err("scanner ended without a result".to_string());
    while let Some(item) = rx.recv().await {
        match item {
            Ok(Scan::Frame(sealed)) => {
                if let Err(e) = w.write_sealed(sealed).await {
                    result = Err(format!("sending to the process server: {e}"));
                    break;
                }
            }
            Ok(Scan::Done {
                hashes,
                sent,
                sealer,
            }) => {
                w.return_sealer(sealer);
                result = Ok((hashes, sent));
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(rx);
    let _ = scanner.await;
    result
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
