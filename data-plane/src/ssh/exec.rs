//! One session channel of an agent: an exec request is judged on its command line, held when
//! an approval rule says so, recorded (durable) before it runs, run on a channel of the host's
//! connection, its output masked on the way back (a value split across packets is still
//! found), and its end recorded with the exit status, bytes and a masked sample. A shell goes
//! to `shell.rs`, the sftp subsystem to `sftp.rs`; other subsystems are refused, with the
//! reason on the agent's stderr. A terminal the agent asks for is asked for on the host.

use super::server::Opened;
use super::SshContext;
use crate::session::hold::{self, Hold, Release};
use crate::session::judge::{Asker, Verdict};
use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tollgate_shared::event::{
    kind, ApprovalReleased, Classification, Command, CommandResult, Decision, ExecOutput, ExpiryReason, Outcome,
    Protocol,
};
use tollgate_shared::mask::{Masker, StreamMasker, Tally};
use tollgate_shared::policy::command::CommandLine;
use tollgate_shared::policy::{Access, Denial};

/// Output kept, masked, in a result event.
const SAMPLE_BYTES: usize = 4096;
/// What an agent may send on a channel before its command may run (held for approval).
const MAX_EARLY_INPUT: usize = 1024 * 1024;
/// The exit status an agent sees for a command the gateway did not run (`126`: found but
/// cannot be executed, as a shell reports it).
const NOT_RUN: u32 = 126;
const STDERR: u32 = 1;
/// How long output may wait for the rest of its line before it goes out anyway.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

pub async fn serve_channel(ctx: Arc<SshContext>, opened: Arc<Opened>, channel: Channel<Msg>, handle: Handle) {
    let id = channel.id();
    let (mut from_agent, to_agent) = channel.split();
    let mut early = Vec::new();
    let mut early_eof = false;
    let mut pty = None;
    while let Some(message) = from_agent.wait().await {
        match message {
            ChannelMsg::Exec { command, .. } => {
                let mut agent = AgentSide { from: from_agent, to: to_agent, handle, id, early, early_eof, pty };
                exec(&ctx, &opened, &mut agent, command).await;
                return;
            }
            ChannelMsg::RequestShell { .. } => {
                let agent = AgentSide { from: from_agent, to: to_agent, handle, id, early, early_eof, pty };
                return super::shell::serve(&ctx, &opened, agent).await;
            }
            ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, terminal_modes, .. } => {
                // Asked for on the host with the command or shell that follows.
                pty = Some(PtyRequest { term, col_width, row_height, pix_width, pix_height, modes: terminal_modes });
                let _ = handle.channel_success(id).await;
            }
            ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                if let Some(pty) = pty.as_mut() {
                    (pty.col_width, pty.row_height, pty.pix_width, pty.pix_height) =
                        (col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => {
                return serve_sftp(ctx, opened, from_agent, to_agent, handle, id).await;
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                let why = format!("the {name} subsystem is not served");
                return refuse_request(&ctx, &opened, &handle, id, &to_agent, &format!("<subsystem {name}>"), &why)
                    .await;
            }
            ChannelMsg::Data { data } => {
                if early.iter().map(Bytes::len).sum::<usize>() + data.len() > MAX_EARLY_INPUT {
                    let why = "too much input before a command";
                    return refuse_request(&ctx, &opened, &handle, id, &to_agent, "<input>", why).await;
                }
                early.push(data);
            }
            ChannelMsg::Eof => early_eof = true,
            ChannelMsg::Close => return,
            _ => {}
        }
    }
}

/// The terminal an agent asked for, asked for again on the host.
pub(super) struct PtyRequest {
    pub term: String,
    pub col_width: u32,
    pub row_height: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(russh::Pty, u32)>,
}

impl PtyRequest {
    /// Ask for this terminal on a host channel; false when the host refuses it.
    pub async fn open_on(&self, channel: &mut Channel<russh::client::Msg>) -> bool {
        let (w, h, pw, ph) = (self.col_width, self.row_height, self.pix_width, self.pix_height);
        if channel.request_pty(true, &self.term, w, h, pw, ph, &self.modes).await.is_err() {
            return false;
        }
        answered(channel).await
    }
}

/// Wait for the host's answer to a request sent with want-reply.
pub(super) async fn answered(channel: &mut Channel<russh::client::Msg>) -> bool {
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return true,
            Some(ChannelMsg::Failure) | None => return false,
            Some(_) => {}
        }
    }
}

