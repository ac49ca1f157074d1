//! Reaching NATS, and the JetStream stream and buckets every node uses. The control plane
//! creates them; proxies only open them.

use crate::config::SecretRef;
use crate::names;
use async_nats::jetstream::{self, stream};
use std::path::Path;
use std::time::Duration;

/// How a component connects: authenticated with its nkey seed (by reference) when given, over
/// TLS verified against `ca_file` when given, its replies on an inbox prefix of its own (NATS
/// permissions give each component its own inbox only).
pub fn connect_options(
    name: &str,
    inbox: &str,
    nkey: Option<&SecretRef>,
    ca_file: Option<&Path>,
) -> Result<async_nats::ConnectOptions, String> {
    let options = match nkey {
        Some(seed) => {
            let seed = seed.resolve().map_err(|e| format!("nats.nkey: {e}"))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        }
        None => async_nats::ConnectOptions::new(),
    };
    let options = options.name(name).custom_inbox_prefix(format!("_INBOX_{inbox}")).retry_on_initial_connect();
    Ok(match ca_file {
        Some(ca) => options.add_root_certificates(ca.to_owned()).require_tls(true),
        None => options,
    })
}

/// The servers of a `url` setting: one URL, or several separated by commas (a cluster).
pub fn servers(url: &str) -> Vec<String> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

/// Create the event stream if it is missing (file storage, de-duplication window for retries,
/// `replicas` copies in a JetStream cluster).
pub async fn ensure_event_stream(js: &jetstream::Context, replicas: usize) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: names::STREAM.to_owned(),
        subjects: vec![names::all_subjects()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or open JetStream stream {}: {e}", names::STREAM))
}

/// Open the event stream (the control plane creates it).
pub async fn open_event_stream(js: &jetstream::Context) -> Result<stream::Stream, String> {
    js.get_stream(names::STREAM)
        .await
        .map_err(|e| format!("JetStream stream {} is not available yet: {e}", names::STREAM))
}

/// Open the policy KV bucket, creating it when missing (history kept for audits).
pub async fn ensure_policy_bucket(js: &jetstream::Context, replicas: usize) -> Result<jetstream::kv::Store, String> {
    ensure_bucket(js, names::POLICY_BUCKET, 64, replicas).await
}

/// Open (or create) the standing-approvals bucket (only the latest value of each key matters).
pub async fn ensure_grants_bucket(js: &jetstream::Context, replicas: usize) -> Result<jetstream::kv::Store, String> {
    ensure_bucket(js, names::GRANTS_BUCKET, 1, replicas).await
}

/// Open the policy bucket without creating it (proxies may read it, never create it).
pub async fn open_policy_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, String> {
    open_bucket(js, names::POLICY_BUCKET).await
}

/// Open the standing-approvals bucket without creating it.
pub async fn open_grants_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, String> {
    open_bucket(js, names::GRANTS_BUCKET).await
}

async fn open_bucket(js: &jetstream::Context, bucket: &str) -> Result<jetstream::kv::Store, String> {
    js.get_key_value(bucket).await.map_err(|e| format!("KV bucket {bucket} is not available yet: {e}"))
}

async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: bucket.to_owned(),
        history,
        num_replicas: replicas.max(1),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create or open KV bucket {bucket}: {e}"))
}

/// Publish a sealed event on its subject with its id as `Nats-Msg-Id`, so JetStream
/// de-duplicates retries. Returns the acknowledgement to await.
pub async fn publish_event(
    js: &jetstream::Context,
    event: &crate::event::SealedEvent,
) -> Result<jetstream::context::PublishAckFuture, String> {
    publish(js, event, None).await
}

/// `publish_event`, with the control plane's signature of the event's bytes in a header.
pub async fn publish_signed_event(
    js: &jetstream::Context,
    event: &crate::event::SealedEvent,
    signature: &str,
) -> Result<jetstream::context::PublishAckFuture, String> {
    publish(js, event, Some(signature)).await
}

