//! Records and frames: how bytes move on a stream once the handshake is done.
//!
//! ```text
//! stream  := record*
//! record  := len:u16be  ciphertext[len]           (Noise transport message, len <= 65535)
//! frame   := plaintext of consecutive records = size:u32be  body[size]
//! body    := rmp-serde(Envelope)                  (size <= MAX_FRAME_BYTES)
//! ```
//!
//! Records are sealed with the connection's Noise transport keys using an explicit nonce
//! `stream_index << 32 | record_seq`. QUIC stream ids are unique per connection and each
//! direction has its own Noise key, so no (key, nonce) pair is ever reused, and because the
//! receiver computes the nonce itself, a record that is replayed, reordered, moved to another
//! stream or altered fails authentication. A frame larger than the bound is refused from its
//! size field, before any of it is buffered.

use crate::message::Envelope;
use snow::StatelessTransportState;
use std::sync::Arc;

/// Largest ciphertext of one record (the Noise message limit).
pub const MAX_RECORD: usize = 65_535;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Largest plaintext of one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Hard bound on an encoded frame body (16 MiB).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Largest stream index a nonce can carry.
pub const MAX_STREAM_INDEX: u64 = u32::MAX as u64;

/// Why a frame could not be sealed or opened. Any of these closes the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A record failed authentication: tampered, replayed, reordered or wrong key.
    #[error("record {seq} failed authentication (tampered, replayed or not from this peer)")]
    Auth {
        /// Sequence number of the failing record.
        seq: u32,
    },
    /// The frame announced a size above the bound.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The frame body is not a valid envelope.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A well-formed envelope of a message kind this build does not know (a newer peer's):
    /// the frame is consumed, and a reader may go on with the next one.
    #[error("message kind {0:?} is unknown to this build (a newer peer's); skipped")]
    UnknownKind(String),
    /// The envelope carries a protocol version other than the negotiated one.
    #[error("frame has protocol version {got}, connection negotiated {expected}")]
    Version {
        /// Version in the envelope.
        got: u16,
        /// Negotiated version.
        expected: u16,
    },
    /// A zero-length record (never produced by a correct peer).
    #[error("empty record")]
    EmptyRecord,
    /// The stream ended in the middle of a record or frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Too many records on one stream (nonce space exhausted) or stream index too large.
    #[error("nonce space of the stream exhausted")]
    NonceExhausted,
}

/// Encodes an envelope to a frame body.
pub fn encode_body(env: &Envelope) -> Result<Vec<u8>, FrameError> {
    encode_body_sized(env, 0)
}

/// [`encode_body`] into a buffer with room for `hint` bytes (a sender that knows roughly how
/// big its frame is saves the copies of growing the buffer by doubling).
pub fn encode_body_sized(env: &Envelope, hint: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(hint.min(MAX_FRAME_BYTES));
    rmp_serde::encode::write(&mut body, env).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(body)
}

/// Decodes a frame body. Never panics; allocation is bounded by the body length.
pub fn decode_body(body: &[u8]) -> Result<Envelope, FrameError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    rmp_serde::from_slice(body).map_err(|e| match unknown_kind(body, &e) {
        Some(kind) => FrameError::UnknownKind(kind),
        None => FrameError::Malformed(e.to_string()),
    })
}

/// The message kind of a body that is a well-formed envelope (`[version, kind]` or
/// `[version, {kind: content}]`, as rmp-serde writes an externally tagged enum) whose kind is
/// not one of this build's, if that is why it did not decode.
fn unknown_kind(body: &[u8], e: &rmp_serde::decode::Error) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Kind(String);
    struct KindVisitor;
    impl<'de> Visitor<'de> for KindVisitor {
        type Value = Kind;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a message kind")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Kind, E> {
            Ok(Kind(v.to_string()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Kind, A::Error> {
            let (k, IgnoredAny) = m
                .next_entry::<String, IgnoredAny>()?
                .ok_or_else(|| serde::de::Error::custom("empty map"))?;
            if m.next_key::<IgnoredAny>()?.is_some() {
                return Err(serde::de::Error::custom("more than one kind"));
            }
            Ok(Kind(k))
        }
    }
    impl<'de> serde::Deserialize<'de> for Kind {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
            d.deserialize_any(KindVisitor)
        }
    }
    #[derive(serde::Deserialize)]
    struct Probe(#[allow(dead_code)] u16, Kind);
    let Probe(_, Kind(kind)) = rmp_serde::from_slice(body).ok()?;
    let plausible = !kind.is_empty()
        && kind.len() <= 64
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    // The error must be about this kind, not about a nested enum inside a known message.
    (plausible && e.to_string().contains(&format!("unknown variant `{kind}`"))).then_some(kind)
}

fn nonce(stream: u32, seq: u32) -> u64 {
    ((stream as u64) << 32) | seq as u64
}

/// Seals frames for one direction of one stream.
pub struct FrameSealer {
    /// Connection transport keys.
    cipher: Arc<StatelessTransportState>,
    /// Stream index (high half of the nonce).
    stream: u32,
    /// Next record sequence number (low half of the nonce).
    seq: u32,
    /// Set once the nonce space is used up; nothing more can be sealed.
    exhausted: bool,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameSealer(stream={}, seq={})", self.stream, self.seq)
    }
}

