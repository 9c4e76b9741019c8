//! `O_DIRECT` helpers shared by the scan (direct reads of disks) and the local vault (direct
//! writes of packs).

use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The alignment `O_DIRECT` needs for buffers, offsets and lengths on every Linux filesystem.
pub const ALIGN: usize = 4096;

/// A buffer aligned for `O_DIRECT`.
pub struct Aligned {
    raw: Vec<u8>,
    off: usize,
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} bytes)", self.capacity())
    }
}

impl Aligned {
    /// A zeroed buffer of `len` usable bytes.
    pub fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        let off = (ALIGN - (raw.as_ptr() as usize % ALIGN)) % ALIGN;
        Aligned { raw, off }
    }
    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.raw.len() - ALIGN
    }
    /// The first `len` bytes, writable.
    pub fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + len]
    }
    /// The first `len` bytes.
    pub fn data(&self, len: usize) -> &[u8] {
        &self.raw[self.off..self.off + len]
    }
}

/// Staging buffers of direct writes, kept for reuse (a pack written direct is copied once, into
/// memory that is already mapped). At most [`POOLED`] are kept, so memory stays bounded however
/// many threads write.
static POOL: std::sync::Mutex<Vec<Aligned>> = std::sync::Mutex::new(Vec::new());
const POOLED: usize = 4;

/// A name beside `dest` for staging a write: `dest#<digits>`, the form the object store's
/// local backend uses for its own staged uploads (listings skip it).
fn staging_path(dest: &Path, n: u64) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(format!("#{}{n}", std::process::id()));
    s.into()
}

/// Writes `data` to `dest` with `O_DIRECT` through a staging file renamed into
/// place, so a reader sees the whole object or nothing. The data is on the device when this
/// returns (not in the page cache: nothing is left for a later sync to write back, and no page
/// cache is allocated for it); the file's metadata and directory entry are not yet synced.
///
/// Returns `Ok(false)` without writing anything when the filesystem refuses `O_DIRECT` (tmpfs),
/// so the caller can write normally.
pub fn write_direct(dest: &Path, data: &[u8]) -> std::io::Result<bool> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let len = data.len();
    let padded = len.div_ceil(ALIGN) * ALIGN;
    let (file, staged) = loop {
        let staged = staging_path(dest, SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&staged);
        match opened {
            Ok(f) => break (f, staged),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let parent = dest.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(parent)?;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The kernel creates the file before it refuses the flag.
                let _ = std::fs::remove_file(&staged);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    };
    let pooled = {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        let fits = pool.iter().position(|s| s.capacity() >= padded);
        fits.map(|i| pool.swap_remove(i))
    };
    // Sizes rounded up to 2 MiB, so buffers fit the next pack (a pack is 8 MiB plus at most a
    // block) and are reused rather than reallocated.
    let mut stage = pooled.unwrap_or_else(|| Aligned::new(padded.next_multiple_of(2 << 20)));
    let buf = stage.buf(padded);
    buf[..len].copy_from_slice(data);
    buf[len..].fill(0);
    let written = file.write_all_at(buf, 0);
    {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED {
            pool.push(stage);
        }
    }
    let done = written
        .and_then(|()| file.set_len(len as u64))
        .and_then(|()| std::fs::rename(&staged, dest));
    match done {
        Ok(()) => Ok(true),
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            // Some filesystems accept the flag at open and refuse the write.
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(false);
            }
            Err(e)
        }
    }
}

/// Writes a file of known size block by block at block-aligned offsets (a restore), coalescing
/// contiguous blocks into writes of up to [`RUN_BYTES`] made with `O_DIRECT`: straight to the
/// device, so the page cache is neither filled nor written back at the end (on the benchmark VM
/// buffered writes cost more CPU than decrypting and verifying the blocks). Offsets or lengths
/// that are not page-aligned, and filesystems that refuse `O_DIRECT`, are written normally.
/// Ranges never written read as zeros (the file is sized, and sparse, from the start).
#[derive(Debug)]
pub struct BlockWriter {
    path: PathBuf,
    /// Opened with `O_DIRECT` (if the filesystem allowed it).
    direct: Option<std::fs::File>,
    /// A normal handle.
    plain: std::fs::File,
    /// The run being gathered: `len` bytes for offset `start`.
    run: Aligned,
    start: u64,
    len: usize,
    size: u64,
}

/// Largest write a [`BlockWriter`] gathers.
pub const RUN_BYTES: usize = 4 << 20;

