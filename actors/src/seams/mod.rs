//! The I/O seams. Each has a real implementation in `lifeboat-node` and a simulated one in
//! `lifeboat-simulation`. All are non-blocking: a call enqueues work and returns; results come
//! back to the state machines as `handle_*` events.

use lifeboat_config::state::{MeshFile, RolesFile};
use lifeboat_protocol::{Message, NodeId, Role, UnixMillis};
use std::net::SocketAddr;

/// Wall clock.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// Source of seeds. Production draws from the OS; the simulation from its master seed.
pub trait Rng: Send + 'static {
    /// 32 fresh random bytes.
    fn seed32(&mut self) -> [u8; 32];
}

/// Why a send could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// No authenticated connection to the peer exists.
    #[error("no connection to {0}")]
    NotConnected(NodeId),
    /// The outgoing queue to the peer is full (backpressure).
    #[error("send queue to {0} is full")]
    Full(NodeId),
    /// The transport is shutting down.
    #[error("transport is closed")]
    Closed,
}

/// Authenticated peer channels.
pub trait Transport: Send + Sync + 'static {
    /// Queues a one-way message to a connected peer.
    fn send(&self, to: NodeId, msg: Message) -> Result<(), TransportError>;
    /// Starts connecting to an address (result arrives as a connected or dial-failed event).
    fn dial(&self, addr: SocketAddr, expect: Option<NodeId>);
}

/// What a node announces about itself on the local link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Node id.
    pub node_id: NodeId,
    /// Key fingerprint (text).
    pub fingerprint: String,
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// QUIC port.
    pub port: u16,
    /// Mesh id (hex) if joined.
    pub mesh: Option<String>,
}

/// Local-link discovery.
pub trait Discovery: Send + 'static {
    /// Publishes (or republishes, after a change) our announcement.
    fn announce(&mut self, ann: &Announcement);
    /// Withdraws our announcement (shutdown).
    fn withdraw(&mut self);
}

/// A peer found by discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// Node id.
    pub node_id: NodeId,
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Addresses (with the announced port).
    pub addrs: Vec<SocketAddr>,
}

/// Persistence of role and mesh state.
pub trait StateStore: Send + 'static {
    /// Saves the roles.
    fn save_roles(&mut self, roles: &RolesFile) -> Result<(), String>;
    /// Saves the mesh file.
    fn save_mesh(&mut self, mesh: &MeshFile) -> Result<(), String>;
}

mod data;
pub use data::*;
