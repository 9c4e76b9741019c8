//! The connection manager: accepts and dials, keeps one authenticated connection per peer,
//! queues outgoing messages per peer (bounded), and dispatches incoming frames to an
//! [`Inbound`] handler. Runs on the dedicated multi-threaded tokio runtime that owns quinn.
//!
//! Streams: each side sends one-way messages on a long-lived unidirectional stream it opens
//! lazily; requests use a fresh bidirectional stream each (one request frame, one reply frame).
//! A frame that fails authentication, is oversized or malformed closes that peer's connection
//! with [`close::FRAME`]; other peers are unaffected.

use crate::transport::{
    self, close, Admission, Admitted, Expect, Local, SecureConn, TransportError,
};
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use lifeboat_actors::seams;
use lifeboat_protocol::regkey::RegistrationKey;
use lifeboat_protocol::{Message, NodeId, PublicKey};
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Outgoing messages queued per peer before `send` reports backpressure.
pub const SEND_QUEUE: usize = 256;
/// How long a connection replaced by a duplicate one keeps serving what is in flight on it.
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(120);
/// Most handshakes in progress at once (unauthenticated peers cost memory and CPU). A new
/// connection past this evicts the oldest handshake of the address holding the most slots,
/// so a flood of idle connections cannot lock members out: theirs finish in milliseconds.
pub const MAX_HANDSHAKES: usize = 64;
/// Most handshakes in progress from one IP address; past it, that address's oldest goes.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;
/// How long a peer may take to send the first frame of a request stream.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Who sent a message.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Authenticated static key.
    pub key: PublicKey,
    /// Remote address.
    pub addr: SocketAddr,
    /// How the peer was admitted.
    pub admitted: Admitted,
}

/// Receives what the network delivers.
pub trait Inbound: Send + Sync + 'static {
    /// A mesh connection was established.
    fn connected(&self, c: &SecureConn);
    /// The mesh connection `conn` (its `stable_id`) to a peer closed.
    fn disconnected(&self, id: NodeId, conn: u64);
    /// A dial failed.
    fn dial_failed(&self, addr: SocketAddr, err: &TransportError);
    /// A message arrived; the returned message (if any) is the reply.
    fn message(&self, from: PeerInfo, msg: Message) -> BoxFuture<'static, Option<Message>>;
    /// A bidirectional stream opened with a streaming message (`DeltaBegin`): the handler owns
    /// the rest of the stream.
    fn stream(
        &self,
        from: PeerInfo,
        first: Message,
        mut w: transport::FrameWriter,
        r: transport::FrameReader,
    ) -> BoxFuture<'static, ()> {
        let _ = (from, first, r);
        Box::pin(async move {
            let _ = w
                .send(Message::Error {
                    message: "this node does not accept replication streams".into(),
                })
                .await;
            w.finish();
        })
    }
}

/// Counters shown in status and checked by tests.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Handshakes that failed (either side).
    pub handshake_failures: AtomicU64,
    /// Connections closed for a bad frame.
    pub frame_errors: AtomicU64,
    /// Mesh connections established.
    pub connections: AtomicU64,
}

/// One live connection.
struct Slot {
    /// The connection.
    conn: Arc<SecureConn>,
    /// Its outgoing queue.
    tx: mpsc::Sender<Message>,
}

/// Shared state of the manager.
struct Inner {
    /// The QUIC endpoint.
    ep: quinn::Endpoint,
    /// Our identity and hello.
    local: Arc<Local>,
    /// Admission decisions.
    admission: Arc<dyn Admission>,
    /// Where messages go.
    inbound: Arc<dyn Inbound>,
    /// Live mesh connections by peer.
    conns: DashMap<NodeId, Slot>,
    /// Dials in flight by address (one at a time per address).
    dialing: DashMap<SocketAddr, ()>,
    /// The mesh secret, once joined, and the rotated-out one while it is still accepted (a
    /// dial falls back to it: the peer may have been offline at the rotation).
    mesh_psk: RwLock<(Option<[u8; 32]>, Option<[u8; 32]>)>,
    /// Runtime everything runs on.
    rt: tokio::runtime::Handle,
    /// Counters.
    stats: NetStats,
}