/// The sftp subsystem, relayed to the host's with every operation judged and recorded.
async fn serve_sftp(
    ctx: Arc<SshContext>,
    opened: Arc<Opened>,
    mut from: russh::ChannelReadHalf,
    to: russh::ChannelWriteHalf<Msg>,
    handle: Handle,
    id: russh::ChannelId,
) {
    let opening = async {
        let host = opened.host.as_ref().map_err(|e| format!("cannot open resource {:?}: {e}", opened.resource.name))?;
        let mut channel = host.channel_open_session().await.map_err(|e| format!("the host refused a channel: {e}"))?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| e.to_string())?;
        match answered(&mut channel).await {
            true => Ok(channel),
            false => Err("the host does not serve sftp".to_owned()),
        }
    };
    let channel = match opening.await {
        Ok(channel) => channel,
        Err(why) => {
            let _ = to.extended_data_bytes(STDERR, Bytes::from(format!("tollgate: {why}\r\n"))).await;
            let _ = handle.channel_failure(id).await;
            let _ = to.close().await;
            return;
        }
    };
    let _ = handle.channel_success(id).await;
    super::sftp::Sftp::new(ctx, opened).relay(&mut from, &to, channel).await;
    let _ = to.exit_status(0).await;
    let _ = to.eof().await;
    let _ = to.close().await;
}

/// Refuse a request the gateway does not serve, on record as a denied command.
async fn refuse_request(
    ctx: &SshContext,
    opened: &Opened,
    handle: &Handle,
    id: russh::ChannelId,
    to: &russh::ChannelWriteHalf<Msg>,
    what: &str,
    why: &str,
) {
    opened.commands.fetch_add(1, Ordering::Relaxed);
    let policy_version = ctx.services.policy.borrow().as_ref().map(|p| p.version);
    let statement = super::forward::masked(&ctx.services.policy.borrow().clone(), &opened.resource.name, what);
    let record = Command {
        rule: Some("not_served".into()),
        policy_version,
        ..Command::new(Protocol::Exec, statement, Decision::Deny)
    };
    match opened.recorder.seal(kind::COMMAND, &record) {
        Ok(event) => opened.recorder.background(event),
        Err(e) => tracing::error!(error = %e, "cannot seal a refused request"),
    }
    // Answered like an exec the gateway refuses (a client that reads a failure gives up on the
    // channel before it shows the reason): the reason on stderr, then exit status 126.
    let _ = handle.channel_success(id).await;
    let _ = to.extended_data_bytes(STDERR, Bytes::from(format!("tollgate: {why}\r\n"))).await;
    let _ = to.exit_status(NOT_RUN).await;
    let _ = to.eof().await;
    let _ = to.close().await;
}

/// The agent's end of one channel.
pub(super) struct AgentSide {
    pub from: russh::ChannelReadHalf,
    pub to: russh::ChannelWriteHalf<Msg>,
    pub handle: Handle,
    pub id: russh::ChannelId,
    /// Input sent before the command ran, and whether the agent already ended its input.
    pub early: Vec<Bytes>,
    pub early_eof: bool,
    /// The terminal the agent asked for, if any.
    pub pty: Option<PtyRequest>,
}

impl AgentSide {
    /// Tell the agent on stderr, give it `status`, and close the channel.
    pub async fn end_with(&self, message: &str, status: u32) {
        let _ = self.to.extended_data_bytes(STDERR, Bytes::from(format!("{message}\r\n"))).await;
        let _ = self.to.exit_status(status).await;
        let _ = self.to.eof().await;
        let _ = self.to.close().await;
    }
}

