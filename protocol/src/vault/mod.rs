//! The vault's formats, sans-IO: block ids, sealing, packs and their indexes, manifest chunks,
//! Merkle roots and recovery-point records. The node's vault client moves these bytes to and
//! from an object store; nothing here does I/O.
//!
//! ```text
//! vault.json                       VaultHeader (plaintext JSON: format, id, name, key check)
//! packs/<pp>/<pack-id>.pack        "LBPK" 1 || sealed_block*            (megabytes each)
//! packs/<pp>/<pack-id>.idx         seal("idx", rmp(PackIndex))          (block id -> offset, len)
//! chunks/<cc>/<chunk-id>           seal("chunk", ids of up to 1024 blocks)
//! points/<machine>/<ms>-<id>       seal("point:" key, rmp(PointRecord)) (created with create-if-absent)
//! ```
//!
//! - Block id = BLAKE3 keyed with a key derived from the vault's data key, over the plaintext
//!   block, so equal blocks dedupe across points and machines while the storage provider cannot
//!   test whether the vault holds a given content. The all-zero id means "all-zero block":
//!   never stored, never sent.
//! - A sealed block = AES-256-GCM(mode || zstd(block) or block), a fresh random 96-bit nonce
//!   per sealing, the id as associated data. Opening checks the tag, decompresses with a
//!   bound, and recomputes the id.
//! - A point record is sealed with its own object key as associated data (so the machine,
//!   capture time and id in its name are authenticated): a point copied under another
//!   machine's prefix, or renamed, fails to open, and its decoded fields must match its name.
//! - A disk manifest is a list of chunk ids; a chunk holds the ids of 1024 consecutive blocks
//!   (64 MiB of disk at the default block size). Unchanged chunks are shared between points, so
//!   a point costs what changed. The Merkle root of a disk is BLAKE3 (keyed) over its size, block
//!   size and chunk ids, and each chunk id is BLAKE3 (keyed) over its block ids.

use crate::identity::NodeId;
use crate::time::UnixMillis;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Vault format version written by this build.
pub const VAULT_FORMAT: u16 = 1;
/// Default block size (64 KiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Block ids per manifest chunk.
pub const CHUNK_ENTRIES: usize = 1024;
/// Pack magic.
pub const PACK_MAGIC: &[u8; 5] = b"LBPK\x01";
/// Largest accepted block size (sanity bound on decompression).
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Errors of the vault formats.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// AEAD authentication failed: corrupted or not sealed with this vault's key.
    #[error("authentication failed: the object is corrupted or from another vault")]
    Auth,
    /// Decompression failed or exceeded the bound.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The content does not hash to its id.
    #[error("content does not match its id (expected {expected}, got {got})")]
    IdMismatch {
        /// Expected id (hex).
        expected: String,
        /// Computed id (hex).
        got: String,
    },
    /// Structurally invalid bytes.
    #[error("malformed {what}: {msg}")]
    Malformed {
        /// Which object kind.
        what: &'static str,
        /// Detail.
        msg: String,
    },
}

/// Identifier of a block (or of a chunk): 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id standing for an all-zero block.
    pub const ZERO: BlockId = BlockId([0; 32]);

    /// True for the all-zero marker.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({}..)", &self.to_hex()[..12])
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses lowercase/uppercase hex of exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// True if every byte is zero (64-byte strides OR-ed as words; no allocation).
pub fn is_zero_block(data: &[u8]) -> bool {
    let mut strides = data.chunks_exact(64);
    for c in &mut strides {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        if acc != 0 {
            return false;
        }
    }
    strides.remainder().iter().all(|b| *b == 0)
}

