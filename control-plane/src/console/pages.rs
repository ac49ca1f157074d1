//! The console's pages, rendered on the server: no script, no asset from anywhere else (the
//! policy says so), and every form control labelled.

use super::{signed_in, Person};
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
absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000;padding:.3rem}form.inline{display:inline}";

/// A whole page: the navigation for the signed-in person, then `body`.
fn page(title: &str, person: Option<&Person>, body: &str) -> Response {
    let nav = match person {
        None => String::new(),
        Some(p) => format!(
            r#"<nav aria-label="Console"><a href="/console">Approvals</a> <a href="/console/sessions">Sessions</a></nav>
<span id="who">{name} ({roles})</span>
<form class="inline" method="post" action="/console/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="sign-out">Sign out</button></form>"#,
            name = escape(&p.identity.name),
            roles = escape(&p.caller.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")),
            csrf = escape(&p.csrf),
        ),
    };
    let html = format!(
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title} · Tollgate</title><style>{STYLE}</style></head><body><a class="skip" href="#main">Skip to content</a>
<header><strong>Tollgate</strong>{nav}</header><main id="main"><h1>{title}</h1>{body}</main></body></html>"##,
        title = escape(title),
    );
    (
        [
            // The inline style is the page's only non-markup part; nothing may load or run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
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
    let person = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    if !person.can(crate::api::READ_APPROVAL_ROLES) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "The approvals inbox needs the reviewer, auditor or approver role.",
        );
    }
    let pending = match crate::api::approvals::pending(&state).await {
        Ok(p) => p,
        Err(e) => return super::internal(e),
    };
    let approver = person.can(crate::api::APPROVE_ROLES);
    let mut body = String::new();
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
            let _ = write!(
                body,
                r#"<tr class="pending" id="request-{id}"><td><code class="statement">{statement}</code></td><td>{agent}<br><small>{claims}</small></td><td>{resource}<br><small>rule {rule}, quorum {quorum}, groups {groups}</small></td><td>{at}<br><small>expires {expires}</small></td><td>{decide}</td></tr>"#,
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
    page("Approvals", Some(&person), &body)
}

/// A session as the list shows it: id, agent, resource, start, end, commands.
type SessionRow = (uuid::Uuid, Option<String>, String, Option<Time>, Option<Time>, i64);
type Time = chrono::DateTime<chrono::Utc>;

/// Recent sessions, newest first.
pub async fn sessions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let person = match signed_in(&state, &headers).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    if !person.can(crate::api::READ_ROLES) {
        return message(StatusCode::FORBIDDEN, "Refused", "Sessions need the reviewer or auditor role.");
    }
    let rows: Vec<SessionRow> = match sqlx::query_as(
        "SELECT s.id, a.name, s.resource, s.started_at, s.ended_at, s.commands FROM sessions s
             LEFT JOIN agents a ON a.id = s.agent_id ORDER BY s.started_at DESC NULLS LAST LIMIT 100",
    )
    .fetch_all(&state.db)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return super::internal(e),
    };
    let mut body = String::from("<table><thead><tr><th scope=col>Session</th><th scope=col>Agent</th><th scope=col>Resource</th><th scope=col>Started</th><th scope=col>Ended</th><th scope=col>Commands</th></tr></thead><tbody>");
    let time = |t: &Option<Time>| t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "live".into());
    for (id, agent, resource, started, ended, commands) in &rows {
        let _ = write!(
            body,
            "<tr class=session><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{commands}</td></tr>",
            escape(agent.as_deref().unwrap_or("?")),
            escape(resource),
            time(started),
            time(ended),
        );
    }
    body.push_str("</tbody></table>");
    page("Sessions", Some(&person), &body)
}
