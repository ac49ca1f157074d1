//! The relay: agent → upstream with every command recorded before it is forwarded, upstream →
//! agent with every result matched to its command and recorded after it is delivered.
//!
//! Both directions run concurrently (so neither side can deadlock the other by filling a socket
//! buffer) and share only the [`Tracker`], the queue of responses the upstream still owes.

mod hold;
mod tracker;

use super::classify::ClassifyCache;
use super::frame::{Frame, FrameReader};
use super::messages::{self, Severity};
use super::session::{
    AgentConn, ADMIN_SHUTDOWN, FEATURE_NOT_SUPPORTED, INSUFFICIENT_PRIVILEGE, PROTOCOL_VIOLATION, SYSTEM_ERROR,
};
use super::upstream::Upstream;
use crate::approvals::ApprovalHub;
use crate::grants::StandingApprovals;
use crate::policy::PolicyReceiver;
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use hold::{Hold, Release};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tollgate_shared::event::{
    kind, ApprovalExpired, Command, Decision, EndReason, ExpiryReason, Protocol, SealedEvent,
};
use tollgate_shared::identity::AgentIdentity;
use tollgate_shared::mask::{Masker, Tally};
use tollgate_shared::policy::{Access, Denial};
use tracker::{Expect, Pending, Tracker};

/// How a relay ended.
pub struct RelayOutcome {
    pub reason: EndReason,
    pub detail: Option<String>,
    pub commands: u64,
}

/// Why one direction stopped, and what (if anything) to tell the agent.
struct Stop {
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

pub async fn run(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    agent: &mut AgentConn,
    upstream: &mut Upstream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> RelayOutcome {
    let tracker = Mutex::new(Tracker::default());
    // Messages the proxy itself sends the agent mid-session (a held statement's notice).
    let (inject, injected) = tokio::sync::mpsc::channel(4);
    let stop = {
        let to_upstream = agent_to_upstream(recorder, guard, &tracker, &mut agent.reader, &mut upstream.writer, inject);
        let to_agent = upstream_to_agent(recorder, guard, &tracker, &mut upstream.reader, &mut agent.writer, injected);
        tokio::select! {
            stop = to_upstream => stop,
            stop = to_agent => stop,
            _ = shutdown.wait_for(|stop| *stop) => Stop::refuse(
                EndReason::Shutdown,
                ADMIN_SHUTDOWN,
                "tollgate: the proxy is shutting down; reconnect to continue".into(),
            ),
        }
    };
    if let Some(frame) = &stop.notify {
        let _ = agent.writer.write_all(frame).await;
        let _ = agent.writer.flush().await;
    }
    let (unfinished, commands, waiting) = {
        let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
        (t.drain_unfinished(), t.commands, t.waiting.take())
    };
    if let Some(approval_id) = waiting {
        expire(recorder, approval_id, ExpiryReason::SessionEnded).await;
    }
    for result in unfinished {
        if let Ok(event) = recorder.seal(kind::COMMAND_RESULT, &result) {
            recorder.publisher().background(event).await;
        }
    }
    RelayOutcome { reason: stop.reason, detail: stop.detail, commands }
}

/// What judges each statement: its classification (cached by text) against the live policy's
/// guardrails and approval rules for this resource and the session's grant.
pub struct Guard<'a> {
    pub classifier: &'a ClassifyCache,
    pub policy: &'a PolicyReceiver,
    pub resource: &'a str,
    pub access: Access,
    /// The agent (approval rules may hold only some groups; standing approvals name agents).
    pub agent: &'a AgentIdentity,
    pub standing: &'a StandingApprovals,
    /// Signalled by the agent's cancel requests: a held statement is withdrawn.
    pub withdraw: Option<Arc<tokio::sync::Notify>>,
    pub approvals: &'a Arc<ApprovalHub>,
    pub approval_url: Option<&'a str>,
}

/// A statement judged: its record, and what happens to it.
struct Judged {
    command: Command,
    /// Denied: the ErrorResponse the agent gets.
    refusal: Option<Bytes>,
    /// Held until people approve it.
    hold: Option<Hold>,
}

impl Guard<'_> {
    /// The live masking for this resource (every detector when no policy is loaded).
    fn masker(&self) -> Arc<Masker> {
        match self.policy.borrow().as_ref() {
            Some(snapshot) => snapshot.masker(self.resource),
            None => Masker::strict(),
        }
    }

