//! The roles a node holds. Roles are data: adding or removing one is an edit of this set, which
//! the shell persists and announces; role services start and stop from the change events.

use lifeboat_protocol::message::RoleOp;
use lifeboat_protocol::Role;
use std::collections::BTreeSet;

/// The set of roles, with change detection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleSet {
    /// Roles held.
    roles: BTreeSet<Role>,
}

impl RoleSet {
    /// From persisted roles.
    pub fn new(roles: BTreeSet<Role>) -> Self {
        RoleSet { roles }
    }

    /// Applies an add or remove; returns true if the set changed.
    pub fn apply(&mut self, op: RoleOp, role: Role) -> bool {
        match op {
            RoleOp::Add => self.roles.insert(role),
            RoleOp::Remove => self.roles.remove(&role),
        }
    }

    /// True if the role is held.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Roles in display order.
    pub fn to_vec(&self) -> Vec<Role> {
        self.roles.iter().copied().collect()
    }

    /// The underlying set.
    pub fn as_set(&self) -> &BTreeSet<Role> {
        &self.roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_are_idempotent_and_report_changes() {
        let mut r = RoleSet::default();
        assert!(r.apply(RoleOp::Add, Role::Mobility));
        assert!(!r.apply(RoleOp::Add, Role::Mobility));
        assert!(r.has(Role::Mobility));
        assert!(r.apply(RoleOp::Remove, Role::Mobility));
        assert!(!r.apply(RoleOp::Remove, Role::Mobility));
        assert!(r.to_vec().is_empty());
    }
}
