//! Network input to the actors: every message from an authenticated peer passes the
//! authorization rules ([`authz::authorize`]) and is then dispatched; commands a member forwards
//! are narrowed to its own machine.

use super::*;

fn err(m: impl Into<String>) -> Option<Message> {
    Some(Message::Error { message: m.into() })
}

/// What the authorization rules need to know about `from` and this node.
pub(super) async fn facts(
    from: &PeerInfo,
    roles: &Addr<RolesActor>,
    mesh: &Addr<MeshActor>,
) -> Option<(authz::Facts, MembersChanged)> {
    let m = mesh.send(GetMesh).await.ok()?;
    let f = authz::Facts {
        registration: matches!(from.admitted, Admitted::Registration(_)),
        authority: m.authorities.contains(&from.key),
        sender_roles: m.granted_roles(from.key.node_id()),
        local_roles: roles.send(GetRoles).await.ok()?,
    };
    Some((f, m))
}

/// Routes one message from an authenticated peer to the actors; returns the reply, if any.
/// Every message passes [`authz::authorize`] first: checked against the sender's authenticated
/// id and the roles the authority granted it, never its name or its own claims.
pub async fn route(
    from: PeerInfo,
    msg: Message,
    peers: Option<Addr<PeersActor>>,
    roles: Addr<RolesActor>,
    mesh: Addr<MeshActor>,
    repl: Option<Arc<Repl>>,
) -> Option<Message> {
    let from_id = from.key.node_id();
    let (f, members) = facts(&from, &roles, &mesh).await?;
    if let Err(refusal) = authz::authorize(&msg, &f) {
        if refusal.is_suspicious() {
            tracing::warn!(peer = %from_id, message = msg.kind(), cause = %refusal, "refused a message");
        }
        // One-way messages get no answer; requests get the reason.
        return match msg {
            Message::PointNotice(_)
            | Message::Report(_)
            | Message::PsHealth(_)
            | Message::Heartbeat { .. } => None,
            Message::MembershipUpdate { .. } => None,
            _ => err(refusal.to_string()),
        };
    }
    match msg {
        Message::Register { name, now, addrs } => {
            let Admitted::Registration(key_id) = from.admitted else {
                return err("registration needs a registration key");
            };
            if lifeboat_config::validate_name(&name).is_err() || addrs.len() > 16 {
                return err("invalid registration request");
            }
            match mesh
                .send(Register {
                    key_id,
                    joiner: from.key,
                    name,
                    addrs,
                    joiner_now: now,
                })
                .await
            {
                Ok(Ok(grant)) => Some(Message::Registered(grant)),
                Ok(Err(refusal)) => Some(Message::RegisterRefused(refusal)),
                Err(_) => err("configuration node is shutting down"),
            }
        }
        Message::Heartbeat {
            name,
            roles: r,
            membership_version,
            ..
        } => {
            if let Some(p) = peers {
                let _ = p.try_send(HeartbeatMsg {
                    from: from.key,
                    name,
                    roles: r,
                    membership_version,
                });
            }
            None
        }
        Message::MembershipUpdate {
            version,
            members,
            secret,
            previous_until,
        } => {
            let _ = mesh
                .send(MembershipIn {
                    from: from.key,
                    version,
                    members,
                    secret: secret.map(|s| Secret(s.0)),
                    previous_until,
                })
                .await;
            None
        }
        Message::MembershipRequest => mesh.send(MembershipMessage).await.ok().flatten(),
        Message::Bulk(b) => Some(Message::Bulk(b[..b.len().min(8)].to_vec())),
        m @ (Message::VaultGrant(_)
        | Message::Protect(_)
        | Message::Unprotect { .. }
        | Message::CutPoint { .. }
        | Message::ShutdownSource { .. }
        | Message::Failback(_)
        | Message::Land(_)
        | Message::LandProgress { .. }
        | Message::Unland { .. }
        | Message::AdoptPoint { .. }
        | Message::PointNotice(_)
        | Message::Admin { .. }
        | Message::Report(_)
        | Message::PsHealth(_)) => route_replication(from_id, &members, m, repl?).await,
        _ => err("unexpected message"),
    }
}

