//! Held commands waiting for people. One subscription per proxy to `approval.decided` events
//! (published by the control plane on the event stream's subject), dispatched to the session
//! holding the request. A session registers before it publishes its request, so no decision
//! can arrive unseen.
//!
//! Trust: a decision counts only with the control plane's signature (it checks who may decide
//! before it signs and publishes one); anything else on the subject is refused and counted.

use crate::control::ControlTrust;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;
use tollgate_shared::control::{ControlKind, SIGNATURE_HEADER};
use tollgate_shared::event::{ApprovalDecided, Envelope};
use tollgate_shared::identity::AgentIdentity;
use tollgate_shared::names;
use uuid::Uuid;

/// One person's decision, as the holding session receives it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub decided: ApprovalDecided,
    pub by: AgentIdentity,
}

#[derive(Default)]
pub struct ApprovalHub {
    waiters: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Decision>>>,
}

impl ApprovalHub {
    /// Subscribe and dispatch until the proxy stops (the task ends with the hub).
    pub async fn start(
        client: async_nats::Client,
        trust: Arc<ControlTrust>,
    ) -> anyhow::Result<(Arc<ApprovalHub>, tokio::task::JoinHandle<()>)> {
        let mut decisions = client.subscribe(names::decisions_subject()).await?;
        let hub = Arc::new(ApprovalHub::default());
        let weak: Weak<ApprovalHub> = Arc::downgrade(&hub);
        let task = tokio::spawn(async move {
            while let Some(message) = decisions.next().await {
                let Some(hub) = weak.upgrade() else { return };
                // Only decisions the control plane signed count.
                let signature = message.headers.as_ref().and_then(|h| h.get(SIGNATURE_HEADER)).map(|v| v.as_str());
                match signature {
                    Some(signature) => match trust.key.verify(ControlKind::Event, &message.payload, signature) {
                        Ok(()) => hub.dispatch(&message.payload),
                        Err(e) => trust.refuse(&format!("approval decision {e}")),
                    },
                    None => trust.refuse("approval decision not signed"),
                }
            }
        });
        Ok((hub, task))
    }

    fn dispatch(&self, bytes: &[u8]) {
        let event = match serde_json::from_slice::<Envelope<ApprovalDecided>>(bytes) {
            // Every control event is signed alike: only this kind decides.
            Ok(event) if event.kind == tollgate_shared::event::kind::APPROVAL_DECIDED => event,
            _ => {
                tracing::warn!("unreadable or mistyped approval.decided event ignored");
                return;
            }
        };
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiter) = waiters.get(&event.payload.approval_id) {
            let _ = waiter.send(Decision { decided: event.payload, by: event.agent });
        }
    }

    /// Start listening for decisions on `approval_id`; stops when the `Waiter` is dropped.
    pub fn wait(self: &Arc<Self>, approval_id: Uuid) -> Waiter {
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(approval_id, tx);
        Waiter { hub: self.clone(), approval_id, rx }
    }
}

pub struct Waiter {
    hub: Arc<ApprovalHub>,
    approval_id: Uuid,
    rx: mpsc::UnboundedReceiver<Decision>,
}

impl Waiter {
    /// The next decision; pending forever if the hub stopped (the caller's deadline ends it).
    pub async fn next(&mut self) -> Decision {
        match self.rx.recv().await {
            Some(decision) => decision,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.hub.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.approval_id);
    }
}
