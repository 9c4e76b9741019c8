//! Alert delivery: each alert transition (raised, cleared) is POSTed as JSON to
//! `[alerts] webhook`. Posts go out in order from a bounded queue (an alert storm while the
//! receiver is down drops the oldest undelivered ones, counted and logged, rather than
//! growing without bound); each is retried with exponential backoff before it is given up.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Transitions waiting to be delivered, at most.
pub const QUEUE: usize = 256;
/// Attempts per transition.
pub const ATTEMPTS: u32 = 6;
/// Backoff before the second attempt; doubled each time (1 + 2 + 4 + 8 + 16 s).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// One attempt's bound.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(10);

/// An alert transition, as posted.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlertEvent {
    /// What is alerted on: `rpo`.
    pub alert: &'static str,
    /// `raised` or `cleared`.
    pub state: &'static str,
    /// The machine's name.
    pub machine: String,
    /// The machine's node id.
    pub machine_id: String,
    /// RPO at the transition, seconds.
    pub rpo_seconds: f64,
    /// The machine's threshold, seconds.
    pub threshold_seconds: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// When (RFC 3339).
    pub at: String,
    /// The configuration node that saw it.
    pub node: String,
}

/// The sender side: [`Webhook::post`] never blocks.
#[derive(Debug)]
pub struct Webhook {
    tx: tokio::sync::mpsc::Sender<AlertEvent>,
    /// Transitions dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

impl Webhook {
    /// Starts the delivery task on the current tokio runtime.
    pub fn start(url: String) -> Webhook {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<AlertEvent>(QUEUE);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder().timeout(ATTEMPT_WITHIN).build() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(cause = %e, "alert webhook disabled: no HTTP client");
                    return;
                }
            };
            while let Some(ev) = rx.recv().await {
                deliver(&client, &url, &ev).await;
            }
        });
        Webhook {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues `ev`; a full queue drops it (and says so).
    pub fn post(&self, ev: AlertEvent) {
        if self.tx.try_send(ev).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                dropped = n,
                "alert webhook queue full; an alert transition was dropped"
            );
        }
    }
}

/// Posts `ev`, retrying on failure (a transport error or a non-2xx answer).
async fn deliver(client: &reqwest::Client, url: &str, ev: &AlertEvent) {
    let body = serde_json::to_vec(ev).unwrap_or_default();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let why = match r {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(machine = %ev.machine, state = ev.state, attempt, "alert delivered to the webhook");
                return;
            }
            Ok(resp) => format!("answered {}", resp.status()),
            Err(e) => e.without_url().to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(machine = %ev.machine, state = ev.state, cause = %why, attempts = ATTEMPTS, "alert webhook gave up on a transition");
            return;
        }
        tracing::debug!(cause = %why, attempt, "alert webhook failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