    fn judge(
        &self,
        protocol: Protocol,
        statement: &str,
        params: Option<Vec<Option<String>>>,
        prepared: Option<String>,
    ) -> Judged {
        let classified = self.classifier.classify(statement);
        let policy = self.policy.borrow().clone();
        let resource = policy.as_ref().and_then(|p| p.document.resource(self.resource));
        let denial = match (classified.as_ref(), &policy, resource) {
            // Refuse what cannot be parsed: nobody can say what it would do.
            (Err(e), _, _) => Some(Denial { rule: "unparsable".into(), reason: e.to_string() }),
            (Ok(_), None, _) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
            (Ok(_), Some(_), None) => {
                Some(Denial { rule: "resource_not_in_policy".into(), reason: "the resource left the policy".into() })
            }
            (Ok(c), Some(_), Some(resource)) => resource.deny(self.access, c),
        };
        let rule = match (&denial, classified.as_ref(), resource) {
            (None, Ok(c), Some(resource)) => resource.hold(&self.agent.groups, c).map(|rule| (rule, c)),
            _ => None,
        };
        // A standing approval for this agent, resource and classes lets it run unheld.
        let standing = rule.as_ref().and_then(|(_, c)| {
            let classes: Vec<&str> = c.classes.iter().map(String::as_str).collect();
            self.standing.covering(&self.agent.issuer, &self.agent.name, self.resource, &classes)
        });
        let hold = match (&rule, &standing) {
            (Some((rule, _)), None) => Some(Hold::new(rule)),
            _ => None,
        };
        let (classification, parse_error) = match classified.as_ref() {
            Ok(c) => (Some(c.clone()), None),
            Err(e) => (None, Some(e.0.clone())),
        };
        // The record holds the statement masked; the upstream gets it as the agent sent it.
        let masker = match &policy {
            Some(snapshot) => snapshot.masker(self.resource),
            None => Masker::strict(),
        };
        let mut tally = Tally::default();
        let statement = masker.mask_str(statement, None, &mut tally).into_owned();
        let params = params.map(|params| {
            params.into_iter().map(|p| p.map(|p| masker.mask_str(&p, None, &mut tally).into_owned())).collect()
        });
        let parse_error = parse_error.map(|e| masker.mask_str(&e, None, &mut tally).into_owned());
        let refusal = denial.as_ref().map(|d| {
            let message =
                format!("tollgate: statement denied by rule {} on resource {}: {}", d.rule, self.resource, d.reason);
            messages::error_response(Severity::Error, INSUFFICIENT_PRIVILEGE, &message)
        });
        let (decision, rule_name) = match (&denial, &hold, &rule) {
            (Some(d), _, _) => (Decision::Deny, Some(d.rule.clone())),
            (None, Some(h), _) => (Decision::Hold, Some(format!("approval:{}", h.rule.name))),
            (None, None, Some((r, _))) => (Decision::Allow, Some(format!("standing_approval:{}", r.name))),
            (None, None, None) => (Decision::Allow, None),
        };
        let command = Command {
            protocol,
            statement,
            params,
            prepared,
            classification,
            parse_error,
            decision,
            rule: rule_name,
            policy_version: policy.map(|p| p.version),
            approval_id: hold.as_ref().map(|h| h.approval_id).or(standing.map(|s| s.approval_id)),
            masked: tally.into_counts(),
        };
        Judged { command, refusal, hold }
    }
}

/// A portal's statement and parameters, kept from Bind until Execute.
struct Portal {
    statement: Option<Arc<str>>,
    prepared: String,
    params: Vec<Option<String>>,
    result_formats: Vec<i16>,
}

/// What one pass of the agent-to-upstream loop has gathered and not yet sent.
#[derive(Default)]
struct Outbox {
    events: Vec<SealedEvent>,
    expected: Vec<Expect>,
    frames: Vec<Bytes>,
}

