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
