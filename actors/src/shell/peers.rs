//! The peers actor: hosts the [`PeerTable`], runs its poll loop (dials, heartbeats, liveness)
//! and publishes the membership list to connected peers when this node is the authority.

use super::*;

/// A peer found by discovery.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DiscoveredMsg(pub Discovered);

/// A connection was authenticated.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConnectedMsg {
    /// Peer.
    pub id: NodeId,
    /// Connection generation.
    pub conn: u64,
    /// Remote address.
    pub addr: SocketAddr,
    /// Peer's name.
    pub name: String,
    /// Peer's roles.
    pub roles: Vec<Role>,
    /// Peer's listen port.
    pub listen_port: u16,
    /// We dialed.
    pub outbound: bool,
}

/// A connection closed: peer and connection generation.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DisconnectedMsg(pub NodeId, pub u64);

/// A dial failed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DialFailedMsg(pub SocketAddr);

/// A heartbeat arrived.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct HeartbeatMsg {
    /// Sender.
    pub from: PublicKey,
    /// Sender's name.
    pub name: String,
    /// Sender's roles.
    pub roles: Vec<Role>,
    /// Sender's membership version.
    pub membership_version: u64,
}

/// One row of `lifeboat peers`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PeerView {
    /// Node id.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// Roles (a member's: granted by the record).
    pub roles: Vec<Role>,
    /// The roles the peer last said it holds (its heartbeats): for a member, whether a grant
    /// has been applied.
    #[serde(default)]
    pub reported_roles: Vec<Role>,
    /// Addresses.
    pub addrs: Vec<SocketAddr>,
    /// How found.
    pub found_by: Vec<Source>,
    /// Liveness now.
    pub state: Liveness,
    /// On our membership list.
    pub member: bool,
    /// Connected now.
    pub connected: bool,
    /// Last authenticated contact.
    pub last_contact_ms: Option<u64>,
    /// Milliseconds since last contact.
    pub last_contact_age_ms: Option<u64>,
}

/// List the peers.
#[derive(Message, Debug)]
#[rtype(result = "Vec<PeerView>")]
pub struct ListPeers;

/// Owns the [`PeerTable`].
pub struct PeersActor {
    /// The table.
    table: PeerTable,
    /// Our name (for heartbeats).
    name: String,
    /// Our listen port.
    listen_port: u16,
    /// Our roles (for heartbeats).
    roles: Vec<Role>,
    /// Our membership view.
    mesh: Option<MembersChanged>,
    /// Sends and dials.
    transport: Arc<dyn Transport>,
    /// Time.
    clock: Arc<dyn Clock>,
    /// Mesh actor (to pull newer membership, record addresses).
    mesh_actor: Option<Addr<MeshActor>>,
    /// Timer period.
    tick: Duration,
}

impl std::fmt::Debug for PeersActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeersActor")
            .field("name", &self.name)
            .finish()
    }
}

impl PeersActor {
    /// Hosts `table`.
    pub fn new(
        table: PeerTable,
        name: String,
        listen_port: u16,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        mesh_actor: Option<Addr<MeshActor>>,
        tick: Duration,
    ) -> Self {
        PeersActor {
            table,
            name,
            listen_port,
            roles: Vec::new(),
            mesh: None,
            transport,
            clock,
            mesh_actor,
            tick,
        }
    }

    fn heartbeat(&self) -> Message {
        Message::Heartbeat {
            now: self.clock.now(),
            name: self.name.clone(),
            roles: self.roles.clone(),
            listen_port: self.listen_port,
            membership_version: self.mesh.as_ref().map_or(0, |m| m.version),
        }
    }

    fn run_poll(&mut self) {
        let now = self.clock.now();
        for action in self.table.poll(now) {
            match action {
                PeerAction::Dial { addr, expect } => self.transport.dial(addr, expect),
                PeerAction::Heartbeat(id) => match self.transport.send(id, self.heartbeat()) {
                    Err(crate::seams::TransportError::NotConnected(_)) => {
                        self.table.handle_not_connected(id)
                    }
                    Err(e) => tracing::debug!(peer = %id, cause = %e, "heartbeat not sent"),
                    Ok(()) => {}
                },
                PeerAction::BecameUnreachable(id) => {
                    tracing::warn!(peer = %id, "peer unreachable")
                }
                PeerAction::Forgot(id) => tracing::info!(peer = %id, "peer forgotten"),
            }
        }
    }

