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

/// Writes `parts` (concatenated) to `dest` with `O_DIRECT` through a staging file renamed into
/// place, so a reader sees the whole object or nothing. The data is on the device when this
/// returns (not in the page cache: nothing is left for a later sync to write back, and no page
/// cache is allocated for it); the file's metadata and directory entry are not yet synced.
///
/// Returns `Ok(false)` without writing anything when the filesystem refuses `O_DIRECT` (tmpfs),
/// so the caller can write normally.
pub fn write_direct(dest: &Path, parts: &[&[u8]]) -> std::io::Result<bool> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let len: usize = parts.iter().map(|p| p.len()).sum();
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
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(e),
        }
    };
    let mut stage = POOL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .filter(|s| s.capacity() >= padded)
        // Sizes rounded up to 2 MiB, so buffers fit the next pack (a pack is 8 MiB plus at most a
        // block) and are reused rather than reallocated.
        .unwrap_or_else(|| Aligned::new(padded.next_multiple_of(2 << 20)));
    let buf = stage.buf(padded);
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_write_lands_whole_and_exact_under_its_name() {
        // A real filesystem (tmpfs refuses O_DIRECT: then nothing is written and the caller
        // writes normally).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let dest = dir.path().join("packs/ab/pack");
        // Unaligned length, in two parts, into a directory that does not exist yet.
        let a: Vec<u8> = (0..3 * ALIGN + 17).map(|i| (i * 31 % 251) as u8).collect();
        let b = vec![7u8; 1000];
        assert!(write_direct(&dest, &[&a, &b]).unwrap());
        let got = std::fs::read(&dest).unwrap();
        assert_eq!(got.len(), a.len() + b.len());
        assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
        // Overwriting replaces it; no staging file is left beside it.
        assert!(write_direct(&dest, &[&b]).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b);
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pack"]);
    }
}
