//! People ending live sessions. One subscription per proxy to `session.end_requested` events
//! (published by the control plane, which checks who may end a session before it signs one),
//! dispatched to the session they name when this node holds it. A session watches from the
//! moment it is recorded as started until it ends.
//!
//! Trust: a request counts only with the control plane's signature; anything else on the
//! subject is refused and counted, as decisions are.

use crate::control::ControlTrust;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;
use tollgate_shared::control::{ControlKind, SIGNATURE_HEADER};
use tollgate_shared::event::{Envelope, SessionEndRequested};
use tollgate_shared::names;
use uuid::Uuid;

/// Who ended a session, and why: what the agent is told and the session's end records.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedBy {
    pub person: String,
    pub reason: Option<String>,
}

impl std::fmt::Display for EndedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ended by {}", self.person)?;
        match &self.reason {
            Some(reason) => write!(f, ": {reason}"),
            None => Ok(()),
        }
    }
}

#[derive(Default)]
pub struct SessionStops {
    sessions: Mutex<HashMap<Uuid, watch::Sender<Option<EndedBy>>>>,
}

impl SessionStops {
    /// Subscribe and dispatch until the proxy stops (the task ends with the hub).
    pub async fn start(
        client: async_nats::Client,
        trust: Arc<ControlTrust>,
    ) -> anyhow::Result<(Arc<SessionStops>, tokio::task::JoinHandle<()>)> {
        let mut requests = client.subscribe(names::session_ends_subject()).await?;
        let stops = Arc::new(SessionStops::default());
        let weak: Weak<SessionStops> = Arc::downgrade(&stops);
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(stops) = weak.upgrade() else { return };
                let signature = message.headers.as_ref().and_then(|h| h.get(SIGNATURE_HEADER)).map(|v| v.as_str());
                match signature {
                    Some(signature) => match trust.key.verify(ControlKind::Event, &message.payload, signature) {
                        Ok(()) => stops.dispatch(&message.payload),
                        Err(e) => trust.refuse(&format!("session end request {e}")),
                    },
                    None => trust.refuse("session end request not signed"),
                }
            }
        });
        Ok((stops, task))
    }

    fn dispatch(&self, bytes: &[u8]) {
        let Ok(event) = serde_json::from_slice::<Envelope<SessionEndRequested>>(bytes) else {
            tracing::warn!("unreadable session.end_requested event ignored");
            return;
        };
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = sessions.get(&event.payload.session_id) {
            let by = EndedBy { person: event.agent.name, reason: event.payload.reason };
            tracing::info!(session = %event.payload.session_id, by = %by, "a person ends the session");
            let _ = session.send(Some(by));
        }
    }

    /// Watch for a request to end `session`; stops watching when the `StopWatch` is dropped.
    pub fn watch(self: &Arc<Self>, session: Uuid) -> StopWatch {
        let (tx, rx) = watch::channel(None);
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(session, tx);
        StopWatch { stops: self.clone(), session, rx }
    }
}

pub struct StopWatch {
    stops: Arc<SessionStops>,
    session: Uuid,
    rx: watch::Receiver<Option<EndedBy>>,
}

impl StopWatch {
    /// The request to end the session, when one arrives (pending until then).
    pub async fn requested(&mut self) -> EndedBy {
        let by = self.rx.wait_for(Option::is_some).await.ok().and_then(|by| by.clone());
        match by {
            Some(by) => by,
            // The hub is gone (the node is stopping): shutdown ends the session instead.
            None => std::future::pending().await,
        }
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.stops.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.session);
    }
}
