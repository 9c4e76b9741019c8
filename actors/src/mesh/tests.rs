//! Unit tests.

use super::*;
use lifeboat_protocol::StaticKeypair;

const DAY: u64 = 86_400_000;

fn authority() -> (Mesh, PublicKey) {
    let cfg = StaticKeypair::generate([1; 32]).public;
    let mut m = Mesh::new(cfg, None);
    m.create(
        UnixMillis(1_000),
        [9; 32],
        "cfg",
        vec![],
        vec![Role::Configuration],
    )
    .unwrap();
    (m, cfg)
}

#[test]
fn a_fresh_key_admits_one_node_once() {
    let (mut m, _) = authority();
    let k = m
        .issue_key(UnixMillis(1_000), 5 * DAY, [2; 32], vec![])
        .unwrap();
    let a = StaticKeypair::generate([3; 32]).public;
    let b = StaticKeypair::generate([4; 32]).public;
    let now = UnixMillis(2_000);
    assert!(matches!(
        m.psk_for(&k.key_id(), UnixMillis(2_000)),
        Some(PskKind::Registration(_))
    ));
    let g = m
        .handle_register(now, &k.key_id(), a, "a", vec![], now)
        .unwrap();
    assert_eq!(g.members.len(), 2);
    assert!(m.admits(&a));
    // The same node may retry; another may not reuse the key.
    assert!(m
        .handle_register(now, &k.key_id(), a, "a", vec![], now)
        .is_ok());
    assert_eq!(
        m.handle_register(now, &k.key_id(), b, "b", vec![], now),
        Err(RegisterRefusal::AlreadyUsed)
    );
    assert!(!m.admits(&b));
}

#[test]
fn expired_keys_and_skewed_clocks_are_refused() {
    let (mut m, _) = authority();
    let k = m
        .issue_key(UnixMillis(1_000), DAY, [2; 32], vec![])
        .unwrap();
    let a = StaticKeypair::generate([3; 32]).public;
    let late = UnixMillis(1_000 + DAY);
    assert_eq!(
        m.handle_register(late, &k.key_id(), a, "a", vec![], late),
        Err(RegisterRefusal::Expired {
            expired_at: UnixMillis(1_000 + DAY)
        })
    );
    let now = UnixMillis(10_000_000);
    let skewed = UnixMillis(10_000_000 + 7 * 60_000);
    assert_eq!(
        m.handle_register(now, &k.key_id(), a, "a", vec![], skewed),
        Err(RegisterRefusal::ClockSkew {
            skew_ms: 7 * 60_000,
            max_ms: MAX_CLOCK_SKEW_MS
        })
    );
    let fine = UnixMillis(10_000_000 - 4 * 60_000);
    assert!(m
        .handle_register(now, &k.key_id(), a, "a", vec![], fine)
        .is_ok());
}

#[test]
fn unknown_keys_and_non_authorities_are_refused() {
    let (mut m, cfg) = authority();
    let a = StaticKeypair::generate([3; 32]).public;
    assert_eq!(
        m.handle_register(UnixMillis(1), &[0; 16], a, "a", vec![], UnixMillis(1)),
        Err(RegisterRefusal::UnknownKey)
    );
    let k = m
        .issue_key(UnixMillis(1_000), DAY, [2; 32], vec![])
        .unwrap();
    let grant = m
        .handle_register(
            UnixMillis(2_000),
            &k.key_id(),
            a,
            "a",
            vec![],
            UnixMillis(2_000),
        )
        .unwrap();
    let mut joined = Mesh::new(a, None);
    joined.join(grant, cfg).unwrap();
    assert!(joined.admits(&cfg));
    assert!(!joined.is_authority());
    assert_eq!(
        joined.issue_key(UnixMillis(1), DAY, [1; 32], vec![]).err(),
        Some(MeshError::NotAuthority)
    );
    // Registration keys are only resolvable on the authority.
    assert_eq!(joined.psk_for(&k.key_id(), UnixMillis(2_000)), None);
    assert!(matches!(
        joined.psk_for(&psk_id(&joined.secret().unwrap()), UnixMillis(2_000)),
        Some(PskKind::Mesh(_))
    ));
}

