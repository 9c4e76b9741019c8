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

/// The dashboard's DOM as headless Chromium renders it, once it shows `point` (bounded:
/// tried with a longer virtual-time budget each round).
fn dashboard_dom(port: u16, point: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut dom = String::new();
    for budget in [3_000, 6_000, 12_000, 24_000] {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--virtual-time-budget={budget}"),
                "--dump-dom",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("chromium (scripts/test installs it)");
        dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.contains(point) {
            break;
        }
    }
    dom
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
    protect_image(cfg, "web", &disk, "fast");

    // The configuration node: the machine, its RPO and alert, the process server's report.
    let mut m = String::new();
    wait_until("the process server's report in the metrics", WAIT, || {
        m = metrics(cfg_port);
        value(
            &m,
            "lifeboat_process_server_connected{process_server=\"ps\"}",
        ) == Some(1.0)
            && m.contains("lifeboat_process_server_backlog_age_seconds{process_server=\"ps\"}")
            && value(
                &m,
                "lifeboat_machine_points_committed_total{machine=\"web\"}",
            )
            .is_some_and(|v| v >= 1.0)
            && value(&m, "lifeboat_read_bytes_total{machine=\"web\"}")
                .is_some_and(|v| v >= initial_disk().len() as f64)
    });
    // The data path's counters: the initial copy read the whole disk (a cycle that failed
    // before it, while the process server was still being granted the vault, counts too) and
    // sent its blocks; the vault stored them compressed.
    let size = initial_disk().len() as f64;
    let read = value(&m, "lifeboat_read_bytes_total{machine=\"web\"}").unwrap();
    assert!(read >= size, "read {read} of a {size}-byte disk: {m}");
    let sent = value(&m, "lifeboat_sent_bytes_total{machine=\"web\"}").unwrap();
    assert!(sent > 0.0 && sent <= read, "sent {sent}, read {read}: {m}");
    let stored = value(&m, "lifeboat_stored_bytes_total{machine=\"web\"}").unwrap();
    assert!(stored > 0.0, "{m}");
    let ratio = value(&m, "lifeboat_compression_ratio{machine=\"web\"}").unwrap();
    assert!(ratio > 0.5, "compression ratio {ratio}: {m}");
    assert!(
        value(&m, "lifeboat_machine_points_failed_total{machine=\"web\"}").is_some(),
        "{m}"
    );
    let rpo = value(&m, "lifeboat_rpo_seconds{machine=\"web\"}").expect("web's RPO");
    assert!((0.0..600.0).contains(&rpo), "{m}");
    assert_eq!(value(&m, "lifeboat_alerts_active"), Some(0.0), "{m}");
    assert_eq!(value(&m, "lifeboat_mesh_members"), Some(3.0), "{m}");
    assert!(
        m.contains("lifeboat_machine_protected{machine=\"web\",state=\"protected\"} 1"),
        "{m}"
    );
    assert!(
        value(&m, "lifeboat_last_point_stored_bytes{machine=\"web\"}").is_some(),
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

    // The dashboard, loaded in headless Chromium: no page errors, and it shows the machine,
    // its newest point and the process server.
    let newest = points(cfg, "web").last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dom = dashboard_dom(cfg_port, &newest);
    assert!(
        dom.contains("data-page-errors=\"0\""),
        "page errors:\n{dom}"
    );
    assert!(dom.contains("data-machine=\"web\""), "{dom}");
    assert!(dom.contains(&format!("data-point=\"{newest}\"")), "{dom}");
    assert_eq!(http(ps_port, "GET / HTTP/1.1\r\n\r\n").0, 404);

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

/// A local HTTP receiver: records each request's body; answers 500 to the first `fail_first`
/// requests and 200 after.
fn receiver(fail_first: usize) -> (u16, std::sync::mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as much body as content-length says.
            let body = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body.to_string());
                    }
                }
            };
            let code = if i < fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s.write_all(
                format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if let Some(b) = body {
                if tx.send(b).is_err() {
                    return;
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn alert_transitions_reach_the_webhook_with_retries() {
    let mut nodes = mesh_of(
        &[
            ("config", ""),
            ("ps", "process-server"),
            ("web", "mobility"),
        ],
        &[],
    );
    let (port, bodies) = receiver(1);
    nodes[0].stop();
    let file = nodes[0].state_dir().join("lifeboat.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let off = "# [alerts]\n# webhook = \"http://127.0.0.1:9000/lifeboat\"";
    assert!(text.contains(off), "{text}");
    std::fs::write(
        &file,
        text.replace(
            off,
            &format!("[alerts]\nwebhook = \"http://127.0.0.1:{port}/lifeboat\""),
        ),
    )
    .unwrap();
    nodes[0].start();
    let cfg = &nodes[0];
    wait_until("the members to reconnect", WAIT, || {
        nodes[1..].iter().all(|n| sees_reachable(cfg, &n.id()))
    });
    cfg.ok(&["vault", "create", "v1"]);
    cfg.ok(&[
        "policy",
        "create",
        "tight",
        "--rpo-threshold",
        "3s",
        "--retention",
        "1h",
        "--crash-consistent-every",
        "1s",
        "--app-consistent-every",
        "0",
    ]);
    let w = tempfile::tempdir().unwrap();
    let disk = Disk::new(w.path(), &initial_disk());
    protect_image(cfg, "web", &disk, "tight");
    let next = |what: &str| -> serde_json::Value {
        let b = bodies
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no webhook post for {what}"));
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"))
    };
    // The machine stops: its RPO passes 3 s. The first post is answered 500 and retried.
    let web_id = nodes[2].id();
    nodes[2].stop();
    let first = next("the raised alert");
    let again = next("the raised alert's retry");
    assert_eq!(first, again);
    assert_eq!(first["alert"], "rpo");
    assert_eq!(first["state"], "raised", "{first}");
    assert_eq!(first["machine"], "web");
    assert_eq!(first["threshold_seconds"], 3);
    assert!(first["rpo_seconds"].as_f64().unwrap() > 3.0, "{first}");
    assert_eq!(first["machine_id"], web_id.as_str());
    // It comes back: the alert clears.
    nodes[2].start();
    let cleared = next("the cleared alert");
    assert_eq!(cleared["state"], "cleared", "{cleared}");
    assert_eq!(cleared["machine"], "web");
}

#[test]
fn the_service_unit_is_written_once_verified_by_systemd_and_removed() {
    let node = Node::init("svc", "127.0.0.1:0", &[], false, &Timing::default());
    let units = tempfile::tempdir().unwrap();
    let u = units.path().to_str().unwrap();
    let out = node.ok(&["service", "install", "--unit-dir", u]);
    assert!(out.contains("wrote"), "{out}");
    let unit = units.path().join("lifeboat.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains(&format!(
        "node run --state-dir {}",
        node.state_dir().display()
    )));
    assert!(text.contains("Restart=on-failure"), "{text}");
    // systemd's own checker accepts it.
    let v = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    assert!(
        v.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // Again: nothing changes, exit 0.
    let out = node.ok(&["service", "install", "--unit-dir", u]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text);
    node.ok(&["service", "uninstall", "--unit-dir", u]);
    assert!(!unit.exists());
    let out = node.ok(&["service", "uninstall", "--unit-dir", u]);
    assert!(out.contains("not installed"), "{out}");
    // An uninitialized state directory is refused.
    let e = Command::new(bin())
        .args(["service", "install", "--unit-dir", u, "--state-dir"])
        .arg(units.path().join("nothing"))
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("lifeboat init"));
}
