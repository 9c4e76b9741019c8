//! The README's first command must work: `lifeboat quickstart` exits 0 after every node saw the
//! others with their roles and the whole story (replication, restore, drill, failover, commit,
//! reprotect, failback, protected again) verified itself.

use lifeboat_tests::bin;
use std::process::Command;

#[test]
fn quickstart_forms_a_mesh_runs_the_whole_story_and_exits_zero() {
    let out = Command::new(bin())
        .arg("quickstart")
        .output()
        .expect("run quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("quickstart OK"), "{stdout}");
    for role in ["process-server", "mobility"] {
        assert!(stdout.contains(role), "peer table lacks {role}:\n{stdout}");
    }
    assert_eq!(stdout.matches("reachable").count(), 3, "{stdout}");
    assert!(stdout.contains("initial replication: point"), "{stdout}");
    assert_eq!(stdout.matches("delta point").count(), 2, "{stdout}");
    assert!(stdout.contains("bit-exact with the source"), "{stdout}");
    for step in [
        "failed over mobility-1 to recovery-1",
        "failover committed",
        "(no initial copy)",
        "failed back to mobility-1",
        "mobility-1 is protected again",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
}
