//! Deterministic simulation of Lifeboat's mesh logic, and of the data path's decisions
//! ([`datapath`]: the change log and the manifest chunk plan under vault faults).
//!
//! The real role state machines ([`PeerTable`], [`Mesh`], [`RoleSet`]) run over an in-memory
//! transport ([`SimTransport`]) and discovery ([`SimDiscovery`]) that implement the same seams
//! as the daemon's QUIC and mDNS. A single seed drives everything: latency, loss, partitions,
//! key material. [`run`] forms a mesh, injects faults, checks invariants, and returns a trace
//! whose hash is identical for identical seeds, so any failure replays with `--seed N`.
//!
//! Faults so far: message loss, latency, network partitions (and their healing). Invariants:
//! no node lists itself; every member sees every other member reachable once the network is
//! whole and settled; across a partition, peers are seen unreachable within the window;
//! membership converges to one version everywhere.

pub mod datapath;
use lifeboat_actors::mesh::Mesh;
use lifeboat_actors::peers::{Liveness, PeerAction, PeerTable, PeerTableConfig};
use lifeboat_actors::roles::RoleSet;
use lifeboat_actors::seams::{Announcement, Discovery, Transport, TransportError};
use lifeboat_protocol::message::{Member, RoleOp};
use lifeboat_protocol::{Message, NodeId, Role, StaticKeypair, UnixMillis};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Something a node asked the network to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// One-way message.
    Send {
        /// Sender index.
        from: usize,
        /// Recipient.
        to: NodeId,
        /// Message.
        msg: Message,
    },
    /// Connection attempt.
    Dial {
        /// Dialer index.
        from: usize,
        /// Target address.
        addr: SocketAddr,
    },
}

/// In-memory transport: queues into a shared outbox the simulator drains.
#[derive(Clone, Debug)]
pub struct SimTransport {
    /// Our node index.
    node: usize,
    /// Peers we hold a connection to.
    connected: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Shared outbox.
    outbox: Arc<Mutex<Vec<Outgoing>>>,
}

impl Transport for SimTransport {
    fn send(&self, to: NodeId, msg: Message) -> Result<(), TransportError> {
        if !self
            .connected
            .lock()
            .map(|c| c.contains(&to))
            .unwrap_or(false)
        {
            return Err(TransportError::NotConnected(to));
        }
        if let Ok(mut o) = self.outbox.lock() {
            o.push(Outgoing::Send {
                from: self.node,
                to,
                msg,
            });
        }
        Ok(())
    }
    fn dial(&self, addr: SocketAddr, _expect: Option<NodeId>) {
        if let Ok(mut o) = self.outbox.lock() {
            o.push(Outgoing::Dial {
                from: self.node,
                addr,
            });
        }
    }
}

/// In-memory link-local discovery: a shared board of announcements.
#[derive(Clone, Debug)]
pub struct SimDiscovery {
    /// Our node index.
    node: usize,
    /// Current announcements by node index.
    board: Arc<Mutex<BTreeMap<usize, Announcement>>>,
}

impl Discovery for SimDiscovery {
    fn announce(&mut self, ann: &Announcement) {
        if let Ok(mut b) = self.board.lock() {
            b.insert(self.node, ann.clone());
        }
    }
    fn withdraw(&mut self) {
        if let Ok(mut b) = self.board.lock() {
            b.remove(&self.node);
        }
    }
}

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Master seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Simulated duration in milliseconds.
    pub duration_ms: u64,
    /// Probability (per mille) that a message is lost.
    pub loss_permille: u64,
    /// Largest one-way latency in milliseconds.
    pub max_latency_ms: u64,
    /// Number of partition episodes.
    pub partitions: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 5,
            duration_ms: 600_000,
            loss_permille: 20,
            max_latency_ms: 200,
            partitions: 3,
        }
    }
}

/// One simulated node: the real state machines plus simulated seams.
struct SimNode {
    key: StaticKeypair,
    name: String,
    addr: SocketAddr,
    table: PeerTable,
    mesh: Mesh,
    roles: RoleSet,
    transport: SimTransport,
    discovery: SimDiscovery,
}

