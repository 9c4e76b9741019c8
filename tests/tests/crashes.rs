//! `kill -9` in the middle of every kind of job, of the configuration node and of the node
//! the job works on: after a restart the job has ended failed with a reason (never left
//! running), running it again (or undoing it) works, and the machine keeps a usable recovery
//! point throughout. The daemons stop at named failpoints (`LIFEBOAT_FAILPOINTS`) so that the
//! kill lands where it is meant to, on a loaded machine too.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use serde_json::Value;
use std::path::Path;

/// Restarts `n` with failpoint `fp` armed.
fn arm(n: &mut Node, fp: &str) {
    n.stop();
    n.start_env(&[("LIFEBOAT_FAILPOINTS".into(), fp.into())]);
}

/// Waits for `n` to stop at failpoint `fp`, then kills it.
fn kill_at(n: &mut Node, fp: &str) {
    wait_until(&format!("{} to reach failpoint {fp}", n.name), WAIT, || {
        n.log().contains(&format!("failpoint reached: {fp}"))
    });
    n.kill9();
}

/// Waits until `viewer` has a connection to each of `ids`.
fn sees_all(viewer: &Node, ids: &[String]) {
    for id in ids {
        wait_until("the mesh to reconnect", WAIT, || sees_reachable(viewer, id));
    }
}

fn jobs(n: &Node) -> Vec<Value> {
    n.json(&["jobs"]).as_array().cloned().unwrap_or_default()
}

/// The configuration node, restarted after a crash in a job of `kind`: that job ended failed,
/// naming the interruption, and no job is left running.
fn interrupted(cfg: &Node, kind: &str) -> Value {
    let all = jobs(cfg);
    assert!(all.iter().all(|j| j["state"] != "running"), "{all:?}");
    let j = all
        .iter()
        .find(|j| j["kind"] == kind && j["state"] == "failed")
        .unwrap_or_else(|| panic!("no failed {kind} job in {all:?}"))
        .clone();
    let e = j["error"].as_str().unwrap();
    assert!(e.contains("interrupted"), "{j}");
    j
}

/// The machine's newest point restores bit-exact to `want`.
fn usable_point(cfg: &Node, machine: &str, want: &[u8], to: &Path) {
    assert!(
        restore(cfg, machine, "latest-processed", to) == want,
        "{machine}'s newest point does not restore to its disk"
    );
}

#[test]
fn a_crash_of_the_configuration_node_in_any_job_ends_it_failed_and_it_runs_again() {
    let (mut nodes, work, disk, c0) = protected_web_and(&[("dr", "mobility")]);
    let peers = [nodes[2].id(), nodes[3].id()];
    let drills = nodes[3].state_dir().join("drills");
    let crash = |nodes: &mut Vec<Node>, fp: &str, args: &[&str]| {
        arm(&mut nodes[0], fp);
        sees_all(&nodes[0], &peers);
        let run = background(&nodes[0], args);
        kill_at(&mut nodes[0], fp);
        assert!(!run.join().unwrap().status.success());
        nodes[0].start();
        sees_all(&nodes[0], &peers);
    };

    // Restore.
    let r = work.path().join("r");
    crash(
        &mut nodes,
        "job/restore/restoring",
        &["restore", "web", "--to", r.to_str().unwrap()],
    );
    interrupted(&nodes[0], "restore");
    usable_point(&nodes[0], "web", &c0, &r);

    // Drill, then its cleanup.
    crash(
        &mut nodes,
        "job/drill/restoring and verifying on dr",
        &["drill", "web", "--on", "dr"],
    );
    let j = interrupted(&nodes[0], "drill");
    assert!(
        j["error"].as_str().unwrap().contains("drill cleanup web"),
        "{j}"
    );
    nodes[0].ok(&["drill", "cleanup", "web"]);
    let v = nodes[0].json(&["drill", "web", "--on", "dr"]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(std::fs::read(&image).unwrap() == c0);
    crash(
        &mut nodes,
        "job/drill-cleanup/",
        &["drill", "cleanup", "web"],
    );
    interrupted(&nodes[0], "drill-cleanup");
    assert!(image.exists(), "the failpoint is before the removal");
    nodes[0].ok(&["drill", "cleanup", "web"]);
    assert!(!image.exists());
    assert_eq!(std::fs::read_dir(&drills).unwrap().count(), 0);

    // Garbage collection.
    crash(&mut nodes, "job/gc/", &["vault", "gc"]);
    interrupted(&nodes[0], "gc");
    nodes[0].ok(&["vault", "gc"]);
    usable_point(&nodes[0], "web", &c0, &r);

    // Failover, cancelled through a crash: the cancel runs again.
    nodes[0].ok(&["failover", "web", "--on", "dr"]);
    crash(
        &mut nodes,
        "job/failover-cancel/removing",
        &["failover", "cancel", "web"],
    );
    interrupted(&nodes[0], "failover-cancel");
    nodes[0].ok(&["failover", "cancel", "web"]);
    let t = now_ms();
    point_after(&nodes[0], "web", t);

    // Failover again, committed through a crash while points are discarded.
    let v = nodes[0].json(&["failover", "web", "--on", "dr"]);
    let (fo_point, image) = (
        v["point"].as_str().unwrap().to_string(),
        Path::new(v["images"][0].as_str().unwrap()).to_path_buf(),
    );
    assert!(std::fs::read(&image).unwrap() == c0);
    crash(
        &mut nodes,
        "job/failover-commit/deleting",
        &["failover", "commit", "web", "--discard-points"],
    );
    interrupted(&nodes[0], "failover-commit");
    nodes[0].ok(&["failover", "commit", "web", "--discard-points"]);
    let left: Vec<String> = points(&nodes[0], "web")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![fo_point], "only the failover point stays");

    // Reprotect.
    crash(&mut nodes, "job/reprotect/seeding", &["reprotect", "web"]);
    interrupted(&nodes[0], "reprotect");
    nodes[0].ok(&["reprotect", "web"]);
    let mut cr = c0.clone();
    let b = noise(91, BS);
    cr[7 * BS..8 * BS].copy_from_slice(&b);
    write_block(&image, 7, &b);
    let t = now_ms();
    point_after(&nodes[0], "dr", t);
    usable_point(&nodes[0], "dr", &cr, &work.path().join("r-dr"));

    // Failback.
    crash(&mut nodes, "job/failback/writing", &["failback", "web"]);
    interrupted(&nodes[0], "failback");
    let v = nodes[0].json(&["failback", "web"]);
    assert_eq!(v["disks"][0]["written_blocks"], 1, "{v}");
    assert!(std::fs::read(disk.path()).unwrap() == cr);
    let t = now_ms();
    point_after(&nodes[0], "web", t);
    usable_point(&nodes[0], "web", &cr, &r);
}

