//! Node identity: the long-term X25519 static key, the node id and the key fingerprint.
//!
//! Node id = the first 10 bytes of BLAKE3(public key), lowercase base32, 16 characters: short
//! enough to type, stable for the key's life, and collision-free for any realistic mesh.
//! Fingerprint = the first 16 bytes of the same hash, hex, grouped for reading aloud.

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// X25519 public key of a node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The node id this key names.
    pub fn node_id(&self) -> NodeId {
        let h = blake3::hash(&self.0);
        let mut id = [0u8; 10];
        id.copy_from_slice(&h.as_bytes()[..10]);
        NodeId(id)
    }

    /// The fingerprint of this key.
    pub fn fingerprint(&self) -> Fingerprint {
        let h = blake3::hash(&self.0);
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h.as_bytes()[..16]);
        Fingerprint(fp)
    }

    /// Parses a key from a byte slice of exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(PublicKey)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.node_id())
    }
}

/// Short stable identifier of a node, derived from its public key. Serialized as its text form
/// in human-readable formats (JSON state files, map keys) and as 10 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NodeId(pub [u8; 10]);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            serde_bytes::Bytes::new(&self.0).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            serde_bytes::ByteArray::<10>::deserialize(d).map(|b| NodeId(b.into_array()))
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Error parsing a node id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node id {0:?}: expected 16 base32 characters as printed by `lifeboat peers`")]
pub struct NodeIdParseError(pub String);

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = BASE32_NOPAD
            .decode(s.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| NodeIdParseError(s.to_string()))?;
        <[u8; 10]>::try_from(bytes.as_slice())
            .map(NodeId)
            .map_err(|_| NodeIdParseError(s.to_string()))
    }
}

/// Fingerprint of a public key, as printed for humans and carried in registration keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Fingerprint(pub [u8; 16]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A node's long-term static key pair.
#[derive(Clone, Serialize, Deserialize)]
pub struct StaticKeypair {
    /// Private X25519 scalar. Never leaves the node.
    pub private: [u8; 32],
    /// Public key.
    pub public: PublicKey,
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKeypair({})", self.public.node_id())
    }
}

impl StaticKeypair {
    /// Generates a key pair from `seed` (the caller draws the seed from the OS in production).
    pub fn generate(seed: [u8; 32]) -> Self {
        let kp = crate::crypto::builder(seed)
            .generate_keypair()
            .unwrap_or_else(|_| unreachable!("x25519 key generation cannot fail"));
        let mut private = [0u8; 32];
        private.copy_from_slice(&kp.private);
        let mut public = [0u8; 32];
        public.copy_from_slice(&kp.public);
        StaticKeypair {
            private,
            public: PublicKey(public),
        }
    }

    /// Node id of this key pair.
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_generation_is_deterministic_in_the_seed() {
        let a = StaticKeypair::generate([7; 32]);
        let b = StaticKeypair::generate([7; 32]);
        let c = StaticKeypair::generate([8; 32]);
        assert_eq!(a.public, b.public);
        assert_ne!(a.public, c.public);
        assert_eq!(a.node_id().to_string().len(), 16);
    }

    proptest! {
        #[test]
        fn node_id_round_trips_through_text(id: NodeId) {
            let s = id.to_string();
            prop_assert_eq!(s.parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn node_ids_are_text_in_json_and_bytes_on_the_wire() {
        let id = StaticKeypair::generate([3; 32]).node_id();
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&j).unwrap(), id);
        let m: std::collections::BTreeMap<NodeId, u8> = [(id, 1)].into_iter().collect();
        assert!(serde_json::to_string(&m).is_ok());
        let w = rmp_serde::to_vec(&id).unwrap();
        assert!(w.len() <= 12);
        assert_eq!(rmp_serde::from_slice::<NodeId>(&w).unwrap(), id);
    }

    #[test]
    fn bad_node_ids_are_refused() {
        assert!("nope".parse::<NodeId>().is_err());
        assert!("".parse::<NodeId>().is_err());
        assert!("aaaaaaaaaaaaaaaaaaaaaa".parse::<NodeId>().is_err());
    }
}

/// Computes the X25519 public key of a private scalar (to verify a stored key pair).
pub fn public_from_private(private: &[u8; 32]) -> PublicKey {
    use snow::params::DHChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .unwrap_or_else(|| unreachable!("curve25519 is always available"));
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    PublicKey(public)
}
