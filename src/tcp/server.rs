//! The accept loop: `server::run(listener, node, config, shutdown)`, after
//! mini-redis. A semaphore permit is taken *before* `accept`, so at most
//! [`TcpConfig::connections_max`] connections exist and the rest wait in the
//! kernel's backlog. Shutdown: `shutdown` resolves, the loop stops accepting, a
//! broadcast tells every handler to stop reading, handlers finish the requests they
//! accepted, and `run` returns once every handler has dropped its completion sender.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::TcpConfig;
use super::handler::Handler;
use crate::node::Node;

/// Serves `node` on `listener` until `shutdown` resolves and accepted requests are answered.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    msg_ids: Arc<AtomicU64>,
    config: TcpConfig,
    shutdown: impl Future,
) {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let mut listener = Listener {
        listener,
        limit_connections: Arc::new(Semaphore::new(config.connections_max)),
        node,
        msg_ids,
        config,
        notify_shutdown,
        shutdown_complete_tx,
    };
    tokio::select! {
        r = listener.accept_loop() => {
            if let Err(e) = r {
                tracing::error!("accept failed for good: {e}");
            }
        }
        _ = shutdown => tracing::info!("shutting down"),
    }
    let Listener {
        notify_shutdown,
        shutdown_complete_tx,
        ..
    } = listener;
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
}

/// The listener's state.
struct Listener {
    /// The bound socket.
    listener: TcpListener,
    /// One permit per open connection (taken before accept, released on drop).
    limit_connections: Arc<Semaphore>,
    /// The node every connection serves.
    node: Arc<Node>,
    /// The node's message counter, shared with its peer transport.
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Dropped to tell handlers to stop reading.
    notify_shutdown: broadcast::Sender<()>,
    /// Cloned into every handler; `run` waits until all clones are gone.
    shutdown_complete_tx: mpsc::Sender<()>,
}

impl Listener {
    async fn accept_loop(&mut self) -> std::io::Result<()> {
        loop {
            let permit = self
                .limit_connections
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            let socket = self.accept().await?;
            let _ = socket.set_nodelay(true);
            let handler = Handler::new(
                self.node.clone(),
                self.msg_ids.clone(),
                self.config.clone(),
                self.notify_shutdown.subscribe(),
                self.shutdown_complete_tx.clone(),
            );
            tokio::spawn(async move {
                handler.run(socket).await;
                drop(permit);
            });
        }
    }

    /// Accepts, backing off on errors (e.g. out of file descriptors): 1, 2, 4 ... 64 s.
    async fn accept(&mut self) -> std::io::Result<tokio::net::TcpStream> {
        let mut backoff = 1;
        loop {
            match self.listener.accept().await {
                Ok((socket, _)) => return Ok(socket),
                Err(e) if backoff > 64 => return Err(e),
                Err(e) => tracing::warn!("accept: {e}; retrying in {backoff} s"),
            }
            tokio::time::sleep(Duration::from_secs(backoff)).await;
            backoff *= 2;
        }
    }
}
