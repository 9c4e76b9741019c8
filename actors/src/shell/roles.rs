//! The roles actor: hosts the node's [`RoleSet`], persists it and tells subscribers.

use super::*;

/// The roles changed; carries the new set.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct RolesChanged(pub Vec<Role>);

/// Add or remove a role.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Role>, String>")]
pub struct ApplyRole {
    /// Add or remove.
    pub op: RoleOp,
    /// Which.
    pub role: Role,
}

/// Read the roles.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Role>")]
pub struct GetRoles;

/// Subscribe to role changes.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SubscribeRoles(pub Recipient<RolesChanged>);

/// Replace the roles with the set the mesh authority granted (a member's roles follow the
/// membership list; see [`crate::mesh`]).
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Role>, String>")]
pub struct SetRoles(pub BTreeSet<Role>);

/// Owns the node's [`RoleSet`].
pub struct RolesActor {
    /// The roles.
    roles: RoleSet,
    /// Persistence.
    store: Box<dyn StateStore>,
    /// Who hears about changes (peers for heartbeats, discovery for announcements).
    subscribers: Vec<Recipient<RolesChanged>>,
}

impl std::fmt::Debug for RolesActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolesActor")
            .field("roles", &self.roles)
            .finish()
    }
}

impl RolesActor {
    /// From persisted roles.
    pub fn new(roles: BTreeSet<Role>, store: Box<dyn StateStore>) -> Self {
        RolesActor {
            roles: RoleSet::new(roles),
            store,
            subscribers: Vec::new(),
        }
    }
}

impl Actor for RolesActor {
    type Context = Context<Self>;
}

impl RolesActor {
    /// Persists and announces `next` if it differs; on a persistence failure keeps the old set.
    fn replace(&mut self, next: RoleSet) -> Result<Vec<Role>, String> {
        if next == self.roles {
            return Ok(self.roles.to_vec());
        }
        let file = RolesFile {
            roles: next.as_set().clone(),
        };
        if let Err(e) = self.store.save_roles(&file) {
            // Persist first: a role that would vanish at restart is not applied.
            tracing::error!(cause = %e, "saving roles failed");
            return Err(format!("could not save roles: {e}"));
        }
        tracing::info!(before = ?self.roles.to_vec(), roles = ?next.to_vec(), "roles changed");
        self.roles = next;
        let now = self.roles.to_vec();
        for s in &self.subscribers {
            s.do_send(RolesChanged(now.clone()));
        }
        Ok(now)
    }
}

impl Handler<ApplyRole> for RolesActor {
    type Result = Result<Vec<Role>, String>;
    fn handle(&mut self, msg: ApplyRole, _: &mut Context<Self>) -> Self::Result {
        let mut next = self.roles.clone();
        next.apply(msg.op, msg.role);
        self.replace(next)
    }
}

impl Handler<SetRoles> for RolesActor {
    type Result = Result<Vec<Role>, String>;
    fn handle(&mut self, msg: SetRoles, _: &mut Context<Self>) -> Self::Result {
        self.replace(RoleSet::new(msg.0))
    }
}

impl Handler<GetRoles> for RolesActor {
    type Result = Vec<Role>;
    fn handle(&mut self, _: GetRoles, _: &mut Context<Self>) -> Vec<Role> {
        self.roles.to_vec()
    }
}

impl Handler<SubscribeRoles> for RolesActor {
    type Result = ();
    fn handle(&mut self, msg: SubscribeRoles, _: &mut Context<Self>) {
        msg.0.do_send(RolesChanged(self.roles.to_vec()));
        self.subscribers.push(msg.0);
    }
}
