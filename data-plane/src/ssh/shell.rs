//! A shell on an SSH channel, with or without a terminal. The agent's input is read line by
//! line at the gateway: each line is judged like an exec command line, recorded (durable)
//! before the host sees it, held for approval when a rule says so, and only then sent on, as
//! the exact text that was judged. The host's output comes back masked, and is recorded as an
//! asciicast v2 recording in `terminal.output` chunks that the API replays.
//!
//! What this costs an interactive user: keys are not echoed until their line is complete, and
//! line-editing keys (Tab, arrows, Ctrl-W...) would make the shell run something other than the
//! text judged, so a line that used one is refused (Backspace and Ctrl-U are applied at the
//! gateway; Ctrl-C, and Ctrl-D on an empty line, go through at once).

use super::exec::{self, AgentSide};
use super::server::Opened;
use super::SshContext;
use crate::session::hold::{self, Release};
use bytes::Bytes;
use russh::server::Msg;
use russh::ChannelMsg;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_shared::event::{
    kind, ApprovalReleased, Command, Decision, ExecOutput, ExpiryReason, Frame, Protocol, TerminalOutput,
    TerminalStarted,
};
use tollgate_shared::mask::{StreamMasker, Tally};
use tollgate_shared::policy::{Access, Denial};

/// The longest line the gateway reads; a longer one is refused when it ends.
const MAX_LINE: usize = 64 * 1024;
/// Input kept while a line waits for approval; more sends the agent away.
const MAX_BACKLOG: usize = 1024 * 1024;
/// Messages of any kind kept while a line is held.
const MAX_BACKLOG_MESSAGES: usize = 16 * 1024;
/// A recording chunk is published once it holds this much, or is this old, or the host has
/// been quiet for `QUIET`.
const CHUNK_BYTES: usize = 32 * 1024;
const CHUNK_AGE: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(20);
const STDERR: u32 = 1;
const NOT_RUN: u32 = 126;

/// What the agent's keys amount to, once read.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// A complete line, without its end; `edited` names a key that changed it in a way the
    /// gateway cannot follow; `too_long` when it outgrew `MAX_LINE`.
    Line { text: Vec<u8>, edited: Option<&'static str>, too_long: bool },
    /// A key that goes to the host at once (Ctrl-C, Ctrl-Z, Ctrl-\; Ctrl-D on an empty line).
    Pass(u8),
}

/// Reads the agent's keys into lines.
#[derive(Default)]
pub struct LineReader {
    line: Vec<u8>,
    edited: Option<&'static str>,
    too_long: bool,
    after_cr: bool,
}

impl LineReader {
    pub fn feed(&mut self, data: &[u8], keys: &mut Vec<Key>) {
        for &b in data {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    keys.push(self.take());
                }
                // Ctrl-C: the line is dropped and the interrupt goes through.
                0x03 => {
                    self.take();
                    keys.push(Key::Pass(b));
                }
                // Ctrl-D ends the input on an empty line (and does nothing at the end of one);
                // Ctrl-Z and Ctrl-\ signal what runs, whatever the line holds.
                0x04 if self.line.is_empty() && self.edited.is_none() => keys.push(Key::Pass(b)),
                0x04 => {}
                0x1a | 0x1c => keys.push(Key::Pass(b)),
                0x7f | 0x08 => {
                    // Backspace removes a whole character.
                    while let Some(last) = self.line.pop() {
                        if last & 0xC0 != 0x80 {
                            break;
                        }
                    }
                }
                // Ctrl-U: the line is gone.
                0x15 => {
                    self.take();
                }
                b'\t' => self.edit("Tab (completion)"),
                0x1b => self.edit("an escape sequence (arrow or function keys)"),
                0x00..=0x1f => self.edit("a control key"),
                _ if self.line.len() >= MAX_LINE => self.too_long = true,
                _ => self.line.push(b),
            }
        }
    }

    /// The rest, when the agent ends its input.
    pub fn finish(&mut self) -> Option<Key> {
        (!self.line.is_empty() || self.edited.is_some() || self.too_long).then(|| self.take())
    }

    fn edit(&mut self, what: &'static str) {
        self.edited.get_or_insert(what);
    }

    fn take(&mut self) -> Key {
        Key::Line {
            text: std::mem::take(&mut self.line),
            edited: self.edited.take(),
            too_long: std::mem::take(&mut self.too_long),
        }
    }
}

