//! `lifeboat node run`: assembles the daemon.
//!
//! Threads and runtimes: actix (a current-thread tokio runtime) runs the actors and the control
//! socket; quinn runs on its own multi-threaded tokio runtime ("lifeboat-quic"); mdns-sd runs
//! its own thread. The network side reaches actors through their addresses (bounded mailboxes),
//! and actors reach the network through the [`Net`] handle (the `Transport` seam).
//!
//! Shutdown: SIGINT, SIGTERM or a `Shutdown` control request: discovery withdraws our record,
//! QUIC connections close with code 0, the control socket is removed, the process exits 0.

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
use serde_json::json;
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

/// Background duties of the replication roles: keep the vault open, grant it to process
/// servers, watch RPO. Runs on the quinn runtime.
async fn replication_duties(repl: Arc<Repl>) {
    loop {
        repl.drop_vault_unless_needed().await;
        if let Err(e) = repl.open_vault().await {
            tracing::warn!(cause = %e, "vault not reachable yet");
        }
        crate::replication::config_side::tick(&repl).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
            let _ = w.send(Message::PointFailed { reason }).await;
            w.finish();
        }
        .boxed()
    }
}

fn err(m: impl Into<String>) -> Option<Message> {
    Some(Message::Error { message: m.into() })
}

/// What the authorization rules need to know about `from` and this node.
async fn facts(
    from: &PeerInfo,
    roles: &Addr<RolesActor>,
    mesh: &Addr<MeshActor>,
) -> Option<(authz::Facts, MembersChanged)> {
    let m = mesh.send(GetMesh).await.ok()?;
    let f = authz::Facts {
        registration: matches!(from.admitted, Admitted::Registration(_)),
        authority: m.authorities.contains(&from.key),
        sender_roles: m.granted_roles(from.key.node_id()),
        local_roles: roles.send(GetRoles).await.ok()?,
    };
    Some((f, m))
}