impl FrameSealer {
    /// A sealer for stream `stream_index` (the QUIC stream id).
    pub fn new(
        cipher: Arc<StatelessTransportState>,
        stream_index: u64,
    ) -> Result<Self, FrameError> {
        let stream = u32::try_from(stream_index).map_err(|_| FrameError::NonceExhausted)?;
        Ok(FrameSealer {
            cipher,
            stream,
            seq: 0,
            exhausted: false,
        })
    }

    /// Seals `env` and appends the records to `out`.
    pub fn seal(&mut self, env: &Envelope, out: &mut Vec<u8>) -> Result<(), FrameError> {
        self.seal_sized(env, 0, out)
    }

    /// [`FrameSealer::seal`] of a frame expected to take about `hint` bytes encoded.
    pub fn seal_sized(
        &mut self,
        env: &Envelope,
        hint: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        let body = encode_body_sized(env, hint)?;
        self.seal_body(&body, out)
    }

    /// Seals raw frame plaintext (size header included) as records. Correct callers use
    /// [`FrameSealer::seal`]; this exists so tests can forge frames a broken or hostile peer
    /// would send (lying size fields, garbage bodies).
    pub fn seal_plaintext(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        for chunk in plain.chunks(MAX_RECORD_PLAINTEXT) {
            self.seal_record(chunk, out)?;
        }
        Ok(())
    }

    /// Seals an already-encoded body and appends the records to `out`. The records cut the
    /// plaintext `size || body` every [`MAX_RECORD_PLAINTEXT`] bytes; only the first record is
    /// assembled in a small buffer, the rest are sealed straight from `body`.
    pub fn seal_body(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let size = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
            size: body.len(),
            max: MAX_FRAME_BYTES,
        })?;
        out.reserve(4 + body.len() + ((4 + body.len()) / MAX_RECORD_PLAINTEXT + 1) * (2 + TAG_LEN));
        let first = body.len().min(MAX_RECORD_PLAINTEXT - 4);
        let mut head = Vec::with_capacity(4 + first);
        head.extend_from_slice(&size.to_be_bytes());
        head.extend_from_slice(&body[..first]);
        self.seal_record(&head, out)?;
        for chunk in body[first..].chunks(MAX_RECORD_PLAINTEXT) {
            self.seal_record(chunk, out)?;
        }
        Ok(())
    }

    fn seal_record(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if self.exhausted {
            return Err(FrameError::NonceExhausted);
        }
        let start = out.len();
        let ct_len = chunk.len() + TAG_LEN;
        out.extend_from_slice(&(ct_len as u16).to_be_bytes());
        out.resize(start + 2 + ct_len, 0);
        let n = self
            .cipher
            .write_message(nonce(self.stream, self.seq), chunk, &mut out[start + 2..])
            .map_err(|_| FrameError::NonceExhausted)?;
        debug_assert_eq!(n, ct_len);
        match self.seq.checked_add(1) {
            Some(s) => self.seq = s,
            None => self.exhausted = true,
        }
        Ok(())
    }
}

/// Opens frames from one direction of one stream. Feed bytes with [`FrameOpener::push`], then
/// call [`FrameOpener::poll_frame`] until it returns `Ok(None)`.
pub struct FrameOpener {
    /// Connection transport keys.
    cipher: Arc<StatelessTransportState>,
    /// Stream index (high half of the nonce).
    stream: u32,
    /// Next expected record sequence number.
    seq: u32,
    /// Received bytes not yet consumed as whole records (at most one partial record after polling).
    inbuf: Vec<u8>,
    /// Decrypted plaintext of the frame being assembled.
    frame: Vec<u8>,
    /// Negotiated protocol version; envelopes must carry it.
    version: u16,
    /// Frame bound (normally [`MAX_FRAME_BYTES`]).
    max_frame: usize,
}

