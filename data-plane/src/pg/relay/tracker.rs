//! Matching upstream responses to the messages that caused them, and keeping the confirmed view
//! of the session's named statements and portals (see `pg::names`).
//!
//! The agent's messages push what the upstream will owe (an `Exec` per Query or Execute, a
//! `Name` per Parse, Bind or Close, a `Sync` per Sync and after each Query); responses pop them.
//! This follows the protocol's own rules: an error in an extended-protocol message makes the
//! server skip everything up to the next Sync, and a Sync received during COPY FROM STDIN is
//! ignored. Every expectation has a sequence number; [`Tracker::settled`] says up to which one
//! the server's answers are all in, which is when the confirmed names can be trusted.

use super::super::frame::Frame;
use super::super::mask::{self, Column, Findings, Unmaskable};
use super::super::messages::{self, Malformed};
use super::super::names::{Change, Names, Prepared};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tollgate_shared::event::{CommandResult, ErrorInfo, Outcome, Protocol};
use tollgate_shared::mask::Masker;
use uuid::Uuid;

pub enum Expect {
    Exec(Box<Pending>),
    /// A Describe, answered by a RowDescription or NoData: the statement described learns its
    /// result columns (a later Execute of it masks binary values by type). A describe the
    /// proxy sent itself is `hidden`: its answer is not relayed.
    Describe {
        statement: Option<Arc<Prepared>>,
        hidden: bool,
    },
    /// A Parse, Bind or Close: the change takes effect when the server confirms it.
    Name(Change),
    /// A Parse, Bind or Close the proxy sent itself (its names are its own): its answer is not
    /// relayed.
    Own,
    /// The agent's Sync, answered by ReadyForQuery; it ends the server's skipping after an error.
    Sync,
    /// The ReadyForQuery that ends a Query (not a Sync: a Query skipped after an
    /// extended-protocol error produces none, and skipping goes on past it).
    QueryEnd,
    /// The agent ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
}

impl Expect {
    /// Whether the server answers it (CopyEnd gets no answer of its own).
    fn answered(&self) -> bool {
        !matches!(self, Expect::CopyEnd)
    }

    /// Whether it is an extended-protocol message (whose failure makes the server skip to Sync).
    fn extended(&self) -> bool {
        match self {
            Expect::Exec(p) => p.protocol == Protocol::Extended,
            Expect::Describe { .. } | Expect::Name(_) | Expect::Own => true,
            Expect::Sync | Expect::QueryEnd | Expect::CopyEnd => false,
        }
    }

    /// Answered by a ReadyForQuery.
    fn ends_with_ready(&self) -> bool {
        matches!(self, Expect::Sync | Expect::QueryEnd)
    }
}

/// An expectation with its sequence number.
pub struct Item {
    pub seq: u64,
    pub expect: Expect,
    /// The server will skip it (an earlier message of its pipeline failed).
    skipped: bool,
}

impl Item {
    pub fn new(seq: u64, expect: Expect) -> Self {
        Item { seq, expect, skipped: false }
    }
}

/// Why the upstream's stream cannot be relayed any further.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("upstream sent a {0}")]
    Malformed(#[from] Malformed),
    #[error("{0}; the session is closed rather than pass it unmasked")]
    Unmaskable(#[from] Unmaskable),
    #[error("{0}")]
    UnsafeSetting(String),
    #[error("the proxy lost track of the server's answers ({0}); the session is closed")]
    Desync(&'static str),
}

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
    /// Extended protocol: the Bind's result format codes, and the statement (whose result
    /// columns a Describe reported).
    bind_formats: Option<Vec<i16>>,
    statement: Option<Arc<Prepared>>,
    columns: Option<Arc<[Column]>>,
    found: Findings,
    /// Changes to the names, each made when its statement (by index) completes.
    changes: Vec<(usize, Change)>,
    /// Changes made as soon as the server starts on it (a Query drops the unnamed statement).
    at_start: Vec<Change>,
    /// How its answer travels to the agent.
    delivery: Delivery,
    /// A quiet statement's ErrorResponse; a limited one's withheld CommandComplete and
    /// ReadyForQuery.
    kept: Vec<Bytes>,
}

/// How a command's answer reaches the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// As it comes (masked).
    Relay,
    /// Not at all: a statement the proxy ran itself (the row limit's BEGIN, COMMIT...).
    Quiet,
    /// Rows and notices as they come; its CommandComplete and ReadyForQuery are kept until the
    /// proxy has committed or rolled it back (the row limit).
    Limited,
}