/// Routes one message from an authenticated peer to the actors; returns the reply, if any.
/// Every message passes [`authz::authorize`] first: checked against the sender's authenticated
/// id and the roles the authority granted it, never its name or its own claims.
pub async fn route(
    from: PeerInfo,
    msg: Message,
    peers: Option<Addr<PeersActor>>,
    roles: Addr<RolesActor>,
    mesh: Addr<MeshActor>,
    repl: Option<Arc<Repl>>,
) -> Option<Message> {
    let from_id = from.key.node_id();
    let (f, members) = facts(&from, &roles, &mesh).await?;
    if let Err(refusal) = authz::authorize(&msg, &f) {
        if refusal.is_suspicious() {
            tracing::warn!(peer = %from_id, message = msg.kind(), cause = %refusal, "refused a message");
        }
        // One-way messages get no answer; requests get the reason.
        return match msg {
            Message::PointNotice(_) | Message::Report(_) | Message::Heartbeat { .. } => None,
            Message::MembershipUpdate { .. } => None,
            _ => err(refusal.to_string()),
        };
    }
    match msg {
        Message::Register { name, now, addrs } => {
            let Admitted::Registration(key_id) = from.admitted else {
                return err("registration needs a registration key");
            };
            if lifeboat_config::validate_name(&name).is_err() || addrs.len() > 16 {
                return err("invalid registration request");
            }
            match mesh
                .send(Register {
                    key_id,
                    joiner: from.key,
                    name,
                    addrs,
                    joiner_now: now,
                })
                .await
            {
                Ok(Ok(grant)) => Some(Message::Registered(grant)),
                Ok(Err(refusal)) => Some(Message::RegisterRefused(refusal)),
                Err(_) => err("configuration node is shutting down"),
            }
        }
        Message::Heartbeat {
            name,
            roles: r,
            membership_version,
            ..
        } => {
            if let Some(p) = peers {
                let _ = p.try_send(HeartbeatMsg {
                    from: from.key,
                    name,
                    roles: r,
                    membership_version,
                });
            }
            None
        }
        Message::MembershipUpdate {
            version,
            members,
            secret,
        } => {
            let _ = mesh
                .send(MembershipIn {
                    from: from.key,
                    version,
                    members,
                    secret: secret.map(|s| Secret(s.0)),
                })
                .await;
            None
        }
        Message::MembershipRequest => mesh.send(MembershipMessage).await.ok().flatten(),
        Message::Bulk(b) => Some(Message::Bulk(b[..b.len().min(8)].to_vec())),
        Message::VaultGrant(g) => {
            let repl = repl?;
            let cfg = crate::vault::VaultConfig {
                name: g.name,
                url: g.url,
                master_key: lifeboat_protocol::vault::hex(&g.master_key),
                rotations: g
                    .rotations
                    .iter()
                    .map(|k| lifeboat_protocol::vault::hex(k))
                    .collect(),
                options: g.options.into_iter().collect(),
                grant_options: None,
            };
            if repl.vault_cfg.lock().ok().and_then(|c| c.clone()) == Some(cfg.clone()) {
                return Some(Message::Accept);
            }
            match repl.set_vault_config(cfg) {
                Ok(()) => {
                    tracing::info!("vault granted by the configuration node");
                    Some(Message::Accept)
                }
                Err(e) => err(e),
            }
        }
        Message::Protect(spec) => {
            let repl = repl?;
            if spec.machine != repl.local {
                return err("this protection is for another machine");
            }
            match crate::replication::mobility::start(&repl, spec) {
                Ok(()) => Some(Message::Accept),
                Err(e) => err(e),
            }
        }
        Message::Unprotect { machine } => {
            let repl = repl?;
            if machine != repl.local {
                return err("this protection is for another machine");
            }
            crate::replication::mobility::stop(&repl);
            Some(Message::Accept)
        }
        Message::PointNotice(s) => {
            let repl = repl?;
            // Verified against the vault (the source of truth), off this stream's handler.
            tokio::spawn(async move {
                if let Err(e) =
                    crate::replication::config_side::point_notice(&repl, from_id, s).await
                {
                    tracing::warn!(peer = %from_id, cause = %e, "refused a point notice");
                }
            });
            None
        }
        Message::Admin { request } => {
            let repl = repl?;
            let req: Request = match serde_json::from_str(&request) {
                Ok(r) => r,
                Err(e) => return err(format!("malformed admin request: {e}")),
            };
            if !forwardable(&req) {
                return err("this command must be run on the configuration node itself");
            }
            // Bound to the authenticated sender: a member may only ask about or change its own
            // machine (names are display; they resolve to ids first, and are unique).
            let req = match own_machine_only(req, from_id, &members) {
                Ok(r) => r,
                Err(why) => {
                    tracing::warn!(peer = %from_id, cause = %why, "refused a forwarded command");
                    return Some(Message::AdminReply {
                        ok: false,
                        body: why,
                    });
                }
            };
            tracing::info!(from = %from_id, "replication command forwarded by a member");
            Some(match replication_admin(repl, req).await {
                Ok(v) => Message::AdminReply {
                    ok: true,
                    body: v.to_string(),
                },
                Err(e) => Message::AdminReply { ok: false, body: e },
            })
        }
        Message::Report(r) => {
            let repl = repl?;
            crate::replication::config_side::report(&repl, from_id, r);
            None
        }
        _ => err("unexpected message"),
    }
}

