//! The node's HTTP listener (`[http] listen` in lifeboat.toml; off unless set): `GET /metrics`
//! (Prometheus text format) on every node; on the configuration node the dashboard at `/`
//! (one embedded page, no external assets) and the JSON it reads (`/api/status`,
//! `/api/points?machine=NAME`, `/api/jobs`). A small HTTP/1.1 server: one request per
//! connection, the head bounded in size and time, anything but `GET` of a known path answered
//! with its status code and nothing else. It serves what `status` shows and changes nothing.
//!
//! Bound to a loopback address it is open to the host's users; bound anywhere else every
//! request must carry the token in `STATE/http.token` (created 0600 at start), as
//! `Authorization: Bearer TOKEN` or `?token=TOKEN`.

use super::control::handle;
use super::*;
use crate::replies;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request.
const READ_WITHIN: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNS: usize = 32;

/// The dashboard page.
const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

/// The token requests must carry when the listener is not on loopback: read from
/// `STATE/http.token`, created (0600, 32 random bytes as hex) if missing.
pub(super) fn token(dir: &StateDir, addr: SocketAddr) -> Result<Option<String>, String> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    let path = dir.root.join("http.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(Some(t.trim().to_string())),
        Ok(_) => {
            return Err(format!(
                "{}: too short (32 characters at least)",
                path.display()
            ))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", path.display()))
        }
        Err(_) => {}
    }
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    state::write_file_atomic(&path, format!("{t}\n").as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    Ok(Some(t))
}

/// Serves `l` until the daemon stops.
pub(super) async fn serve(l: tokio::net::TcpListener, ctx: Arc<Ctx>, token: Option<String>) {
    let token: Arc<Option<String>> = Arc::new(token);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match l.accept().await {
            Ok((s, _)) => {
                let (ctx, token) = (ctx.clone(), token.clone());
                actix_rt::spawn(async move {
                    conn(s, &ctx, token.as_deref()).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(cause = %e, "http accept failed");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A request head: method, path, query and the bearer token, if any.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    bearer: Option<&'a str>,
}

/// The request line and the `Authorization` header, once the head is complete.
fn parse_head(head: &[u8]) -> Option<Head<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let bearer = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| v.trim().strip_prefix("Bearer "))
            .flatten()
    });
    Some(Head {
        method,
        path,
        query,
        bearer,
    })
}

/// The value of `key` in a query string (names and tokens need no percent-decoding: a value
/// holding `%` or `+` is refused).
fn query<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.contains(['%', '+']))
}

/// Whether the request carries the token (compared by digest: no early exit on a prefix).
fn authorized(h: &Head<'_>, token: Option<&str>) -> bool {
    let Some(t) = token else {
        return true;
    };
    let given = h.bearer.or_else(|| query(h.query, "token")).unwrap_or("");
    blake3::hash(given.as_bytes()) == blake3::hash(t.as_bytes())
}

async fn conn(mut s: tokio::net::TcpStream, ctx: &Ctx, token: Option<&str>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_WITHIN, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > MAX_HEAD {
                return false;
            }
        }
        true
    })
    .await;
    let (status, ctype, body) = if !matches!(read, Ok(true)) {
        (400, "text/plain", "bad request\n".to_string())
    } else {
        match parse_head(&head) {
            None => (400, "text/plain", "bad request\n".to_string()),
            Some(h) if !authorized(&h, token) => (
                401,
                "text/plain",
                "a token is needed (see STATE/http.token)\n".to_string(),
            ),
            Some(h) if h.method != "GET" => (405, "text/plain", "method not allowed\n".to_string()),
            Some(h) => route(ctx, &h).await,
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A GET request's answer: status, content type, body.
async fn route(ctx: &Ctx, h: &Head<'_>) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    let json = |r: Result<serde_json::Value, String>| match r {
        Ok(v) => (200, JSON, v.to_string()),
        Err(e) => (503, JSON, serde_json::json!({ "error": e }).to_string()),
    };
    let config = ctx
        .roles
        .send(GetRoles)
        .await
        .is_ok_and(|r| r.contains(&Role::Configuration));
    match h.path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(ctx).await,
        ),
        "/" | "/index.html" if config => (200, "text/html; charset=utf-8", DASHBOARD.into()),
        "/" | "/index.html" => (
            404,
            "text/plain",
            "the dashboard is served by the configuration node\n".into(),
        ),
        "/api/status" if config => json(api_status(ctx).await),
        "/api/jobs" if config => json(handle(Request::Jobs { limit: Some(50) }, ctx).await),
        "/api/points" if config => match query(h.query, "machine") {
            Some(m) => json(
                handle(
                    Request::Points {
                        machine: m.to_string(),
                    },
                    ctx,
                )
                .await,
            ),
            None => (400, "text/plain", "give ?machine=NAME\n".into()),
        },
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// `status --json`: the node and its replication status.
async fn api_status(ctx: &Ctx) -> Result<serde_json::Value, String> {
    let node = handle(Request::Status, ctx).await?;
    let replication = handle(Request::ReplStatus { machine: None }, ctx).await?;
    Ok(serde_json::json!({ "node": node, "replication": replication }))
}

/// This node's metrics: its status, and its replication status where it has one (the
/// configuration node's machines; a process server's own counters). Never forwarded: a
/// scrape of a member does not reach the configuration node.
async fn metrics(ctx: &Ctx) -> String {
    let node: replies::NodeStatus = match handle(Request::Status, ctx).await {
        Ok(v) => match replies::decode(v) {
            Ok(n) => n,
            Err(e) => return format!("# status unavailable: {e}\n"),
        },
        Err(e) => return format!("# status unavailable: {e}\n"),
    };
    let repl = if node.roles.contains(&Role::Configuration) {
        handle(Request::ReplStatus { machine: None }, ctx)
            .await
            .ok()
            .and_then(|v| replies::decode::<replies::ReplStatus>(v).ok())
    } else if node.roles.contains(&Role::ProcessServer) {
        Some(replies::ReplStatus {
            process_server: Some(crate::replication::config_side::ps_health(&ctx.repl).await),
            ..Default::default()
        })
    } else {
        None
    };
    crate::metrics::render(&node, repl.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_and_garbage_does_not() {
        let h = parse_head(b"GET /api/points?machine=web&x=1 HTTP/1.1\r\nHost: a\r\nauthorization: Bearer abc\r\n\r\n")
            .unwrap();
        assert_eq!(
            (h.method, h.path, h.bearer),
            ("GET", "/api/points", Some("abc"))
        );
        assert_eq!(query(h.query, "machine"), Some("web"));
        assert_eq!(query("machine=a%2Fb", "machine"), None);
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_head(b"GET / HTTP/2 x\r\n\r\n"), None);
        assert_eq!(parse_head(&[0xff, 0xfe, b'\r', b'\n']), None);
    }

    #[test]
    fn a_token_is_needed_only_when_one_is_set() {
        let h = parse_head(b"GET /?token=t0k HTTP/1.1\r\n\r\n").unwrap();
        assert!(authorized(&h, None));
        assert!(authorized(&h, Some("t0k")));
        assert!(!authorized(&h, Some("t0k2")));
        let h = parse_head(b"GET / HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n").unwrap();
        assert!(authorized(&h, Some("t0k")));
        let h = parse_head(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(!authorized(&h, Some("t0k")));
    }
}
