//! The node's HTTP listener (`[http] listen` in lifeboat.toml; off unless set): `GET /metrics`
//! (Prometheus text format) on every node. A small HTTP/1.1 server: one request per
//! connection, the head bounded in size and time, anything but `GET` of a known path answered
//! with its status code and nothing else. It serves what `status` shows and takes no input.

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

/// Serves `l` until the daemon stops.
pub(super) async fn serve(l: tokio::net::TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match l.accept().await {
            Ok((s, _)) => {
                let ctx = ctx.clone();
                actix_rt::spawn(async move {
                    conn(s, &ctx).await;
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

/// The request line's method and path, once the head is complete.
fn parse_head(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

async fn conn(mut s: tokio::net::TcpStream, ctx: &Ctx) {
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
            Some(("GET", "/metrics")) => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics(ctx).await,
            ),
            Some(("GET", _)) => (404, "text/plain", "not found\n".to_string()),
            Some(_) => (405, "text/plain", "method not allowed\n".to_string()),
        }
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
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
    use super::parse_head;

    #[test]
    fn request_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_head(b"GET / HTTP/2 x\r\n\r\n"), None);
        assert_eq!(parse_head(&[0xff, 0xfe, b'\r', b'\n']), None);
    }
}
