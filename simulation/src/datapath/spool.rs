//! The simulated spool: segments in memory, and a disk that fills up now and then (a write
//! fails, as `DirSpool`'s does when the process server's disk is full).

use lifeboat_actors::seams::Spool;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A process server's spool in memory.
#[derive(Debug)]
pub struct SimSpool {
    state: Mutex<(BTreeMap<String, Vec<u8>>, ChaCha8Rng)>,
    /// Writes that fail, per mille.
    full_permille: u64,
    /// Segments written since last asked.
    writes: std::sync::atomic::AtomicU64,
}

impl SimSpool {
    /// An empty spool whose writes fail `full_permille` times in a thousand (from `seed`).
    pub fn new(seed: u64, full_permille: u64) -> Self {
        SimSpool {
            state: Mutex::new((BTreeMap::new(), ChaCha8Rng::seed_from_u64(seed))),
            full_permille,
            writes: Default::default(),
        }
    }

    /// Segments written since the last call.
    pub fn take_writes(&self) -> u64 {
        self.writes.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// The segments it holds.
    pub fn names(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.0.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Spool for SimSpool {
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let mut s = self.state.lock().map_err(|_| "spool poisoned")?;
        if s.1.next_u64() % 1000 < self.full_permille {
            return Err(
                "spool write failed (disk full?): no space left on device (simulated)".into(),
            );
        }
        s.0.insert(name.to_string(), bytes.to_vec());
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        let s = self.state.lock().map_err(|_| "spool poisoned")?;
        s.0.get(name)
            .cloned()
            .ok_or_else(|| format!("spool read: segment {name} is missing"))
    }

    fn remove(&self, name: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.0.remove(name);
        }
    }
}