#[test]
fn membership_updates_come_only_from_authorities_and_only_forward() {
    let (m, cfg) = authority();
    let a = StaticKeypair::generate([3; 32]).public;
    let grant = MeshGrant {
        mesh_id: m.mesh_id().unwrap(),
        mesh_secret: m.secret().unwrap(),
        membership_version: 5,
        members: m.members().to_vec(),
    };
    let mut joined = Mesh::new(a, None);
    joined.join(grant, cfg).unwrap();
    let now = UnixMillis(1);
    assert!(!joined.handle_membership_update(now, &a, 9, vec![], None, None));
    assert!(!joined.handle_membership_update(now, &cfg, 4, vec![], None, None));
    assert!(joined.handle_membership_update(now, &cfg, 6, vec![], None, None));
    assert_eq!(joined.version(), 6);
}

fn registered(m: &mut Mesh, seed: u8, name: &str) -> Result<PublicKey, RegisterRefusal> {
    let k = m
        .issue_key(UnixMillis(1_000), DAY, [seed; 32], vec![])
        .unwrap();
    let who = StaticKeypair::generate([seed; 32]).public;
    let now = UnixMillis(2_000);
    m.handle_register(now, &k.key_id(), who, name, vec![], now)
        .map(|_| who)
}

#[test]
fn names_are_unique_and_resolve_to_one_member() {
    let (mut m, _) = authority();
    let a = registered(&mut m, 3, "web-1").unwrap();
    assert_eq!(
        registered(&mut m, 4, "web-1"),
        Err(RegisterRefusal::NameTaken {
            name: "web-1".into()
        })
    );
    assert_eq!(
        registered(&mut m, 5, "cfg"),
        Err(RegisterRefusal::NameTaken { name: "cfg".into() })
    );
    let a_id = a.node_id().to_string();
    assert_eq!(
        registered(&mut m, 6, &a_id),
        Err(RegisterRefusal::NameTaken { name: a_id.clone() })
    );
    assert_eq!(m.resolve("web-1").map(|x| x.public_key), Some(a));
    assert_eq!(
        m.resolve(&a.node_id().to_string()).map(|x| x.public_key),
        Some(a)
    );
    assert!(m.resolve("web-2").is_none());
}

#[test]
fn roles_are_granted_by_the_authority_only_and_travel_with_membership() {
    let (mut m, cfg) = authority();
    let a = registered(&mut m, 3, "ps").unwrap();
    assert!(m.granted_roles(a.node_id()).is_empty());
    let v = m.version();
    let (roles, changed) = m
        .assign_role(a.node_id(), RoleOp::Add, Role::ProcessServer)
        .unwrap();
    assert!(changed);
    assert_eq!(roles, vec![Role::ProcessServer]);
    assert_eq!(m.version(), v + 1);
    // Idempotent: no version bump.
    assert!(
        !m.assign_role(a.node_id(), RoleOp::Add, Role::ProcessServer)
            .unwrap()
            .1
    );
    assert_eq!(m.version(), v + 1);
    let nobody = StaticKeypair::generate([77; 32]).public.node_id();
    assert!(matches!(
        m.assign_role(nobody, RoleOp::Add, Role::Mobility),
        Err(MeshError::UnknownMember(_))
    ));
    // A member takes its roles from the authority's list, and cannot grant any.
    let Some(lifeboat_protocol::Message::MembershipUpdate {
        version,
        members,
        secret,
        ..
    }) = m.membership_message()
    else {
        panic!("authority publishes membership")
    };
    let mut joined = Mesh::new(a, None);
    joined
        .join(
            MeshGrant {
                mesh_id: m.mesh_id().unwrap(),
                mesh_secret: m.secret().unwrap(),
                membership_version: 1,
                members: vec![],
            },
            cfg,
        )
        .unwrap();
    assert!(joined.handle_membership_update(
        UnixMillis(3),
        &cfg,
        version,
        members,
        secret.map(|s| s.0),
        None
    ));
    assert_eq!(joined.granted_roles(a.node_id()), vec![Role::ProcessServer]);
    assert_eq!(
        joined.assign_role(a.node_id(), RoleOp::Add, Role::Configuration),
        Err(MeshError::NotAuthority)
    );
}

