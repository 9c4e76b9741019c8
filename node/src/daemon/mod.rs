//! `lifeboat node run`: assembles the daemon.
//!
//! Threads and runtimes: actix (a current-thread tokio runtime) runs the actors and the control
//! socket; quinn runs on its own multi-threaded tokio runtime ("lifeboat-quic"); mdns-sd runs
//! its own thread. The network side reaches actors through their addresses (bounded mailboxes),
//! and actors reach the network through the [`Net`] handle (the `Transport` seam).
//!
//! Shutdown: SIGINT, SIGTERM or a `Shutdown` control request: discovery withdraws our record,
//! QUIC connections close with code 0, the control socket is removed, the process exits 0.
//!
//! Modules: this one assembles the daemon and hosts the glue actors; [`route`] decides and
//! dispatches what peers send; `control` serves the local control socket (the CLI).

mod control;
mod http;
mod recovery;
pub mod route;

use control::{control_loop, forwardable, replication_admin};
use route::facts;
pub use route::route;

use crate::control::{Request, Response, MAX_LINE};
use crate::discovery::MdnsDiscovery;
use crate::net::{Inbound, Net, PeerInfo};
use crate::replication::Repl;
use crate::seams::{DirStore, OsRng, SystemClock};
use crate::tls::{self, TlsIdentity, Tuning};
use crate::transport::{Admission, Admitted, Local, SecureConn, TransportError};
use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lifeboat_actors::authz;
use lifeboat_actors::mesh::{mesh_id_hex, Mesh, PskKind};
use lifeboat_actors::peers::{PeerTable, PeerTableConfig};
use lifeboat_actors::seams::{Announcement, Clock, Discovery};
use lifeboat_actors::shell::*;
use lifeboat_config::{state, Config, ConfigError, StateDir};
use lifeboat_protocol::handshake::PskId;
use lifeboat_protocol::message::{Hello, RoleOp};
use lifeboat_protocol::regkey::RegistrationKey;
use lifeboat_protocol::{Message, NodeId, PublicKey, Role};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Daemon start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or state problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another daemon owns the state dir.
    #[error("a lifeboat daemon is already running for {0} (stop it with `lifeboat node stop --state-dir {0}`)")]
    AlreadyRunning(String),
    /// Start-up failed.
    #[error("{0}")]
    Start(String),
}

/// Everything a running daemon's handlers share.
struct Ctx {
    /// State directory.
    dir: StateDir,
    /// Loaded configuration.
    cfg: Config,
    /// Identity and hello.
    local: Arc<Local>,
    /// Network.
    net: Net,
    /// The quinn runtime.
    quic: tokio::runtime::Handle,
    /// Actors.
    roles: Addr<RolesActor>,
    /// Actors.
    mesh: Addr<MeshActor>,
    /// Actors.
    peers: Addr<PeersActor>,
    /// Addresses to advertise.
    advertise: Vec<SocketAddr>,
    /// Shutdown trigger.
    stop: tokio::sync::mpsc::Sender<()>,
    /// Replication.
    repl: Arc<Repl>,
}

/// Admission backed by the mesh actor.
struct ActorAdmission(Addr<MeshActor>);

impl Admission for ActorAdmission {
    fn resolve_psk(&self, id: PskId) -> BoxFuture<'static, Option<PskKind>> {
        let f = self.0.send(ResolvePsk(id));
        async move { f.await.ok().flatten() }.boxed()
    }
    fn check_key(&self, key: PublicKey) -> BoxFuture<'static, KeyStatus> {
        let f = self.0.send(CheckKey(key));
        async move {
            f.await.unwrap_or(KeyStatus {
                member: false,
                authority: false,
            })
        }
        .boxed()
    }
}

/// Routes network input to the actors.
struct ActorInbound {
    /// Peers actor (set once started; it needs the network first).
    peers: OnceLock<Addr<PeersActor>>,
    /// Roles actor.
    roles: Addr<RolesActor>,
    /// Mesh actor.
    mesh: Addr<MeshActor>,
    /// Replication (set once started; it needs the network first).
    repl: OnceLock<Arc<Repl>>,
}

