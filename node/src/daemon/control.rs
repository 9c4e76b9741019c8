//! The local control socket: one JSON request per connection from the `lifeboat` CLI,
//! answered by this daemon or forwarded to the configuration node over the mesh.

use super::*;
use crate::replies;
use lifeboat_actors::mesh::MeshError;

pub(super) async fn control_loop(l: tokio::net::UnixListener, ctx: Arc<Ctx>) {
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

pub(super) async fn on_quic<T: Send + 'static>(
    ctx: &Ctx,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    ctx.quic.spawn(f).await.map_err(|e| e.to_string())
}

/// Replication commands any node may run: a node without the configuration role forwards them
/// to the configuration node over the mesh.
pub(super) fn forwardable(req: &Request) -> bool {
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
            capture,
        } => {
            let ask = c::ProtectAsk {
                machine,
                disks,
                policy,
                process_server,
                hooks,
                block_size,
                capture,
            };
            c::protect(&repl, ask).await
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
            "unexpected reply from the configuration node: {}",
            other.kind()
        )),
    }
}

pub(super) async fn handle(req: Request, ctx: &Ctx) -> Result<serde_json::Value, String> {
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
                let local = crate::replication::config_side::ps_health(&ctx.repl).await;
                let mut v: replies::ReplStatus = match forward(ctx, req).await {
                    Ok(v) => replies::decode(v)?,
                    Err(e) => replies::ReplStatus {
                        unreachable: Some(e),
                        ..Default::default()
                    },
                };
                v.process_server = ctx
                    .roles
                    .send(GetRoles)
                    .await
                    .is_ok_and(|r| r.contains(&Role::ProcessServer))
                    .then_some(local);
                return Ok(replies::encode(&v));
            }
            return forward(ctx, req).await;
        }
    }
    let gone = |_| "daemon is shutting down".to_string();
    match req {
        Request::Status => node_status(ctx).await,
        Request::RoleAdd { role, node } => role_change(ctx, RoleOp::Add, &role, node).await,
        Request::RoleRemove { role, node } => role_change(ctx, RoleOp::Remove, &role, node).await,
        Request::MeshRemove { node } => mesh_remove(ctx, &node).await,
        r @ (Request::RoleList { .. }
        | Request::MeshRotateSecret { .. }
        | Request::MeshCreate
        | Request::KeyIssue { .. }) => mesh_request(ctx, r).await,
        Request::Register { key } => register(ctx, &key).await,
        Request::Peers => {
            let peers = ctx.peers.send(ListPeers).await.map_err(gone)?;
            Ok(serde_json::to_value(peers).unwrap_or_default())
        }
        r @ (Request::VaultCreate { .. }
        | Request::VaultAttach { .. }
        | Request::VaultRekey
        | Request::VaultGc { .. }
        | Request::PolicyCreate { .. }
        | Request::PolicyDelete { .. }) => config_request(ctx, r).await,
        r @ (Request::Restore { .. }
        | Request::Drill { .. }
        | Request::DrillCleanup { .. }
        | Request::Failover { .. }
        | Request::FailoverCommit { .. }
        | Request::FailoverCancel { .. }
        | Request::Reprotect { .. }
        | Request::Failback { .. }
        | Request::Jobs { .. }
        | Request::Job { .. }) => super::recovery::recovery_request(ctx, r).await,
        Request::Throttle {
            work,
            off,
            hours,
            clear,
        } => crate::replication::config_side::throttle(&ctx.repl, work, off, hours, clear).await,
        // The commands a member may also forward here: one implementation for both paths.
        r @ (Request::Protect { .. }
        | Request::Unprotect { .. }
        | Request::Points { .. }
        | Request::ReplStatus { .. }
        | Request::PolicyList) => on_quic(ctx, replication_admin(ctx.repl.clone(), r)).await?,
        Request::Shutdown => {
            let _ = ctx.stop.try_send(());
            Ok(replies::encode(&replies::Stopping { stopping: true }))
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
        return Ok(replies::encode(&replies::RolesReply {
            node_id: me.to_string(),
            roles,
            applied: Some(true),
            note: None,
            state: None,
        }));
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
    Ok(replies::encode(&replies::RolesReply {
        node_id: target.to_string(),
        roles,
        applied: Some(delivered),
        note: (!delivered).then(|| "recorded; the node applies it when it connects".to_string()),
        state: None,
    }))
}

/// The member a person named (node id or unique name), or a one-line error.
fn resolve_member(mesh: &MembersChanged, s: &str) -> Result<NodeId, String> {
    mesh.resolve(s)
        .map(|m| m.node_id())
        .ok_or_else(|| MeshError::UnknownMember(s.to_string()).to_string())
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
    Ok(replies::encode(&replies::Removed {
        removed: target.to_string(),
        name: m.name,
        roles: m.roles,
        advice: "its connections are closed and refused; rotate the mesh secret (`lifeboat mesh rotate-secret`) and, if it was a process server, the vault key (`lifeboat vault rekey`)".into(),
    }))
}

async fn register(ctx: &Ctx, text: &str) -> Result<serde_json::Value, String> {
    let key = RegistrationKey::decode(text).map_err(|e| e.to_string())?;
    let mesh = ctx.mesh.send(GetMesh).await.map_err(|e| e.to_string())?;
    if let Some(id) = mesh.mesh_id {
        if id == key.mesh_id {
            return Ok(replies::encode(&replies::Joined {
                mesh_id: mesh_id_hex(&id),
                already_member: true,
                members: None,
                configuration_node: None,
            }));
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
            Ok(replies::encode(&replies::Joined {
                mesh_id: mesh_id_hex(&mesh_id),
                already_member: false,
                members: Some(members),
                configuration_node: Some(registrar.node_id().to_string()),
            }))
        }
        Message::RegisterRefused(r) => Err(format!("registration refused: {r}")),
        Message::Error { message } => Err(format!("registration failed: {message}")),
        other => Err(format!(
            "unexpected reply to registration: {}",
            other.kind()
        )),
    }
}

/// `status`: this node.
async fn node_status(ctx: &Ctx) -> Result<serde_json::Value, String> {
    let gone = |_| "daemon is shutting down".to_string();
    let roles = ctx.roles.send(GetRoles).await.map_err(gone)?;
    let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
    let kp = &ctx.local.keypair;
    Ok(replies::encode(&replies::NodeStatus {
        node_id: kp.node_id().to_string(),
        name: ctx.cfg.node.name.clone(),
        fingerprint: kp.public.fingerprint().to_string(),
        roles,
        listen: ctx.net.local_addr(),
        advertise: ctx.advertise.clone(),
        mesh_id: mesh.mesh_id.as_ref().map(mesh_id_hex),
        members: mesh.members.len(),
        membership_version: mesh.version,
        authority: mesh.local_is_authority,
        connected_peers: ctx.net.connected().len(),
        state_dir: ctx.dir.root.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: lifeboat_protocol::PROTOCOL_VERSION,
    }))
}

/// The configuration node's own commands: vault, policies, restore (run off the control
/// socket's task, on the network runtime).
async fn config_request(ctx: &Ctx, req: Request) -> Result<serde_json::Value, String> {
    match req {
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
                let r = repl.clone();
                crate::replication::config_side::jobs::run_job(
                    &repl,
                    None,
                    "gc",
                    None,
                    move |j| async move {
                        j.step("collecting packs and chunks no point references");
                        crate::replication::config_side::gc(&r, grace_ms).await
                    },
                )
                .await
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
        Request::VaultAttach {
            url,
            options,
            recovery_key,
        } => {
            let repl = ctx.repl.clone();
            on_quic(ctx, async move {
                let opts = options.into_iter().collect();
                crate::replication::config_side::vault_attach(&repl, &url, opts, &recovery_key.0)
                    .await
            })
            .await?
        }
        _ => Err("internal: not a configuration command".into()),
    }
}

/// Role listing, mesh creation, secret rotation, registration keys.
async fn mesh_request(ctx: &Ctx, req: Request) -> Result<serde_json::Value, String> {
    let gone = |_| "daemon is shutting down".to_string();
    match req {
        Request::RoleList { node: None } => {
            let roles = ctx.roles.send(GetRoles).await.map_err(gone)?;
            Ok(replies::encode(&replies::RolesReply {
                node_id: ctx.local.keypair.node_id().to_string(),
                roles,
                applied: None,
                note: None,
                state: None,
            }))
        }
        Request::RoleList { node: Some(n) } => {
            let mesh = ctx.mesh.send(GetMesh).await.map_err(gone)?;
            let id = resolve_member(&mesh, &n)?;
            let peers = ctx.peers.send(ListPeers).await.map_err(gone)?;
            let peer = peers.iter().find(|p| p.node_id == id.to_string());
            let state = peer
                .and_then(|p| serde_json::to_value(p.state).ok())
                .and_then(|v| v.as_str().map(str::to_string));
            let granted = mesh.granted_roles(id);
            let sorted = |r: &[Role]| r.iter().copied().collect::<std::collections::BTreeSet<_>>();
            // Applied: the node says (in its heartbeats) it holds what the record grants.
            let applied = if id == ctx.local.keypair.node_id() {
                let mine = ctx.roles.send(GetRoles).await.map_err(gone)?;
                sorted(&granted) == mine.iter().copied().collect()
            } else {
                peer.is_some_and(|p| p.connected && sorted(&p.reported_roles) == sorted(&granted))
            };
            Ok(replies::encode(&replies::RolesReply {
                node_id: id.to_string(),
                roles: granted,
                applied: Some(applied),
                note: (!applied)
                    .then(|| "pending: recorded, applied when the node connects".to_string()),
                state,
            }))
        }
        Request::MeshRotateSecret { grace_ms } => {
            ctx.mesh
                .send(RotateSecret { grace_ms })
                .await
                .map_err(gone)?
                .map_err(|e| e.to_string())?;
            Ok(replies::encode(&replies::Rotated {
                rotated: true,
                previous_accepted_for_ms: grace_ms,
            }))
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
            Ok(replies::encode(&replies::Joined {
                mesh_id: mesh_id_hex(&id),
                already_member: false,
                members: None,
                configuration_node: None,
            }))
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
            Ok(replies::encode(&replies::KeyIssued {
                key: key.encode(),
                expires_ms: key.expires.0,
                config_addrs: key.config_addrs.clone(),
            }))
        }
        _ => Err("internal: not a mesh command".into()),
    }
}
