//! Registration keys: what a configuration node hands an operator to let one node join.
//!
//! Text form: `lbk1-` followed by lowercase base32 of `rmp(RegistrationKey) || blake3[..4]`.
//! The checksum catches copy-paste damage before any network traffic; security does not rest on
//! it (the one-time secret is the PSK of the registration handshake, and the configuration node
//! checks expiry and single use itself).

use crate::identity::Fingerprint;
use crate::time::UnixMillis;
use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Text prefix of a registration key.
pub const PREFIX: &str = "lbk1-";
/// Default validity of a registration key (5 days, as the reference product's vault key).
pub const DEFAULT_VALIDITY_MS: u64 = 5 * 24 * 3600 * 1000;
/// Largest clock difference accepted at registration (5 minutes).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Everything a joining node needs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RegistrationKey {
    /// Mesh the key admits to.
    pub mesh_id: [u8; 16],
    /// Fingerprint of the configuration node's static key; the joining node checks it.
    pub config_fingerprint: Fingerprint,
    /// Where the configuration node listens.
    #[cfg_attr(test, proptest(strategy = "crate::message::arb_addrs()"))]
    pub config_addrs: Vec<SocketAddr>,
    /// One-time secret: the PSK of the registration handshake.
    pub secret: [u8; 32],
    /// When the key was issued (configuration node's clock).
    pub issued: UnixMillis,
    /// When the key stops working (configuration node's clock).
    pub expires: UnixMillis,
}

/// Debug output never shows the one-time secret.
impl std::fmt::Debug for RegistrationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationKey")
            .field("mesh_id", &self.mesh_id)
            .field("config_fingerprint", &self.config_fingerprint)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why a registration key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegKeyError {
    /// Not a Lifeboat key at all.
    #[error("not a lifeboat registration key (it should start with {PREFIX}); copy the whole line printed by `lifeboat key issue`")]
    Prefix,
    /// Damaged in transit.
    #[error("registration key is damaged (checksum mismatch); copy it again, whole")]
    Checksum,
    /// Decodable text but not a key.
    #[error("registration key is malformed: {0}")]
    Malformed(String),
}

impl RegistrationKey {
    /// Text form.
    pub fn encode(&self) -> String {
        let mut bytes = rmp_serde::to_vec(self).unwrap_or_default();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..4]);
        format!(
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }

    /// Parses the text form.
    pub fn decode(text: &str) -> Result<Self, RegKeyError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(RegKeyError::Prefix)?;
        if body.len() > 8192 {
            return Err(RegKeyError::Malformed("too long".into()));
        }
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| RegKeyError::Checksum)?;
        if bytes.len() < 5 {
            return Err(RegKeyError::Checksum);
        }
        let (data, sum) = bytes.split_at(bytes.len() - 4);
        if &blake3::hash(data).as_bytes()[..4] != sum {
            return Err(RegKeyError::Checksum);
        }
        rmp_serde::from_slice(data).map_err(|e| RegKeyError::Malformed(e.to_string()))
    }

    /// One-time key identifier (the registration PSK's id).
    pub fn key_id(&self) -> crate::handshake::PskId {
        crate::handshake::psk_id(&self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip_through_text(k: RegistrationKey) {
            prop_assert_eq!(RegistrationKey::decode(&k.encode()).unwrap(), k);
        }

        #[test]
        fn garbage_never_panics(s in ".{0,200}") {
            let _ = RegistrationKey::decode(&s);
        }
    }

    #[test]
    fn damaged_keys_are_refused_with_a_reason() {
        let k = RegistrationKey {
            mesh_id: [1; 16],
            config_fingerprint: Fingerprint([2; 16]),
            config_addrs: vec!["127.0.0.1:9443".parse().unwrap()],
            secret: [3; 32],
            issued: UnixMillis(1),
            expires: UnixMillis(2),
        };
        let mut t = k.encode();
        assert_eq!(RegistrationKey::decode("hello"), Err(RegKeyError::Prefix));
        let last = t.pop().unwrap();
        t.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(RegistrationKey::decode(&t), Err(RegKeyError::Checksum));
    }
}
