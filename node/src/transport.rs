//! Authenticated, encrypted peer channels: QUIC (quinn) carrying a Noise `XXpsk3` handshake on
//! its first stream, then sealed frames on every stream.
//!
//! [`connect`] and [`accept`] drive the sans-IO [`lifeboat_protocol::handshake`] state machines
//! over a real QUIC connection: the prologue is the connection's TLS exporter (channel binding),
//! no other stream is accepted before the handshake completes, and the responder sends its
//! verdict (`Accept` or `Refuse`) as the first sealed frame. A [`SecureConn`] then opens and
//! accepts streams whose frames are sealed with [`FrameSealer`]/[`FrameOpener`].

use futures_util::future::BoxFuture;
use lifeboat_actors::mesh::PskKind;
use lifeboat_actors::shell::KeyStatus;
use lifeboat_protocol::frame::{FrameError, FrameOpener, FrameSealer};
use lifeboat_protocol::handshake::{self, HandshakeError, Initiator, PskId, Responder};
use lifeboat_protocol::message::Hello;
use lifeboat_protocol::{Envelope, Fingerprint, Message, NodeId, PublicKey, StaticKeypair};
use snow::StatelessTransportState;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Time allowed for a whole handshake we dial.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an unauthenticated peer may hold a handshake slot on our side.
pub const INBOUND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted on a mesh stream (a replication batch is at most 1 MiB of blocks).
pub const MAX_MESH_FRAME: usize = 4 << 20;
/// Largest handshake record buffered.
const MAX_HANDSHAKE_BUF: usize = 70_000;

/// QUIC application close codes.
pub mod close {
    use quinn::VarInt;
    /// Normal shutdown.
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// Handshake failed (authentication, version, unknown PSK).
    pub const HANDSHAKE: VarInt = VarInt::from_u32(1);
    /// Peer refused by admission (not a member).
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// A frame failed authentication or was malformed or oversized.
    pub const FRAME: VarInt = VarInt::from_u32(3);
    /// A duplicate connection to the same peer was closed.
    pub const DUPLICATE: VarInt = VarInt::from_u32(4);
    /// A registration connection finished.
    pub const DONE: VarInt = VarInt::from_u32(5);
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not start a connection.
    #[error("cannot connect to {addr}: {msg}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Reason.
        msg: String,
    },
    /// The QUIC connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The Noise handshake failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The peer refused us.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// A frame was bad.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A step took too long.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// Stream-level I/O failure.
    #[error("stream error: {0}")]
    Stream(String),
    /// The peer's key is not what we expected.
    #[error("peer {got} is not {expected}")]
    UnexpectedPeer {
        /// Who answered.
        got: String,
        /// Whom we expected.
        expected: String,
    },
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Admission decisions the handshake needs (backed by the mesh actor in the daemon).
pub trait Admission: Send + Sync + 'static {
    /// Resolves a PSK id from handshake message 1.
    fn resolve_psk(&self, id: PskId) -> BoxFuture<'static, Option<PskKind>>;
    /// Membership and authority of a static key.
    fn check_key(&self, key: PublicKey) -> BoxFuture<'static, KeyStatus>;
}

/// This node as the transport needs it.
#[derive(Debug)]
pub struct Local {
    /// Static key pair.
    pub keypair: StaticKeypair,
    /// What we say about ourselves in handshakes (roles change at run time).
    pub hello: RwLock<Hello>,
    /// Flow-control limits an admitted connection is opened to (the endpoint's own config
    /// holds a peer to the handshake stream and a small window until then).
    pub tuning: crate::tls::Tuning,
}

impl Local {
    fn hello(&self) -> Hello {
        self.hello
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// What the dialer requires of the responder.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A member of our mesh (optionally a specific node).
    Member(Option<NodeId>),
    /// The configuration node named by a registration key.
    Fingerprint(Fingerprint),
    /// Anyone holding the PSK (tests and benchmarks).
    Any,
}

/// How a connection was admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// With the mesh secret.
    Mesh,
    /// With a registration key (the peer may only register).
    Registration(PskId),
}