/// Restricts a command forwarded by member `from` to its own machine: `protect`, `unprotect`
/// and `points` must name it (by id or its unique name), `status` is narrowed to it. Disks
/// and hooks are thus only ever set for a machine by itself or on the configuration node.
fn own_machine_only(req: Request, from: NodeId, mesh: &MembersChanged) -> Result<Request, String> {
    let is_me = |machine: &str| authz::is_own_machine(from, machine, &mesh.members);
    match req {
        Request::Protect { ref machine, .. }
        | Request::Unprotect { ref machine }
        | Request::Points { ref machine }
            if !is_me(machine) =>
        {
            Err(format!(
                "a member may only protect, unprotect or list the points of its own machine, not {machine:?}; run the command on the configuration node"
            ))
        }
        Request::ReplStatus { machine: Some(m) } if !is_me(&m) => Err(format!(
            "a member may only see the status of its own machine, not {m:?}; run the command on the configuration node"
        )),
        Request::ReplStatus { .. } => Ok(Request::ReplStatus {
            machine: Some(from.to_string()),
        }),
        other => Ok(other),
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

/// Runs the daemon of `dir` until a signal or a shutdown request.
pub fn run(dir: StateDir) -> Result<(), DaemonError> {
    dir.ensure_initialized()?;
    let cfg = Config::load(&dir.config_path())?;
    let keypair = state::load_identity(&dir)?;
    let roles = state::load_roles(&dir)?;
    let mesh_file = state::load_mesh(&dir)?;
    let sock = dir.control_socket();
    if crate::control::is_running(&sock) {
        return Err(DaemonError::AlreadyRunning(dir.root.display().to_string()));
    }
    let _ = std::fs::remove_file(&sock);
    let tls_id = TlsIdentity::load_or_create(&dir.tls_cert_path(), &dir.tls_key_path())
        .map_err(DaemonError::Start)?;

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
        tls::endpoint(cfg.node.listen, &tls_id, &tuning).map_err(DaemonError::Start)?
    };
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
        let d = &cfg.discovery;
        let table = PeerTable::new(
            keypair.node_id(),
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
        );
        let peers = PeersActor::new(
            table,
            cfg.node.name.clone(),
            bound.port(),
            Arc::new(net.clone()),
            clock.clone(),
            Some(mesh.clone()),
            Duration::from_millis(250),
        )
        .start();
        let _ = inbound.peers.set(peers.clone());
        let repl = match Repl::new(
            dir.clone(),
            net.clone(),
            keypair.node_id(),
            cfg.node.name.clone(),
            roles_addr.clone(),
            mesh.clone(),
            peers.clone(),
            cfg.replication.spool_max_bytes,
            cfg.replication.spool_memory_bytes,
        ) {
            Ok(r) => r,
            Err(e) => return Err(DaemonError::Start(e)),
        };
        let _ = inbound.repl.set(repl.clone());
        {
            let _g = quic_handle.enter();
            crate::replication::mobility::resume(&repl);
        }
        quic_handle.spawn(replication_duties(repl.clone()));
        let sync = HelloSync {
            local: local.clone(),
            net: net.clone(),
            mesh: mesh.clone(),
            roles: roles_addr.clone(),
        }
        .start();
        // A mesh file from before roles were recorded: the authority's own roles become its
        // first entries (its members' roles must be granted again).
        if let Ok(m) = mesh.send(GetMesh).await {
            let me = keypair.node_id();
            if m.local_is_authority && m.granted_roles(me).is_empty() {
                for role in roles.roles.iter().copied() {
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
        // Subscriptions: membership first so the mesh secret is set before peers dial.
        mesh.do_send(SubscribeMembers(sync.clone().recipient()));
        mesh.do_send(SubscribeMembers(peers.clone().recipient()));
        roles_addr.do_send(SubscribeRoles(sync.recipient()));
        roles_addr.do_send(SubscribeRoles(peers.clone().recipient()));
        let discovery = if cfg.discovery.mdns {
            let p = peers.clone();
            match MdnsDiscovery::start(keypair.node_id(), move |found| {
                let _ = p.try_send(DiscoveredMsg(found));
            }) {
                Ok(md) => {
                    let ann = Announcement {
                        node_id: keypair.node_id(),
                        fingerprint: keypair.public.fingerprint().to_string(),
                        name: cfg.node.name.clone(),
                        roles: roles.roles.iter().copied().collect(),
                        port: bound.port(),
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
        };
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
        let listener = match bind_control(&dir) {
            Ok(l) => l,
            Err(e) => return Err(DaemonError::Start(e)),
        };
        actix_rt::spawn(control_loop(listener, ctx.clone()));
        actix_rt::spawn(signals(ctx.stop.clone()));
        tracing::info!(socket = %dir.control_socket().display(), "control socket ready");
        let _ = stop_rx.recv().await;
        tracing::info!("shutting down");
        if let Some(a) = discovery {
            // Stopping the actor withdraws the mDNS record.
            let _ = a.send(StopDiscovery).await;
        }
        net.shutdown();
        let n = net.clone();
        let _ = ctx.quic.spawn(async move { n.wait_idle().await }).await;
        let _ = std::fs::remove_file(dir.control_socket());
        System::current().stop();
        Ok(())
    });
    quic.shutdown_timeout(Duration::from_secs(2));
    result
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

async fn control_loop(l: tokio::net::UnixListener, ctx: Arc<Ctx>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                actix_rt::spawn(control_conn(s, ctx.clone()));
            }
            Err(e) => {
                tracing::warn!(cause = %e, "control socket accept failed");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn control_conn(s: tokio::net::UnixStream, ctx: Arc<Ctx>) {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_LINE as u64));
    let resp = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => match handle(req, &ctx).await {
                Ok(v) => Response::Ok(v),
                Err(e) => Response::Err(e),
            },
            Err(e) => Response::Err(format!("malformed control request: {e}")),
        },
        Err(e) => Response::Err(format!("control request unreadable: {e}")),
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::from_str(s).map_err(|e| e.to_string())
}

async fn on_quic<T: Send + 'static>(
    ctx: &Ctx,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    ctx.quic.spawn(f).await.map_err(|e| e.to_string())
}

/// Replication commands any node may run: a node without the configuration role forwards them
/// to the configuration node over the mesh.
fn forwardable(req: &Request) -> bool {
    matches!(
        req,
        Request::Protect { .. }
            | Request::Unprotect { .. }
            | Request::Points { .. }
            | Request::ReplStatus { .. }
            | Request::PolicyList
    )
}

/// Runs a forwardable replication command on this (configuration) node.
pub async fn replication_admin(repl: Arc<Repl>, req: Request) -> Result<serde_json::Value, String> {
    use crate::replication::config_side as c;
    match req {
        Request::Protect {
            machine,
            disks,
            policy,
            process_server,
            hooks,
            block_size,
        } => {
            c::protect(
                &repl,
                &machine,
                disks,
                policy,
                process_server,
                hooks,
                block_size,
            )
            .await
        }
        Request::Unprotect { machine } => c::unprotect(&repl, &machine).await,
        Request::Points { machine } => c::points(&repl, &machine).await,
        Request::ReplStatus { machine } => c::status(&repl, machine).await,
        Request::PolicyList => Ok(serde_json::to_value(c::policies(&repl)).unwrap_or_default()),
        _ => Err("this command cannot be forwarded".into()),
    }
}

async fn forward(ctx: &Ctx, req: Request) -> Result<serde_json::Value, String> {
    let Some(to) = ctx.repl.authorities().await.into_iter().next() else {
        return Err("this node is not a configuration node and is not connected to one; run the command on the configuration node or check `lifeboat peers`".into());
    };
    let body = serde_json::to_string(&req).map_err(|e| e.to_string())?;
    let net = ctx.net.clone();
    let reply = on_quic(ctx, async move {
        net.request(to, Message::Admin { request: body }).await
    })
    .await?
    .map_err(|e| format!("configuration node {to}: {e}"))?;
    match reply {
        Message::AdminReply { ok: true, body } => {
            serde_json::from_str(&body).map_err(|e| e.to_string())
        }
        Message::AdminReply { ok: false, body } => Err(body),
        Message::Error { message } => Err(message),
        other => Err(format!(
            "unexpected reply from the configuration node: {other:?}"
        )),
    }
}

async fn handle(req: Request, ctx: &Ctx) -> Result<serde_json::Value, String> {
    if forwardable(&req) {
        let local_config = ctx
            .roles
            .send(GetRoles)
            .await
            .map(|r| r.contains(&Role::Configuration))
            .unwrap_or(false);
        // Status on a node that protects nothing itself is about the mesh: ask the configuration node.
        if !local_config {
            if let Request::ReplStatus { .. } = req {
                // The mesh's machines from the configuration node, this node's own process-server
                // health; local view only when the configuration node is out of reach.
                let local = crate::replication::config_side::ps_health(&ctx.repl);
                let mut v = match forward(ctx, req).await {
                    Ok(v) => v,
                    Err(e) => json!({ "machines": [], "unreachable": e }),
                };
                v["process_server"] = local;
                return Ok(v);
            }
            return forward(ctx, req).await;
        }
    }
    let gone = |_| "daemon is shutting down".to_string();
    match req {
        Request::Status => {
            let roles = ctx.roles.send(GetRoles).await.map_err(gone)?;
            let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
            let kp = &ctx.local.keypair;
            Ok(json!({
                "node_id": kp.node_id().to_string(),
                "name": ctx.cfg.node.name,
                "fingerprint": kp.public.fingerprint().to_string(),
                "roles": roles,
                "listen": ctx.net.local_addr(),
                "advertise": ctx.advertise,
                "mesh_id": mesh.mesh_id.as_ref().map(mesh_id_hex),
                "members": mesh.members.len(),
                "membership_version": mesh.version,
                "authority": mesh.local_is_authority,
                "connected_peers": ctx.net.connected().len(),
                "state_dir": ctx.dir.root,
                "version": env!("CARGO_PKG_VERSION"),
                "protocol": lifeboat_protocol::PROTOCOL_VERSION,
            }))
        }
        Request::RoleAdd { role, node } => role_change(ctx, RoleOp::Add, &role, node).await,
        Request::RoleRemove { role, node } => role_change(ctx, RoleOp::Remove, &role, node).await,
        Request::RoleList { node: None } => {
            let roles = ctx.roles.send(GetRoles).await.map_err(gone)?;
            Ok(json!({ "node_id": ctx.local.keypair.node_id().to_string(), "roles": roles }))
        }
        Request::RoleList { node: Some(n) } => {
            let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
            let id = resolve_member(&mesh, &n)?;
            let peers = ctx.peers.send(ListPeers).await.map_err(gone)?;
            let state = peers
                .iter()
                .find(|p| p.node_id == id.to_string())
                .map(|p| serde_json::to_value(&p.state).unwrap_or_default());
            Ok(
                json!({ "node_id": id.to_string(), "roles": mesh.granted_roles(id), "state": state }),
            )
        }
        Request::MeshRemove { node } => mesh_remove(ctx, &node).await,
        Request::MeshRotateSecret { grace_ms } => {
            ctx.mesh
                .send(RotateSecret { grace_ms })
                .await
                .map_err(gone)?
                .map_err(|e| e.to_string())?;
            Ok(json!({ "rotated": true, "previous_accepted_for_ms": grace_ms }))
        }
        Request::MeshCreate => {
            let roles = ctx.roles.send(GetRoles).await.map_err(gone)?;
            if !roles.contains(&Role::Configuration) {
                return Err("only a configuration node can create a mesh; run `lifeboat role add configuration` first".into());
            }
            let id = ctx
                .mesh
                .send(CreateMesh {
                    name: ctx.cfg.node.name.clone(),
                    addrs: ctx.advertise.clone(),
                    roles,
                })
                .await
                .map_err(gone)?
                .map_err(|e| e.to_string())?;
            Ok(json!({ "mesh_id": mesh_id_hex(&id) }))
        }
        Request::KeyIssue { valid_for_ms } => {
            let key = ctx
                .mesh
                .send(IssueKey {
                    validity_ms: valid_for_ms,
                    addrs: ctx.advertise.clone(),
                })
                .await
                .map_err(gone)?
                .map_err(|e| e.to_string())?;
            Ok(
                json!({ "key": key.encode(), "expires_ms": key.expires.0, "config_addrs": key.config_addrs }),
            )
        }
        Request::Register { key } => register(ctx, &key).await,
        Request::Peers => {
            let peers = ctx.peers.send(ListPeers).await.map_err(gone)?;
            Ok(serde_json::to_value(peers).unwrap_or_default())
        }
        Request::VaultCreate {
            name,
            store,
            options,
            grant_options,
        } => {
            let repl = ctx.repl.clone();
            let mut opts: std::collections::BTreeMap<String, String> =
                options.into_iter().collect();
            // Store settings in this daemon's environment travel with the grant to process servers.
            for (k, v) in std::env::vars() {
                let lk = k.to_ascii_lowercase();
                if lk.starts_with("azure_") || lk.starts_with("aws_") {
                    opts.entry(lk).or_insert(v);
                }
            }
            on_quic(ctx, async move {
                let grant = grant_options.map(|g| g.into_iter().collect());
                crate::replication::config_side::vault_create(&repl, &name, store, opts, grant)
                    .await
            })
            .await?
        }
        Request::VaultRekey => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                crate::replication::config_side::vault_rekey(&repl).await
            })
            .await?
        }
        Request::VaultGc { grace_ms } => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                crate::replication::config_side::gc(&repl, grace_ms).await
            })
            .await?
        }
        Request::PolicyCreate { policy } => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                crate::replication::config_side::policy_create(&repl, policy).await
            })
            .await?
        }
        Request::PolicyDelete { name } => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                crate::replication::config_side::policy_delete(&repl, &name).await
            })
            .await?
        }
        Request::Restore { machine, point, to } => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                crate::replication::config_side::restore(&repl, &machine, &point, &to).await
            })
            .await?
        }
        Request::Throttle {
            work,
            off,
            hours,
            clear,
        } => crate::replication::config_side::throttle(&ctx.repl, work, off, hours, clear),
        // The commands a member may also forward here: one implementation for both paths.
        r @ (Request::Protect { .. }
        | Request::Unprotect { .. }
        | Request::Points { .. }
        | Request::ReplStatus { .. }
        | Request::PolicyList) => on_quic(ctx, replication_admin(ctx.repl.clone(), r)).await?,
        Request::Shutdown => {
            let _ = ctx.stop.try_send(());
            Ok(json!({ "stopping": true }))
        }
    }
}

