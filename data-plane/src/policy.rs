//! The policy this node enforces: the snapshot in the JetStream KV bucket, watched and swapped
//! atomically. Without one the node refuses agents (fail closed); while NATS or the control
//! plane is away it keeps enforcing the last one it had.

use async_nats::jetstream;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_shared::names;
use tollgate_shared::policy::Snapshot;

/// The live policy, or `None` before the first one arrives.
pub type PolicyReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// Watch the bucket until the task is aborted.
pub fn spawn_watcher(js: jetstream::Context) -> (tokio::task::JoinHandle<()>, PolicyReceiver) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match watch_once(&js, &tx).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => tracing::warn!(error = %e, "policy watch interrupted; keeping the last policy and retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    (task, rx)
}

async fn watch_once(js: &jetstream::Context, tx: &watch::Sender<Option<Arc<Snapshot>>>) -> Result<(), String> {
    let store = tollgate_shared::stream::ensure_policy_bucket(js).await?;
    // The last value first, then every change.
    let mut entries = store.watch_with_history(names::POLICY_KEY).await.map_err(|e| e.to_string())?;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation != jetstream::kv::Operation::Put {
            // A deleted policy is not "no rules": keep enforcing the last one we had.
            tracing::warn!("the policy key was deleted; keeping the last policy");
            continue;
        }
        match serde_json::from_slice::<Snapshot>(&entry.value) {
            Ok(snapshot) => {
                let stale = tx.borrow().as_ref().is_some_and(|current| current.version >= snapshot.version);
                if !stale {
                    tracing::info!(version = snapshot.version, "policy loaded");
                    tx.send_replace(Some(Arc::new(snapshot)));
                }
            }
            // Refuse what we cannot parse: the previous policy stays in force.
            Err(e) => tracing::error!(error = %e, revision = entry.revision, "unreadable policy snapshot ignored"),
        }
    }
    Err("policy watch ended".into())
}