/// An authenticated connection.
pub struct SecureConn {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Noise transport keys.
    pub keys: Arc<StatelessTransportState>,
    /// Peer's static key.
    pub peer: PublicKey,
    /// Peer's hello.
    pub hello: Hello,
    /// Negotiated version.
    pub version: u16,
    /// How the peer was admitted.
    pub admitted: Admitted,
    /// True if we dialed.
    pub outbound: bool,
}

impl std::fmt::Debug for SecureConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecureConn(peer={}, addr={}, outbound={})",
            self.peer.node_id(),
            self.conn.remote_address(),
            self.outbound
        )
    }
}

/// Writes sealed frames to a QUIC send stream.
#[derive(Debug)]
pub struct FrameWriter {
    /// The stream.
    send: quinn::SendStream,
    /// Sealer for its direction (`None` while lent out, see [`FrameWriter::lend_sealer`]).
    sealer: Option<FrameSealer>,
}

impl FrameWriter {
    /// Seals and writes one message.
    pub async fn send(&mut self, msg: Message) -> Result<(), TransportError> {
        self.send_envelope(&Envelope::new(msg)).await
    }

    /// Seals and writes one envelope.
    pub async fn send_envelope(&mut self, env: &Envelope) -> Result<(), TransportError> {
        let mut out = Vec::new();
        self.sealer_mut()?.seal(env, &mut out)?;
        self.write_sealed(out).await
    }

    fn sealer_mut(&mut self) -> Result<&mut FrameSealer, TransportError> {
        self.sealer
            .as_mut()
            .ok_or_else(|| TransportError::Stream("the stream's sealer is lent out".into()))
    }

    /// Lends the sealer out, so a producer thread can seal frames itself (in order) and hand
    /// them to [`FrameWriter::write_sealed`]; give it back with [`FrameWriter::return_sealer`].
    /// Until then [`FrameWriter::send`] fails.
    pub fn lend_sealer(&mut self) -> Result<FrameSealer, TransportError> {
        self.sealer
            .take()
            .ok_or_else(|| TransportError::Stream("the stream's sealer is lent out".into()))
    }

    /// Gives a lent sealer back.
    pub fn return_sealer(&mut self, sealer: FrameSealer) {
        self.sealer = Some(sealer);
    }

    /// Writes records sealed by this stream's sealer (handed over without a copy).
    pub async fn write_sealed(&mut self, sealed: Vec<u8>) -> Result<(), TransportError> {
        self.send
            .write_chunk(bytes::Bytes::from(sealed))
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))
    }

    /// Writes raw bytes (used only by tests that forge frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))
    }

    /// Seals `env` into bytes without sending (tests tamper with them).
    pub fn seal_to_vec(&mut self, env: &Envelope) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::new();
        self.sealer_mut()?.seal(env, &mut out)?;
        Ok(out)
    }

    /// Seals raw frame plaintext without sending (tests forge hostile frames).
    pub fn seal_plaintext_to_vec(&mut self, plain: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::new();
        self.sealer_mut()?.seal_plaintext(plain, &mut out)?;
        Ok(out)
    }

    /// Ends the stream cleanly.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// Reads sealed frames from a QUIC receive stream.
#[derive(Debug)]
pub struct FrameReader {
    /// The stream.
    recv: quinn::RecvStream,
    /// Opener for its direction.
    opener: FrameOpener,
    /// Stream has ended.
    done: bool,
    /// Frames of unknown kinds skipped.
    skipped: u64,
}

impl lifeboat_actors::seams::MessageSource for FrameReader {
    fn next_message(
        &mut self,
    ) -> lifeboat_actors::seams::BoxFuture<'_, Result<Option<Message>, String>> {
        Box::pin(async move {
            self.next()
                .await
                .map(|e| e.map(|e| e.msg))
                .map_err(|e| e.to_string())
        })
    }
}