impl std::fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameOpener(stream={}, seq={})", self.stream, self.seq)
    }
}

impl FrameOpener {
    /// An opener for stream `stream_index`, accepting envelopes of `version`.
    pub fn new(
        cipher: Arc<StatelessTransportState>,
        stream_index: u64,
        version: u16,
    ) -> Result<Self, FrameError> {
        let stream = u32::try_from(stream_index).map_err(|_| FrameError::NonceExhausted)?;
        Ok(FrameOpener {
            cipher,
            stream,
            seq: 0,
            inbuf: Vec::new(),
            frame: Vec::new(),
            version,
            max_frame: MAX_FRAME_BYTES,
        })
    }

    /// Lowers the frame bound (for streams that only carry small control messages).
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max.min(MAX_FRAME_BYTES);
        self
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// True when no partial record or frame is buffered (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        self.inbuf.is_empty() && self.frame.is_empty()
    }

    /// Call when the stream ended: errors if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.is_idle() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }

    /// Returns the next complete envelope, `Ok(None)` if more bytes are needed.
    ///
    /// Records are decrypted straight into the frame buffer and the envelope is decoded from
    /// it in place: one copy of the payload between the network and the message.
    pub fn poll_frame(&mut self) -> Result<Option<Envelope>, FrameError> {
        let mut consumed = 0;
        let result: Result<bool, FrameError> = loop {
            if self.complete_size().is_some() {
                break Ok(true);
            }
            let rest = &self.inbuf[consumed..];
            if rest.len() < 2 {
                break Ok(false);
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if len == 0 {
                break Err(FrameError::EmptyRecord);
            }
            if len < TAG_LEN {
                break Err(FrameError::Auth { seq: self.seq });
            }
            if rest.len() < 2 + len {
                break Ok(false);
            }
            let old = self.frame.len();
            self.frame.resize(old + len, 0);
            let opened = self.cipher.read_message(
                nonce(self.stream, self.seq),
                &self.inbuf[consumed + 2..consumed + 2 + len],
                &mut self.frame[old..],
            );
            let n = match opened {
                Ok(n) => n,
                Err(_) => {
                    self.frame.truncate(old);
                    break Err(FrameError::Auth { seq: self.seq });
                }
            };
            self.frame.truncate(old + n);
            self.seq = self.seq.checked_add(1).ok_or(FrameError::NonceExhausted)?;
            consumed += 2 + len;
            if self.frame.len() >= 4 {
                let size = u32::from_be_bytes([
                    self.frame[0],
                    self.frame[1],
                    self.frame[2],
                    self.frame[3],
                ]) as usize;
                if size > self.max_frame {
                    break Err(FrameError::TooLarge {
                        size,
                        max: self.max_frame,
                    });
                }
                if self.frame.len() > 4 + size {
                    break Err(FrameError::Malformed(
                        "record extends past the end of its frame".into(),
                    ));
                }
            }
        };
        self.inbuf.drain(..consumed);
        if !result? {
            return Ok(None);
        }
        let size = self.complete_size().unwrap_or(0);
        let env = decode_body(&self.frame[4..4 + size]);
        self.frame.clear();
        let env = env?;
        if env.version != self.version {
            return Err(FrameError::Version {
                got: env.version,
                expected: self.version,
            });
        }
        Ok(Some(env))
    }

    /// The body size of the frame in the buffer, if it is complete.
    fn complete_size(&self) -> Option<usize> {
        if self.frame.len() < 4 {
            return None;
        }
        let size = u32::from_be_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]])
            as usize;
        (self.frame.len() >= 4 + size).then_some(size)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::handshake::tests::session_pair;
    use crate::message::Message;
    use proptest::prelude::*;

    fn pair(stream: u64) -> (FrameSealer, FrameOpener) {
        let (a, b) = session_pair();
        (
            FrameSealer::new(a.transport.clone(), stream).unwrap(),
            FrameOpener::new(b.transport.clone(), stream, crate::PROTOCOL_VERSION).unwrap(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_message_round_trips_through_seal_and_open(env: Envelope, cut in 1usize..200) {
            let env = Envelope { version: crate::PROTOCOL_VERSION, ..env };
            let (mut s, mut o) = pair(4);
            let mut wire = Vec::new();
            s.seal(&env, &mut wire).unwrap();
            // Deliver in arbitrary pieces, as a stream would.
            let mut got = None;
            for piece in wire.chunks(cut) {
                o.push(piece);
                if let Some(e) = o.poll_frame().unwrap() { got = Some(e); }
            }
            prop_assert_eq!(got, Some(env));
            prop_assert!(o.is_idle());
        }

        #[test]
        fn body_codec_round_trips(env: Envelope) {
            let body = encode_body(&env).unwrap();
            prop_assert_eq!(decode_body(&body).unwrap(), env);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body(&bytes);
        }
    }

    #[test]
    fn large_frames_span_records() {
        let (mut s, mut o) = pair(0);
        let env = Envelope::new(Message::Bulk(vec![0xAB; 300_000]));
        let mut wire = Vec::new();
        s.seal(&env, &mut wire).unwrap();
        assert!(wire.len() > 300_000 + 5 * (2 + TAG_LEN));
        o.push(&wire);
        assert_eq!(o.poll_frame().unwrap(), Some(env));
    }

    #[test]
    fn a_flipped_bit_fails_authentication() {
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        s.seal(&Envelope::new(Message::Accept), &mut wire).unwrap();
        wire[5] ^= 1;
        o.push(&wire);
        assert_eq!(o.poll_frame(), Err(FrameError::Auth { seq: 0 }));
    }

    #[test]
    fn a_record_moved_to_another_stream_fails_authentication() {
        let (a, b) = session_pair();
        let mut s = FrameSealer::new(a.transport.clone(), 0).unwrap();
        let mut o = FrameOpener::new(b.transport.clone(), 4, 1).unwrap();
        let mut wire = Vec::new();
        s.seal(&Envelope::new(Message::Accept), &mut wire).unwrap();
        o.push(&wire);
        assert!(matches!(o.poll_frame(), Err(FrameError::Auth { .. })));
    }

    #[test]
    fn a_replayed_record_fails_authentication() {
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        s.seal(&Envelope::new(Message::Accept), &mut wire).unwrap();
        o.push(&wire);
        o.push(&wire);
        assert!(o.poll_frame().unwrap().is_some());
        assert!(matches!(o.poll_frame(), Err(FrameError::Auth { seq: 1 })));
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let (mut s, o) = pair(0);
        let mut o = o.with_max_frame(1024);
        let mut wire = Vec::new();
        s.seal(&Envelope::new(Message::Bulk(vec![1; 4096])), &mut wire)
            .unwrap();
        o.push(&wire);
        assert!(matches!(o.poll_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn wrong_version_is_refused() {
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        s.seal(
            &Envelope {
                version: 99,
                msg: Message::Accept,
            },
            &mut wire,
        )
        .unwrap();
        o.push(&wire);
        assert_eq!(
            o.poll_frame(),
            Err(FrameError::Version {
                got: 99,
                expected: 1
            })
        );
    }

    #[test]
    fn truncated_stream_is_reported() {
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        s.seal(&Envelope::new(Message::Accept), &mut wire).unwrap();
        o.push(&wire[..wire.len() - 1]);
        assert_eq!(o.poll_frame(), Ok(None));
        assert_eq!(o.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn malformed_body_is_an_error_not_a_panic() {
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        s.seal_body(&[0xc1, 0xff, 0x00], &mut wire).unwrap();
        o.push(&wire);
        assert!(matches!(o.poll_frame(), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn a_newer_peers_message_kind_is_skipped_and_the_stream_goes_on() {
        #[derive(serde::Serialize)]
        enum Newer {
            Shiny,
            Fancy { x: u32, y: String },
            Wrapped(Vec<u8>),
        }
        let (mut s, mut o) = pair(0);
        let mut wire = Vec::new();
        for m in [
            Newer::Shiny,
            Newer::Fancy {
                x: 5,
                y: "y".into(),
            },
            Newer::Wrapped(vec![1, 2]),
        ] {
            let body = rmp_serde::to_vec(&(crate::PROTOCOL_VERSION, m)).unwrap();
            s.seal_body(&body, &mut wire).unwrap();
        }
        // A known kind with content that does not fit it is malformed, not unknown.
        let bad = rmp_serde::to_vec(&(
            crate::PROTOCOL_VERSION,
            std::collections::BTreeMap::from([("Bulk", true)]),
        ))
        .unwrap();
        s.seal_body(&bad, &mut wire).unwrap();
        s.seal(&Envelope::new(Message::Accept), &mut wire).unwrap();
        o.push(&wire);
        for kind in ["Shiny", "Fancy", "Wrapped"] {
            assert_eq!(o.poll_frame(), Err(FrameError::UnknownKind(kind.into())));
        }
        assert!(matches!(o.poll_frame(), Err(FrameError::Malformed(_))));
        assert_eq!(o.poll_frame(), Ok(Some(Envelope::new(Message::Accept))));
    }
}
