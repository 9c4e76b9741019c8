//! The recovery key: a paper key printed once by `vault create`, with which a fresh node at the
//! recovery site opens the vault when the configuration node (the only holder of the data key)
//! is lost with its site.
//!
//! The vault holds its data key (master and rotations) wrapped by the recovery key
//! (`recovery/key`, AEAD under a key derived from the recovery key, the object key as the
//! kind), so the recovery key alone, with the store's URL and credentials, opens the vault.
//! The paper form is 32 random bytes and a CRC-16 in RFC 4648 base32, in dashed
//! groups of four after `LBRK`: a typo is caught by the checksum before any decryption, and a
//! key of another vault by the AEAD tag.

use super::{from_rmp, to_rmp, DataKey, FormatError};
use serde::{Deserialize, Serialize};

/// Object key of the wrapped data key.
pub const RECOVERY_KEY_OBJECT: &str = "recovery/key";
/// Object key of the configuration mirror (sealed with the data key).
pub const RECOVERY_CONFIG_OBJECT: &str = "recovery/config";
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const PREFIX: &str = "LBRK";

/// A recovery key.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKey([u8; 32]);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

/// What `recovery/key` holds (no `Debug`: it is the data key).
#[allow(missing_debug_implementations)]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKeys {
    /// Master data key.
    pub master: [u8; 32],
    /// Rotations, oldest first.
    pub rotations: Vec<[u8; 32]>,
}

impl RecoveryKey {
    /// A key from 32 random bytes (the caller's randomness).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        RecoveryKey(b)
    }

    /// CRC-16/CCITT of the key: it catches every error within 16 consecutive bits, so every
    /// single mistyped character (5 bits) and every pair of adjacent ones.
    fn checksum(&self) -> [u8; 2] {
        let mut crc: u16 = 0xffff;
        for &b in &self.0 {
            crc ^= (b as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc.to_be_bytes()
    }

    /// The paper form: `LBRK-XXXX-XXXX-...`.
    pub fn to_paper(&self) -> String {
        let mut bytes = self.0.to_vec();
        bytes.extend_from_slice(&self.checksum());
        let mut out = String::from(PREFIX);
        for (i, c) in base32(&bytes).chars().enumerate() {
            if i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }

    /// Parses the paper form (case, spaces and dashes do not matter).
    pub fn parse(s: &str) -> Result<Self, String> {
        let clean: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .to_ascii_uppercase();
        let body = clean
            .strip_prefix(PREFIX)
            .ok_or("a recovery key starts with LBRK-")?;
        let bytes = unbase32(body).ok_or("the recovery key has a character outside A-Z, 2-7")?;
        if bytes.len() != 34 {
            return Err("the recovery key is too short or too long".into());
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes[..32]);
        let key = RecoveryKey(k);
        if key.checksum() != bytes[32..34] {
            return Err("the recovery key has a typo (its checksum does not match)".into());
        }
        Ok(key)
    }

    /// The key that wraps the data key (kept by the configuration node, 0600, so that a
    /// `vault rekey` can wrap the new rotation too; it opens nothing the data key it sits next
    /// to does not).
    pub fn wrap_key(&self) -> [u8; 32] {
        blake3::derive_key("lifeboat recovery key wrap v1", &self.0)
    }

    /// Opens `recovery/key`: the data key, or `FormatError::Auth` for a key of another vault.
    pub fn unwrap(&self, sealed: &[u8]) -> Result<DataKey, FormatError> {
        unwrap_keys(&self.wrap_key(), sealed)
    }
}

/// Seals the data key (with its rotations) for `recovery/key` under `wrap_key`.
pub fn wrap_keys(wrap_key: &[u8; 32], key: &DataKey, nonce: [u8; 12]) -> Vec<u8> {
    let w = WrappedKeys {
        master: key.master(),
        rotations: key.rotations().to_vec(),
    };
    DataKey::from_master(*wrap_key).seal_object(RECOVERY_KEY_OBJECT, nonce, &to_rmp(&w))
}

/// Opens `recovery/key` with `wrap_key`.
pub fn unwrap_keys(wrap_key: &[u8; 32], sealed: &[u8]) -> Result<DataKey, FormatError> {
    let plain = DataKey::from_master(*wrap_key).open_object(RECOVERY_KEY_OBJECT, sealed)?;
    let w: WrappedKeys = from_rmp("recovery key", &plain)?;
    Ok(DataKey::with_rotations(w.master, w.rotations))
}

fn base32(b: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &x in b {
        acc = (acc << 8) | x as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Padding bits are zero: two spellings of one key are not both accepted.
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn paper_keys_round_trip_and_any_one_typo_is_caught(
            k in any::<[u8; 32]>(), pos in 0usize..55, sub in 0usize..31
        ) {
            let key = RecoveryKey::from_bytes(k);
            let paper = key.to_paper();
            prop_assert_eq!(RecoveryKey::parse(&paper).unwrap(), key.clone());
            prop_assert_eq!(
                RecoveryKey::parse(&paper.to_lowercase().replace('-', " ")).unwrap(),
                key
            );
            // Change one character of the body to another letter of the alphabet.
            let body: Vec<char> = paper[5..].chars().filter(|c| *c != '-').collect();
            let mut typo = body.clone();
            let old = ALPHABET.iter().position(|&a| a as char == typo[pos]).unwrap();
            typo[pos] = ALPHABET[(old + 1 + sub) % 32] as char;
            let typo: String = typo.into_iter().collect();
            let typo = format!("LBRK{typo}");
            prop_assert!(RecoveryKey::parse(&typo).is_err());
        }
    }

    #[test]
    fn only_the_right_recovery_key_unwraps_the_data_key() {
        let data = DataKey::with_rotations([7; 32], vec![[8; 32]]);
        let rk = RecoveryKey::from_bytes([1; 32]);
        let sealed = wrap_keys(&rk.wrap_key(), &data, [0; 12]);
        let back = rk.unwrap(&sealed).unwrap();
        assert_eq!(back.master(), [7; 32]);
        assert_eq!(back.rotations(), &[[8; 32]]);
        assert!(RecoveryKey::from_bytes([2; 32]).unwrap(&sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(rk.unwrap(&bad).is_err());
    }
}
