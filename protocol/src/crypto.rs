//! The Noise crypto resolver: ring for AES-GCM and SHA-256, the default resolver for X25519,
//! and a seeded ChaCha20 generator for ephemeral keys, so that the caller owns the randomness
//! (the I/O shell seeds it from the OS, the simulation from its seed).

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// The Noise protocol name every Lifeboat connection uses.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_AESGCM_SHA256";

/// Seeded random source handed to snow.
struct SeededRng(ChaCha20Rng);

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}
impl CryptoRng for SeededRng {}
impl Random for SeededRng {}

/// Resolver preferring ring's primitives, with a caller-seeded random source.
pub struct SeededResolver {
    /// Seed of the ChaCha20 generator used for ephemeral keys.
    seed: [u8; 32],
}

impl std::fmt::Debug for SeededResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededResolver")
    }
}

impl SeededResolver {
    /// A resolver whose randomness is fully determined by `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        SeededResolver { seed }
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        RingResolver
            .resolve_dh(choice)
            .or_else(|| DefaultResolver.resolve_dh(choice))
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver
            .resolve_hash(choice)
            .or_else(|| DefaultResolver.resolve_hash(choice))
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// A snow builder for Lifeboat's Noise pattern with a seeded resolver.
pub fn builder(seed: [u8; 32]) -> snow::Builder<'static> {
    // The params string is a constant known to parse; a failure would be a build defect.
    let params = NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("noise params"));
    snow::Builder::with_resolver(params, Box::new(SeededResolver::new(seed)))
}

/// Derives a sub-seed for a named purpose from a root seed (domain separation).
pub fn derive_seed(root: &[u8; 32], purpose: &str) -> [u8; 32] {
    blake3::derive_key(&format!("lifeboat seed {purpose}"), root)
}