/// A message in flight.
#[derive(Debug)]
struct InFlight {
    from: usize,
    to: usize,
    msg: Message,
}

/// Result of a run.
#[derive(Debug)]
pub struct Report {
    /// Seed used.
    pub seed: u64,
    /// Violated invariants (empty = pass).
    pub violations: Vec<String>,
    /// Event trace (deterministic for a seed).
    pub trace: Vec<String>,
    /// BLAKE3 of the trace, hex.
    pub trace_hash: String,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to faults.
    pub lost: u64,
}

/// Liveness timing used by the simulation (the daemon's defaults).
fn table_config(static_peers: Vec<SocketAddr>) -> PeerTableConfig {
    PeerTableConfig {
        static_peers,
        ..PeerTableConfig::default()
    }
}

/// The simulator.
struct Sim {
    cfg: SimConfig,
    now: UnixMillis,
    nodes: Vec<SimNode>,
    outbox: Arc<Mutex<Vec<Outgoing>>>,
    board: Arc<Mutex<BTreeMap<usize, Announcement>>>,
    inflight: BTreeMap<(UnixMillis, u64), InFlight>,
    /// Connections, as unordered index pairs (a, b) with a < b.
    links: BTreeSet<(usize, usize)>,
    /// Which side of the current partition each node is on (all 0 = whole).
    side: Vec<u8>,
    /// When each link was last usable (for idle-timeout teardown).
    link_seen: BTreeMap<(usize, usize), UnixMillis>,
    rng: ChaCha8Rng,
    seq: u64,
    trace: Vec<String>,
    delivered: u64,
    lost: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let board = Arc::new(Mutex::new(BTreeMap::new()));
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let key = StaticKeypair::generate(seed);
            let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 9443));
            let statics = if i == 0 {
                vec![]
            } else {
                vec![SocketAddr::from(([10, 0, 0, 1], 9443))]
            };
            nodes.push(SimNode {
                name: format!("n{i}"),
                addr,
                table: PeerTable::new(key.node_id(), table_config(statics), rng.next_u64()),
                mesh: Mesh::new(key.public, None),
                roles: RoleSet::default(),
                transport: SimTransport {
                    node: i,
                    connected: Arc::new(Mutex::new(BTreeSet::new())),
                    outbox: outbox.clone(),
                },
                discovery: SimDiscovery {
                    node: i,
                    board: board.clone(),
                },
                key,
            });
        }
        let side = vec![0; cfg.nodes];
        Sim {
            cfg,
            now: UnixMillis(1_700_000_000_000),
            nodes,
            outbox,
            board,
            inflight: BTreeMap::new(),
            links: BTreeSet::new(),
            side,
            link_seen: BTreeMap::new(),
            rng,
            seq: 0,
            trace: Vec::new(),
            delivered: 0,
            lost: 0,
        }
    }

    fn log(&mut self, s: String) {
        self.trace.push(format!("{} {s}", self.now.0));
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.key.node_id() == *id)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    fn announce(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let ann = Announcement {
            node_id: n.key.node_id(),
            fingerprint: n.key.public.fingerprint().to_string(),
            name: n.name.clone(),
            roles: n.roles.to_vec(),
            port: n.addr.port(),
            mesh: n
                .mesh
                .mesh_id()
                .map(|m| lifeboat_actors::mesh::mesh_id_hex(&m)),
        };
        n.discovery.announce(&ann);
    }

    /// Forms the mesh: node 0 is the configuration node; the others register with fresh keys.
    fn form_mesh(&mut self) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let (name, addr) = (self.nodes[0].name.clone(), self.nodes[0].addr);
        let now = self.now;
        self.nodes[0].roles.apply(RoleOp::Add, Role::Configuration);
        let roles = self.nodes[0].roles.to_vec();
        let _ = self.nodes[0]
            .mesh
            .create(now, seed, &name, vec![addr], roles);
        for i in 1..self.nodes.len() {
            self.rng.fill_bytes(&mut seed);
            let Ok(key) = self.nodes[0]
                .mesh
                .issue_key(now, 3_600_000, seed, vec![addr])
            else {
                continue;
            };
            let (pk, nm, ad) = (
                self.nodes[i].key.public,
                self.nodes[i].name.clone(),
                self.nodes[i].addr,
            );
            match self.nodes[0]
                .mesh
                .handle_register(now, &key.key_id(), pk, &nm, vec![ad], now)
            {
                Ok(grant) => {
                    let auth = self.nodes[0].key.public;
                    let _ = self.nodes[i].mesh.join(grant, auth);
                }
                Err(e) => self
                    .trace
                    .push(format!("registration of n{i} refused: {e}")),
            }
        }
        for i in 0..self.nodes.len() {
            let members = self.nodes[i].mesh.members().to_vec();
            self.nodes[i].table.set_can_dial(true);
            self.nodes[i].table.handle_members(now, &members);
            self.announce(i);
        }
        let role = [Role::ProcessServer, Role::Mobility];
        for i in 1..self.nodes.len() {
            self.nodes[i].roles.apply(RoleOp::Add, role[i % 2]);
            self.announce(i);
        }
        self.log("mesh formed".into());
    }

    fn latency(&mut self) -> u64 {
        1 + self.rng.next_u64() % self.cfg.max_latency_ms.max(1)
    }

    fn enqueue(&mut self, from: usize, to: usize, msg: Message) {
        if self.rng.next_u64() % 1000 < self.cfg.loss_permille || !self.reachable(from, to) {
            self.lost += 1;
            return;
        }
        let at = self.now.plus_millis(self.latency());
        self.seq += 1;
        self.inflight
            .insert((at, self.seq), InFlight { from, to, msg });
    }

    fn connect(&mut self, a: usize, b: usize) {
        let now = self.now;
        let (ka, kb) = (self.nodes[a].key.public, self.nodes[b].key.public);
        // Mutual admission, as the Noise handshake enforces.
        if !self.nodes[a].mesh.admits(&kb) || !self.nodes[b].mesh.admits(&ka) {
            let addr = self.nodes[b].addr;
            self.nodes[a].table.handle_dial_failed(now, addr);
            return;
        }
        self.links.insert(pair(a, b));
        self.link_seen.insert(pair(a, b), now);
        for (x, y) in [(a, b), (b, a)] {
            let (id, addr, name, roles, port) = (
                self.nodes[y].key.node_id(),
                self.nodes[y].addr,
                self.nodes[y].name.clone(),
                self.nodes[y].roles.to_vec(),
                self.nodes[y].addr.port(),
            );
            if let Ok(mut c) = self.nodes[x].transport.connected.lock() {
                c.insert(id);
            }
            self.seq += 1;
            let gen = self.seq;
            self.nodes[x]
                .table
                .handle_connected(now, id, gen, addr, &name, &roles, port, x == a);
        }
        // An authority greets a new connection with the membership list, as the daemon does.
        for (x, y) in [(a, b), (b, a)] {
            if let Some(m) = self.nodes[x].mesh.membership_message() {
                self.enqueue(x, y, m);
            }
        }
        self.log(format!("connect n{a} n{b}"));
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        if !self.links.remove(&pair(a, b)) {
            return;
        }
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let id = self.nodes[y].key.node_id();
            if let Ok(mut c) = self.nodes[x].transport.connected.lock() {
                c.remove(&id);
            }
            let gen = self.nodes[x]
                .table
                .get(&id)
                .and_then(|e| e.conn)
                .unwrap_or(0);
            self.nodes[x].table.handle_disconnected(now, id, gen);
        }
        self.log(format!("disconnect n{a} n{b}"));
    }

    fn drain_outbox(&mut self) {
        let out: Vec<Outgoing> = self
            .outbox
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        for o in out {
            match o {
                Outgoing::Send { from, to, msg } => {
                    if let Some(t) = self.index_of(&to) {
                        self.enqueue(from, t, msg);
                    }
                }
                Outgoing::Dial { from, addr } => {
                    match self.nodes.iter().position(|n| n.addr == addr) {
                        Some(to) if to != from && self.reachable(from, to) => {
                            if !self.links.contains(&pair(from, to)) {
                                self.connect(from, to);
                            }
                        }
                        _ => {
                            let now = self.now;
                            self.nodes[from].table.handle_dial_failed(now, addr);
                        }
                    }
                }
            }
        }
    }

    fn deliver(&mut self, f: InFlight) {
        if !self.links.contains(&pair(f.from, f.to)) || !self.reachable(f.from, f.to) {
            self.lost += 1;
            return;
        }
        self.delivered += 1;
        let now = self.now;
        let from_key = self.nodes[f.from].key.public;
        self.link_seen.insert(pair(f.from, f.to), now);
        let n = &mut self.nodes[f.to];
        match f.msg {
            Message::Heartbeat {
                name,
                roles,
                membership_version,
                ..
            } => {
                n.table
                    .handle_heartbeat(now, from_key.node_id(), &name, &roles);
                if n.mesh.wants_membership_from(&from_key, membership_version) {
                    self.enqueue(f.to, f.from, Message::MembershipRequest);
                }
            }
            Message::MembershipRequest => {
                if let Some(m) = n.mesh.membership_message() {
                    self.enqueue(f.to, f.from, m);
                }
            }
            Message::MembershipUpdate {
                version,
                members,
                secret,
                previous_until,
            } => {
                if n.mesh.handle_membership_update(
                    now,
                    &from_key,
                    version,
                    members,
                    secret.map(|s| s.0),
                    previous_until,
                ) {
                    let m: Vec<Member> = n.mesh.members().to_vec();
                    n.table.handle_members(now, &m);
                }
            }
            _ => {}
        }
    }

    fn heartbeat_msg(&self, i: usize) -> Message {
        let n = &self.nodes[i];
        Message::Heartbeat {
            now: self.now,
            name: n.name.clone(),
            roles: n.roles.to_vec(),
            listen_port: n.addr.port(),
            membership_version: n.mesh.version(),
        }
    }

    fn poll_nodes(&mut self) {
        let now = self.now;
        // Discovery: each node hears the announcements of nodes on its side.
        let board: Vec<(usize, Announcement)> = self
            .board
            .lock()
            .map(|b| b.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        for i in 0..self.nodes.len() {
            for (j, ann) in &board {
                if *j != i && self.reachable(i, *j) {
                    let addr = self.nodes[*j].addr;
                    self.nodes[i].table.handle_discovered(
                        now,
                        ann.node_id,
                        &ann.name,
                        &ann.roles,
                        &[addr],
                    );
                }
            }
        }
        for i in 0..self.nodes.len() {
            let actions = self.nodes[i].table.poll(now);
            for a in actions {
                match a {
                    PeerAction::Dial { addr, expect } => self.nodes[i].transport.dial(addr, expect),
                    PeerAction::Heartbeat(id) => {
                        let hb = self.heartbeat_msg(i);
                        let _ = self.nodes[i].transport.send(id, hb);
                    }
                    PeerAction::BecameUnreachable(id) => {
                        let j = self.index_of(&id).unwrap_or(usize::MAX);
                        self.log(format!("n{i} sees n{j} unreachable"));
                    }
                    PeerAction::Forgot(id) => self.log(format!("n{i} forgot {id}")),
                }
            }
        }
        // QUIC idle timeout: links silent for 15 s are torn down.
        let stale: Vec<(usize, usize)> = self
            .links
            .iter()
            .copied()
            .filter(|l| {
                self.link_seen
                    .get(l)
                    .is_some_and(|t| now.millis_since(*t) > 15_000)
            })
            .collect();
        for (a, b) in stale {
            self.disconnect(a, b);
        }
        self.drain_outbox();
    }

    fn step_to(&mut self, until: UnixMillis) {
        while self.now < until {
            let next_tick = self.now.plus_millis(250).min(until);
            while let Some((&(at, s), _)) = self.inflight.iter().next() {
                if at > next_tick {
                    break;
                }
                let Some(f) = self.inflight.remove(&(at, s)) else {
                    break;
                };
                self.now = self.now.max(at);
                self.deliver(f);
            }
            self.now = next_tick;
            self.poll_nodes();
        }
    }

    fn check_whole(&self, violations: &mut Vec<String>, when: &str) {
        let now = self.now;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.table.get(&n.key.node_id()).is_some() {
                violations.push(format!("{when}: n{i} lists itself"));
            }
            for (j, m) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                match n.table.get(&m.key.node_id()) {
                    Some(e) if n.table.liveness(e, now) == Liveness::Reachable => {}
                    Some(e) => violations.push(format!(
                        "{when}: n{i} sees n{j} {:?}",
                        n.table.liveness(e, now)
                    )),
                    None => violations.push(format!("{when}: n{i} does not know n{j}")),
                }
            }
        }
        let versions: BTreeSet<u64> = self.nodes.iter().map(|n| n.mesh.version()).collect();
        if versions.len() != 1 {
            violations.push(format!("{when}: membership versions diverge: {versions:?}"));
        }
    }

    fn check_split(&self, violations: &mut Vec<String>, when: &str) {
        let now = self.now;
        for (i, n) in self.nodes.iter().enumerate() {
            for (j, m) in self.nodes.iter().enumerate() {
                if i != j && !self.reachable(i, j) {
                    if let Some(e) = n.table.get(&m.key.node_id()) {
                        if n.table.liveness(e, now) == Liveness::Reachable {
                            violations.push(format!(
                                "{when}: n{i} still sees partitioned n{j} reachable"
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Runs one simulation and checks its invariants.
pub fn run(cfg: SimConfig) -> Report {
    let mut sim = Sim::new(cfg.clone());
    let mut violations = Vec::new();
    for i in 0..sim.nodes.len() {
        sim.announce(i);
    }
    sim.step_to(sim.now.plus_millis(2_000));
    sim.form_mesh();
    // Settle: the default liveness window is 10 s and dial backoff caps at 8 s.
    let settle = 40_000;
    sim.step_to(sim.now.plus_millis(settle));
    sim.check_whole(&mut violations, "after forming");
    let start = sim.now;
    let slot = cfg.duration_ms / (cfg.partitions as u64 + 1).max(1);
    for p in 0..cfg.partitions {
        // Split off a random non-empty proper subset.
        let n = sim.nodes.len();
        let mut side = vec![0u8; n];
        let cut = 1 + (sim.rng.next_u64() as usize % (n - 1).max(1));
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            let r = sim.rng.next_u64() as usize % (k + 1);
            order.swap(k, r);
        }
        for &k in &order[..cut] {
            side[k] = 1;
        }
        sim.side = side.clone();
        sim.log(format!("partition {p}: {side:?}"));
        sim.step_to(sim.now.plus_millis(30_000));
        sim.check_split(&mut violations, &format!("partition {p}"));
        sim.side = vec![0; n];
        sim.log(format!("heal {p}"));
        let until = start
            .plus_millis(slot * (p as u64 + 1))
            .max(sim.now.plus_millis(settle));
        sim.step_to(until);
        sim.check_whole(&mut violations, &format!("after heal {p}"));
    }
    let hash = blake3::hash(sim.trace.join("\n").as_bytes())
        .to_hex()
        .to_string();
    Report {
        seed: cfg.seed,
        violations,
        trace_hash: hash,
        trace: sim.trace,
        delivered: sim.delivered,
        lost: sim.lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_converge_after_partitions_for_many_seeds() {
        for seed in 1..=12 {
            let r = run(SimConfig {
                seed,
                ..SimConfig::default()
            });
            assert!(
                r.violations.is_empty(),
                "seed {seed} violated invariants: {:?}\nreproduce with --seed {seed}",
                r.violations
            );
            assert!(
                r.delivered > 100,
                "seed {seed}: too little traffic ({})",
                r.delivered
            );
        }
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let a = run(SimConfig {
            seed: 42,
            ..SimConfig::default()
        });
        let b = run(SimConfig {
            seed: 42,
            ..SimConfig::default()
        });
        let c = run(SimConfig {
            seed: 43,
            ..SimConfig::default()
        });
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_ne!(a.trace_hash, c.trace_hash);
    }

    #[test]
    fn the_invariant_checker_catches_a_partition_that_never_heals() {
        // A network that loses everything must be reported, not pass silently.
        let r = run(SimConfig {
            seed: 3,
            loss_permille: 1000,
            ..SimConfig::default()
        });
        assert!(!r.violations.is_empty());
    }
}
