//! `max_rows_written`: a write runs inside a transaction the proxy opens (or, inside the agent's
//! own transaction, a savepoint), and the server's own count decides: within the limit the proxy
//! commits (releases) and the agent sees exactly the answer it would have had; over it the proxy
//! rolls back and the agent gets an error naming the limit, with its transaction as it was
//! before the statement. The proxy's own statements are recorded like the agent's (step
//! `row_limit`), so the upstream runs nothing the record does not show.
//!
//! The count is the server's own: the rows the transaction inserted, updated and deleted in
//! user tables (the statistics behind `pg_stat_xact_user_tables`) before and after the statement, read by statements
//! the proxy sends in the same pipeline. So rows written by cascades, triggers, rules, functions
//! and CTEs count too. A statement runs under the limit when it may write rows (its classes, or
//! a function whose body the proxy cannot see); refused while a limit is set: TRUNCATE, COPY
//! FROM, DO blocks and CALL (which may end transactions), several statements in one Query, a SQL
//! EXECUTE, and a Query sent while extended-protocol messages before it await a Sync (the
//! transaction status is not known).
//!
//! Over the extended protocol no transaction needs opening: a statement runs in its pipeline's
//! transaction (implicit, committed by the agent's Sync, or the agent's own block). The proxy
//! counts with a named statement of its own just before and just after the agent's Execute and
//! sends a Flush for the answers. Within the limit the agent gets its CommandComplete; over it,
//! the proxy sends a stand-in the server fails on: the server aborts the transaction and skips
//! to the agent's Sync, exactly as if the statement itself had failed, and the agent gets the
//! error naming the limit. Deferred triggers fire at the agent's commit, after the count.

use super::super::super::classify::{self, Analysis};
use super::super::super::frame::Frame;
use super::super::super::messages::{self, Severity};
use super::super::expire;
use super::super::guard::{Judged, Refusal};
use super::super::hold::{self, Release};
use super::super::tracker::{Expect, LimitedDone, Pending, QuietDone};
use super::{Forward, Frontend};
use crate::pg::relay::Stop;
use crate::session::hold::Hold;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tollgate_shared::event::{
    kind, ApprovalReleased, Command, CommandResult, Decision, EndReason, ErrorInfo, ExpiryReason, Outcome, PgCommand,
    Protocol, Step,
};
use tollgate_shared::policy::ApprovalRule;

/// SQLSTATE of a statement rolled back for writing too many rows (program_limit_exceeded).
const OVER_LIMIT: &str = "54000";
const SAVEPOINT: &str = "tollgate_row_limit";
/// The proxy's own statement and portal that count over the extended protocol.
const COUNTER: &str = "tollgate_row_limit";

/// Classes that may change rows: the limit applies.
const WRITERS: &[&str] = &["insert", "update", "delete", "merge", classify::USER_FUNCTION, classify::DYNAMIC_SQL];
/// Classes the limit cannot be kept for: refused while it is set.
const UNCOUNTABLE: &[&str] = &["truncate", "copy_from", "copy_program", "do_block", "call"];
/// Built-in functions that write large objects: their rows live in `pg_catalog`, which the
/// count leaves out, so a statement calling one is refused while a limit is set.
const LARGE_OBJECT_WRITERS: &[&str] = &[
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_from_bytea",
    "lo_put",
    "lo_unlink",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

/// What the current transaction has done so far, in one row: rows written in tables outside
/// `pg_catalog`, changes to `pg_class` itself (a relation created, altered, truncated or dropped:
/// a dropped table's rows would leave the sum), and whether the server counts at all. Every name
/// and operator is schema-qualified: the agent's search_path cannot put its own in their place.
/// The statistics functions over `pg_class` directly: the `pg_stat_xact_user_tables` view costs
/// three times as much (0.28 against 0.09 ms a call, `SELECT 1` being 0.03).
const WRITTEN: &str = "SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid) \
     OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) \
     OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)), 0), \
     pg_catalog.pg_stat_get_xact_tuples_inserted('pg_catalog.pg_class'::pg_catalog.regclass) \
     OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated('pg_catalog.pg_class'::pg_catalog.regclass) \
     OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted('pg_catalog.pg_class'::pg_catalog.regclass), \
     pg_catalog.current_setting('track_counts') \
     FROM pg_catalog.pg_class c WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,m}'::pg_catalog.\"char\"[]) \
     AND c.relnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace";

/// One reading of [`WRITTEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rows: u64,
    relations: u64,
}