impl Inbound for ActorInbound {
    fn connected(&self, c: &SecureConn) {
        if let Some(p) = self.peers.get() {
            // Connection events are rare and must not be dropped: unbounded do_send.
            p.do_send(ConnectedMsg {
                id: c.peer_id(),
                conn: c.conn.stable_id() as u64,
                addr: c.conn.remote_address(),
                name: c.hello.name.clone(),
                roles: c.hello.roles.clone(),
                listen_port: c.hello.listen_port,
                outbound: c.outbound,
            });
        }
    }
    fn disconnected(&self, id: NodeId, conn: u64) {
        if let Some(p) = self.peers.get() {
            p.do_send(DisconnectedMsg(id, conn));
        }
    }
    fn dial_failed(&self, addr: SocketAddr, _: &TransportError) {
        if let Some(p) = self.peers.get() {
            p.do_send(DialFailedMsg(addr));
        }
    }
    fn message(&self, from: PeerInfo, msg: Message) -> BoxFuture<'static, Option<Message>> {
        let peers = self.peers.get().cloned();
        let roles = self.roles.clone();
        let mesh = self.mesh.clone();
        let repl = self.repl.get().cloned();
        async move { route(from, msg, peers, roles, mesh, repl).await }.boxed()
    }
    fn stream(
        &self,
        from: PeerInfo,
        first: Message,
        mut w: crate::transport::FrameWriter,
        r: crate::transport::FrameReader,
    ) -> BoxFuture<'static, ()> {
        let repl = self.repl.get().cloned();
        let roles = self.roles.clone();
        let mesh = self.mesh.clone();
        async move {
            // Replication is accepted only between granted roles.
            let sender = from.key.node_id();
            let verdict = match facts(&from, &roles, &mesh).await {
                Some((f, _)) => authz::authorize(&first, &f),
                None => Err(authz::Refusal::NotHere("is shutting down")),
            };
            let reason = match (repl, first, verdict) {
                (Some(repl), Message::DeltaBegin(h), Ok(())) => {
                    return crate::replication::ps::serve(repl, sender, h, w, r).await;
                }
                (_, _, Err(refusal)) => {
                    if refusal.is_suspicious() {
                        tracing::warn!(peer = %sender, cause = %refusal, "refused a replication stream");
                    }
                    refusal.to_string()
                }
                _ => "this node does not serve this stream".to_string(),
            };
            let _ = w
                .send(Message::PointFailed(
                    lifeboat_protocol::message::PointFailure::Refused { reason },
                ))
                .await;
            w.finish();
        }
        .boxed()
    }
}

/// Keeps the handshake hello and the network's mesh secret in step with roles and membership.
struct HelloSync {
    /// Our hello.
    local: Arc<Local>,
    /// Network (gets the mesh secret).
    net: Net,
    /// Mesh actor (holds the secret).
    mesh: Addr<MeshActor>,
    /// Roles actor: in a mesh, our roles are the ones the authority granted us.
    roles: Addr<RolesActor>,
}

impl Actor for HelloSync {
    type Context = Context<Self>;
}

impl Handler<RolesChanged> for HelloSync {
    type Result = ();
    fn handle(&mut self, m: RolesChanged, _: &mut Context<Self>) {
        if let Ok(mut h) = self.local.hello.write() {
            h.roles = m.0;
        }
    }
}

impl Handler<MembersChanged> for HelloSync {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, m: MembersChanged, _: &mut Context<Self>) -> Self::Result {
        if let Ok(mut h) = self.local.hello.write() {
            h.mesh_id = m.mesh_id;
        }
        if m.mesh_id.is_some() {
            self.net
                .retain_members(|id| m.members.iter().any(|x| x.node_id() == *id));
            let me = self.local.keypair.node_id();
            let granted: std::collections::BTreeSet<Role> =
                m.granted_roles(me).into_iter().collect();
            let roles = self.roles.clone();
            actix::spawn(async move {
                match roles.send(SetRoles(granted)).await {
                    Ok(Err(e)) => tracing::error!(cause = %e, "could not apply the granted roles"),
                    Err(_) | Ok(Ok(_)) => {}
                }
            });
        }
        let f = self.mesh.send(GetSecret);
        Box::pin(f.into_actor(self).map(|r, act, _| {
            let (current, previous) = r.unwrap_or((None, None));
            act.net.set_mesh_psk(current, previous);
        }))
    }
}

