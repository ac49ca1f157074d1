//! A session as a reviewer reads it: each command with its decision, the approval behind it and
//! its (masked) result, in order. Built from the session's stored events, which its chain
//! covers, with the people's decisions from the approvals view; the verification report comes
//! with it, so a transcript never looks more trustworthy than its record is.

use super::sessions::{load_session, session_id, verification, SessionView, VerifyView};
use super::{ApiError, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use tollgate_shared::event::{
    kind, ApprovalExpired, ApprovalReleased, ApprovalRequested, Command, CommandResult, Envelope, SessionEnded,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
pub struct TranscriptQuery {
    /// `json` (the default) or `text`.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transcript {
    pub session: SessionView,
    pub verification: VerifyView,
    /// How the session ended, as its last event says (absent while it runs).
    pub ended: Option<String>,
    pub commands: Vec<TranscriptCommand>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptCommand {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub protocol: String,
    /// As recorded: masked where the resource's masking found something.
    pub statement: String,
    pub decision: String,
    pub rule: Option<String>,
    pub classes: Vec<String>,
    pub approval: Option<TranscriptApproval>,
    pub result: Option<TranscriptResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptApproval {
    pub id: Uuid,
    pub rule: String,
    pub quorum: u32,
    pub approver_groups: Vec<String>,
    pub decisions: Vec<TranscriptDecision>,
    /// `released` (it ran), `expired`, or `pending`.
    pub outcome: String,
    pub expiry_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct TranscriptDecision {
    #[serde(skip)]
    pub approval_id: Uuid,
    pub at: DateTime<Utc>,
    pub verdict: String,
    pub channel: String,
    pub approver: String,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptResult {
    pub outcome: String,
    pub tags: Vec<String>,
    pub rows: u64,
    pub duration_us: u64,
    pub error: Option<String>,
    /// What masking replaced in the answer: detector → count.
    pub masked: Vec<String>,
}

/// A session's transcript, as JSON or plain text.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/transcript", tag = "sessions", params(("id" = Uuid, Path), TranscriptQuery),
    responses((status = 200, body = Transcript, description = "JSON, or text/plain with format=text"), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn session_transcript(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<TranscriptQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(id)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let text = match query.format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("format must be json or text, not {other:?}"))),
    };
    let transcript = build(&state, id).await?;
    if text {
        let body = render(&transcript);
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    Ok(Json(transcript).into_response())
}

/// A session's transcript with its verification (the API's and the console's).
pub async fn build(state: &AppState, id: Uuid) -> Result<Transcript, ApiError> {
    let session = load_session(state, id).await?;
    // The events read once: verified, then walked.
    let (verification, raws) = verification(state, id).await?;
    let (commands, ended, approvals) = walk(&raws)?;
    let decisions: Vec<TranscriptDecision> = sqlx::query_as(
        "SELECT approval_id, at, verdict, channel, approver_name AS approver, reason
         FROM approval_decisions WHERE approval_id = ANY($1) ORDER BY at",
    )
    .bind(&approvals)
    .fetch_all(&state.db)
    .await?;
    let mut commands = commands;
    for command in &mut commands {
        if let Some(approval) = &mut command.approval {
            approval.decisions.extend(decisions.iter().filter(|d| d.approval_id == approval.id).cloned());
        }
    }
    Ok(Transcript { session, verification, ended, commands })
}

fn enum_text<T: Serialize>(value: &T) -> String {
    crate::projector::rows::enum_text(value)
}

fn read<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<Envelope<T>, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::Unexpected(anyhow::anyhow!("a stored event cannot be read: {e}")))
}

type Walked = (Vec<TranscriptCommand>, Option<String>, Vec<Uuid>);

/// The commands of a session's events, each with its approval and result.
fn walk(raws: &[(Vec<u8>,)]) -> Result<Walked, ApiError> {
    let mut commands: Vec<TranscriptCommand> = Vec::new();
    let mut by_id: HashMap<Uuid, usize> = HashMap::new();
    let mut by_approval: HashMap<Uuid, usize> = HashMap::new();
    let mut ended = None;
    for (raw,) in raws {
        let head: Envelope<&serde_json::value::RawValue> = read(raw)?;
        match head.kind.as_str() {
            kind::COMMAND => {
                let e: Envelope<Command> = read(raw)?;
                by_id.insert(e.id, commands.len());
                let c = e.payload;
                commands.push(TranscriptCommand {
                    seq: e.seq,
                    at: e.at,
                    protocol: enum_text(&c.protocol),
                    statement: c.statement,
                    decision: enum_text(&c.decision),
                    rule: c.rule,
                    classes: c.classification.map(|k| k.classes.into_iter().collect()).unwrap_or_default(),
                    approval: None,
                    result: None,
                });
            }
            kind::COMMAND_RESULT => {
                let r: CommandResult = read(raw)?.payload;
                if let Some(&i) = by_id.get(&r.command_id) {
                    commands[i].result = Some(TranscriptResult {
                        outcome: enum_text(&r.outcome),
                        tags: r.tags,
                        rows: r.rows,
                        duration_us: r.duration_us,
                        error: r.error.map(|e| format!("{} {}", e.code, e.message)),
                        masked: r.masked.iter().map(|m| format!("{} ×{}", m.detector, m.count)).collect(),
                    });
                }
            }
            kind::APPROVAL_REQUESTED => {
                let a: ApprovalRequested = read(raw)?.payload;
                if let Some(&i) = by_id.get(&a.command_id) {
                    by_approval.insert(a.approval_id, i);
                    commands[i].approval = Some(TranscriptApproval {
                        id: a.approval_id,
                        rule: a.rule,
                        quorum: a.quorum,
                        approver_groups: a.approver_groups,
                        decisions: Vec::new(),
                        outcome: "pending".into(),
                        expiry_reason: None,
                    });
                }
            }
            kind::APPROVAL_RELEASED => {
                let a: ApprovalReleased = read(raw)?.payload;
                if let Some(approval) = by_approval.get(&a.approval_id).and_then(|&i| commands[i].approval.as_mut()) {
                    approval.outcome = "released".into();
                }
            }
            kind::APPROVAL_EXPIRED => {
                let a: ApprovalExpired = read(raw)?.payload;
                if let Some(approval) = by_approval.get(&a.approval_id).and_then(|&i| commands[i].approval.as_mut()) {
                    approval.outcome = "expired".into();
                    approval.expiry_reason = Some(enum_text(&a.reason));
                }
            }
            kind::SESSION_ENDED => {
                let e: SessionEnded = read(raw)?.payload;
                ended = Some(match e.detail {
                    Some(detail) => format!("{} ({detail})", enum_text(&e.reason)),
                    None => enum_text(&e.reason),
                });
            }
            _ => {}
        }
    }
    Ok((commands, ended, by_approval.into_keys().collect()))
}

/// Text an agent chose, safe to print: control characters (a carriage return, an escape
/// sequence) shown escaped, so no line of it can pass for a line of the transcript's own.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// The plain-text form: one block per command.
fn render(t: &Transcript) -> String {
    let s = &t.session;
    let v = &t.verification;
    let mut out = String::new();
    let _ = writeln!(out, "Session {} on {} ({})", s.id, s.resource, s.resource_kind);
    let _ = writeln!(out, "Agent {} ({} {})", clean(&s.agent_name), clean(&s.agent_issuer), clean(&s.agent_subject));
    let _ = writeln!(
        out,
        "From {} via node {}, started {}, {}",
        s.client_addr.as_deref().unwrap_or("?"),
        s.node,
        s.started_at.map_or("?".into(), |at| at.to_rfc3339()),
        match (&s.ended_at, &t.ended) {
            (Some(at), Some(how)) => format!("ended {} ({how})", at.to_rfc3339()),
            _ => "still open".into(),
        }
    );
    if v.trusted {
        let _ = writeln!(out, "Verification: trusted (chain linked and signed, views match the record)");
    } else {
        let _ = writeln!(out, "Verification: NOT TRUSTED");
        for problem in &v.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    for c in &t.commands {
        let _ = writeln!(out);
        let rule = c.rule.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        let _ =
            writeln!(out, "#{} {} {}{} [{}]", c.seq, c.at.to_rfc3339(), c.decision.to_uppercase(), rule, c.protocol);
        for line in c.statement.split('\n') {
            let _ = writeln!(out, "    {}", clean(line));
        }
        if let Some(a) = &c.approval {
            let _ = writeln!(
                out,
                "  approval {} (rule {}, {} of {}): {}{}",
                a.id,
                a.rule,
                a.quorum,
                a.approver_groups.join("/"),
                a.outcome,
                a.expiry_reason.as_ref().map(|r| format!(", {r}")).unwrap_or_default()
            );
            for d in &a.decisions {
                let reason = d.reason.as_ref().map(|r| format!(": {r:?}")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {} by {} via {} at {}{reason}",
                    d.verdict,
                    d.approver,
                    d.channel,
                    d.at.to_rfc3339()
                );
            }
        }
        match &c.result {
            Some(r) => {
                let mut line = format!("  -> {}", r.outcome);
                if !r.tags.is_empty() {
                    let _ = write!(line, ", {}", r.tags.join("; "));
                }
                let rows = if r.rows == 1 { "row" } else { "rows" };
                let _ = write!(line, ", {} {rows}, {:.1} ms", r.rows, r.duration_us as f64 / 1000.0);
                if let Some(e) = &r.error {
                    let _ = write!(line, ", error {}", clean(e));
                }
                if !r.masked.is_empty() {
                    let _ = write!(line, ", masked {}", r.masked.join(", "));
                }
                let _ = writeln!(out, "{line}");
            }
            None if c.decision == "deny" => {
                let _ = writeln!(out, "  -> not run");
            }
            None => {
                let _ = writeln!(out, "  -> no result recorded");
            }
        }
    }
    out
}