async fn exec(ctx: &SshContext, opened: &Opened, agent: &mut AgentSide, command: Vec<u8>) {
    // The request is answered at once: what becomes of the command (refused, held, run) the
    // agent reads on stderr and in the exit status, as a shell would tell it.
    let _ = agent.handle.channel_success(agent.id).await;
    let recorder = &opened.recorder;
    opened.commands.fetch_add(1, Ordering::Relaxed);
    let host = match &opened.host {
        Ok(host) => host,
        Err(e) => {
            let message = format!("tollgate: cannot open resource {:?}: {e}", opened.resource.name);
            agent.end_with(&message, 255).await;
            let _ = agent.handle.disconnect(russh::Disconnect::ByApplication, message, "en".into()).await;
            return;
        }
    };
    let (judged, masker) = judge(ctx, opened, &command, Protocol::Exec, None);
    let Judged { record, verdict, denial } = judged;
    // On record before anything runs (or is refused).
    let event = match recorder.seal(kind::COMMAND, &record) {
        Ok(event) => event,
        Err(e) => return recording_failed(agent, &e.to_string()).await,
    };
    let (command_id, command_seq) = (event.id, event.seq);
    let mut first = vec![event];
    if let Some(hold) = &verdict.hold {
        match recorder.seal(kind::APPROVAL_REQUESTED, &hold.request(&record, command_id)) {
            Ok(request) => first.push(request),
            Err(e) => return recording_failed(agent, &e.to_string()).await,
        }
    }
    // The decision is heard from the moment the request exists.
    let mut waiter = verdict.hold.as_ref().map(|h| ctx.services.approvals.wait(h.approval_id));
    if let Err(e) = recorder.durable(first).await {
        return recording_failed(agent, &e.to_string()).await;
    }
    if let Some(denial) = denial {
        let message = format!(
            "tollgate: command denied by rule {} on resource {}: {}",
            denial.rule, opened.resource.name, denial.reason
        );
        agent.end_with(&message, NOT_RUN).await;
        return;
    }
    if let (Some(hold), Some(waiter)) = (&verdict.hold, waiter.as_mut()) {
        if !await_approval(ctx, opened, agent, hold, waiter, command_id).await {
            return;
        }
    }
    let started = Instant::now();
    let mut channel = match host.channel_open_session().await {
        Ok(channel) => channel,
        Err(e) => {
            agent.end_with(&format!("tollgate: the host refused a channel: {e}"), 255).await;
            return;
        }
    };
    if let Some(pty) = &agent.pty {
        if !pty.open_on(&mut channel).await {
            agent.end_with("tollgate: the host refused a terminal", 255).await;
            return;
        }
    }
    if let Err(e) = channel.exec(true, command).await {
        agent.end_with(&format!("tollgate: the host refused the command: {e}"), 255).await;
        return;
    }
    let output = relay(agent, channel, masker).await;
    let masked = output.tally.into_counts();
    record_result(&opened.recorder, (command_id, command_seq), output.exec, started, masked).await;
}

