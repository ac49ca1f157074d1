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