async fn publish(
    js: &jetstream::Context,
    event: &crate::event::SealedEvent,
    signature: Option<&str>,
) -> Result<jetstream::context::PublishAckFuture, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(names::MSG_ID_HEADER, event.id.to_string().as_str());
    if let Some(signature) = signature {
        headers.insert(crate::control::SIGNATURE_HEADER, signature);
    }
    js.publish_with_headers(event.subject.clone(), headers, event.bytes.clone()).await.map_err(|e| e.to_string())
}

/// The subject suffix of a batch: several events of one node in one message.
pub const BATCH_KIND: &str = "batch";
/// Header of a batch message: how many events it holds.
pub const BATCH_HEADER: &str = "Tollgate-Batch";
/// Largest event: NATS refuses messages over its `max_payload` (1 MiB by default, headers
/// included), so a larger event could never be stored; the proxy refuses the statement instead.
pub const EVENT_MAX_BYTES: usize = 1_000_000;

/// Largest batch payload (NATS refuses messages over its `max_payload`, 1 MiB by default).
pub const BATCH_MAX_BYTES: usize = 512 * 1024;

/// Whether an event may travel in a batch: the per-statement kinds. Every other kind travels
/// alone on its own subject, so subscribers that filter by subject (approvals) see it.
pub fn batchable(event: &crate::event::SealedEvent) -> bool {
    use crate::event::kind;
    (event.kind == kind::COMMAND || event.kind == kind::COMMAND_RESULT) && !event.bytes.contains(&b'\n')
}

/// Publish `events` (all [`batchable`], of `node`, in order) as one message on
/// `tollgate.events.<node>.batch`: their bytes one per line. Its `Nats-Msg-Id` derives from the
/// first event's id, so a retried batch is stored once.
pub async fn publish_batch(
    js: &jetstream::Context,
    node: &str,
    events: &[&crate::event::SealedEvent],
) -> Result<jetstream::context::PublishAckFuture, String> {
    let Some(first) = events.first() else { return Err("an empty batch".into()) };
    let mut payload = bytes::BytesMut::with_capacity(events.iter().map(|e| e.bytes.len() + 1).sum());
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            payload.extend_from_slice(b"\n");
        }
        payload.extend_from_slice(&event.bytes);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(names::MSG_ID_HEADER, format!("batch:{}", first.id).as_str());
    headers.insert(BATCH_HEADER, events.len().to_string().as_str());
    js.publish_with_headers(names::subject_for(node, BATCH_KIND), headers, payload.freeze())
        .await
        .map_err(|e| e.to_string())
}

/// The events a stored message holds: the message itself, or each line of a batch.
pub fn events_in<'a>(subject: &str, payload: &'a [u8]) -> Vec<&'a [u8]> {
    if is_batch(subject) {
        payload.split(|b| *b == b'\n').collect()
    } else {
        vec![payload]
    }
}

/// Whether a message on `subject` is a batch.
pub fn is_batch(subject: &str) -> bool {
    subject.strip_suffix(BATCH_KIND).is_some_and(|rest| rest.ends_with('.'))
        && subject.split('.').count() == names::SUBJECT_PREFIX.split('.').count() + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_recognised_by_their_subject_and_split_by_line() {
        assert!(is_batch("tollgate.events.proxy-a.batch"));
        assert!(!is_batch("tollgate.events.proxy-a.command"));
        assert!(!is_batch("tollgate.events.proxy-a.command.batch"), "a kind ending in batch is not a batch");
        assert!(!is_batch("tollgate.events.batch"));
        assert_eq!(
            events_in("tollgate.events.p.batch", b"{\"a\":1}\n{\"b\":2}"),
            vec![&b"{\"a\":1}"[..], b"{\"b\":2}"]
        );
        assert_eq!(events_in("tollgate.events.p.command", b"{\"a\":\n1}"), vec![&b"{\"a\":\n1}"[..]]);
    }
}