/// Whether the host's last output line asks for a secret (logged, never used to hide the line:
/// the agent writes its own prompt).
pub fn asks_secret(tail: &[u8]) -> bool {
    let last = tail.rsplit(|&b| b == b'\n' || b == b'\r').next().unwrap_or_default();
    let text = String::from_utf8_lossy(last).to_lowercase();
    let text = text.trim_end();
    text.ends_with(':')
        && ["password", "passphrase", "passcode", "pin", "token", "secret"].iter().any(|w| text.contains(w))
}

/// A line the host's shell would run as something other than its text: a trailing backslash
/// joins it to the next line, `!` and a leading `^` are history expansion, and `stty` or `bind`
/// change how the following keys are read.
fn rewritten(text: &[u8]) -> Option<Denial> {
    let backslashes = text.iter().rev().take_while(|&&b| b == b'\\').count();
    let why = if backslashes % 2 == 1 {
        "it continues on the next line (a trailing backslash); send the whole command on one line"
    } else if text.contains(&b'!') || text.first() == Some(&b'^') {
        "the shell would rewrite it by history expansion (`!`, `^`)"
    } else if String::from_utf8_lossy(text).split_whitespace().any(|w| w == "stty" || w == "bind") {
        "it changes how the terminal reads the next lines (stty, bind)"
    } else {
        return None;
    };
    Some(Denial { rule: "shell_rewrites".into(), reason: why.into() })
}

/// The recording of one shell, gathered into chunks.
struct Cast {
    opened: Instant,
    frames: Vec<Frame>,
    bytes: usize,
    oldest: Option<Instant>,
    /// The start of a character split across two outputs.
    carry: Vec<u8>,
}

impl Cast {
    fn new() -> Self {
        Cast { opened: Instant::now(), frames: Vec::new(), bytes: 0, oldest: None, carry: Vec::new() }
    }

    fn at(&self) -> f64 {
        (self.opened.elapsed().as_secs_f64() * 1e6).round() / 1e6
    }

    fn push(&mut self, code: &str, data: String) {
        self.bytes += data.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.frames.push(Frame(self.at(), code.to_owned(), data));
    }

    /// Masked output; a character cut in two waits for its end.
    fn output(&mut self, masked: &[u8]) {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(masked);
        let cut = match std::str::from_utf8(&bytes) {
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            _ => bytes.len(),
        };
        self.carry = bytes.split_off(cut);
        if !bytes.is_empty() {
            self.push("o", String::from_utf8_lossy(&bytes).into_owned());
        }
    }

    fn resize(&mut self, cols: u32, rows: u32) {
        self.push("r", format!("{cols}x{rows}"));
    }

    fn due(&self) -> bool {
        self.bytes >= CHUNK_BYTES || self.oldest.is_some_and(|t| t.elapsed() >= CHUNK_AGE)
    }

    fn take(&mut self, all: bool) -> Option<Vec<Frame>> {
        if all && !self.carry.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned();
            self.push("o", rest);
        }
        self.bytes = 0;
        self.oldest = None;
        (!self.frames.is_empty()).then(|| std::mem::take(&mut self.frames))
    }
}

