//! Admission, the same for every protocol: verify the agent's token and map it to an identity,
//! let the protocol find the resource it asked for, check the policy grants the agent that
//! resource, and record every refusal as `auth.failed` in this one place. Then the session is
//! put on record (`session.started`, durable) before anything happens upstream, and ended the
//! same way whatever the protocol.

use super::NodeServices;
use crate::recorder::{RecordError, SessionRecorder};
use std::net::SocketAddr;
use tollgate_shared::event::{kind, AuthFailed, Chain, EndReason, SessionStarted};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::policy::{Access, Judgement};
use tollgate_shared::token::TokenError;
use uuid::Uuid;

/// Why an agent is refused, in terms every protocol maps to its own (a SQLSTATE, an SSH
/// authentication failure, an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The token did not verify.
    BadToken,
    /// The token verified but no identity rule, grant or policy lets the agent in.
    NotAuthorized,
    /// No resource of that name serves this protocol here.
    UnknownResource,
    /// The agent asked for something the proxy does not do.
    Unsupported,
}

/// A refusal, with the reason the agent and the record get.
#[derive(Debug, Clone)]
pub struct Refused {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refused {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Refused { kind, reason: reason.into() }
    }
}

/// What is known of an agent knocking: enough to record a refusal.
pub struct Attempt<'a> {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The user name the agent's client sent (informational).
    pub client_user: &'a str,
    pub resource: &'a str,
    pub credential: Credential<'a>,
    pub kind: ResourceKind,
    /// How the protocol names each refusal in `auth.failed.code` (a SQLSTATE for PostgreSQL).
    pub code: fn(RefusalKind) -> &'static str,
}

