//! Matching upstream responses to the commands that caused them.
//!
//! The agent's messages push what the upstream will owe (`Exec` per Query or Execute, `Sync`
//! per Sync, and the implicit sync at the end of a Query); responses pop them. This follows the
//! protocol's own rules: an error in an extended-protocol pipeline makes the server skip
//! everything up to the next Sync, and a Sync received during COPY FROM STDIN is ignored.

use super::super::frame::Frame;
use super::super::mask::{self, Column, Findings, Unmaskable};
use super::super::messages::{self, Malformed};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tollgate_shared::event::{CommandResult, ErrorInfo, Outcome, Protocol};
use tollgate_shared::mask::Masker;
use uuid::Uuid;

pub enum Expect {
    Exec(Box<Pending>),
    /// A Describe, answered by a RowDescription or NoData; holds the statement text described,
    /// so a later Execute of the same text knows its result columns.
    Describe(Option<Arc<str>>),
    Sync,
    /// The agent ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
}

/// Why the upstream's stream cannot be relayed any further.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("upstream sent a {0}")]
    Malformed(#[from] Malformed),
    #[error("{0}; the session is closed rather than pass it unmasked")]
    Unmaskable(#[from] Unmaskable),
}

/// Descriptions remembered per session, by statement text (bounded: cleared when full).
const MAX_DESCRIBED: usize = 1024;

pub struct Pending {
    protocol: Protocol,
    command_id: Uuid,
    command_seq: u64,
    started: Instant,
    tags: Vec<String>,
    data_rows: u64,
    error: Option<ErrorInfo>,
    /// For a denied command: the ErrorResponse the agent gets instead of the upstream's answer
    /// to the stand-in statement.
    replacement: Option<Bytes>,
    /// Extended protocol: the Bind's result format codes, and the statement text (to find the
    /// result columns a Describe reported).
    bind_formats: Option<Vec<i16>>,
    statement: Option<Arc<str>>,
    columns: Option<Arc<[Column]>>,
    found: Findings,
}

impl Pending {
    pub fn simple() -> Self {
        Pending::new(Protocol::Simple, None, None)
    }

    pub fn extended(statement: Option<Arc<str>>, bind_formats: Vec<i16>) -> Self {
        Pending::new(Protocol::Extended, statement, Some(bind_formats))
    }

    fn new(protocol: Protocol, statement: Option<Arc<str>>, bind_formats: Option<Vec<i16>>) -> Self {
        Pending {
            protocol,
            command_id: Uuid::nil(),
            command_seq: 0,
            started: Instant::now(),
            tags: Vec::new(),
            data_rows: 0,
            error: None,
            replacement: None,
            bind_formats,
            statement,
            columns: None,
            found: Findings::default(),
        }
    }

    pub fn replacing_error_with(mut self, replacement: Option<Bytes>) -> Self {
        self.replacement = replacement;
        self
    }

    pub fn bind(&mut self, id: Uuid, seq: u64) {
        self.command_id = id;
        self.command_seq = seq;
    }

    fn finish(self, outcome: Outcome) -> CommandResult {
        let tagged: u64 = self.tags.iter().map(|t| messages::tag_rows(t)).sum();
        let outcome = match (outcome, &self.error) {
            (Outcome::Ok, Some(_)) => Outcome::Error,
            (o, _) => o,
        };
        CommandResult {
            command_id: self.command_id,
            command_seq: self.command_seq,
            outcome,
            rows: if tagged > 0 { tagged } else { self.data_rows },
            tags: self.tags,
            duration_us: self.started.elapsed().as_micros() as u64,
            error: self.error,
            masked: self.found.tally.into_counts(),
            nulled: self.found.nulled,
        }
    }
}

#[derive(Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Set while an extended-protocol COPY FROM STDIN runs: Syncs are ignored by the server then.
    copy_in: bool,
    /// The format of the running COPY TO STDOUT (from its CopyOutResponse).
    copy_out_binary: bool,
    described: HashMap<Arc<str>, Arc<[Column]>>,
    /// Findings in messages that answer no command (a notice between commands): counted nowhere.
    unattributed: Findings,
    /// Commands forwarded so far.
    pub commands: u64,
    /// The approval a held statement is waiting for, while it waits.
    pub waiting: Option<Uuid>,
}

impl Tracker {
    /// Register what the upstream will owe for messages about to be forwarded.
    pub fn expect(&mut self, items: impl Iterator<Item = Expect>) {
        let now = Instant::now();
        for mut item in items {
            match &mut item {
                Expect::Exec(p) => {
                    p.started = now;
                    self.commands += 1;
                }
                Expect::Sync if self.copy_in => continue,
                Expect::CopyEnd => self.copy_in = false,
                Expect::Sync | Expect::Describe(_) => {}
            }
            self.queue.push_back(item);
        }
    }

    /// The first thing the upstream still owes an answer for (CopyEnd owes none).
    fn front(&mut self) -> Option<&mut Expect> {
        self.queue.iter_mut().find(|e| !matches!(e, Expect::CopyEnd))
    }

    fn front_exec(&mut self) -> Option<&mut Pending> {
        match self.front() {
            Some(Expect::Exec(p)) => Some(p),
            _ => None,
        }
    }

    fn pop_front(&mut self) -> Option<Expect> {
        let index = self.queue.iter().position(|e| !matches!(e, Expect::CopyEnd))?;
        self.queue.remove(index)
    }

    fn pop_front_exec(&mut self) -> Option<Pending> {
        match self.front() {
            Some(Expect::Exec(_)) => match self.pop_front() {
                Some(Expect::Exec(p)) => Some(*p),
                _ => None,
            },
            _ => None,
        }
    }

