//! Deciding from outside the REST API: Slack's interactive callbacks and signed inbound
//! webhooks. Both are verified (timestamp window, HMAC in constant time, never seen before)
//! before a byte of the body is parsed; the person is then mapped to an identity, must hold the
//! approver role, and decides through the same checks as REST. Every refusal is recorded as an
//! `approval.refused` event.

use super::approvals::{decide_or_refuse, refused, Decision};
use super::auth::Role;
use super::{ApiError, AppState};
use crate::config::PersonConfig;
use crate::signing;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_shared::event::{Channel, Verdict};
use tollgate_shared::identity::AgentIdentity;
use uuid::Uuid;

/// Slack settings the API needs, with secrets resolved.
pub struct SlackInbound {
    pub signing_secret: Vec<u8>,
    pub users: BTreeMap<String, PersonConfig>,
}

/// The inbound webhook's key, and the person its decisions are.
pub struct WebhookInbound {
    pub secret: Vec<u8>,
    pub person: PersonConfig,
}

/// Largest callback body accepted (Slack's are a few kilobytes).
const MAX_BODY: usize = 64 * 1024;

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, signing::SignatureError> {
    headers.get(name).and_then(|v| v.to_str().ok()).ok_or(signing::SignatureError::Missing(name))
}

/// Timestamp window, signature, then first use of that signature.
async fn verified(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    key: &[u8],
    version: &str,
    timestamp_header: &'static str,
    signature_header: &'static str,
) -> Result<(), ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::BadRequest("request body too large".into()));
    }
    let unauthorized = |e: signing::SignatureError| ApiError::Unauthorized(format!("request signature refused: {e}"));
    let timestamp = header(headers, timestamp_header).map_err(unauthorized)?;
    let signature = header(headers, signature_header).map_err(unauthorized)?;
    signing::check_timestamp(timestamp, chrono::Utc::now().timestamp()).map_err(unauthorized)?;
    let mut message = format!("{version}:{timestamp}:").into_bytes();
    message.extend_from_slice(body);
    signing::verify(key, version, &message, signature).map_err(unauthorized)?;
    sqlx::query("DELETE FROM seen_signatures WHERE at < now() - interval '10 minutes'").execute(&state.db).await?;
    let fresh = sqlx::query("INSERT INTO seen_signatures (signature) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(signature)
        .execute(&state.db)
        .await?
        .rows_affected();
    if fresh == 0 {
        return Err(ApiError::Conflict("this signed request was already received (replay refused)".into()));
    }
    Ok(())
}

/// The person, as the reviewer issuer names them (one identity in every channel).
fn person(config: &PersonConfig, mut attributes: BTreeMap<String, Value>) -> AgentIdentity {
    for (claim, value) in &config.claims {
        attributes.insert(claim.clone(), json!(value));
    }
    AgentIdentity {
        issuer: config.issuer.clone(),
        subject: config.subject.clone(),
        name: config.name.clone().unwrap_or_else(|| config.subject.clone()),
        groups: config.groups.clone(),
        attributes,
    }
}

fn must_approve(state: &AppState, who: &AgentIdentity) -> Result<(), ApiError> {
    let roles = state.roles.roles_of(&who.groups);
    if roles.contains(&Role::Approver) || roles.contains(&Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("{} does not hold the approver role", who.name)))
    }
}

