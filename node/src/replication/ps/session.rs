//! The process-server session: validation, the spool, the processor, the manifest and the
//! commit in its order (chunk lease, barrier, GC rescue, create-if-absent), then the summary.

use super::*;

/// A task aborted when its handle is dropped: a session that is abandoned (its stream reset,
/// the daemon stopping, a simulated crash) takes its processor and uploads with it.
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Waits for the task.
    pub(super) async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns one replication stream (`src`, after its `DeltaBegin(header)` from mobility node
/// `from`) into a committed recovery point in `vault`: the whole process-server session, shared
/// by the daemon (`serve`, over QUIC) and the simulation (in memory). `local` is this process
/// server. Dropping the future abandons the session and every task it started.
pub async fn run_session(
    ps: &Arc<PsState>,
    vault: &Arc<Vault>,
    local: NodeId,
    from: NodeId,
    header: DeltaHeader,
    src: &mut dyn MessageSource,
) -> Result<PointSummary, PointFailure> {
    let lease = lease_name(&header);
    let out = session(ps, vault, local, from, header, src).await;
    if let Some(l) = lease {
        vault.end_lease(&l).await;
    }
    out.map_err(PointFailure::from)
}

/// The name of a session's chunk lease: its machine and session id, so a mobility node (only
/// ever sending for its own machine) can neither take nor end another machine's lease. `None`
/// for a session id that is not 16 bytes of hex (such a header is refused anyway).
fn lease_name(h: &DeltaHeader) -> Option<String> {
    vault::from_hex::<16>(&h.session).map(|_| format!("{}-{}", h.machine, h.session))
}

async fn session(
    ps: &Arc<PsState>,
    vault: &Arc<Vault>,
    local: NodeId,
    from: NodeId,
    header: DeltaHeader,
    src: &mut dyn MessageSource,
) -> Result<PointSummary, SessionError> {
    validate(&header, from).map_err(SessionError::Invalid)?;
    // Current garbage-collection state: dedup must not pick blocks GC has condemned.
    if let Err(e) = vault.refresh_condemned().await {
        tracing::debug!(cause = %e, "could not refresh condemned packs");
    }
    let (base, out) = receive_and_process(ps, vault, from, &header, src).await?;
    let Processed {
        ids,
        stats,
        packs,
        touched,
    } = out;
    // Make the packs durable while the manifest is written (the commit's barrier then only
    // waits for what is left: the chunks). A failure here is retried by that barrier.
    let packs_synced = {
        let v = vault.clone();
        AbortOnDrop(tokio::spawn(async move { v.barrier().await }))
    };
    let disks = write_manifest(ps, vault, &header, &base, &ids, &touched).await?;
    let rec = PointRecord {
        format: VAULT_FORMAT,
        id: vault::hex(&vault.fresh_id()),
        machine: header.machine,
        machine_name: header.machine_name.clone(),
        captured: header.captured,
        committed: crate::seams::now(),
        consistency: header.consistency,
        parent: header.base.clone(),
        disks,
        stats,
    };
    let _ = packs_synced.join().await;
    commit(ps, vault, &header.session, &rec, &packs).await?;
    tracing::info!(machine = %rec.machine_name, point = %rec.id, consistency = %rec.consistency,
        changed = stats.changed_blocks, new = stats.new_blocks, dedup = stats.dedup_blocks, "recovery point committed");
    Ok(PointSummary {
        id: rec.id,
        machine: rec.machine,
        captured: rec.captured,
        committed: rec.committed,
        consistency: rec.consistency,
        stats: rec.stats,
        process_server: local,
    })
}

/// Receives the stream into the spool while the processor (on its own task) resolves the base
/// and turns segments into packs: a vault outage fills the spool instead of stalling the
/// stream. Returns the base disks and what the processor made of the delta.
async fn receive_and_process(
    ps: &Arc<PsState>,
    vault: &Arc<Vault>,
    from: NodeId,
    header: &DeltaHeader,
    src: &mut dyn MessageSource,
) -> Result<(Vec<Option<DiskRecord>>, Processed), SessionError> {
    let (seg_tx, seg_rx) = mpsc::channel::<Segment>(ps.spool_segments);
    let processor = {
        let (ps, vault, header) = (ps.clone(), vault.clone(), header.clone());
        AbortOnDrop(tokio::spawn(async move {
            let (base, ids) = resolve_base(&ps, &vault, &header, from).await?;
            let out = process(ps.clone(), vault.clone(), header.clone(), ids, seg_rx).await?;
            Ok::<_, SessionError>((base, out))
        }))
    };
    let t0 = std::time::Instant::now();
    let received = receive(ps, header, src, seg_tx).await;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "stream received");
    let processed = processor
        .join()
        .await
        .map_err(|e| format!("processor failed: {e}"))?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "segments processed");
    match (received, processed) {
        (_, Err(e)) => Err(e),
        (Err(e), _) => Err(e.into()),
        (Ok((sent, _)), Ok((_, out))) if out.stats.changed_blocks != sent => {
            Err(SessionError::Failed(format!(
                "stream announced {sent} blocks but carried {}",
                out.stats.changed_blocks
            )))
        }
        (Ok((_, freeze_ms)), Ok(mut done)) => {
            done.1.stats.freeze_ms = freeze_ms;
            Ok(done)
        }
    }
}