impl FrameReader {
    /// The next envelope; `None` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Envelope>, TransportError> {
        loop {
            match self.opener.poll_frame() {
                Ok(Some(env)) => return Ok(Some(env)),
                Ok(None) => {}
                // A newer peer's message: skipped, so that a mesh can be upgraded node by node.
                Err(FrameError::UnknownKind(kind)) => {
                    self.skipped += 1;
                    if self.skipped == 1 {
                        tracing::warn!(%kind, "skipped a message of a kind this build does not know (a newer peer's); upgrade this node");
                    } else {
                        tracing::debug!(%kind, "skipped a message of an unknown kind");
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if self.done {
                self.opener.finish()?;
                return Ok(None);
            }
            // Many received packets per call: each call takes the connection's lock once.
            let mut chunks: [bytes::Bytes; 64] = std::array::from_fn(|_| bytes::Bytes::new());
            match self
                .recv
                .read_chunks(&mut chunks)
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?
            {
                Some(n) => chunks[..n].iter().for_each(|c| self.opener.push(c)),
                None => self.done = true,
            }
        }
    }

    /// The next message; errors if the stream ended.
    pub async fn expect(&mut self) -> Result<Message, TransportError> {
        self.next()
            .await?
            .map(|e| e.msg)
            .ok_or_else(|| TransportError::Protocol("stream ended before a reply".into()))
    }
}

impl SecureConn {
    fn writer(&self, send: quinn::SendStream) -> Result<FrameWriter, TransportError> {
        let idx = u64::from(send.id());
        Ok(FrameWriter {
            send,
            sealer: Some(FrameSealer::new(self.keys.clone(), idx)?),
        })
    }

    fn reader(&self, recv: quinn::RecvStream) -> Result<FrameReader, TransportError> {
        let idx = u64::from(recv.id());
        // Registration connections carry one small request; mesh streams carry at most one
        // replication batch per frame.
        let max = match self.admitted {
            Admitted::Registration(_) => 64 * 1024,
            Admitted::Mesh => MAX_MESH_FRAME,
        };
        Ok(FrameReader {
            recv,
            opener: FrameOpener::new(self.keys.clone(), idx, self.version)?.with_max_frame(max),
            done: false,
            skipped: 0,
        })
    }

    /// Opens a unidirectional stream.
    pub async fn open_uni(&self) -> Result<FrameWriter, TransportError> {
        let s = self.conn.open_uni().await?;
        self.writer(s)
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (s, r) = self.conn.open_bi().await?;
        Ok((self.writer(s)?, self.reader(r)?))
    }

    /// Accepts the peer's next unidirectional stream.
    pub async fn accept_uni(&self) -> Result<FrameReader, TransportError> {
        let r = self.conn.accept_uni().await?;
        self.reader(r)
    }

    /// Accepts the peer's next bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (s, r) = self.conn.accept_bi().await?;
        Ok((self.writer(s)?, self.reader(r)?))
    }

    /// Sends a request on a new stream and waits for the one reply.
    pub async fn request(
        &self,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        let (mut w, mut r) = self.open_bi().await?;
        w.send(msg).await?;
        w.finish();
        tokio::time::timeout(timeout, r.expect())
            .await
            .map_err(|_| TransportError::Timeout("request"))?
    }

    /// The peer's node id.
    pub fn peer_id(&self) -> NodeId {
        self.peer.node_id()
    }
}

fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], TransportError> {
    let mut out = [0u8; lifeboat_protocol::EXPORTER_LEN];
    conn.export_keying_material(&mut out, lifeboat_protocol::EXPORTER_LABEL, b"")
        .map_err(|_| TransportError::Protocol("TLS exporter unavailable".into()))?;
    Ok(out)
}