/// True if a block looks like random data (already compressed or encrypted), judged from the
/// byte histogram of a 4 KiB sample: nearly every byte value present and none frequent. Such
/// blocks are stored without compression; a wrong guess costs space, never correctness.
pub fn looks_incompressible(data: &[u8]) -> bool {
    let sample = &data[..data.len().min(4096)];
    if sample.len() < 1024 {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in sample {
        counts[*b as usize] += 1;
    }
    let distinct = counts.iter().filter(|c| **c > 0).count();
    let max = counts.iter().copied().max().unwrap_or(0) as usize;
    distinct >= 240 && max * 256 <= sample.len() * 3
}

/// Block encoding mode: stored as is.
pub const MODE_RAW: u8 = 0;
/// Block encoding mode: zstd frame.
pub const MODE_ZSTD: u8 = 1;

thread_local! {
    /// One zstd context per thread and level: creating a context per block costs more than
    /// compressing a 64 KiB block of text.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Encodes a block for storage or the wire: `(MODE_ZSTD, zstd(data))` at `level`, or
/// `(MODE_RAW, data)` for blocks whose byte histogram looks random (already compressed or
/// encrypted data skips the compressor) and blocks zstd cannot shrink.
pub fn encode_block(data: &[u8], level: i32) -> (u8, std::borrow::Cow<'_, [u8]>) {
    use std::borrow::Cow;
    if looks_incompressible(data) {
        return (MODE_RAW, Cow::Borrowed(data));
    }
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = zstd::bulk::Compressor::new(level).ok().map(|z| (level, z));
        }
        c.as_mut().and_then(|(_, z)| z.compress(data).ok())
    });
    match compressed {
        Some(z) if z.len() < data.len() => (MODE_ZSTD, Cow::Owned(z)),
        _ => (MODE_RAW, Cow::Borrowed(data)),
    }
}

/// Decompresses a zstd-encoded block of at most `max_len` bytes.
pub fn decompress_block(z: &[u8], max_len: usize) -> Result<Vec<u8>, FormatError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::Decompress(e.to_string()))?,
            );
        }
        match d.as_mut() {
            Some(d) => d
                .decompress(z, max_len)
                .map_err(|e| FormatError::Decompress(e.to_string())),
            None => Err(FormatError::Decompress("no zstd context".into())),
        }
    })
}

/// A vault's data key and the keys derived from it.
///
/// Rotation (`lifeboat vault rekey`) adds a sealing key: new objects are sealed with the
/// newest, older ones still open with the key they were sealed with (tried newest first; AEAD
/// authentication tells which). Block and chunk ids stay keyed by the original master, so
/// deduplication and the shared manifest chunks of existing points carry across a rotation.
#[derive(Clone)]
pub struct DataKey {
    /// Master key (distributed to process servers and configuration nodes only).
    master: [u8; 32],
    /// Sealing keys added by rotations, oldest first.
    rotations: Vec<[u8; 32]>,
    /// Keys block and chunk ids.
    id_key: [u8; 32],
    /// AEAD keys, newest (the one that seals) first.
    aead: Vec<LessSafeKeyHolder>,
}

#[derive(Clone)]
struct LessSafeKeyHolder([u8; 32]);

impl LessSafeKeyHolder {
    fn key(&self) -> LessSafeKey {
        // A 32-byte key is always valid for AES-256-GCM.
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0)
                .unwrap_or_else(|_| unreachable!("aes key length")),
        )
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey(check={})", &self.key_check()[..12])
    }
}

impl DataKey {
    /// Derives all keys from the master key.
    pub fn from_master(master: [u8; 32]) -> Self {
        Self::with_rotations(master, Vec::new())
    }

    /// The master key and the sealing keys of later rotations (oldest first).
    pub fn with_rotations(master: [u8; 32], rotations: Vec<[u8; 32]>) -> Self {
        let aead = std::iter::once(&master)
            .chain(&rotations)
            .rev()
            .map(|k| LessSafeKeyHolder(blake3::derive_key("lifeboat vault aead v1", k)))
            .collect();
        DataKey {
            master,
            rotations,
            id_key: blake3::derive_key("lifeboat vault block id v1", &master),
            aead,
        }
    }

    /// The master key.
    pub fn master(&self) -> [u8; 32] {
        self.master
    }

    /// Sealing keys added by rotations, oldest first.
    pub fn rotations(&self) -> &[[u8; 32]] {
        &self.rotations
    }

    /// The key that seals new objects.
    fn sealing(&self) -> LessSafeKey {
        // `with_rotations` always derives at least the master's key.
        self.aead
            .first()
            .map(LessSafeKeyHolder::key)
            .unwrap_or_else(|| unreachable!("a data key has a sealing key"))
    }

