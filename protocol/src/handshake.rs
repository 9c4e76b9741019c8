//! The Noise `XXpsk3` handshake that opens every connection, as a sans-IO state machine.
//!
//! Call order (each step returns the bytes to write, already record-framed):
//!
//! ```text
//! initiator                                   responder
//! Initiator::start ── msg1: e, {psk id, versions} ──▶ Responder::read_request
//!                                                    (caller picks the PSK by its id and
//!                                                     the version with `negotiate`)
//! Initiator::read_response ◀── msg2: e,ee,s,es, Hello ── Responder::respond
//! (caller checks the responder's key)
//! Initiator::finish ── msg3: s,se,psk, Hello ──▶ Responder::finish
//!                                                    (caller checks membership, then sends
//!                                                     Accept or Refuse as the first frame)
//! ```
//!
//! The prologue is the QUIC connection's TLS exporter: a relay that terminates QUIC on both
//! sides sees two different exporters, so message 1 (whose payload a PSK pattern already
//! encrypts under a key hashing the prologue) fails to authenticate and the handshake dies.
//! The PSK (mesh secret, or a registration key's one-time secret) is mixed in message 3, so a
//! node without it cannot complete the handshake. Message 1's payload is cleartext and carries
//! only a PSK *identifier* (a one-way hash) and the version range.

use crate::identity::{PublicKey, StaticKeypair};
use crate::message::Hello;
use serde::{Deserialize, Serialize};
use snow::{HandshakeState, StatelessTransportState};
use std::sync::Arc;

/// Largest handshake message (the Noise limit).
const MAX_MSG: usize = 65_535;
/// Largest accepted handshake payload: hellos are small; anything bigger is hostile.
const MAX_PAYLOAD: usize = 4096;

/// Identifies which PSK a connection uses without revealing it.
pub type PskId = [u8; 16];

/// Computes the public identifier of a PSK.
pub fn psk_id(psk: &[u8; 32]) -> PskId {
    let k = blake3::derive_key("lifeboat psk id v1", psk);
    let mut id = [0u8; 16];
    id.copy_from_slice(&k[..16]);
    id
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// A handshake message failed authentication.
    #[error("noise handshake failed to authenticate ({0}): wrong mesh secret, or the connection is being relayed by a man in the middle")]
    Auth(&'static str),
    /// A handshake message or payload was malformed.
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    /// The two nodes share no protocol version.
    #[error("no common protocol version: peer speaks {peer_min}..={peer_max}, this node {ours_min}..={ours_max}; upgrade the older node")]
    Version {
        /// Peer's oldest version.
        peer_min: u16,
        /// Peer's newest version.
        peer_max: u16,
        /// Our oldest version.
        ours_min: u16,
        /// Our newest version.
        ours_max: u16,
    },
    /// The peer's static key is not the one expected.
    #[error("peer key {got} is not the expected {expected}")]
    UnexpectedKey {
        /// Fingerprint seen.
        got: String,
        /// Fingerprint expected.
        expected: String,
    },
    /// Internal misuse of the state machine.
    #[error("handshake state error: {0}")]
    State(&'static str),
}

/// Cleartext payload of message 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Which PSK the initiator will mix in message 3.
    pub psk_id: PskId,
    /// Oldest protocol version the initiator speaks.
    pub min_version: u16,
    /// Newest protocol version the initiator speaks.
    pub max_version: u16,
}

/// An established session: the connection's transport keys and what we know of the peer.
pub struct Session {
    /// Transport keys (stateless: nonces are explicit, see [`crate::frame`]).
    pub transport: Arc<StatelessTransportState>,
    /// Peer's authenticated static key.
    pub remote: PublicKey,
    /// What the peer said about itself.
    pub remote_hello: Hello,
    /// Negotiated protocol version.
    pub version: u16,
    /// Noise handshake hash (unique per session).
    pub handshake_hash: [u8; 32],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session(peer={}, v{})",
            self.remote.node_id(),
            self.version
        )
    }
}

/// Picks the protocol version for a peer speaking `min..=max`.
pub fn negotiate(min: u16, max: u16) -> Result<u16, HandshakeError> {
    let v = max.min(crate::PROTOCOL_VERSION);
    if min > max || v < min || v < crate::MIN_PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            peer_min: min,
            peer_max: max,
            ours_min: crate::MIN_PROTOCOL_VERSION,
            ours_max: crate::PROTOCOL_VERSION,
        });
    }
    Ok(v)
}