/// What a statement the proxy ran itself came back with.
pub struct QuietDone {
    /// Its ErrorResponse, when it failed.
    pub error: Option<Bytes>,
    /// Its DataRows.
    pub rows: Vec<Bytes>,
}

/// A row-limited statement the server has answered, with what the agent has not seen yet.
pub struct LimitedDone {
    pub result: CommandResult,
    /// Its CommandComplete (when it completed) and ReadyForQuery, as the server sent them.
    pub kept: Vec<Bytes>,
}

impl Pending {
    pub fn simple() -> Self {
        Pending::new(Protocol::Simple, None, None)
    }

    pub fn extended(statement: Option<Arc<Prepared>>, bind_formats: Vec<i16>) -> Self {
        Pending::new(Protocol::Extended, statement, Some(bind_formats))
    }

    fn new(protocol: Protocol, statement: Option<Arc<Prepared>>, bind_formats: Option<Vec<i16>>) -> Self {
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
            changes: Vec::new(),
            at_start: Vec::new(),
            delivery: Delivery::Relay,
            kept: Vec::new(),
        }
    }

    /// A statement the proxy runs itself: recorded, never relayed.
    pub fn quiet(mut self) -> Self {
        self.delivery = Delivery::Quiet;
        self
    }

    /// A write under a row limit: its completion waits for the proxy's commit or rollback.
    pub fn limited(mut self) -> Self {
        self.delivery = Delivery::Limited;
        self
    }

    pub fn replacing_error_with(mut self, replacement: Option<Bytes>) -> Self {
        self.replacement = replacement;
        self
    }

    /// What running it does to the names, statement by statement.
    pub fn changing(mut self, changes: Vec<(usize, Change)>) -> Self {
        self.changes = changes;
        self
    }

    /// What the server changes as soon as it starts on it.
    pub fn starting_with(mut self, at_start: Vec<Change>) -> Self {
        self.at_start = at_start;
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
            exec: None,
            forwarded: None,
            file: None,
        }
    }
}

pub struct Tracker {
    queue: VecDeque<Item>,
    /// The highest sequence number pushed.
    issued: u64,
    /// An extended-protocol message failed and no Sync is queued yet: the server skips
    /// everything until the agent's next Sync.
    ignoring: bool,
    /// Set while a COPY FROM STDIN runs: Syncs are ignored by the server then.
    copy_in: bool,
    /// Syncs the agent sent during COPY FROM STDIN (ignored by the server while it copies).
    syncs_during_copy: usize,
    /// The format of the running COPY TO STDOUT (from its CopyOutResponse).
    copy_out_binary: bool,
    /// Findings in messages that answer no command (a notice between commands): counted nowhere.
    unattributed: Findings,
    /// Named statements and portals as the server confirmed them.
    pub names: Names,
    /// Commands forwarded so far.
    pub commands: u64,
    /// The approval a held statement is waiting for, while it waits.
    pub waiting: Option<Uuid>,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// The row-limited statement just answered, for the frontend to settle.
    pub limited: Option<LimitedDone>,
    /// The proxy's own statements answered so far, oldest first, for the frontend to read.
    pub quiet: VecDeque<QuietDone>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            queue: VecDeque::new(),
            issued: 0,
            ignoring: false,
            copy_in: false,
            syncs_during_copy: 0,
            copy_out_binary: false,
            unattributed: Findings::default(),
            names: Names::default(),
            commands: 0,
            waiting: None,
            status: b'I',
            limited: None,
            quiet: VecDeque::new(),
        }
    }
}

impl Tracker {
    /// Register what the upstream will owe for messages about to be forwarded.
    pub fn expect(&mut self, items: impl Iterator<Item = Item>) {
        let now = Instant::now();
        for mut item in items {
            self.issued = self.issued.max(item.seq);
            match &mut item.expect {
                Expect::Exec(p) => {
                    p.started = now;
                    self.commands += 1;
                }
                Expect::Sync if self.copy_in => {
                    self.syncs_during_copy += 1;
                    continue;
                }
                Expect::CopyEnd => {
                    self.copy_in = false;
                    self.syncs_during_copy = 0;
                }
                Expect::Sync | Expect::QueryEnd | Expect::Describe { .. } | Expect::Name(_) | Expect::Own => {}
            }
            if self.ignoring {
                match item.expect {
                    Expect::Sync => self.ignoring = false,
                    _ => item.skipped = true,
                }
            }
            self.queue.push_back(item);
        }
    }

    /// Every expectation up to this sequence number has been answered (or will be skipped):
    /// the confirmed names reflect everything the agent sent up to it.
    pub fn settled(&self) -> u64 {
        self.queue
            .iter()
            .filter(|item| item.expect.answered() && !item.skipped)
            .map(|item| item.seq - 1)
            .min()
            .unwrap_or(self.issued)
    }