/// Record how a program run on the host (an exec, or a shell) ended, durably.
pub(super) async fn record_result(
    recorder: &crate::recorder::SessionRecorder,
    (command_id, command_seq): (uuid::Uuid, u64),
    exec: ExecOutput,
    started: Instant,
    masked: Vec<tollgate_shared::event::MaskCount>,
) {
    let result = CommandResult {
        command_id,
        command_seq,
        outcome: match (exec.exit_status, &exec.exit_signal) {
            (Some(0), _) => Outcome::Ok,
            (Some(_), _) | (None, Some(_)) => Outcome::Error,
            (None, None) => Outcome::Unfinished,
        },
        tags: Vec::new(),
        rows: 0,
        duration_us: started.elapsed().as_micros() as u64,
        error: None,
        masked,
        nulled: 0,
        exec: Some(exec),
        forwarded: None,
        file: None,
    };
    match recorder.seal(kind::COMMAND_RESULT, &result) {
        Ok(event) => {
            if let Err(e) = recorder.durable(vec![event]).await {
                tracing::warn!(session = %recorder.session(), error = %e, "command.result not recorded");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot seal command.result"),
    }
}

pub(super) async fn recording_failed(agent: &AgentSide, why: &str) {
    tracing::warn!(error = %why, "command not recorded; not running it");
    agent.end_with("tollgate: the command cannot be recorded (audit stream unavailable); it was not run", 255).await;
}

/// Wait for people to decide; true when the command may run. Input the agent sends meanwhile
/// is kept for the command.
async fn await_approval(
    ctx: &SshContext,
    opened: &Opened,
    agent: &mut AgentSide,
    hold: &Hold,
    waiter: &mut crate::approvals::Waiter,
    command_id: uuid::Uuid,
) -> bool {
    let recorder = &opened.recorder;
    let notice = hold.notice(ctx.services.approval_url.as_deref());
    let _ = agent.to.extended_data_bytes(STDERR, Bytes::from(format!("{notice}\r\n"))).await;
    tracing::info!(session = %recorder.session(), approval = %hold.approval_id, rule = %hold.rule.name, "command held for approval");
    let (from, early, early_eof) = (&mut agent.from, &mut agent.early, &mut agent.early_eof);
    let gone = async {
        while let Some(message) = from.wait().await {
            match message {
                ChannelMsg::Data { data }
                    if early.iter().map(Bytes::len).sum::<usize>() + data.len() <= MAX_EARLY_INPUT =>
                {
                    early.push(data)
                }
                // Over the limit: the agent is sent away (its command never runs).
                ChannelMsg::Data { .. } | ChannelMsg::Close => return,
                ChannelMsg::Eof => *early_eof = true,
                _ => {}
            }
        }
    };
    match hold::await_release(hold, waiter, None, gone).await {
        Release::Run { approvers } => {
            tracing::info!(session = %recorder.session(), approval = %hold.approval_id, "approved; running");
            let released = ApprovalReleased { approval_id: hold.approval_id, command_id, approvers };
            let recorded = match recorder.seal(kind::APPROVAL_RELEASED, &released) {
                Ok(event) => recorder.durable(vec![event]).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match recorded {
                Ok(()) => true,
                Err(e) => {
                    recording_failed(agent, &e).await;
                    false
                }
            }
        }
        Release::Refuse(refusal) => {
            if let Some(reason) = refusal.expiry() {
                hold::record_expiry(recorder, hold.approval_id, reason);
            }
            agent.end_with(&refusal.message("command", hold.approval_id), NOT_RUN).await;
            false
        }
        Release::AgentGone => {
            hold::record_expiry(recorder, hold.approval_id, ExpiryReason::SessionEnded);
            let _ = agent.to.close().await;
            false
        }
    }
}

/// What a command wrote back, and how it ended.
struct Relayed {
    exec: ExecOutput,
    tally: Tally,
}

/// Pump the agent's input to the host and the host's output, masked, to the agent, until the
/// host closes the channel. The two directions run apart, so neither waits on the other's flow
/// control; an agent that goes away closes the host's channel.
async fn relay(agent: &mut AgentSide, host: Channel<russh::client::Msg>, masker: Arc<Masker>) -> Relayed {
    let masks_agent = masker.masks_agent();
    let (mut from_host, to_host) = host.split();
    let AgentSide { from, to, early, early_eof, .. } = agent;
    let upload = async {
        for data in early.drain(..) {
            if to_host.data_bytes(data).await.is_err() {
                return;
            }
        }
        if *early_eof {
            let _ = to_host.eof().await;
        }
        // Read the agent to the end, even after its EOF, so its channel never backs up.
        loop {
            match from.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    let _ = to_host.data_bytes(data).await;
                }
                Some(ChannelMsg::Eof) => {
                    let _ = to_host.eof().await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height }) => {
                    let _ = to_host.window_change(col_width, row_height, pix_width, pix_height).await;
                }
                Some(ChannelMsg::Close) | None => {
                    let _ = to_host.close().await;
                    return;
                }
                Some(_) => {}
            }
        }
    };
    let to: &russh::ChannelWriteHalf<Msg> = to;
    let download = async {
        let mut streams = [StreamMasker::new(masker.clone()), StreamMasker::new(masker)];
        let mut tally = Tally::default();
        let mut exec = ExecOutput {
            exit_status: None,
            exit_signal: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            sample: String::new(),
        };
        let mut sample = Vec::new();
        loop {
            // Output waits for its line to end, but not for long: a program that writes a
            // prompt, or speaks a binary protocol (rsync), must not stall on the masking.
            let message = if streams.iter().any(|s| s.held() > 0) {
                match tokio::time::timeout(FLUSH_AFTER, from_host.wait()).await {
                    Ok(message) => message,
                    Err(_) => {
                        for (i, stream) in streams.iter_mut().enumerate() {
                            let out = stream.finish(&mut tally);
                            let to_agent = if masks_agent { Bytes::from(out.clone()) } else { Bytes::new() };
                            send(to, (i == 1).then_some(STDERR), to_agent, &out, &mut sample).await;
                        }
                        continue;
                    }
                }
            } else {
                from_host.wait().await
            };
            let Some(message) = message else { break };
            let (stream, ext, data) = match message {
                ChannelMsg::Data { data } => {
                    exec.stdout_bytes += data.len() as u64;
                    (0, None, data)
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    exec.stderr_bytes += data.len() as u64;
                    (1, Some(ext), data)
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exec.exit_status = Some(exit_status);
                    continue;
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    exec.exit_signal = Some(format!("{signal_name:?}"));
                    continue;
                }
                ChannelMsg::Close => break,
                _ => continue,
            };
            let out = streams[stream].push(&data, &mut tally);
            // Records-only masking: the agent gets the bytes as they came.
            let to_agent = if masks_agent { Bytes::from(out.clone()) } else { data };
            send(to, ext, to_agent, &out, &mut sample).await;
        }
        // What the streams still hold.
        for (i, stream) in streams.iter_mut().enumerate() {
            let out = stream.finish(&mut tally);
            let to_agent = if masks_agent { Bytes::from(out.clone()) } else { Bytes::new() };
            send(to, (i == 1).then_some(STDERR), to_agent, &out, &mut sample).await;
        }
        exec.sample = String::from_utf8_lossy(&sample).into_owned();
        (exec, tally)
    };
    tokio::pin!(upload, download);
    let (exec, tally) = tokio::select! {
        done = &mut download => done,
        () = &mut upload => {
            // The agent went away: its command's channel is closed; its end is still awaited,
            // for a while, so the record says how it ended.
            match tokio::time::timeout(std::time::Duration::from_secs(10), &mut download).await {
                Ok(done) => done,
                Err(_) => (ExecOutput { exit_status: None, exit_signal: None, stdout_bytes: 0, stderr_bytes: 0, sample: String::new() }, Tally::default()),
            }
        }
    };
    if let Some(status) = exec.exit_status {
        let _ = to.exit_status(status).await;
    }
    let _ = to.eof().await;
    let _ = to.close().await;

    Relayed { exec, tally }
}