/// Addresses other nodes should use for us.
fn advertise_addrs(cfg: &Config, bound: SocketAddr) -> Vec<SocketAddr> {
    if !cfg.node.advertise.is_empty() {
        return cfg.node.advertise.clone();
    }
    let port = bound.port();
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| matches!(ip, IpAddr::V4(_)))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    out.truncate(8);
    out
}

/// What the daemon has before its actors start.
struct Prepared {
    cfg: Config,
    keypair: lifeboat_protocol::StaticKeypair,
    roles: state::RolesFile,
    mesh_file: Option<state::MeshFile>,
    quic: tokio::runtime::Runtime,
    ep: quinn::Endpoint,
    bound: SocketAddr,
    advertise: Vec<SocketAddr>,
    local: Arc<Local>,
}

/// Loads the node's configuration and identity, refuses a second daemon on the same state
/// directory, and binds the QUIC endpoint.
fn prepare(dir: &StateDir) -> Result<Prepared, DaemonError> {
    dir.ensure_initialized()?;
    let cfg = Config::load(&dir.config_path())?;
    let keypair = state::load_identity(dir)?;
    let roles = state::load_roles(dir)?;
    let mesh_file = state::load_mesh(dir)?;
    let sock = dir.control_socket();
    if crate::control::is_running(&sock) {
        return Err(DaemonError::AlreadyRunning(dir.root.display().to_string()));
    }
    let _ = std::fs::remove_file(&sock);
    let tls_id = TlsIdentity::load_or_create(&dir.tls_cert_path(), &dir.tls_key_path())
        .map_err(DaemonError::Start)?;

    let (quic, ep, tuning) = quic_endpoint(&cfg, &tls_id)?;
    let bound = ep
        .local_addr()
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let advertise = advertise_addrs(&cfg, bound);
    let local = Arc::new(Local {
        keypair: keypair.clone(),
        hello: std::sync::RwLock::new(Hello {
            name: cfg.node.name.clone(),
            roles: roles.roles.iter().copied().collect(),
            listen_port: bound.port(),
            mesh_id: mesh_file.as_ref().map(|m| m.mesh_id),
            version: 0,
        }),
        tuning: tuning.clone(),
    });
    tracing::info!(node = %keypair.node_id(), name = %cfg.node.name, listen = %bound, "lifeboat node starting");
    Ok(Prepared {
        cfg,
        keypair,
        roles,
        mesh_file,
        quic,
        ep,
        bound,
        advertise,
        local,
    })
}

/// Runs the daemon of `dir` until a signal or a shutdown request.
pub fn run(dir: StateDir) -> Result<(), DaemonError> {
    let Prepared {
        cfg,
        keypair,
        roles,
        mesh_file,
        quic,
        ep,
        bound,
        advertise,
        local,
    } = prepare(&dir)?;
    let sys = actix::System::new();
    let quic_handle = quic.handle().clone();
    let result = sys.block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mesh = MeshActor::new(
            Mesh::new(keypair.public, mesh_file),
            Box::new(DirStore(dir.clone())),
            clock.clone(),
            Box::new(OsRng),
        )
        .start();
        let roles_addr =
            RolesActor::new(roles.roles.clone(), Box::new(DirStore(dir.clone()))).start();
        let inbound = Arc::new(ActorInbound {
            peers: OnceLock::new(),
            roles: roles_addr.clone(),
            mesh: mesh.clone(),
            repl: OnceLock::new(),
        });
        let net = Net::start(
            ep,
            local.clone(),
            Arc::new(ActorAdmission(mesh.clone())),
            inbound.clone(),
            quic_handle.clone(),
        );
        let peers = PeersActor::new(
            peer_table(&cfg, keypair.node_id()),
            cfg.node.name.clone(),
            bound.port(),
            Arc::new(net.clone()),
            clock.clone(),
            Some(mesh.clone()),
            Duration::from_millis(250),
        )
        .start();
        let _ = inbound.peers.set(peers.clone());
        let repl = Repl::new(
            dir.clone(),
            net.clone(),
            keypair.node_id(),
            cfg.node.name.clone(),
            roles_addr.clone(),
            mesh.clone(),
            peers.clone(),
            cfg.replication.spool_max_bytes,
            cfg.replication.spool_memory_bytes,
            quic_handle.clone(),
        )
        .map_err(DaemonError::Start)?;
        let _ = inbound.repl.set(repl.clone());
        if let Some(u) = &cfg.alerts.webhook {
            let _ = repl.cfg.webhook_url.set(u.clone());
        }
        repl.mobility.do_send(crate::replication::mobility::Resume);
        repl.config
            .do_send(crate::replication::config_side::StartDuties);
        seed_authority_roles(&mesh, keypair.node_id(), &roles.roles).await;
        subscribe(&local, &net, &mesh, &roles_addr, &peers);
        let discovery = start_discovery(
            &cfg,
            &keypair,
            bound.port(),
            &roles.roles,
            &peers,
            &roles_addr,
            &mesh,
        );
        let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(4);
        let ctx = Arc::new(Ctx {
            dir: dir.clone(),
            cfg: cfg.clone(),
            local,
            net: net.clone(),
            quic: quic_handle,
            roles: roles_addr,
            mesh,
            peers,
            advertise,
            stop: stop_tx,
            repl,
        });
        serve_until_stopped(ctx, &mut stop_rx, discovery).await
    });
    quic.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Starts the hello sync and wires the subscriptions: membership first, so the mesh secret
