//! The console's pages, rendered on the server: no asset from anywhere else (the policy says
//! so), every form control labelled, and every page whole without script. One small script of
//! the console's own (`live.js`) keeps the inbox and the session list current.

use super::{signed_in_as, Person};
use crate::api::AppState;
use crate::web::{escape, escape_shown};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write;

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24}header{background:#1b1f24;color:#fff;\
padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center}header a{color:#fff}main{padding:1rem}table{border-collapse:\
collapse;width:100%}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}code{white-space:\
pre-wrap;word-break:break-word}a:focus,button:focus,input:focus{outline:3px solid #0a66d8;outline-offset:2px}.skip{position:\
absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000;padding:.3rem}form.inline{display:inline}.bad{color:#a40000}\
.good{color:#006100}fieldset{border:1px solid #ccc;margin:0 0 1rem}";

/// The live pages' script.
const LIVE_JS: &str = include_str!("live.js");

pub async fn live_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        LIVE_JS,
    )
        .into_response()
}

/// A whole page: the navigation for the signed-in person, then `body`.
pub(super) fn page(title: &str, person: Option<&Person>, body: &str) -> Response {
    let nav = match person {
        None => String::new(),
        Some(p) => format!(
            r#"<nav aria-label="Console"><a href="/console">Approvals</a> <a href="/console/sessions">Sessions</a> <a href="/console/sessions?live=true">Live sessions</a> <a href="/console/reports">Reports</a> <a href="/console/policy">Policy</a></nav>
<span id="who">{name} ({roles})</span>
<form class="inline" method="post" action="/console/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="sign-out">Sign out</button></form>"#,
            name = escape(&p.identity.name),
            roles = escape(&p.caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")),
            csrf = escape(&p.csrf),
        ),
    };
    // Signed-in pages stay current with the live script; its messages are read out politely.
    let live = if person.is_some() {
        r#"<p id="live-status" role="status" aria-live="polite"></p><button type="button" id="live-refresh" hidden>Show the changes</button><script src="/console/live.js" defer></script>"#
    } else {
        ""
    };
    let html = format!(
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} · Tollgate</title><style>{STYLE}</style></head><body><a class="skip" href="#main">Skip to content</a>
<header><strong>Tollgate</strong>{nav}</header><main id="main"><h1>{title}</h1>{live}{body}</main></body></html>"##,
        title = escape(title),
    );
    (
        [
            // The inline style and the console's own script are all that may load or run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(html),
    )
        .into_response()
}

/// A page with one message (errors, refusals).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let mut response = page(
        title,
        None,
        &format!(
            r#"<p role="alert" id="message">{}</p><p><a href="/console">Back to the console</a></p>"#,
            escape(text)
        ),
    );
    *response.status_mut() = status;
    response
}

pub async fn signed_out() -> Response {
    page(
        "Signed out",
        None,
        r#"<p id="message">You are signed out.</p><p><a href="/console/login">Sign in again</a></p>"#,
    )
}

#[derive(Deserialize)]
pub struct InboxQuery {
    decided: Option<uuid::Uuid>,
}