impl BlockWriter {
    /// Creates `path`, which must not exist yet (never through a symlink; mode 0600: an image
    /// holds a machine's data), with `size` bytes of zeros.
    pub fn create(path: &Path, size: u64) -> std::io::Result<BlockWriter> {
        use std::os::unix::fs::MetadataExt;
        let plain = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        plain.set_len(size)?;
        let direct = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => {
                // The same file, not one swapped in under the name since.
                let (a, b) = (plain.metadata()?, f.metadata()?);
                if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                    return Err(std::io::Error::other(format!(
                        "{} was replaced while it was being opened",
                        path.display()
                    )));
                }
                Some(f)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => return Err(e),
        };
        let run = Aligned::new(if direct.is_some() { RUN_BYTES } else { 0 });
        Ok(BlockWriter {
            path: path.to_path_buf(),
            direct,
            plain,
            run,
            start: 0,
            len: 0,
            size,
        })
    }

    /// Writes `data` at byte `at`.
    pub fn write(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        let end = at + data.len() as u64;
        if end > self.size {
            return Err(std::io::Error::other(format!(
                "{}: write past the end ({end} > {})",
                self.path.display(),
                self.size
            )));
        }
        let aligned = at.is_multiple_of(ALIGN as u64)
            && (data.len().is_multiple_of(ALIGN) || end == self.size);
        if self.direct.is_none() || !aligned || data.len() > RUN_BYTES {
            self.flush()?;
            return self.plain.write_all_at(data, at);
        }
        if self.len > 0 && (at != self.start + self.len as u64 || self.len + data.len() > RUN_BYTES)
        {
            self.flush()?;
        }
        if self.len == 0 {
            self.start = at;
        }
        self.run.buf(self.len + data.len())[self.len..].copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    /// Writes the gathered run.
    fn flush(&mut self) -> std::io::Result<()> {
        let (Some(f), len) = (&self.direct, self.len) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        self.len = 0;
        // Only the file's last block can be short: its padding lands past the end, which
        // `finish` cuts off again.
        let padded = len.next_multiple_of(ALIGN);
        self.run.buf(padded)[len..].fill(0);
        match f.write_all_at(self.run.data(padded), self.start) {
            Ok(()) => Ok(()),
            // Accepted at open, refused at write (some filesystems): write normally from now on.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                self.plain.write_all_at(self.run.data(len), self.start)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes what is left, cuts the file to its size and syncs it.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.flush()?;
        self.plain.set_len(self.size)?;
        self.plain.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_write_lands_whole_and_exact_under_its_name() {
        // A real filesystem (tmpfs refuses O_DIRECT: then nothing is written and the caller
        // writes normally).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let dest = dir.path().join("packs/ab/pack");
        // Unaligned length, into a directory that does not exist yet.
        let a: Vec<u8> = (0..3 * ALIGN + 17).map(|i| (i * 31 % 251) as u8).collect();
        let b = vec![7u8; 1000];
        assert!(write_direct(&dest, &a).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), a);
        // Overwriting replaces it; no staging file is left beside it.
        assert!(write_direct(&dest, &b).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b);
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pack"]);
    }

    #[test]
    fn a_block_writer_writes_exactly_what_it_was_given_in_any_order() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("disk.img");
        let bs = 64 << 10;
        // 3 runs worth of blocks and a short last block; some blocks never written (zeros).
        let blocks = 3 * RUN_BYTES / bs + 1;
        let size = (blocks * bs - 1000) as u64;
        let content = |i: usize| -> Vec<u8> {
            let len = (size as usize - i * bs).min(bs);
            (0..len)
                .map(|j| (i * 131 + j * 7 + j / 4099) as u8)
                .collect()
        };
        let mut order: Vec<usize> = (0..blocks).filter(|i| i % 5 != 3).collect();
        // Mostly in order (coalesced runs), with a stretch written backwards.
        order[10..40].reverse();
        let mut w = BlockWriter::create(&path, size).unwrap();
        for &i in &order {
            w.write((i * bs) as u64, &content(i)).unwrap();
        }
        // An unaligned write (written normally, in between the direct ones).
        let odd = b"unaligned";
        w.write(3 * bs as u64 + 17, odd).unwrap();
        // Past the end is refused.
        assert!(w.write(size - 10, &[1u8; 20]).is_err());
        w.finish().unwrap();
        let mut want = vec![0u8; size as usize];
        for &i in &order {
            let c = content(i);
            want[i * bs..i * bs + c.len()].copy_from_slice(&c);
        }
        want[3 * bs + 17..3 * bs + 17 + odd.len()].copy_from_slice(odd);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "the restored file differs from what was written"
        );
    }
}