    /// The first thing the upstream still owes an answer for.
    fn front(&mut self) -> Option<&mut Expect> {
        front_of(&mut self.queue)
    }

    fn front_exec(&mut self) -> Option<&mut Pending> {
        match self.front() {
            Some(Expect::Exec(p)) => Some(p),
            _ => None,
        }
    }

    fn pop_front(&mut self) -> Option<Expect> {
        let index = self.queue.iter().position(|i| i.expect.answered() && !i.skipped)?;
        self.queue.remove(index).map(|i| i.expect)
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
        match front_of(&mut self.queue) {
            Some(Expect::Exec(p)) => &mut p.found,
            _ => &mut self.unattributed,
        }
    }

    /// The server started on the front command: apply what starting it changes.
    fn start_front(&mut self) {
        if let Some(p) = self.front_exec() {
            let at_start = std::mem::take(&mut p.at_start);
            for change in &at_start {
                self.names.apply(change);
            }
        }
    }

    /// A Parse, Bind or Close was confirmed (ParseComplete, BindComplete, CloseComplete).
    fn confirm_name(&mut self) {
        if let Some(Expect::Name(_) | Expect::Own) = self.front() {
            if let Some(Expect::Name(change)) = self.pop_front() {
                self.names.apply(&change);
            }
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
        if !matches!(frame.tag(), b'S' | b'N' | b'A') {
            self.start_front();
        }
        // A simple-protocol statement stays at the front until its ReadyForQuery.
        let delivery = self.front_exec().map_or(Delivery::Relay, |p| p.delivery);
        // The failure of the proxy's own count in a pipeline is the agent's Execute's: relayed.
        let relay_error = frame.tag() == b'E' && delivery == Delivery::Quiet && self.front_is_extended();
        match (delivery, frame.tag()) {
            (Delivery::Quiet, b'E' | b'D') | (Delivery::Limited, b'C' | b'Z' | b's') => {
                if let Some(p) = self.front_exec() {
                    p.kept.push(frame.bytes.clone());
                }
            }
            _ => {}
        }
        // The answer to a describe, parse, bind or close the proxy sent itself goes no further.
        let hidden = match self.front() {
            Some(Expect::Describe { hidden: true, .. }) => matches!(frame.tag(), b'T' | b'n'),
            Some(Expect::Own) => matches!(frame.tag(), b'1' | b'2' | b'3'),
            _ => false,
        };
        let masked = match frame.tag() {
            b'1' | b'2' | b'3' => {
                self.confirm_name();
                None
            }
            b'T' => {
                let columns: Arc<[Column]> = mask::row_description(body)?.into();
                match self.front() {
                    Some(Expect::Describe { statement, .. }) => {
                        if let Some(statement) = statement {
                            let _ = statement.described.set(columns);
                        }
                        self.pop_front();
                    }
                    Some(Expect::Exec(p)) => p.columns = Some(columns),
                    _ => {}
                }
                mask::mask_row_description(masker, body, self.findings())?
            }
            b'n' => {
                if let Some(Expect::Describe { .. }) = self.front() {
                    self.pop_front();
                }
                None
            }
            b'D' => match front_of(&mut self.queue) {
                Some(Expect::Exec(p)) => {
                    p.data_rows += 1;
                    if p.columns.is_none() {
                        p.columns = p.statement.as_ref().and_then(|s| s.described.get().cloned());
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
                    let index = p.tags.len();
                    p.tags.push(tag);
                    let changes: Vec<Change> =
                        p.changes.iter().filter(|(at, _)| *at == index).map(|(_, c)| c.clone()).collect();
                    for change in &changes {
                        self.names.apply(change);
                    }
                }
                if extended {
                    self.extended_done(Outcome::Ok, done);
                }
                None
            }
            b'I' if self.front_is_extended() => {
                self.extended_done(Outcome::Ok, done);
                None
            }
            b's' if self.front_is_extended() => {
                self.extended_done(Outcome::Suspended, done);
                None
            }
            b'E' => {
                let masked = mask::mask_fields(masker, b'E', body, self.findings())?;
                let recorded = masked.as_ref().map_or(body, |m| &m[5..]);
                let (code, message) = messages::error_fields(recorded)?;
                if self.copy_in {
                    // The COPY failed: the server left copy mode. A Sync the agent sent during
                    // the copy may or may not be the one that ends the server's skipping.
                    if self.syncs_during_copy > 0 {
                        return Err(BackendError::Desync("a Sync sent during a COPY that then failed"));
                    }
                    self.copy_in = false;
                }
                denial = self.on_error(ErrorInfo { code, message }, &frame.bytes, done)?;
                masked
            }
            b'N' => mask::mask_fields(masker, b'N', body, self.findings())?,
            b'A' => mask::mask_notification(masker, body, self.findings())?,
            b'S' => {
                check_parameter(body)?;
                mask::mask_parameter_status(masker, body, &mut self.unattributed)?
            }
            b'G' => {
                self.enter_copy_in();
                None
            }
            b'Z' => {
                self.ready_for_query(body.first().copied(), done)?;
                None
            }
            _ => None,
        };
        // Nothing reads unattributed findings: drop them with the message.
        self.unattributed = Findings::default();
        let kept = match delivery {
            Delivery::Relay => false,
            // Settings and notices the proxy's own statements cause still reach the agent.
            Delivery::Quiet => !matches!(frame.tag(), b'S' | b'N') && !relay_error,
            Delivery::Limited => matches!(frame.tag(), b'C' | b'Z' | b's'),
        };
        if hidden || kept {
            return Ok(Some(Bytes::new()));
        }
        Ok(denial.or(masked.filter(|_| masker.masks_agent())))
    }

    /// An ErrorResponse. In the extended protocol the failing message is the first one owed an
    /// answer; its failure is the command's (a failed Parse, Bind or Describe fails the Execute
    /// that follows), and the server skips everything up to the next Sync.
    fn on_error(
        &mut self,
        error: ErrorInfo,
        frame: &Bytes,
        done: &mut Vec<CommandResult>,
    ) -> Result<Option<Bytes>, Malformed> {
        let extended =
            self.queue.iter().find(|i| i.expect.answered() && !i.skipped).is_some_and(|i| i.expect.extended());
        if !extended {
            // A Query: the error ends the statement (and the rest of the query); ReadyForQuery follows.
            let mut denial = None;
            if let Some(p) = self.front_exec() {
                let mut error = error;
                if let Some(replacement) = p.replacement.take() {
                    let (code, message) = messages::error_fields(&replacement[5..])?;
                    error = ErrorInfo { code, message };
                    denial = Some(replacement);
                }
                p.error.get_or_insert(error);
            }
            return Ok(denial);
        }
        // Messages before the failing command fail with it (a Parse, Bind or Describe).
        let mut agent_message = false;
        while !matches!(self.front(), Some(Expect::Exec(_) | Expect::Sync | Expect::QueryEnd) | None) {
            agent_message |= !matches!(self.front(), Some(Expect::Own));
            self.pop_front();
        }
        let mut denial = None;
        while let Some(mut p) = self.pop_front_exec() {
            if p.delivery == Delivery::Quiet && p.protocol == Protocol::Extended {
                // The proxy's count ahead of the agent's Execute failed, or was skipped after the
                // agent's Bind failed: either way the failure is the agent's Execute's, next.
                let rows = std::mem::take(&mut p.kept).into_iter().filter(|f| f.first() != Some(&b'E')).collect();
                self.quiet.push_back(QuietDone { error: Some(frame.clone()), rows });
                let outcome = if agent_message { Outcome::Skipped } else { Outcome::Error };
                if !agent_message {
                    p.error = Some(error.clone());
                }
                done.push(p.finish(outcome));
                while matches!(self.front(), Some(Expect::Own)) {
                    self.pop_front();
                }
                continue;
            }
            let mut error = error;
            if let Some(replacement) = p.replacement.take() {
                let (code, message) = messages::error_fields(&replacement[5..])?;
                error = ErrorInfo { code, message };
                denial = Some(replacement);
            }
            p.error.get_or_insert(error);
            if p.delivery == Delivery::Quiet {
                let rows = std::mem::take(&mut p.kept).into_iter().filter(|f| f.first() != Some(&b'E')).collect();
                self.quiet.push_back(QuietDone { error: Some(frame.clone()), rows });
            }
            done.push(p.finish(Outcome::Error));
            break;
        }
        // Everything up to the next Sync is skipped; with no Sync queued yet, whatever comes
        // before the agent's next one is.
        let mut synced = false;
        for item in self.queue.iter_mut().filter(|i| i.expect.answered() && !i.skipped) {
            if matches!(item.expect, Expect::Sync) {
                synced = true;
                break;
            }
            item.skipped = true;
        }
        self.ignoring = !synced;
        Ok(denial)
    }

    /// The front extended-protocol Execute completed (or was suspended): a statement the proxy
    /// ran itself leaves its answer for the frontend, a row-limited one waits for its decision.
    fn extended_done(&mut self, outcome: Outcome, done: &mut Vec<CommandResult>) {
        let Some(mut p) = self.pop_front_exec() else { return };
        match p.delivery {
            Delivery::Relay => {}
            Delivery::Quiet => self.quiet.push_back(QuietDone { error: None, rows: std::mem::take(&mut p.kept) }),
            Delivery::Limited => {
                let kept = std::mem::take(&mut p.kept);
                self.limited = Some(LimitedDone { result: p.finish(outcome), kept });
                return;
            }
        }
        done.push(p.finish(outcome));
    }

    /// The server ignores Syncs that reach it during COPY FROM STDIN: forget the ones already
    /// queued behind the COPY, and skip new ones until the agent ends the copy. A CopyDone or
    /// CopyFail queued before the COPY began was ignored by the server: it ends nothing.
    fn enter_copy_in(&mut self) {
        let mut ended = false;
        let mut seen_exec = false;
        let mut dropped = 0;
        self.queue.retain(|item| match item.expect {
            Expect::Exec(_) if !seen_exec && !item.skipped => {
                seen_exec = true;
                true
            }
            Expect::CopyEnd if !seen_exec => false,
            Expect::CopyEnd => {
                ended = true;
                true
            }
            Expect::Sync if seen_exec && !ended => {
                dropped += 1;
                false
            }
            _ => true,
        });
        self.copy_in = !ended;
        self.syncs_during_copy = if ended { 0 } else { dropped };
    }

    /// ReadyForQuery ends a Query or answers a Sync. Outside a transaction block (status `I`),
    /// portals other than held cursors are gone. One that answers nothing queued means the
    /// proxy's view of the server is wrong: the session ends.
    fn ready_for_query(&mut self, status: Option<u8>, done: &mut Vec<CommandResult>) -> Result<(), BackendError> {
        if !self.queue.iter().any(|i| i.expect.ends_with_ready() && !i.skipped) {
            return Err(BackendError::Desync("a ReadyForQuery nothing was waiting for"));
        }
        while let Some(item) = self.queue.pop_front() {
            match item.expect {
                Expect::Sync | Expect::QueryEnd if !item.skipped => break,
                Expect::Sync
                | Expect::QueryEnd
                | Expect::CopyEnd
                | Expect::Describe { .. }
                | Expect::Name(_)
                | Expect::Own => {}
                Expect::Exec(mut p) if p.protocol == Protocol::Simple && !item.skipped => match p.delivery {
                    Delivery::Relay => done.push(p.finish(Outcome::Ok)),
                    Delivery::Quiet => {
                        let kept = std::mem::take(&mut p.kept);
                        let (errors, rows): (Vec<Bytes>, Vec<Bytes>) =
                            kept.into_iter().partition(|f| f.first() == Some(&b'E'));
                        self.quiet.push_back(QuietDone { error: errors.into_iter().next(), rows });
                        done.push(p.finish(Outcome::Ok));
                    }
                    Delivery::Limited => {
                        let kept = std::mem::take(&mut p.kept);
                        self.limited = Some(LimitedDone { result: p.finish(Outcome::Ok), kept });
                    }
                },
                Expect::Exec(p) => done.push(p.finish(Outcome::Skipped)),
            }
        }
        self.ignoring = false;
        self.copy_in = false;
        self.syncs_during_copy = 0;
        if let Some(status) = status {
            self.status = status;
        }
        if status == Some(b'I') {
            self.names.apply(&Change::EndTransaction);
        }
        Ok(())
    }

    /// Commands still owed a response when the session ends.
    pub fn drain_unfinished(&mut self) -> Vec<CommandResult> {
        self.queue
            .drain(..)
            .filter_map(|item| match item.expect {
                Expect::Exec(p) if !p.command_id.is_nil() => Some(p.finish(Outcome::Unfinished)),
                _ => None,
            })
            .collect()
    }
}

fn front_of(queue: &mut VecDeque<Item>) -> Option<&mut Expect> {
    queue.iter_mut().find(|i| i.expect.answered() && !i.skipped).map(|i| &mut i.expect)
}

/// A ParameterStatus the proxy cannot live with: the server would read later statements under
/// lexical rules the proxy does not parse with (see `pg::lexical`).
fn check_parameter(body: &[u8]) -> Result<(), BackendError> {
    let mut c = messages::Cursor::new(body, "ParameterStatus");
    let name = String::from_utf8_lossy(c.cbytes()?).into_owned();
    let value = String::from_utf8_lossy(c.cbytes()?).into_owned();
    match super::super::lexical::check_reported(&name, &value) {
        Ok(()) => Ok(()),
        Err(reason) => Err(BackendError::UnsafeSetting(reason)),
    }
}
