//! Whole-process test: `cargo deb` builds the Debian package from the crate's metadata, and
//! dpkg installs it for real (binary, unit enabled, documentation), then purges it.

use lifeboat_tests::*;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cargo_deb_builds_a_package_that_installs_the_binary_and_its_unit() {
    let bin = bin();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().display().to_string();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/Cargo.toml");
    // The binary under test (scripts/test built it) is packaged as it is: no second build.
    let mut c = Command::new("cargo");
    c.args(["deb", "--manifest-path"]).arg(&manifest).args([
        "--profile",
        "dev",
        "--no-build",
        "--no-strip",
        "--fast",
        "-o",
        &out,
    ]);
    if let Some(target) = bin.parent().and_then(Path::parent) {
        c.env("CARGO_TARGET_DIR", target);
    }
    let o = c
        .output()
        .expect("cargo deb (scripts/test installs cargo-deb)");
    assert!(
        o.status.success(),
        "cargo deb failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let deb = deb.display().to_string();

    let info = run(&["dpkg-deb", "--field", &deb, "Package", "Depends", "Version"]);
    assert!(info.contains("Package: lifeboat"), "{info}");
    assert!(
        info.contains("libc6"),
        "no computed libc dependency: {info}"
    );
    assert!(
        info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    let files = run(&["dpkg-deb", "--contents", &deb]);
    for f in [
        "./usr/bin/lifeboat",
        "/systemd/system/lifeboat.service",
        "./usr/share/doc/lifeboat/README.md",
    ] {
        assert!(files.contains(f), "{f} not in the package:\n{files}");
    }

    // Install it for real, unless this machine has a lifeboat of its own there.
    assert!(
        !Path::new("/usr/bin/lifeboat").exists(),
        "/usr/bin/lifeboat exists already; this test installs and purges the package there"
    );
    run(&["dpkg", "--install", &deb]);
    let purge = scopeguard(|| {
        let _ = Command::new("dpkg").args(["--purge", "lifeboat"]).status();
    });
    let v = run(&["/usr/bin/lifeboat", "--version"]);
    assert_eq!(v.trim(), format!("lifeboat {}", env!("CARGO_PKG_VERSION")));
    let unit = [
        "/usr/lib/systemd/system/lifeboat.service",
        "/lib/systemd/system/lifeboat.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit is installed");
    let text = std::fs::read_to_string(unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/lifeboat node run --state-dir /var/lib/lifeboat"),
        "{text}"
    );
    // Enabled by the package's maintainer scripts (it starts once `lifeboat init` ran).
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/lifeboat.service").exists(),
        "the package did not enable the unit"
    );
    let o = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    assert!(
        o.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    drop(purge);
    assert!(
        !Path::new("/usr/bin/lifeboat").exists(),
        "purge left the binary"
    );
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/lifeboat.service").exists(),
        "purge left the unit enabled"
    );
}

/// Runs `f` when dropped (also when the test panics).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