/// Serve a shell request: judged and recorded as `<shell>`, then relayed line by line.
pub(super) async fn serve(ctx: &SshContext, opened: &Opened, agent: AgentSide) {
    let _ = agent.handle.channel_success(agent.id).await;
    opened.commands.fetch_add(1, Ordering::Relaxed);
    let host = match &opened.host {
        Ok(host) => host,
        Err(e) => {
            let message = format!("tollgate: cannot open resource {:?}: {e}", opened.resource.name);
            return agent.end_with(&message, 255).await;
        }
    };
    let recorder = &opened.recorder;
    let record = opening(ctx, opened);
    let refused = (record.decision == Decision::Deny).then(|| record.rule.clone().unwrap_or_default());
    let event = match recorder.seal(kind::COMMAND, &record) {
        Ok(event) => event,
        Err(e) => return exec::recording_failed(&agent, &e.to_string()).await,
    };
    let command_id = event.id;
    let command_seq = event.seq;
    let terminal = opened.terminals.fetch_add(1, Ordering::Relaxed);
    let (width, height) = match &agent.pty {
        // A client without a terminal of its own reports 0 x 0; a player needs a size.
        Some(p) if p.col_width > 0 && p.row_height > 0 => (p.col_width, p.row_height),
        _ => (80, 24),
    };
    let started =
        TerminalStarted { terminal, command_id, term: agent.pty.as_ref().map(|p| p.term.clone()), width, height };
    let mut first = vec![event];
    if refused.is_none() {
        match recorder.seal(kind::TERMINAL_STARTED, &started) {
            Ok(event) => first.push(event),
            Err(e) => return exec::recording_failed(&agent, &e.to_string()).await,
        }
    }
    if let Err(e) = recorder.durable(first).await {
        return exec::recording_failed(&agent, &e.to_string()).await;
    }
    if let Some(rule) = refused {
        let message = format!("tollgate: shell denied by rule {rule} on resource {}", opened.resource.name);
        return agent.end_with(&message, NOT_RUN).await;
    }
    let started_at = Instant::now();
    let mut channel = match host.channel_open_session().await {
        Ok(channel) => channel,
        Err(e) => return agent.end_with(&format!("tollgate: the host refused a channel: {e}"), 255).await,
    };
    if let Some(pty) = &agent.pty {
        if !pty.open_on(&mut channel).await {
            return agent.end_with("tollgate: the host refused a terminal", 255).await;
        }
    }
    if channel.request_shell(true).await.is_err() || !exec::answered(&mut channel).await {
        return agent.end_with("tollgate: the host refused a shell", 255).await;
    }
    let output = relay(ctx, opened, agent, channel, terminal).await;
    exec::record_result(recorder, (command_id, command_seq), output, started_at, Vec::new()).await;
}

/// The `<shell>` command: any program can change the host, so a read-only grant opens none.
fn opening(ctx: &SshContext, opened: &Opened) -> Command {
    let policy = ctx.services.policy.borrow().clone();
    let in_policy = policy.as_ref().and_then(|p| p.document.resource(&opened.resource.name));
    let rule = match (&policy, in_policy) {
        (None, _) => Some("no_policy"),
        (Some(_), None) => Some("resource_not_in_policy"),
        _ if opened.access == Access::ReadOnly => Some("read_only_grant"),
        _ => None,
    };
    let decision = if rule.is_some() { Decision::Deny } else { Decision::Allow };
    Command {
        rule: rule.map(str::to_owned),
        policy_version: policy.as_ref().map(|p| p.version),
        ..Command::new(Protocol::Shell, "<shell>".into(), decision)
    }
}

