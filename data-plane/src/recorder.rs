//! Publishing events to JetStream, and the per-session recorder that seals them into the chain.
//!
//! A command is forwarded only after its event is acknowledged ([`Publisher::durable`]): exactly
//! one JetStream round trip on a statement's critical path. Result events are published without
//! waiting for the acknowledgement ([`Publisher::background`]); JetStream de-duplicates retries by
//! the event id sent as `Nats-Msg-Id`.

use async_nats::jetstream;
use futures_util::future::join_all;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_shared::event::{Chain, SealedEvent, SessionSigner};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("JetStream did not acknowledge the event: {0}")]
    Unacknowledged(String),
    #[error("JetStream did not acknowledge the event within {0:?}")]
    Timeout(Duration),
}

pub struct Publisher {
    js: jetstream::Context,
    timeout: Duration,
}

impl Publisher {
    pub fn new(js: jetstream::Context, timeout: Duration) -> Self {
        Publisher { js, timeout }
    }

    async fn send(&self, event: &SealedEvent) -> Result<jetstream::context::PublishAckFuture, RecordError> {
        tollgate_shared::stream::publish_event(&self.js, event).await.map_err(RecordError::Unacknowledged)
    }

    /// Publish every event and wait until JetStream has stored all of them (they travel
    /// together, so this costs one round trip however many there are).
    pub async fn durable(&self, events: &[SealedEvent]) -> Result<(), RecordError> {
        let work = async {
            let mut acks = Vec::with_capacity(events.len());
            for event in events {
                acks.push(self.send(event).await?);
            }
            for ack in join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await {
                ack.map_err(|e| RecordError::Unacknowledged(e.to_string()))?;
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| RecordError::Timeout(self.timeout))?
    }

    /// Publish without waiting for the acknowledgement; a failure is logged (the next command's
    /// durable publish will fail too, so no further statement runs unrecorded).
    pub async fn background(&self, event: SealedEvent) {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send(&event)).await {
            Ok(Ok(ack)) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, ack).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(event = %event.id, kind = event.kind, error = %e, "event not acknowledged")
                        }
                        Err(_) => {
                            tracing::warn!(event = %event.id, kind = event.kind, "event acknowledgement timed out")
                        }
                    }
                });
            }
            Ok(Err(e)) => tracing::warn!(event = %event.id, kind = event.kind, error = %e, "event not published"),
            Err(_) => tracing::warn!(event = %event.id, kind = event.kind, "event publish timed out"),
        }
    }
}

/// Seals one session's events in order and hands them to the publisher.
pub struct SessionRecorder {
    chain: Mutex<Chain>,
    publisher: Arc<Publisher>,
    signer: Arc<SessionSigner>,
}

impl SessionRecorder {
    pub fn new(chain: Chain, publisher: Arc<Publisher>, signer: Arc<SessionSigner>) -> Self {
        SessionRecorder { chain: Mutex::new(chain), publisher, signer }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        // A panic while sealing cannot leave the chain half-updated (seal mutates last), so a
        // poisoned lock is still consistent.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self) -> uuid::Uuid {
        self.chain().session()
    }

    pub fn seal<P: serde::Serialize>(&self, kind: &'static str, payload: &P) -> Result<SealedEvent, RecordError> {
        Ok(self.chain().seal(kind, payload)?)
    }

    /// Seal the `session.ended` event, signing the head of the chain.
    pub fn seal_end(
        &self,
        reason: tollgate_shared::event::EndReason,
        detail: Option<String>,
        commands: u64,
    ) -> Result<SealedEvent, RecordError> {
        let mut chain = self.chain();
        let head = chain.head().to_owned();
        let signature = self.signer.sign_end(chain.session(), chain.next_seq(), &head);
        let payload = tollgate_shared::event::SessionEnded { reason, detail, commands, head, signature };
        Ok(chain.seal(tollgate_shared::event::kind::SESSION_ENDED, &payload)?)
    }
}
