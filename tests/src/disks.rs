//! Protected-disk helpers for replication tests: deterministic content, atomic changes under the
//! snapshot hook's lock, and queries of recovery points.

use crate::{fast_policy, mesh_of, now_ms, wait_until, Node, WAIT};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BS: usize = 65536;
pub const BLOCKS: usize = 128;

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// 128 blocks: random, zero, repeated-byte and duplicated blocks.
pub fn initial_disk() -> Vec<u8> {
    let mut d = Vec::with_capacity(BS * BLOCKS);
    for i in 0..BLOCKS {
        match i % 4 {
            0 | 3 => d.extend(noise(i as u64 + 1, BS)),
            1 => d.extend(vec![0u8; BS]),
            _ => d.extend(vec![(i % 5 + 1) as u8; BS]),
        }
    }
    d
}

pub fn blocks(d: &[u8]) -> Vec<&[u8]> {
    d.chunks(BS).collect()
}

pub fn distinct_nonzero(disks: &[&Vec<u8>]) -> usize {
    disks
        .iter()
        .flat_map(|d| blocks(d))
        .filter(|b| b.iter().any(|x| *x != 0))
        .collect::<BTreeSet<_>>()
        .len()
}

/// A protected disk whose frozen views come from a snapshot hook; the test changes the disk
/// atomically (rename) under the same lock the hook takes, so every view is crash-consistent.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
}

impl Disk {
    pub fn new(dir: &Path, content: &[u8]) -> Disk {
        std::fs::create_dir_all(dir).unwrap();
        let d = Disk {
            dir: dir.to_path_buf(),
        };
        d.write(content);
        d
    }
    pub fn path(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    pub fn write(&self, content: &[u8]) {
        let tmp = self.dir.join("disk.img.new");
        std::fs::write(&tmp, content).unwrap();
        let st = Command::new("flock")
            .arg(self.dir.join("disk.lock"))
            .arg("mv")
            .arg(&tmp)
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    pub fn snapshot_hook(&self) -> String {
        let d = self.dir.display();
        format!(
            "flock {d}/disk.lock cp {d}/disk.img {d}/view.img && echo \"disk.img {d}/view.img\""
        )
    }
}

pub fn points(cfg: &Node, machine: &str) -> Vec<Value> {
    cfg.json(&["points", machine])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The first point captured after `t` (waits for it).
pub fn point_after(cfg: &Node, machine: &str, t: u64) -> Value {
    let mut found = None;
    wait_until(
        &format!("a point of {machine} captured after {t}"),
        WAIT,
        || {
            found = points(cfg, machine)
                .into_iter()
                .filter(|p| p["captured_ms"].as_u64().unwrap_or(0) > t)
                .min_by_key(|p| p["captured_ms"].as_u64().unwrap_or(0));
            found.is_some()
        },
    );
    found.unwrap()
}

/// Sums a stat over the points captured in (from, to].
pub fn stat_between(cfg: &Node, machine: &str, from: u64, to: u64, stat: &str) -> u64 {
    points(cfg, machine)
        .iter()
        .filter(|p| {
            let c = p["captured_ms"].as_u64().unwrap_or(0);
            c > from && c <= to
        })
        .map(|p| p["stats"][stat].as_u64().unwrap_or(0))
        .sum()
}

pub fn restore(cfg: &Node, machine: &str, point: &str, to: &Path) -> Vec<u8> {
    cfg.ok(&[
        "restore",
        machine,
        "--point",
        point,
        "--to",
        to.to_str().unwrap(),
    ]);
    std::fs::read(to.join("disk.img")).unwrap()
}

/// A configuration node with a local vault and the `fast` policy, a process server, and a
/// protected mobility node `web` with one committed point.
pub fn protected_web() -> (Vec<Node>, tempfile::TempDir, Disk, Vec<u8>) {
    protected_web_and(&[])
}

/// `protected_web`, with more members (name, role) after `web`.
pub fn protected_web_and(more: &[(&str, &str)]) -> (Vec<Node>, tempfile::TempDir, Disk, Vec<u8>) {
    let mut members = vec![
        ("config", ""),
        ("ps", "process-server"),
        ("web", "mobility"),
    ];
    members.extend_from_slice(more);
    let nodes = mesh_of(&members, &[]);
    let cfg = &nodes[0];
    cfg.ok(&["vault", "create", "v1"]);
    fast_policy(cfg, "10m");
    let work = tempfile::tempdir().unwrap();
    let c0 = initial_disk();
    let disk = Disk::new(&work.path().join("web"), &c0);
    protect_image(cfg, "web", &disk, "fast");
    (nodes, work, disk, c0)
}

/// Protects `machine`'s image `disk` under `policy` with its snapshot hook, and waits for the
/// first point.
pub fn protect_image(cfg: &Node, machine: &str, disk: &Disk, policy: &str) {
    let t0 = now_ms();
    cfg.ok(&[
        "protect",
        machine,
        "--disk",
        disk.path().to_str().unwrap(),
        "--policy",
        policy,
        "--snapshot-hook",
        &disk.snapshot_hook(),
    ]);
    point_after(cfg, machine, t0);
}

/// Writes block `i` of the image at `path` (synced).
pub fn write_block(path: &Path, i: usize, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, (i * BS) as u64).unwrap();
    f.sync_all().unwrap();
}
