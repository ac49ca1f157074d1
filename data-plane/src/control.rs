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