#[test]
fn a_removed_member_is_no_longer_admitted() {
    let (mut m, cfg) = authority();
    let k = m
        .issue_key(UnixMillis(1_000), DAY, [3; 32], vec![])
        .unwrap();
    let a = StaticKeypair::generate([3; 32]).public;
    let now = UnixMillis(2_000);
    m.handle_register(now, &k.key_id(), a, "gone", vec![], now)
        .unwrap();
    assert!(m.admits(&a));
    m.remove_member(a.node_id()).unwrap();
    assert!(!m.admits(&a));
    // Its own (used, unexpired) key does not bring it back.
    assert_eq!(
        m.handle_register(now, &k.key_id(), a, "gone", vec![], now),
        Err(RegisterRefusal::AlreadyUsed)
    );
    assert!(!m.admits(&a));
    assert_eq!(
        m.remove_member(cfg.node_id()).err(),
        Some(MeshError::RemoveSelf)
    );
    assert!(matches!(
        m.remove_member(a.node_id()),
        Err(MeshError::UnknownMember(_))
    ));
}

#[test]
fn a_rotated_secret_keeps_the_old_one_only_for_the_grace_period() {
    let (mut m, cfg) = authority();
    let old = m.secret().unwrap();
    m.rotate_secret(UnixMillis(10_000), [42; 32], 5_000)
        .unwrap();
    let new = m.secret().unwrap();
    assert_ne!(old, new);
    assert_eq!(
        m.psk_for(&psk_id(&new), UnixMillis(20_000)),
        Some(PskKind::Mesh(new))
    );
    assert_eq!(
        m.psk_for(&psk_id(&old), UnixMillis(14_999)),
        Some(PskKind::Mesh(old))
    );
    assert_eq!(m.psk_for(&psk_id(&old), UnixMillis(15_000)), None);
    // Members learn the new secret with the membership list.
    let a = StaticKeypair::generate([3; 32]).public;
    let mut joined = Mesh::new(a, None);
    joined
        .join(
            MeshGrant {
                mesh_id: m.mesh_id().unwrap(),
                mesh_secret: old,
                membership_version: 1,
                members: vec![],
            },
            cfg,
        )
        .unwrap();
    assert!(joined.handle_membership_update(
        UnixMillis(11_000),
        &cfg,
        m.version(),
        m.members().to_vec(),
        m.secret(),
        Some(UnixMillis(15_000))
    ));
    assert_eq!(joined.secret(), Some(new));
    assert_eq!(joined.previous_secret(UnixMillis(11_000)), Some(old));
    assert_eq!(
        joined.previous_secret(UnixMillis(15_000)),
        None,
        "the authority's grace"
    );
}

#[test]
fn registration_keys_live_at_most_five_days() {
    let (mut m, _) = authority();
    assert!(matches!(
        m.issue_key(UnixMillis(1), 5 * DAY + 1, [1; 32], vec![]),
        Err(MeshError::Validity(_))
    ));
    assert!(matches!(
        m.issue_key(UnixMillis(1), 0, [1; 32], vec![]),
        Err(MeshError::Validity(_))
    ));
    assert!(m.issue_key(UnixMillis(1), 5 * DAY, [1; 32], vec![]).is_ok());
}

#[test]
fn a_node_joins_one_mesh() {
    let (mut m, _) = authority();
    assert!(matches!(
        m.create(UnixMillis(1), [1; 32], "x", vec![], vec![]),
        Err(MeshError::AlreadyMember(_))
    ));
}
