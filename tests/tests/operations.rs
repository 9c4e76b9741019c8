//! Operating Lifeboat (issue 12 §3): the HTTP listener's `/metrics` on the configuration node
//! and a process server, checked by Prometheus' own `promtool check metrics`, and what the
//! listener does with requests it does not serve.

use lifeboat_tests::disks::*;
use lifeboat_tests::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// Restarts `n` with `[http] listen` on a free loopback port; returns the port.
fn enable_http(n: &mut Node) -> u16 {
    n.stop();
    let port = free_port();
    let cfg = n.state_dir().join("lifeboat.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let off = "# [http]\n# listen = \"127.0.0.1:9464\"";
    assert!(
        text.contains(off),
        "the default file documents [http]:\n{text}"
    );
    let on = format!("[http]\nlisten = \"127.0.0.1:{port}\"");
    std::fs::write(&cfg, text.replace(off, &on)).unwrap();
    n.start();
    port
}

/// One HTTP/1.1 request; returns (status code, body).
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn metrics(port: u16) -> String {
    let (code, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    body
}

/// `promtool check metrics` of `text`: it must pass with no complaint.
fn promtool_passes(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test installs Debian's prometheus package)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_describe_the_mesh_and_pass_promtool() {
    let mut nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let cfg_port = enable_http(&mut nodes[0]);
    let ps_port = enable_http(&mut nodes[1]);
    let cfg = &nodes[0];
    wait_until("the members to reconnect", WAIT, || {
        nodes[1..].iter().all(|n| sees_reachable(cfg, &n.id()))
    });
    cfg.ok(&["vault", "create", "v1"]);
    fast_policy(cfg, "10m");
    let w = tempfile::tempdir().unwrap();
    let disk = Disk::new(w.path(), &initial_disk());
    cfg.ok(&[
        "protect",
        "web",
        "--disk",
        disk.path().to_str().unwrap(),
        "--policy",
        "fast",
        "--snapshot-hook",
        &disk.snapshot_hook(),
    ]);
    let t = now_ms();
    point_after(cfg, "web", t);

    // The configuration node: the machine, its RPO and alert, the process server's report.
    let mut m = String::new();
    wait_until("the process server's report in the metrics", WAIT, || {
        m = metrics(cfg_port);
        value(
            &m,
            "lifeboat_process_server_connected{process_server=\"ps\"}",
        ) == Some(1.0)
            && m.contains("lifeboat_process_server_backlog_age_seconds{process_server=\"ps\"}")
    });
    let rpo = value(&m, "lifeboat_rpo_seconds{machine=\"web\"}").expect("web's RPO");
    assert!((0.0..600.0).contains(&rpo), "{m}");
    assert_eq!(value(&m, "lifeboat_alerts_active"), Some(0.0), "{m}");
    assert_eq!(value(&m, "lifeboat_mesh_members"), Some(3.0), "{m}");
    assert!(
        m.contains("lifeboat_machine_protected{machine=\"web\",state=\"protected\"} 1"),
        "{m}"
    );
    promtool_passes(&m);

    // The process server: its own counters.
    let p = metrics(ps_port);
    assert!(
        value(&p, "lifeboat_points_committed_total").is_some_and(|v| v >= 1.0),
        "{p}"
    );
    assert!(
        value(&p, "lifeboat_uploaded_bytes_total").is_some_and(|v| v > 0.0),
        "{p}"
    );
    assert!(!p.contains("lifeboat_rpo_seconds"), "{p}");
    promtool_passes(&p);

    // What it does not serve.
    assert_eq!(http(cfg_port, "GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(cfg_port, "POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(cfg_port, "\u{1}\u{2} garbage\r\n\r\n").0, 400);
    // Still serving after the garbage.
    assert!(metrics(cfg_port).contains("lifeboat_node_info"));

    // A port already taken: the daemon does not start, and says why in one line.
    let mut other = Node::init("other", "127.0.0.1:0", &[], false, &Timing::default());
    let cfg_file = other.state_dir().join("lifeboat.toml");
    let text = std::fs::read_to_string(&cfg_file).unwrap().replace(
        "# [http]\n# listen = \"127.0.0.1:9464\"",
        &format!("[http]\nlisten = \"127.0.0.1:{cfg_port}\""),
    );
    std::fs::write(&cfg_file, text).unwrap();
    let out = Command::new(bin())
        .args(["node", "run", "--state-dir"])
        .arg(other.state_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.lines()
            .any(|l| l.contains("[http] listen") && l.contains("in use")),
        "{e}"
    );
    let _ = other.stop();
}