impl Outbox {
    /// Record, then forward: the command events are made durable first (the rule that matters
    /// most: no command reaches the upstream before its event is stored), then the tracker
    /// learns what the upstream will owe, then the frames go.
    async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        recorder: &SessionRecorder,
        tracker: &Mutex<Tracker>,
        writer: &mut BufWriter<W>,
    ) -> Result<(), Stop> {
        if !self.events.is_empty() {
            if let Err(e) = recorder.publisher().durable(&self.events).await {
                tracing::warn!(session = %recorder.session(), error = %e, "command not recorded; closing the session without running it");
                return Err(Stop::refuse(
                    EndReason::RecordingFailed,
                    SYSTEM_ERROR,
                    "tollgate: statement refused: it could not be recorded (audit stream unavailable); nothing was executed".into(),
                ));
            }
            self.events.clear();
        }
        tracker.lock().unwrap_or_else(|p| p.into_inner()).expect(self.expected.drain(..));
        for bytes in self.frames.drain(..) {
            if let Err(e) = writer.write_all(&bytes).await {
                return Err(Stop::io(EndReason::UpstreamClosed, e));
            }
        }
        writer.flush().await.map_err(|e| Stop::io(EndReason::UpstreamClosed, e))
    }

    /// Seal a command and bind it to the `Exec` just queued for it.
    fn record(&mut self, recorder: &SessionRecorder, command: &Command) -> Result<(), Stop> {
        let event = self.seal(recorder, kind::COMMAND, command)?;
        if let Some(Expect::Exec(pending)) = self.expected.iter_mut().rev().find(|e| matches!(e, Expect::Exec(_))) {
            pending.bind(event.id, event.seq);
        }
        Ok(())
    }

    /// Seal an event to publish with this pass.
    fn seal<P: serde::Serialize>(
        &mut self,
        recorder: &SessionRecorder,
        kind: &'static str,
        payload: &P,
    ) -> Result<SealedEvent, Stop> {
        let event = recorder
            .seal(kind, payload)
            .map_err(|e| Stop::refuse(EndReason::RecordingFailed, SYSTEM_ERROR, format!("tollgate: {e}")))?;
        self.events.push(event.clone());
        Ok(event)
    }
}

/// A judged statement's frame, the stand-in sent instead when it is refused, and what the
/// upstream will owe for it.
struct Held<'a> {
    frame: &'a Bytes,
    stand_in: Bytes,
    protocol: Protocol,
    pending: Pending,
}

#[allow(clippy::too_many_arguments)]
async fn hold_then_forward<R, W>(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    tracker: &Mutex<Tracker>,
    reader: &mut FrameReader<R>,
    writer: &mut BufWriter<W>,
    inject: &tokio::sync::mpsc::Sender<Bytes>,
    later: &mut Vec<Frame>,
    outbox: &mut Outbox,
    held: Held<'_>,
    judged: Judged,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Judged { command, hold, .. } = judged;
    let Some(hold) = hold else { return Ok(()) };
    // Listen before asking, so no decision can slip by; record and forward what came before.
    let mut waiter = guard.approvals.wait(hold.approval_id);
    // The held command's own Exec is queued only once the hold ends: bind it then.
    let event = outbox.seal(recorder, kind::COMMAND, &command)?;
    outbox.seal(recorder, kind::APPROVAL_REQUESTED, &hold.request(&command, event.id))?;
    outbox.flush(recorder, tracker, writer).await?;
    let _ = inject.send(hold.notice(guard.approval_url)).await;
    tracing::info!(session = %recorder.session(), approval = %hold.approval_id, rule = %hold.rule.name, "statement held for approval");

    let mut pending = held.pending;
    pending.bind(event.id, event.seq);
    // Should the session end while waiting (shutdown), `run` records the request's end.
    tracker.lock().unwrap_or_else(|p| p.into_inner()).waiting = Some(hold.approval_id);
    let release = hold::await_release(&hold, &mut waiter, reader, later, guard.withdraw.as_deref()).await;
    tracker.lock().unwrap_or_else(|p| p.into_inner()).waiting = None;
    let (frame, pending) = match release {
        Release::Run { approvers } => {
            tracing::info!(session = %recorder.session(), approval = %hold.approval_id, approvers = approvers.len(), "approved; running");
            (held.frame.clone(), pending)
        }
        Release::Refuse { error, expired } => {
            if let Some(reason) = expired {
                expire(recorder, hold.approval_id, reason).await;
            }
            (held.stand_in, pending.replacing_error_with(Some(error)))
        }
        Release::AgentGone => {
            expire(recorder, hold.approval_id, ExpiryReason::SessionEnded).await;
            return Err(Stop::closed(EndReason::ClientClosed));
        }
    };
    outbox.frames.push(frame);
    outbox.expected.push(Expect::Exec(Box::new(pending)));
    if held.protocol == Protocol::Simple {
        outbox.expected.push(Expect::Sync);
    }
    Ok(())
}

