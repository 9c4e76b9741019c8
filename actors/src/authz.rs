//! Which node may send which message: the authorization rules of the daemon's router, as a
//! pure function the daemon and tests share. Every message from the network is checked against
//! the authenticated sender (its node id, whether it is a member or the mesh authority, and the
//! roles the authority's record grants it) and against the roles this node holds; names never
//! enter into it. See `docs/SECURITY.md`.
//!
//! Call order: the router builds [`Facts`] for the sender of each message and asks
//! [`authorize`] before acting; on `Err` it answers (or drops) with the refusal and logs it.

use lifeboat_protocol::message::Member;
use lifeboat_protocol::{Message, NodeId, Role};

/// What the router knows about a message's sender and about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The connection was admitted with a registration key (not the mesh secret).
    pub registration: bool,
    /// The sender's key is the mesh authority's.
    pub authority: bool,
    /// The roles the authority's record grants the sender.
    pub sender_roles: Vec<Role>,
    /// The roles this node holds.
    pub local_roles: Vec<Role>,
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A registration connection sent something other than `Register`.
    #[error("a registration connection may only register")]
    RegistrationOnly,
    /// Only the mesh authority may send this.
    #[error("only the configuration node may {0}")]
    NotAuthority(&'static str),
    /// This node lacks the role the message is for.
    #[error("this node {0}")]
    NotHere(&'static str),
    /// The sender lacks the role the message needs.
    #[error("the configuration node has not granted the sender the {0} role")]
    NotGranted(Role),
    /// A message no peer sends unasked.
    #[error("unexpected message")]
    Unexpected,
}

impl Refusal {
    /// True if the refusal is worth a warning on the victim (someone tried something it may
    /// not); false for ordinary misdirected traffic.
    pub fn is_suspicious(&self) -> bool {
        matches!(self, Refusal::NotAuthority(_) | Refusal::NotGranted(_))
    }
}

/// Decides whether `msg` from a sender described by `f` may be acted on.
pub fn authorize(msg: &Message, f: &Facts) -> Result<(), Refusal> {
    let local = |r: Role| f.local_roles.contains(&r);
    let granted = |r: Role| f.sender_roles.contains(&r);
    if f.registration {
        return match msg {
            Message::Register { .. } => Ok(()),
            _ => Err(Refusal::RegistrationOnly),
        };
    }
    match msg {
        // Liveness and membership traffic: any member (a membership list is taken only from
        // the authority; the mesh state machine checks that again).
        Message::Heartbeat { .. } | Message::MembershipRequest | Message::Bulk(_) => Ok(()),
        Message::MembershipUpdate { .. } if !f.authority => {
            Err(Refusal::NotAuthority("publish the membership list"))
        }
        Message::MembershipUpdate { .. } => Ok(()),
        Message::VaultGrant(_) if !f.authority => Err(Refusal::NotAuthority("grant a vault")),
        Message::VaultGrant(_) if !local(Role::ProcessServer) => {
            Err(Refusal::NotHere("was not granted the process-server role"))
        }
        Message::VaultGrant(_) => Ok(()),
        Message::Protect(_) if !f.authority => Err(Refusal::NotAuthority("start protection")),
        Message::Protect(_) if !local(Role::Mobility) => {
            Err(Refusal::NotHere("lacks the mobility role"))
        }
        Message::Unprotect { .. } if !f.authority => Err(Refusal::NotAuthority("stop protection")),
        Message::Protect(_) | Message::Unprotect { .. } => Ok(()),
        Message::CutPoint { .. } if !f.authority => Err(Refusal::NotAuthority("ask for a point")),
        Message::ShutdownSource { .. } if !f.authority => {
            Err(Refusal::NotAuthority("shut a machine down"))
        }
        Message::Failback(_) if !f.authority => Err(Refusal::NotAuthority("fail a machine back")),
        // Any member may be a target of drills and failovers; only the authority sends them.
        Message::Land(_) | Message::Unland { .. } if !f.authority => {
            Err(Refusal::NotAuthority("bring a machine up"))
        }
        Message::Land(_) | Message::Unland { .. } => Ok(()),
        Message::AdoptPoint { .. } if !f.authority => {
            Err(Refusal::NotAuthority("start protection"))
        }
        Message::AdoptPoint { .. } if !local(Role::Mobility) => {
            Err(Refusal::NotHere("lacks the mobility role"))
        }
        Message::AdoptPoint { .. } => Ok(()),
        Message::CutPoint { .. } | Message::ShutdownSource { .. } | Message::Failback(_)
            if !local(Role::Mobility) =>
        {
            Err(Refusal::NotHere("lacks the mobility role"))
        }
        Message::CutPoint { .. } | Message::ShutdownSource { .. } | Message::Failback(_) => Ok(()),
        Message::PointNotice(_)
        | Message::Admin { .. }
        | Message::Report(_)
        | Message::PsHealth(_)
        | Message::LandProgress { .. }
            if !local(Role::Configuration) =>
        {
            Err(Refusal::NotHere("is not a configuration node"))
        }
        Message::PointNotice(_) if !granted(Role::ProcessServer) => {
            Err(Refusal::NotGranted(Role::ProcessServer))
        }
        Message::Report(_) if !granted(Role::Mobility) => Err(Refusal::NotGranted(Role::Mobility)),
        Message::PsHealth(_) if !granted(Role::ProcessServer) => {
            Err(Refusal::NotGranted(Role::ProcessServer))
        }
        Message::PsHealth(_) => Ok(()),
        Message::PointNotice(_) | Message::Admin { .. } | Message::Report(_) => Ok(()),
        // From any member: the router takes it only from the node the job landed on.
        Message::LandProgress { .. } => Ok(()),
        Message::DeltaBegin(_) if !local(Role::ProcessServer) => {
            Err(Refusal::NotHere("is not a process server"))
        }
        Message::DeltaBegin(_) if !granted(Role::Mobility) => {
            Err(Refusal::NotGranted(Role::Mobility))
        }
        Message::DeltaBegin(_) => Ok(()),
        _ => Err(Refusal::Unexpected),
    }
}

/// True if member `from` means itself by `machine` (its node id, or its unique name; ids are
/// tried first). A member may only ask about or change its own machine.
pub fn is_own_machine(from: NodeId, machine: &str, members: &[Member]) -> bool {
    crate::mesh::resolve_member(members, machine).is_some_and(|m| m.node_id() == from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_protocol::message::{DeltaHeader, PointSummary, ProtectionReport};
    use lifeboat_protocol::{StaticKeypair, UnixMillis};

    fn facts(authority: bool, sender: &[Role], local: &[Role]) -> Facts {
        Facts {
            registration: false,
            authority,
            sender_roles: sender.to_vec(),
            local_roles: local.to_vec(),
        }
    }

    fn id(seed: u8) -> NodeId {
        StaticKeypair::generate([seed; 32]).public.node_id()
    }

    fn notice() -> Message {
        Message::PointNotice(PointSummary {
            id: "p".into(),
            machine: id(1),
            captured: UnixMillis(1),
            committed: UnixMillis(1),
            consistency: lifeboat_protocol::vault::Consistency::CrashConsistent,
            stats: Default::default(),
            process_server: id(2),
        })
    }

    fn delta() -> Message {
        Message::DeltaBegin(DeltaHeader {
            session: "s".into(),
            machine: id(1),
            machine_name: "m".into(),
            base: None,
            captured: UnixMillis(1),
            consistency: lifeboat_protocol::vault::Consistency::CrashConsistent,
            disks: vec![],
        })
    }

    #[test]
    fn vault_grants_and_protection_come_only_from_the_authority() {
        let grant = Message::VaultGrant(lifeboat_protocol::message::VaultGrant {
            name: "v".into(),
            url: "file:///v".into(),
            master_key: [0; 32],
            rotations: vec![],
            options: vec![],
        });
        let ps = [Role::ProcessServer];
        assert_eq!(
            authorize(&grant, &facts(false, &[Role::Configuration], &ps)),
            Err(Refusal::NotAuthority("grant a vault"))
        );
        assert!(authorize(&grant, &facts(true, &[], &ps)).is_ok());
        assert!(matches!(
            authorize(&grant, &facts(true, &[], &[Role::Mobility])),
            Err(Refusal::NotHere(_))
        ));
        let unprotect = Message::Unprotect { machine: id(1) };
        assert!(authorize(&unprotect, &facts(false, &[], &[Role::Mobility])).is_err());
        assert!(authorize(&unprotect, &facts(true, &[], &[Role::Mobility])).is_ok());
        // A final point or a shutdown: only the authority, only to a mobility node.
        let failback = Message::Failback(lifeboat_protocol::message::FailbackJob {
            machine: id(1),
            grant: lifeboat_protocol::message::VaultGrant {
                name: "v".into(),
                url: "file:///v".into(),
                master_key: [0; 32],
                rotations: vec![],
                options: vec![],
            },
            point: "p".into(),
            disks: vec![],
        });
        for m in [
            Message::CutPoint { machine: id(1) },
            Message::ShutdownSource { machine: id(1) },
            failback,
            Message::AdoptPoint {
                job: "j".into(),
                point: "p".into(),
                disks: vec![],
            },
        ] {
            let all = [Role::Configuration, Role::ProcessServer, Role::Mobility];
            assert!(matches!(
                authorize(&m, &facts(false, &all, &[Role::Mobility])),
                Err(Refusal::NotAuthority(_))
            ));
            assert!(matches!(
                authorize(&m, &facts(true, &[], &[Role::ProcessServer])),
                Err(Refusal::NotHere(_))
            ));
            assert!(authorize(&m, &facts(true, &[], &[Role::Mobility])).is_ok());
        }
        // Any member can be a recovery target, for the authority only.
        let unland = Message::Unland { job: "j".into() };
        assert!(authorize(&unland, &facts(true, &[], &[])).is_ok());
        assert!(matches!(
            authorize(&unland, &facts(false, &[Role::Mobility], &[Role::Mobility])),
            Err(Refusal::NotAuthority(_))
        ));
    }

    #[test]
    fn point_notices_need_a_granted_process_server_and_streams_a_granted_mobility_node() {
        let cfg = [Role::Configuration];
        assert_eq!(
            authorize(&notice(), &facts(false, &[Role::Mobility], &cfg)),
            Err(Refusal::NotGranted(Role::ProcessServer))
        );
        assert!(authorize(&notice(), &facts(false, &[Role::ProcessServer], &cfg)).is_ok());
        assert!(authorize(&notice(), &facts(false, &[Role::ProcessServer], &[])).is_err());
        let ps = [Role::ProcessServer];
        assert_eq!(
            authorize(&delta(), &facts(false, &[], &ps)),
            Err(Refusal::NotGranted(Role::Mobility))
        );
        assert!(authorize(&delta(), &facts(false, &[Role::Mobility], &ps)).is_ok());
        let report = Message::Report(ProtectionReport {
            machine: id(1),
            initial: false,
            resync: false,
            progress_permille: 0,
            pending_bytes: 0,
            last_point: None,
            last_error: None,
            process_server: None,
            scanned_bytes: 0,
            total_bytes: 0,
            tracking: Default::default(),
            counters: Default::default(),
        });
        assert!(authorize(&report, &facts(false, &[], &cfg)).is_err());
        assert!(authorize(&report, &facts(false, &[Role::Mobility], &cfg)).is_ok());
        // A target's landing progress goes only to a configuration node (which takes it only
        // from the job's target).
        let progress = Message::LandProgress {
            job: "j".into(),
            done_bytes: 1,
        };
        assert!(authorize(&progress, &facts(false, &[], &cfg)).is_ok());
        assert!(authorize(&progress, &facts(false, &[], &[Role::Mobility])).is_err());
        // Health reports: from a granted process server, to a configuration node.
        let health = Message::PsHealth(Default::default());
        assert_eq!(
            authorize(&health, &facts(false, &[Role::Mobility], &cfg)),
            Err(Refusal::NotGranted(Role::ProcessServer))
        );
        assert!(authorize(&health, &facts(false, &[Role::ProcessServer], &cfg)).is_ok());
        assert!(authorize(&health, &facts(false, &[Role::ProcessServer], &ps)).is_err());
    }

    #[test]
    fn membership_comes_from_the_authority_and_registration_connections_only_register() {
        let update = Message::MembershipUpdate {
            version: 9,
            members: vec![],
            secret: None,
            previous_until: None,
        };
        assert!(authorize(&update, &facts(false, &[Role::Configuration], &[])).is_err());
        assert!(authorize(&update, &facts(true, &[], &[])).is_ok());
        let mut reg = facts(true, &[], &[]);
        reg.registration = true;
        assert_eq!(
            authorize(&Message::MembershipRequest, &reg),
            Err(Refusal::RegistrationOnly)
        );
        assert_eq!(
            authorize(&Message::Accept, &facts(true, &[], &[])),
            Err(Refusal::Unexpected)
        );
    }

    #[test]
    fn a_member_addresses_only_its_own_machine_by_id_or_name() {
        let member = |seed: u8, name: &str| Member {
            public_key: StaticKeypair::generate([seed; 32]).public,
            name: name.into(),
            addrs: vec![],
            joined: UnixMillis(0),
            roles: vec![],
        };
        let members = vec![member(1, "web-1"), member(2, "intruder")];
        let (web, evil) = (id(1), id(2));
        assert!(is_own_machine(web, "web-1", &members));
        assert!(is_own_machine(web, &web.to_string(), &members));
        assert!(!is_own_machine(evil, "web-1", &members));
        assert!(!is_own_machine(evil, &web.to_string(), &members));
        assert!(!is_own_machine(evil, "nobody", &members));
    }
}