/// The replication messages (already authorized): vault grants and protections to this node,
/// point notices, forwarded commands and reports to the configuration node.
async fn route_replication(
    from_id: NodeId,
    members: &MembersChanged,
    msg: Message,
    repl: Arc<Repl>,
) -> Option<Message> {
    match msg {
        Message::VaultGrant(g) => adopt_grant(&repl, g),
        Message::Protect(spec) => {
            if spec.machine != repl.local {
                return err("this protection is for another machine");
            }
            match repl
                .mobility
                .send(crate::replication::mobility::Protect(spec))
                .await
            {
                Ok(Ok(())) => Some(Message::Accept),
                Ok(Err(e)) => err(e),
                Err(_) => err("this node is shutting down"),
            }
        }
        Message::Unprotect { machine } => {
            if machine != repl.local {
                return err("this protection is for another machine");
            }
            let _ = repl
                .mobility
                .send(crate::replication::mobility::Unprotect)
                .await;
            Some(Message::Accept)
        }
        Message::CutPoint { machine } | Message::ShutdownSource { machine }
            if machine != repl.local =>
        {
            err("this request is for another machine")
        }
        Message::Failback(job) if job.machine != repl.local => {
            err("this failback is for another machine")
        }
        Message::Failback(job) => match crate::replication::mobility::failback(&repl, job).await {
            Ok(d) => Some(Message::FailedBack(d)),
            Err(e) => err(e),
        },
        Message::Land(job) => {
            // The bytes restored go to the configuration node each second while it runs.
            let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let ticker = {
                let (repl, done, id) = (repl.clone(), done.clone(), job.job.clone());
                tokio::spawn(async move {
                    let mut sent = 0;
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        let d = done.load(std::sync::atomic::Ordering::Relaxed);
                        if d != sent {
                            sent = d;
                            let m = Message::LandProgress {
                                job: id.clone(),
                                done_bytes: d,
                            };
                            let _ = lifeboat_actors::seams::Transport::send(&repl.net, from_id, m);
                        }
                    }
                })
            };
            let out = crate::replication::landing::land(&repl, job, Some(done)).await;
            ticker.abort();
            match out {
                Ok(l) => Some(Message::Landed(l)),
                Err(e) => err(e),
            }
        }
        Message::LandProgress { job, done_bytes } => {
            crate::replication::config_side::land_progress(&repl, from_id, &job, done_bytes);
            None
        }
        Message::Unland { job } => match crate::replication::landing::unland(&repl, &job).await {
            Ok(_) => Some(Message::Accept),
            Err(e) => err(e),
        },
        Message::AdoptPoint { job, point, disks } => {
            if protection_path_exists(&repl) {
                return err("this node protects disks already; one protection per node");
            }
            match crate::replication::landing::adopt(&repl, &job, &point, &disks) {
                Ok(()) => Some(Message::Accept),
                Err(e) => err(e),
            }
        }
        Message::CutPoint { .. } => {
            match repl
                .mobility
                .send(crate::replication::mobility::CutPoint)
                .await
            {
                Ok(Ok(point)) => Some(Message::PointCut { point }),
                Ok(Err(e)) => err(&e),
                Err(_) => err("this node is shutting down"),
            }
        }
        Message::ShutdownSource { .. } => {
            match repl
                .mobility
                .send(crate::replication::mobility::RunShutdownHook)
                .await
            {
                Ok(Ok(())) => Some(Message::Accept),
                Ok(Err(e)) => err(&e),
                Err(_) => err("this node is shutting down"),
            }
        }
        Message::PointNotice(s) => {
            // Verified against the vault (the source of truth), off this stream's handler, a
            // few at a time: a flood of notices is dropped, not queued (the catalog takes the
            // next genuine notice; the vault stays the source of truth either way).
            let Ok(slot) = repl.cfg.notice_slots.clone().try_acquire_owned() else {
                tracing::debug!(peer = %from_id, "point notice dropped: verifications busy");
                return None;
            };
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) =
                    crate::replication::config_side::point_notice(&repl, from_id, s).await
                {
                    tracing::warn!(peer = %from_id, cause = %e, "refused a point notice");
                }
            });
            None
        }
        Message::Admin { request } => admin(from_id, members, &request, repl).await,
        Message::Report(r) => {
            crate::replication::config_side::report(&repl, from_id, r);
            None
        }
        Message::PsHealth(h) => {
            crate::replication::config_side::ps_report(&repl, from_id, h);
            None
        }
        _ => err("unexpected message"),
    }
}