async fn read_record(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, TransportError> {
    loop {
        if let Some(rec) = handshake::take_record(buf)? {
            return Ok(rec);
        }
        if buf.len() > MAX_HANDSHAKE_BUF {
            return Err(TransportError::Protocol(
                "handshake record too large".into(),
            ));
        }
        match recv
            .read_chunk(MAX_HANDSHAKE_BUF, true)
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))?
        {
            Some(c) => buf.extend_from_slice(&c.bytes),
            None => {
                return Err(TransportError::Protocol(
                    "stream ended during handshake".into(),
                ))
            }
        }
    }
}

/// Closes a connection whose handshake failed, telling the peer why (refused or failed).
fn close_on_failure(
    conn: &quinn::Connection,
    r: Result<SecureConn, TransportError>,
) -> Result<SecureConn, TransportError> {
    if let Err(e) = &r {
        let code = match e {
            TransportError::Refused(_) => close::REFUSED,
            _ => close::HANDSHAKE,
        };
        conn.close(code, e.to_string().as_bytes());
    }
    r
}

/// Dials `addr` and runs the handshake as initiator with `psk`.
pub async fn connect(
    ep: &quinn::Endpoint,
    local: &Local,
    addr: SocketAddr,
    psk: [u8; 32],
    expect: Expect,
    admission: &dyn Admission,
    seed: [u8; 32],
) -> Result<SecureConn, TransportError> {
    let fut = async {
        let conn = ep
            .connect(addr, "lifeboat")
            .map_err(|e| TransportError::Connect {
                addr,
                msg: e.to_string(),
            })?
            .await?;
        close_on_failure(
            &conn,
            initiate(conn.clone(), local, psk, expect, admission, seed).await,
        )
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout("handshake"))?
}

/// The responder is who the initiator expected: a fingerprint it was told, or a member.
async fn check_responder(
    key: lifeboat_protocol::PublicKey,
    expect: &Expect,
    admission: &dyn Admission,
) -> Result<(), TransportError> {
    match expect {
        Expect::Any => {}
        Expect::Fingerprint(fp) => {
            if key.fingerprint() != *fp {
                return Err(TransportError::UnexpectedPeer {
                    got: key.fingerprint().to_string(),
                    expected: fp.to_string(),
                });
            }
        }
        Expect::Member(want) => {
            if let Some(id) = want {
                if key.node_id() != *id {
                    return Err(TransportError::UnexpectedPeer {
                        got: key.node_id().to_string(),
                        expected: id.to_string(),
                    });
                }
            }
            if !admission.check_key(key).await.member {
                return Err(TransportError::Refused(format!(
                    "node {} is not on our membership list",
                    key.node_id()
                )));
            }
        }
    }
    Ok(())
}

async fn initiate(
    conn: quinn::Connection,
    local: &Local,
    psk: [u8; 32],
    expect: Expect,
    admission: &dyn Admission,
    seed: [u8; 32],
) -> Result<SecureConn, TransportError> {
    let prologue = exporter(&conn)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let (mut hs, m1) = Initiator::start(&local.keypair, &psk, &prologue, local.hello(), seed)?;
    send.write_all(&m1)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))?;
    let mut buf = Vec::new();
    let m2 = match read_record(&mut recv, &mut buf).await {
        Ok(m) => m,
        // The responder closes the connection when it cannot resolve our PSK.
        Err(_) => {
            return Err(match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                    TransportError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
                }
                _ => TransportError::Protocol("responder ended the handshake".into()),
            })
        }
    };
    let (key, _hello) = hs.read_response(&m2)?;
    check_responder(key, &expect, admission).await?;
    let (m3, session) = hs.finish()?;
    send.write_all(&m3)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))?;
    let idx = u64::from(recv.id());
    let mut opener = FrameOpener::new(session.transport.clone(), idx, session.version)?
        .with_max_frame(64 * 1024);
    opener.push(&buf);
    let verdict = loop {
        if let Some(env) = opener.poll_frame()? {
            break env.msg;
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => opener.push(&c.bytes),
            _ => {
                return Err(match conn.close_reason() {
                    Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                        TransportError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
                    }
                    _ => TransportError::Protocol(
                        "responder closed the handshake stream without a verdict".into(),
                    ),
                })
            }
        }
    };
    let _ = send.finish();
    match verdict {
        Message::Accept => Ok(SecureConn {
            conn: {
                crate::tls::admit(&conn, &local.tuning);
                conn
            },
            keys: session.transport,
            peer: session.remote,
            hello: session.remote_hello,
            version: session.version,
            admitted: Admitted::Mesh,
            outbound: true,
        }),
        Message::Refuse { reason } => Err(TransportError::Refused(reason)),
        other => Err(TransportError::Protocol(format!(
            "expected a handshake verdict, got {}",
            other.kind()
        ))),
    }
}