    fn front_is_extended(&mut self) -> bool {
        self.front_exec().is_some_and(|p| p.protocol == Protocol::Extended)
    }

    /// Where findings in the current message are counted: the command it answers.
    fn findings(&mut self) -> &mut Findings {
        match self.queue.iter_mut().find(|e| !matches!(e, Expect::CopyEnd)) {
            Some(Expect::Exec(p)) => &mut p.found,
            _ => &mut self.unattributed,
        }
    }

    /// Account for one upstream message and mask it; completed commands are appended to `done`.
    /// Returns the frame to send the agent instead: the denial, when this message answers a
    /// denied command's stand-in, or the masked message (when masking applies to the agent).
    pub fn on_backend(
        &mut self,
        frame: &Frame,
        masker: &Masker,
        done: &mut Vec<CommandResult>,
    ) -> Result<Option<Bytes>, BackendError> {
        let body = frame.body();
        let mut denial = None;
        let masked = match frame.tag() {
            b'T' => {
                let columns: Arc<[Column]> = mask::row_description(body)?.into();
                match self.front() {
                    Some(Expect::Describe(text)) => {
                        if let Some(text) = text.take() {
                            if self.described.len() >= MAX_DESCRIBED {
                                self.described.clear();
                            }
                            self.described.insert(text, columns);
                        }
                        self.pop_front();
                    }
                    Some(Expect::Exec(p)) => p.columns = Some(columns),
                    _ => {}
                }
                mask::mask_row_description(masker, body, self.findings())?
            }
            b'n' => {
                if let Some(Expect::Describe(_)) = self.front() {
                    self.pop_front();
                }
                None
            }
            b'D' => match self.queue.iter_mut().find(|e| !matches!(e, Expect::CopyEnd)) {
                Some(Expect::Exec(p)) => {
                    p.data_rows += 1;
                    if p.columns.is_none() {
                        p.columns = p.statement.as_ref().and_then(|text| self.described.get(text).cloned());
                    }
                    mask::mask_data_row(masker, body, p.columns.as_deref(), p.bind_formats.as_deref(), &mut p.found)?
                }
                _ => mask::mask_data_row(masker, body, None, None, &mut self.unattributed)?,
            },
            b'H' => {
                self.copy_out_binary = body.first() == Some(&1);
                None
            }
            b'd' => {
                let binary = self.copy_out_binary;
                mask::mask_copy_data(masker, body, binary, self.findings())?
            }
            b'C' => {
                let tag = messages::command_complete(body)?.to_owned();
                let extended = self.front_is_extended();
                if let Some(p) = self.front_exec() {
                    p.tags.push(tag);
                }
                if extended {
                    done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Ok)));
                }
                None
            }
            b'I' if self.front_is_extended() => {
                done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Ok)));
                None
            }
            b's' if self.front_is_extended() => {
                done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Suspended)));
                None
            }
            b'E' => {
                // A failed Describe (or the Parse/Bind before it) fails the command that follows.
                while let Some(Expect::Describe(_)) = self.front() {
                    self.pop_front();
                }
                let masked = mask::mask_fields(masker, b'E', body, self.findings())?;
                let recorded = masked.as_ref().map_or(body, |m| &m[5..]);
                let (mut code, mut message) = messages::error_fields(recorded)?;
                let extended = self.front_is_extended();
                if let Some(p) = self.front_exec() {
                    if let Some(replacement) = p.replacement.take() {
                        (code, message) = messages::error_fields(&replacement[5..])?;
                        denial = Some(replacement);
                    }
                    p.error.get_or_insert(ErrorInfo { code, message });
                }
                if extended {
                    done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Error)));
                }
                masked
            }
            b'N' => mask::mask_fields(masker, b'N', body, self.findings())?,
            b'A' => mask::mask_notification(masker, body, self.findings())?,
            b'G' if self.front_is_extended() => {
                self.enter_copy_in();
                None
            }
            b'Z' => {
                self.ready_for_query(done);
                None
            }
            _ => None,
        };
        // Nothing reads unattributed findings: drop them with the message.
        self.unattributed = Findings::default();
        Ok(denial.or(masked.filter(|_| masker.masks_agent())))
    }

    /// The server ignores Syncs that reach it during COPY FROM STDIN: forget the ones already
    /// queued behind the COPY, and skip new ones until the agent ends the copy.
    fn enter_copy_in(&mut self) {
        let mut ended = false;
        let mut seen_exec = false;
        self.queue.retain(|e| match e {
            Expect::Exec(_) if !seen_exec => {
                seen_exec = true;
                true
            }
            Expect::CopyEnd => {
                ended = true;
                true
            }
            Expect::Sync => ended || !seen_exec,
            _ => true,
        });
        self.copy_in = !ended;
    }

    fn ready_for_query(&mut self, done: &mut Vec<CommandResult>) {
        while let Some(item) = self.queue.pop_front() {
            match item {
                Expect::Sync => return,
                Expect::CopyEnd | Expect::Describe(_) => {}
                Expect::Exec(p) if p.protocol == Protocol::Simple => done.push(p.finish(Outcome::Ok)),
                Expect::Exec(p) => done.push(p.finish(Outcome::Skipped)),
            }
        }
    }

    /// Commands still owed a response when the session ends.
    pub fn drain_unfinished(&mut self) -> Vec<CommandResult> {
        self.queue
            .drain(..)
            .filter_map(|e| match e {
                Expect::Exec(p) => Some(p.finish(Outcome::Unfinished)),
                _ => None,
            })
            .collect()
    }
}
