//! Jobs: long operations recorded with steps and progress in the configuration node's job
//! database; a crash (`kill -9`) of the configuration node or of the target during a job ends
//! it failed with a reason, and the operation can be retried or undone.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::path::Path;

/// A boot hook that marks `mark` and then waits (up to 2 min) for `go`.
fn waiting_hook(mark: &Path, go: &Path) -> String {
    format!(
        "touch {m}; i=0; while [ ! -e {g} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; true",
        m = mark.display(),
        g = go.display()
    )
}

fn jobs(n: &Node) -> Vec<serde_json::Value> {
    n.json(&["jobs"]).as_array().cloned().unwrap_or_default()
}

#[test]
fn jobs_record_progress_and_a_crash_of_the_target_or_the_configuration_node_ends_them_failed() {
    let (mut nodes, work, _disk, c0) = protected_web_and(&[("dr", "mobility")]);
    let dr_id = nodes[3].id();

    // The initial replication was a job, followed from web's reports to its commit.
    let mut copy = None;
    wait_until("the initial replication's job to succeed", WAIT, || {
        copy = jobs(&nodes[0])
            .into_iter()
            .find(|j| j["kind"] == "initial-replication" && j["state"] == "succeeded");
        copy.is_some()
    });
    let copy = copy.unwrap();
    assert_eq!(copy["machine"], "web", "{copy}");
    assert_eq!(
        copy["bytes_total"].as_u64().unwrap(),
        c0.len() as u64,
        "{copy}"
    );
    assert_eq!(copy["bytes_done"], copy["bytes_total"], "{copy}");

    // A restore is a job with its steps and bytes.
    let v = nodes[0].json(&[
        "restore",
        "web",
        "--to",
        work.path().join("r").to_str().unwrap(),
    ]);
    let id = v["job"].as_str().unwrap().to_string();
    let j = nodes[0].json(&["job", &id]);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["bytes_total"].as_u64().unwrap(), c0.len() as u64, "{j}");
    assert_eq!(j["bytes_done"], j["bytes_total"]);
    assert!(j["steps"][0]["ended_ms"].as_u64().is_some(), "{j}");
    let e = nodes[0].fails(&["job", "nosuch"]);
    assert!(e.contains("no job nosuch") && e.lines().count() == 1, "{e}");

    // The target dies while the failed-over machine boots: the failover fails with a reason,
    // its job says so, and it stays open.
    let (mark, go) = (work.path().join("booting"), work.path().join("go"));
    let hook = waiting_hook(&mark, &go);
    let run = background(
        &nodes[0],
        &["failover", "web", "--on", "dr", "--boot-hook", &hook],
    );
    wait_until("the boot hook on dr", WAIT, || mark.exists());
    nodes[3].kill9();
    let out = run.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stays open"), "{err}");
    let fo = jobs(&nodes[0])
        .into_iter()
        .find(|j| j["kind"] == "failover")
        .unwrap();
    assert_eq!(fo["state"], "failed", "{fo}");
    assert!(fo["error"].as_str().unwrap().contains("target"), "{fo}");
    assert_eq!(
        nodes[0].json(&["status"])["replication"]["machines"][0]["state"],
        "failed-over"
    );

    // The target is back; the configuration node dies during the next attempt.
    std::fs::remove_file(&mark).unwrap();
    nodes[3].start();
    wait_until("config to see dr again", WAIT, || {
        sees_reachable(&nodes[0], &dr_id)
    });
    let run = background(
        &nodes[0],
        &["failover", "web", "--on", "dr", "--boot-hook", &hook],
    );
    wait_until("the boot hook on dr", WAIT, || mark.exists());
    nodes[0].kill9();
    let _ = run.join().unwrap();
    std::fs::write(&go, b"").unwrap();
    nodes[0].start();
    let all = jobs(&nodes[0]);
    let fo = all
        .iter()
        .find(|j| {
            j["kind"] == "failover"
                && j["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("interrupted"))
        })
        .unwrap_or_else(|| panic!("no interrupted failover job in {all:?}"));
    assert_eq!(fo["state"], "failed", "{fo}");
    assert!(all.iter().all(|j| j["state"] != "running"), "{all:?}");
    let e = fo["error"].as_str().unwrap();
    assert!(
        e.contains("interrupted")
            && e.contains("restoring and verifying on dr")
            && e.contains("failover cancel web"),
        "{e}"
    );

    // Retried, it comes up bit-exact, and only the last attempt's images stay on the target.
    wait_until("config to see dr again", WAIT, || {
        sees_reachable(&nodes[0], &dr_id)
    });
    let v = nodes[0].json(&["failover", "web", "--on", "dr"]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(std::fs::read(&image).unwrap() == c0);
    let dirs: Vec<_> = std::fs::read_dir(nodes[3].state_dir().join("failovers"))
        .unwrap()
        .collect();
    assert_eq!(dirs.len(), 1, "earlier attempts left images on the target");
    let web_id = nodes[2].id();
    wait_until("config to see web again", WAIT, || {
        sees_reachable(&nodes[0], &web_id)
    });
    nodes[0].ok(&["failover", "cancel", "web"]);
    assert!(!image.exists());
}
