//! People ending live sessions. One subscription per proxy to `session.end_requested` events
//! (published by the control plane, which checks who may end a session before it signs one),
//! dispatched to the session they name when this node holds it. A request that arrives before
//! its session watches (it is listed as live once recorded as started, a moment before its
//! proxy has logged in upstream) is kept for a few minutes and applied when the watch begins.
//!
//! Trust: a request counts only with the control plane's signature; anything else on the
//! subject is refused and counted, as decisions are.

use crate::control::ControlTrust;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tollgate_shared::event::{kind, Envelope, SessionEndRequested};
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
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    watching: HashMap<Uuid, watch::Sender<Option<EndedBy>>>,
    /// Requests for sessions not watched (yet), newest last.
    early: std::collections::VecDeque<(Uuid, EndedBy, std::time::Instant)>,
}

/// How long a request for a session this node does not watch is kept, and how many are.
const EARLY_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const EARLY_MAX: usize = 1024;

impl SessionStops {
    /// Subscribe and dispatch until the proxy stops (the task ends with the hub).
    pub async fn start(
        client: async_nats::Client,
        trust: Arc<ControlTrust>,
    ) -> anyhow::Result<(Arc<SessionStops>, tokio::task::JoinHandle<()>)> {
        let stops = Arc::new(SessionStops::default());
        let task = crate::control::follow_signed(
            &client,
            names::session_ends_subject(),
            trust,
            "session end request",
            Arc::downgrade(&stops),
            SessionStops::dispatch,
        )
        .await?;
        Ok((stops, task))
    }

    fn dispatch(&self, bytes: &[u8]) {
        let event = match serde_json::from_slice::<Envelope<SessionEndRequested>>(bytes) {
            Ok(event) if event.kind == kind::SESSION_END_REQUESTED => event,
            _ => {
                tracing::warn!("unreadable or mistyped session.end_requested event ignored");
                return;
            }
        };
        let session = event.payload.session_id;
        let by = EndedBy { person: event.agent.name, reason: event.payload.reason };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.watching.get(&session) {
            Some(watching) => {
                tracing::info!(%session, by = %by, "a person ends the session");
                let _ = watching.send(Some(by));
            }
            None => {
                let now = std::time::Instant::now();
                sessions.early.retain(|(_, _, at)| now.duration_since(*at) < EARLY_TTL);
                if sessions.early.len() >= EARLY_MAX {
                    sessions.early.pop_front();
                }
                sessions.early.push_back((session, by, now));
            }
        }
    }

    /// Watch for a request to end `session`; stops watching when the `StopWatch` is dropped.
    pub fn watch(self: &Arc<Self>, session: Uuid) -> StopWatch {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let early = sessions
            .early
            .iter()
            .position(|(id, _, at)| *id == session && now.duration_since(*at) < EARLY_TTL)
            .and_then(|i| sessions.early.remove(i))
            .map(|(_, by, _)| by);
        if let Some(by) = &early {
            tracing::info!(%session, by = %by, "a person ended the session before it was watched");
        }
        let (tx, rx) = watch::channel(early);
        sessions.watching.insert(session, tx);
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
        self.stops.sessions.lock().unwrap_or_else(|p| p.into_inner()).watching.remove(&self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(session: Uuid, person: &str, kind: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": Uuid::now_v7(), "type": kind, "v": 1, "at": "2026-12-03T00:00:00Z", "session": Uuid::now_v7(),
            "seq": 0, "prev": "", "node": "control",
            "agent": { "issuer": "i", "subject": person, "name": person, "groups": [], "attributes": {} },
            "resource": { "name": "demo", "kind": "postgres" },
            "payload": { "session_id": session, "channel": "rest", "reason": "why" }
        }))
        .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_request_before_the_watch_is_applied_when_it_begins_and_only_to_its_session() {
        let stops = Arc::new(SessionStops::default());
        let (early, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut watching_other = stops.watch(other);
        stops.dispatch(&request(early, "ada", kind::SESSION_END_REQUESTED));
        // Another kind, even signed, ends nothing.
        stops.dispatch(&request(other, "mallory", kind::APPROVAL_DECIDED));
        let mut watch = stops.watch(early);
        let by = tokio::time::timeout(std::time::Duration::from_secs(1), watch.requested()).await.expect("at once");
        assert_eq!(by, EndedBy { person: "ada".into(), reason: Some("why".into()) });
        let none = tokio::time::timeout(std::time::Duration::from_millis(50), watching_other.requested()).await;
        assert!(none.is_err(), "the other session goes on");
        drop(watch);
        assert!(!stops.sessions.lock().unwrap_or_else(|p| p.into_inner()).watching.contains_key(&early));
    }
}