    /// Opens `ct || tag` under `nonce` and `aad` with whichever key sealed it (newest first).
    fn open_any(&self, nonce: [u8; 12], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        for k in &self.aead {
            let mut buf = sealed.to_vec();
            if let Ok(plain) = k.key().open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            ) {
                let n = plain.len();
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(FormatError::Auth)
    }

    /// A public check value: proves a node holds the right key without revealing it.
    pub fn key_check(&self) -> String {
        hex(blake3::keyed_hash(&self.id_key, b"lifeboat key check").as_bytes())
    }

    /// Id of a block's plaintext.
    pub fn block_id(&self, data: &[u8]) -> BlockId {
        BlockId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// Compresses and seals a block whose id is `id` (see [`encode_block`] and
    /// [`DataKey::seal_encoded`]).
    pub fn seal_block(&self, id: &BlockId, data: &[u8], level: i32, nonce: [u8; 12]) -> Vec<u8> {
        let (mode, payload) = encode_block(data, level);
        self.seal_encoded(id, mode, &payload, nonce)
    }

    /// Seals an encoded block: `nonce(12) || AES-256-GCM(mode(1) || payload)` with the block id
    /// as associated data. `nonce` must be fresh random bytes from a CSPRNG: a 96-bit random
    /// nonce has the same collision bound as any other 96-bit nonce (including one derived
    /// from the content) and costs no pass over the data.
    pub fn seal_encoded(&self, id: &BlockId, mode: u8, payload: &[u8], nonce: [u8; 12]) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 1 + payload.len() + 16);
        out.extend_from_slice(&nonce);
        out.push(mode);
        out.extend_from_slice(payload);
        let tag = self
            .sealing()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&id.0),
                &mut out[12..],
            )
            .unwrap_or_else(|_| unreachable!("in-memory seal"));
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a sealed block and checks that it is the block `id` (at most `max_len` bytes).
    pub fn open_block(
        &self,
        id: &BlockId,
        sealed: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, FormatError> {
        if sealed.len() < 12 + 16 {
            return Err(FormatError::Auth);
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        let plain = self.open_any(nonce, &id.0, &sealed[12..])?;
        let data = match plain.split_first() {
            Some((0, raw)) if raw.len() <= max_len => raw.to_vec(),
            Some((1, z)) => decompress_block(z, max_len)?,
            _ => {
                return Err(FormatError::Malformed {
                    what: "block",
                    msg: "unknown mode or oversized block".into(),
                })
            }
        };
        let got = self.block_id(&data);
        if got != *id {
            return Err(FormatError::IdMismatch {
                expected: id.to_hex(),
                got: got.to_hex(),
            });
        }
        Ok(data)
    }

    /// Seals a metadata object of `kind` with a caller-supplied random nonce.
    pub fn seal_object(&self, kind: &str, nonce: [u8; 12], plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        let tag = self
            .sealing()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kind.as_bytes()),
                &mut buf,
            )
            .unwrap_or_else(|_| unreachable!("in-memory seal"));
        let mut out = Vec::with_capacity(12 + buf.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a metadata object of `kind`.
    pub fn open_object(&self, kind: &str, sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        if sealed.len() < 12 + 16 {
            return Err(FormatError::Auth);
        }
        let mut n = [0u8; 12];
        n.copy_from_slice(&sealed[..12]);
        self.open_any(n, kind.as_bytes(), &sealed[12..])
    }

    /// Id of a manifest chunk: over a per-upload salt and its block ids. The salt makes every
    /// chunk upload a new object, so a new point never comes to depend on an old chunk object
    /// that garbage collection has already judged unreferenced.
    pub fn chunk_id(&self, salt: &[u8; 16], ids: &[BlockId]) -> BlockId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"chunk");
        h.update(salt);
        for id in ids {
            h.update(&id.0);
        }
        BlockId(*h.finalize().as_bytes())
    }

    /// Merkle root of a disk.
    pub fn merkle_root(&self, size_bytes: u64, block_size: u32, chunks: &[BlockId]) -> BlockId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"disk");
        h.update(&size_bytes.to_be_bytes());
        h.update(&block_size.to_be_bytes());
        for c in chunks {
            h.update(&c.0);
        }
        BlockId(*h.finalize().as_bytes())
    }

    /// Serializes (`salt || ids`) and seals a chunk.
    pub fn seal_chunk(&self, salt: &[u8; 16], ids: &[BlockId], nonce: [u8; 12]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(16 + ids.len() * 32);
        plain.extend_from_slice(salt);
        for id in ids {
            plain.extend_from_slice(&id.0);
        }
        self.seal_object("chunk", nonce, &plain)
    }

    /// Opens a chunk and checks it against its id.
    pub fn open_chunk(&self, id: &BlockId, sealed: &[u8]) -> Result<Vec<BlockId>, FormatError> {
        let plain = self.open_object("chunk", sealed)?;
        if plain.len() < 16
            || (plain.len() - 16) % 32 != 0
            || (plain.len() - 16) / 32 > CHUNK_ENTRIES
        {
            return Err(FormatError::Malformed {
                what: "chunk",
                msg: format!("{} bytes", plain.len()),
            });
        }
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&plain[..16]);
        let ids: Vec<BlockId> = plain[16..]
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                BlockId(a)
            })
            .collect();
        let got = self.chunk_id(&salt, &ids);
        if got != *id {
            return Err(FormatError::IdMismatch {
                expected: id.to_hex(),
                got: got.to_hex(),
            });
        }
        Ok(ids)
    }
}