/// Prefixes a handshake message with its u16 length.
fn record(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Takes one length-prefixed handshake record from the front of `buf`, if complete.
pub fn take_record(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, HandshakeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if len == 0 {
        return Err(HandshakeError::Malformed("empty handshake record".into()));
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    let rec = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Ok(Some(rec))
}

fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, HandshakeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(HandshakeError::Malformed(
            "handshake payload too large".into(),
        ));
    }
    rmp_serde::from_slice(payload).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, HandshakeError> {
    rmp_serde::to_vec(v).map_err(|e| HandshakeError::Malformed(e.to_string()))
}

fn into_session(
    hs: HandshakeState,
    remote_hello: Hello,
    version: u16,
) -> Result<Session, HandshakeError> {
    let remote = hs
        .get_remote_static()
        .and_then(PublicKey::from_slice)
        .ok_or(HandshakeError::State("no remote static key"))?;
    let mut handshake_hash = [0u8; 32];
    handshake_hash.copy_from_slice(&hs.get_handshake_hash()[..32]);
    let transport = hs
        .into_stateless_transport_mode()
        .map_err(|_| HandshakeError::State("handshake not finished"))?;
    Ok(Session {
        transport: Arc::new(transport),
        remote,
        remote_hello,
        version,
        handshake_hash,
    })
}

/// The connecting side.
pub struct Initiator {
    /// snow's handshake state.
    hs: HandshakeState,
    /// Our hello, sent in message 3.
    hello: Hello,
    /// Version chosen by the responder (after message 2).
    version: Option<u16>,
    /// The responder's hello (after message 2).
    remote_hello: Option<Hello>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts a handshake; returns the state machine and message 1 (record-framed).
    pub fn start(
        local: &StaticKeypair,
        psk: &[u8; 32],
        prologue: &[u8],
        hello: Hello,
        seed: [u8; 32],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = crate::crypto::builder(seed)
            .local_private_key(&local.private)
            .prologue(prologue)
            .psk(3, psk)
            .build_initiator()
            .map_err(|_| HandshakeError::State("build initiator"))?;
        let req = encode(&Request {
            psk_id: psk_id(psk),
            min_version: crate::MIN_PROTOCOL_VERSION,
            max_version: crate::PROTOCOL_VERSION,
        })?;
        let mut buf = vec![0u8; MAX_MSG];
        let n = hs
            .write_message(&req, &mut buf)
            .map_err(|_| HandshakeError::State("write message 1"))?;
        let me = Initiator {
            hs,
            hello,
            version: None,
            remote_hello: None,
        };
        Ok((me, record(&buf[..n])))
    }

    /// Reads message 2; returns the responder's authenticated key and hello for the caller to
    /// check before [`Initiator::finish`].
    pub fn read_response(&mut self, msg: &[u8]) -> Result<(PublicKey, Hello), HandshakeError> {
        if self.version.is_some() {
            return Err(HandshakeError::State("message 2 already read"));
        }
        let mut payload = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Auth("message 2"))?;
        let hello: Hello = decode(&payload[..n])?;
        negotiate(hello.version, hello.version)?;
        let key = self
            .hs
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or(HandshakeError::State("no responder key"))?;
        self.version = Some(hello.version);
        self.remote_hello = Some(hello.clone());
        Ok((key, hello))
    }

    /// Writes message 3 and returns it with the session.
    pub fn finish(mut self) -> Result<(Vec<u8>, Session), HandshakeError> {
        let (Some(version), Some(remote_hello)) = (self.version, self.remote_hello.take()) else {
            return Err(HandshakeError::State("finish before message 2"));
        };
        self.hello.version = version;
        let payload = encode(&self.hello)?;
        let mut buf = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .write_message(&payload, &mut buf)
            .map_err(|_| HandshakeError::State("write message 3"))?;
        let session = into_session(self.hs, remote_hello, version)?;
        Ok((record(&buf[..n]), session))
    }
}

/// The accepting side.
pub struct Responder {
    /// snow's handshake state.
    hs: HandshakeState,
    /// Version chosen in [`Responder::respond`].
    version: Option<u16>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl Responder {
    /// A responder bound to the connection's `prologue`.
    pub fn new(
        local: &StaticKeypair,
        prologue: &[u8],
        seed: [u8; 32],
    ) -> Result<Self, HandshakeError> {
        let hs = crate::crypto::builder(seed)
            .local_private_key(&local.private)
            .prologue(prologue)
            .build_responder()
            .map_err(|_| HandshakeError::State("build responder"))?;
        Ok(Responder { hs, version: None })
    }

    /// Reads message 1: which PSK the initiator uses and which versions it speaks.
    pub fn read_request(&mut self, msg: &[u8]) -> Result<Request, HandshakeError> {
        let mut payload = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Auth("message 1"))?;
        decode(&payload[..n])
    }

