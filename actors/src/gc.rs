//! Garbage collection's decisions, sans-IO: what to do with each pack, chunk, lease and
//! tombstone of a vault listing. The vault client (`node::vault`) gathers the facts (what the
//! points reference, object ages, condemnations, rescues, leases), asks these functions, and
//! performs the answer with the store's operations in the documented order (`docs/VAULT.md`).
//!
//! The protocol that makes collection safe against concurrent writers:
//! 1. a pack whose blocks no point needs (or that is mostly dead) is first *condemned* (marked),
//!    never deleted in the same pass; its live blocks, if any, are copied to a new pack first;
//! 2. a writer that commits a point naming a pack that may be condemned *rescues* it first
//!    (`gc/rescue/<pack>/<session>`), and checks for a tombstone;
//! 3. a later pass deletes a condemned pack only when it is still unreferenced, unrescued and
//!    older than the grace period, and only after writing its tombstone and checking the rescues
//!    once more.

/// A lease older than this belongs to a crashed session and no longer protects its pack.
pub const LEASE_EXPIRES_MS: u64 = 86_400_000;
/// Tombstones of deleted packs are kept this long (far longer than any upload session).
pub const TOMBSTONE_KEEP_MS: u64 = 7 * 86_400_000;

/// What a pass knows about one pack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackFacts {
    /// Age of the pack object, ms.
    pub age_ms: u64,
    /// Its size, bytes.
    pub size_bytes: u64,
    /// Entries whose block a point references and no other (uncondemned) pack holds.
    pub live_entries: usize,
    /// Entries no point needs from this pack.
    pub dead_entries: usize,
    /// Bytes of those entries.
    pub dead_bytes: u64,
    /// Age of its condemnation, if condemned.
    pub condemned_age_ms: Option<u64>,
    /// A writer rescued it (`gc/rescue/<pack>/...` exists).
    pub rescued: bool,
    /// Age of an upload lease on it, if leased.
    pub lease_age_ms: Option<u64>,
}

/// What to do with a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackAction {
    /// Nothing, this pass.
    Keep,
    /// Lift its condemnation: a point needs it after all, or a writer rescued it.
    Uncondemn,
    /// Delete it: write its tombstone, check the rescues again (a rescue found then means
    /// [`PackAction::Uncondemn`]), then delete index, pack and mark.
    Delete,
    /// Condemn it, after copying its live entries into a new pack if `repack`.
    Condemn {
        /// Copy the live entries first.
        repack: bool,
    },
}

/// Decides one pack's fate in a pass with grace period `grace_ms`.
pub fn decide_pack(f: &PackFacts, grace_ms: u64) -> PackAction {
    if let Some(condemned_age) = f.condemned_age_ms {
        let ignore = crate::plant::active(crate::plant::Plant::GcIgnoresRescue);
        if (f.live_entries > 0 || f.rescued) && !ignore {
            return PackAction::Uncondemn;
        }
        if condemned_age < grace_ms {
            return PackAction::Keep;
        }
        return PackAction::Delete;
    }
    if f.age_ms < grace_ms || f.dead_entries == 0 {
        return PackAction::Keep;
    }
    // Leased by a session still running (its point may not be committed yet).
    if f.lease_age_ms.is_some_and(|a| a < LEASE_EXPIRES_MS) {
        return PackAction::Keep;
    }
    if f.live_entries > 0 && f.dead_bytes * 2 < f.size_bytes {
        // Mostly live: copying the live part is not worth it yet.
        return PackAction::Keep;
    }
    PackAction::Condemn {
        repack: f.live_entries > 0,
    }
}

/// True if a chunk object may be deleted: no point references it and it is past the grace
/// period (a younger one may belong to a point being committed).
pub fn chunk_is_garbage(referenced: bool, age_ms: u64, grace_ms: u64) -> bool {
    !referenced && age_ms >= grace_ms
}

/// True if an upload lease belongs to a crashed session and may be removed.
pub fn lease_expired(age_ms: u64) -> bool {
    age_ms >= LEASE_EXPIRES_MS
}

/// True if a deletion tombstone may be removed.
pub fn tombstone_expired(age_ms: u64) -> bool {
    age_ms > TOMBSTONE_KEEP_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 3_600_000;

    fn dead_pack() -> PackFacts {
        PackFacts {
            age_ms: 2 * GRACE,
            size_bytes: 8 << 20,
            live_entries: 0,
            dead_entries: 100,
            dead_bytes: 8 << 20,
            ..PackFacts::default()
        }
    }

    #[test]
    fn a_dead_pack_is_condemned_first_and_deleted_only_a_grace_period_later() {
        let mut p = dead_pack();
        assert_eq!(
            decide_pack(&p, GRACE),
            PackAction::Condemn { repack: false }
        );
        p.condemned_age_ms = Some(GRACE - 1);
        assert_eq!(decide_pack(&p, GRACE), PackAction::Keep);
        p.condemned_age_ms = Some(GRACE);
        assert_eq!(decide_pack(&p, GRACE), PackAction::Delete);
    }

    #[test]
    fn a_rescue_or_a_new_reference_lifts_a_condemnation() {
        let mut p = dead_pack();
        p.condemned_age_ms = Some(10 * GRACE);
        p.rescued = true;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Uncondemn);
        p.rescued = false;
        p.live_entries = 1;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Uncondemn);
    }

    #[test]
    fn young_leased_or_fully_live_packs_are_kept() {
        let mut p = dead_pack();
        p.age_ms = GRACE - 1;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Keep, "young");
        let mut p = dead_pack();
        p.lease_age_ms = Some(1_000);
        assert_eq!(decide_pack(&p, GRACE), PackAction::Keep, "leased");
        p.lease_age_ms = Some(LEASE_EXPIRES_MS);
        assert_eq!(
            decide_pack(&p, GRACE),
            PackAction::Condemn { repack: false },
            "a crashed session's lease protects nothing"
        );
        let mut p = dead_pack();
        p.dead_entries = 0;
        p.dead_bytes = 0;
        p.live_entries = 100;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Keep, "fully live");
    }

    #[test]
    fn a_mostly_dead_pack_with_live_blocks_is_repacked_before_condemnation() {
        let mut p = dead_pack();
        p.live_entries = 10;
        p.dead_bytes = p.size_bytes / 2;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Condemn { repack: true });
        p.dead_bytes = p.size_bytes / 2 - 1;
        assert_eq!(decide_pack(&p, GRACE), PackAction::Keep, "mostly live");
    }

    #[test]
    fn chunks_leases_and_tombstones_age_out() {
        assert!(!chunk_is_garbage(true, 10 * GRACE, GRACE));
        assert!(!chunk_is_garbage(false, GRACE - 1, GRACE));
        assert!(chunk_is_garbage(false, GRACE, GRACE));
        assert!(!lease_expired(LEASE_EXPIRES_MS - 1));
        assert!(lease_expired(LEASE_EXPIRES_MS));
        assert!(!tombstone_expired(TOMBSTONE_KEEP_MS));
        assert!(tombstone_expired(TOMBSTONE_KEEP_MS + 1));
    }
}