/// Relay until the host ends the shell; returns how it ended.
async fn relay(
    ctx: &SshContext,
    opened: &Opened,
    agent: AgentSide,
    host: russh::Channel<russh::client::Msg>,
    terminal: u32,
) -> ExecOutput {
    let masker = crate::policy::masker(ctx.services.policy.borrow().as_deref(), &opened.resource.name);
    let masks_agent = masker.masks_agent();
    let (mut from_host, to_host) = host.split();
    let AgentSide { mut from, to, early, early_eof, pty, .. } = agent;
    let cast = Mutex::new(Cast::new());
    let tail = Mutex::new(Vec::new());
    let mut backlog: VecDeque<ChannelMsg> = early.into_iter().map(|data| ChannelMsg::Data { data }).collect();
    if early_eof {
        backlog.push_back(ChannelMsg::Eof);
    }
    let mut typist = Typist {
        ctx,
        opened,
        from: &mut from,
        to: &to,
        to_host: &to_host,
        backlog,
        newline: if pty.is_some() { b"\r" } else { b"\n" },
        tail: &tail,
        cast: &cast,
    };
    let typing = typist.run();
    let publish =
        |frames: Vec<Frame>| match opened.recorder.seal(kind::TERMINAL_OUTPUT, &TerminalOutput { terminal, frames }) {
            Ok(event) => opened.recorder.background(event),
            Err(e) => tracing::error!(error = %e, "cannot seal terminal output"),
        };
    let to_ref = &to;
    let screen = async {
        let mut streams = [StreamMasker::new(masker.clone()), StreamMasker::new(masker.clone())];
        let mut tally = Tally::default();
        let mut end = ExecOutput {
            exit_status: None,
            exit_signal: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            sample: String::new(),
        };
        loop {
            let waiting =
                streams.iter().any(|s| s.held() > 0) || cast.lock().map(|c| c.oldest.is_some()).unwrap_or(false);
            let message = if waiting {
                match tokio::time::timeout(QUIET, from_host.wait()).await {
                    Ok(message) => message,
                    Err(_) => {
                        // The host is quiet: what the maskers hold goes out, and the chunk.
                        for (i, stream) in streams.iter_mut().enumerate() {
                            let out = stream.finish(&mut tally);
                            show(to_ref, i, masks_agent, Bytes::new(), &out, &cast).await;
                        }
                        if let Some(frames) = lock(&cast).take(false) {
                            publish(frames);
                        }
                        continue;
                    }
                }
            } else {
                from_host.wait().await
            };
            let (i, data) = match message {
                Some(ChannelMsg::Data { data }) => {
                    end.stdout_bytes += data.len() as u64;
                    (0, data)
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    end.stderr_bytes += data.len() as u64;
                    (1, data)
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    end.exit_status = Some(exit_status);
                    continue;
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    end.exit_signal = Some(format!("{signal_name:?}"));
                    continue;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => continue,
            };
            {
                let mut tail = lock(&tail);
                tail.extend_from_slice(&data);
                let over = tail.len().saturating_sub(256);
                tail.drain(..over);
            }
            let out = streams[i].push(&data, &mut tally);
            show(to_ref, i, masks_agent, data, &out, &cast).await;
            let due = lock(&cast).due();
            if due {
                if let Some(frames) = lock(&cast).take(false) {
                    publish(frames);
                }
            }
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            let out = stream.finish(&mut tally);
            show(to_ref, i, masks_agent, Bytes::new(), &out, &cast).await;
        }
        end
    };
    tokio::pin!(typing, screen);
    let end = tokio::select! {
        end = &mut screen => end,
        () = &mut typing => {
            // The agent went away or was sent away: the host's shell is closed; its end is
            // awaited for a while, so the record says how it ended.
            let _ = to_host.close().await;
            match tokio::time::timeout(Duration::from_secs(10), &mut screen).await {
                Ok(end) => end,
                Err(_) => ExecOutput { exit_status: None, exit_signal: None, stdout_bytes: 0, stderr_bytes: 0, sample: String::new() },
            }
        }
    };
    if let Some(frames) = lock(&cast).take(true) {
        publish(frames);
    }
    if let Some(status) = end.exit_status {
        let _ = to.exit_status(status).await;
    }
    let _ = to.eof().await;
    let _ = to.close().await;
    end
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send output to the agent (`raw` unless the masker masks what agents receive) and into the
/// recording (always masked).
async fn show(
    to: &russh::ChannelWriteHalf<Msg>,
    stream: usize,
    masks_agent: bool,
    raw: Bytes,
    masked: &[u8],
    cast: &Mutex<Cast>,
) {
    if !masked.is_empty() {
        lock(cast).output(masked);
    }
    let data = if masks_agent { Bytes::copy_from_slice(masked) } else { raw };
    if data.is_empty() {
        return;
    }
    let _ = match stream {
        0 => to.data_bytes(data).await,
        _ => to.extended_data_bytes(STDERR, data).await,
    };
}

/// The agent's side of a shell: its keys read into lines, each judged, recorded and sent on.
struct Typist<'a> {
    ctx: &'a SshContext,
    opened: &'a Opened,
    from: &'a mut russh::ChannelReadHalf,
    to: &'a russh::ChannelWriteHalf<Msg>,
    to_host: &'a russh::ChannelWriteHalf<russh::client::Msg>,
    /// What the agent sent while a line waited for approval.
    backlog: VecDeque<ChannelMsg>,
    newline: &'static [u8],
    tail: &'a Mutex<Vec<u8>>,
    cast: &'a Mutex<Cast>,
}

impl Typist<'_> {
    /// Until the agent leaves or is sent away.
    async fn run(&mut self) {
        let mut reader = LineReader::default();
        let mut keys = Vec::new();
        loop {
            let message = match self.backlog.pop_front() {
                Some(message) => message,
                None => match self.from.wait().await {
                    Some(message) => message,
                    None => return,
                },
            };
            match message {
                ChannelMsg::Data { data } => reader.feed(&data, &mut keys),
                ChannelMsg::Eof => {
                    keys.extend(reader.finish());
                    for key in std::mem::take(&mut keys) {
                        if !self.key(key).await {
                            return;
                        }
                    }
                    let _ = self.to_host.eof().await;
                }
                ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                    let _ = self.to_host.window_change(col_width, row_height, pix_width, pix_height).await;
                    lock(self.cast).resize(col_width, row_height);
                }
                ChannelMsg::Close => return,
                _ => {}
            }
            for key in std::mem::take(&mut keys) {
                if !self.key(key).await {
                    return;
                }
            }
        }
    }

    /// Tell the agent something on its terminal (or standard error, without one).
    async fn tell(&self, message: &str) {
        let text = Bytes::from(format!("\r\n{message}\r\n"));
        let _ = match self.newline {
            b"\r" => self.to.data_bytes(text).await,
            _ => self.to.extended_data_bytes(STDERR, text).await,
        };
    }

    /// One key or line; false when the shell must end.
    async fn key(&mut self, key: Key) -> bool {
        let (text, edited, too_long) = match key {
            Key::Pass(b) => return self.to_host.data_bytes(Bytes::copy_from_slice(&[b])).await.is_ok(),
            Key::Line { text, edited, too_long } => (text, edited, too_long),
        };
        if edited.is_none() && !too_long && text.iter().all(u8::is_ascii_whitespace) {
            // An empty line runs nothing.
            return self.to_host.data_bytes(Bytes::from_static(self.newline)).await.is_ok();
        }
        let (ctx, opened) = (self.ctx, self.opened);
        opened.commands.fetch_add(1, Ordering::Relaxed);
        let refused = match (edited, too_long) {
            (_, true) => {
                Some(Denial { rule: "line_too_long".into(), reason: format!("a line longer than {MAX_LINE} bytes") })
            }
            (Some(key), _) => Some(Denial {
                rule: "line_editing".into(),
                reason: format!(
                    "the line was edited with {key}; the gateway sends only lines it read whole, type it again"
                ),
            }),
            (None, false) => rewritten(&text),
        };
        let (judged, _) = exec::judge(ctx, opened, &text, Protocol::Shell, refused);
        let exec::Judged { record, verdict, denial } = judged;
        if asks_secret(&lock(self.tail)) {
            // The host's last line asks for a secret, but the agent controls that line (its
            // prompt): the text stays on record, masked by the detectors only.
            tracing::debug!(session = %opened.recorder.session(), "a line typed at what looks like a password prompt");
        }
        let recorder = &opened.recorder;
        let event = match recorder.seal(kind::COMMAND, &record) {
            Ok(event) => event,
            Err(e) => return self.unrecorded(&e.to_string()).await,
        };
        let command_id = event.id;
        let mut first = vec![event];
        if let Some(hold) = &verdict.hold {
            match recorder.seal(kind::APPROVAL_REQUESTED, &hold.request(&record, command_id)) {
                Ok(request) => first.push(request),
                Err(e) => return self.unrecorded(&e.to_string()).await,
            }
        }
        let mut waiter = verdict.hold.as_ref().map(|h| ctx.services.approvals.wait(h.approval_id));
        if let Err(e) = recorder.durable(first).await {
            return self.unrecorded(&e.to_string()).await;
        }
        if let Some(denial) = denial {
            let message = format!(
                "tollgate: command denied by rule {} on resource {}: {}",
                denial.rule, opened.resource.name, denial.reason
            );
            self.tell(&message).await;
            return true;
        }
        if let (Some(hold), Some(waiter)) = (&verdict.hold, waiter.as_mut()) {
            self.tell(&hold.notice(ctx.services.approval_url.as_deref())).await;
            let (from, backlog) = (&mut *self.from, &mut self.backlog);
            let gone = async {
                let mut size: usize =
                    backlog.iter().map(|m| if let ChannelMsg::Data { data } = m { data.len() } else { 0 }).sum();
                while let Some(message) = from.wait().await {
                    match message {
                        ChannelMsg::Close => return,
                        // Only the last size of the window matters; a flood of them is not kept.
                        ChannelMsg::WindowChange { .. }
                            if matches!(backlog.back(), Some(ChannelMsg::WindowChange { .. })) =>
                        {
                            backlog.pop_back();
                            backlog.push_back(message);
                        }
                        // Over the limit (in bytes or in messages): the agent is sent away and
                        // the held line never runs.
                        _ if backlog.len() >= MAX_BACKLOG_MESSAGES => return,
                        ChannelMsg::Data { data } if size + data.len() > MAX_BACKLOG => return,
                        ChannelMsg::Data { data } => {
                            size += data.len();
                            backlog.push_back(ChannelMsg::Data { data });
                        }
                        message @ (ChannelMsg::Eof | ChannelMsg::WindowChange { .. }) => backlog.push_back(message),
                        // What a running shell ignores anyway (extended data, requests) is not
                        // kept: it would be memory the byte limit does not count.
                        _ => {}
                    }
                }
            };
            match hold::await_release(hold, waiter, None, gone).await {
                Release::Run { approvers } => {
                    let released = ApprovalReleased { approval_id: hold.approval_id, command_id, approvers };
                    let recorded = match recorder.seal(kind::APPROVAL_RELEASED, &released) {
                        Ok(event) => recorder.durable(vec![event]).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = recorded {
                        return self.unrecorded(&e).await;
                    }
                }
                Release::Refuse(refusal) => {
                    if let Some(reason) = refusal.expiry() {
                        hold::record_expiry(recorder, hold.approval_id, reason);
                    }
                    self.tell(&refusal.message("command", hold.approval_id)).await;
                    return true;
                }
                Release::AgentGone => {
                    hold::record_expiry(recorder, hold.approval_id, ExpiryReason::SessionEnded);
                    return false;
                }
            }
        }
        // Exactly the text judged, then the end of the line.
        let mut line = text;
        line.extend_from_slice(self.newline);
        self.to_host.data_bytes(Bytes::from(line)).await.is_ok()
    }

    /// A line that cannot be recorded is not sent, and the shell ends (fail closed).
    async fn unrecorded(&self, why: &str) -> bool {
        tracing::warn!(error = %why, "shell line not recorded; ending the shell");
        self.tell(
            "tollgate: the line cannot be recorded (audit stream unavailable); it was not run, and the shell ends",
        )
        .await;
        false
    }
}

#[cfg(test)]
mod tests;
