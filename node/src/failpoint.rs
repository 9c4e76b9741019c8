//! Failpoints: named places in long operations where a test stops the daemon, to kill it
//! there with `kill -9` and check what a crash at that place leaves. `LIFEBOAT_FAILPOINTS` is
//! a comma-separated list; a failpoint whose name starts with an entry logs
//! `failpoint reached: NAME` and then waits (10 minutes at most, then goes on). Unset, as
//! always outside tests, a failpoint costs one read of an empty list. Names:
//! `job/KIND/STEP` as a configuration-node job enters a step (`job/drill/restoring`),
//! `land/restored` on a target once the images are written, `unland` before a target
//! removes a landing, `adopt` before it seeds its change log for a reprotect, and
//! `inplace/wrote` after the first block an in-place write (failback, `--disk-map`) changed.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms failpoints.
pub const ENV: &str = "LIFEBOAT_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    })
}

fn matches(name: &str) -> bool {
    armed().iter().any(|p| name.starts_with(p.as_str()))
}

/// Stops this thread at failpoint `name` if it is armed (for blocking code).
pub fn pause(name: &str) {
    if matches(name) {
        tracing::warn!("failpoint reached: {name}");
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Stops this task at failpoint `name` if it is armed (for async code).
pub async fn pause_async(name: &str) {
    if matches(name) {
        tracing::warn!("failpoint reached: {name}");
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}