#[derive(Deserialize)]
struct SlackAction {
    action_id: String,
    value: String,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct SlackInteraction {
    user: SlackUser,
    actions: Vec<SlackAction>,
}

/// Slack's interactive callback (Approve / Deny buttons).
pub async fn slack_interaction(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(slack) = state.slack.clone() else {
        return Err(ApiError::NotFound("Slack is not configured".into()));
    };
    let checked = verified(
        &state,
        &headers,
        &body,
        &slack.signing_secret,
        "v0",
        "x-slack-request-timestamp",
        "x-slack-signature",
    )
    .await;
    if let Err(e) = checked {
        refused(&state, None, None, Channel::Slack, &e).await;
        return Err(e);
    }
    let parsed = parse_slack(&body);
    let (interaction, verdict, grant_minutes, approval_id) = match parsed {
        Ok(p) => p,
        Err(e) => {
            refused(&state, None, None, Channel::Slack, &e).await;
            return Err(e);
        }
    };
    let Some(config) = slack.users.get(&interaction.user.id) else {
        let e = ApiError::Forbidden(format!("Slack user {} is not mapped to a reviewer", interaction.user.id));
        refused(&state, None, Some(approval_id), Channel::Slack, &e).await;
        return Err(e);
    };
    let mut attributes = BTreeMap::new();
    attributes.insert("slack_user".into(), json!(interaction.user.id));
    let who = person(config, attributes);
    if let Err(e) = must_approve(&state, &who) {
        refused(&state, Some(&who), Some(approval_id), Channel::Slack, &e).await;
        return Err(e);
    }
    let decision = Decision { verdict, channel: Channel::Slack, reason: None, grant_minutes };
    let accepted = decide_or_refuse(&state, &who, approval_id, decision).await?;
    Ok(Json(json!({ "text": format!("{} recorded for approval {}", accepted.verdict, accepted.approval_id) })))
}

/// The interaction, what was pressed (a verdict, and 60 minutes for "Approve for 1 hour"), and
/// the approval it is about.
fn parse_slack(body: &[u8]) -> Result<(SlackInteraction, Verdict, Option<u32>, Uuid), ApiError> {
    let form: BTreeMap<String, String> =
        serde_urlencoded::from_bytes(body).map_err(|e| ApiError::BadRequest(format!("not a Slack form body: {e}")))?;
    let payload = form.get("payload").ok_or_else(|| ApiError::BadRequest("no payload field".into()))?;
    let interaction: SlackInteraction =
        serde_json::from_str(payload).map_err(|e| ApiError::BadRequest(format!("unreadable Slack payload: {e}")))?;
    let action = interaction.actions.first().ok_or_else(|| ApiError::BadRequest("no action in the payload".into()))?;
    let (verdict, grant_minutes) = match action.action_id.as_str() {
        "approve" => (Verdict::Approve, None),
        "approve_60" => (Verdict::Approve, Some(60)),
        "deny" => (Verdict::Deny, None),
        other => return Err(ApiError::BadRequest(format!("unknown action {other:?}"))),
    };
    let id = Uuid::parse_str(&action.value)
        .map_err(|_| ApiError::BadRequest("the action's value is not an approval id".into()))?;
    Ok((interaction, verdict, grant_minutes, id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDecision {
    approval_id: Uuid,
    verdict: Verdict,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grant_minutes: Option<u32>,
}

/// A decision from another system, signed with the inbound webhook key:
/// `X-Tollgate-Signature: v1=hex(HMAC-SHA256(key, "v1:{X-Tollgate-Timestamp}:{body}"))`.
pub async fn webhook_decision(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(inbound) = state.inbound_webhook.clone() else {
        return Err(ApiError::NotFound("inbound webhooks are not configured".into()));
    };
    let checked =
        verified(&state, &headers, &body, &inbound.secret, "v1", "x-tollgate-timestamp", "x-tollgate-signature").await;
    if let Err(e) = checked {
        refused(&state, None, None, Channel::Webhook, &e).await;
        return Err(e);
    }
    let decision: WebhookDecision = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            let e = ApiError::BadRequest(format!("unreadable decision: {e}"));
            refused(&state, None, None, Channel::Webhook, &e).await;
            return Err(e);
        }
    };
    // The decision is the configured signer's: a body never names its approver.
    let who = person(&inbound.person, BTreeMap::new());
    if let Err(e) = must_approve(&state, &who) {
        refused(&state, Some(&who), Some(decision.approval_id), Channel::Webhook, &e).await;
        return Err(e);
    }
    let approval_id = decision.approval_id;
    let decision = Decision {
        verdict: decision.verdict,
        channel: Channel::Webhook,
        reason: decision.reason,
        grant_minutes: decision.grant_minutes,
    };
    let accepted = decide_or_refuse(&state, &who, approval_id, decision).await?;
    Ok(Json(json!({ "approval_id": accepted.approval_id, "verdict": accepted.verdict, "event_id": accepted.event_id })))
}
