//! Transport benchmark: 1 GiB over loopback through (a) plain quinn streams and (b) Lifeboat's
//! Noise-sealed streams (same QUIC tuning), printing MiB/s for each and the ratio b/a (target
//! >= 0.8), and the handshake time of each. Run with `cargo bench -p lifeboat-node --bench
//! transport` (LIFEBOAT_BENCH_MIB overrides the volume).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lifeboat_actors::mesh::PskKind;
use lifeboat_actors::shell::KeyStatus;
use lifeboat_node::tls::{self, TlsIdentity, Tuning};
use lifeboat_node::transport::{self, Admission, Expect, Local};
use lifeboat_protocol::handshake::{psk_id, PskId};
use lifeboat_protocol::message::Hello;
use lifeboat_protocol::{Message, PublicKey, StaticKeypair};
use std::sync::RwLock;
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;
const PSK: [u8; 32] = [7; 32];

struct Open;
impl Admission for Open {
    fn resolve_psk(&self, id: PskId) -> BoxFuture<'static, Option<PskKind>> {
        async move { (id == psk_id(&PSK)).then_some(PskKind::Mesh(PSK)) }.boxed()
    }
    fn check_key(&self, _: PublicKey) -> BoxFuture<'static, KeyStatus> {
        async {
            KeyStatus {
                member: true,
                authority: false,
            }
        }
        .boxed()
    }
}

fn local(seed: u8) -> Local {
    Local {
        keypair: StaticKeypair::generate([seed; 32]),
        hello: RwLock::new(Hello {
            name: format!("b{seed}"),
            roles: vec![],
            listen_port: 0,
            mesh_id: None,
            version: 0,
        }),
        tuning: Tuning::default(),
    }
}

fn endpoint() -> quinn::Endpoint {
    let id = TlsIdentity::generate().expect("cert");
    tls::endpoint(
        "127.0.0.1:0".parse().expect("addr"),
        &id,
        &Tuning::default(),
    )
    .expect("endpoint")
}

async fn plain(total: usize) -> (Duration, Duration) {
    let server = endpoint();
    let client = endpoint();
    let addr = server.local_addr().expect("addr");
    let srv = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        // Plain quinn at the limits an admitted Lifeboat connection gets.
        tls::admit(&conn, &Tuning::default());
        let mut r = conn.accept_uni().await.expect("uni");
        let mut n = 0usize;
        while let Some(c) = r.read_chunk(CHUNK, true).await.expect("read") {
            n += c.bytes.len();
        }
        (n, conn, server)
    });
    let t0 = Instant::now();
    let conn = client
        .connect(addr, "lifeboat")
        .expect("connect")
        .await
        .expect("conn");
    let hs = t0.elapsed();
    let buf = vec![0x5au8; CHUNK];
    let t1 = Instant::now();
    let mut w = conn.open_uni().await.expect("uni");
    let mut sent = 0;
    while sent < total {
        w.write_all(&buf).await.expect("write");
        sent += CHUNK;
    }
    w.finish().expect("finish");
    let (n, _c, _s) = srv.await.expect("server");
    let dt = t1.elapsed();
    assert_eq!(n, total);
    (dt, hs)
}

async fn sealed(total: usize) -> (Duration, Duration) {
    let server = endpoint();
    let client = endpoint();
    let addr = server.local_addr().expect("addr");
    let srv = tokio::spawn(async move {
        let inc = server.accept().await.expect("incoming");
        let c = transport::accept(inc, &local(1), &Open, [3; 32])
            .await
            .expect("accept");
        let mut r = c.accept_uni().await.expect("uni");
        let mut n = 0usize;
        while let Some(env) = r.next().await.expect("frame") {
            if let Message::Bulk(b) = env.msg {
                n += b.len();
            }
        }
        (n, c, server)
    });
    let t0 = Instant::now();
    let c = transport::connect(&client, &local(2), addr, PSK, Expect::Any, &Open, [4; 32])
        .await
        .expect("connect");
    let hs = t0.elapsed();
    let t1 = Instant::now();
    let mut w = c.open_uni().await.expect("uni");
    let mut sent = 0;
    while sent < total {
        w.send(Message::Bulk(vec![0x5au8; CHUNK]))
            .await
            .expect("send");
        sent += CHUNK;
    }
    w.finish();
    let (n, _c, _s) = srv.await.expect("server");
    let dt = t1.elapsed();
    assert_eq!(n, total);
    (dt, hs)
}

fn mibps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("LIFEBOAT_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let total = mib * CHUNK;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        // Warm up both paths once (page faults, allocator), then measure alternately.
        plain(64 * CHUNK).await;
        sealed(64 * CHUNK).await;
        let mut best_a = (Duration::MAX, Duration::MAX);
        let mut best_b = (Duration::MAX, Duration::MAX);
        for _ in 0..2 {
            let a = plain(total).await;
            let b = sealed(total).await;
            best_a = (best_a.0.min(a.0), best_a.1.min(a.1));
            best_b = (best_b.0.min(b.0), best_b.1.min(b.1));
        }
        // Handshake latency: median of 30 fresh connections each.
        let mut ha = Vec::new();
        let mut hb = Vec::new();
        for _ in 0..30 {
            ha.push(plain(CHUNK).await.1);
            hb.push(sealed(CHUNK).await.1);
        }
        ha.sort();
        hb.sort();
        let (a, b) = (mibps(total, best_a.0), mibps(total, best_b.0));
        println!("transport bench: {mib} MiB over loopback, best of 2");
        println!("  (a) plain quinn stream:          {a:8.1} MiB/s");
        println!("  (b) lifeboat sealed stream:      {b:8.1} MiB/s");
        println!(
            "  ratio b/a:                       {:8.3}  (target >= 0.8)",
            b / a
        );
        println!(
            "  handshake (median of 30): QUIC {:.2} ms, QUIC+Noise XXpsk3 {:.2} ms",
            ha[15].as_secs_f64() * 1e3,
            hb[15].as_secs_f64() * 1e3
        );
    });
}
