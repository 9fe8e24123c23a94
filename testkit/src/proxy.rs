//! A TCP forwarder the test (or the bench) controls: it can stop
//! forwarding without closing any socket, as a dead network path looks to
//! both ends (a "black hole"), or cut every connection and refuse new
//! ones, as a stopped server does; and resume later.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with bytes and connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    BlackHole,
    Cut,
}

/// Forwards every connection to 127.0.0.1:0 on to `target` while on.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = watch::Sender::new(Mode::Forward);
        let on = mode.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, on.clone()));
            }
        });
        Self { addr, mode }
    }

    /// Stops moving bytes either way and connects nothing new; every
    /// socket stays open.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Closes every connection and closes new ones as they come, as a
    /// stopped server does.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Moves bytes again, on old connections and new ones.
    pub fn resume(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

/// Waits while the proxy is a black hole; false once it cuts or is gone.
async fn open(on: &mut watch::Receiver<Mode>) -> bool {
    matches!(
        on.wait_for(|mode| *mode != Mode::BlackHole)
            .await
            .as_deref(),
        Ok(Mode::Forward)
    )
}

async fn forward(client: TcpStream, target: SocketAddr, mut on: watch::Receiver<Mode>) {
    if !open(&mut on).await {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, on.clone()),
        pipe(server_read, client_write, on),
    );
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut on: watch::Receiver<Mode>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if !open(&mut on).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = on.wait_for(|mode| *mode != Mode::Forward) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before the black hole wait for it to end.
        if !open(&mut on).await || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
