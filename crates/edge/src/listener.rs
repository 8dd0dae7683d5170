//! Serving HTTP (and the WebSockets it upgrades to) on a TCP listener, with the limits that
//! keep one client from starving the others.
//!
//! - **A server-wide connection cap** below the process's descriptor limit: past it, a new
//!   connection is answered `503 unavailable` and closed, instead of the process running out
//!   of descriptors (when accepts fail, `/healthz` times out for everyone).
//! - **A per-IP cap** on concurrent connections: past it, `429 rate_limited`.
//! - **A header read timeout** (hyper's): a client that does not send a whole request head
//!   in time is disconnected, so half-sent requests cannot hold connections.
//! - **A body read timeout** (tower-http's, as a layer on the app): a body that stalls is
//!   answered `408` and the connection closed.
//!
//! Connections are counted by a guard that travels with the socket, so an upgraded
//! WebSocket counts until the socket closes. Every connection task is tracked; on
//! cancellation the listener stops accepting, asks each connection to finish its request in
//! hand, and waits (bounded) for them.

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for connections to finish their request in hand.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals being written at once; past this a refused connection is just closed.
const MAX_REFUSING: usize = 64;

/// Connection limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Most connections open at once (WebSockets included).
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_per_ip: usize,
    /// A request head not received whole within this closes the connection.
    pub header_timeout: Duration,
    /// A request body that sends nothing for this long is answered 408.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            max_per_ip: 1_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Raise this process's soft descriptor limit to its hard limit, and return the most
/// connections it can hold with room left for its own files (databases, logs, outgoing
/// connections): the limit less 1/32 of it, and at least 64 less.
pub fn connection_ceiling() -> usize {
    let soft = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let reserve = (soft / 32).max(64);
    soft.saturating_sub(reserve).max(16)
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts a connection until dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!(hubbub_protocol::metrics::HTTP_CONNECTIONS).set(c.total as f64);
    }
}

/// A socket that holds its connection slot for as long as it lives (through an upgrade).
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Full,
    PerIp,
}

impl Refusal {
    fn response(self) -> String {
        let (status, code, message) = match self {
            Refusal::Full => (
                "503 Service Unavailable",
                "unavailable",
                "the server is at its connection limit; retry later",
            ),
            Refusal::PerIp => (
                "429 Too Many Requests",
                "rate_limited",
                "too many connections from this address",
            ),
        };
        let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Serve `app` on `listener` until `cancel`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a moment
                    // rather than spin, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let ip = peer.ip();
        let refusal = {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
            if c.total >= limits.max_connections {
                Some(Refusal::Full)
            } else if from_ip >= limits.max_per_ip {
                Some(Refusal::PerIp)
            } else {
                c.total += 1;
                *c.per_ip.entry(ip).or_default() += 1;
                metrics::gauge!(hubbub_protocol::metrics::HTTP_CONNECTIONS).set(c.total as f64);
                None
            }
        };
        if let Some(refusal) = refusal {
            metrics::counter!(hubbub_protocol::metrics::CONNECTIONS_REFUSED,
                "reason" => if refusal == Refusal::Full { "server" } else { "ip" })
            .increment(1);
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tracker.spawn(async move {
                    let _permit = permit;
                    refuse(stream, refusal).await;
                });
            }
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            // Pushes are small writes: without TCP_NODELAY, Nagle's algorithm meeting the
            // client's delayed ACKs holds some of them back ~40 ms.
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let io = Counted {
            stream,
            _slot: Slot {
                counts: counts.clone(),
                ip,
            },
        };
        tracker.spawn(connection(io, peer, app.clone(), &limits, cancel.clone()));
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
    Ok(())
}

fn connection(
    io: Counted,
    peer: SocketAddr,
    app: axum::Router,
    limits: &HttpLimits,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), req)
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    async move {
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, %peer, "http connection ended with an error");
        }
    }
}

/// Answer a refused connection with a protocol error and close it.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let exchange = async {
        // Read what the client sent first, so closing does not reset the connection under
        // the answer.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        stream.write_all(refusal.response().as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_protocol_errors() {
        let r = Refusal::Full.response();
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["error"]["code"], "unavailable");
        assert!(Refusal::PerIp.response().starts_with("HTTP/1.1 429 "));
    }

    #[test]
    fn the_ceiling_leaves_room() {
        let c = connection_ceiling();
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert!((c as u64) < soft, "{c} < {soft}");
    }
}