/// `role add|remove ROLE [--node NODE]`. Outside a mesh a node sets its own roles. In a mesh
/// roles are granted: only the authority changes them, for any member (itself included), by
/// editing the membership record, which reaches each member when it is (or next gets)
/// connected; a member that asks for itself is told where to ask.
async fn role_change(
    ctx: &Ctx,
    op: RoleOp,
    role: &str,
    node: Option<String>,
) -> Result<serde_json::Value, String> {
    let role = parse_role(role)?;
    let gone = |_| "daemon is shutting down".to_string();
    let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
    let me = ctx.local.keypair.node_id();
    if mesh.mesh_id.is_none() {
        if node.as_deref().is_some_and(|n| n != me.to_string()) {
            return Err("this node belongs to no mesh, so it can only change its own roles".into());
        }
        let roles = ctx
            .roles
            .send(ApplyRole { op, role })
            .await
            .map_err(gone)??;
        return Ok(json!({ "node_id": me.to_string(), "roles": roles, "applied": true }));
    }
    if !mesh.local_is_authority {
        return Err(format!(
            "roles in a mesh are granted by its configuration node: run `lifeboat role {} {role} --node {me}` there",
            if op == RoleOp::Add { "add" } else { "remove" }
        ));
    }
    let target = match &node {
        Some(n) => resolve_member(&mesh, n)?,
        None => me,
    };
    let roles = ctx
        .mesh
        .send(AssignRole { target, op, role })
        .await
        .map_err(gone)?
        .map_err(|e| e.to_string())?;
    let delivered = target == me || ctx.net.connected().contains(&target);
    Ok(json!({
        "node_id": target.to_string(),
        "roles": roles,
        "applied": delivered,
        "note": if delivered { "" } else { "recorded; the node applies it when it connects" },
    }))
}

