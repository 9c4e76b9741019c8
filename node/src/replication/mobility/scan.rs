//! Reading, hashing and shipping a disk: `O_DIRECT` positional reads on reader threads ahead
//! of the hasher (cached runs copied from the page cache, asked with `mincore`), the
//! comparison with the last committed point's hashes, and sealed batches of changed blocks.

use super::*;
use crate::disk::Disk;
use lifeboat_actors::datapath::DiskScan;
use lifeboat_actors::seams::BlockDevice;
use lifeboat_actors::tracking::Dirty;

/// Bytes per read of a scan (a multiple of every allowed block size up to 4 MiB).
const READ_BYTES: usize = 4 << 20;
/// Reader threads: each has one read in flight, so the device sees this queue depth.
const READ_LANES: usize = 3;
/// Buffers per reader thread (how far it may run ahead of the hasher).
const READ_BUFFERS: usize = 2;

/// Read buffers kept between scans by whoever scans often (the simulation scans a small disk
/// thousands of times; allocating and zeroing its buffers cost more than hashing it). The
/// daemon's cycle uses a fresh set, so an idle mobility node holds none.
#[derive(Debug, Default)]
pub struct ScanBuffers(std::sync::Mutex<Vec<Aligned>>);

impl ScanBuffers {
    fn take(&self, len: usize) -> Aligned {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match g.iter().position(|b| b.capacity() >= len) {
            Some(i) => g.swap_remove(i),
            None => Aligned::new(len),
        }
    }

