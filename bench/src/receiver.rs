//! The webhook receiver: an HTTP/1.1 keep-alive server on 127.0.0.1:0 that
//! records every event it is POSTed and answers 200 with an empty body;
//! and a measure of its own capacity, to show it is not the bottleneck.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::arrivals::Arrivals;

/// A running receiver; dropping it closes the listener and every connection.
pub struct Receiver {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet, which aborts them.
        self.task.abort();
    }
}

/// Starts a receiver that records into `arrivals` and waits `delay` before
/// answering each request.
pub async fn start(arrivals: Arc<Arrivals>, delay: Duration) -> Result<Receiver> {
    start_on(0, arrivals, delay).await
}

/// A port on 127.0.0.1 that nothing listens on now: where a receiver that
/// is down at first will be started.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// [`start`] on `port` (0: any free port).
pub async fn start_on(port: u16, arrivals: Arc<Arrivals>, delay: Duration) -> Result<Receiver> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .context("binding the HTTP receiver")?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let arrivals = Arc::clone(&arrivals);
            connections.spawn(async move {
                let service =
                    service_fn(move |request| handle(request, Arc::clone(&arrivals), delay));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(Receiver { port, task })
}

async fn handle(
    request: Request<Incoming>,
    arrivals: Arc<Arrivals>,
    delay: Duration,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let body = request.into_body().collect().await?.to_bytes();
    arrivals.record_body(&body, Instant::now());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(Response::new(Empty::new()))
}

/// A payload of the bench table's size (about 250 bytes).
pub const SAMPLE: &str = r#"{"table" : "bench_events", "schema" : "public", "op" : "INSERT", "data" : {"id":123456,"account":56,"amount":1234.56,"note":"bench note for generated row number 123456","created_at":"2026-01-01T12:34:56.789012+00:00"}}"#;

/// Requests per second a fresh receiver answers to `connections` keep-alive
/// connections POSTing one payload at a time for `duration`.
pub async fn capacity(connections: usize, duration: Duration) -> Result<f64> {
    let arrivals = Arc::new(Arrivals::with_capacity(1 << 20));
    let receiver = start(arrivals, Duration::ZERO).await?;
    let answered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut clients = JoinSet::new();
    for _ in 0..connections {
        let answered = Arc::clone(&answered);
        let port = receiver.port;
        clients.spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let body = Bytes::from_static(SAMPLE.as_bytes());
            while Instant::now() < deadline {
                sender.ready().await?;
                let request = Request::post("/")
                    .header("host", format!("127.0.0.1:{port}"))
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let response = sender.send_request(request).await?;
                response.into_body().collect().await?;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = clients.join_next().await {
        result.context("a capacity client panicked")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(answered.load(Ordering::Relaxed) as f64 / elapsed)
}
