//! The peer table: everything this node knows about other nodes, how it learned it, when it last
//! heard from them (authenticated), and the decisions that follow: whom to dial, when to
//! heartbeat, when a peer is unreachable and when it is forgotten.
//!
//! Call order: feed events with the `handle_*` methods as they happen, and call
//! [`PeerTable::poll`] whenever a timer fires (at least every heartbeat interval); it returns the
//! [`PeerAction`]s to perform. Every method takes `now`; dial backoff jitter comes from the seed
//! given to [`PeerTable::new`], so a run is a pure function of its inputs.

use lifeboat_protocol::message::Member;
use lifeboat_protocol::{NodeId, Role, UnixMillis};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Most peers the table holds; discovery input beyond it is ignored (bounded memory).
pub const MAX_PEERS: usize = 4096;
/// Most addresses kept per peer.
const MAX_ADDRS: usize = 16;

/// Timing of the table, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTableConfig {
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a peer is unreachable.
    pub unreachable_after_ms: u64,
    /// Silence after which a peer is forgotten.
    pub forget_after_ms: u64,
    /// First dial retry delay.
    pub backoff_base_ms: u64,
    /// Largest dial retry delay.
    pub backoff_max_ms: u64,
    /// Static peers from the configuration.
    pub static_peers: Vec<SocketAddr>,
}

impl Default for PeerTableConfig {
    fn default() -> Self {
        PeerTableConfig {
            heartbeat_interval_ms: 2_000,
            unreachable_after_ms: 10_000,
            forget_after_ms: 600_000,
            backoff_base_ms: 500,
            backoff_max_ms: 8_000,
            static_peers: Vec::new(),
        }
    }
}

/// How a peer became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// mDNS on the local link.
    Mdns,
    /// A static `peers` entry.
    Static,
    /// It connected to us.
    Inbound,
    /// The mesh membership list.
    Membership,
}

/// A peer's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// Heard from within the unreachable window.
    Reachable,
    /// Silent for longer than the unreachable window.
    Unreachable,
    /// Known (discovered) but never contacted, e.g. not a member of our mesh.
    Seen,
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerEntry {
    /// Node id.
    pub node_id: NodeId,
    /// Name (from discovery, handshake or heartbeat).
    pub name: String,
    /// Roles as last announced.
    pub roles: Vec<Role>,
    /// Known addresses.
    pub addrs: BTreeSet<SocketAddr>,
    /// How we learned of it.
    pub sources: BTreeSet<Source>,
    /// When we first learned of it.
    pub first_seen: UnixMillis,
    /// Last evidence of existence (discovery or contact).
    pub last_seen: UnixMillis,
    /// Last authenticated contact (handshake or heartbeat).
    pub last_contact: Option<UnixMillis>,
    /// An authenticated connection is open.
    pub connected: bool,
    /// On our mesh's membership list.
    pub member: bool,
    /// Generation of the connection the table believes is open (stale close events for an
    /// older connection are ignored).
    #[serde(skip)]
    pub conn: Option<u64>,
}

/// Dial retry state of one target.
#[derive(Clone, Debug, Default)]
struct DialState {
    /// Consecutive failures.
    failures: u32,
    /// Not before this time.
    next_at: UnixMillis,
    /// A dial is in flight.
    pending: bool,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Connect to `addr`; `expect` is the node we think is there.
    Dial {
        /// Address.
        addr: SocketAddr,
        /// Expected node.
        expect: Option<NodeId>,
    },
    /// Send a heartbeat to a connected peer.
    Heartbeat(NodeId),
    /// The peer just became unreachable.
    BecameUnreachable(NodeId),
    /// The peer was forgotten.
    Forgot(NodeId),
}

/// The table.
#[derive(Debug)]
pub struct PeerTable {
    /// Our own id (our own records are ignored).
    local: NodeId,
    /// Timing and static peers.
    cfg: PeerTableConfig,
    /// Peers by id.
    peers: BTreeMap<NodeId, PeerEntry>,
    /// Dial state by address.
    dials: BTreeMap<SocketAddr, DialState>,
    /// Peers already reported unreachable (so the event fires once).
    reported_unreachable: BTreeSet<NodeId>,
    /// Whether we hold a mesh secret and may dial at all.
    can_dial: bool,
    /// Next heartbeat round.
    next_heartbeat: UnixMillis,
    /// Backoff jitter.
    rng: ChaCha8Rng,
}