/// Send `data` to the agent (stdout, or the extended stream `ext`); keep the start of the
/// masked output `masked` as the sample.
async fn send(to: &russh::ChannelWriteHalf<Msg>, ext: Option<u32>, data: Bytes, masked: &[u8], sample: &mut Vec<u8>) {
    if sample.len() < SAMPLE_BYTES {
        sample.extend_from_slice(&masked[..masked.len().min(SAMPLE_BYTES - sample.len())]);
    }
    if data.is_empty() {
        return;
    }
    let _ = match ext {
        None => to.data_bytes(data).await,
        Some(ext) => to.extended_data_bytes(ext, data).await,
    };
}

pub(super) struct Judged {
    pub record: Command,
    pub verdict: Verdict,
    pub denial: Option<Denial>,
}

/// Judge a command line (an exec's, or a line typed into a shell): `refused` first, then what
/// cannot be read is refused; then the resource's command rules, its guardrails for the `exec`
/// class and the grant; then the approval rules.
pub(super) fn judge(
    ctx: &SshContext,
    opened: &Opened,
    command: &[u8],
    protocol: Protocol,
    refused: Option<Denial>,
) -> (Judged, Arc<Masker>) {
    let policy = ctx.services.policy.borrow().clone();
    let resource = policy.as_ref().and_then(|p| p.document.resource(&opened.resource.name));
    let masker = crate::policy::masker(policy.as_deref(), &opened.resource.name);
    let text = std::str::from_utf8(command).map_err(|_| "the command line is not UTF-8".to_owned());
    let line = text.clone().and_then(CommandLine::parse);
    let classification = line.as_ref().ok().map(|line| Classification {
        statements: line.commands.len(),
        classes: ["exec".to_owned()].into(),
        writes: true,
        ..Default::default()
    });
    let denial = match (&line, &policy, resource) {
        _ if refused.is_some() => refused,
        (Err(e), _, _) => Some(Denial { rule: "unparsable".into(), reason: e.clone() }),
        (_, None, _) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
        (_, Some(_), None) => {
            Some(Denial { rule: "resource_not_in_policy".into(), reason: "the resource left the policy".into() })
        }
        (Ok(line), Some(_), Some(resource)) => resource.deny_line(line).or_else(|| {
            if opened.access == Access::ReadOnly {
                // Any program can change the host: a read-only grant runs nothing.
                return Some(Denial {
                    rule: "read_only_grant".into(),
                    reason: "the agent's grant is read-only".into(),
                });
            }
            classification.as_ref().and_then(|c| resource.deny(opened.access, c))
        }),
    };
    let asker = Asker { agent: &opened.agent, resource: &opened.resource.name, standing: &ctx.services.standing };
    let verdict = Verdict::of(&asker, denial.as_ref(), classification.as_ref(), resource, line.as_ref().ok(), true);
    let mut tally = Tally::default();
    let shown = match &text {
        Ok(text) => masker.mask_str(text, None, &mut tally).into_owned(),
        Err(_) => masker.mask_str(&String::from_utf8_lossy(command), None, &mut tally).into_owned(),
    };
    let record = Command {
        protocol,
        statement: shown,
        postgres: None,
        classification,
        parse_error: line.as_ref().err().cloned(),
        decision: verdict.decision,
        rule: verdict.rule.clone(),
        policy_version: policy.as_ref().map(|p| p.version),
        approval_id: verdict.approval_id(),
        masked: tally.into_counts(),
    };
    debug_assert!(denial.is_none() || record.decision == Decision::Deny);
    (Judged { record, verdict, denial }, masker)
}
