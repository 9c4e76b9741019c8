//! The discovery actor: keeps this node's announcement current through a [`Discovery`]
//! implementation (mDNS in production).

use super::*;

/// Hosts a [`Discovery`] implementation and keeps our announcement current.
pub struct DiscoveryActor {
    /// The mechanism (mDNS in production).
    discovery: Box<dyn Discovery>,
    /// What we announce.
    ann: Announcement,
}

impl std::fmt::Debug for DiscoveryActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryActor")
            .field("ann", &self.ann)
            .finish()
    }
}

impl DiscoveryActor {
    /// Announces `ann` through `discovery` once started.
    pub fn new(discovery: Box<dyn Discovery>, ann: Announcement) -> Self {
        DiscoveryActor { discovery, ann }
    }
}

impl Actor for DiscoveryActor {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.discovery.announce(&self.ann);
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.discovery.withdraw();
    }
}

impl Handler<RolesChanged> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, m: RolesChanged, _: &mut Context<Self>) {
        if self.ann.roles != m.0 {
            self.ann.roles = m.0;
            self.discovery.announce(&self.ann);
        }
    }
}

impl Handler<MembersChanged> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, m: MembersChanged, _: &mut Context<Self>) {
        let mesh = m.mesh_id.as_ref().map(crate::mesh::mesh_id_hex);
        if self.ann.mesh != mesh {
            self.ann.mesh = mesh;
            self.discovery.announce(&self.ann);
        }
    }
}

/// Stop announcing (shutdown): withdraws our record and stops the actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopDiscovery;

impl Handler<StopDiscovery> for DiscoveryActor {
    type Result = ();
    fn handle(&mut self, _: StopDiscovery, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