/// Runs the responder side of the handshake on an incoming connection.
pub async fn accept(
    incoming: quinn::Incoming,
    local: &Local,
    admission: &dyn Admission,
    seed: [u8; 32],
) -> Result<SecureConn, TransportError> {
    let fut = async {
        let conn = incoming.await?;
        close_on_failure(&conn, respond(conn.clone(), local, admission, seed).await)
    };
    tokio::time::timeout(INBOUND_HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout("handshake"))?
}

async fn respond(
    conn: quinn::Connection,
    local: &Local,
    admission: &dyn Admission,
    seed: [u8; 32],
) -> Result<SecureConn, TransportError> {
    let prologue = exporter(&conn)?;
    // The first stream is the handshake; nothing else is accepted before it completes.
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut hs = Responder::new(&local.keypair, &prologue, seed)?;
    let mut buf = Vec::new();
    let m1 = read_record(&mut recv, &mut buf).await?;
    let req = hs.read_request(&m1)?;
    let version = handshake::negotiate(req.min_version, req.max_version)?;
    let (psk, admitted) = match admission.resolve_psk(req.psk_id).await {
        Some(PskKind::Mesh(k)) => (k, Admitted::Mesh),
        Some(PskKind::Registration(k)) => (k, Admitted::Registration(req.psk_id)),
        None => {
            return Err(TransportError::Refused(
                "unknown mesh secret or registration key: register this node with a key from `lifeboat key issue`".into(),
            ))
        }
    };
    let hello = Hello {
        version,
        ..local.hello()
    };
    let m2 = hs.respond(&psk, &hello)?;
    send.write_all(&m2)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))?;
    let m3 = read_record(&mut recv, &mut buf).await?;
    let session = hs.finish(&m3)?;
    let verdict = match admitted {
        Admitted::Registration(_) => Ok(()),
        Admitted::Mesh => {
            if admission.check_key(session.remote).await.member {
                Ok(())
            } else {
                Err(format!(
                    "node {} is not on the membership list of this mesh; register it with `lifeboat register KEY`",
                    session.remote.node_id()
                ))
            }
        }
    };
    // Open the connection up before the verdict leaves, so the peer's first streams do not
    // wait for credit. Registration connections carry one small request: they keep the
    // pre-admission limits.
    if verdict.is_ok() && admitted == Admitted::Mesh {
        crate::tls::admit(&conn, &local.tuning);
    }
    let idx = u64::from(send.id());
    let mut sealer = FrameSealer::new(session.transport.clone(), idx)?;
    let mut out = Vec::new();
    let msg = match &verdict {
        Ok(()) => Message::Accept,
        Err(reason) => Message::Refuse {
            reason: reason.clone(),
        },
    };
    sealer.seal(&Envelope::new(msg), &mut out)?;
    send.write_all(&out)
        .await
        .map_err(|e| TransportError::Stream(e.to_string()))?;
    let _ = send.finish();
    if let Err(reason) = verdict {
        // Let the verdict reach the peer before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        return Err(TransportError::Refused(reason));
    }
    Ok(SecureConn {
        conn,
        keys: session.transport,
        peer: session.remote,
        hello: session.remote_hello,
        version: session.version,
        admitted,
        outbound: false,
    })
}