/// The commit, in its order: rescue every condemned pack the point depends on (failing if
/// garbage collection got there first), then the point itself (barrier, create-if-absent,
/// barrier). (No per-pack lease is ended here: none is taken. A session's own packs are
/// protected by the grace period and, past it, by the rescue, as the simulation checks.)
async fn commit(
    ps: &PsState,
    vault: &Vault,
    session: &str,
    rec: &PointRecord,
    packs: &BTreeSet<String>,
) -> Result<(), SessionError> {
    let raced = retry_forever(ps, vault, "gc rescue", || async {
        match vault.rescue(session, packs).await {
            Ok(()) => Ok(None),
            Err(crate::vault::VaultError::Exists(m)) => Ok(Some(m)),
            Err(e) => Err(e),
        }
    })
    .await?;
    if let Some(m) = raced {
        return Err(SessionError::Failed(m));
    }
    retry_forever(ps, vault, "commit point", || vault.commit_point(rec)).await?;
    ps.points.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Writes the new point's manifest chunks (sharing the base's unchanged ones) and returns its
/// disks. Every chunk it names is leased before the new ones are stored (see
/// [`Vault::lease`]).
async fn write_manifest(
    ps: &PsState,
    vault: &Vault,
    header: &DeltaHeader,
    base: &[Option<DiskRecord>],
    ids: &[Vec<BlockId>],
    touched: &[std::collections::BTreeSet<usize>],
) -> Result<Vec<DiskRecord>, SessionError> {
    // Manifest chunks: unchanged chunks are the base's, shared (the plan is sans-IO, shared
    // with the simulation).
    let mut disks = Vec::new();
    let mut new_chunks = Vec::new();
    for (i, d) in header.disks.iter().enumerate() {
        let plan = datapath::plan_chunks(
            base[i].as_ref().map(|b| datapath::BaseDisk {
                size_bytes: b.size_bytes,
                block_size: b.block_size,
                chunks: &b.chunks,
            }),
            d.size_bytes,
            d.block_size,
            ids[i].len(),
            &touched[i],
        );
        let mut chunks = Vec::with_capacity(plan.len());
        for c in plan {
            chunks.push(match c {
                datapath::ChunkPlan::Shared(id) => id,
                datapath::ChunkPlan::New { start, end } => {
                    let (id, sealed) = vault.seal_chunk(&ids[i][start..end]);
                    new_chunks.push((id, sealed));
                    id
                }
            });
        }
        let merkle_root = vault.key().merkle_root(d.size_bytes, d.block_size, &chunks);
        disks.push(DiskRecord {
            name: d.name.clone(),
            size_bytes: d.size_bytes,
            block_size: d.block_size,
            chunks,
            merkle_root,
        });
    }
    // Lease every chunk the point names before the new ones exist: a collection pass that
    // lists leases after this keeps them; one that listed leases before finds new chunks
    // younger than its grace period, and the base's chunks under the base lease.
    let all: Vec<BlockId> = disks
        .iter()
        .flat_map(|d| d.chunks.iter().copied())
        .collect();
    let lease = lease_name(header).ok_or("invalid session id")?;
    retry_forever(ps, vault, "lease chunks", || vault.lease(&lease, &all)).await?;
    for (id, sealed) in new_chunks {
        retry_forever(ps, vault, "put chunk", || {
            vault.put_sealed_chunk(&id, sealed.clone())
        })
        .await?;
    }
    Ok(disks)
}