/// A process server adopts the vault the configuration node granted it.
fn adopt_grant(repl: &Repl, g: lifeboat_protocol::message::VaultGrant) -> Option<Message> {
    let cfg = crate::vault::VaultConfig::from_grant(g);
    if repl.vault_cfg.lock().ok().and_then(|c| c.clone()) == Some(cfg.clone()) {
        return Some(Message::Accept);
    }
    match repl.set_vault_config(cfg) {
        Ok(()) => {
            tracing::info!("vault granted by the configuration node");
            Some(Message::Accept)
        }
        Err(e) => err(e),
    }
}

/// A replication command a member forwarded to the configuration node.
async fn admin(
    from_id: NodeId,
    members: &MembersChanged,
    request: &str,
    repl: Arc<Repl>,
) -> Option<Message> {
    let req: Request = match serde_json::from_str(request) {
        Ok(r) => r,
        Err(e) => return err(format!("malformed admin request: {e}")),
    };
    if !forwardable(&req) {
        return err("this command must be run on the configuration node itself");
    }
    // Bound to the authenticated sender: a member may only ask about or change its own
    // machine (names are display; they resolve to ids first, and are unique).
    let req = match own_machine_only(req, from_id, members) {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(peer = %from_id, cause = %why, "refused a forwarded command");
            return Some(Message::AdminReply {
                ok: false,
                body: why,
            });
        }
    };
    tracing::info!(from = %from_id, "replication command forwarded by a member");
    Some(match replication_admin(repl, req).await {
        Ok(v) => Message::AdminReply {
            ok: true,
            body: v.to_string(),
        },
        Err(e) => Message::AdminReply { ok: false, body: e },
    })
}

/// Restricts a command forwarded by member `from` to its own machine: `protect`, `unprotect`
/// and `points` must name it (by id or its unique name), `status` is narrowed to it. Disks
/// and hooks are thus only ever set for a machine by itself or on the configuration node.
fn own_machine_only(req: Request, from: NodeId, mesh: &MembersChanged) -> Result<Request, String> {
    let is_me = |machine: &str| authz::is_own_machine(from, machine, &mesh.members);
    match req {
        Request::Protect { ref machine, .. }
        | Request::Unprotect { ref machine }
        | Request::Points { ref machine }
            if !is_me(machine) =>
        {
            Err(format!(
                "a member may only protect, unprotect or list the points of its own machine, not {machine:?}; run the command on the configuration node"
            ))
        }
        Request::ReplStatus { machine: Some(m) } if !is_me(&m) => Err(format!(
            "a member may only see the status of its own machine, not {m:?}; run the command on the configuration node"
        )),
        Request::ReplStatus { .. } => Ok(Request::ReplStatus {
            machine: Some(from.to_string()),
        }),
        other => Ok(other),
    }
}

/// This node's mobility role protects something.
fn protection_path_exists(repl: &Repl) -> bool {
    repl.dir.root.join("protection.json").exists()
}