/// What a row limit makes of a statement the policy allows.
pub(super) enum Limit {
    /// It writes no rows: as usual.
    None,
    /// Run it under the limit.
    Run(u64),
    /// Refuse it: the limit could not be kept.
    Refuse(Refusal),
}

/// Whether and how `max_rows_written` applies to a statement judged `judged`. `whole`: a Query
/// with nothing unsynced before it (the transaction status is known), an Execute that runs its
/// portal to completion.
fn applies(
    limit: Option<u64>,
    rows_rules: bool,
    judged: &Judged,
    analysis: Option<&Analysis>,
    protocol: Protocol,
    executes: usize,
    whole: bool,
) -> Limit {
    if limit.is_none() && !rows_rules {
        return Limit::None;
    }
    if judged.refusal.is_some() {
        return Limit::None;
    }
    let counted = match limit {
        Some(n) => format!("limits writes to {n} rows per statement"),
        None => "holds writes by the rows they write (an approval rule's rows_over)".to_owned(),
    };
    let limit = limit.unwrap_or(u64::MAX);
    let classes = judged.command.classification.as_ref().map(|c| &c.classes);
    let has = |list: &[&str]| classes.is_some_and(|c| list.iter().any(|x| c.contains(*x)));
    let functions = judged.command.classification.as_ref().map(|c| &c.functions);
    let calls =
        |list: &[&str]| functions.is_some_and(|f| f.iter().any(|f| list.contains(&f.rsplit('.').next().unwrap_or(f))));
    let refuse = |reason: String| Limit::Refuse(Refusal { rule: "max_rows_written", reason });
    if calls(LARGE_OBJECT_WRITERS) {
        return refuse(format!(
            "this resource {counted}, and large objects are written outside the tables the proxy counts; write them \
             elsewhere"
        ));
    }
    if !has(WRITERS) && !has(UNCOUNTABLE) {
        return Limit::None;
    }
    let single = analysis.is_some_and(|a| a.classification.statements == 1) && executes == 0;
    // A cursor runs its query when it is fetched (outside this statement); dblink writes on
    // another connection, which no rollback here undoes.
    let elsewhere = has(&["cursor"]) || functions.is_some_and(|f| f.iter().any(|f| f.contains("dblink")));
    if has(UNCOUNTABLE) || !single || elsewhere {
        return refuse(format!(
            "this resource {counted}, and the proxy cannot keep it for this statement (TRUNCATE, COPY FROM, DO, \
             CALL, a cursor over a write, dblink, several statements in one query, or EXECUTE of a prepared \
             statement); send one statement at a time"
        ));
    }
    match (protocol, whole) {
        (Protocol::Simple, false) => {
            return refuse(format!(
                "this resource {counted}; send Sync after extended-protocol messages before a write, so the proxy \
                 knows the transaction it runs in"
            ))
        }
        // A statement run a few rows at a time writes a few rows at a time, each Execute under
        // the limit: the portal must run whole.
        (Protocol::Extended, false) => {
            return refuse(format!(
                "this resource {counted}; run a statement that may write to completion (Execute with no row count), \
                 so the proxy can count it whole"
            ))
        }
        _ => {}
    }
    Limit::Run(limit)
}

/// The text values of a DataRow (`None` for NULL).
fn values(row: &Bytes) -> Option<Vec<Option<String>>> {
    let body = row.get(5..)?;
    let columns = usize::try_from(i16::from_be_bytes([*body.first()?, *body.get(1)?])).ok()?;
    let mut at = 2;
    let mut out = Vec::with_capacity(columns);
    for _ in 0..columns {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        out.push(Some(std::str::from_utf8(body.get(at..at + len)?).ok()?.to_owned()));
        at += len;
    }
    Some(out)
}

/// A [`WRITTEN`] answer; `None` unless it is one well-formed row from a server that counts.
fn tally(rows: &[Bytes]) -> Option<Tally> {
    let [row] = rows else { return None };
    match values(row)?.as_slice() {
        [Some(rows), Some(relations), Some(track)] if track == "on" => {
            Some(Tally { rows: rows.parse().ok()?, relations: relations.parse().ok()? })
        }
        _ => None,
    }
}

