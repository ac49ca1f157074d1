//! Matching upstream responses to the commands that caused them.
//!
//! The agent's messages push what the upstream will owe (`Exec` per Query or Execute, `Sync`
//! per Sync, and the implicit sync at the end of a Query); responses pop them. This follows the
//! protocol's own rules: an error in an extended-protocol pipeline makes the server skip
//! everything up to the next Sync, and a Sync received during COPY FROM STDIN is ignored.

use super::super::frame::Frame;
use super::super::messages::{self, Malformed};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;
use tollgate_shared::event::{CommandResult, ErrorInfo, Outcome, Protocol};
use uuid::Uuid;

pub enum Expect {
    Exec(Pending),
    Sync,
    /// The agent ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
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
}

impl Pending {
    pub fn new(protocol: Protocol) -> Self {
        Pending {
            protocol,
            command_id: Uuid::nil(),
            command_seq: 0,
            started: Instant::now(),
            tags: Vec::new(),
            data_rows: 0,
            error: None,
            replacement: None,
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
        }
    }
}

#[derive(Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Set while an extended-protocol COPY FROM STDIN runs: Syncs are ignored by the server then.
    copy_in: bool,
    /// Commands forwarded so far.
    pub commands: u64,
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
                Expect::Sync => {}
            }
            self.queue.push_back(item);
        }
    }

    fn front_exec(&mut self) -> Option<&mut Pending> {
        match self.queue.iter_mut().find(|e| !matches!(e, Expect::CopyEnd)) {
            Some(Expect::Exec(p)) => Some(p),
            _ => None,
        }
    }

    fn pop_front_exec(&mut self) -> Option<Pending> {
        let index = self.queue.iter().position(|e| !matches!(e, Expect::CopyEnd))?;
        match self.queue.get(index) {
            Some(Expect::Exec(_)) => match self.queue.remove(index) {
                Some(Expect::Exec(p)) => Some(p),
                _ => None,
            },
            _ => None,
        }
    }

    fn front_is_extended(&mut self) -> bool {
        self.front_exec().is_some_and(|p| p.protocol == Protocol::Extended)
    }

    /// Account for one upstream message; completed commands are appended to `done`. Returns the
    /// frame to send the agent instead, when this one answers a denied command's stand-in.
    pub fn on_backend(&mut self, frame: &Frame, done: &mut Vec<CommandResult>) -> Result<Option<Bytes>, Malformed> {
        let mut substitute = None;
        match frame.tag() {
            b'D' => {
                if let Some(p) = self.front_exec() {
                    p.data_rows += 1;
                }
            }
            b'C' => {
                let tag = messages::command_complete(frame.body())?.to_owned();
                let extended = self.front_is_extended();
                if let Some(p) = self.front_exec() {
                    p.tags.push(tag);
                }
                if extended {
                    done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Ok)));
                }
            }
            b'I' if self.front_is_extended() => done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Ok))),
            b's' if self.front_is_extended() => {
                done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Suspended)))
            }
            b'E' => {
                let (mut code, mut message) = messages::error_fields(frame.body())?;
                let extended = self.front_is_extended();
                if let Some(p) = self.front_exec() {
                    if let Some(replacement) = p.replacement.take() {
                        (code, message) = messages::error_fields(&replacement[5..])?;
                        substitute = Some(replacement);
                    }
                    p.error.get_or_insert(ErrorInfo { code, message });
                }
                if extended {
                    done.extend(self.pop_front_exec().map(|p| p.finish(Outcome::Error)));
                }
            }
            b'G' if self.front_is_extended() => self.enter_copy_in(),
            b'Z' => self.ready_for_query(done),
            _ => {}
        }
        Ok(substitute)
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
                Expect::CopyEnd => {}
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