/// Handle to the connection manager (cheap to clone).
#[derive(Clone)]
pub struct Net {
    /// Shared state.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Net({:?})", self.inner.ep.local_addr().ok())
    }
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut s);
    s
}

impl Net {
    /// Starts accepting on `ep` (must be called within `rt`'s context or with `rt` given).
    pub fn start(
        ep: quinn::Endpoint,
        local: Arc<Local>,
        admission: Arc<dyn Admission>,
        inbound: Arc<dyn Inbound>,
        rt: tokio::runtime::Handle,
    ) -> Net {
        let inner = Arc::new(Inner {
            ep,
            local,
            admission,
            inbound,
            conns: DashMap::new(),
            dialing: DashMap::new(),
            mesh_psk: RwLock::new((None, None)),
            rt: rt.clone(),
            stats: NetStats::default(),
        });
        rt.spawn(accept_loop(inner.clone()));
        Net { inner }
    }

    /// Sets the mesh secret (after `mesh create`, registration or a rotation) and the previous
    /// one while it is still accepted.
    pub fn set_mesh_psk(&self, psk: Option<[u8; 32]>, previous: Option<[u8; 32]>) {
        if let Ok(mut g) = self.inner.mesh_psk.write() {
            *g = (psk, previous);
        }
    }

    /// Closes every connection to a peer that `is_member` rejects (an evicted member's
    /// connections end at once; the handshake refuses its new ones).
    pub fn retain_members(&self, is_member: impl Fn(&NodeId) -> bool) {
        let gone: Vec<(NodeId, Arc<SecureConn>)> = self
            .inner
            .conns
            .iter()
            .filter(|e| !is_member(e.key()))
            .map(|e| (*e.key(), e.conn.clone()))
            .collect();
        for (id, c) in gone {
            tracing::warn!(peer = %id, "closing the connection of a node that is no longer a member");
            c.conn.close(close::REFUSED, b"removed from the mesh");
        }
    }

    /// Local UDP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.ep.local_addr().ok()
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.inner.stats
    }

    /// Ids of connected peers.
    pub fn connected(&self) -> Vec<NodeId> {
        self.inner.conns.iter().map(|e| *e.key()).collect()
    }

    /// Connects to `addr` with the mesh secret and returns the peer id.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        connect_mesh(self.inner.clone(), addr, expect).await
    }

    fn conn(&self, to: NodeId) -> Result<Arc<SecureConn>, TransportError> {
        self.inner
            .conns
            .get(&to)
            .map(|s| s.conn.clone())
            .ok_or_else(|| TransportError::Protocol(format!("no connection to {to}")))
    }

    /// Sends a request to a connected peer and waits for the reply.
    pub async fn request(&self, to: NodeId, msg: Message) -> Result<Message, TransportError> {
        let conn = self.conn(to)?;
        conn.request(msg, REQUEST_TIMEOUT).await
    }

    /// Sends a request to a connected peer and waits up to `wait` for the reply (for requests
    /// that do long work before answering).
    pub async fn request_within(
        &self,
        to: NodeId,
        msg: Message,
        wait: Duration,
    ) -> Result<Message, TransportError> {
        let conn = self.conn(to)?;
        conn.request(msg, wait).await
    }

    /// Opens a bidirectional stream to a connected peer (for streaming exchanges).
    pub async fn open_bi(
        &self,
        to: NodeId,
    ) -> Result<(transport::FrameWriter, transport::FrameReader), TransportError> {
        let conn = self.conn(to)?;
        conn.open_bi().await
    }

    /// Registers with the configuration node named by `key`, sending `register`; returns the
    /// registrar's key and its reply.
    pub async fn register(
        &self,
        key: &RegistrationKey,
        register: Message,
    ) -> Result<(PublicKey, Message), TransportError> {
        let mut last =
            TransportError::Protocol("the key names no configuration node address".into());
        for addr in &key.config_addrs {
            let r = transport::connect(
                &self.inner.ep,
                &self.inner.local,
                *addr,
                key.secret,
                Expect::Fingerprint(key.config_fingerprint),
                self.inner.admission.as_ref(),
                seed(),
            )
            .await;
            match r {
                Ok(c) => {
                    let reply = c.request(register.clone(), REQUEST_TIMEOUT).await;
                    c.conn.close(close::DONE, b"registration done");
                    return reply.map(|m| (c.peer, m));
                }
                Err(e) => {
                    tracing::warn!(%addr, cause = %e, "registration attempt failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Closes everything.
    pub fn shutdown(&self) {
        self.inner.ep.close(close::NORMAL, b"shutting down");
    }

    /// Waits until the endpoint is idle (after `shutdown`), bounded.
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.ep.wait_idle()).await;
    }
}

impl seams::Transport for Net {
    fn send(&self, to: NodeId, msg: Message) -> Result<(), seams::TransportError> {
        let slot = self
            .inner
            .conns
            .get(&to)
            .ok_or(seams::TransportError::NotConnected(to))?;
        slot.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => seams::TransportError::Full(to),
            mpsc::error::TrySendError::Closed(_) => seams::TransportError::NotConnected(to),
        })
    }

    fn dial(&self, addr: SocketAddr, expect: Option<NodeId>) {
        let inner = self.inner.clone();
        self.inner.rt.spawn(async move {
            if let Err(e) = connect_mesh(inner.clone(), addr, expect).await {
                tracing::debug!(%addr, cause = %e, "dial failed");
                inner.inbound.dial_failed(addr, &e);
            }
        });
    }
}

