//! Recovery without the primary site: the configuration node is lost with its site, and a
//! fresh node at the recovery site opens the vault with the recovery key.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::path::Path;

/// A fresh configuration node of its own mesh.
fn fresh_config(name: &str) -> Node {
    let mut n = Node::init(name, "127.0.0.1:0", &[], false, &Timing::default());
    n.start();
    n.ok(&["role", "add", "configuration"]);
    n.ok(&["mesh", "create"]);
    n
}

/// The recovery key `vault create` printed.
fn recovery_key(created: &str) -> String {
    created
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("LBRK-"))
        .unwrap_or_else(|| panic!("no recovery key in {created}"))
        .to_string()
}

/// True if any file under `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &str) -> bool {
    walk(dir).iter().any(|f| {
        std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_new_node_attaches_the_vault_with_the_recovery_key_and_fails_over_the_lost_site() {
    let mut nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let url = format!("file://{}/vault", work.path().display());
    let created = nodes[0].ok(&["vault", "create", "v1", "--store", &url]);
    let key = recovery_key(&created);
    assert!(
        !any_file_holds(nodes[0].state_dir(), &key),
        "the recovery key was stored"
    );
    assert!(
        !nodes[0].log().contains(&key),
        "the recovery key was logged"
    );
    fast_policy(&nodes[0], "10m");
    let c0 = initial_disk();
    let disk = Disk::new(&work.path().join("web"), &c0);
    let t = now_ms();
    nodes[0].ok(&[
        "protect",
        "web",
        "--disk",
        disk.path().to_str().unwrap(),
        "--policy",
        "fast",
        "--snapshot-hook",
        &disk.snapshot_hook(),
    ]);
    point_after(&nodes[0], "web", t);
    // A rekey: what is sealed from now on uses a key the recovery copy must learn too.
    nodes[0].ok(&["vault", "rekey"]);
    let mut c1 = c0.clone();
    c1[..BS].copy_from_slice(&noise(91, BS));
    disk.write(&c1);
    let t = now_ms() + 2000;
    let p = point_after(&nodes[0], "web", t);
    // The mirror of the protection reaches the vault within a duty tick.
    wait_until("the configuration mirror", WAIT, || {
        work.path().join("vault/recovery/config").exists()
    });

    // The primary site is lost: every node, and the configuration node's state with it.
    for n in nodes.iter_mut() {
        n.stop();
    }
    std::fs::remove_dir_all(nodes[0].state_dir()).unwrap();

    // A fresh node at the recovery site. Wrong keys are refused and change nothing.
    let dr = fresh_config("dr");
    let other = fresh_config("other");
    let other_url = format!("file://{}/other-vault", work.path().display());
    let wrong = recovery_key(&other.ok(&["vault", "create", "v2", "--store", &other_url]));
    let kf = work.path().join("key");
    std::fs::write(&kf, &wrong).unwrap();
    let attach = |f: &Path| -> Vec<String> {
        vec![
            "vault".into(),
            "attach".into(),
            url.clone(),
            "--recovery-key-file".into(),
            f.display().to_string(),
        ]
    };
    let args = attach(&kf);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = dr.fails(&args);
    assert!(
        e.contains("wrong recovery key") && e.lines().count() == 1,
        "{e}"
    );
    let mut typo = key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    std::fs::write(&kf, &typo).unwrap();
    let e = dr.fails(&args);
    assert!(e.contains("typo") || e.contains("A-Z"), "{e}");
    let e = dr.fails(&[
        "vault",
        "attach",
        "nota://url",
        "--recovery-key-file",
        kf.to_str().unwrap(),
    ]);
    assert!(e.lines().count() == 1 && e.contains("nota://url"), "{e}");
    let e = dr.fails(&[
        "vault",
        "attach",
        &url,
        "--recovery-key-file",
        "/nonexistent/key",
    ]);
    assert!(
        e.lines().count() == 1 && e.contains("/nonexistent/key"),
        "{e}"
    );
    let e = dr.fails(&["points", "web"]);
    assert!(e.lines().count() == 1, "{e}");
    assert!(
        !dr.state_dir().join("vault.json").exists(),
        "a refused attach left a vault"
    );

    // The right key: the vault, the lost site's protections and points come back.
    std::fs::write(&kf, format!("{key}\n")).unwrap();
    let v = dr.json(&args);
    assert_eq!(v["machines"][0], "web", "{v}");
    assert!(v["points"].as_u64().unwrap() >= 1, "{v}");
    assert!(points(&dr, "web").iter().any(|x| x["id"] == p["id"]));

    // Fail the lost machine over from the newest point: bit-exact.
    let d = work.path().join("fo");
    let v = dr.json(&["failover", "web", "--to", d.to_str().unwrap()]);
    let image = Path::new(v["images"][0].as_str().unwrap()).to_path_buf();
    assert!(
        std::fs::read(&image).unwrap() == c1,
        "the failed-over image is the disk"
    );
}