/// The approvals inbox: pending requests, each with the masked statement, the agent, the rule,
/// and (for approvers) approve and deny.
pub async fn inbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<InboxQuery>, QueryRejection>,
) -> Response {
    let person = match signed_in_as(
        &state,
        &headers,
        crate::api::READ_APPROVAL_ROLES,
        "The approvals inbox needs the reviewer, auditor or approver role.",
    )
    .await
    {
        Ok(p) => p,
        Err(page) => return page,
    };
    let pending = match crate::api::approvals::pending(&state).await {
        Ok(p) => p,
        Err(e) => return super::internal(e),
    };
    let approver = person.can(crate::api::APPROVE_ROLES);
    let mut body = String::from(r#"<div id="live" data-kinds="approvals">"#);
    if let Ok(Query(InboxQuery { decided: Some(id) })) = query {
        let _ = write!(body, r#"<p role="status" id="decided">Decision on {id} recorded.</p>"#);
    }
    if pending.is_empty() {
        body.push_str(r#"<p id="empty">No command is waiting for a decision.</p>"#);
    } else {
        body.push_str("<table><thead><tr><th scope=col>Command</th><th scope=col>Agent</th><th scope=col>Resource and rule</th><th scope=col>Requested</th><th scope=col>Decision</th></tr></thead><tbody>");
        for request in &pending {
            let agent = request.agent.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let claims = request.agent.get("attributes").map(|a| a.to_string()).unwrap_or_default();
            let mut decide = String::new();
            if approver {
                let _ = write!(
                    decide,
                    r#"<form method="post" action="/console/approvals/{id}/approve"><input type="hidden" name="csrf" value="{csrf}">
<label for="reason-{id}">Reason</label> <input id="reason-{id}" name="reason" maxlength="1000">
<label for="minutes-{id}">For minutes (optional)</label> <input id="minutes-{id}" name="grant_minutes" inputmode="numeric" size="4">
<button type="submit" class="approve" id="approve-{id}">Approve</button>
<button type="submit" class="deny" id="deny-{id}" formaction="/console/approvals/{id}/deny">Deny</button></form>"#,
                    id = request.id,
                    csrf = escape(&person.csrf),
                );
            } else {
                decide.push_str("<span>Approvers decide</span>");
            }
            // Who decided so far (a quorum may need more than one person).
            let decided: Vec<String> = request
                .decisions
                .iter()
                .map(|d| {
                    format!(
                        r#"<li class="decided">{verdict} by {who} via {channel}{reason}</li>"#,
                        verdict = escape(&d.verdict),
                        who = escape_shown(&d.approver_name),
                        channel = escape(&d.channel),
                        reason = d.reason.as_deref().map(|r| format!(": {}", escape_shown(r))).unwrap_or_default(),
                    )
                })
                .collect();
            let decided = if decided.is_empty() {
                "<small>No decision yet.</small>".to_owned()
            } else {
                format!("<ul>{}</ul>", decided.concat())
            };
            let _ = write!(
                body,
                r#"<tr class="pending" id="request-{id}"><td><code class="statement">{statement}</code></td><td>{agent}<br><small>{claims}</small></td><td>{resource}<br><small>rule {rule}, quorum {quorum}, groups {groups}</small></td><td>{at}<br><small>expires {expires}</small></td><td>{decided}{decide}</td></tr>"#,
                id = request.id,
                statement = escape_shown(&request.statement),
                agent = escape_shown(agent),
                claims = escape_shown(&claims),
                resource = escape(&request.resource),
                rule = escape(&request.rule),
                quorum = request.quorum,
                groups = escape(&request.approver_groups.join(", ")),
                at = request.requested_at.format("%Y-%m-%d %H:%M:%S UTC"),
                expires = request.expires_at.format("%H:%M:%S UTC"),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</div>");
    page("Approvals", Some(&person), &body)
}

#[derive(Deserialize, Default)]
pub struct SessionFilter {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    resource: String,
    /// `YYYY-MM-DDTHH:MM` (what a datetime-local control sends) or RFC 3339, UTC.
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    live: String,
}

/// A filter's time: RFC 3339, or a datetime-local value read as UTC.
pub(super) fn filter_time(field: &str, text: &str) -> Result<Option<Time>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&chrono::Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| format!("{field}: write a time as 2026-12-01T09:30 (UTC)"))
}

type Time = chrono::DateTime<chrono::Utc>;

fn when(t: Option<Time>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

/// Sessions, newest first, with filters (agent, resource, time, a decision among their
/// commands, live or ended); each links to its transcript.
pub async fn sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SessionFilter>, QueryRejection>,
) -> Response {
    let person =
        match signed_in_as(&state, &headers, crate::api::READ_ROLES, "Sessions need the reviewer or auditor role.")
            .await
        {
            Ok(p) => p,
            Err(page) => return page,
        };
    let Ok(Query(filter)) = query else {
        return message(StatusCode::BAD_REQUEST, "Refused", "Malformed filter.");
    };
    let nonempty = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let (from, to) = match (filter_time("From", &filter.from), filter_time("To", &filter.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(why), _) | (_, Err(why)) => return message(StatusCode::BAD_REQUEST, "Refused", &why),
    };
    let query = crate::api::sessions::SessionQuery {
        agent: None,
        agent_name: nonempty(&filter.agent),
        resource: nonempty(&filter.resource),
        from,
        to,
        live: match filter.live.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        decision: nonempty(&filter.decision),
        limit: Some(200),
        cursor: None,
    };
    let found = match crate::api::sessions::find(&state, &query).await {
        Ok(found) => found,
        Err(crate::api::ApiError::BadRequest(why)) => return message(StatusCode::BAD_REQUEST, "Refused", &why),
        Err(e) => return super::internal(e),
    };
    let selected = |value: &str, current: &str| if value == current { " selected" } else { "" };
    let option = |value: &str, label: &str, current: &str| {
        format!(r#"<option value="{value}"{}>{label}</option>"#, selected(value, current))
    };
    let mut body = format!(
        r#"<form method="get" action="/console/sessions" id="filters"><fieldset><legend>Filter</legend>
<label for="f-agent">Agent</label> <input id="f-agent" name="agent" value="{agent}">
<label for="f-resource">Resource</label> <input id="f-resource" name="resource" value="{resource}">
<label for="f-from">From (UTC)</label> <input id="f-from" name="from" type="datetime-local" value="{from}">
<label for="f-to">To (UTC)</label> <input id="f-to" name="to" type="datetime-local" value="{to}">
<label for="f-decision">A command</label> <select id="f-decision" name="decision">{decisions}</select>
<label for="f-live">State</label> <select id="f-live" name="live">{states}</select>
<button type="submit" id="apply-filter">Show</button></fieldset></form>
<div id="live" data-kinds="sessions">"#,
        agent = escape(&filter.agent),
        resource = escape(&filter.resource),
        from = escape(&filter.from),
        to = escape(&filter.to),
        decisions = [("", "any decision"), ("allow", "allowed"), ("deny", "denied"), ("hold", "held for approval")]
            .iter()
            .map(|(v, l)| option(v, l, &filter.decision))
            .collect::<String>(),
        states = [("", "live or ended"), ("true", "live"), ("false", "ended")]
            .iter()
            .map(|(v, l)| option(v, l, &filter.live))
            .collect::<String>(),
    );
    if found.items.is_empty() {
        body.push_str(r#"<p id="no-sessions">No session matches.</p>"#);
    } else {
        body.push_str("<table><thead><tr><th scope=col>Session</th><th scope=col>Agent</th><th scope=col>Resource</th><th scope=col>Started</th><th scope=col>Ended</th><th scope=col>Commands</th></tr></thead><tbody>");
        for s in &found.items {
            let ended = match (&s.ended_at, &s.end_reason) {
                (None, _) => "<strong>live</strong>".to_owned(),
                (Some(at), reason) => {
                    format!("{}<br><small>{}</small>", when(Some(*at)), escape(reason.as_deref().unwrap_or("")))
                }
            };
            let _ = write!(
                body,
                r#"<tr class="session" id="session-{id}"><td><a href="/console/sessions/{id}"><code>{id}</code></a></td><td>{agent}</td><td>{resource}</td><td>{started}</td><td>{ended}</td><td>{commands}</td></tr>"#,
                id = s.id,
                agent = escape_shown(&s.agent_name),
                resource = escape(&s.resource),
                started = when(s.started_at),
                commands = s.commands,
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</div>");
    page("Sessions", Some(&person), &body)
}

/// One session: who, where, how it ended, whether its record verifies, and its transcript
/// (each command as recorded, masked, with its decision, approval and result).
#[derive(Deserialize)]
pub struct SessionPageQuery {
    #[serde(default)]
    ending: Option<String>,
}

pub async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<axum::extract::Path<uuid::Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<SessionPageQuery>, QueryRejection>,
) -> Response {
    let person =
        match signed_in_as(&state, &headers, crate::api::READ_ROLES, "Sessions need the reviewer or auditor role.")
            .await
        {
            Ok(p) => p,
            Err(page) => return page,
        };
    let Ok(axum::extract::Path(id)) = id else {
        return message(StatusCode::NOT_FOUND, "Not found", "No such session.");
    };
    let transcript = match crate::api::transcript::build(&state, id).await {
        Ok(t) => t,
        Err(crate::api::ApiError::NotFound(_)) => {
            return message(StatusCode::NOT_FOUND, "Not found", "No such session.")
        }
        Err(e) => return super::internal(e),
    };
    let s = &transcript.session;
    let v = &transcript.verification;
    let mut body = String::new();
    if s.ended_at.is_none() {
        if query.is_ok_and(|Query(q)| q.ending.is_some()) {
            body.push_str(r#"<p role="status" id="ending">Asked the proxy to end this session.</p>"#);
        }
        if person.can(crate::api::APPROVE_ROLES) {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/sessions/{id}/end" id="end-form"><input type="hidden" name="csrf" value="{csrf}">
<label for="end-reason">Reason (the agent sees it)</label> <input id="end-reason" name="reason" maxlength="1000">
<button type="submit" id="end-session">End this session</button></form>"#,
                csrf = escape(&person.csrf),
            );
        }
    }
    let _ = write!(
        body,
        r#"<div id="live" data-kinds="{kinds}"><dl id="session-facts">
<dt>Agent</dt><dd>{agent} <small>({issuer} · {subject})</small></dd>
<dt>Resource</dt><dd>{resource} ({kind}) on {node}</dd>
<dt>Started</dt><dd>{started}</dd><dt>Ended</dt><dd>{ended}</dd>
<dt>Commands</dt><dd>{commands} ({errors} failed)</dd></dl>
<h2>Verification</h2><p id="verification" class="{class}">{verdict}</p>
<ul><li>{events} events, chain {linked}</li><li>end signature {complete}</li><li>views {views}</li><li>node key {trust}</li></ul>"#,
        // Only a running session's page follows changes.
        kinds = if s.ended_at.is_none() { "sessions" } else { "" },
        agent = escape_shown(&s.agent_name),
        issuer = escape(&s.agent_issuer),
        subject = escape_shown(&s.agent_subject),
        resource = escape(&s.resource),
        kind = escape(&s.resource_kind),
        node = escape(&s.node),
        started = when(s.started_at),
        ended = match (&s.ended_at, &transcript.ended) {
            (None, _) => "still running".to_owned(),
            (Some(at), how) => format!(
                "{} ({}{})",
                when(Some(*at)),
                escape(how.as_deref().unwrap_or("?")),
                s.end_detail.as_deref().map(|d| format!(": {}", escape_shown(d))).unwrap_or_default()
            ),
        },
        commands = s.commands,
        errors = s.errors,
        class = if v.trusted { "good" } else { "bad" },
        verdict = if v.trusted {
            "Trusted: complete, linked, signed by a trusted node key, and served as recorded."
        } else if s.ended_at.is_none() {
            "Not yet verifiable: the session is still running (its end signature is to come)."
        } else {
            "NOT TRUSTED: see the problems below."
        },
        events = v.events,
        linked = if v.linked { "linked" } else { "BROKEN" },
        complete = if v.complete { "valid" } else { "missing or invalid" },
        views = if v.views_match { "match the events" } else { "DIFFER from the events" },
        trust = v
            .node_trust
            .as_ref()
            .map(|t| escape(&crate::projector::rows::enum_text(t)))
            .unwrap_or_else(|| "unknown".into()),
    );
    if !v.problems.is_empty() {
        body.push_str(r#"<ul id="problems">"#);
        for problem in &v.problems {
            let _ = write!(body, r#"<li class="bad">{}</li>"#, escape_shown(problem));
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>Transcript</h2>");
    if transcript.commands.is_empty() {
        body.push_str("<p>No command.</p>");
    } else {
        body.push_str("<table id=\"transcript\"><thead><tr><th scope=col>#</th><th scope=col>At</th><th scope=col>Command (as recorded, masked)</th><th scope=col>Decision</th><th scope=col>Result</th></tr></thead><tbody>");
        for c in &transcript.commands {
            let approval = c
                .approval
                .as_ref()
                .map(|a| {
                    let decided: Vec<String> = a
                        .decisions
                        .iter()
                        .map(|d| {
                            format!(
                                "{} by {} via {}",
                                escape(&d.verdict),
                                escape_shown(&d.approver),
                                escape(&d.channel)
                            )
                        })
                        .collect();
                    format!(
                        "<br><small>approval {outcome} (rule {rule}; {decided})</small>",
                        outcome = escape(&a.outcome),
                        rule = escape(&a.rule),
                        decided = if decided.is_empty() { "no decision".into() } else { decided.join(", ") },
                    )
                })
                .unwrap_or_default();
            let result = c
                .result
                .as_ref()
                .map(|r| {
                    let mut text = format!("{} · {} rows", escape(&r.outcome), r.rows);
                    if let Some(error) = &r.error {
                        let _ = write!(text, "<br><small>{}</small>", escape_shown(error));
                    }
                    if !r.masked.is_empty() {
                        let _ = write!(text, "<br><small>masked: {}</small>", escape(&r.masked.join(", ")));
                    }
                    text
                })
                .unwrap_or_default();
            let _ = write!(
                body,
                r#"<tr class="command"><td>{seq}</td><td>{at}</td><td><code class="statement">{statement}</code></td><td class="decision">{decision}{rule}{approval}</td><td>{result}</td></tr>"#,
                seq = c.seq,
                at = c.at.format("%H:%M:%S%.3f"),
                statement = escape_shown(&c.statement),
                decision = escape(&c.decision),
                rule = c.rule.as_deref().map(|r| format!("<br><small>rule {}</small>", escape(r))).unwrap_or_default(),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</div>");
    page(&format!("Session {id}"), Some(&person), &body)
}