impl PeerTable {
    /// An empty table.
    pub fn new(local: NodeId, cfg: PeerTableConfig, seed: u64) -> Self {
        PeerTable {
            local,
            cfg,
            peers: BTreeMap::new(),
            dials: BTreeMap::new(),
            reported_unreachable: BTreeSet::new(),
            can_dial: false,
            next_heartbeat: UnixMillis(0),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Enables dialing (once the node belongs to a mesh).
    pub fn set_can_dial(&mut self, yes: bool) {
        self.can_dial = yes;
    }

    /// All peers.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    /// One peer.
    pub fn get(&self, id: &NodeId) -> Option<&PeerEntry> {
        self.peers.get(id)
    }

    /// Liveness of a peer at `now`.
    pub fn liveness(&self, e: &PeerEntry, now: UnixMillis) -> Liveness {
        match e.last_contact {
            None => Liveness::Seen,
            Some(t) if now.millis_since(t) <= self.cfg.unreachable_after_ms => Liveness::Reachable,
            Some(_) => Liveness::Unreachable,
        }
    }

    /// The entry of `id`, created if needed. mDNS is unauthenticated, so entries known only
    /// from it are capped at half the table and are evicted (oldest first) to make room for
    /// peers learned from the membership list or an authenticated connection.
    fn entry(&mut self, now: UnixMillis, id: NodeId, trusted: bool) -> Option<&mut PeerEntry> {
        if id == self.local {
            return None;
        }
        if !self.peers.contains_key(&id) {
            let mdns_only = |e: &PeerEntry| !e.member && !e.connected && e.last_contact.is_none();
            let untrusted = self.peers.values().filter(|e| mdns_only(e)).count();
            if !trusted && untrusted >= MAX_PEERS / 2 {
                return None;
            }
            if self.peers.len() >= MAX_PEERS {
                if !trusted {
                    return None;
                }
                let victim = self
                    .peers
                    .values()
                    .filter(|e| mdns_only(e))
                    .min_by_key(|e| e.last_seen)
                    .map(|e| e.node_id)?;
                self.peers.remove(&victim);
            }
        }
        Some(self.peers.entry(id).or_insert_with(|| PeerEntry {
            node_id: id,
            name: String::new(),
            roles: Vec::new(),
            addrs: BTreeSet::new(),
            sources: BTreeSet::new(),
            first_seen: now,
            last_seen: now,
            last_contact: None,
            connected: false,
            member: false,
            conn: None,
        }))
    }

    fn add_addrs(e: &mut PeerEntry, addrs: impl IntoIterator<Item = SocketAddr>) {
        for a in addrs {
            if e.addrs.len() >= MAX_ADDRS {
                break;
            }
            e.addrs.insert(a);
        }
    }

    /// A peer announced itself by discovery.
    pub fn handle_discovered(
        &mut self,
        now: UnixMillis,
        id: NodeId,
        name: &str,
        roles: &[Role],
        addrs: &[SocketAddr],
    ) {
        if let Some(e) = self.entry(now, id, false) {
            e.sources.insert(Source::Mdns);
            e.last_seen = now;
            if e.last_contact.is_none() || !e.connected {
                e.name = name.to_string();
                e.roles = roles.to_vec();
            }
            Self::add_addrs(e, addrs.iter().copied());
        }
    }

    /// The membership list changed.
    pub fn handle_members(&mut self, now: UnixMillis, members: &[Member]) {
        let ids: BTreeSet<NodeId> = members.iter().map(Member::node_id).collect();
        for e in self.peers.values_mut() {
            e.member = ids.contains(&e.node_id);
        }
        for m in members {
            if let Some(e) = self.entry(now, m.node_id(), true) {
                e.member = true;
                e.sources.insert(Source::Membership);
                if e.name.is_empty() {
                    e.name = m.name.clone();
                }
                // Addresses from the (authenticated) membership list always get in, whatever
                // unauthenticated discovery filled the slots with.
                e.addrs.extend(m.addrs.iter().copied().take(MAX_ADDRS));
            }
        }
    }

    /// An authenticated connection (generation `conn`) to `id` opened (we dialed `addr`, or it
    /// dialed us from it).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_connected(
        &mut self,
        now: UnixMillis,
        id: NodeId,
        conn: u64,
        addr: SocketAddr,
        name: &str,
        roles: &[Role],
        listen_port: u16,
        outbound: bool,
    ) {
        if let Some(d) = self.dials.get_mut(&addr) {
            *d = DialState::default();
        }
        let reach = if outbound {
            addr
        } else {
            SocketAddr::new(addr.ip(), listen_port)
        };
        let is_static = self.cfg.static_peers.contains(&reach);
        let Some(e) = self.entry(now, id, true) else {
            return;
        };
        e.connected = true;
        e.conn = Some(conn);
        e.last_contact = Some(now);
        e.last_seen = now;
        e.name = name.to_string();
        e.roles = roles.to_vec();
        if !outbound {
            e.sources.insert(Source::Inbound);
        }
        Self::add_addrs(e, [reach]);
        if is_static {
            e.sources.insert(Source::Static);
        }
        self.reported_unreachable.remove(&id);
    }

    /// Connection generation `conn` to `id` closed (ignored if a newer one replaced it).
    pub fn handle_disconnected(&mut self, _now: UnixMillis, id: NodeId, conn: u64) {
        if let Some(e) = self.peers.get_mut(&id) {
            if e.conn == Some(conn) {
                e.connected = false;
                e.conn = None;
            }
        }
    }

    /// A send to `id` found no connection: the table must not believe one is open.
    pub fn handle_not_connected(&mut self, id: NodeId) {
        if let Some(e) = self.peers.get_mut(&id) {
            e.connected = false;
            e.conn = None;
        }
    }

    /// A dial to `addr` failed.
    pub fn handle_dial_failed(&mut self, now: UnixMillis, addr: SocketAddr) {
        let base = self.cfg.backoff_base_ms;
        let max = self.cfg.backoff_max_ms;
        let jitter = self.rng.next_u64();
        let d = self.dials.entry(addr).or_default();
        d.pending = false;
        d.failures = d.failures.saturating_add(1);
        d.next_at = now.plus_millis(crate::backoff::delay(base, max, d.failures, jitter));
    }

    /// A heartbeat arrived from `id`.
    pub fn handle_heartbeat(&mut self, now: UnixMillis, id: NodeId, name: &str, roles: &[Role]) {
        if let Some(e) = self.entry(now, id, true) {
            // Contact, not connection state: only connect/disconnect events change `connected`.
            e.last_contact = Some(now);
            e.last_seen = now;
            e.name = name.to_string();
            e.roles = roles.to_vec();
            self.reported_unreachable.remove(&id);
        }
    }

    fn due(&mut self, now: UnixMillis, addr: SocketAddr) -> bool {
        let d = self.dials.entry(addr).or_default();
        // A dial in flight blocks retries until its backoff passes (the shell reports failure).
        if d.pending && now < d.next_at {
            return false;
        }
        if now < d.next_at {
            return false;
        }
        d.pending = true;
        d.next_at = now.plus_millis(self.cfg.backoff_max_ms.max(1_000) * 2);
        true
    }

    /// Timers: returns what to do now.
    pub fn poll(&mut self, now: UnixMillis) -> Vec<PeerAction> {
        let mut out = Vec::new();
        // Liveness transitions and forgetting.
        let mut forget = Vec::new();
        for e in self.peers.values() {
            let silent = now.millis_since(e.last_contact.unwrap_or(e.last_seen));
            if e.last_contact.is_some()
                && silent > self.cfg.unreachable_after_ms
                && !self.reported_unreachable.contains(&e.node_id)
            {
                out.push(PeerAction::BecameUnreachable(e.node_id));
            }
            let static_peer = e.addrs.iter().any(|a| self.cfg.static_peers.contains(a));
            if silent > self.cfg.forget_after_ms && !e.member && !static_peer {
                forget.push(e.node_id);
            }
        }
        for a in &out {
            if let PeerAction::BecameUnreachable(id) = a {
                self.reported_unreachable.insert(*id);
                // A silent connection is as good as none: allow redialing.
                if let Some(e) = self.peers.get_mut(id) {
                    e.connected = false;
                    e.conn = None;
                }
            }
        }
        for id in forget {
            self.peers.remove(&id);
            self.reported_unreachable.remove(&id);
            out.push(PeerAction::Forgot(id));
        }
        // Heartbeats.
        if now >= self.next_heartbeat {
            self.next_heartbeat = now.plus_millis(self.cfg.heartbeat_interval_ms);
            out.extend(
                self.peers
                    .values()
                    .filter(|e| e.connected)
                    .map(|e| PeerAction::Heartbeat(e.node_id)),
            );
        }
        if !self.can_dial {
            return out;
        }
        // Static peers we have no live connection through.
        let statics = self.cfg.static_peers.clone();
        for addr in statics {
            let covered = self
                .peers
                .values()
                .any(|e| e.connected && e.addrs.contains(&addr));
            if !covered && self.due(now, addr) {
                out.push(PeerAction::Dial { addr, expect: None });
            }
        }
        // Known members we are not connected to. The lower id dials, so a pair of nodes
        // opens one connection, not two.
        let targets: Vec<(NodeId, Vec<SocketAddr>)> = self
            .peers
            .values()
            .filter(|e| e.member && !e.connected && self.local < e.node_id)
            .map(|e| (e.node_id, e.addrs.iter().copied().collect()))
            .collect();
        for (id, addrs) in targets {
            // Try one address per round, rotating by failures.
            if addrs.is_empty() {
                continue;
            }
            let pick = addrs
                .iter()
                .copied()
                .min_by_key(|a| self.dials.get(a).map_or(0, |d| d.failures))
                .unwrap_or(addrs[0]);
            if self.due(now, pick) {
                out.push(PeerAction::Dial {
                    addr: pick,
                    expect: Some(id),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_protocol::StaticKeypair;

    fn id(n: u8) -> NodeId {
        StaticKeypair::generate([n; 32]).node_id()
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn discovery_spam_cannot_crowd_out_members() {
        let mut t = PeerTable::new(id(1), PeerTableConfig::default(), 1);
        for i in 0..(MAX_PEERS as u32 + 10) {
            let mut b = [0u8; 10];
            b[..4].copy_from_slice(&i.to_be_bytes());
            t.handle_discovered(UnixMillis(i as u64), NodeId(b), "spam", &[], &[addr(1)]);
        }
        assert_eq!(
            t.entries().count(),
            MAX_PEERS / 2,
            "mDNS-only entries are capped"
        );
        let m = Member {
            public_key: StaticKeypair::generate([9; 32]).public,
            name: "real".into(),
            addrs: vec![addr(9)],
            joined: UnixMillis(0),
            roles: vec![],
        };
        t.handle_members(UnixMillis(1), &[m.clone()]);
        let e = t.get(&m.node_id()).expect("the member gets in");
        assert!(e.addrs.contains(&addr(9)));
    }

    #[test]
    fn own_records_are_ignored() {
        let me = id(1);
        let mut t = PeerTable::new(me, PeerTableConfig::default(), 1);
        t.handle_discovered(UnixMillis(0), me, "me", &[], &[addr(1)]);
        assert_eq!(t.entries().count(), 0);
    }

    #[test]
    fn silence_makes_a_peer_unreachable_then_forgotten_and_contact_brings_it_back() {
        let cfg = PeerTableConfig::default();
        let mut t = PeerTable::new(id(1), cfg.clone(), 1);
        let p = id(2);
        t.handle_discovered(UnixMillis(0), p, "p", &[], &[addr(2)]);
        t.handle_connected(
            UnixMillis(0),
            p,
            1,
            addr(2),
            "p",
            &[Role::Mobility],
            2,
            true,
        );
        let e = t.get(&p).unwrap().clone();
        assert_eq!(t.liveness(&e, UnixMillis(5_000)), Liveness::Reachable);
        let later = UnixMillis(cfg.unreachable_after_ms + 1);
        assert_eq!(t.liveness(&e, later), Liveness::Unreachable);
        assert!(t.poll(later).contains(&PeerAction::BecameUnreachable(p)));
        assert!(
            !t.poll(later).contains(&PeerAction::BecameUnreachable(p)),
            "reported once"
        );
        t.handle_heartbeat(later, p, "p", &[]);
        let e = t.get(&p).unwrap().clone();
        assert_eq!(t.liveness(&e, later), Liveness::Reachable);
        let gone = later.plus_millis(cfg.forget_after_ms + 1);
        assert!(t.poll(gone).contains(&PeerAction::Forgot(p)));
        assert!(t.get(&p).is_none());
    }

    #[test]
    fn the_lower_id_dials_members_with_capped_backoff() {
        let (a, b) = (id(1), id(2));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let cfg = PeerTableConfig::default();
        let mut t = PeerTable::new(lo, cfg.clone(), 7);
        t.set_can_dial(true);
        let m = Member {
            public_key: StaticKeypair::generate(if hi == a { [1; 32] } else { [2; 32] }).public,
            name: "hi".into(),
            addrs: vec![addr(9)],
            joined: UnixMillis(0),
            roles: vec![],
        };
        t.handle_members(UnixMillis(0), &[m.clone()]);
        let dials = |acts: Vec<PeerAction>| {
            acts.into_iter()
                .filter(|a| matches!(a, PeerAction::Dial { .. }))
                .count()
        };
        assert_eq!(dials(t.poll(UnixMillis(0))), 1);
        assert_eq!(dials(t.poll(UnixMillis(1))), 0, "one dial in flight");
        let mut now = UnixMillis(10);
        for _ in 0..30 {
            t.handle_dial_failed(now, addr(9));
            let mut next = now;
            while dials(t.poll(next)) == 0 {
                next = next.plus_millis(10);
            }
            assert!(next.millis_since(now) <= cfg.backoff_max_ms + 10);
            now = next;
        }
        // The higher id never dials.
        let mut u = PeerTable::new(hi, cfg, 7);
        u.set_can_dial(true);
        let m2 = Member {
            public_key: StaticKeypair::generate(if lo == a { [1; 32] } else { [2; 32] }).public,
            ..m
        };
        u.handle_members(UnixMillis(0), &[m2]);
        assert_eq!(dials(u.poll(UnixMillis(0))), 0);
    }

    #[test]
    fn heartbeats_go_to_connected_peers_each_interval() {
        let cfg = PeerTableConfig::default();
        let mut t = PeerTable::new(id(1), cfg.clone(), 1);
        let p = id(2);
        t.handle_connected(UnixMillis(0), p, 1, addr(2), "p", &[], 2, false);
        assert!(t.poll(UnixMillis(0)).contains(&PeerAction::Heartbeat(p)));
        assert!(!t.poll(UnixMillis(1)).contains(&PeerAction::Heartbeat(p)));
        assert!(t
            .poll(UnixMillis(cfg.heartbeat_interval_ms))
            .contains(&PeerAction::Heartbeat(p)));
        t.handle_connected(UnixMillis(4), p, 2, addr(2), "p", &[], 2, false);
        t.handle_disconnected(UnixMillis(5), p, 1);
        assert!(t.get(&p).unwrap().connected, "a stale close is ignored");
        t.handle_disconnected(UnixMillis(5), p, 2);
        assert!(!t
            .poll(UnixMillis(2 * cfg.heartbeat_interval_ms))
            .contains(&PeerAction::Heartbeat(p)));
    }

    #[test]
    fn static_peers_are_dialed_until_connected() {
        let cfg = PeerTableConfig {
            static_peers: vec![addr(5)],
            ..Default::default()
        };
        let mut t = PeerTable::new(id(1), cfg, 1);
        assert!(
            t.poll(UnixMillis(0)).is_empty(),
            "no dialing before joining a mesh"
        );
        t.set_can_dial(true);
        assert!(t.poll(UnixMillis(0)).contains(&PeerAction::Dial {
            addr: addr(5),
            expect: None
        }));
        t.handle_connected(UnixMillis(1), id(2), 1, addr(5), "p", &[], 5, true);
        let dials =
            |acts: Vec<PeerAction>| acts.iter().any(|a| matches!(a, PeerAction::Dial { .. }));
        assert!(!dials(t.poll(UnixMillis(5_000))));
        // A connection that went silent counts as gone: the static peer is dialed again.
        assert!(dials(t.poll(UnixMillis(100_000))));
    }
}