/// What the agent proves who it is with.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// Its OIDC token, verified here.
    Token(&'a str),
    /// An identity the gateway's own CA vouched for (an SSH certificate it signed for a
    /// verified token, checked by the protocol).
    Vouched(&'a AgentIdentity),
}

/// An agent let in: who, to what, under which grant.
pub struct Admitted<R> {
    pub agent: AgentIdentity,
    /// The verified token's subject (for logs).
    pub subject: String,
    pub resource: R,
    pub access: Access,
    pub grant: String,
    pub policy_version: u64,
}

/// Verify the agent, find its resource (`find`, protocol-specific: the protocol's own resource
/// config and any check of what the agent asked for), and judge the grant. Every refusal is
/// logged and recorded here; the caller only tells its agent.
pub async fn admit<R>(
    node: &NodeServices,
    attempt: &Attempt<'_>,
    find: impl FnOnce(&AgentIdentity) -> Result<R, Refused>,
    name_of: impl Fn(&R) -> &str,
) -> Result<Admitted<R>, Refused> {
    let identified = match attempt.credential {
        Credential::Token(token) => node.verifier.identify(token).await.map(|(v, agent)| (v.subject, agent)),
        Credential::Vouched(agent) => Ok((agent.subject.clone(), agent.clone())),
    };
    let (subject, agent) = match identified {
        Ok(v) => v,
        Err(e) => {
            // A token that verified but matched no identity rule is an authorization failure.
            let kind = match e {
                TokenError::Identity(_) => RefusalKind::NotAuthorized,
                _ => RefusalKind::BadToken,
            };
            let refused = Refused::new(kind, e.to_string());
            record_refusal(node, attempt, &refused, None);
            return Err(refused);
        }
    };
    let resource = match find(&agent) {
        Ok(resource) => resource,
        Err(refused) => {
            record_refusal(node, attempt, &refused, Some(agent));
            return Err(refused);
        }
    };
    // The policy decides: no policy, no resource in it, or no grant → refused (fail closed).
    let policy = node.policy.borrow().clone();
    let Some(policy) = policy else {
        let refused = Refused::new(
            RefusalKind::NotAuthorized,
            "no policy is loaded on this proxy; agents are refused until one arrives",
        );
        record_refusal(node, attempt, &refused, Some(agent));
        return Err(refused);
    };
    let name = name_of(&resource).to_owned();
    let in_policy = policy.document.resource(&name);
    if in_policy.is_some_and(|r| r.kind != attempt.kind) {
        let refused = Refused::new(
            RefusalKind::UnknownResource,
            format!("resource {name:?} is not a {:?} resource in the policy", attempt.kind),
        );
        record_refusal(node, attempt, &refused, Some(agent));
        return Err(refused);
    }
    match policy.document.judge(&agent, &name, chrono::Utc::now()) {
        Judgement::Allowed { access, grant, .. } => {
            Ok(Admitted { grant: grant.name.clone(), agent, subject, resource, access, policy_version: policy.version })
        }
        judgement => {
            let reason = match judgement {
                Judgement::UnknownResource => {
                    format!("resource {name:?} is not in the policy (version {})", policy.version)
                }
                _ => format!(
                    "no grant gives agent {:?} access to resource {name:?} (policy version {})",
                    agent.name, policy.version
                ),
            };
            let refused = Refused::new(RefusalKind::NotAuthorized, reason);
            record_refusal(node, attempt, &refused, Some(agent));
            Err(refused)
        }
    }
}

/// Publish `auth.failed` so reviews see refused attempts too. It is a one-event chain of its
/// own; nothing waits for it (the agent is refused either way). `agent` is set only when the
/// token verified; otherwise the token's claims are reported as claimed, never trusted.
pub fn record_refusal(node: &NodeServices, attempt: &Attempt<'_>, refused: &Refused, agent: Option<AgentIdentity>) {
    tracing::info!(peer = %attempt.peer, resource = %attempt.resource, reason = %refused.reason, "agent refused");
    let claimed = match attempt.credential {
        Credential::Token(token) => tollgate_shared::token::peek_claims(token).ok(),
        Credential::Vouched(agent) => {
            let mut claims = serde_json::Map::new();
            claims.insert("iss".into(), agent.issuer.clone().into());
            claims.insert("sub".into(), agent.subject.clone().into());
            Some(claims)
        }
    };
    let claim = |name: &str| {
        claimed
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(|v| v.as_str())
            .map(|v| v.chars().take(256).collect::<String>())
    };
    let payload = AuthFailed {
        reason: refused.reason.clone(),
        code: (attempt.code)(refused.kind).to_owned(),
        client_addr: attempt.peer.to_string(),
        client_tls: attempt.tls,
        client_user: attempt.client_user.chars().take(256).collect(),
        requested_resource: attempt.resource.chars().take(256).collect(),
        verified: agent.is_some(),
        claimed_issuer: claim("iss"),
        claimed_subject: claim("sub"),
    };
    let agent = agent.unwrap_or(AgentIdentity {
        issuer: String::new(),
        subject: String::new(),
        name: String::new(),
        groups: Vec::new(),
        attributes: Default::default(),
    });
    let resource = ResourceRef { name: payload.requested_resource.clone(), kind: attempt.kind };
    let mut chain = Chain::new(Uuid::now_v7(), node.node.clone(), agent, resource);
    match chain.seal(kind::AUTH_FAILED, &payload) {
        Ok(event) => node.publisher.background(event),
        Err(e) => tracing::error!(error = %e, "cannot seal auth.failed"),
    }
}

/// Open the session's record: `session.started`, durable, before anything happens upstream.
pub async fn record_start(
    node: &NodeServices,
    agent: AgentIdentity,
    resource: ResourceRef,
    started: &SessionStarted,
) -> Result<SessionRecorder, RecordError> {
    let chain = Chain::new(Uuid::now_v7(), node.node.clone(), agent, resource);
    let recorder = SessionRecorder::new(chain, node.publisher.clone(), node.signer.clone());
    let event = recorder.seal(kind::SESSION_STARTED, started)?;
    recorder.durable(vec![event]).await?;
    Ok(recorder)
}

/// Close the session's record: `session.ended`, signed, published even after a loss.
pub async fn record_end(recorder: &SessionRecorder, reason: EndReason, detail: Option<String>, commands: u64) {
    let sealed = match recorder.seal_end(reason, detail, commands) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot seal session.ended");
            return;
        }
    };
    if let Err(e) = recorder.durable_last(vec![sealed]).await {
        tracing::warn!(session = %recorder.session(), error = %e, "session.ended not recorded");
    }
}