async fn expire(recorder: &SessionRecorder, approval_id: uuid::Uuid, reason: ExpiryReason) {
    match recorder.seal(kind::APPROVAL_EXPIRED, &ApprovalExpired { approval_id, reason }) {
        Ok(event) => recorder.publisher().background(event).await,
        Err(e) => tracing::error!(error = %e, "cannot seal approval.expired"),
    }
}

async fn agent_to_upstream<R, W>(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    tracker: &Mutex<Tracker>,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    inject: tokio::sync::mpsc::Sender<Bytes>,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut statements: HashMap<String, Arc<str>> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    let mut frames: Vec<Frame> = Vec::new();
    // Frames that arrived while a statement was held, to handle before reading more.
    let mut later: Vec<Frame> = Vec::new();
    let mut outbox = Outbox::default();
    loop {
        frames.clear();
        if later.is_empty() {
            match reader.read_frames(&mut frames).await {
                Ok(true) => {}
                Ok(false) => return Stop::closed(EndReason::ClientClosed),
                Err(e) => return Stop::io(EndReason::ClientClosed, e),
            }
        } else {
            std::mem::swap(&mut frames, &mut later);
        }
        let mut terminate = false;
        for frame in &frames {
            let body = frame.body();
            let malformed = |e: messages::Malformed| {
                Stop::refuse(EndReason::ProtocolViolation, PROTOCOL_VIOLATION, format!("tollgate: {e}"))
            };
            if !matches!(frame.tag(), b'Q' | b'E') {
                outbox.frames.push(frame.bytes.clone());
            }
            let statement = match frame.tag() {
                b'Q' => {
                    let sql = match messages::query_message(body) {
                        Ok(s) => s,
                        Err(e) => return malformed(e),
                    };
                    let judged = guard.judge(Protocol::Simple, sql, None, None);
                    let held = Held {
                        frame: &frame.bytes,
                        stand_in: messages::denied_query(),
                        protocol: Protocol::Simple,
                        pending: Pending::simple(),
                    };
                    Some((judged, held))
                }
                b'P' => {
                    let (name, sql) = match messages::parse_message(body) {
                        Ok(p) => p,
                        Err(e) => return malformed(e),
                    };
                    statements.insert(name.to_owned(), Arc::from(sql));
                    None
                }
                b'B' => {
                    let bind = match messages::bind_message(body) {
                        Ok(b) => b,
                        Err(e) => return malformed(e),
                    };
                    let info = Portal {
                        statement: statements.get(bind.statement).cloned(),
                        prepared: bind.statement.to_owned(),
                        params: bind.params,
                        result_formats: bind.result_formats,
                    };
                    portals.insert(bind.portal.to_owned(), info);
                    None
                }
                b'E' => {
                    let portal = match messages::execute_message(body) {
                        Ok(p) => p,
                        Err(e) => return malformed(e),
                    };
                    // An unknown portal still gets a record: the upstream will answer with the error.
                    let info = portals.get(portal);
                    let statement = info.and_then(|p| p.statement.as_deref()).unwrap_or("");
                    let params = info.map(|p| p.params.clone());
                    let prepared = info.map(|p| p.prepared.clone()).filter(|n| !n.is_empty());
                    let formats = info.map(|p| p.result_formats.clone()).unwrap_or_default();
                    let pending = Pending::extended(info.and_then(|p| p.statement.clone()), formats);
                    let judged = guard.judge(Protocol::Extended, statement, params, prepared);
                    let held = Held {
                        frame: &frame.bytes,
                        stand_in: messages::denied_parse(),
                        protocol: Protocol::Extended,
                        pending,
                    };
                    Some((judged, held))
                }
                b'C' => {
                    match messages::close_message(body) {
                        Ok((b'S', name)) => {
                            statements.remove(name);
                        }
                        Ok((_, name)) => {
                            portals.remove(name);
                        }
                        Err(e) => return malformed(e),
                    }
                    None
                }
                b'D' => {
                    // Its answer (RowDescription or NoData) tells what a later Execute returns.
                    let described = match messages::describe_message(body) {
                        Ok((b'S', name)) => statements.get(name).cloned(),
                        Ok((_, name)) => portals.get(name).and_then(|p| p.statement.clone()),
                        Err(e) => return malformed(e),
                    };
                    outbox.expected.push(Expect::Describe(described));
                    None
                }
                b'S' => {
                    outbox.expected.push(Expect::Sync);
                    None
                }
                b'c' | b'f' => {
                    outbox.expected.push(Expect::CopyEnd);
                    None
                }
                b'X' => {
                    terminate = true;
                    None
                }
                b'H' | b'd' => None,
                b'F' => {
                    return Stop::refuse(
                        EndReason::ProtocolViolation,
                        FEATURE_NOT_SUPPORTED,
                        "tollgate: fast-path function calls are not supported".into(),
                    )
                }
                other => {
                    return Stop::refuse(
                        EndReason::ProtocolViolation,
                        PROTOCOL_VIOLATION,
                        format!("tollgate: unexpected message type {:?}", other as char),
                    )
                }
            };
            let Some((judged, held)) = statement else { continue };
            if judged.hold.is_some() {
                let step = hold_then_forward(
                    recorder,
                    guard,
                    tracker,
                    reader,
                    &mut writer,
                    &inject,
                    &mut later,
                    &mut outbox,
                    held,
                    judged,
                );
                if let Err(stop) = step.await {
                    return stop;
                }
                continue;
            }
            // A denied statement is replaced by a stand-in the upstream refuses to parse (after a
            // failed Parse the upstream skips to the agent's Sync), as a real failure would be.
            outbox.frames.push(if judged.refusal.is_some() { held.stand_in } else { held.frame.clone() });
            outbox.expected.push(Expect::Exec(Box::new(held.pending.replacing_error_with(judged.refusal.clone()))));
            if held.protocol == Protocol::Simple {
                outbox.expected.push(Expect::Sync);
            }
            if let Err(stop) = outbox.record(recorder, &judged.command) {
                return stop;
            }
        }
        if let Err(stop) = outbox.flush(recorder, tracker, &mut writer).await {
            return stop;
        }
        if terminate {
            return Stop::closed(EndReason::ClientClosed);
        }
    }
}

