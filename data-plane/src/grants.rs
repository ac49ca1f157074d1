//! Standing approvals ("this agent, this resource, these classes, for N minutes"), watched from
//! their KV bucket. A held statement they cover runs without a new request; it is still
//! recorded, naming the approval it ran under. Without NATS the node keeps what it had, and an
//! approval past its `until` covers nothing. Only approvals the control plane signed count.

use crate::control::ControlTrust;
use async_nats::jetstream;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tollgate_shared::control::{ControlKind, Signed};
use tollgate_shared::policy::{Covered, StandingApproval};
use uuid::Uuid;

#[derive(Default)]
pub struct StandingApprovals {
    by_id: RwLock<HashMap<Uuid, StandingApproval>>,
}

impl StandingApprovals {
    /// The standing approval covering a statement held by one rule, if any.
    pub fn covering(&self, wanted: &Covered<'_>) -> Option<StandingApproval> {
        let now = chrono::Utc::now();
        let by_id = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        by_id.values().find(|a| a.covers(wanted, now)).cloned()
    }

    /// How many standing approvals this node knows (expired ones included until removed).
    pub fn len(&self) -> usize {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watch the bucket until the task is aborted.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        js: jetstream::Context,
        trust: Arc<ControlTrust>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.watch(&js, &trust).await {
                    tracing::warn!(error = %e, "standing approvals watch interrupted; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn watch(&self, js: &jetstream::Context, trust: &ControlTrust) -> Result<(), String> {
        let store = tollgate_shared::stream::open_grants_bucket(js).await?;
        let mut entries = store.watch_all_from_revision(1).await.map_err(|e| e.to_string())?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let mut by_id = self.by_id.write().unwrap_or_else(|p| p.into_inner());
            if entry.operation != jetstream::kv::Operation::Put {
                by_id.retain(|id, _| tollgate_shared::names::grant_key(*id) != entry.key);
                continue;
            }
            // Only what the control plane signed, under the key it names.
            match Signed::open::<StandingApproval>(&entry.value, &trust.key, ControlKind::Grant) {
                Ok(approval) if tollgate_shared::names::grant_key(approval.approval_id) == entry.key => {
                    tracing::info!(approval = %approval.approval_id, agent = %approval.agent_name, until = %approval.until, "standing approval loaded");
                    by_id.insert(approval.approval_id, approval);
                }
                Ok(_) => trust.refuse(&format!("standing approval under the wrong key {}", entry.key)),
                Err(e) => trust.refuse(&format!("standing approval {} {e}", entry.key)),
            }
        }
        Err("standing approvals watch ended".into())
    }
}
