//! One accept loop for every protocol: a connection permit taken before `accept` (excess
//! connections wait in the kernel's queue instead of costing memory here), one task per
//! session, and on shutdown the listener closes and the sessions are waited for (each is told
//! the proxy is shutting down and records its end). Dropping the task ends every session too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Accept until `shutdown` turns true; `session` serves one connection.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    session: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut sessions = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let served = session(tcp, peer);
                sessions.spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(sessions = sessions.len(), "listener closed; waiting for sessions to end");
    while sessions.join_next().await.is_some() {}
}
