//! Lifeboat's role logic.
//!
//! Decisions live in plain, sans-IO state machines that take `now` and seeds as arguments:
//!
//! - [`roles::RoleSet`]: which roles this node holds.
//! - [`mesh::Mesh`]: mesh membership, registration keys, admission and authority checks.
//! - [`peers::PeerTable`]: what we know of other nodes, liveness, whom to dial and heartbeat.
//!
//! The I/O they need goes through the seam traits in [`seams`] (`Transport`, `Discovery`,
//! `Clock`, `Rng`, `StateStore`). The actix actors in [`shell`] host the state machines in the
//! daemon; the simulation crate drives the same state machines directly over in-memory seams.

pub mod authz;
pub mod backoff;
pub mod catalog;
pub mod datapath;
pub mod gc;
pub mod mesh;
pub mod peers;
pub mod plant;
pub mod replication;
pub mod roles;
pub mod seams;
pub mod shell;
pub mod tracking;

pub use seams::{Clock, Discovery, Rng, StateStore, Transport};
