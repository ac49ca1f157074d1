//! PostgreSQL's side of holding a statement (the wait itself is the session core's): the
//! notice the agent gets while it waits, the error a refused statement ends with, and reading
//! what the agent sends meanwhile, so a vanished agent is noticed (its statement then never runs).

use super::super::frame::{Frame, FrameReader};
use super::super::messages::{self, Severity};
use super::super::session::{INSUFFICIENT_PRIVILEGE, QUERY_CANCELED};
use crate::approvals::Waiter;
use crate::session::hold::{self as core, Hold, Refusal};
use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::Notify;
use tollgate_shared::event::ExpiryReason;

/// How a hold ended, in wire terms.
pub enum Release {
    /// Approved by a quorum: forward the statement.
    Run { approvers: Vec<String> },
    /// Denied, expired or withdrawn: the agent gets this ErrorResponse; the statement never runs.
    Refuse { error: Bytes, expired: Option<ExpiryReason> },
    /// The agent went away while waiting.
    AgentGone,
}

/// The NoticeResponse telling the agent why nothing happens yet.
pub fn notice(hold: &Hold, url: Option<&str>) -> Bytes {
    messages::notice_response(&hold.notice(url))
}

/// Wait for the decision. Frames the agent sends meanwhile are kept in `later`, in order.
pub async fn await_release<R: AsyncRead + Unpin>(
    hold: &Hold,
    waiter: &mut Waiter,
    reader: &mut FrameReader<R>,
    later: &mut Vec<Frame>,
    withdraw: Option<&Notify>,
) -> Release {
    let gone = async {
        let mut more = Vec::new();
        loop {
            match reader.read_frames(&mut more).await {
                // A Terminate means the agent is leaving, whether or not it closes the socket.
                Ok(true) if more.iter().any(|f| f.tag() == b'X') => return,
                Ok(true) => later.append(&mut more),
                Ok(false) | Err(_) => return,
            }
        }
    };
    match core::await_release(hold, waiter, withdraw, gone).await {
        core::Release::Run { approvers } => Release::Run { approvers },
        core::Release::AgentGone => Release::AgentGone,
        core::Release::Refuse(refusal) => {
            let code = match refusal {
                Refusal::Withdrawn => QUERY_CANCELED,
                Refusal::Denied { .. } | Refusal::Expired { .. } => INSUFFICIENT_PRIVILEGE,
            };
            let message = refusal.message("statement", hold.approval_id);
            Release::Refuse {
                error: messages::error_response(Severity::Error, code, &message),
                expired: refusal.expiry(),
            }
        }
    }
}