    /// Sets the PSK chosen by id and writes message 2 carrying `hello` (whose `version` is the
    /// negotiated one).
    pub fn respond(&mut self, psk: &[u8; 32], hello: &Hello) -> Result<Vec<u8>, HandshakeError> {
        self.hs
            .set_psk(3, psk)
            .map_err(|_| HandshakeError::State("set psk"))?;
        let payload = encode(hello)?;
        let mut buf = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .write_message(&payload, &mut buf)
            .map_err(|_| HandshakeError::State("write message 2"))?;
        self.version = Some(hello.version);
        Ok(record(&buf[..n]))
    }

    /// Reads message 3 and returns the session; the caller then checks admission.
    pub fn finish(mut self, msg: &[u8]) -> Result<Session, HandshakeError> {
        let version = self
            .version
            .ok_or(HandshakeError::State("finish before respond"))?;
        let mut payload = vec![0u8; MAX_MSG];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Auth("message 3"))?;
        let hello: Hello = decode(&payload[..n])?;
        into_session(self.hs, hello, version)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hello(name: &str) -> Hello {
        Hello {
            name: name.into(),
            roles: vec![],
            listen_port: 9443,
            mesh_id: None,
            version: 0,
        }
    }

    fn strip(rec: Vec<u8>) -> Vec<u8> {
        let mut b = rec;
        take_record(&mut b).unwrap().unwrap()
    }

    /// Runs a handshake; `psk_r` is what the responder believes the PSK is.
    fn run(
        psk_i: [u8; 32],
        psk_r: [u8; 32],
        prologue_i: &[u8],
        prologue_r: &[u8],
    ) -> Result<(Session, Session), HandshakeError> {
        let a = StaticKeypair::generate([1; 32]);
        let b = StaticKeypair::generate([2; 32]);
        let (mut i, m1) = Initiator::start(&a, &psk_i, prologue_i, hello("a"), [3; 32])?;
        let mut r = Responder::new(&b, prologue_r, [4; 32])?;
        let req = r.read_request(&strip(m1))?;
        let v = negotiate(req.min_version, req.max_version)?;
        let m2 = r.respond(
            &psk_r,
            &Hello {
                version: v,
                ..hello("b")
            },
        )?;
        let (kb, hb) = i.read_response(&strip(m2))?;
        assert_eq!(kb, b.public);
        assert_eq!(hb.name, "b");
        let (m3, si) = i.finish()?;
        let sr = r.finish(&strip(m3))?;
        assert_eq!(sr.remote, a.public);
        assert_eq!(sr.handshake_hash, si.handshake_hash);
        Ok((si, sr))
    }

    pub(crate) fn session_pair() -> (Session, Session) {
        run([9; 32], [9; 32], b"p", b"p").unwrap()
    }

    #[test]
    fn matching_psk_and_prologue_complete() {
        let (i, r) = session_pair();
        assert_eq!(i.version, crate::PROTOCOL_VERSION);
        assert_eq!(r.remote_hello.name, "a");
    }

    #[test]
    fn wrong_psk_fails_at_message_3() {
        assert_eq!(
            run([9; 32], [8; 32], b"p", b"p").err(),
            Some(HandshakeError::Auth("message 3"))
        );
    }

    #[test]
    fn different_prologues_fail_at_message_1() {
        // With a PSK pattern, message 1's payload is already encrypted under a key that hashes
        // the prologue, so a relay is caught by the very first message.
        assert_eq!(
            run([9; 32], [9; 32], b"exporter-a", b"exporter-b").err(),
            Some(HandshakeError::Auth("message 1"))
        );
    }

    #[test]
    fn psk_id_identifies_without_revealing() {
        assert_eq!(psk_id(&[1; 32]), psk_id(&[1; 32]));
        assert_ne!(psk_id(&[1; 32]), psk_id(&[2; 32]));
        assert_ne!(&psk_id(&[1; 32])[..], &[1u8; 16][..]);
    }

    #[test]
    fn version_negotiation_refuses_disjoint_ranges() {
        assert_eq!(negotiate(1, 7), Ok(crate::PROTOCOL_VERSION));
        assert!(negotiate(crate::PROTOCOL_VERSION + 1, crate::PROTOCOL_VERSION + 3).is_err());
        assert!(negotiate(3, 2).is_err());
    }

    #[test]
    fn garbage_message_1_is_an_error() {
        let b = StaticKeypair::generate([2; 32]);
        let mut r = Responder::new(&b, b"p", [4; 32]).unwrap();
        assert!(r.read_request(&[1, 2, 3]).is_err());
        let mut buf = vec![0, 0];
        assert!(take_record(&mut buf).is_err());
    }
}
