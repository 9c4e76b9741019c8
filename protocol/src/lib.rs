//! Lifeboat's wire protocol, sans-IO.
//!
//! This crate owns every byte that crosses the network between two Lifeboat nodes and nothing
//! else: it never opens a socket, reads a clock or asks the OS for randomness. Time comes in as
//! [`UnixMillis`] arguments and randomness as explicit seeds, so the simulation can replay any
//! exchange exactly.
//!
//! Data flows through it like this:
//!
//! 1. [`identity`]: a node's long-term X25519 key, its [`NodeId`] and fingerprint.
//! 2. [`handshake`]: the Noise `XXpsk3` handshake run on the first QUIC stream, bound to the QUIC
//!    connection by its TLS exporter (the prologue). It yields a [`handshake::Session`].
//! 3. [`frame`]: after the handshake every stream carries Noise-encrypted records; records carry
//!    length-prefixed frames; frames carry an [`message::Envelope`] (protocol version + message).
//! 4. [`message`]: the typed messages (heartbeats, role commands, registration, membership).
//! 5. [`regkey`]: the printable registration key a configuration node issues to joining nodes.

pub mod crypto;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod message;
pub mod name;
pub mod regkey;
pub mod time;
pub mod vault;

pub use identity::{Fingerprint, NodeId, PublicKey, StaticKeypair};
pub use message::{Envelope, Member, Message, Role};
pub use time::UnixMillis;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Default UDP port of a node (QUIC).
pub const DEFAULT_PORT: u16 = 9443;
/// ALPN identifier of Lifeboat's QUIC connections.
pub const ALPN: &[u8] = b"lifeboat/1";
/// Label of the TLS exporter whose output is the Noise prologue (channel binding).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-lifeboat-noise-v1";
/// Length of the TLS exporter output used as prologue.
pub const EXPORTER_LEN: usize = 32;
/// mDNS service type nodes announce themselves under.
pub const MDNS_SERVICE: &str = "_lifeboat._udp.local.";
