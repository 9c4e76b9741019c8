//! The simulated vault store: objects in memory, on simulated time, with injected faults
//! (slow operations, failed puts, gets and listings, puts applied whose answer is lost, and
//! whole outages). The vault client above it is the daemon's own (`node::vault::Vault`).

use bytes::Bytes;
use lifeboat_actors::seams::{BlobError, BlobMeta, BlobStore, BoxFuture, PutMode};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

/// Simulated wall time: Unix ms at the start plus the (paused, auto-advancing) tokio clock.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    start: tokio::time::Instant,
    base_ms: u64,
}

impl SimClock {
    /// A clock that reads `base_ms` now.
    pub fn new(base_ms: u64) -> Self {
        SimClock {
            start: tokio::time::Instant::now(),
            base_ms,
        }
    }

    /// Now, Unix ms.
    pub fn now(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Fault rates, per mille of operations.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreFaults {
    /// A put fails (nothing written).
    pub put_fails: u64,
    /// A put is applied but its answer is lost (the caller sees an error).
    pub put_answer_lost: u64,
    /// A get or head fails.
    pub get_fails: u64,
    /// A listing fails.
    pub list_fails: u64,
    /// An operation takes up to 2 s instead of up to 20 ms.
    pub slow: u64,
}

#[derive(Debug)]
struct State {
    objects: BTreeMap<String, (Bytes, u64)>,
    rng: ChaCha8Rng,
    outage_until: u64,
    ops: u64,
}

/// The in-memory store.
#[derive(Debug)]
pub struct SimBlobStore {
    state: Mutex<State>,
    clock: SimClock,
    faults: StoreFaults,
}

enum Op {
    Read,
    Write,
    List,
}

impl SimBlobStore {
    /// An empty store drawing its faults from `seed`.
    pub fn new(seed: u64, clock: SimClock, faults: StoreFaults) -> Self {
        SimBlobStore {
            state: Mutex::new(State {
                objects: BTreeMap::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                outage_until: 0,
                ops: 0,
            }),
            clock,
            faults,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store is unreachable for `ms` from now.
    pub fn outage(&self, ms: u64) {
        let until = self.clock.now() + ms;
        let mut s = self.lock();
        s.outage_until = s.outage_until.max(until);
    }

    /// Operations served so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Deletes an object behind the vault client's back (an operator, a bucket restored from
    /// an old backup).
    pub fn remove(&self, key: &str) -> bool {
        self.lock().objects.remove(key).is_some()
    }

    /// True if the object exists (no fault, no latency: for the checks).
    pub fn has(&self, key: &str) -> bool {
        self.lock().objects.contains_key(key)
    }

    /// Keys under `prefix`, without faults (for the invariant checks).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Draws this operation's latency and fate: `Err` if it fails before doing anything,
    /// `Ok(true)` if it is done but its answer lost (writes only).
    async fn roll(&self, op: Op, key: &str) -> Result<bool, BlobError> {
        let (delay, fail, lost) = {
            let mut s = self.lock();
            s.ops += 1;
            let f = self.faults;
            let slow = s.rng.next_u64() % 1000 < f.slow;
            let delay = 1 + s.rng.next_u64() % if slow { 2000 } else { 20 };
            let p = s.rng.next_u64() % 1000;
            let fail = match op {
                Op::Read => p < f.get_fails,
                Op::Write => p < f.put_fails,
                Op::List => p < f.list_fails,
            };
            let lost =
                matches!(op, Op::Write) && !fail && s.rng.next_u64() % 1000 < f.put_answer_lost;
            (delay, fail, lost)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.clock.now() < self.lock().outage_until {
            return Err(BlobError::Failed(format!(
                "{key}: store unreachable (simulated outage)"
            )));
        }
        if fail {
            return Err(BlobError::Failed(format!("{key}: simulated failure")));
        }
        Ok(lost)
    }

    fn meta(key: &str, v: &(Bytes, u64)) -> BlobMeta {
        BlobMeta {
            key: key.to_string(),
            size: v.0.len() as u64,
            modified_ms: v.1,
        }
    }
}

impl BlobStore for SimBlobStore {
    fn describe(&self) -> String {
        "sim://vault".into()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        Box::pin(async move {
            self.roll(Op::Read, key).await?;
            self.lock()
                .objects
                .get(key)
                .map(|v| v.0.clone())
                .ok_or(BlobError::NotFound)
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        Box::pin(async move {
            self.roll(Op::Read, key).await?;
            let v = self.lock().objects.get(key).map(|v| v.0.clone());
            slice(key, v, range)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        mode: PutMode,
    ) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(async move {
            let lost = self.roll(Op::Write, key).await?;
            let now = self.clock.now();
            let created = {
                let mut s = self.lock();
                if mode == PutMode::Create && s.objects.contains_key(key) {
                    false
                } else {
                    s.objects.insert(key.to_string(), (body, now));
                    true
                }
            };
            if lost {
                return Err(BlobError::Failed(format!("{key}: answer lost (simulated)")));
            }
            Ok(created)
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, BlobError>> {
        Box::pin(async move {
            self.roll(Op::Read, key).await?;
            Ok(self.lock().objects.get(key).map(|v| Self::meta(key, v)))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>> {
        Box::pin(async move {
            self.roll(Op::List, prefix).await?;
            let dir = if prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", prefix.trim_end_matches('/'))
            };
            Ok(self
                .lock()
                .objects
                .range(dir.clone()..)
                .take_while(|(k, _)| k.starts_with(&dir))
                .map(|(k, v)| Self::meta(k, v))
                .collect())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            self.roll(Op::Write, key).await?;
            self.lock().objects.remove(key);
            Ok(())
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), BlobError>> {
        Box::pin(async move { self.roll(Op::Write, "barrier").await.map(|_| ()) })
    }
}

/// Bytes `range` of object `key` (`None`: absent).
fn slice(key: &str, v: Option<Bytes>, range: Range<u64>) -> Result<Bytes, BlobError> {
    let v = v.ok_or(BlobError::NotFound)?;
    if range.end > v.len() as u64 || range.start > range.end {
        return Err(BlobError::Failed(format!("{key}: range beyond the object")));
    }
    Ok(v.slice(range.start as usize..range.end as usize))
}

/// The same objects seen without faults or latency: what the invariant checks read through
/// (a check must not fail because the simulated store did).
#[derive(Debug)]
pub struct CleanView(pub std::sync::Arc<SimBlobStore>);

impl BlobStore for CleanView {
    fn describe(&self) -> String {
        "sim://vault (checks)".into()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        let r = self.0.lock().objects.get(key).map(|v| v.0.clone());
        Box::pin(async move { r.ok_or(BlobError::NotFound) })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, BlobError>> {
        let r = self.0.lock().objects.get(key).map(|v| v.0.clone());
        Box::pin(async move { slice(key, r, range) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        _body: Bytes,
        _mode: PutMode,
    ) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(async move {
            Err(BlobError::Failed(format!(
                "{key}: the checks' view is read-only"
            )))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobMeta>, BlobError>> {
        let r = self
            .0
            .lock()
            .objects
            .get(key)
            .map(|v| SimBlobStore::meta(key, v));
        Box::pin(async move { Ok(r) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobMeta>, BlobError>> {
        let dir = if prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", prefix.trim_end_matches('/'))
        };
        let r: Vec<BlobMeta> = self
            .0
            .lock()
            .objects
            .range(dir.clone()..)
            .take_while(|(k, _)| k.starts_with(&dir))
            .map(|(k, v)| SimBlobStore::meta(k, v))
            .collect();
        Box::pin(async move { Ok(r) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            Err(BlobError::Failed(format!(
                "{key}: the checks' view is read-only"
            )))
        })
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), BlobError>> {
        Box::pin(async { Ok(()) })
    }
}
