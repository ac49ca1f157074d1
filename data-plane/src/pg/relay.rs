//! The relay: agent → upstream with every command judged and recorded before it is forwarded
//! (`frontend`), upstream → agent with every result matched to its command, masked, and
//! recorded after it is delivered (`backend`).
//!
//! Both directions run concurrently (so neither side can deadlock the other by filling a socket
//! buffer) and share only [`Shared`]: the queue of responses the upstream still owes, with the
//! names (prepared statements, portals) the server confirmed.

mod backend;
mod frontend;
mod guard;
mod hold;
mod outbox;
mod tracker;

pub use guard::Guard;

use super::messages::{self, Severity};
use super::session::{AgentConn, ADMIN_SHUTDOWN, SYSTEM_ERROR};
use super::upstream::Upstream;
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use std::sync::{Mutex, MutexGuard};
use tokio::io::AsyncWriteExt;
use tollgate_shared::event::{kind, EndReason, ExpiryReason};
use tracker::Tracker;

/// How a relay ended.
pub struct RelayOutcome {
    pub reason: EndReason,
    pub detail: Option<String>,
    pub commands: u64,
}

/// Why one direction stopped, and what (if anything) to tell the agent.
pub struct Stop {
    reason: EndReason,
    detail: Option<String>,
    notify: Option<Bytes>,
}

impl Stop {
    fn closed(reason: EndReason) -> Self {
        Stop { reason, detail: None, notify: None }
    }

    fn io(reason: EndReason, e: std::io::Error) -> Self {
        Stop { reason, detail: Some(e.to_string()), notify: None }
    }

    fn refuse(reason: EndReason, code: &str, message: String) -> Self {
        let notify = Some(messages::error_response(Severity::Fatal, code, &message));
        Stop { reason, detail: Some(message), notify }
    }
}

/// What both directions share.
pub struct Shared {
    tracker: Mutex<Tracker>,
    /// Woken each time the upstream side has handled a batch of responses.
    answered: tokio::sync::Notify,
    /// Overlapped recording: commands go upstream while their events are being stored...
    overlapped: bool,
    /// ...and these are the stores not yet confirmed; no response reaches the agent before
    /// every store submitted ahead of it is.
    unacked: Mutex<Vec<crate::recorder::Stored>>,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unacked(&self) -> MutexGuard<'_, Vec<crate::recorder::Stored>> {
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What ends a session from outside: the node shutting down, a person ending it.
pub struct Ends {
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub stop: crate::session::stops::StopWatch,
}

pub async fn run(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    recording: crate::config::Recording,
    agent: &mut AgentConn,
    upstream: &mut Upstream,
    ends: Ends,
) -> RelayOutcome {
    let Ends { mut shutdown, mut stop } = ends;
    let shared = Shared {
        tracker: Mutex::new(Tracker::default()),
        answered: tokio::sync::Notify::new(),
        overlapped: recording == crate::config::Recording::Overlapped,
        unacked: Mutex::new(Vec::new()),
    };
    // Messages the proxy itself sends the agent mid-session (a held statement's notice).
    let (inject, injected) = tokio::sync::mpsc::channel(4);
    let stop = {
        let to_upstream =
            frontend::Frontend::new(recorder, guard, &shared, &mut agent.reader, &mut upstream.writer, inject);
        let to_agent = backend::run(recorder, guard, &shared, &mut upstream.reader, &mut agent.writer, injected);
        tokio::select! {
            stop = to_upstream.run() => stop,
            stop = to_agent => stop,
            _ = shutdown.wait_for(|stop| *stop) => Stop::refuse(
                EndReason::Shutdown,
                ADMIN_SHUTDOWN,
                "tollgate: the proxy is shutting down; reconnect to continue".into(),
            ),
            by = stop.requested() => Stop {
                detail: Some(by.to_string()),
                ..Stop::refuse(EndReason::EndedByPerson, ADMIN_SHUTDOWN, format!("tollgate: this session was {by}"))
            },
        }
    };
    if let Some(frame) = &stop.notify {
        let _ = agent.writer.write_all(frame).await;
        let _ = agent.writer.flush().await;
    }
    // Overlapped recording: stores the backend did not get to wait for (the agent left, or
    // the session was stopped) are waited for here, so a command forwarded without its event
    // stored ends the session as a recording failure, not a clean close.
    let mut stop = stop;
    let unacked = std::mem::take(&mut *shared.unacked());
    for stored in unacked {
        if let Err(e) = stored.wait().await {
            tracing::warn!(session = %recorder.session(), error = %e, "a forwarded command's event was not stored");
            stop.reason = EndReason::RecordingFailed;
            stop.detail = Some(e.to_string());
        }
    }
    let (unfinished, commands, waiting) = {
        let mut t = shared.tracker();
        (t.drain_unfinished(), t.commands, t.waiting.take())
    };
    if let Some(approval_id) = waiting {
        expire(recorder, approval_id, ExpiryReason::SessionEnded).await;
    }
    for result in unfinished {
        if let Ok(event) = recorder.seal(kind::COMMAND_RESULT, &result) {
            recorder.background(event);
        }
    }
    RelayOutcome { reason: stop.reason, detail: stop.detail, commands }
}

async fn expire(recorder: &SessionRecorder, approval_id: uuid::Uuid, reason: ExpiryReason) {
    crate::session::hold::record_expiry(recorder, approval_id, reason);
}
