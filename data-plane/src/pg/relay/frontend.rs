//! Agent → upstream: each message decoded, each statement judged as the server will run it
//! (the Query text; a prepared statement's text at Parse and at Execute; the prepared statements
//! a SQL `EXECUTE` runs), recorded, then forwarded, or replaced by a stand-in the upstream
//! refuses, or held for approval.
//!
//! Names (prepared statements, portals) are resolved the way the server resolves them: from the
//! current segment's [`Overlay`], else from the names the server confirmed, once it has answered
//! everything sent before the segment (see `pg::names`). A name nobody knows is refused.

use super::super::classify::{self, Analysis, NameOp};
use super::super::frame::{Frame, FrameReader};
use super::super::messages::{self, Malformed, Severity};
use super::super::names::{self, Change, Lookup, Overlay, Portal, Prepared};
use super::super::session::{FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION};
use super::guard::{Judged, Refusal, Subject};
use super::hold::{self, Release};
use super::outbox::Outbox;
use super::tracker::{Expect, Item, Pending};
use super::{expire, Guard, Shared, Stop};
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tollgate_shared::event::{kind, ApprovalReleased, EndReason, ExpiryReason, Protocol, Step};

mod row_limit;
use row_limit::Limit;

pub struct Frontend<'a, R, W: AsyncWrite + Unpin> {
    recorder: &'a SessionRecorder,
    guard: &'a Guard<'a>,
    shared: &'a Shared,
    reader: &'a mut FrameReader<R>,
    writer: BufWriter<&'a mut W>,
    inject: tokio::sync::mpsc::Sender<Bytes>,
    outbox: Outbox,
    overlay: Overlay,
    /// The sequence number of the last expectation queued.
    seq: u64,
    /// The Sync (or Query) that began the current segment.
    segment: u64,
    /// A statement whose effects the proxy cannot see (`user_function`, `dynamic_sql`) ran in
    /// the current extended-protocol segment: it may have changed how the server reads SQL.
    unseen_in_segment: bool,
    /// ...and statement text waits until the server has answered up to here (ReadyForQuery
    /// reports settings, so a session the server now reads differently ends first).
    barrier: Option<u64>,
    /// Frames that arrived while a statement was held, to handle before reading more.
    later: Vec<Frame>,
    /// A statement of this session created a deferrable constraint trigger (perhaps in a
    /// transaction the catalog cannot see yet).
    created_deferrable_trigger: bool,
}

/// PostgreSQL keeps 63 bytes of a statement or portal name: longer names would collide on
/// the server while the proxy told them apart.
const MAX_NAME: usize = 63;

/// What the upstream will run in place of a refused statement, and what it owes for it.
struct Forward {
    protocol: Protocol,
    stand_in: Bytes,
    pending: Pending,
    /// What running it changes in the names, applied to the overlay once it is forwarded.
    changes: Vec<(usize, Change)>,
}

/// The prepared statements a text's SQL `EXECUTE`s run, or why it is refused.
#[derive(Default)]
struct Resolved {
    executes: Vec<(String, Arc<Prepared>)>,
    refusal: Option<Refusal>,
}

fn check_name(name: &str) -> Result<(), Stop> {
    if name.starts_with(messages::OWN_NAME_PREFIX) {
        return Err(Stop::refuse(
            EndReason::ProtocolViolation,
            PROTOCOL_VIOLATION,
            format!(
                "tollgate: statement and portal names beginning with {:?} are the proxy's own",
                messages::OWN_NAME_PREFIX
            ),
        ));
    }
    if name.len() > MAX_NAME {
        return Err(Stop::refuse(
            EndReason::ProtocolViolation,
            PROTOCOL_VIOLATION,
            format!("tollgate: statement and portal names are limited to {MAX_NAME} bytes (the server truncates longer ones)"),
        ));
    }
    Ok(())
}

/// Whether a forwarded statement may do what the proxy cannot see (and so change settings).
fn unseen(judged: &Judged) -> bool {
    let classes = judged.command.classification.as_ref().map(|c| &c.classes);
    classes.is_some_and(|c| c.contains(classify::USER_FUNCTION) || c.contains(classify::DYNAMIC_SQL))
}

