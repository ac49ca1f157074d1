//! Publishing events to JetStream, and the per-session recorder that seals them into the chain.
//!
//! A command is forwarded only after its event is acknowledged ([`Publisher::durable`]): exactly
//! one JetStream round trip on a statement's critical path. Result events go without waiting
//! ([`Publisher::background`]).
//!
//! One task per node publishes for every session (group commit): it takes every event waiting,
//! sends the per-statement kinds of all sessions as one batch message (`<node>.batch`, one
//! event per line) and every other kind alone on its own subject, then answers each session
//! when JetStream has acknowledged its events. At most [`IN_FLIGHT`] publishes are awaiting
//! their acknowledgement; what arrives meanwhile travels together in the next. Results with
//! nothing else to send wait up to [`LINGER`] for a command to travel with.

use async_nats::jetstream;
use futures_util::future::join_all;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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

/// Publishes awaiting their acknowledgement at once (beyond these, events wait and batch).
const IN_FLIGHT: usize = 2;
/// How long results alone wait for a command to share a message with.
const LINGER: Duration = Duration::from_millis(2);

/// Events of one session handed to the node's publishing task, with whom to tell when stored.
struct Job {
    events: Vec<SealedEvent>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Publishes sent and the jobs waiting on their acknowledgements.
struct InFlight {
    acks: Result<Vec<jetstream::context::PublishAckFuture>, String>,
    jobs: Vec<Job>,
    /// Held until the jobs have been told.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

pub struct Publisher {
    jobs: mpsc::UnboundedSender<Job>,
    timeout: Duration,
}

impl Publisher {
    /// The node's publisher; its task runs until the publisher is dropped.
    pub fn new(js: jetstream::Context, node: String, timeout: Duration) -> Self {
        let (jobs, waiting) = mpsc::unbounded_channel();
        tokio::spawn(batch(js, node, waiting, timeout));
        Publisher { jobs, timeout }
    }

    /// Publish every event and wait until JetStream has stored all of them.
    pub async fn durable(&self, events: Vec<SealedEvent>) -> Result<(), RecordError> {
        self.submit(events).wait().await
    }

    /// Publish every event; the answer says when JetStream has stored all of them.
    pub fn submit(&self, events: Vec<SealedEvent>) -> Stored {
        let (done, stored) = oneshot::channel();
        let sent = self.jobs.send(Job { events, done: Some(done) }).is_ok();
        Stored { stored: sent.then_some(stored), timeout: self.timeout }
    }

    /// Publish without waiting for the acknowledgement; a failure is logged (the next command's
    /// durable publish will fail too, so no further statement runs unrecorded).
    pub fn background(&self, event: SealedEvent) {
        if self.jobs.send(Job { events: vec![event], done: None }).is_err() {
            tracing::warn!("event not published: the publisher has stopped");
        }
    }
}

/// Events submitted, to be stored.
pub struct Stored {
    stored: Option<oneshot::Receiver<Result<(), String>>>,
    timeout: Duration,
}

impl Stored {
    /// Wait (within the publish timeout) until they are stored.
    pub async fn wait(self) -> Result<(), RecordError> {
        let Some(stored) = self.stored else {
            return Err(RecordError::Unacknowledged("the publisher has stopped".into()));
        };
        match tokio::time::timeout(self.timeout, stored).await {
            Err(_) => Err(RecordError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(RecordError::Unacknowledged("the publisher has stopped".into())),
            Ok(Ok(outcome)) => outcome.map_err(RecordError::Unacknowledged),
        }
    }
}

/// The node's publishing task: take what is waiting, wait for a publish slot (meanwhile more
/// arrives: that is what makes events batch under load), take that too, publish, and hand the
/// acknowledgements to [`acknowledge`], which frees the slot.
async fn batch(js: jetstream::Context, node: String, mut waiting: mpsc::UnboundedReceiver<Job>, timeout: Duration) {
    let (sent, in_flight) = mpsc::unbounded_channel();
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    tokio::spawn(acknowledge(in_flight, timeout));
    while let Some(first) = waiting.recv().await {
        let mut jobs = vec![first];
        take_waiting(&mut waiting, &mut jobs);
        if jobs.iter().all(|j| j.done.is_none()) {
            if let Ok(Some(next)) = tokio::time::timeout(LINGER, waiting.recv()).await {
                jobs.push(next);
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        take_waiting(&mut waiting, &mut jobs);
        let acks = publish(&js, &node, &jobs).await;
        if sent.send(InFlight { acks, jobs, _slot: slot }).is_err() {
            return;
        }
    }
}

fn take_waiting(waiting: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>) {
    while let Ok(job) = waiting.try_recv() {
        jobs.push(job);
    }
}

/// Send the jobs' events in order: runs of batchable events as batch messages, others alone.
async fn publish(
    js: &jetstream::Context,
    node: &str,
    jobs: &[Job],
) -> Result<Vec<jetstream::context::PublishAckFuture>, String> {
    let mut acks = Vec::new();
    let mut run: Vec<&SealedEvent> = Vec::new();
    let mut run_bytes = 0;
    for event in jobs.iter().flat_map(|j| &j.events) {
        let fits = run_bytes + event.bytes.len() < tollgate_shared::stream::BATCH_MAX_BYTES;
        if !run.is_empty() && (!tollgate_shared::stream::batchable(event) || !fits) {
            acks.push(send_run(js, node, &run).await?);
            run.clear();
            run_bytes = 0;
        }
        if tollgate_shared::stream::batchable(event) {
            run_bytes += event.bytes.len() + 1;
            run.push(event);
        } else {
            acks.push(tollgate_shared::stream::publish_event(js, event).await?);
        }
    }
    if !run.is_empty() {
        acks.push(send_run(js, node, &run).await?);
    }
    Ok(acks)
}

async fn send_run(
    js: &jetstream::Context,
    node: &str,
    run: &[&SealedEvent],
) -> Result<jetstream::context::PublishAckFuture, String> {
    match run {
        [one] => tollgate_shared::stream::publish_event(js, one).await,
        _ => tollgate_shared::stream::publish_batch(js, node, run).await,
    }
}

/// Await each publish's acknowledgements in order and tell its jobs.
async fn acknowledge(mut in_flight: mpsc::UnboundedReceiver<InFlight>, timeout: Duration) {
    while let Some(InFlight { acks, jobs, _slot }) = in_flight.recv().await {
        let outcome = match acks {
            Err(e) => Err(e),
            Ok(acks) => match tokio::time::timeout(
                timeout,
                join_all(acks.into_iter().map(std::future::IntoFuture::into_future)),
            )
            .await
            {
                Err(_) => Err(format!("no acknowledgement within {timeout:?}")),
                Ok(results) => results.into_iter().find_map(Result::err).map_or(Ok(()), |e| Err(e.to_string())),
            },
        };
        for job in jobs {
            match job.done {
                Some(done) => {
                    let _ = done.send(outcome.clone());
                }
                None => {
                    if let Err(e) = &outcome {
                        for event in &job.events {
                            tracing::warn!(event = %event.id, kind = event.kind, error = %e, "event not recorded");
                        }
                    }
                }
            }
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