async fn connect_mesh(
    inner: Arc<Inner>,
    addr: SocketAddr,
    expect: Option<NodeId>,
) -> Result<NodeId, TransportError> {
    let (psk, previous) = inner.mesh_psk.read().map(|g| *g).unwrap_or((None, None));
    let psk =
        psk.ok_or_else(|| TransportError::Protocol("this node belongs to no mesh yet".into()))?;
    if inner.dialing.insert(addr, ()).is_some() {
        return Err(TransportError::Protocol(format!("already dialing {addr}")));
    }
    let dial = |psk| {
        transport::connect(
            &inner.ep,
            &inner.local,
            addr,
            psk,
            Expect::Member(expect),
            inner.admission.as_ref(),
            seed(),
        )
    };
    let mut r = dial(psk).await;
    // A member that was offline when the secret was rotated knows only the old one.
    if let (Err(TransportError::Refused(_) | TransportError::Handshake(_)), Some(old)) =
        (&r, previous)
    {
        r = dial(old).await;
    }
    inner.dialing.remove(&addr);
    match r {
        Ok(c) => {
            let id = c.peer_id();
            install(inner, c)?;
            Ok(id)
        }
        Err(e) => {
            inner
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Handshakes in progress, oldest first, for eviction (see [`MAX_HANDSHAKES`]).
#[derive(Default)]
struct Pending {
    /// (source address group, the handshake task), oldest first.
    slots: std::collections::VecDeque<(std::net::IpAddr, tokio::task::AbortHandle)>,
}

/// The address group a source counts against: the IPv4 address, or the IPv6 /64 (one host
/// commonly holds a whole /64, so per-address limits would not bind it).
fn source_group(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            std::net::IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

impl Pending {
    /// Makes room for one more handshake from `group`: past the per-group or the global bound,
    /// aborts the oldest handshake of `group`, or of the group holding the most slots (ties:
    /// the group with the oldest handshake).
    fn make_room(&mut self, group: std::net::IpAddr) {
        self.slots.retain(|(_, h)| !h.is_finished());
        let from_group = self.slots.iter().filter(|(a, _)| *a == group).count();
        let victim = if from_group >= MAX_HANDSHAKES_PER_IP {
            Some(group)
        } else if self.slots.len() >= MAX_HANDSHAKES {
            // Groups in order of their oldest handshake; the first with the most slots.
            let mut counts: Vec<(std::net::IpAddr, usize)> = Vec::new();
            for (a, _) in &self.slots {
                match counts.iter_mut().find(|(g, _)| g == a) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((*a, 1)),
                }
            }
            let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
            counts.into_iter().find(|(_, n)| *n == most).map(|(g, _)| g)
        } else {
            None
        };
        if let Some(v) = victim {
            if let Some(i) = self.slots.iter().position(|(a, _)| *a == v) {
                if let Some((a, h)) = self.slots.remove(i) {
                    tracing::warn!(remote = %a, "handshake slots full: dropping the oldest unauthenticated connection");
                    h.abort();
                }
            }
        }
    }

    /// Handshakes in progress.
    fn busy(&self) -> usize {
        self.slots.iter().filter(|(_, h)| !h.is_finished()).count()
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    let mut pending = Pending::default();
    while let Some(incoming) = inner.ep.accept().await {
        // Under load, a source must first prove it receives at its address (a QUIC retry
        // token) before it may hold a slot: spoofed sources cannot evict real ones.
        if pending.busy() >= MAX_HANDSHAKES / 2
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        let ip = source_group(incoming.remote_address().ip());
        pending.make_room(ip);
        let inner = inner.clone();
        let task = tokio::spawn(async move {
            let remote = incoming.remote_address();
            match transport::accept(incoming, &inner.local, inner.admission.as_ref(), seed()).await
            {
                Ok(c) if c.admitted == Admitted::Mesh => {
                    let _ = install(inner, c);
                }
                Ok(c) => {
                    // Registration connection: serve its requests, never list it as a peer.
                    let c = Arc::new(c);
                    serve(inner, c, None).await;
                }
                Err(e) => {
                    inner
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, cause = %e, "inbound handshake failed");
                }
            }
        });
        pending.slots.push_back((ip, task.abort_handle()));
    }
}

/// Which of two connections between `a` and `b` survives: the one the smaller id initiated.
fn preferred_initiator(a: NodeId, b: NodeId) -> NodeId {
    a.min(b)
}

fn install(inner: Arc<Inner>, c: SecureConn) -> Result<(), TransportError> {
    let me = inner.local.keypair.node_id();
    let peer = c.peer_id();
    let initiator = if c.outbound { me } else { peer };
    let c = Arc::new(c);
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    // Decide and insert under the map entry's lock, so two concurrent installs for the same
    // peer agree on one survivor; close the loser after the lock is released.
    let loser = match inner.conns.entry(peer) {
        dashmap::mapref::entry::Entry::Vacant(v) => {
            v.insert(Slot {
                conn: c.clone(),
                tx,
            });
            None
        }
        dashmap::mapref::entry::Entry::Occupied(mut o) => {
            let old = o.get();
            let old_init = if old.conn.outbound { me } else { peer };
            let keep_new = old.conn.conn.close_reason().is_some()
                || old_init == initiator
                || initiator == preferred_initiator(me, peer);
            if keep_new {
                let old = o.insert(Slot {
                    conn: c.clone(),
                    tx,
                });
                Some(old.conn)
            } else {
                Some(c.clone())
            }
        }
    };
    if let Some(l) = &loser {
        if !Arc::ptr_eq(l, &c) {
            // The replaced connection may carry requests in flight (a landing, a restore
            // answer): it is served for a grace period, then closed; new messages go over
            // the survivor.
            let l = l.clone();
            inner.rt.spawn(async move {
                tokio::time::sleep(DUPLICATE_GRACE).await;
                l.conn.close(close::DUPLICATE, b"duplicate connection");
            });
        } else {
            l.conn.close(close::DUPLICATE, b"duplicate connection");
            return Err(TransportError::Protocol(format!(
                "already connected to {peer}"
            )));
        }
    }
    inner.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %peer, addr = %c.conn.remote_address(), outbound = c.outbound, "peer connected");
    inner.inbound.connected(&c);
    let rt = inner.rt.clone();
    rt.spawn(serve(inner, c, Some(rx)));
    Ok(())
}

/// Serves one connection until it closes.
async fn serve(inner: Arc<Inner>, c: Arc<SecureConn>, rx: Option<mpsc::Receiver<Message>>) {
    let writer = rx.map(|rx| tokio::spawn(write_loop(c.clone(), rx)));
    let info = PeerInfo {
        key: c.peer,
        addr: c.conn.remote_address(),
        admitted: c.admitted.clone(),
    };
    loop {
        tokio::select! {
            r = c.accept_uni() => match r {
                Ok(reader) => { tokio::spawn(read_uni(inner.clone(), c.clone(), info.clone(), reader)); }
                Err(_) => break,
            },
            r = c.accept_bi() => match r {
                Ok((w, r)) => { tokio::spawn(serve_bi(inner.clone(), c.clone(), info.clone(), w, r)); }
                Err(_) => break,
            },
        }
    }
    if let Some(w) = writer {
        w.abort();
    }
    let peer = c.peer_id();
    if c.admitted == Admitted::Mesh {
        let ours = inner
            .conns
            .remove_if(&peer, |_, s| Arc::ptr_eq(&s.conn, &c))
            .is_some();
        if ours {
            tracing::info!(peer = %peer, reason = ?c.conn.close_reason(), "peer disconnected");
            inner.inbound.disconnected(peer, c.conn.stable_id() as u64);
        }
    }
}

fn frame_failure(inner: &Inner, c: &SecureConn, e: &TransportError) {
    if matches!(e, TransportError::Frame(_) | TransportError::Protocol(_)) {
        inner.stats.frame_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %c.peer_id(), cause = %e, "closing connection after a bad frame");
        c.conn.close(close::FRAME, e.to_string().as_bytes());
    }
}

async fn read_uni(
    inner: Arc<Inner>,
    c: Arc<SecureConn>,
    info: PeerInfo,
    mut r: transport::FrameReader,
) {
    loop {
        match r.next().await {
            Ok(Some(env)) => {
                if c.admitted != Admitted::Mesh {
                    let e = TransportError::Protocol(
                        "registration connections carry requests only".into(),
                    );
                    frame_failure(&inner, &c, &e);
                    return;
                }
                if let Some(reply) = inner.inbound.message(info.clone(), env.msg).await {
                    if let Some(s) = inner.conns.get(&c.peer_id()) {
                        let _ = s.tx.try_send(reply);
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                frame_failure(&inner, &c, &e);
                return;
            }
        }
    }
}

async fn serve_bi(
    inner: Arc<Inner>,
    c: Arc<SecureConn>,
    info: PeerInfo,
    mut w: transport::FrameWriter,
    mut r: transport::FrameReader,
) {
    let first = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, r.next()).await {
        Ok(x) => x,
        Err(_) => {
            tracing::debug!(peer = %c.peer_id(), "request stream idle; dropped");
            return;
        }
    };
    match first {
        Ok(Some(env))
            if matches!(env.msg, Message::DeltaBegin(_)) && c.admitted == Admitted::Mesh =>
        {
            inner.inbound.stream(info, env.msg, w, r).await;
        }
        Ok(Some(env)) => {
            let reply = inner
                .inbound
                .message(info, env.msg)
                .await
                .unwrap_or(Message::Error {
                    message: "request not understood".into(),
                });
            if w.send(reply).await.is_ok() {
                w.finish();
            }
        }
        Ok(None) => {}
        Err(e) => frame_failure(&inner, &c, &e),
    }
}

async fn write_loop(c: Arc<SecureConn>, mut rx: mpsc::Receiver<Message>) {
    let mut w: Option<transport::FrameWriter> = None;
    while let Some(msg) = rx.recv().await {
        if w.is_none() {
            match c.open_uni().await {
                Ok(s) => w = Some(s),
                Err(e) => {
                    tracing::debug!(peer = %c.peer_id(), cause = %e, "cannot open message stream");
                    c.conn.close(close::FRAME, b"cannot open message stream");
                    return;
                }
            }
        }
        if let Some(s) = w.as_mut() {
            if let Err(e) = s.send(msg).await {
                // A connection that cannot carry our messages is closed, so that the peer is
                // marked disconnected and redialed, rather than silently deaf.
                tracing::warn!(peer = %c.peer_id(), cause = %e, "message stream failed; closing connection");
                c.conn.close(close::FRAME, b"message stream failed");
                return;
            }
        }
    }
}
