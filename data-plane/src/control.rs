//! Trust in the control plane: its public key, configured on every proxy, verifies each
//! control message (policy versions, standing approvals, approval decisions). What does not
//! verify is refused, logged and counted; the node keeps enforcing what it had.

use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_shared::control::ControlPublicKey;

pub struct ControlTrust {
    pub key: ControlPublicKey,
    refused: AtomicU64,
}

impl ControlTrust {
    pub fn new(key: ControlPublicKey) -> Self {
        ControlTrust { key, refused: AtomicU64::new(0) }
    }

    /// A control message that did not verify: logged and counted, otherwise ignored.
    pub fn refuse(&self, what: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::error!(refused = %what, "control message refused; keeping what this node had");
    }

    /// Control messages refused since the node started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Follow `subject` until `hub` is dropped: every message the control plane signed goes to
/// `deliver`; anything else is refused and counted (`what` names it in the log).
pub async fn follow_signed<T: Send + Sync + 'static>(
    client: &async_nats::Client,
    subject: String,
    trust: std::sync::Arc<ControlTrust>,
    what: &'static str,
    hub: std::sync::Weak<T>,
    deliver: fn(&T, &[u8]),
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    use tollgate_shared::control::{ControlKind, SIGNATURE_HEADER};
    let mut messages = client.subscribe(subject).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let Some(hub) = hub.upgrade() else { return };
            let signature = message.headers.as_ref().and_then(|h| h.get(SIGNATURE_HEADER)).map(|v| v.as_str());
            match signature {
                Some(signature) => match trust.key.verify(ControlKind::Event, &message.payload, signature) {
                    Ok(()) => deliver(&hub, &message.payload),
                    Err(e) => trust.refuse(&format!("{what} {e}")),
                },
                None => trust.refuse(&format!("{what} not signed")),
            }
        }
    }))
}
