use super::*;

#[test]
fn the_data_path_keeps_every_invariant_under_faults() {
    let mut totals = DataPathReport::default();
    for seed in 1..=40 {
        let r = run(DataPathConfig::new(seed));
        assert!(r.violation.is_none(), "seed {seed}: {r:?}");
        totals.committed += r.committed;
        totals.failed += r.failed;
        totals.ps_crashes += r.ps_crashes;
        totals.partitions += r.partitions;
        totals.gc_passes += r.gc_passes;
        totals.deleted_packs += r.deleted_packs;
        totals.retention_deleted += r.retention_deleted;
        totals.full_resyncs += r.full_resyncs;
        totals.mobility_restarts += r.mobility_restarts;
        totals.spilled_segments += r.spilled_segments;
    }
    // The faults happened and the machinery ran: this checked something.
    assert!(totals.committed > 40 * 20, "{totals:?}");
    assert!(totals.failed > 40, "{totals:?}");
    assert!(totals.ps_crashes > 10, "{totals:?}");
    assert!(totals.mobility_restarts > 5, "{totals:?}");
    assert!(totals.spilled_segments > 40, "{totals:?}");
    assert!(totals.partitions > 10, "{totals:?}");
    assert!(totals.gc_passes > 40 * 20, "{totals:?}");
    assert!(totals.deleted_packs > 0, "{totals:?}");
    assert!(totals.retention_deleted > 40 * 5, "{totals:?}");
    assert!(
        totals.full_resyncs > 0,
        "a lost base was rehearsed: {totals:?}"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    assert_eq!(run(DataPathConfig::new(42)), run(DataPathConfig::new(42)));
}

/// The first seed (of `seeds` from 1) on which planted mistake `p` violates an invariant.
#[cfg(feature = "plants")]
fn caught(p: Plant, seeds: u64) -> String {
    for seed in 1..=seeds {
        let r = run(DataPathConfig {
            plant: p,
            ..DataPathConfig::new(seed)
        });
        if let Some(v) = r.violation {
            eprintln!("{p:?} caught at seed {seed}: {v}");
            return v;
        }
    }
    panic!("{p:?} not caught within {seeds} seeds")
}

#[cfg(feature = "plants")]
#[test]
fn a_change_log_that_moves_before_the_commit_is_caught() {
    let v = caught(Plant::AdvanceBeforeCommit, 20);
    assert!(v.contains("full copy although no base left"), "{v}");
}

#[cfg(feature = "plants")]
#[test]
fn collection_that_ignores_rescues_and_live_references_is_caught() {
    let v = caught(Plant::GcIgnoresRescue, 100);
    assert!(
        v.contains("cannot be read") || v.contains("was deleted"),
        "{v}"
    );
}

#[cfg(feature = "plants")]
#[test]
fn dedup_into_condemned_packs_is_caught() {
    let v = caught(Plant::DedupCondemned, 100);
    assert!(
        v.contains("cannot be read") || v.contains("was deleted"),
        "{v}"
    );
}
