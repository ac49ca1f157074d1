//! The protocol-neutral session core. Every protocol follows one shape:
//! listen → greet → admit (token, identity, resource, grant; refusals recorded here) →
//! `session.started` (durable) → connect upstream with the held credential → relay, where each
//! command is judged (Allow/Deny/Hold), held until approved, recorded, then forwarded, and its
//! response inspected, masked and recorded → `session.ended` (signed).
//!
//! Only greeting, upstream login, message decoding and knowing where values sit belong to a
//! protocol (`pg`, `ssh`); the pieces here are shared.

pub mod admit;
pub mod hold;
pub mod judge;
pub mod listener;
pub mod stops;

use crate::recorder::Publisher;
use std::sync::Arc;
use tollgate_shared::event::SessionSigner;
use tollgate_shared::jwks::Verifier;

/// What every protocol listener of a node shares: built once in `Proxy::start`.
pub struct NodeServices {
    pub node: String,
    pub verifier: Verifier,
    pub publisher: Arc<Publisher>,
    pub signer: Arc<SessionSigner>,
    /// Turns true when the node shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The policy in force.
    pub policy: crate::policy::PolicyReceiver,
    /// Decisions on held commands.
    pub approvals: Arc<crate::approvals::ApprovalHub>,
    /// People ending live sessions.
    pub stops: Arc<stops::SessionStops>,
    /// Standing approvals that let held commands run without a new request.
    pub standing: Arc<crate::grants::StandingApprovals>,
    /// Where people approve, for the notice a held agent gets (`<url>/<approval id>`).
    pub approval_url: Option<String>,
}