/// Where a block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Block id.
    pub id: BlockId,
    /// Byte offset in the pack.
    pub offset: u64,
    /// Sealed length.
    pub len: u32,
}

/// The index object of one pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackIndex {
    /// Pack id (hex of 16 bytes).
    pub pack: String,
    /// Entries.
    pub entries: Vec<IndexEntry>,
}

/// Accumulates sealed blocks into one pack.
#[derive(Clone, Debug)]
pub struct PackBuilder {
    /// Pack bytes so far.
    buf: Vec<u8>,
    /// Index entries so far.
    entries: Vec<IndexEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// An empty pack with room for `bytes` without reallocating (a process server fills its
    /// packs to a known size: growing by doubling would copy each one several times).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(PACK_MAGIC.len()));
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder {
            buf,
            entries: Vec::new(),
        }
    }

    /// Appends a sealed block.
    pub fn add(&mut self, id: BlockId, sealed: &[u8]) {
        self.entries.push(IndexEntry {
            id,
            offset: self.buf.len() as u64,
            len: sealed.len() as u32,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no block was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finishes: returns the pack id (hex of the caller's random `id`: every upload is a new
    /// object, never one garbage collection has seen), pack bytes and index.
    pub fn finish(self, id: [u8; 16]) -> (String, Vec<u8>, PackIndex) {
        let id = hex(&id);
        let idx = PackIndex {
            pack: id.clone(),
            entries: self.entries,
        };
        (id, self.buf, idx)
    }
}

/// How consistent a point's content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Taken with the applications quiesced (freeze hook) from a frozen view.
    AppConsistent,
    /// Taken from a frozen view (snapshot or reflink), like a power cut.
    CrashConsistent,
    /// Read from a live disk without a frozen view: blocks may be from different instants.
    NotConsistent,
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "app-consistent" => Ok(Consistency::AppConsistent),
            "crash-consistent" => Ok(Consistency::CrashConsistent),
            "not-consistent" => Ok(Consistency::NotConsistent),
            _ => Err(format!("unknown consistency {s:?}")),
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::AppConsistent => "app-consistent",
            Consistency::CrashConsistent => "crash-consistent",
            Consistency::NotConsistent => "not-consistent",
        })
    }
}

/// One disk of a recovery point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Disk name (unique within the machine).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Manifest chunk ids.
    pub chunks: Vec<BlockId>,
    /// Merkle root over size, block size and chunk ids.
    pub merkle_root: BlockId,
}

impl DiskRecord {
    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.size_bytes.div_ceil(self.block_size as u64)
    }
}

