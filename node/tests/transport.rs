//! Handshake and framing over real QUIC on loopback: what must succeed, and what must fail.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lifeboat_actors::mesh::PskKind;
use lifeboat_actors::shell::KeyStatus;
use lifeboat_node::net::{Inbound, Net, PeerInfo};
use lifeboat_node::tls::{self, TlsIdentity, Tuning};
use lifeboat_node::transport::{self, close, Admission, Expect, Local, SecureConn, TransportError};
use lifeboat_protocol::handshake::{psk_id, PskId};
use lifeboat_protocol::message::Hello;
use lifeboat_protocol::{Envelope, Message, NodeId, PublicKey, StaticKeypair};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct StaticAdmission {
    mesh: [u8; 32],
    members: Mutex<Vec<PublicKey>>,
}

impl Admission for StaticAdmission {
    fn resolve_psk(&self, id: PskId) -> BoxFuture<'static, Option<PskKind>> {
        let r = (psk_id(&self.mesh) == id).then_some(PskKind::Mesh(self.mesh));
        async move { r }.boxed()
    }
    fn check_key(&self, key: PublicKey) -> BoxFuture<'static, KeyStatus> {
        let member = self.members.lock().unwrap().contains(&key);
        async move {
            KeyStatus {
                member,
                authority: false,
            }
        }
        .boxed()
    }
}

struct Echo;

impl Inbound for Echo {
    fn connected(&self, _: &SecureConn) {}
    fn disconnected(&self, _: NodeId, _: u64) {}
    fn dial_failed(&self, _: SocketAddr, _: &TransportError) {}
    fn message(&self, _: PeerInfo, msg: Message) -> BoxFuture<'static, Option<Message>> {
        async move { Some(msg) }.boxed()
    }
}

fn local(seed: u8, name: &str) -> Arc<Local> {
    Arc::new(Local {
        keypair: StaticKeypair::generate([seed; 32]),
        hello: RwLock::new(Hello {
            name: name.into(),
            roles: vec![],
            listen_port: 0,
            mesh_id: None,
            version: 0,
        }),
        tuning: Tuning::default(),
    })
}

fn endpoint() -> quinn::Endpoint {
    let id = TlsIdentity::generate().unwrap();
    tls::endpoint("127.0.0.1:0".parse().unwrap(), &id, &Tuning::default()).unwrap()
}

/// A node on loopback serving echo, with `members` admitted.
fn node(
    seed: u8,
    mesh: [u8; 32],
    members: Vec<PublicKey>,
) -> (Net, Arc<Local>, Arc<StaticAdmission>) {
    let l = local(seed, &format!("n{seed}"));
    let adm = Arc::new(StaticAdmission {
        mesh,
        members: Mutex::new(members),
    });
    let net = Net::start(
        endpoint(),
        l.clone(),
        adm.clone(),
        Arc::new(Echo),
        tokio::runtime::Handle::current(),
    );
    net.set_mesh_psk(Some(mesh), None);
    (net, l, adm)
}

fn key(seed: u8) -> PublicKey {
    StaticKeypair::generate([seed; 32]).public
}

async fn raw_client(
    seed: u8,
    psk: [u8; 32],
    server: SocketAddr,
) -> Result<SecureConn, TransportError> {
    let l = local(seed, "client");
    let adm = StaticAdmission {
        mesh: psk,
        members: Mutex::new(vec![]),
    };
    transport::connect(&endpoint(), &l, server, psk, Expect::Any, &adm, [seed; 32]).await
}

