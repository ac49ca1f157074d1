//! Approval requests for held commands, and deciding them. A decision is checked here (role,
//! approver groups, not one's own request, not twice, not after the fact) and then published as
//! an `approval.decided` event, which the holding proxy is waiting for.

use super::auth::Caller;
use super::{ApiError, AppState};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_shared::control::{ControlKind, Signed};
use tollgate_shared::event::{kind, ApprovalDecided, ApprovalRefused, Chain, Channel, Verdict};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::names;
use tollgate_shared::policy::StandingApproval;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApprovalView {
    pub id: Uuid,
    /// pending | approved | denied | expired (a pending request past `expires_at` is expired:
    /// its proxy refuses the command).
    pub status: String,
    pub session_id: Uuid,
    pub command_id: Uuid,
    /// The agent whose command is held.
    #[schema(value_type = Object)]
    pub agent: serde_json::Value,
    pub resource: String,
    pub node: String,
    pub rule: String,
    /// The statement, masked.
    pub statement: String,
    pub classes: Vec<String>,
    pub relations: Vec<String>,
    pub approver_groups: Vec<String>,
    pub quorum: i32,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// When the holding proxy ran the approved command (its `approval.released` event), and
    /// whose approvals made the quorum.
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<Vec<String>>,
    pub expiry_reason: Option<String>,
    /// Asked ahead of a run: minutes of standing approval requested.
    pub grant_minutes: Option<i32>,
    #[sqlx(skip)]
    pub decisions: Vec<DecisionView>,
    /// Attempts to decide that were refused (who, through which channel, why).
    #[sqlx(skip)]
    pub refusals: Vec<RefusalView>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RefusalView {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub channel: String,
    /// The HTTP status the caller got.
    pub status: i32,
    pub reason: String,
    /// The person, when known.
    pub who: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct DecisionView {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    /// approve | deny
    pub verdict: String,
    /// rest | slack | webhook
    pub channel: String,
    pub reason: Option<String>,
    pub approver_issuer: String,
    pub approver_subject: String,
    pub approver_name: String,
    /// Approved for this many minutes (a standing approval).
    pub grant_minutes: Option<i32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// pending | approved | denied | expired
    pub status: Option<String>,
    /// At most this many, 1 to 500 (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why (kept with the decision; at most 1000 characters).
    #[serde(default)]
    pub reason: Option<String>,
    /// Approve for this many minutes (1 to 1440): later commands of the same classes by the same
    /// agent on the same resource then run without a new request.
    #[serde(default)]
    pub grant_minutes: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionAccepted {
    pub approval_id: Uuid,
    pub verdict: String,
    /// The `approval.decided` event the holding proxy acts on.
    pub event_id: Uuid,
}

const STATUSES: &[&str] = &["pending", "approved", "denied", "expired"];

const SELECT: &str =
    "SELECT id, CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END AS status,
    session_id, command_id, agent, resource, node, rule, statement, classes, relations, approver_groups, quorum,
    requested_at, expires_at, decided_at, released_at, released_by, expiry_reason, grant_minutes FROM approvals";

/// Approval requests, newest first.
#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals", params(ApprovalQuery),
    responses((status = 200, body = [ApprovalView]), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_approvals(
    State(state): State<AppState>,
    query: Result<Query<ApprovalQuery>, QueryRejection>,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 500".into()));
    }
    if let Some(status) = q.status.as_deref() {
        if !STATUSES.contains(&status) {
            return Err(ApiError::BadRequest(format!("status must be one of {}", STATUSES.join(", "))));
        }
    }
    let sql = format!(
        "SELECT * FROM ({SELECT}) a WHERE ($1::text IS NULL OR status = $1) ORDER BY requested_at DESC LIMIT $2"
    );
    let mut rows: Vec<ApprovalView> =
        sqlx::query_as(&sql).bind(q.status).bind(i64::from(limit)).fetch_all(&state.db).await?;
    for row in &mut rows {
        row.decisions = decisions(&state, row.id).await?;
    }
    Ok(Json(rows))
}

/// Requests waiting for a decision (not expired), oldest first, with the decisions so far.
pub async fn pending(state: &AppState) -> Result<Vec<ApprovalView>, ApiError> {
    let sql = format!("SELECT * FROM ({SELECT}) a WHERE status = 'pending' ORDER BY requested_at LIMIT 200");
    let mut rows: Vec<ApprovalView> = sqlx::query_as(&sql).fetch_all(&state.db).await?;
    for row in &mut rows {
        row.decisions = decisions(state, row.id).await?;
    }
    Ok(rows)
}

/// One approval request with its decisions.
#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals", params(("id" = Uuid, Path)),
    responses((status = 200, body = ApprovalView), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_approval(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<ApprovalView>, ApiError> {
    Ok(Json(load(&state, id).await?))
}

/// Approve a held command (approver role, in one of the request's approver groups).
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals", params(("id" = Uuid, Path)), request_body = DecisionRequest,
    responses((status = 202, body = DecisionAccepted), (status = 400, body = super::error::Problem), (status = 403, body = super::error::Problem),
        (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem), (status = 401, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    body: Result<Json<DecisionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DecisionAccepted>), ApiError> {
    decide_rest(&state, &caller, id, Verdict::Approve, body).await
}

/// Deny a held command: it never runs (approver role, in one of the request's approver groups).
#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", tag = "approvals", params(("id" = Uuid, Path)), request_body = DecisionRequest,
    responses((status = 202, body = DecisionAccepted), (status = 400, body = super::error::Problem), (status = 403, body = super::error::Problem),
        (status = 404, body = super::error::Problem), (status = 409, body = super::error::Problem), (status = 401, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn deny(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    body: Result<Json<DecisionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DecisionAccepted>), ApiError> {
    decide_rest(&state, &caller, id, Verdict::Deny, body).await
}

/// The REST channel of `decide_or_refuse`.
async fn decide_rest(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    verdict: Verdict,
    body: Result<Json<DecisionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DecisionAccepted>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let decision = Decision { verdict, channel: Channel::Rest, reason: body.reason, grant_minutes: body.grant_minutes };
    let accepted = decide_or_refuse(state, &caller.identity, id, decision).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

async fn load(state: &AppState, id: Uuid) -> Result<ApprovalView, ApiError> {
    let mut row: ApprovalView = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no approval request {id}")))?;
    row.decisions = decisions(state, id).await?;
    row.refusals = sqlx::query_as(
        "SELECT event_id, at, channel, status, reason, who FROM approval_refusals WHERE approval_id = $1 ORDER BY at",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(row)
}

async fn decisions(state: &AppState, id: Uuid) -> Result<Vec<DecisionView>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT event_id, at, verdict, channel, reason, approver_issuer, approver_subject, approver_name, grant_minutes
         FROM approval_decisions WHERE approval_id = $1 ORDER BY at",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?)
}

/// `decide`, and when it is refused, an `approval.refused` event saying who tried what.
pub async fn decide_or_refuse(
    state: &AppState,
    person: &AgentIdentity,
    id: Uuid,
    decision: Decision,
) -> Result<DecisionAccepted, ApiError> {
    let channel = decision.channel;
    match decide(state, person, id, decision).await {
        Ok(accepted) => Ok(accepted),
        Err(e) => {
            refused(state, Some(person), Some(id), channel, &e).await;
            Err(e)
        }
    }
}

/// Record a refused decision attempt (best effort: the caller's answer does not wait on it).
pub async fn refused(
    state: &AppState,
    person: Option<&AgentIdentity>,
    id: Option<Uuid>,
    channel: Channel,
    error: &ApiError,
) {
    let who = person.cloned().unwrap_or_default();
    let resource = ResourceRef { name: "approvals".into(), kind: ResourceKind::Policy };
    let mut chain = Chain::new(Uuid::now_v7(), "control".into(), who, resource);
    let payload =
        ApprovalRefused { approval_id: id, channel, status: error.status().as_u16(), reason: error.to_string() };
    tracing::info!(approval = ?id, ?channel, status = payload.status, reason = %payload.reason, "decision refused");
    match chain.seal(kind::APPROVAL_REFUSED, &payload) {
        Ok(event) => {
            if let Err(e) = crate::publish_signed(&state.js, &state.control_key, &event).await {
                tracing::warn!(error = %e, "approval.refused not published");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot seal approval.refused"),
    }
}

/// Agent attributes that name the person who started the run (GitHub, GitLab), or who asked
/// for approval ahead of it.
const STARTED_BY: &[&str] = &["actor", "triggering_actor", "user_login", "user_email", "requested_by"];

/// Whether a configured link says `person` started the agent's run (`actor` = their
/// `preferred_username`...).
fn linked(agent: &AgentIdentity, person: &AgentIdentity, link: &crate::config::SelfLink) -> bool {
    let agent_value = agent.attributes.get(&link.agent_claim).and_then(|v| v.as_str());
    let person_value = match link.person_claim.as_str() {
        "sub" => Some(person.subject.as_str()),
        "name" => Some(person.name.as_str()),
        claim => person.attributes.get(claim).and_then(|v| v.as_str()),
    };
    matches!((agent_value, person_value), (Some(a), Some(p)) if !a.is_empty() && a.eq_ignore_ascii_case(p))
}

/// What a person decided, from any channel.
pub struct Decision {
    pub verdict: Verdict,
    pub channel: Channel,
    pub reason: Option<String>,
    pub grant_minutes: Option<u32>,
}

/// Longest standing approval: a day.
const MAX_GRANT_MINUTES: u32 = 24 * 60;

/// Check that `person` may decide request `id` now, then publish the decision. Every channel
/// (REST, Slack, webhooks) decides through here.
pub async fn decide(
    state: &AppState,
    person: &AgentIdentity,
    id: Uuid,
    decision: Decision,
) -> Result<DecisionAccepted, ApiError> {
    let Decision { verdict, channel, reason, grant_minutes } = decision;
    if verdict == Verdict::Deny && grant_minutes.is_some() {
        return Err(ApiError::BadRequest("grant_minutes applies to approvals only".into()));
    }
    if grant_minutes.is_some_and(|m| !(1..=MAX_GRANT_MINUTES).contains(&m)) {
        return Err(ApiError::BadRequest(format!("grant_minutes must be between 1 and {MAX_GRANT_MINUTES}")));
    }
    let reason = reason.map(|r| r.chars().filter(|c| !c.is_control()).collect::<String>()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(ApiError::BadRequest("reason: at most 1000 characters".into()));
    }
    let _turn = state.deciding.lock().await;
    let request = load(state, id).await?;
    if request.status != "pending" {
        return Err(ApiError::Conflict(format!("approval {id} is already {}", request.status)));
    }
    if !request.approver_groups.iter().any(|g| person.groups.contains(g)) {
        return Err(ApiError::Forbidden(format!(
            "only members of {} may decide approval {id}",
            request.approver_groups.join(", ")
        )));
    }
    let agent: AgentIdentity = serde_json::from_value(request.agent.clone())
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored agent unreadable: {e}")))?;
    let own = [&agent.subject, &agent.name]
        .into_iter()
        .cloned()
        .chain(STARTED_BY.iter().filter_map(|k| agent.attributes.get(*k)).filter_map(|v| v.as_str().map(str::to_owned)))
        .any(|who| who == person.subject || who == person.name)
        || state.self_links.iter().any(|link| linked(&agent, person, link));
    if own {
        return Err(ApiError::Forbidden(format!(
            "nobody approves their own request: approval {id} is for a run of {}",
            person.name
        )));
    }
    if request.decisions.iter().any(|d| d.approver_issuer == person.issuer && d.approver_subject == person.subject) {
        return Err(ApiError::Conflict(format!("{} has already decided approval {id}", person.name)));
    }
    let resource = ResourceRef { name: request.resource.clone(), kind: ResourceKind::Postgres };
    let mut chain = Chain::new(Uuid::now_v7(), "control".into(), person.clone(), resource);
    let payload = ApprovalDecided { approval_id: id, verdict, channel, reason, grant_minutes };
    let event = chain.seal(kind::APPROVAL_DECIDED, &payload).map_err(|e| ApiError::Unexpected(e.into()))?;
    // Signed: proxies act only on decisions the control plane signed.
    let ack = crate::publish_signed(&state.js, &state.control_key, &event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the decision could not be recorded: {e}")))?;
    ack.await.map_err(|e| ApiError::Unavailable(format!("the decision could not be recorded: {e}")))?;
    if verdict == Verdict::Approve {
        stand(state, &request, &agent, person, grant_minutes).await?;
    }
    projected(state, event.id).await;
    tracing::info!(approval = %id, by = %person.name, ?verdict, ?channel, "approval decided");
    let verdict = match verdict {
        Verdict::Approve => "approve",
        Verdict::Deny => "deny",
    };
    Ok(DecisionAccepted { approval_id: id, verdict: verdict.into(), event_id: event.id })
}

/// Wait (a few seconds at most) until the projector has written decision `event`, so the
/// next decision's checks see it. A decision not projected in time is still recorded; the
/// proxies and the views count one vote per person whatever the API saw.
async fn projected(state: &AppState, event: Uuid) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let committed = state.stats.committed.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let found =
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM approval_decisions WHERE event_id = $1)")
                .bind(event)
                .fetch_one(&state.db)
                .await;
        match found {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the decision's projection");
                return;
            }
        }
        if tokio::time::timeout_at(deadline, committed).await.is_err() {
            tracing::warn!(event = %event, "decision not projected within 5 s; answering anyway");
            return;
        }
    }
}

/// When this approval completes the quorum and every approver (or the ahead-of-run request)
/// gave a duration, make it a standing approval for the shortest one: written to the grants
/// bucket every proxy watches.
async fn stand(
    state: &AppState,
    request: &ApprovalView,
    agent: &AgentIdentity,
    person: &AgentIdentity,
    offered: Option<u32>,
) -> Result<(), ApiError> {
    // One vote per person: earlier approvals by others (the caller's own was refused above).
    let mut people = std::collections::BTreeSet::new();
    let earlier: Vec<&DecisionView> = request
        .decisions
        .iter()
        .filter(|d| d.verdict == "approve")
        .filter(|d| d.approver_issuer != person.issuer || d.approver_subject != person.subject)
        .filter(|d| people.insert((d.approver_issuer.clone(), d.approver_subject.clone())))
        .collect();
    let votes = 1 + earlier.len();
    if votes < usize::try_from(request.quorum).unwrap_or(usize::MAX) {
        return Ok(());
    }
    let mut durations: Vec<Option<u32>> =
        earlier.iter().map(|d| d.grant_minutes.and_then(|m| u32::try_from(m).ok())).collect();
    durations.push(offered);
    // An ahead-of-run request carries its duration: approving it accepts that duration.
    let asked = request.grant_minutes.and_then(|m| u32::try_from(m).ok());
    let minutes = match asked {
        Some(asked) => durations.iter().flatten().copied().chain([asked]).min(),
        None if durations.iter().all(Option::is_some) => durations.iter().flatten().copied().min(),
        None => None,
    };
    let Some(minutes) = minutes else { return Ok(()) };
    let mut approvers: Vec<String> = earlier.iter().map(|d| d.approver_name.clone()).collect();
    approvers.push(person.name.clone());
    let standing = StandingApproval {
        approval_id: request.id,
        agent_issuer: (!agent.issuer.is_empty()).then(|| agent.issuer.clone()),
        agent_name: agent.name.clone(),
        resource: request.resource.clone(),
        rule: request.rule.clone(),
        classes: request.classes.clone(),
        relations: request.relations.clone(),
        until: Utc::now() + chrono::Duration::minutes(i64::from(minutes)),
        approvers,
    };
    let bytes = Signed::seal(&state.control_key, ControlKind::Grant, &standing)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("{e}")))?;
    let store = tollgate_shared::stream::open_grants_bucket(&state.js).await.map_err(ApiError::Unavailable)?;
    store
        .put(names::grant_key(request.id), bytes.into())
        .await
        .map_err(|e| ApiError::Unavailable(format!("the standing approval could not be stored: {e}")))?;
    tracing::info!(approval = %request.id, agent = %agent.name, minutes, "standing approval granted");
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AheadRequest {
    /// The resource the run will use.
    pub resource: String,
    /// The agent's name, as its identity mapping names it (e.g. `acme/orders/deploy@main`).
    pub agent: String,
    /// The agent's token issuer, to pin the approval to it.
    #[serde(default)]
    pub agent_issuer: Option<String>,
    /// Statement classes the run needs (`drop`, `alter`, `delete`...).
    pub classes: Vec<String>,
    /// Relations the run touches (`public.orders`); the approval stands for these only. When
    /// the rule names relations, those it names (and only within them).
    #[serde(default)]
    pub relations: Vec<String>,
    /// How long the approval stands once granted, 1 to 1440.
    pub minutes: u32,
    /// What the run is for; shown to approvers (masked).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AheadAccepted {
    pub approval_id: Uuid,
    pub rule: String,
    pub approver_groups: Vec<String>,
    pub quorum: u32,
    pub expires_at: DateTime<Utc>,
}

/// Ask for approval ahead of a run: once approved, the agent's commands of these classes on the
/// resource run without being held, for `minutes`. Any authenticated caller may ask; the request
/// is decided like any other (and not by whoever asked).
#[utoipa::path(post, path = "/api/v1/approvals", tag = "approvals", request_body = AheadRequest,
    responses((status = 202, body = AheadAccepted), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem),
        (status = 503, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn request_ahead(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<AheadRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<AheadAccepted>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !(1..=MAX_GRANT_MINUTES).contains(&body.minutes) {
        return Err(ApiError::BadRequest(format!("minutes must be between 1 and {MAX_GRANT_MINUTES}")));
    }
    if body.classes.is_empty() || body.agent.trim().is_empty() {
        return Err(ApiError::BadRequest("name the agent and at least one statement class".into()));
    }
    let store = tollgate_shared::stream::open_policy_bucket(&state.js).await.map_err(ApiError::Unavailable)?;
    let policy = crate::policy::current(&store, &state.control_key)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::Unavailable("no policy is loaded".into()))?
        .0;
    let resource = policy
        .document
        .resource(&body.resource)
        .ok_or_else(|| ApiError::BadRequest(format!("no resource named {:?} in the policy", body.resource)))?;
    for relation in &body.relations {
        if tollgate_shared::policy::RelationName::parse(relation).is_none() {
            return Err(ApiError::BadRequest(format!("{relation:?} is not a relation name")));
        }
    }
    // The rule that holds these classes on these relations (a rule naming relations holds only
    // statements on them: asking under it is asking for some of them).
    let within = |rule: &tollgate_shared::policy::ApprovalRule| {
        rule.relations.is_empty()
            || (!body.relations.is_empty()
                && body.relations.iter().all(|asked| {
                    let asked = tollgate_shared::policy::RelationName::parse(asked);
                    rule.relations
                        .iter()
                        .filter_map(|r| tollgate_shared::policy::RelationName::parse(r))
                        .any(|r| asked.as_ref().is_some_and(|a| r.covers(a)))
                }))
    };
    let rule = resource
        .approvals
        .iter()
        .find(|r| body.classes.iter().all(|c| r.hold_classes.contains(c)) && within(r))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no approval rule on {} holds all of {} on {}",
                body.resource,
                body.classes.join(", "),
                if body.relations.is_empty() { "any relation".to_owned() } else { body.relations.join(", ") }
            ))
        })?;
    let relations = if body.relations.is_empty() { rule.relations.clone() } else { body.relations.clone() };
    let masker = policy.masker(&body.resource);
    let mut tally = tollgate_shared::mask::Tally::default();
    let reason = body.reason.as_deref().unwrap_or("no reason given");
    let statement =
        format!("(ahead of a run, asked by {}) {}", caller.identity.name, masker.mask_str(reason, None, &mut tally));
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("requested_by".to_owned(), serde_json::json!(caller.identity.name));
    let agent = AgentIdentity {
        issuer: body.agent_issuer.clone().unwrap_or_default(),
        subject: body.agent.clone(),
        name: body.agent.clone(),
        groups: Vec::new(),
        attributes,
    };
    let approval_id = Uuid::now_v7();
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::try_from(rule.timeout_secs).unwrap_or(i64::MAX / 2));
    let payload = tollgate_shared::event::ApprovalRequested {
        approval_id,
        command_id: Uuid::nil(),
        rule: rule.name.clone(),
        statement,
        classes: body.classes.clone(),
        relations,
        approver_groups: rule.approver_groups.clone(),
        quorum: rule.quorum,
        expires_at,
        grant_minutes: Some(body.minutes),
    };
    let target = ResourceRef { name: body.resource.clone(), kind: ResourceKind::Postgres };
    let mut chain = Chain::new(Uuid::now_v7(), "control".into(), agent, target);
    let event = chain.seal(kind::APPROVAL_REQUESTED, &payload).map_err(|e| ApiError::Unexpected(e.into()))?;
    let ack = crate::publish_signed(&state.js, &state.control_key, &event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the request could not be recorded: {e}")))?;
    ack.await.map_err(|e| ApiError::Unavailable(format!("the request could not be recorded: {e}")))?;
    tracing::info!(approval = %approval_id, agent = %body.agent, by = %caller.identity.name, "approval asked ahead of a run");
    Ok((
        StatusCode::ACCEPTED,
        Json(AheadAccepted {
            approval_id,
            rule: rule.name.clone(),
            approver_groups: rule.approver_groups.clone(),
            quorum: rule.quorum,
            expires_at,
        }),
    ))
}
