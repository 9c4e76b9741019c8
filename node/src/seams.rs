//! Real implementations of the seams the role logic uses: the system clock, the OS random
//! source, and persistence into the state directory.

use lifeboat_actors::seams::{Clock, Rng, StateStore};
use lifeboat_config::state::{self, MeshFile, RolesFile};
use lifeboat_config::StateDir;
use lifeboat_protocol::UnixMillis;
use rand::RngCore;

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        now()
    }
}

/// Now, from the system clock.
pub fn now() -> UnixMillis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(d.as_millis() as u64)
}

/// The OS random source.
#[derive(Debug, Default)]
pub struct OsRng;

impl Rng for OsRng {
    fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut s);
        s
    }
}

/// Persistence into a state directory.
#[derive(Debug, Clone)]
pub struct DirStore(pub StateDir);

impl StateStore for DirStore {
    fn save_roles(&mut self, roles: &RolesFile) -> Result<(), String> {
        state::save_roles(&self.0, roles).map_err(|e| e.to_string())
    }
    fn save_mesh(&mut self, mesh: &MeshFile) -> Result<(), String> {
        state::save_mesh(&self.0, mesh).map_err(|e| e.to_string())
    }
}
