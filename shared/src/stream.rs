//! The JetStream stream every event lives on. Both planes make sure it exists at startup, so
//! either can come up first.

use crate::names;
use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// Create the event stream if it is missing (file storage, de-duplication window for retries).
pub async fn ensure_event_stream(js: &jetstream::Context) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: names::STREAM.to_owned(),
        subjects: vec![names::all_subjects()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or open JetStream stream {}: {e}", names::STREAM))
}

/// Open the policy KV bucket, creating it when missing (history kept for audits).
pub async fn ensure_policy_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = js.get_key_value(names::POLICY_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: names::POLICY_BUCKET.to_owned(),
        history: 64,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or open KV bucket {}: {e}", names::POLICY_BUCKET))
}

/// Open (or create) the standing-approvals bucket.
pub async fn ensure_grants_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = js.get_key_value(names::GRANTS_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: names::GRANTS_BUCKET.to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or open KV bucket {}: {e}", names::GRANTS_BUCKET))
}

/// Publish a sealed event on its subject with its id as `Nats-Msg-Id`, so JetStream
/// de-duplicates retries. Returns the acknowledgement to await.
pub async fn publish_event(
    js: &jetstream::Context,
    event: &crate::event::SealedEvent,
) -> Result<jetstream::context::PublishAckFuture, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(names::MSG_ID_HEADER, event.id.to_string().as_str());
    js.publish_with_headers(names::subject_for(event.kind), headers, event.bytes.clone())
        .await
        .map_err(|e| e.to_string())
}
