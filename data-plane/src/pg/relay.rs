//! The relay: agent → upstream with every command recorded before it is forwarded, upstream →
//! agent with every result matched to its command and recorded after it is delivered.
//!
//! Both directions run concurrently (so neither side can deadlock the other by filling a socket
//! buffer) and share only the [`Tracker`], the queue of responses the upstream still owes.

mod tracker;

use super::classify::ClassifyCache;
use super::frame::{Frame, FrameReader};
use super::messages::{self, Severity};
use super::session::{
    AgentConn, ADMIN_SHUTDOWN, FEATURE_NOT_SUPPORTED, INSUFFICIENT_PRIVILEGE, PROTOCOL_VIOLATION, SYSTEM_ERROR,
};
use super::upstream::Upstream;
use crate::policy::PolicyReceiver;
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tollgate_shared::event::{kind, Command, Decision, EndReason, Protocol};
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
    let stop = {
        let to_upstream = agent_to_upstream(recorder, guard, &tracker, &mut agent.reader, &mut upstream.writer);
        let to_agent = upstream_to_agent(recorder, guard, &tracker, &mut upstream.reader, &mut agent.writer);
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
    let (unfinished, commands) = {
        let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
        (t.drain_unfinished(), t.commands)
    };
    for result in unfinished {
        if let Ok(event) = recorder.seal(kind::COMMAND_RESULT, &result) {
            recorder.publisher().background(event).await;
        }
    }
    RelayOutcome { reason: stop.reason, detail: stop.detail, commands }
}

/// What judges each statement: its classification (cached by text) against the live policy's
/// guardrails for this resource and the session's grant.
pub struct Guard<'a> {
    pub classifier: &'a ClassifyCache,
    pub policy: &'a PolicyReceiver,
    pub resource: &'a str,
    pub access: Access,
}

impl Guard<'_> {
    /// The live masking for this resource (every detector when no policy is loaded).
    fn masker(&self) -> Arc<Masker> {
        match self.policy.borrow().as_ref() {
            Some(snapshot) => snapshot.masker(self.resource),
            None => Masker::strict(),
        }
    }

    /// The `command` event for a statement, and the ErrorResponse for the agent when it is denied.
    fn judge(
        &self,
        protocol: Protocol,
        statement: &str,
        params: Option<Vec<Option<String>>>,
        prepared: Option<String>,
    ) -> (Command, Option<Bytes>) {
        let classified = self.classifier.classify(statement);
        let policy = self.policy.borrow().clone();
        let denial = match (classified.as_ref(), &policy) {
            // Refuse what cannot be parsed: nobody can say what it would do.
            (Err(e), _) => Some(Denial { rule: "unparsable".into(), reason: e.to_string() }),
            (Ok(_), None) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
            (Ok(c), Some(policy)) => match policy.document.resource(self.resource) {
                Some(resource) => resource.deny(self.access, c),
                None => Some(Denial {
                    rule: "resource_not_in_policy".into(),
                    reason: "the resource left the policy".into(),
                }),
            },
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
        let command = Command {
            protocol,
            statement,
            params,
            prepared,
            classification,
            parse_error,
            decision: if denial.is_some() { Decision::Deny } else { Decision::Allow },
            rule: denial.map(|d| d.rule),
            policy_version: policy.map(|p| p.version),
            masked: tally.into_counts(),
        };
        (command, refusal)
    }
}

/// A portal's statement and parameters, kept from Bind until Execute.
struct Portal {
    statement: Option<Arc<str>>,
    prepared: String,
    params: Vec<Option<String>>,
    result_formats: Vec<i16>,
}