async fn upstream_to_agent<R, W>(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    tracker: &Mutex<Tracker>,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    mut injected: tokio::sync::mpsc::Receiver<Bytes>,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut frames: Vec<Frame> = Vec::new();
    let mut finished = Vec::new();
    let mut replaced: Vec<(usize, Bytes)> = Vec::new();
    loop {
        frames.clear();
        replaced.clear();
        // The read is cancel-safe (the buffer lives in the reader), so a notice can cut in.
        tokio::select! {
            Some(notice) = injected.recv() => {
                if let Err(e) = writer.write_all(&notice).await {
                    return Stop::io(EndReason::ClientClosed, e);
                }
                if let Err(e) = writer.flush().await {
                    return Stop::io(EndReason::ClientClosed, e);
                }
                continue;
            }
            read = reader.read_frames(&mut frames) => match read {
                Ok(true) => {}
                Ok(false) => return Stop::closed(EndReason::UpstreamClosed),
                Err(e) => return Stop::io(EndReason::UpstreamClosed, e),
            },
        }
        {
            // Masking follows the live policy, batch by batch.
            let masker = guard.masker();
            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            for (i, frame) in frames.iter().enumerate() {
                match t.on_backend(frame, &masker, &mut finished) {
                    Ok(Some(substitute)) => replaced.push((i, substitute)),
                    Ok(None) => {}
                    Err(e) => {
                        return Stop::refuse(
                            EndReason::ProtocolViolation,
                            PROTOCOL_VIOLATION,
                            format!("tollgate: {e}"),
                        );
                    }
                }
            }
        }
        // Masked messages, and the denial in place of the upstream's answer to a stand-in.
        for (i, frame) in frames.iter().enumerate() {
            let bytes = match replaced.iter().find(|(at, _)| *at == i) {
                Some((_, substitute)) => substitute,
                None => &frame.bytes,
            };
            if let Err(e) = writer.write_all(bytes).await {
                return Stop::io(EndReason::ClientClosed, e);
            }
        }
        if let Err(e) = writer.flush().await {
            return Stop::io(EndReason::ClientClosed, e);
        }
        // Results are recorded after the agent has them: off the critical path.
        for result in finished.drain(..) {
            match recorder.seal(kind::COMMAND_RESULT, &result) {
                Ok(event) => recorder.publisher().background(event).await,
                Err(e) => tracing::error!(error = %e, "cannot seal command.result"),
            }
        }
    }
}
