//! The policy this node enforces: the snapshot in the JetStream KV bucket, watched and swapped
//! atomically. Without one the node refuses agents (fail closed); while NATS or the control
//! plane is away it keeps enforcing the last one it had.
//!
//! A snapshot counts only when the control plane signed it and it follows the version the node
//! holds: version N+1 naming version N's event as its previous one. A newer version seen
//! without the ones between (the node was away) is checked against the bucket's history, link
//! by link. Anything else (unsigned, badly signed, a jump, an old version) is refused, logged
//! and counted, and the node keeps what it had.

use crate::control::ControlTrust;
use async_nats::jetstream;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_shared::control::{ControlKind, Signed};
use tollgate_shared::names;
use tollgate_shared::policy::Snapshot;

/// The live policy, or `None` before the first one arrives.
pub type PolicyReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// A resource's masking under `policy`; every detector when no policy is loaded (fail closed).
pub fn masker(policy: Option<&Snapshot>, resource: &str) -> Arc<tollgate_shared::mask::Masker> {
    match policy {
        Some(snapshot) => snapshot.masker(resource),
        None => tollgate_shared::mask::Masker::strict(),
    }
}

/// Watch the bucket until the task is aborted.
pub fn spawn_watcher(
    js: jetstream::Context,
    trust: Arc<ControlTrust>,
) -> (tokio::task::JoinHandle<()>, PolicyReceiver) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match watch_once(&js, &tx, &trust).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => tracing::warn!(error = %e, "policy watch interrupted; keeping the last policy and retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    (task, rx)
}

async fn watch_once(
    js: &jetstream::Context,
    tx: &watch::Sender<Option<Arc<Snapshot>>>,
    trust: &ControlTrust,
) -> Result<(), String> {
    let store = tollgate_shared::stream::open_policy_bucket(js).await?;
    // The last value first, then every change.
    let mut entries = store.watch_with_history(names::POLICY_KEY).await.map_err(|e| e.to_string())?;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation != jetstream::kv::Operation::Put {
            // A deleted policy is not "no rules": keep enforcing the last one we had.
            tracing::warn!("the policy key was deleted; keeping the last policy");
            continue;
        }
        let snapshot: Snapshot = match Signed::open(&entry.value, &trust.key, ControlKind::Policy) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                trust.refuse(&format!("policy snapshot (revision {}) {e}", entry.revision));
                continue;
            }
        };
        let current = tx.borrow().clone();
        let accepted = match current.as_deref() {
            None => Some(snapshot),
            Some(held) if snapshot.version <= held.version => None,
            Some(held) if snapshot.version == held.version + 1 && snapshot.previous == held.event_hash => {
                Some(snapshot)
            }
            Some(held) if snapshot.version == held.version + 1 => {
                trust.refuse(&format!("policy version {} does not follow version {}", snapshot.version, held.version));
                None
            }
            Some(held) => match follows(&store, held, &snapshot, trust).await {
                Ok(()) => Some(snapshot),
                Err(why) => {
                    trust.refuse(&format!(
                        "policy version {} jumps from version {}: {why}",
                        snapshot.version, held.version
                    ));
                    None
                }
            },
        };
        if let Some(snapshot) = accepted {
            tracing::info!(version = snapshot.version, "policy loaded");
            tx.send_replace(Some(Arc::new(snapshot)));
        }
    }
    Err("policy watch ended".into())
}

/// Whether the bucket's history links `held` to `newer` through every version between, each
/// signed by the control plane.
async fn follows(
    store: &jetstream::kv::Store,
    held: &Snapshot,
    newer: &Snapshot,
    trust: &ControlTrust,
) -> Result<(), String> {
    let mut history = store.history(names::POLICY_KEY).await.map_err(|e| e.to_string())?;
    let mut versions = std::collections::BTreeMap::new();
    while let Some(entry) = history.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if let Ok(snapshot) = Signed::open::<Snapshot>(&entry.value, &trust.key, ControlKind::Policy) {
            if snapshot.version > held.version && snapshot.version <= newer.version {
                versions.insert(snapshot.version, (snapshot.previous, snapshot.event_hash));
            }
        }
    }
    let mut previous = held.event_hash.clone();
    for version in held.version + 1..=newer.version {
        let Some((links_to, hash)) = versions.remove(&version) else {
            return Err(format!("version {version} is not in the bucket's history"));
        };
        if links_to != previous {
            return Err(format!("version {version} does not follow the version before it"));
        }
        previous = hash;
    }
    Ok(())
}