    fn put(&self, buf: Aligned) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < READ_LANES * READ_BUFFERS {
            g.push(buf);
        }
    }
}

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
    fn start(dev: Arc<dyn BlockDevice>, buffers: &Arc<ScanBuffers>) -> ReadAhead {
        let mut full = Vec::new();
        let mut free = Vec::new();
        // Buffers no bigger than the disk, and no more than it has spans (a small disk does not
        // allocate and zero 24 MiB for every scan).
        let size = dev.size();
        let spans = size.div_ceil(READ_BYTES as u64).max(1) as usize;
        let len = (size.next_multiple_of(crate::direct_io::ALIGN as u64) as usize).min(READ_BYTES);
        for lane in 0..READ_LANES {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            let (free_tx, free_rx) = std::sync::mpsc::sync_channel(READ_BUFFERS);
            full.push(full_rx);
            free.push(free_tx.clone());
            let mine = spans.saturating_sub(lane).div_ceil(READ_LANES);
            if mine == 0 {
                continue;
            }
            for _ in 0..READ_BUFFERS.min(mine) {
                let _ = free_tx.send(buffers.take(len.max(1)));
            }
            let dev = dev.clone();
            let buffers = buffers.clone();
            std::thread::spawn(move || {
                read_lane(lane, &*dev, full_tx, &free_rx);
                // Once the scan is over (every sender gone), the buffers go back.
                while let Ok(b) = free_rx.recv() {
                    buffers.put(b);
                }
            });
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

/// One reader thread: reads spans `lane`, `lane + READ_LANES`, ... until the disk ends or the
/// scanner goes away.
fn read_lane(
    lane: usize,
    dev: &dyn BlockDevice,
    full: std::sync::mpsc::SyncSender<Result<Span, String>>,
    free: &std::sync::mpsc::Receiver<Aligned>,
) {
    let size = dev.size();
    let mut k = lane as u64;
    loop {
        let at = k * READ_BYTES as u64;
        if at >= size {
            return;
        }
        let Ok(mut buf) = free.recv() else { return };
        let len = (size - at).min(READ_BYTES as u64) as usize;
        let res = dev.read_at(at, buf.buf(len));
        let stop = res.is_err();
        if full.send(res.map(|()| Span { at, len, buf })).is_err() || stop {
            return;
        }
        k += READ_LANES as u64;
    }
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

/// Hands the blocks of `data` (read in order) to `scan`, counting them in `progress`; a batch
/// that comes due goes to `emit`.
fn feed(
    scan: &mut DiskScan,
    data: &[u8],
    bs: usize,
    progress: &Progress,
    now_ms: &dyn Fn() -> u64,
    emit: &mut impl FnMut(Vec<DeltaBlock>) -> Result<(), String>,
) -> Result<(), String> {
    for block in data.chunks(bs) {
        progress
            .scanned
            .fetch_add(block.len() as u64, Ordering::Relaxed);
        let step = scan.handle_block(block, now_ms());
        if step.changed {
            progress
                .pending
                .fetch_add(block.len() as u64, Ordering::Relaxed);
        }
        if let Some(batch) = step.batch {
            emit(batch)?;
        }
    }
    Ok(())
}

/// Reads `dev` front to back (on [`READ_LANES`] reader threads) through the shared
/// [`DiskScan`] against the base's hashes `old`; each batch of changed blocks goes to `emit`
/// when due. `now_ms` is a monotonic clock for the keepalive. Returns the disk's new hash map
/// and the blocks sent. The daemon's cycle and the simulation both scan with this.
pub fn scan_device(
    dev: Arc<dyn BlockDevice>,
    buffers: &Arc<ScanBuffers>,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    progress: &Progress,
    now_ms: &dyn Fn() -> u64,
    mut emit: impl FnMut(Vec<DeltaBlock>) -> Result<(), String>,
) -> Result<(Vec<[u8; 32]>, u64), String> {
    let bs = block_size as usize;
    let n = dev.size().div_ceil(block_size as u64) as usize;
    let batcher = Batcher::new(now_ms(), BATCH_BLOCKS, BATCH_BYTES, KEEPALIVE_MS);
    let mut scan = DiskScan::new(n, block_size, old, batcher);
    let mut spans = ReadAhead::start(dev, buffers);
    while scan.seen() < n {
        let Span { at, len, buf } = spans.next()?;
        feed(&mut scan, buf.data(len), bs, progress, now_ms, &mut emit)?;
        spans.recycle(at, buf);
    }
    let done = scan.finish();
    if let Some(batch) = done.batch {
        emit(batch)?;
    }
    Ok((done.hashes, done.sent))
}

/// Reads only the blocks change tracking marked in `dirty` (runs of them, one positional read
/// of up to [`READ_BYTES`] each) through the shared [`DiskScan`] against the base's hashes
/// `old`; every other block keeps the base's hash unread. Otherwise as [`scan_device`].
pub fn scan_dirty_device(
    dev: Arc<dyn BlockDevice>,
    block_size: u32,
    old: Vec<[u8; 32]>,
    dirty: &Dirty,
    progress: &Progress,
    now_ms: &dyn Fn() -> u64,
    mut emit: impl FnMut(Vec<DeltaBlock>) -> Result<(), String>,
) -> Result<(Vec<[u8; 32]>, u64), String> {
    let bs = block_size as usize;
    let size = dev.size();
    let n = size.div_ceil(block_size as u64) as usize;
    if old.len() != n {
        return Err("the disk's size changed under change tracking".into());
    }
    let batcher = Batcher::new(now_ms(), BATCH_BLOCKS, BATCH_BYTES, KEEPALIVE_MS);
    let mut scan = DiskScan::new(n, block_size, Some(old), batcher);
    let per = (READ_BYTES / bs).max(1);
    let mut buf = Aligned::new(READ_BYTES.max(bs));
    for (a, b) in dirty.runs() {
        let mut i = a;
        while i < b.min(n) {
            let j = (i + per).min(b).min(n);
            scan.skip_to(i);
            let at = i as u64 * bs as u64;
            let len = ((j as u64 * bs as u64).min(size) - at) as usize;
            dev.read_at(at, buf.buf(len))?;
            feed(&mut scan, buf.data(len), bs, progress, now_ms, &mut emit)?;
            i = j;
        }
    }
    scan.skip_to(n);
    let done = scan.finish();
    if let Some(batch) = done.batch {
        emit(batch)?;
    }
    Ok((done.hashes, done.sent))
}

/// Scans a disk on a blocking thread (only `dirty`'s blocks, if change tracking gave them);
/// changed blocks go out through `tx`, sealed as frames of disk number `disk`.
#[allow(clippy::too_many_arguments)]
fn scan_disk(
    path: PathBuf,
    disk: u16,
    block_size: u32,
    old: Option<Vec<[u8; 32]>>,
    dirty: Option<Dirty>,
    mut sealer: FrameSealer,
    tx: mpsc::Sender<Result<Scan, String>>,
    progress: Arc<Progress>,
) {
    let res = (|| -> Result<(), String> {
        let dev = Disk::open(&path)?;
        let direct = dev.is_direct();
        let began = std::time::Instant::now();
        let mut wait_send = Duration::ZERO;
        let emit = |batch: Vec<DeltaBlock>| {
            let t = std::time::Instant::now();
            let r = tx.blocking_send(seal_batch(&mut sealer, disk, batch));
            wait_send += t.elapsed();
            r.map_err(|_| "sender stopped".to_string())
        };
        let now = || began.elapsed().as_millis() as u64;
        let read0 = progress.scanned.load(Ordering::Relaxed);
        let traced = dirty.is_some() && old.is_some();
        let (hashes, sent) = match (dirty, old) {
            (Some(d), Some(old)) => {
                scan_dirty_device(Arc::new(dev), block_size, old, &d, &progress, &now, emit)?
            }
            (_, old) => scan_device(
                Arc::new(dev),
                &Arc::default(),
                block_size,
                old,
                &progress,
                &now,
                emit,
            )?,
        };
        tracing::debug!(
            disk = %path.display(),
            ms = began.elapsed().as_millis() as u64,
            send_wait_ms = wait_send.as_millis() as u64,
            read = progress.scanned.load(Ordering::Relaxed) - read0,
            traced,
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
    dirty: Option<Dirty>,
    progress: Arc<Progress>,
) -> Result<(Vec<[u8; 32]>, u64), String> {
    let (tx, mut rx) = mpsc::channel(4);
    let sealer = w.lend_sealer().map_err(|e| e.to_string())?;
    let scanner = tokio::task::spawn_blocking(move || {
        scan_disk(path, disk, block_size, old, dirty, sealer, tx, progress)
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
