//! The attacker's side of the protocol: a connection made with a member's stolen identity and
//! mesh secret (read from its state directory, as root on that machine could).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lifeboat_actors::mesh::PskKind;
use lifeboat_actors::shell::KeyStatus;
use lifeboat_config::{state, StateDir};
use lifeboat_node::tls::{self, TlsIdentity, Tuning};
use lifeboat_node::transport::{self, Admission, Expect, Local, SecureConn};
use lifeboat_protocol::handshake::PskId;
use lifeboat_protocol::message::Hello;
use lifeboat_protocol::{Message, PublicKey};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

struct Anyone;
impl Admission for Anyone {
    fn resolve_psk(&self, _: PskId) -> BoxFuture<'static, Option<PskKind>> {
        async { None }.boxed()
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

/// A live connection as the member whose state directory was stolen.
pub struct Impostor {
    pub rt: tokio::runtime::Runtime,
    pub conn: SecureConn,
    _ep: quinn::Endpoint,
}

impl Impostor {
    /// Connects to `to` as the member of `stolen` (its daemon must be stopped).
    pub fn connect(stolen: &Path, to: &str) -> Impostor {
        let dir = StateDir::new(stolen);
        let kp = state::load_identity(&dir).unwrap();
        let secret = state::load_mesh(&dir).unwrap().unwrap().secret;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr: SocketAddr = to.parse().unwrap();
        let (ep, conn) = rt.block_on(async {
            let ep = tls::endpoint(
                "127.0.0.1:0".parse().unwrap(),
                &TlsIdentity::generate().unwrap(),
                &Tuning::default(),
            )
            .unwrap();
            let local = Local {
                keypair: kp,
                hello: RwLock::new(Hello {
                    name: "impostor".into(),
                    roles: vec![],
                    listen_port: 0,
                    mesh_id: None,
                    version: 0,
                }),
                tuning: Tuning::default(),
            };
            let c = transport::connect(&ep, &local, addr, secret, Expect::Any, &Anyone, [7; 32])
                .await
                .unwrap();
            (ep, c)
        });
        Impostor { rt, conn, _ep: ep }
    }

    /// Sends a one-way message.
    pub fn tell(&self, msg: Message) {
        self.rt.block_on(async {
            let mut w = self.conn.open_uni().await.unwrap();
            w.send(msg).await.unwrap();
            w.finish();
        });
    }

    /// Opens a stream with `first` and returns the first answer.
    pub fn ask(&self, first: Message) -> Message {
        self.rt.block_on(async {
            let (mut w, mut r) = self.conn.open_bi().await.unwrap();
            w.send(first).await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), r.expect())
                .await
                .unwrap()
                .unwrap()
        })
    }
}
