//! Routing of authenticated network input to the actors: roles are granted only by the mesh
//! authority's membership list, registration connections only register.

use actix::Actor;
use lifeboat_actors::mesh::Mesh;
use lifeboat_actors::seams::{Rng, StateStore};
use lifeboat_actors::shell::{GetMesh, MeshActor, RolesActor};
use lifeboat_config::state::{MeshFile, RolesFile};
use lifeboat_node::daemon::route;
use lifeboat_node::net::PeerInfo;
use lifeboat_node::seams::SystemClock;
use lifeboat_node::transport::Admitted;
use lifeboat_protocol::message::{MeshGrant, RoleOp};
use lifeboat_protocol::{Message, Role, StaticKeypair, UnixMillis};
use std::sync::Arc;

struct Memory;
impl StateStore for Memory {
    fn save_roles(&mut self, _: &RolesFile) -> Result<(), String> {
        Ok(())
    }
    fn save_mesh(&mut self, _: &MeshFile) -> Result<(), String> {
        Ok(())
    }
}

struct Fixed;
impl Rng for Fixed {
    fn seed32(&mut self) -> [u8; 32] {
        [1; 32]
    }
}

fn peer(kp: &StaticKeypair, admitted: Admitted) -> PeerInfo {
    PeerInfo {
        key: kp.public,
        addr: "127.0.0.1:1".parse().unwrap(),
        admitted,
    }
}

#[actix::test]
async fn only_the_mesh_authority_may_grant_roles() {
    let authority = StaticKeypair::generate([1; 32]);
    let member = StaticKeypair::generate([2; 32]);
    let me = StaticKeypair::generate([3; 32]);
    // The authority's view, granted to `me` at registration.
    let mut cfg = Mesh::new(authority.public, None);
    cfg.create(
        UnixMillis(1),
        [5; 32],
        "cfg",
        vec![],
        vec![Role::Configuration],
    )
    .unwrap();
    let now = UnixMillis(2);
    let mut grant: Option<MeshGrant> = None;
    for (i, k) in [&member, &me].into_iter().enumerate() {
        let key = cfg
            .issue_key(now, 60_000, [10 + i as u8; 32], vec![])
            .unwrap();
        grant = Some(
            cfg.handle_register(now, &key.key_id(), k.public, &format!("n{i}"), vec![], now)
                .unwrap(),
        );
    }
    let mut mine = Mesh::new(me.public, None);
    mine.join(grant.unwrap(), authority.public).unwrap();
    let mesh = MeshActor::new(
        mine,
        Box::new(Memory),
        Arc::new(SystemClock),
        Box::new(Fixed),
    )
    .start();
    let roles = RolesActor::new(Default::default(), Box::new(Memory)).start();
    // A membership list that grants `me` the process-server role (the vault key comes with it).
    cfg.assign_role(me.public.node_id(), RoleOp::Add, Role::ProcessServer)
        .unwrap();
    let update = || cfg.membership_message().unwrap();
    let granted = || async {
        mesh.send(GetMesh)
            .await
            .unwrap()
            .granted_roles(me.public.node_id())
    };

    // From a plain member (one that forged the authority's list): ignored.
    let r = route(
        peer(&member, Admitted::Mesh),
        update(),
        None,
        roles.clone(),
        mesh.clone(),
        None,
    )
    .await;
    assert_eq!(r, None);
    assert!(
        granted().await.is_empty(),
        "a plain member granted us a role"
    );

    // From the authority: taken.
    route(
        peer(&authority, Admitted::Mesh),
        update(),
        None,
        roles.clone(),
        mesh.clone(),
        None,
    )
    .await;
    assert_eq!(granted().await, vec![Role::ProcessServer]);

    // A connection admitted with a registration key may only register.
    let r = route(
        peer(&member, Admitted::Registration([0; 16])),
        Message::MembershipRequest,
        None,
        roles,
        mesh,
        None,
    )
    .await;
    assert!(matches!(r, Some(Message::Error { message }) if message.contains("may only register")));
}
