//! Held commands waiting for people. One subscription per proxy to `approval.decided` events
//! (published by the control plane on the event stream's subject), dispatched to the session
//! holding the request. A session registers before it publishes its request, so no decision
//! can arrive unseen.
//!
//! Trust: a decision counts only with the control plane's signature (it checks who may decide
//! before it signs and publishes one); anything else on the subject is refused and counted.

use crate::control::ControlTrust;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
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
        let hub = Arc::new(ApprovalHub::default());
        let task = crate::control::follow_signed(
            &client,
            names::decisions_subject(),
            trust,
            "approval decision",
            Arc::downgrade(&hub),
            ApprovalHub::dispatch,
        )
        .await?;
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
