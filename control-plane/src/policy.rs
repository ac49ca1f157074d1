//! Writing policy versions: the JetStream KV bucket holds the live snapshot (its revision gives
//! optimistic concurrency), and every version is a `policy.changed` event in the policy chain.
//!
//! Order: the KV update is the commit point (it alone can lose a race); the event follows,
//! retried with the same bytes (JetStream de-duplicates by event id) until JetStream takes it.

use async_nats::jetstream::{self, kv};
use chrono::Utc;
use std::time::Duration;
use tollgate_shared::control::{ControlKey, ControlKind, ControlPublicKey, Signed};
use tollgate_shared::event::{kind, Chain, PolicyChanged, SealedEvent};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::names;
pub use tollgate_shared::policy::Snapshot;
use tollgate_shared::policy::{diff, PolicyChange, PolicyDocument};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the live policy is version {live}; base your change on it")]
    Conflict { live: u64 },
    #[error("policy store unavailable: {0}")]
    Store(String),
}

/// The live snapshot and its KV revision (None before the first version). A snapshot this
/// control plane did not sign is an error, never a base for the next version.
pub async fn current(store: &kv::Store, key: &ControlKey) -> Result<Option<(Snapshot, u64)>, ApplyError> {
    let entry = store.entry(names::POLICY_KEY).await.map_err(|e| ApplyError::Store(e.to_string()))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let public = ControlPublicKey::parse(&key.public_hex()).map_err(|e| ApplyError::Store(e.to_string()))?;
            let snapshot: Snapshot = Signed::open(&entry.value, &public, ControlKind::Policy)
                .map_err(|e| ApplyError::Store(format!("the policy store holds a snapshot that is {e}")))?;
            Ok(Some((snapshot, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Make `document` the next version, if `base_version` is still the live one.
pub async fn apply(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &ControlKey,
    author: &AgentIdentity,
    base_version: u64,
    document: PolicyDocument,
    comment: Option<String>,
) -> Result<(Snapshot, Vec<PolicyChange>), ApplyError> {
    let live = current(store, key).await?;
    let live_version = live.as_ref().map_or(0, |(s, _)| s.version);
    if base_version != live_version {
        return Err(ApplyError::Conflict { live: live_version });
    }
    let empty = PolicyDocument::default();
    let changes = diff(live.as_ref().map_or(&empty, |(s, _)| &s.document), &document);
    let version = live_version + 1;
    let prev = live.as_ref().map(|(s, _)| s.event_hash.clone()).unwrap_or_default();
    let resource = ResourceRef { name: "policy".into(), kind: ResourceKind::Policy };
    let mut chain =
        Chain::resume(names::policy_chain(), "control".into(), author.clone(), resource, version - 1, prev.clone());
    let payload = PolicyChanged { version, document: document.clone(), comment, changes: changes.clone() };
    let event = chain.seal(kind::POLICY_CHANGED, &payload).map_err(|e| ApplyError::Store(e.to_string()))?;
    let snapshot = Snapshot {
        version,
        document,
        event_id: event.id,
        event_hash: event.hash.clone(),
        previous: prev,
        changed_by: author.subject.clone(),
        changed_at: Utc::now(),
        maskers: Default::default(),
    };
    let bytes = Signed::seal(key, ControlKind::Policy, &snapshot).map_err(|e| ApplyError::Store(e.to_string()))?;
    let written = match &live {
        Some((_, revision)) => {
            store.update(names::POLICY_KEY, bytes.into(), *revision).await.map(|_| ()).map_err(|e| e.to_string())
        }
        None => store.create(names::POLICY_KEY, bytes.into()).await.map(|_| ()).map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        // Someone else committed first (wrong last sequence / key exists), or the store is away.
        return match current(store, key).await? {
            Some((s, _)) if s.version != live_version => Err(ApplyError::Conflict { live: s.version }),
            _ => Err(ApplyError::Store(e)),
        };
    }
    // Usually one attempt records the change before we answer; if JetStream is slow, keep
    // trying in the background with the same bytes.
    let signature = key.sign(ControlKind::Event, &event.bytes);
    if tokio::time::timeout(Duration::from_secs(2), publish_once(js, &event, &signature))
        .await
        .map_or(true, |r| r.is_err())
    {
        tokio::spawn(publish_until_stored(js.clone(), event, signature));
    }
    Ok((snapshot, changes))
}

async fn publish_once(js: &jetstream::Context, event: &SealedEvent, signature: &str) -> Result<(), String> {
    let ack = tollgate_shared::stream::publish_signed_event(js, event, signature).await?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

async fn publish_until_stored(js: jetstream::Context, event: SealedEvent, signature: String) {
    let mut delay = Duration::from_millis(100);
    loop {
        match publish_once(&js, &event, &signature).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(event = %event.id, error = %e, "policy.changed not recorded yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
