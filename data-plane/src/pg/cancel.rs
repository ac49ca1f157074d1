//! Cancel requests: the agent gets a key minted by the proxy; a CancelRequest carrying it is
//! translated into the upstream's own key and sent to the upstream. The two kinds of key are
//! distinct types so one can never be sent where the other belongs.

use crate::config::PgResource;
use bytes::BytesMut;
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The key the proxy handed to the agent in BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentKey {
    pub pid: i32,
    pub secret: i32,
}

/// The key the upstream handed to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamKey {
    pub pid: i32,
    pub secret: i32,
}

struct Target {
    key: UpstreamKey,
    resource: Arc<PgResource>,
    /// Wakes the session's held statement, if any: a cancel withdraws it.
    withdraw: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<AgentKey, Target>>,
}

impl CancelRegistry {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<AgentKey, Target>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mint an agent key for an upstream session.
    pub fn register(&self, key: UpstreamKey, resource: Arc<PgResource>) -> AgentKey {
        let rng = ring::rand::SystemRandom::new();
        let mut keys = self.keys();
        loop {
            let mut raw = [0u8; 8];
            if rng.fill(&mut raw).is_err() {
                continue;
            }
            let agent = AgentKey {
                pid: i32::from_be_bytes([raw[0] & 0x7f, raw[1], raw[2], raw[3]]),
                secret: i32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(agent) {
                slot.insert(Target { key, resource, withdraw: Arc::default() });
                return agent;
            }
        }
    }

    /// What a cancel request for this session signals (a held statement listens to it).
    pub fn withdrawals(&self, key: AgentKey) -> Option<Arc<tokio::sync::Notify>> {
        self.keys().get(&key).map(|t| t.withdraw.clone())
    }

    pub fn remove(&self, key: AgentKey) {
        self.keys().remove(&key);
    }

    /// Forward a cancel request; an unknown key is ignored, as PostgreSQL itself does.
    pub async fn cancel(&self, key: AgentKey) {
        let target = self.keys().get(&key).map(|t| {
            // Only a statement waiting right now is withdrawn (no permit is stored for later).
            t.withdraw.notify_waiters();
            (t.key, t.resource.clone())
        });
        let Some((upstream, resource)) = target else {
            tracing::info!("cancel request with an unknown key ignored");
            return;
        };
        if let Err(e) = send_cancel(&resource, upstream).await {
            tracing::warn!(resource = %resource.name, error = %e, "cancel request could not be forwarded");
        }
    }
}

async fn send_cancel(resource: &PgResource, key: UpstreamKey) -> Result<(), super::upstream::UpstreamError> {
    let mut stream = super::upstream::open_stream(resource).await?;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.secret, &mut buf);
    stream.write_all(&buf).await.map_err(super::upstream::UpstreamError::Io)?;
    stream.flush().await.map_err(super::upstream::UpstreamError::Io)?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}