/// The base point's manifests and the starting id vectors of this delta.
async fn resolve_base(
    ps: &PsState,
    vault: &Vault,
    header: &DeltaHeader,
    from: NodeId,
) -> Result<(Vec<Option<DiskRecord>>, Vec<Vec<BlockId>>), SessionError> {
    // Base manifests (the point this delta is relative to).
    let mut base: Vec<Option<DiskRecord>> = vec![None; header.disks.len()];
    let mut ids: Vec<Vec<BlockId>> = Vec::new();
    let base_rec = match &header.base {
        None => None,
        Some(b) => {
            // Not waited out like the session's other vault calls: a failure here fails the
            // session at once (transient: the mobility node retries with backoff, with a
            // fresh view), so a mobility node is never held behind a session of an old view
            // for the length of an outage.
            let pts = vault
                .list_points(Some(&from))
                .await
                .map_err(|e| e.to_string())?;
            let p = pts.into_iter().find(|p| &p.id == b).ok_or_else(|| {
                SessionError::BaseUnknown(format!("point {b} is not in the vault"))
            })?;
            // Lease the base's chunks, then check the base is still there: from then on
            // garbage collection keeps them (and their blocks) even if retention deletes it.
            let chunks: Vec<BlockId> = p
                .disks
                .iter()
                .flat_map(|d| d.chunks.iter().copied())
                .collect();
            let lease = lease_name(header).ok_or("invalid session id")?;
            retry_forever(ps, vault, "lease base chunks", || {
                vault.lease(&lease, &chunks)
            })
            .await?;
            let k = p.object_key();
            if !retry_forever(ps, vault, "check base", || vault.has_object(&k)).await? {
                return Err(SessionError::BaseUnknown(format!(
                    "point {b} left the vault during the session"
                )));
            }
            Some(p)
        }
    };
    for (i, d) in header.disks.iter().enumerate() {
        let n = d.size_bytes.div_ceil(d.block_size as u64) as usize;
        let mut v = vec![BlockId::ZERO; n];
        if let Some(b) = base_rec
            .as_ref()
            .and_then(|p| p.disks.iter().find(|x| x.name == d.name))
        {
            if b.block_size == d.block_size {
                let old = retry_forever(ps, vault, "read base manifest", || vault.disk_ids(b))
                    .await
                    .map_err(|e| SessionError::BaseUnknown(format!("base point damaged: {e}")))?;
                for (j, id) in old.into_iter().take(n).enumerate() {
                    v[j] = id;
                }
                base[i] = Some(b.clone());
            } else if header.base.is_some() {
                return Err(SessionError::BaseUnknown("the block size changed".into()));
            }
        } else if header.base.is_some() {
            return Err(SessionError::BaseUnknown(format!(
                "disk {} is not in the base point",
                d.name
            )));
        }
        ids.push(v);
    }

    Ok((base, ids))
}

/// Retries a vault operation until it succeeds: a vault outage stalls the session (and, through
/// the full spool, the mobility node), it never loses or drops data. Bounded per attempt by the
/// store's own timeouts; the overall wait ends when the stream's peer gives up.
pub(super) async fn retry_forever<T, F, Fut>(
    ps: &PsState,
    vault: &Vault,
    what: &str,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::vault::VaultError>>,
{
    let mut backoff = lifeboat_actors::backoff::Backoff::new(250, 15_000);
    loop {
        match vault.retry(what, 3, &mut f).await {
            Ok(v) => return Ok(v),
            // Damage or a missing object is not an outage: waiting will not mend it.
            Err(e) if !e.is_transient() => return Err(format!("{what}: {e}")),
            Err(e) => {
                ps.upload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(op = what, cause = %e, "vault unavailable; spool holds the data, retrying");
                let wait = backoff.fail(vault.jitter());
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}