/// is set before peers dial.
fn subscribe(
    local: &Arc<Local>,
    net: &Net,
    mesh: &Addr<MeshActor>,
    roles: &Addr<RolesActor>,
    peers: &Addr<PeersActor>,
) {
    let sync = HelloSync {
        local: local.clone(),
        net: net.clone(),
        mesh: mesh.clone(),
        roles: roles.clone(),
    }
    .start();
    mesh.do_send(SubscribeMembers(sync.clone().recipient()));
    mesh.do_send(SubscribeMembers(peers.clone().recipient()));
    roles.do_send(SubscribeRoles(sync.recipient()));
    roles.do_send(SubscribeRoles(peers.clone().recipient()));
}

/// A mesh file from before roles were recorded: the authority's own roles become its first
/// entries in the membership record (its members' roles must be granted again).
async fn seed_authority_roles(
    mesh: &Addr<MeshActor>,
    me: NodeId,
    roles: &std::collections::BTreeSet<Role>,
) {
    if let Ok(m) = mesh.send(GetMesh).await {
        if m.local_is_authority && m.granted_roles(me).is_empty() {
            for role in roles.iter().copied() {
                let _ = mesh
                    .send(AssignRole {
                        target: me,
                        op: RoleOp::Add,
                        role,
                    })
                    .await;
            }
        }
    }
}

/// Starts mDNS discovery (if configured and available) and subscribes it to role and
/// membership changes.
fn start_discovery(
    cfg: &Config,
    keypair: &lifeboat_protocol::StaticKeypair,
    port: u16,
    roles: &std::collections::BTreeSet<Role>,
    peers: &Addr<PeersActor>,
    roles_addr: &Addr<RolesActor>,
    mesh: &Addr<MeshActor>,
) -> Option<Addr<DiscoveryActor>> {
    if cfg.discovery.mdns {
        let p = peers.clone();
        match MdnsDiscovery::start(keypair.node_id(), move |found| {
            let _ = p.try_send(DiscoveredMsg(found));
        }) {
            Ok(md) => {
                let ann = Announcement {
                    node_id: keypair.node_id(),
                    fingerprint: keypair.public.fingerprint().to_string(),
                    name: cfg.node.name.clone(),
                    roles: roles.iter().copied().collect(),
                    port,
                    mesh: None,
                };
                let boxed: Box<dyn Discovery> = Box::new(md);
                let a = DiscoveryActor::new(boxed, ann).start();
                roles_addr.do_send(SubscribeRoles(a.clone().recipient()));
                mesh.do_send(SubscribeMembers(a.clone().recipient()));
                Some(a)
            }
            Err(e) => {
                tracing::warn!(cause = %e, "mDNS unavailable; only static peers will be found");
                None
            }
        }
    } else {
        None
    }
}

/// A process server tells the configuration node its health at each heartbeat interval
/// (for `status` and metrics there).
async fn report_ps_health(ctx: Arc<Ctx>) {
    let every = Duration::from_secs(ctx.cfg.discovery.heartbeat_interval_secs.max(1));
    loop {
        let ps = ctx
            .roles
            .send(GetRoles)
            .await
            .is_ok_and(|r| r.contains(&Role::ProcessServer));
        if ps {
            let h = crate::replication::config_side::ps_health(&ctx.repl).await;
            ctx.repl
                .tell_authorities(Message::PsHealth(h.counters))
                .await;
        }
        tokio::time::sleep(every).await;
    }
}