/// How one statement is wrapped: the proxy's statements around it and what decides.
struct Wrap {
    open: String,
    count: String,
    keep: String,
    undo: String,
    /// Inside the agent's own transaction (a savepoint), not one the proxy opened.
    own: bool,
    /// The transaction status the agent would see after the statement.
    status: u8,
    limit: u64,
    rules: Vec<ApprovalRule>,
}

/// Record an ErrorResponse as the statement's outcome.
fn fail(result: &mut CommandResult, error: &Bytes) {
    result.outcome = Outcome::Error;
    if let Ok((code, message)) = messages::error_fields(error.get(5..).unwrap_or_default()) {
        result.error = Some(ErrorInfo { code, message });
    }
}

fn ready(status: u8) -> Bytes {
    messages::framed(b'Z', &[status])
}

/// The kept ReadyForQuery, with the status the agent would have seen without the wrapper.
fn with_status(kept: Vec<Bytes>, status: u8) -> Vec<Bytes> {
    kept.into_iter().map(|frame| if frame.first() == Some(&b'Z') { ready(status) } else { frame }).collect()
}

impl<R, W> Frontend<'_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Whether and how the live policy's row limit (and its rules by rows written) applies to
    /// a statement judged `judged`: [`applies`], with deferrable triggers considered.
    pub(super) async fn limit_of(
        &mut self,
        judged: &Judged,
        rows_rules: bool,
        analysis: Option<&Analysis>,
        protocol: Protocol,
        executes: usize,
        whole: bool,
    ) -> Result<Limit, Stop> {
        let limit = self.guard.row_limit();
        let decided = applies(limit, rows_rules, judged, analysis, protocol, executes, whole);
        if let Limit::Run(_) = decided {
            if let Some(refusal) = self.deferred_writes(protocol).await? {
                return Ok(Limit::Refuse(refusal));
            }
        }
        Ok(decided)
    }

    /// Deferrable constraint triggers write at commit: in a transaction the proxy opens itself
    /// it fires them before its second count, but not in the agent's own transaction nor in a
    /// pipeline's (the agent's Sync commits it). Where they may exist, such a write is refused.
    async fn deferred_writes(&mut self, protocol: Protocol) -> Result<Option<Refusal>, Stop> {
        if !self.created_deferrable_trigger && !self.guard.catalog.deferrable_triggers().await {
            return Ok(None);
        }
        let at_agents_commit = match protocol {
            Protocol::Simple => {
                let end = self.seq;
                self.settle_until(end).await?;
                self.shared.tracker().status != b'I'
            }
            _ => true,
        };
        Ok(at_agents_commit.then(|| Refusal {
            rule: "max_rows_written",
            reason: "this resource limits the rows a statement writes, and its database has deferrable constraint \
                     triggers, which write at commit, after the proxy's count; send the write as a plain query \
                     outside a transaction"
                .into(),
        }))
    }

    /// Run a write under `limit` (see the module's documentation).
    pub(super) async fn run_limited(
        &mut self,
        frame: &Frame,
        mut judged: Judged,
        forward: Forward,
        limit: u64,
        rows_rules: Vec<ApprovalRule>,
        recorded: bool,
    ) -> Result<(), Stop> {
        if forward.protocol == Protocol::Extended {
            return self.run_limited_extended(frame, judged, forward, limit, rows_rules, recorded).await;
        }
        // The transaction status decides the wrapper: everything sent before must be answered
        // (and, `applies` made sure, ended by a Sync or a Query, so the status is current).
        let before = self.seq;
        self.settle_until(before).await?;
        let status = self.shared.tracker().status;
        if status == b'E' {
            // An aborted transaction runs nothing: the server refuses the statement itself.
            let Forward { protocol, pending, changes, .. } = forward;
            self.outbox.frames.push(frame.bytes.clone());
            self.queue_exec(protocol, pending.changing(changes));
            if !recorded {
                self.outbox.record(self.recorder, &judged.command)?;
            }
            return Ok(());
        }
        let own = status == b'T';
        // The count so far is read with the opening statement (the statistics it reads also hold
        // earlier transactions' writes the backend has not reported yet, so it is never 0 by
        // assumption). In a transaction of its own the proxy also fires deferred triggers before
        // the second count, so their writes count too.
        let wrap = if own {
            Wrap {
                open: format!("SAVEPOINT {SAVEPOINT}; {WRITTEN}"),
                count: WRITTEN.to_owned(),
                keep: format!("RELEASE SAVEPOINT {SAVEPOINT}"),
                undo: format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"),
                own,
                status,
                limit,
                rules: rows_rules,
            }
        } else {
            Wrap {
                open: format!("BEGIN; {WRITTEN}"),
                count: format!("SET CONSTRAINTS ALL IMMEDIATE; {WRITTEN}"),
                keep: "COMMIT".to_owned(),
                undo: "ROLLBACK".to_owned(),
                own,
                status,
                limit,
                rules: rows_rules,
            }
        };
        // One pipeline: open (and count), the agent's statement, count again.
        self.proxy_statement(&wrap.open, &judged)?;
        let Forward { protocol, pending, changes, .. } = forward;
        self.outbox.frames.push(frame.bytes.clone());
        self.queue_exec(protocol, pending.changing(changes).limited());
        // A statement held and then approved is on record already (with its limit).
        if !recorded {
            judged.command.postgres.get_or_insert_with(PgCommand::default).row_limit = Some(limit);
            self.outbox.record(self.recorder, &judged.command)?;
        }
        self.proxy_statement(&wrap.count, &judged)?;
        let opened = self.quiet_outcome().await?;
        let second = self.next_quiet()?;
        let LimitedDone { mut result, kept } = self
            .shared
            .tracker()
            .limited
            .take()
            .ok_or_else(|| lost("the row-limited statement's answer is missing"))?;
        let decided = self.decide(&mut result, kept, (opened, second), &wrap, &judged).await;
        self.record_result(&mut result, decided.is_err());
        self.relay(decided?).await
    }

    /// Put a row-limited statement's result on record: when the session ends here, as
    /// unfinished.
    fn record_result(&self, result: &mut CommandResult, session_ends: bool) {
        if session_ends {
            result.outcome = Outcome::Unfinished;
        }
        match self.recorder.seal(kind::COMMAND_RESULT, &*result) {
            Ok(event) => self.recorder.background(event),
            Err(e) => tracing::error!(error = %e, "cannot seal command.result"),
        }
    }

    /// Hand the agent frames the proxy kept or made, in order with what the backend relays.
    async fn relay(&mut self, frames: Vec<Bytes>) -> Result<(), Stop> {
        for frame in frames {
            if self.inject.send(frame).await.is_err() {
                return Err(Stop::closed(EndReason::ClientClosed));
            }
        }
        Ok(())
    }

    /// Commit or roll back a statement the server has answered; what the agent sees next.
    async fn decide(
        &mut self,
        result: &mut CommandResult,
        kept: Vec<Bytes>,
        (opened, second): (QuietDone, QuietDone),
        wrap: &Wrap,
        judged: &Judged,
    ) -> Result<Vec<Bytes>, Stop> {
        if opened.error.is_some() {
            return Err(lost("the row limit's transaction could not be opened"));
        }
        if result.error.is_some() {
            if wrap.own {
                // Inside the agent's transaction the failure aborts it, as it would have.
                return Ok(kept);
            }
            self.undo(&wrap.undo, judged).await?;
            return Ok(with_status(kept, b'I'));
        }
        if let (Some(error), false) = (&second.error, wrap.own) {
            // A deferred constraint fired before the count failed: the statement's answer, as
            // autocommit would have given it.
            self.undo(&wrap.undo, judged).await?;
            fail(result, error);
            return Ok(vec![error.clone(), ready(b'I')]);
        }
        if let Some(error) = over_limit(result, &opened, &second, wrap.limit)? {
            self.undo(&wrap.undo, judged).await?;
            fail(result, &error);
            return Ok(vec![error, ready(wrap.status)]);
        }
        if let Some(error) = self.approve_commit(&wrap.rules, judged, result).await? {
            // Held by the rows it wrote, and not approved: rolled back.
            self.undo(&wrap.undo, judged).await?;
            fail(result, &error);
            return Ok(vec![error, ready(wrap.status)]);
        }
        self.proxy_statement(&wrap.keep, judged)?;
        match self.quiet_outcome().await?.error {
            None => Ok(with_status(kept, wrap.status)),
            // The commit failed: that is the statement's answer.
            Some(error) => {
                fail(result, &error);
                let after = self.shared.tracker().status;
                Ok(vec![error, ready(after)])
            }
        }
    }

    /// A write over the extended protocol (see the module's documentation).
    async fn run_limited_extended(
        &mut self,
        frame: &Frame,
        mut judged: Judged,
        forward: Forward,
        limit: u64,
        rows_rules: Vec<ApprovalRule>,
        recorded: bool,
    ) -> Result<(), Stop> {
        let Forward { protocol, stand_in, pending, changes } = forward;
        self.count_extended(&judged)?;
        self.outbox.frames.push(frame.bytes.clone());
        self.apply(protocol, &changes);
        self.unseen_in_segment |= super::unseen(&judged);
        self.queue_exec(protocol, pending.changing(changes).limited());
        if !recorded {
            judged.command.postgres.get_or_insert_with(PgCommand::default).row_limit = Some(limit);
            self.outbox.record(self.recorder, &judged.command)?;
        }
        self.count_extended(&judged)?;
        self.outbox.frames.push(messages::flush());
        let end = self.seq;
        self.settle_until(end).await?;
        let (limited, quiet) = {
            let mut tracker = self.shared.tracker();
            (tracker.limited.take(), std::mem::take(&mut tracker.quiet))
        };
        let Some(LimitedDone { mut result, kept }) = limited else {
            // It failed, or the server skipped it after an earlier failure: its answer reached
            // the agent as it came, and there is nothing to decide.
            return Ok(());
        };
        let decided = match <[QuietDone; 2]>::try_from(Vec::from(quiet)) {
            Ok([opened, second]) => match over_limit(&mut result, &opened, &second, limit) {
                Ok(None) => self.approve_commit(&rows_rules, &judged, &result).await,
                other => other,
            },
            Err(_) => Err(lost("the row limit's counts are missing")),
        };
        if let Ok(Some(error)) = &decided {
            fail(&mut result, error);
        }
        self.record_result(&mut result, decided.is_err());
        match decided? {
            None => self.relay(kept).await?,
            // The server fails on the stand-in and skips to the agent's Sync, rolling the
            // pipeline's transaction back (or aborting the agent's block); the agent gets the
            // reason in place of the server's error. Its result is the one just recorded.
            Some(error) => {
                self.outbox.frames.push(stand_in);
                let pending = Pending::extended(None, Vec::new()).replacing_error_with(Some(error));
                self.queue_exec(Protocol::Extended, pending);
            }
        }
        Ok(())
    }

    /// Count the rows written so far with the proxy's own named statement and portal (closed
    /// first, which is no error when absent: an earlier count cut short may have left it).
    fn count_extended(&mut self, judged: &Judged) -> Result<(), Stop> {
        for message in
            [messages::close(b'S', COUNTER), messages::parse(COUNTER, WRITTEN), messages::bind(COUNTER, COUNTER)]
        {
            self.outbox.frames.push(message);
            self.expect(Expect::Own);
        }
        self.outbox.frames.push(messages::execute(COUNTER));
        self.queue_exec(Protocol::Extended, Pending::extended(None, Vec::new()).quiet());
        self.outbox.record(self.recorder, &self.own_command(Protocol::Extended, WRITTEN, judged))?;
        self.outbox.frames.push(messages::close(b'P', COUNTER));
        self.expect(Expect::Own);
        Ok(())
    }

    /// Roll the statement back; a rollback that fails leaves the session in a state nobody
    /// can vouch for, so it ends.
    async fn undo(&mut self, undo: &str, judged: &Judged) -> Result<(), Stop> {
        self.proxy_statement(undo, judged)?;
        match self.quiet_outcome().await?.error {
            None => Ok(()),
            Some(_) => Err(lost("the row limit's rollback failed")),
        }
    }

    /// A write that wrote more rows than an approval rule's `rows_over`: its commit waits for
    /// the decision (the rows stay locked meanwhile, at most the rule's timeout). `None` when it
    /// may commit; the agent's error when it is to be rolled back.
    async fn approve_commit(
        &mut self,
        rules: &[ApprovalRule],
        judged: &Judged,
        result: &CommandResult,
    ) -> Result<Option<Bytes>, Stop> {
        let Some(rule) = rules.iter().find(|r| r.rows_over.is_some_and(|n| result.rows > n)) else {
            return Ok(None);
        };
        let hold = Hold::new(rule);
        let mut waiter = self.guard.approvals.wait(hold.approval_id);
        let command_id = result.command_id;
        self.outbox.seal(self.recorder, kind::APPROVAL_REQUESTED, &hold.request(&judged.command, command_id))?;
        self.flush().await?;
        let _ = self.inject.send(hold::notice(&hold, self.guard.approval_url)).await;
        tracing::info!(session = %self.recorder.session(), approval = %hold.approval_id, rule = %rule.name, rows = result.rows, "commit held for approval");
        self.shared.tracker().waiting = Some(hold.approval_id);
        let withdraw = self.guard.withdraw.as_deref();
        let release = hold::await_release(&hold, &mut waiter, self.reader, &mut self.later, withdraw).await;
        self.shared.tracker().waiting = None;
        match release {
            Release::Run { approvers } => {
                // On record before the commit, which goes out with it.
                let released = ApprovalReleased { approval_id: hold.approval_id, command_id, approvers };
                self.outbox.seal(self.recorder, kind::APPROVAL_RELEASED, &released)?;
                Ok(None)
            }
            Release::Refuse { error, expired } => {
                if let Some(reason) = expired {
                    expire(self.recorder, hold.approval_id, reason).await;
                }
                Ok(Some(error))
            }
            Release::AgentGone => {
                // The session ends; the upstream rolls the open transaction back with it.
                expire(self.recorder, hold.approval_id, ExpiryReason::SessionEnded).await;
                Err(Stop::closed(EndReason::ClientClosed))
            }
        }
    }

    /// Record and queue a statement the proxy runs itself; its answer is not relayed.
    fn proxy_statement(&mut self, sql: &str, judged: &Judged) -> Result<(), Stop> {
        self.outbox.frames.push(messages::query(sql));
        self.queue_exec(Protocol::Simple, Pending::simple().quiet());
        self.outbox.record(self.recorder, &self.own_command(Protocol::Simple, sql, judged))
    }

    /// The record of a statement the proxy runs itself for the row limit.
    fn own_command(&self, protocol: Protocol, sql: &str, judged: &Judged) -> Command {
        let mut command = Command::new(protocol, sql.to_owned(), Decision::Allow);
        command.postgres = Some(PgCommand { step: Some(Step::RowLimit), ..PgCommand::default() });
        command.rule = Some("max_rows_written".into());
        command.policy_version = judged.command.policy_version;
        command.classification = self.guard.classifier.classify(sql).ok().map(|a| a.classification.clone());
        command
    }

    /// Wait until the server has answered everything queued, then take the oldest answer to
    /// the proxy's own statements.
    async fn quiet_outcome(&mut self) -> Result<QuietDone, Stop> {
        let end = self.segment;
        self.settle_until(end).await?;
        self.next_quiet()
    }

    /// The oldest answer to the proxy's own statements not read yet.
    fn next_quiet(&mut self) -> Result<QuietDone, Stop> {
        self.shared.tracker().quiet.pop_front().ok_or_else(|| lost("the proxy's own statement's answer is missing"))
    }
}

