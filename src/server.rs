//! Accepting clients and shutting down.
//!
//! `Server::run` takes bound listeners (plain TCP and TLS, `listen_tls`)
//! and a shutdown future, so tests bind `127.0.0.1:0` and run the real
//! server in-process. On shutdown it stops accepting, tells every client to
//! finish what it has in flight, and waits up to the grace period. It is
//! handed the client side's [`Context`] and the TLS acceptor, built once at
//! start (see [`crate::proxy`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::client::{self, Context};
use crate::tls::acceptor::ClientTlsAcceptor;

/// The client listeners a proxy serves: plain TCP, TLS, or both.
#[derive(Debug, Default)]
pub struct Listeners {
    /// `listen`: plain TCP.
    pub plain: Option<TcpListener>,
    /// `listen_tls`: TLS with the certificate of `[proxy.tls]`.
    pub tls: Option<TcpListener>,
}

/// The accept loop over a running client side.
pub(crate) struct Server {
    ctx: Arc<Context>,
    /// Loaded from `[proxy.tls]`; a TLS listener is served only with it.
    client_tls: Option<ClientTlsAcceptor>,
}

impl Server {
    /// Serves clients with `ctx`, TLS ones with `client_tls`.
    pub(crate) fn new(ctx: Arc<Context>, client_tls: Option<ClientTlsAcceptor>) -> Server {
        Server { ctx, client_tls }
    }

    /// Serves clients on `listeners` until `shutdown` completes, then lets
    /// in-flight requests finish within the configured grace period.
    pub(crate) async fn run(self, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) {
        let ctx = self.ctx;
        let port = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok()).map(|a| a.port());
        let _ = ctx.listening.set(client::ListenPorts {
            plain: port(listeners.plain.as_ref()),
            tls: port(listeners.tls.as_ref()),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept(listeners.plain.as_ref()) => {
                    let (mut stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    if !ctx.admit() {
                        tracker.spawn(async move {
                            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        });
                        tracing::debug!(%peer, "refused: max_clients reached");
                        continue;
                    }
                    tracker.spawn(client::serve(stream, ctx.clone(), stop_rx.clone()));
                }
                accepted = accept(listeners.tls.as_ref()) => match (accepted, &self.client_tls) {
                    (Ok((stream, peer)), Some(acceptor)) => {
                        let client = serve_tls_client(acceptor.clone(), stream, peer, ctx.clone(), stop_rx.clone());
                        tracker.spawn(client);
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "accept failed on the TLS listener");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(listeners);
        tracing::info!("shutting down: waiting for clients to finish");
        let _ = stop_tx.send(true);
        tracker.close();
        let grace = ctx.config.proxy.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining clients");
        }
    }
}

/// Accepts on `listener`; never completes when there is none.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs the TLS handshake, then serves the client like a plain one
/// (including the `max_clients` refusal, sent over TLS so the client can read it).
async fn serve_tls_client(
    acceptor: ClientTlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<Context>,
    stop_rx: watch::Receiver<bool>,
) {
    let addresses = client::registry::Peer {
        tls: true,
        ..client::registry::Peer::of(&stream)
    };
    let Some(stream) = acceptor.accept(stream, peer).await else {
        return;
    };
    let (rd, mut wr) = tokio::io::split(stream);
    if !ctx.admit() {
        tracing::debug!(%peer, "refused: max_clients reached");
        let _ = wr
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        let _ = wr.shutdown().await;
        return;
    }
    client::serve_io(rd, wr, ctx, stop_rx, addresses).await;
}