async fn closed_with(c: &SecureConn) -> (quinn::VarInt, String) {
    match tokio::time::timeout(WAIT, c.conn.closed())
        .await
        .expect("connection not closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(a) => (
            a.error_code,
            String::from_utf8_lossy(&a.reason).into_owned(),
        ),
        other => panic!("unexpected close: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_mesh_secret_connect_and_exchange_requests() {
    let mesh = [7; 32];
    let (a, _, _) = node(1, mesh, vec![key(2)]);
    let (b, _, _) = node(2, mesh, vec![key(1)]);
    let id = b
        .connect(a.local_addr().unwrap(), Some(key(1).node_id()))
        .await
        .unwrap();
    assert_eq!(id, key(1).node_id());
    let reply = b
        .request(id, Message::Bulk(vec![5; 200_000]))
        .await
        .unwrap();
    assert_eq!(reply, Message::Bulk(vec![5; 200_000]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_mesh_secret_is_refused() {
    let (a, _, _) = node(1, [7; 32], vec![key(2)]);
    let (b, _, _) = node(2, [8; 32], vec![key(1)]);
    let err = b.connect(a.local_addr().unwrap(), None).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref r) if r.contains("unknown mesh secret")),
        "{err}"
    );
    assert!(a.stats().handshake_failures.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_on_the_member_list_is_refused_by_the_responder() {
    let (a, _, _) = node(1, [7; 32], vec![]);
    let (b, _, _) = node(2, [7; 32], vec![key(1)]);
    let err = b.connect(a.local_addr().unwrap(), None).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref r) if r.contains("not on the membership list")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_not_on_our_member_list_is_refused_by_the_initiator() {
    let (a, _, _) = node(1, [7; 32], vec![key(2)]);
    let (b, _, _) = node(2, [7; 32], vec![]);
    let err = b.connect(a.local_addr().unwrap(), None).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(ref r) if r.contains("not on our membership list")),
        "{err}"
    );
}

/// Terminates QUIC from the client and opens its own QUIC to the server, copying stream bytes
/// both ways: a man in the middle who holds everything but the endpoints' TLS secrets.
async fn relay(server: SocketAddr) -> SocketAddr {
    let front = endpoint();
    let back = endpoint();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(inc) = front.accept().await {
            let back = back.clone();
            tokio::spawn(async move {
                let Ok(cli) = inc.await else { return };
                let Ok(conn) = back.connect(server, "lifeboat") else {
                    return;
                };
                let Ok(srv) = conn.await else { return };
                while let Ok((mut cs, mut cr)) = cli.accept_bi().await {
                    let Ok((mut ss, mut sr)) = srv.open_bi().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut ss).await;
                    });
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cs).await;
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_terminates_quic_on_both_sides_fails_the_handshake() {
    let mesh = [7; 32];
    let (a, _, _) = node(1, mesh, vec![key(2)]);
    let (b, _, _) = node(2, mesh, vec![key(1)]);
    let via = relay(a.local_addr().unwrap()).await;
    let err = b.connect(via, None).await.unwrap_err();
    assert!(!matches!(err, TransportError::Timeout(_)), "{err}");
    // The relay really forwarded: the server received message 1 and rejected it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.stats().handshake_failures.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never saw the relayed handshake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Directly, the same two nodes connect fine.
    b.connect(a.local_addr().unwrap(), None).await.unwrap();
}

async fn hostile_frame_closes_connection(
    forge: impl FnOnce(&mut transport::FrameWriter) -> Vec<u8>,
    expect: &str,
) {
    let mesh = [7; 32];
    let (a, _, _) = node(1, mesh, vec![key(3), key(4)]);
    let server = a.local_addr().unwrap();
    let bad = raw_client(3, mesh, server).await.unwrap();
    let (mut w, _r) = bad.open_bi().await.unwrap();
    let bytes = forge(&mut w);
    w.send_raw(&bytes).await.unwrap();
    let (code, reason) = closed_with(&bad).await;
    assert_eq!(code, close::FRAME);
    assert!(reason.contains(expect), "{reason}");
    assert_eq!(a.stats().frame_errors.load(Ordering::Relaxed), 1);
    // The node keeps serving other peers.
    let good = raw_client(4, mesh, server).await.unwrap();
    let reply = good
        .request(Message::Bulk(vec![1, 2, 3]), WAIT)
        .await
        .unwrap();
    assert_eq!(reply, Message::Bulk(vec![1, 2, 3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_frame_closes_that_connection_only() {
    hostile_frame_closes_connection(
        |w| {
            let mut b = w
                .seal_to_vec(&Envelope::new(Message::Bulk(vec![9; 100])))
                .unwrap();
            let n = b.len();
            b[n - 20] ^= 0x40;
            b
        },
        "failed authentication",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_from_its_header() {
    hostile_frame_closes_connection(
        |w| {
            let mut plain = (100u32 << 20).to_be_bytes().to_vec();
            plain.extend_from_slice(&[0; 64]);
            w.seal_plaintext_to_vec(&plain).unwrap()
        },
        "exceeds the limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_an_error_not_a_panic() {
    hostile_frame_closes_connection(
        |w| {
            w.seal_plaintext_to_vec(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
                .unwrap()
        },
        "malformed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_handshake_is_refused() {
    let (a, _, _) = node(1, [7; 32], vec![]);
    let conn = endpoint()
        .connect(a.local_addr().unwrap(), "lifeboat")
        .unwrap()
        .await
        .unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    s.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    match tokio::time::timeout(WAIT, conn.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::HANDSHAKE),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_kind_this_build_does_not_know_is_skipped_and_the_stream_goes_on() {
    #[derive(serde::Serialize)]
    enum Newer {
        FromTheFuture { x: u32 },
    }
    let mesh = [7; 32];
    let (a, _, _) = node(1, mesh, vec![key(3)]);
    let c = raw_client(3, mesh, a.local_addr().unwrap()).await.unwrap();
    let (mut w, mut r) = c.open_bi().await.unwrap();
    // A newer peer's message, then a request this build knows, on one stream.
    let body = rmp_serde::to_vec(&(
        lifeboat_protocol::PROTOCOL_VERSION,
        Newer::FromTheFuture { x: 1 },
    ))
    .unwrap();
    let mut plain = (body.len() as u32).to_be_bytes().to_vec();
    plain.extend_from_slice(&body);
    let mut wire = w.seal_plaintext_to_vec(&plain).unwrap();
    wire.extend(
        w.seal_to_vec(&Envelope::new(Message::Bulk(vec![4, 5, 6])))
            .unwrap(),
    );
    w.send_raw(&wire).await.unwrap();
    let reply = tokio::time::timeout(WAIT, r.expect())
        .await
        .expect("a reply in time")
        .unwrap();
    assert_eq!(reply, Message::Bulk(vec![4, 5, 6]));
    assert_eq!(a.stats().frame_errors.load(Ordering::Relaxed), 0);
}