/// Serves the control socket until a signal or a shutdown request, then shuts down in order:
/// the mDNS record withdrawn, connections closed (and waited for), the socket removed.
async fn serve_until_stopped(
    ctx: Arc<Ctx>,
    stop_rx: &mut tokio::sync::mpsc::Receiver<()>,
    discovery: Option<Addr<DiscoveryActor>>,
) -> Result<(), DaemonError> {
    let listener = bind_control(&ctx.dir).map_err(DaemonError::Start)?;
    if let Some(addr) = ctx.cfg.http.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| DaemonError::Start(format!("[http] listen {addr}: {e}")))?;
        let token = http::token(&ctx.dir, addr).map_err(DaemonError::Start)?;
        tracing::info!(addr = %l.local_addr().unwrap_or(addr), token = token.is_some(), "http listener ready (/metrics; the dashboard at / on a configuration node)");
        actix_rt::spawn(http::serve(l, ctx.clone(), token));
    }
    actix_rt::spawn(control_loop(listener, ctx.clone()));
    actix_rt::spawn(signals(ctx.stop.clone()));
    actix_rt::spawn(report_ps_health(ctx.clone()));
    tracing::info!(socket = %ctx.dir.control_socket().display(), "control socket ready");
    let _ = stop_rx.recv().await;
    tracing::info!("shutting down");
    // Replication sessions in flight (served here, and this machine's own cycle) get a few
    // seconds to commit before connections close.
    let grace = Duration::from_secs(3);
    let (_, abandoned) = tokio::join!(
        ctx.repl
            .ps_actor
            .send(crate::replication::ps::Drain { grace }),
        ctx.repl
            .mobility
            .send(crate::replication::mobility::Shutdown { grace }),
    );
    let _ = ctx
        .repl
        .config
        .send(crate::replication::config_side::Shutdown)
        .await;
    if abandoned.unwrap_or(false) {
        tracing::info!(
            "this machine's replication cycle was abandoned; the next point carries its changes"
        );
    }
    if let Some(a) = discovery {
        // Stopping the actor withdraws the mDNS record.
        let _ = a.send(StopDiscovery).await;
    }
    ctx.net.shutdown();
    let n = ctx.net.clone();
    let _ = ctx.quic.spawn(async move { n.wait_idle().await }).await;
    let _ = std::fs::remove_file(ctx.dir.control_socket());
    System::current().stop();
    Ok(())
}

/// The QUIC runtime (its own two threads) and the bound endpoint.
fn quic_endpoint(
    cfg: &Config,
    tls_id: &TlsIdentity,
) -> Result<(tokio::runtime::Runtime, quinn::Endpoint, Tuning), DaemonError> {
    let quic = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lifeboat-quic")
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let tuning = Tuning {
        idle_timeout: Duration::from_secs(cfg.discovery.unreachable_after_secs.max(4)),
        keep_alive: Duration::from_secs(cfg.discovery.heartbeat_interval_secs.max(1)),
        ..Tuning::default()
    };
    let ep = {
        let _g = quic.enter();
        tls::endpoint(cfg.node.listen, tls_id, &tuning).map_err(DaemonError::Start)?
    };
    Ok((quic, ep, tuning))
}

/// The peer table with the configured discovery timings and static peers, seeded by the OS.
fn peer_table(cfg: &Config, me: NodeId) -> PeerTable {
    let d = &cfg.discovery;
    PeerTable::new(
        me,
        PeerTableConfig {
            heartbeat_interval_ms: d.heartbeat_interval_secs * 1000,
            unreachable_after_ms: d.unreachable_after_secs * 1000,
            forget_after_ms: d.forget_after_secs * 1000,
            static_peers: d.peers.clone(),
            ..PeerTableConfig::default()
        },
        u64::from_le_bytes(
            lifeboat_actors::seams::Rng::seed32(&mut OsRng)[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ),
    )
}

fn bind_control(dir: &StateDir) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.control_socket();
    let l = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("cannot create control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

async fn signals(stop: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
    let _ = stop.send(()).await;
}