#[test]
fn a_crash_of_the_node_a_job_works_on_fails_the_job_and_it_runs_again() {
    let (mut nodes, work, disk, c0) = protected_web_and(&[("dr", "mobility")]);
    let (web_id, dr_id) = (nodes[2].id(), nodes[3].id());
    let drills = nodes[3].state_dir().join("drills");

    // The target dies once the drill's images are written: the drill fails, naming the lost
    // target, and cleanup removes what it made.
    arm(&mut nodes[3], "land/restored");
    sees_all(&nodes[0], &[dr_id.clone()]);
    let run = background(&nodes[0], &["drill", "web", "--on", "dr"]);
    kill_at(&mut nodes[3], "land/restored");
    let out = run.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("target") && err.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{err}"
    );
    let d = jobs(&nodes[0])
        .into_iter()
        .find(|j| j["kind"] == "drill")
        .unwrap();
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        std::fs::read_dir(&drills).unwrap().count() > 0,
        "the target had made the drill's images"
    );
    let e = nodes[0].fails(&["drill", "cleanup", "web"]);
    assert!(e.contains("unreachable") && e.lines().count() == 1, "{e}");
    nodes[3].start();
    sees_all(&nodes[0], &[dr_id.clone()]);
    nodes[0].ok(&["drill", "cleanup", "web"]);
    assert_eq!(
        std::fs::read_dir(&drills).unwrap().count(),
        0,
        "cleanup left files on the target"
    );

    // A cleanup of a drill still landing stops the landing first.
    arm(&mut nodes[3], "land/restored");
    sees_all(&nodes[0], &[dr_id.clone()]);
    let run = background(&nodes[0], &["drill", "web", "--on", "dr"]);
    wait_until("the landing to pause", WAIT, || {
        nodes[3].log().contains("failpoint reached: land/restored")
    });
    // The target reported its bytes as it restored: the running job shows them.
    wait_until("the drill's progress from the target", WAIT, || {
        jobs(&nodes[0]).iter().any(|j| {
            j["kind"] == "drill"
                && j["state"] == "running"
                && j["bytes_done"].as_u64() == Some(c0.len() as u64)
        })
    });
    nodes[0].ok(&["drill", "cleanup", "web"]);
    let out = run.join().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_dir(&drills).unwrap().count(), 0);

    // Fail over to dr and commit; dr dies as it is seeded for the reprotect.
    nodes[3].stop();
    nodes[3].start_env(&[("LIFEBOAT_FAILPOINTS".into(), "adopt".into())]);
    sees_all(&nodes[0], &[dr_id.clone()]);
    let v = nodes[0].json(&["failover", "web", "--on", "dr"]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    nodes[0].ok(&["failover", "commit", "web"]);
    let run = background(&nodes[0], &["reprotect", "web"]);
    kill_at(&mut nodes[3], "adopt");
    let out = run.join().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{e}"
    );
    nodes[3].start();
    sees_all(&nodes[0], &[dr_id.clone()]);
    let v = nodes[0].json(&["status"]);
    assert_eq!(
        v["replication"]["machines"][0]["state"], "failover-committed",
        "{v}"
    );
    nodes[0].ok(&["reprotect", "web"]);
    let mut cr = c0.clone();
    for (i, seed) in [(3usize, 92u64), (50, 93)] {
        let b = noise(seed, BS);
        cr[i * BS..(i + 1) * BS].copy_from_slice(&b);
        write_block(&image, i, &b);
    }
    let t = now_ms();
    point_after(&nodes[0], "dr", t);
    usable_point(&nodes[0], "dr", &cr, &work.path().join("r-dr"));

    // The original machine dies after failback wrote its first block: its disk is torn, the
    // recovery site still runs and replicates, and the failback run again completes it.
    arm(&mut nodes[2], "inplace/wrote");
    sees_all(&nodes[0], &[web_id.clone()]);
    let run = background(&nodes[0], &["failback", "web"]);
    kill_at(&mut nodes[2], "inplace/wrote");
    let out = run.join().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("retry"), "{e}");
    let torn = std::fs::read(disk.path()).unwrap();
    assert!(torn != cr && torn != c0, "the kill did not land mid-write");
    let t = now_ms();
    point_after(&nodes[0], "dr", t);
    nodes[2].start();
    sees_all(&nodes[0], &[web_id]);
    let v = nodes[0].json(&["failback", "web"]);
    assert_eq!(
        v["disks"][0]["written_blocks"], 1,
        "only the rest is written: {v}"
    );
    assert!(std::fs::read(disk.path()).unwrap() == cr);
    let t = now_ms();
    point_after(&nodes[0], "web", t);
    usable_point(&nodes[0], "web", &cr, &work.path().join("r"));
}