/// The member a person named (node id or unique name), or a one-line error.
fn resolve_member(mesh: &MembersChanged, s: &str) -> Result<NodeId, String> {
    mesh.resolve(s).map(|m| m.node_id()).ok_or_else(|| {
        format!("no member of this mesh is named or has the id {s:?}; see `lifeboat peers`")
    })
}

/// `mesh remove NODE`: evicts a member everywhere.
async fn mesh_remove(ctx: &Ctx, node: &str) -> Result<serde_json::Value, String> {
    let gone = |_| "daemon is shutting down".to_string();
    let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
    let target = resolve_member(&mesh, node)?;
    let m = ctx
        .mesh
        .send(RemoveMember(target))
        .await
        .map_err(gone)?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "removed": target.to_string(),
        "name": m.name,
        "roles": m.roles,
        "advice": "its connections are closed and refused; rotate the mesh secret (`lifeboat mesh rotate-secret`) and, if it was a process server, the vault key (`lifeboat vault rekey`)",
    }))
}

async fn register(ctx: &Ctx, text: &str) -> Result<serde_json::Value, String> {
    let key = RegistrationKey::decode(text).map_err(|e| e.to_string())?;
    let mesh = ctx.mesh.send(GetMesh).await.map_err(|e| e.to_string())?;
    if let Some(id) = mesh.mesh_id {
        if id == key.mesh_id {
            return Ok(json!({ "mesh_id": mesh_id_hex(&id), "already_member": true }));
        }
        return Err(format!(
            "this node already belongs to mesh {}; a node joins one mesh",
            mesh_id_hex(&id)
        ));
    }
    let now = crate::seams::now();
    // Expiry is decided by the configuration node's clock; this early check only saves a
    // round trip when both clocks agree the key is stale.
    if now.0
        > key
            .expires
            .0
            .saturating_add(lifeboat_protocol::regkey::MAX_CLOCK_SKEW_MS)
    {
        return Err(format!(
            "registration key expired {} ago; issue a new one with `lifeboat key issue` on the configuration node",
            lifeboat_protocol::time::human_duration(now.millis_since(key.expires))
        ));
    }
    let net = ctx.net.clone();
    let req = Message::Register {
        name: ctx.cfg.node.name.clone(),
        now,
        addrs: ctx.advertise.clone(),
    };
    let k = key.clone();
    let (registrar, reply) = on_quic(ctx, async move { net.register(&k, req).await })
        .await?
        .map_err(|e| format!("registration failed: {e}"))?;
    match reply {
        Message::Registered(grant) => {
            let members = grant.members.len();
            let mesh_id = grant.mesh_id;
            ctx.mesh
                .send(Join {
                    grant,
                    authority: registrar,
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(
                json!({ "mesh_id": mesh_id_hex(&mesh_id), "members": members, "configuration_node": registrar.node_id().to_string() }),
            )
        }
        Message::RegisterRefused(r) => Err(format!("registration refused: {r}")),
        Message::Error { message } => Err(format!("registration failed: {message}")),
        other => Err(format!("unexpected reply to registration: {other:?}")),
    }
}