/// What a point cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PointStats {
    /// Blocks the mobility node sent (changed since the base point).
    pub changed_blocks: u64,
    /// Of those, all-zero blocks (sent as markers, never stored).
    pub zero_blocks: u64,
    /// Payload bytes received from the mobility node.
    pub received_bytes: u64,
    /// Blocks newly stored in the vault.
    pub new_blocks: u64,
    /// Blocks the vault already held (deduplicated).
    pub dedup_blocks: u64,
    /// Sealed bytes written to packs.
    pub stored_bytes: u64,
    /// How long an app-consistent point held the freeze hook, ms.
    #[serde(default)]
    pub freeze_ms: Option<u64>,
}

/// A recovery point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    /// Format version.
    pub format: u16,
    /// Point id (hex of 16 bytes).
    pub id: String,
    /// Protected machine (its mobility node).
    pub machine: NodeId,
    /// Machine name.
    pub machine_name: String,
    /// When the content was captured (mobility node's clock).
    pub captured: UnixMillis,
    /// When the point was committed (process server's clock).
    pub committed: UnixMillis,
    /// Consistency label.
    pub consistency: Consistency,
    /// The point this one was built on (lineage).
    pub parent: Option<String>,
    /// Disks.
    pub disks: Vec<DiskRecord>,
    /// Cost.
    pub stats: PointStats,
}

impl PointRecord {
    /// Object key under `points/`.
    pub fn object_key(&self) -> String {
        point_key(&self.machine, self.captured, &self.id)
    }

    /// Seals the record for its object key (the key is the associated data).
    pub fn seal(&self, key: &DataKey, nonce: [u8; 12]) -> Vec<u8> {
        key.seal_object(&point_ad(&self.object_key()), nonce, &to_rmp(self))
    }

    /// Opens the point stored under `object_key`: the tag must verify with that key as
    /// associated data and the record must name the same machine, time and id.
    ///
    /// Points written before the binding (sealed with the bare kind `point`) still open; for
    /// them the check that the sealed record names the same machine, time and id as its object
    /// key is what refuses a copy under another machine.
    pub fn open(key: &DataKey, object_key: &str, sealed: &[u8]) -> Result<Self, FormatError> {
        let plain = match key.open_object(&point_ad(object_key), sealed) {
            Ok(p) => p,
            Err(FormatError::Auth) => key.open_object("point", sealed)?,
            Err(e) => return Err(e),
        };
        let rec: PointRecord = from_rmp("point", &plain)?;
        if rec.object_key() != object_key {
            return Err(FormatError::Malformed {
                what: "point",
                msg: format!("record is for {}, stored as {object_key}", rec.object_key()),
            });
        }
        Ok(rec)
    }
}

fn point_ad(object_key: &str) -> String {
    format!("point:{object_key}")
}

/// Object key of a point.
pub fn point_key(machine: &NodeId, captured: UnixMillis, id: &str) -> String {
    format!("points/{machine}/{:016}-{id}", captured.0)
}

/// Object key of a pack.
pub fn pack_key(pack: &str) -> String {
    format!("packs/{}/{pack}.pack", &pack[..2.min(pack.len())])
}

/// Object key of a pack's index.
pub fn index_key(pack: &str) -> String {
    format!("packs/{}/{pack}.idx", &pack[..2.min(pack.len())])
}

/// Object key of a process-server session's lease on the chunks it will reference (`name` is
/// `<machine id>-<session id>`).
pub fn lease_key(name: &str) -> String {
    format!("gc/leases/{name}")
}

/// Object key of a chunk.
pub fn chunk_key(id: &BlockId) -> String {
    let h = id.to_hex();
    format!("chunks/{}/{h}", &h[..2])
}

/// The plaintext header of a vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultHeader {
    /// Format version.
    pub format: u16,
    /// Vault name.
    pub name: String,
    /// Vault id (hex).
    pub id: String,
    /// Creation time.
    pub created: UnixMillis,
    /// Block size.
    pub block_size: u32,
    /// [`DataKey::key_check`] of the vault's key.
    pub key_check: String,
}

/// rmp-encodes a value.
pub fn to_rmp<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec(v).unwrap_or_default()
}

/// rmp-decodes a value.
pub fn from_rmp<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    b: &[u8],
) -> Result<T, FormatError> {
    rmp_serde::from_slice(b).map_err(|e| FormatError::Malformed {
        what,
        msg: e.to_string(),
    })
}

pub mod recovery;

#[cfg(test)]
mod tests;