async fn agent_to_upstream<R, W>(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    tracker: &Mutex<Tracker>,
    reader: &mut FrameReader<R>,
    writer: &mut W,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut statements: HashMap<String, Arc<str>> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut events = Vec::new();
    let mut expected: Vec<Expect> = Vec::new();
    let mut outgoing: Vec<Bytes> = Vec::new();
    loop {
        frames.clear();
        events.clear();
        expected.clear();
        match reader.read_frames(&mut frames).await {
            Ok(true) => {}
            Ok(false) => return Stop::closed(EndReason::ClientClosed),
            Err(e) => return Stop::io(EndReason::ClientClosed, e),
        }
        let mut terminate = false;
        for frame in &frames {
            let body = frame.body();
            let malformed = |e: messages::Malformed| {
                Stop::refuse(EndReason::ProtocolViolation, PROTOCOL_VIOLATION, format!("tollgate: {e}"))
            };
            if !matches!(frame.tag(), b'Q' | b'E') {
                outgoing.push(frame.bytes.clone());
            }
            let command = match frame.tag() {
                b'Q' => {
                    let sql = match messages::query_message(body) {
                        Ok(s) => s,
                        Err(e) => return malformed(e),
                    };
                    let (command, refusal) = guard.judge(Protocol::Simple, sql, None, None);
                    // A denied query is replaced by one the upstream refuses to parse.
                    outgoing.push(if refusal.is_some() { messages::denied_query() } else { frame.bytes.clone() });
                    expected.push(Expect::Exec(Box::new(Pending::simple().replacing_error_with(refusal))));
                    expected.push(Expect::Sync);
                    Some(command)
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
                    let pending = Pending::extended(
                        info.and_then(|p| p.statement.clone()),
                        info.map(|p| p.result_formats.clone()).unwrap_or_default(),
                    );
                    let (command, refusal) = guard.judge(Protocol::Extended, statement, params, prepared);
                    // A denied Execute is replaced by a Parse the upstream refuses: it answers with
                    // an error and skips to the agent's Sync, as it would for a real failure.
                    outgoing.push(if refusal.is_some() { messages::denied_parse() } else { frame.bytes.clone() });
                    expected.push(Expect::Exec(Box::new(pending.replacing_error_with(refusal))));
                    Some(command)
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
                b'S' => {
                    expected.push(Expect::Sync);
                    None
                }
                b'c' | b'f' => {
                    expected.push(Expect::CopyEnd);
                    None
                }
                b'X' => {
                    terminate = true;
                    None
                }
                b'D' => {
                    // Its answer (RowDescription or NoData) tells what a later Execute returns.
                    let described = match messages::describe_message(body) {
                        Ok((b'S', name)) => statements.get(name).cloned(),
                        Ok((_, name)) => portals.get(name).and_then(|p| p.statement.clone()),
                        Err(e) => return malformed(e),
                    };
                    expected.push(Expect::Describe(described));
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
            if let Some(command) = command {
                match recorder.seal(kind::COMMAND, &command) {
                    Ok(event) => {
                        if let Some(Expect::Exec(pending)) =
                            expected.iter_mut().rev().find(|e| matches!(e, Expect::Exec(_)))
                        {
                            pending.bind(event.id, event.seq);
                        }
                        events.push(event);
                    }
                    Err(e) => return Stop::refuse(EndReason::RecordingFailed, SYSTEM_ERROR, format!("tollgate: {e}")),
                }
            }
        }
        // The rule that matters most: no command reaches the upstream before its event is durable.
        if !events.is_empty() {
            if let Err(e) = recorder.publisher().durable(&events).await {
                tracing::warn!(session = %recorder.session(), error = %e, "command not recorded; closing the session without running it");
                return Stop::refuse(
                    EndReason::RecordingFailed,
                    SYSTEM_ERROR,
                    "tollgate: statement refused: it could not be recorded (audit stream unavailable); nothing was executed".into(),
                );
            }
        }
        tracker.lock().unwrap_or_else(|p| p.into_inner()).expect(expected.drain(..));
        for bytes in outgoing.drain(..) {
            if let Err(e) = writer.write_all(&bytes).await {
                return Stop::io(EndReason::UpstreamClosed, e);
            }
        }
        if let Err(e) = writer.flush().await {
            return Stop::io(EndReason::UpstreamClosed, e);
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
        match reader.read_frames(&mut frames).await {
            Ok(true) => {}
            Ok(false) => return Stop::closed(EndReason::UpstreamClosed),
            Err(e) => return Stop::io(EndReason::UpstreamClosed, e),
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
