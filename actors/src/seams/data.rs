//! The data path's seams: the object store a vault lives in ([`BlobStore`]). The daemon's
//! implementation (`node::vault::ObjectBlobStore`) wraps `object_store` (a local directory,
//! Azure Blob, S3) with the local fast path and durability barrier; the simulation's
//! (`simulation::blobs::SimBlobStore`) is in memory, on simulated time, with injected faults.
//! The vault client above it (`node::vault::Vault`) is the same code in both.

use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

/// A boxed future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    /// No object under the key.
    #[error("not found")]
    NotFound,
    /// Anything else (the store's own words): the caller may retry.
    #[error("{0}")]
    Failed(String),
}

/// An object's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its key (`/`-separated).
    pub key: String,
    /// Its size, bytes.
    pub size: u64,
    /// When it was last written, Unix ms (the store's clock).
    pub modified_ms: u64,
}

impl BlobMeta {
    /// The last component of the key.
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or_default()
    }
}

/// How a put treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Write only if absent (the commit of a point, content-addressed chunks).
    Create,
    /// Replace whatever is there.
    Overwrite,
}

/// An object store. Keys are `/`-separated paths; `list(prefix)` lists the objects under the
/// directory `prefix` (any depth), sorted by key.
pub trait BlobStore: Send + Sync + 'static {
    /// Where it is, for messages (no secrets).
    fn describe(&self) -> String;
    /// Reads a whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, BlobError>>;
    /// Reads bytes `range` of an object.
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, BlobError>>;
    /// Writes an object. With [`PutMode::Create`], `Ok(false)` means one already existed (and
    /// was left as it was).
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<bool, BlobError>>;
    /// An object's metadata, `None` if absent.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, BlobError>>;
    /// The objects under `prefix`, sorted by key.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>>;
    /// Deletes an object (absent is success).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;
    /// Durability barrier: every put acknowledged before the call survives a crash of the
    /// store's host once it returns.
    fn barrier(&self) -> BoxFuture<'_, Result<(), BlobError>>;
    /// Removes what interrupted writes left behind (staging files of a local directory) older
    /// than `grace_ms` at `now_ms`. Returns objects and bytes removed. Stores without such
    /// leftovers do nothing.
    fn sweep(&self, now_ms: u64, grace_ms: u64) -> BoxFuture<'_, (u64, u64)> {
        let _ = (now_ms, grace_ms);
        Box::pin(async { (0, 0) })
    }
}

/// The receiving end of a stream of messages from one authenticated peer (the request side of
/// the transport: a replication stream into a process server). The daemon's is a QUIC stream
/// with Noise framing (`node::transport::FrameReader`); the simulation's is in memory.
pub trait MessageSource: Send {
    /// The next message; `None` when the stream ended cleanly.
    fn next_message(&mut self)
        -> BoxFuture<'_, Result<Option<lifeboat_protocol::Message>, String>>;
}

/// A protected disk, or a frozen view of it: what a scan reads. The daemon's reads a block
/// device or an image file with `O_DIRECT` and the page cache's help
/// (`node::disk::Disk`); the simulation's is a disk in memory that its applications write.
pub trait BlockDevice: Send + Sync {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `at` (`at + buf.len()` is at most the size). Reads of
    /// 4 KiB-aligned spans into 4 KiB-aligned buffers are the fast path of a real disk; any
    /// other read is served too, more slowly.
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), String>;
}

/// Where a process server puts the segments of replication streams that wait for its
/// processor beyond the memory budget (the spool directory). A segment is written once, read
/// once and removed; a segment of a session that died is swept at start. The budget (how many
/// segments may wait at all; the point where the receiver stops reading and QUIC pushes back)
/// is the process server's logic, not the seam's.
pub trait Spool: Send + Sync + std::fmt::Debug {
    /// Stores segment `name` (a full disk is an error, and the session fails: nothing it
    /// received was acknowledged).
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    /// Reads segment `name` back.
    fn read(&self, name: &str) -> Result<Vec<u8>, String>;
    /// Removes segment `name` (absent is success).
    fn remove(&self, name: &str);
}