/// The count decides: the agent's error when the statement is to be undone, with
/// `result.rows` set to what it wrote.
fn over_limit(
    result: &mut CommandResult,
    opened: &QuietDone,
    second: &QuietDone,
    limit: u64,
) -> Result<Option<Bytes>, Stop> {
    let (Some(before), Some(after)) = (tally(&opened.rows), tally(&second.rows)) else {
        return Err(lost("the server's count of rows written could not be read (or it does not count)"));
    };
    let tagged: u64 = result
        .tags
        .iter()
        .filter(|t| ["INSERT ", "UPDATE ", "DELETE ", "MERGE "].iter().any(|verb| t.starts_with(verb)))
        .map(|t| messages::tag_rows(t))
        .sum();
    let written = after.rows.saturating_sub(before.rows).max(tagged);
    result.rows = written;
    let message = if after.relations != before.relations {
        "tollgate: the statement created, altered, truncated or dropped a relation, which the row limit \
         (max_rows_written) cannot count past; it was rolled back"
            .to_owned()
    } else if written > limit {
        format!(
            "tollgate: the statement wrote {written} rows, over this resource's limit of {limit} (max_rows_written); \
             it was rolled back"
        )
    } else {
        return Ok(None);
    };
    Ok(Some(messages::error_response(Severity::Error, OVER_LIMIT, &message)))
}

fn lost(what: &'static str) -> Stop {
    Stop::refuse(
        EndReason::ProtocolViolation,
        super::super::super::session::SYSTEM_ERROR,
        format!("tollgate: the proxy lost track of the server's answers ({what}); the session is closed"),
    )
}
