//! Every recovery command given a nonexistent machine, point, node, policy or job, a bad time,
//! a bad path or a bad value prints one line of error and exits non-zero, and changes nothing:
//! the configuration node's records, the target's landings and files, and the protected disk
//! stay as they were, and no job is left running.

use lifeboat_tests::disks::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The files of a state directory that record what a command changed (not logs, databases
/// or the catalog, which replication keeps moving), with their contents, and the entries
/// of the directories where images land.
fn records(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for f in [
        "drills.json",
        "failovers.json",
        "protections.json",
        "policies.json",
        "landings.json",
        "protection.json",
        "vault.json",
    ] {
        // An empty collection records as much as no file.
        if let Ok(b) = std::fs::read(dir.join(f)) {
            if !matches!(b.trim_ascii(), b"{}" | b"[]") {
                m.insert(f.to_string(), b);
            }
        }
    }
    for sub in ["drills", "failovers", "landing-maps"] {
        for e in std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            m.insert(format!("{sub}/{}", e.file_name().to_string_lossy()), vec![]);
        }
    }
    m
}

#[test]
fn bad_input_to_every_recovery_command_is_one_line_and_changes_nothing() {
    let (nodes, work, disk, _c0) = protected_web_and(&[("dr", "mobility")]);
    let (cfg, dr) = (&nodes[0], &nodes[3]);
    let abs = work.path().join("out");
    let abs = abs.to_str().unwrap();
    let file = disk.path();
    let file = file.to_str().unwrap();
    let before = (
        records(cfg.state_dir()),
        records(dr.state_dir()),
        std::fs::read(disk.path()).unwrap(),
    );
    let cases: &[(&[&str], &str)] = &[
        (&["drill", "nosuch"], "nosuch"),
        (&["drill", "web", "--point", "nosuch"], "nosuch"),
        (
            &["drill", "web", "--point", "2026-13-45T00:00:00Z"],
            "--point",
        ),
        (
            &["drill", "web", "--point", "1999-01-01T00:00:00Z"],
            "no recovery point",
        ),
        (&["drill", "web", "--on", "nosuch"], "nosuch"),
        (
            &["drill", "web", "--on", "dr", "--to", "relative/dir"],
            "absolute",
        ),
        (&["drill", "web", "--to", file], "not a directory"),
        (&["drill", "web", "--format", "vmdk"], "vmdk"),
        (
            &["drill", "web", "--disk-map", "nosuch=/dev/null"],
            "nosuch",
        ),
        (&["drill", "web", "--disk-map", "nosuch"], "--disk-map"),
        (
            &[
                "drill",
                "web",
                "--on",
                "dr",
                "--disk-map",
                "disk.img=/nonexistent",
            ],
            "/nonexistent",
        ),
        (&["drill", "web", "--isolated"], "--boot-hook"),
        (&["drill", "cleanup", "nosuch"], "nosuch"),
        (&["drill", "cleanup", "web"], "no drill"),
        (&["failover", "nosuch"], "nosuch"),
        (&["failover", "web", "--point", "nosuch"], "nosuch"),
        (&["failover", "web", "--point", "yesterday"], "--point"),
        (&["failover", "web", "--on", "nosuch"], "nosuch"),
        (
            &["failover", "web", "--on", "dr", "--to", "relative/dir"],
            "absolute",
        ),
        (&["failover", "web", "--planned"], "shutdown hook"),
        (&["failover", "commit", "nosuch"], "nosuch"),
        (&["failover", "commit", "web"], "not failed over"),
        (&["failover", "cancel", "web"], "not failed over"),
        (&["reprotect", "nosuch"], "nosuch"),
        (&["reprotect", "web"], "not failed over"),
        (&["failback", "nosuch"], "nosuch"),
        (&["failback", "web"], "not failed over"),
        (&["restore", "nosuch", "--to", abs], "nosuch"),
        (
            &["restore", "web", "--point", "nosuch", "--to", abs],
            "nosuch",
        ),
        (
            &[
                "restore",
                "web",
                "--point",
                "2026-02-30T00:00:00Z",
                "--to",
                abs,
            ],
            "--point",
        ),
        (&["restore", "web", "--to", file], file),
        (&["job", "nosuch"], "no job nosuch"),
        (&["job", "../etc"], "../etc"),
        (
            &["protect", "dr", "--disk", file, "--policy", "nosuch"],
            "nosuch",
        ),
        (&["protect", "dr", "--disk", "relative.img"], "absolute"),
    ];
    for (args, want) in cases {
        let out = cfg.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            err.lines()
                .all(|l| l.starts_with("error:") || l.starts_with("[job ")),
            "{args:?}: more than an error line: {err}"
        );
        assert!(lines[0].contains(want), "{args:?}: {err} lacks {want:?}");
    }
    let after = (
        records(cfg.state_dir()),
        records(dr.state_dir()),
        std::fs::read(disk.path()).unwrap(),
    );
    for (b, a, who) in [
        (&before.0, &after.0, "configuration node"),
        (&before.1, &after.1, "target"),
    ] {
        let text = |v: Option<&Vec<u8>>| v.map(|v| String::from_utf8_lossy(v).into_owned());
        let changed: Vec<String> = b
            .keys()
            .chain(a.keys())
            .filter(|k| b.get(*k) != a.get(*k))
            .map(|k| format!("{k}: {:?} -> {:?}", text(b.get(k)), text(a.get(k))))
            .collect();
        assert!(
            changed.is_empty(),
            "the {who}'s records changed: {changed:#?}"
        );
    }
    assert!(before.2 == after.2, "the protected disk changed");
    assert!(
        !Path::new(abs).exists(),
        "a refused restore made its directory"
    );
    let jobs = cfg.json(&["jobs"]);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "running"),
        "{jobs}"
    );
}