fn malformed(e: Malformed) -> Stop {
    Stop::refuse(EndReason::ProtocolViolation, PROTOCOL_VIOLATION, format!("tollgate: {e}"))
}

impl<'a, R, W> Frontend<'a, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub fn new(
        recorder: &'a SessionRecorder,
        guard: &'a Guard<'a>,
        shared: &'a Shared,
        reader: &'a mut FrameReader<R>,
        writer: &'a mut W,
        inject: tokio::sync::mpsc::Sender<Bytes>,
    ) -> Self {
        Frontend {
            recorder,
            guard,
            shared,
            reader,
            writer: BufWriter::with_capacity(64 * 1024, writer),
            inject,
            outbox: Outbox::default(),
            overlay: Overlay::default(),
            seq: 0,
            segment: 0,
            unseen_in_segment: false,
            barrier: None,
            later: Vec::new(),
            created_deferrable_trigger: false,
        }
    }

    pub async fn run(mut self) -> Stop {
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            frames.clear();
            if self.later.is_empty() {
                match self.reader.read_frames(&mut frames).await {
                    Ok(true) => {}
                    Ok(false) => return Stop::closed(EndReason::ClientClosed),
                    Err(e) => return Stop::io(EndReason::ClientClosed, e),
                }
            } else {
                std::mem::swap(&mut frames, &mut self.later);
            }
            for frame in &frames {
                match self.message(frame).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Terminate: forward what came before it, then leave.
                        return match self.flush().await {
                            Ok(()) => Stop::closed(EndReason::ClientClosed),
                            Err(stop) => stop,
                        };
                    }
                    Err(stop) => return stop,
                }
            }
            if let Err(stop) = self.flush().await {
                return stop;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        self.outbox.flush(self.recorder, self.shared, &mut self.writer).await
    }

    /// Queue what the upstream will owe; returns its sequence number.
    fn expect(&mut self, expect: Expect) -> u64 {
        self.seq += 1;
        self.outbox.expected.push(Item::new(self.seq, expect));
        self.seq
    }

    /// A Sync (sent by the agent, or the end of a Query) ends the segment.
    fn end_segment(&mut self, end: Expect) {
        self.segment = self.expect(end);
        self.overlay.clear();
        if std::mem::take(&mut self.unseen_in_segment) {
            self.barrier = Some(self.segment);
        }
    }

    /// Before statement text reaches the server: if a statement whose effects the proxy cannot
    /// see ran, wait until the server has answered it (and reported its settings).
    async fn before_text(&mut self) -> Result<(), Stop> {
        if self.unseen_in_segment {
            return Err(Stop::refuse(
                EndReason::ProtocolViolation,
                PROTOCOL_VIOLATION,
                "tollgate: a statement the proxy cannot see through (a user function or dynamic SQL) ran in this \
                 pipeline; send Sync before the next statement text"
                    .into(),
            ));
        }
        if let Some(barrier) = self.barrier.take() {
            self.settle_until(barrier).await?;
        }
        Ok(())
    }

    /// Handle one message; `false` when the agent said goodbye.
    async fn message(&mut self, frame: &Frame) -> Result<bool, Stop> {
        match frame.tag() {
            b'Q' => self.query(frame).await?,
            b'P' => self.parse(frame).await?,
            b'B' => self.bind(frame).await?,
            b'E' => self.execute(frame).await?,
            b'D' => self.describe(frame).await?,
            b'C' => self.close(frame)?,
            b'S' => {
                self.outbox.frames.push(frame.bytes.clone());
                self.end_segment(Expect::Sync);
            }
            b'c' | b'f' => {
                self.outbox.frames.push(frame.bytes.clone());
                self.expect(Expect::CopyEnd);
            }
            b'H' | b'd' => self.outbox.frames.push(frame.bytes.clone()),
            b'X' => {
                self.outbox.frames.push(frame.bytes.clone());
                return Ok(false);
            }
            b'F' => {
                return Err(Stop::refuse(
                    EndReason::ProtocolViolation,
                    FEATURE_NOT_SUPPORTED,
                    "tollgate: fast-path function calls are not supported".into(),
                ))
            }
            other => {
                return Err(Stop::refuse(
                    EndReason::ProtocolViolation,
                    PROTOCOL_VIOLATION,
                    format!("tollgate: unexpected message type {:?}", other as char),
                ))
            }
        }
        Ok(true)
    }

    /// `Query`: judged as a whole (one record), with the prepared statements it EXECUTEs.
    async fn query(&mut self, frame: &Frame) -> Result<(), Stop> {
        let sql = messages::query_message(frame.body()).map_err(malformed)?;
        self.before_text().await?;
        let analysis = self.guard.classifier.classify_async(sql).await;
        self.note_triggers(analysis.as_deref().ok());
        let text: Arc<str> = Arc::from(sql);
        let (resolved, changes) = match &analysis {
            Ok(a) => (self.resolve(a, &text).await?, names::changes_of(a, &text)),
            Err(_) => (Resolved::default(), Vec::new()),
        };
        if let Ok(a) = &analysis {
            self.know_calls(a, &resolved.executes).await;
        }
        let subject = |refusal| Subject {
            protocol: Protocol::Simple,
            step: None,
            text: sql,
            analysis: analysis.as_deref(),
            executes: &resolved.executes,
            refusal,
            params: None,
            prepared: None,
        };
        let mut judged = self.guard.judge(subject(resolved.refusal));
        // (A Query replaces the unnamed portal before it runs.)
        if let Some(refusal) = self.portals_at_risk(&judged, "").await? {
            judged = self.guard.judge(subject(Some(refusal)));
        }
        let pending = Pending::simple();
        let forward = Forward { protocol: Protocol::Simple, stand_in: messages::denied_query(), pending, changes };
        let own = analysis.as_deref().ok();
        let rows_rules = judged.command.classification.as_ref().map(|c| self.guard.rows_rules(c)).unwrap_or_default();
        let executes = resolved.executes.len();
        // Nothing queued since the last Sync or Query: the transaction status will be current.
        let synced = self.seq == self.segment;
        let rules = !rows_rules.is_empty();
        match self.limit_of(&judged, rules, own, Protocol::Simple, executes, synced).await? {
            Limit::None => self.submit(frame, judged, forward).await,
            // Held first: once approved, it runs under the limit too.
            Limit::Run(limit) if judged.hold.is_some() => {
                self.hold_then_forward(frame, judged, forward, Some((limit, rows_rules))).await
            }
            Limit::Run(limit) => self.run_limited(frame, judged, forward, limit, rows_rules, false).await,
            Limit::Refuse(refusal) => {
                let judged = self.guard.judge(subject(Some(refusal)));
                self.submit(frame, judged, forward).await
            }
        }
    }

    /// `Parse`: a statement is judged when it is prepared; a denied one is never prepared.
    async fn parse(&mut self, frame: &Frame) -> Result<(), Stop> {
        let (name, sql) = messages::parse_message(frame.body()).map_err(malformed)?;
        check_name(name)?;
        self.before_text().await?;
        let analysis = self.guard.classifier.classify_async(sql).await;
        self.note_triggers(analysis.as_deref().ok());
        let adds = usize::from(!name.is_empty() && !matches!(self.overlay.statement(name), Lookup::Known(_)));
        let refusal = self.over_limit(adds);
        if let Ok(a) = &analysis {
            self.know_calls(a, &[]).await;
        }
        let judged = self.guard.judge(Subject {
            protocol: Protocol::Extended,
            step: Some(Step::Parse),
            text: sql,
            analysis: analysis.as_deref(),
            executes: &[],
            refusal,
            params: None,
            prepared: (!name.is_empty()).then(|| name.to_owned()),
        });
        if judged.refusal.is_some() {
            return self.refuse_step(judged);
        }
        let Ok(analysis) = analysis else { return self.refuse_step(judged) };
        let prepared = Prepared::new(Arc::from(sql), analysis);
        let change = Change::Statement(name.to_owned(), Some(Arc::new(prepared)));
        self.overlay.apply(&change);
        self.outbox.frames.push(frame.bytes.clone());
        self.expect(Expect::Name(change));
        Ok(())
    }

    /// `Bind`: a portal of a statement the proxy knows; a statement it does not know is refused.
    async fn bind(&mut self, frame: &Frame) -> Result<(), Stop> {
        let bind = messages::bind_message(frame.body()).map_err(malformed)?;
        check_name(bind.statement)?;
        check_name(bind.portal)?;
        let Some(statement) = self.statement(bind.statement).await? else {
            let judged = self.guard.refused(
                Some(Step::Bind),
                bind.statement,
                Refusal {
                    rule: "unknown_prepared_statement",
                    reason: format!("prepared statement {:?} is not known to the proxy", bind.statement),
                },
            );
            return self.refuse_step(judged);
        };
        let portal = Portal {
            statement,
            prepared: bind.statement.to_owned(),
            params: bind.params,
            result_formats: bind.result_formats,
            holdable: false,
            bound: true,
        };
        let change = Change::Portal(bind.portal.to_owned(), Some(Arc::new(portal)));
        self.overlay.apply(&change);
        self.outbox.frames.push(frame.bytes.clone());
        self.expect(Expect::Name(change));
        Ok(())
    }

    /// `Execute`: the portal's statement is judged (again: the policy may have changed since it
    /// was prepared) with the prepared statements it EXECUTEs.
    async fn execute(&mut self, frame: &Frame) -> Result<(), Stop> {
        let (name, max_rows) = messages::execute_message(frame.body()).map_err(malformed)?;
        check_name(name)?;
        let Some(portal) = self.portal(name).await? else {
            let judged = self.guard.refused(
                None,
                "",
                Refusal { rule: "unknown_portal", reason: format!("portal {name:?} is not known to the proxy") },
            );
            return self.refuse_step(judged);
        };
        let statement = &portal.statement;
        let resolved = self.resolve(&statement.analysis, &statement.text).await?;
        self.know_calls(&statement.analysis, &resolved.executes).await;
        let subject = |refusal| Subject {
            protocol: Protocol::Extended,
            step: None,
            text: &statement.text,
            analysis: Ok(&statement.analysis),
            executes: &resolved.executes,
            refusal,
            params: Some(portal.params.clone()),
            prepared: (!portal.prepared.is_empty()).then(|| portal.prepared.clone()),
        };
        let mut judged = self.guard.judge(subject(resolved.refusal));
        if let Some(refusal) = self.portals_at_risk(&judged, name).await? {
            judged = self.guard.judge(subject(Some(refusal)));
        }
        let rows_rules = judged.command.classification.as_ref().map(|c| self.guard.rows_rules(c)).unwrap_or_default();
        let (analysis, executes, rules) = (Some(&*statement.analysis), resolved.executes.len(), !rows_rules.is_empty());
        // (A portal run a few rows at a time would be counted a few rows at a time.)
        let whole = max_rows == 0;
        let limited = match self.limit_of(&judged, rules, analysis, Protocol::Extended, executes, whole).await? {
            Limit::None => None,
            Limit::Run(limit) => Some(limit),
            Limit::Refuse(refusal) => {
                judged = self.guard.judge(subject(Some(refusal)));
                None
            }
        };
        // Binary results are masked by type: without a description of this statement, ask the
        // server for one first (its answer is not relayed).
        if portal.result_formats.contains(&1) && statement.described.get().is_none() && judged.refusal.is_none() {
            self.outbox.frames.push(messages::describe(b'P', name));
            self.expect(Expect::Describe { statement: Some(statement.clone()), hidden: true });
        }
        let pending = Pending::extended(Some(statement.clone()), portal.result_formats.clone());
        let changes = names::changes_of(&statement.analysis, &statement.text);
        let forward = Forward { protocol: Protocol::Extended, stand_in: messages::denied_parse(), pending, changes };
        match limited {
            None => self.submit(frame, judged, forward).await,
            // Held first: once approved, it runs under the limit too.
            Some(limit) if judged.hold.is_some() => {
                self.hold_then_forward(frame, judged, forward, Some((limit, rows_rules))).await
            }
            Some(limit) => self.run_limited(frame, judged, forward, limit, rows_rules, false).await,
        }
    }

    async fn describe(&mut self, frame: &Frame) -> Result<(), Stop> {
        // Its answer (RowDescription or NoData) tells what a later Execute returns.
        let described = match messages::describe_message(frame.body()).map_err(malformed)? {
            (b'S', name) => {
                check_name(name)?;
                self.statement(name).await?
            }
            (_, name) => {
                check_name(name)?;
                self.portal(name).await?.map(|p| p.statement.clone())
            }
        };
        self.outbox.frames.push(frame.bytes.clone());
        self.expect(Expect::Describe { statement: described, hidden: false });
        Ok(())
    }

    fn close(&mut self, frame: &Frame) -> Result<(), Stop> {
        let (kind, name) = messages::close_message(frame.body()).map_err(malformed)?;
        check_name(name)?;
        let change = match kind {
            b'S' => Change::Statement(name.to_owned(), None),
            _ => Change::Portal(name.to_owned(), None),
        };
        self.overlay.apply(&change);
        self.outbox.frames.push(frame.bytes.clone());
        self.expect(Expect::Name(change));
        Ok(())
    }

    /// Forward a judged Query or Execute, or its stand-in, or hold it.
    async fn submit(&mut self, frame: &Frame, judged: Judged, forward: Forward) -> Result<(), Stop> {
        if judged.hold.is_some() {
            return self.hold_then_forward(frame, judged, forward, None).await;
        }
        let Forward { protocol, stand_in, pending, changes } = forward;
        // A denied statement is replaced by a stand-in the upstream refuses to parse (after a
        // failed Parse the upstream skips to the agent's Sync), as a real failure would be.
        let pending = match &judged.refusal {
            Some(error) => {
                self.outbox.frames.push(stand_in);
                pending.replacing_error_with(Some(error.clone()))
            }
            None => {
                self.outbox.frames.push(frame.bytes.clone());
                self.apply(protocol, &changes);
                self.creates_functions(&judged);
                self.unseen_in_segment |= unseen(&judged);
                pending.changing(changes)
            }
        };
        self.queue_exec(protocol, pending);
        self.outbox.record(self.recorder, &judged.command)
    }

    /// A portal bound over the extended protocol runs at its Execute, where it is judged
    /// (holds, the row limit). Other ways run a portal by its name: SQL FETCH or MOVE, a
    /// PL/pgSQL cursor variable, `cursor_to_xml`, and whatever dynamic SQL or a function the
    /// proxy cannot read does. A statement that may do so is refused while a bound portal of a
    /// statement that writes (itself or through what it calls) is open (other than `except`,
    /// which runs next).
    async fn portals_at_risk(&mut self, judged: &Judged, except: &str) -> Result<Option<Refusal>, Stop> {
        const BY_NAME: &[&str] = &["cursor_to_xml", "cursor_to_xmlschema"];
        let Some(c) = judged.command.classification.as_ref().filter(|_| judged.refusal.is_none()) else {
            return Ok(None);
        };
        let runs_portals =
            ["cursor", classify::DYNAMIC_SQL, classify::USER_FUNCTION].iter().any(|k| c.classes.contains(*k))
                || c.functions.iter().any(|f| BY_NAME.contains(&f.rsplit('.').next().unwrap_or(f)));
        if !runs_portals {
            return Ok(None);
        }
        // The confirmed view must hold every Bind sent before this segment.
        self.settle().await?;
        // A portal's statement writes by itself or through what it calls (an unreadable
        // function counts as writing).
        let catalog = self.guard.catalog.current();
        let writes = |analysis: &Analysis| {
            let mut c = analysis.classification.clone();
            catalog.expand(&mut c, &[analysis], false);
            c.writes
        };
        let tracker = self.shared.tracker();
        let open = self.overlay.open_portals(&tracker.names);
        let risky = open.iter().find(|(name, p)| name.as_str() != except && p.bound && writes(&p.statement.analysis));
        Ok(risky.map(|(name, _)| Refusal {
            rule: "open_bound_portal",
            reason: format!(
                "portal {name:?}, bound over the extended protocol, runs only by Execute; this statement could run it \
                 by its name (a cursor, dynamic SQL or a function): close the portal first"
            ),
        }))
    }

    /// A statement that creates a deferrable constraint trigger was seen (judged allowed or
    /// not): the row limit counts on it from now on.
    fn note_triggers(&mut self, analysis: Option<&Analysis>) {
        // (Dynamic SQL may create one too.)
        let may =
            |a: &Analysis| a.creates_deferrable_trigger || a.classification.classes.contains(classify::DYNAMIC_SQL);
        if analysis.is_some_and(may) {
            self.created_deferrable_trigger = true;
            self.guard.catalog.triggers_changed();
        }
    }

    /// A statement creating functions runs: a call of them next is judged by their body.
    fn creates_functions(&self, judged: &Judged) {
        let classes = judged.command.classification.as_ref().map(|c| &c.classes);
        if classes.is_some_and(|c| c.contains("create_function")) {
            self.guard.catalog.functions_changed();
        }
    }

    /// Queue the `Exec` of a Query (which drops the unnamed statement and portal when it starts
    /// and ends its segment) or an Execute.
    fn queue_exec(&mut self, protocol: Protocol, pending: Pending) {
        match protocol {
            Protocol::Simple => {
                let pending = pending.starting_with(names::query_start());
                self.expect(Expect::Exec(Box::new(pending)));
                self.end_segment(Expect::QueryEnd);
            }
            // (`Exec`, `Forward` and `Sftp` are SSH's: no PostgreSQL statement has them.)
            Protocol::Extended | Protocol::Exec | Protocol::Forward | Protocol::Sftp | Protocol::Shell => {
                self.expect(Expect::Exec(Box::new(pending)));
            }
        }
    }

    /// An extended-protocol statement's changes count for the rest of its segment (a Query's
    /// segment ends with it).
    fn apply(&mut self, protocol: Protocol, changes: &[(usize, Change)]) {
        if protocol == Protocol::Extended {
            for (_, change) in changes {
                self.overlay.apply(change);
            }
        }
    }

    /// A Parse or Bind refused: a stand-in fails in its place and the agent gets the denial.
    fn refuse_step(&mut self, judged: Judged) -> Result<(), Stop> {
        let error = judged.refusal.clone().unwrap_or_else(|| {
            messages::error_response(
                Severity::Error,
                super::super::session::INSUFFICIENT_PRIVILEGE,
                "tollgate: refused",
            )
        });
        self.outbox.frames.push(messages::denied_parse());
        self.expect(Expect::Exec(Box::new(Pending::extended(None, Vec::new()).replacing_error_with(Some(error)))));
        self.outbox.record(self.recorder, &judged.command)
    }

    /// Resolve the SQL `EXECUTE`s of a text, in order, with what the text itself prepares or
    /// deallocates before them.
    async fn resolve(&mut self, analysis: &Analysis, text: &Arc<str>) -> Result<Resolved, Stop> {
        let mut resolved = Resolved::default();
        let mut local: HashMap<&str, Option<Arc<Prepared>>> = HashMap::new();
        let mut all_gone = false;
        let mut prepares = 0;
        for (_, op) in &analysis.ops {
            if let NameOp::Prepare { name, .. } | NameOp::Declare { name, .. } = op {
                if name.starts_with(messages::OWN_NAME_PREFIX) {
                    resolved.refusal = Some(Refusal {
                        rule: "reserved_name",
                        reason: format!("names beginning with {:?} are the proxy's own", messages::OWN_NAME_PREFIX),
                    });
                    return Ok(resolved);
                }
            }
            match op {
                NameOp::Prepare { name, inner } => {
                    prepares += 1;
                    let prepared = Prepared::new(text.clone(), inner.clone());
                    local.insert(name, Some(Arc::new(prepared)));
                }
                NameOp::Deallocate(Some(name)) => {
                    local.insert(name, None);
                }
                NameOp::Deallocate(None) | NameOp::DiscardAll => {
                    local.clear();
                    all_gone = true;
                }
                NameOp::Execute { name } => {
                    let found = match local.get(name.as_str()) {
                        Some(known) => known.clone(),
                        None if all_gone => None,
                        None => self.statement(name).await?,
                    };
                    match found {
                        Some(prepared) => resolved.executes.push((name.clone(), prepared)),
                        None => {
                            resolved.refusal = Some(Refusal {
                                rule: "unknown_prepared_statement",
                                reason: format!("EXECUTE of {name:?}, a prepared statement the proxy does not know"),
                            });
                            return Ok(resolved);
                        }
                    }
                }
                // A portal bound over the extended protocol runs at Execute, where it is judged
                // (holds, the row limit); SQL FETCH or MOVE would run it past that.
                NameOp::Fetch { name } => {
                    if self.portal(name).await?.is_some_and(|p| p.bound) {
                        resolved.refusal = Some(Refusal {
                            rule: "fetch_of_bound_portal",
                            reason: format!(
                                "portal {name:?} was bound over the extended protocol: run it with Execute, not FETCH \
                                 or MOVE"
                            ),
                        });
                        return Ok(resolved);
                    }
                }
                NameOp::Declare { .. } | NameOp::Close(_) | NameOp::EndTransaction => {}
            }
        }
        resolved.refusal = self.over_limit(prepares);
        Ok(resolved)
    }

    /// Functions a statement calls that the catalog does not have may have just been created:
    /// read the catalog again first (rate-limited).
    async fn know_calls(&mut self, analysis: &Analysis, executes: &[(String, Arc<Prepared>)]) {
        let mut runs: Vec<&Analysis> = vec![analysis];
        runs.extend(executes.iter().map(|(_, p)| &*p.analysis));
        if runs.iter().any(|a| !a.calls.is_empty()) {
            self.guard.catalog.refresh_for(&runs).await;
        }
    }

    /// Refuse preparing `adds` more named statements past the session's limit (re-preparing
    /// the unnamed statement adds none).
    fn over_limit(&self, adds: usize) -> Option<Refusal> {
        if adds == 0 {
            return None;
        }
        let held = self.shared.tracker().names.statement_count() + self.overlay.defined();
        if held + adds <= self.guard.max_prepared {
            return None;
        }
        Some(Refusal {
            rule: "prepared_statement_limit",
            reason: format!(
                "this session holds {held} prepared statements, the limit is {}; deallocate some first",
                self.guard.max_prepared
            ),
        })
    }

    async fn statement(&mut self, name: &str) -> Result<Option<Arc<Prepared>>, Stop> {
        match self.overlay.statement(name) {
            Lookup::Known(p) => Ok(Some(p)),
            Lookup::Absent => Ok(None),
            Lookup::Confirmed | Lookup::ConfirmedIfHoldable => {
                self.settle().await?;
                Ok(self.shared.tracker().names.statement(name))
            }
        }
    }

    async fn portal(&mut self, name: &str) -> Result<Option<Arc<Portal>>, Stop> {
        match self.overlay.portal(name) {
            Lookup::Known(p) => Ok(Some(p)),
            Lookup::Absent => Ok(None),
            Lookup::Confirmed => {
                self.settle().await?;
                Ok(self.shared.tracker().names.portal(name))
            }
            Lookup::ConfirmedIfHoldable => {
                self.settle().await?;
                Ok(self.shared.tracker().names.portal(name).filter(|p| p.holdable))
            }
        }
    }

    /// Wait until the server has answered everything sent before the current segment, so the
    /// confirmed names are what it holds.
    async fn settle(&mut self) -> Result<(), Stop> {
        self.settle_until(self.segment).await
    }

    /// Wait until the server has answered everything up to `seq`. What is pending is forwarded
    /// first, so it answers; the agent is still read meanwhile (kept for later, in order), so
    /// an agent that leaves is noticed.
    async fn settle_until(&mut self, seq: u64) -> Result<(), Stop> {
        if self.shared.tracker().settled() >= seq {
            return Ok(());
        }
        self.flush().await?;
        let mut more = Vec::new();
        loop {
            let answered = self.shared.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if self.shared.tracker().settled() >= seq {
                return Ok(());
            }
            tokio::select! {
                () = &mut answered => {}
                read = self.reader.read_frames(&mut more) => match read {
                    Ok(true) => self.later.append(&mut more),
                    Ok(false) => return Err(Stop::closed(EndReason::ClientClosed)),
                    Err(e) => return Err(Stop::io(EndReason::ClientClosed, e)),
                },
            }
        }
    }

    /// Hold a statement for approval; released, it runs (under `limited`, the row limit and
    /// the approval rules that judge by rows written, when they apply).
    async fn hold_then_forward(
        &mut self,
        frame: &Frame,
        judged: Judged,
        forward: Forward,
        limited: Option<(u64, Vec<tollgate_shared::policy::ApprovalRule>)>,
    ) -> Result<(), Stop> {
        let Judged { mut command, hold, .. } = judged;
        let Some(hold) = hold else { return Ok(()) };
        if let Some((limit, _)) = &limited {
            command.postgres.get_or_insert_with(Default::default).row_limit = Some(*limit);
        }
        // Listen before asking, so no decision can slip by; record and forward what came before.
        let mut waiter = self.guard.approvals.wait(hold.approval_id);
        let event = self.outbox.seal(self.recorder, kind::COMMAND, &command)?;
        self.outbox.seal(self.recorder, kind::APPROVAL_REQUESTED, &hold.request(&command, event.id))?;
        self.flush().await?;
        let _ = self.inject.send(hold::notice(&hold, self.guard.approval_url)).await;
        tracing::info!(session = %self.recorder.session(), approval = %hold.approval_id, rule = %hold.rule.name, "statement held for approval");

        let Forward { protocol, stand_in, mut pending, changes } = forward;
        pending.bind(event.id, event.seq);
        // Should the session end while waiting (shutdown), `run` records the request's end.
        self.shared.tracker().waiting = Some(hold.approval_id);
        let withdraw = self.guard.withdraw.as_deref();
        let release = hold::await_release(&hold, &mut waiter, self.reader, &mut self.later, withdraw).await;
        self.shared.tracker().waiting = None;
        let pending = match release {
            Release::Run { approvers } => {
                tracing::info!(session = %self.recorder.session(), approval = %hold.approval_id, approvers = approvers.len(), "approved; running");
                // On record before it runs, with the batch it goes out with.
                let released = ApprovalReleased { approval_id: hold.approval_id, command_id: event.id, approvers };
                self.outbox.seal(self.recorder, kind::APPROVAL_RELEASED, &released)?;
                if let Some((limit, rules)) = limited {
                    let judged = Judged { command, refusal: None, hold: None };
                    let forward = Forward { protocol, stand_in, pending, changes };
                    return self.run_limited(frame, judged, forward, limit, rules, true).await;
                }
                self.outbox.frames.push(frame.bytes.clone());
                self.apply(protocol, &changes);
                pending.changing(changes)
            }
            Release::Refuse { error, expired } => {
                if let Some(reason) = expired {
                    expire(self.recorder, hold.approval_id, reason).await;
                }
                self.outbox.frames.push(stand_in);
                pending.replacing_error_with(Some(error))
            }
            Release::AgentGone => {
                expire(self.recorder, hold.approval_id, ExpiryReason::SessionEnded).await;
                return Err(Stop::closed(EndReason::ClientClosed));
            }
        };
        self.queue_exec(protocol, pending);
        Ok(())
    }
}