    fn view(&self, e: &PeerEntry, now: UnixMillis) -> PeerView {
        // A member's name and roles are the ones on the authority's record; only a stranger's
        // are what it says of itself (heartbeats and mDNS are claims).
        let record = self
            .mesh
            .as_ref()
            .and_then(|m| m.members.iter().find(|x| x.node_id() == e.node_id));
        PeerView {
            node_id: e.node_id.to_string(),
            name: record.map_or_else(|| e.name.clone(), |m| m.name.clone()),
            roles: record.map_or_else(|| e.roles.clone(), |m| m.roles.clone()),
            reported_roles: e.roles.clone(),
            addrs: e.addrs.iter().copied().collect(),
            found_by: e.sources.iter().copied().collect(),
            state: self.table.liveness(e, now),
            member: e.member,
            connected: e.connected,
            last_contact_ms: e.last_contact.map(|t| t.0),
            last_contact_age_ms: e.last_contact.map(|t| now.millis_since(t)),
        }
    }

    fn publish_membership(&self) {
        let Some(m) = &self.mesh else { return };
        if !m.local_is_authority {
            return;
        }
        let msg = m.update_message();
        for e in self.table.entries().filter(|e| e.connected) {
            let _ = self.transport.send(e.node_id, msg.clone());
        }
    }
}

impl Actor for PeersActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.tick, |act, _| act.run_poll());
    }
}

impl Handler<DiscoveredMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DiscoveredMsg, _: &mut Context<Self>) {
        let d = m.0;
        self.table
            .handle_discovered(self.clock.now(), d.node_id, &d.name, &d.roles, &d.addrs);
    }
}

impl Handler<ConnectedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: ConnectedMsg, _: &mut Context<Self>) {
        let now = self.clock.now();
        self.table.handle_connected(
            now,
            m.id,
            m.conn,
            m.addr,
            &m.name,
            &m.roles,
            m.listen_port,
            m.outbound,
        );
        // Greet at once so the peer sees our roles without waiting a heartbeat period.
        let _ = self.transport.send(m.id, self.heartbeat());
        if let Some(mesh) = &self.mesh {
            if mesh.local_is_authority {
                let _ = self.transport.send(m.id, mesh.update_message());
                if let Some(a) = &self.mesh_actor {
                    let addr = SocketAddr::new(m.addr.ip(), m.listen_port);
                    let _ = a.try_send(MemberAddrs {
                        id: m.id,
                        addrs: vec![addr],
                    });
                }
            }
        }
    }
}

impl Handler<DisconnectedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DisconnectedMsg, _: &mut Context<Self>) {
        self.table.handle_disconnected(self.clock.now(), m.0, m.1);
    }
}

impl Handler<DialFailedMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: DialFailedMsg, _: &mut Context<Self>) {
        self.table.handle_dial_failed(self.clock.now(), m.0);
    }
}

impl Handler<HeartbeatMsg> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: HeartbeatMsg, _: &mut Context<Self>) {
        let id = m.from.node_id();
        self.table
            .handle_heartbeat(self.clock.now(), id, &m.name, &m.roles);
        let ours = self.mesh.as_ref().map_or(0, |x| x.version);
        let from_authority = self
            .mesh
            .as_ref()
            .is_some_and(|x| x.authorities.contains(&m.from));
        if m.membership_version > ours && from_authority {
            let _ = self.transport.send(id, Message::MembershipRequest);
        }
    }
}

impl Handler<RolesChanged> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: RolesChanged, _: &mut Context<Self>) {
        self.roles = m.0;
        // Tell connected peers now rather than at the next heartbeat.
        let hb = self.heartbeat();
        for e in self.table.entries().filter(|e| e.connected) {
            let _ = self.transport.send(e.node_id, hb.clone());
        }
    }
}

impl Handler<MembersChanged> for PeersActor {
    type Result = ();
    fn handle(&mut self, m: MembersChanged, _: &mut Context<Self>) {
        self.table.set_can_dial(m.mesh_id.is_some());
        self.table.handle_members(self.clock.now(), &m.members);
        let changed = self.mesh.as_ref().map(|x| x.version) != Some(m.version);
        self.mesh = Some(m);
        if changed {
            self.publish_membership();
        }
        self.run_poll();
    }
}

impl Handler<ListPeers> for PeersActor {
    type Result = Vec<PeerView>;
    fn handle(&mut self, _: ListPeers, _: &mut Context<Self>) -> Vec<PeerView> {
        let now = self.clock.now();
        self.table.entries().map(|e| self.view(e, now)).collect()
    }
}
