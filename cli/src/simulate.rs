//! `lifeboat simulate`: many seeds of the mesh and data-path simulations, on every core.

use super::*;

/// What `simulate` runs for each seed.
#[derive(Clone, Copy)]
pub(crate) struct SimOpts {
    pub(crate) nodes: usize,
    pub(crate) loss_permille: u64,
    pub(crate) partitions: usize,
    pub(crate) trace: bool,
    pub(crate) data_path: bool,
}

/// One seed: the mesh simulation and (unless mesh only) the data path. Returns the lines to
/// print, the data path's simulated milliseconds, and whether an invariant failed.
fn simulate_seed(s: u64, o: SimOpts) -> (Vec<String>, u64, bool) {
    let mut out = Vec::new();
    let r = lifeboat_simulation::run(lifeboat_simulation::SimConfig {
        seed: s,
        nodes: o.nodes,
        loss_permille: o.loss_permille,
        partitions: o.partitions,
        ..Default::default()
    });
    if o.trace {
        out.extend(r.trace.iter().cloned());
    }
    let dp = o.data_path.then(|| {
        lifeboat_simulation::datapath::run(lifeboat_simulation::datapath::DataPathConfig::new(s))
    });
    let sim_ms = dp.as_ref().map_or(0, |d| d.sim_ms);
    if let Some(v) = dp.as_ref().and_then(|d| d.violation.clone()) {
        out.push(format!(
            "seed {s}: FAILED (data path)\n  {v}\n  reproduce with --seed {s}"
        ));
        return (out, sim_ms, true);
    }
    if !r.violations.is_empty() {
        out.push(format!("seed {s}: FAILED"));
        out.extend(r.violations.iter().map(|v| format!("  {v}")));
        out.push(format!("  reproduce with --seed {s}"));
        return (out, sim_ms, true);
    }
    let dp = dp.map_or(String::new(), |d| {
        format!(
            "; data path: {} points, {} failed cycles, {} crashes, {} cut streams, {} spilled segments, {} full resyncs, {} collections, {} packs and {} points deleted",
            d.committed, d.failed, d.ps_crashes, d.partitions, d.spilled_segments, d.full_resyncs, d.gc_passes, d.deleted_packs, d.retention_deleted
        )
    });
    out.push(format!(
        "seed {s}: ok ({} delivered, {} lost, trace {}{dp})",
        r.delivered,
        r.lost,
        &r.trace_hash[..16]
    ));
    (out, sim_ms, false)
}

/// Runs seeds `first..first+runs` on every core, printing each seed's lines in seed order.
pub(crate) fn simulate(first: u64, runs: u64, o: SimOpts) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let started = std::time::Instant::now();
    let next = AtomicU64::new(first);
    let end = first.saturating_add(runs);
    let results = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let printed = std::sync::Mutex::new((first, 0u64, 0u64));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(runs as usize);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= end {
                    return;
                }
                let r = simulate_seed(s, o);
                let mut res = results.lock().unwrap_or_else(|p| p.into_inner());
                res.insert(s, r);
                // Print every finished seed that is next in order.
                let mut p = printed.lock().unwrap_or_else(|p| p.into_inner());
                while let Some((lines, ms, bad)) = res.remove(&p.0) {
                    for l in lines {
                        println!("{l}");
                    }
                    p.0 += 1;
                    p.1 += ms;
                    p.2 += bad as u64;
                }
            });
        }
    });
    let (_, sim_ms, failed) = *printed.lock().unwrap_or_else(|p| p.into_inner());
    let secs = started.elapsed().as_secs_f64();
    if o.data_path {
        println!(
            "{runs} runs in {secs:.1} s on {workers} threads; data path: {:.1} simulated hours, {:.0}x real time",
            sim_ms as f64 / 3.6e6,
            sim_ms as f64 / 1000.0 / secs.max(1e-9)
        );
    }
    if failed > 0 {
        bail!("{failed} of {runs} simulation runs violated invariants");
    }
    Ok(())
}
