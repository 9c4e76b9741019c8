//! Real filesystems for tests: ext4 on a loop device.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command, panicking with its stderr if it fails; its trimmed stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device with a mounted ext4 filesystem; unmounted and detached on drop.
#[derive(Debug)]
pub struct Ext4 {
    /// The loop device.
    pub dev: String,
    /// Its backing file.
    pub img: PathBuf,
    /// Where it is mounted.
    pub mnt: PathBuf,
}

impl Ext4 {
    /// A `mib` MiB image in `dir`, on a loop device, with ext4 mounted at `dir/mnt`.
    pub fn new(dir: &Path, mib: u64) -> Ext4 {
        let img = dir.join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let dev = sh(&["losetup", "--find", "--show", img.to_str().unwrap()]);
        sh(&["mkfs.ext4", "-q", "-F", &dev]);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        sh(&["mount", &dev, mnt.to_str().unwrap()]);
        Ext4 { dev, img, mnt }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let m = self.mnt.to_str().unwrap_or_default().to_string();
        let _ = Command::new("fsfreeze").args(["-u", &m]).status();
        if !Command::new("umount")
            .arg(&m)
            .status()
            .is_ok_and(|s| s.success())
        {
            // Still busy: detach lazily so nothing outlives the test.
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
