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
use std::sync::atomic::{AtomicBool, Ordering};
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
    #[error("the event would be {0} bytes, over the {max} a stream message may hold", max = tollgate_shared::stream::EVENT_MAX_BYTES)]
    TooLarge(usize),
    #[error("an earlier event of this session was not stored, so nothing after it may run")]
    EarlierLost,
}

/// Publishes awaiting their acknowledgement at once (beyond these, events wait and batch).
const IN_FLIGHT: usize = 2;
/// How long results alone wait for a command to share a message with.
const LINGER: Duration = Duration::from_millis(2);

/// Events of one session handed to the node's publishing task, with whom to tell when stored.
struct Job {
    events: Vec<SealedEvent>,
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// Set when any event of the session is not stored: from then on every later job of the
    /// session fails too (publishes overlap, so a later one could otherwise succeed).
    lost: Option<Arc<AtomicBool>>,
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
        self.submit(events, None).wait().await
    }

    /// Publish every event; the answer says when JetStream has stored all of them.
    fn submit(&self, events: Vec<SealedEvent>, lost: Option<Arc<AtomicBool>>) -> Stored {
        let (done, stored) = oneshot::channel();
        let sent = self.jobs.send(Job { events, done: Some(done), lost }).is_ok();
        Stored {
            stored: if sent {
                Ok(stored)
            } else {
                Err(RecordError::Unacknowledged("the publisher has stopped".into()))
            },
            timeout: self.timeout,
        }
    }

    /// Publish without waiting for the acknowledgement; a failure is logged (and, for a
    /// session's event, fails every later publish of that session).
    pub fn background(&self, event: SealedEvent) {
        self.background_for(event, None);
    }

    fn background_for(&self, event: SealedEvent, lost: Option<Arc<AtomicBool>>) {
        if self.jobs.send(Job { events: vec![event], done: None, lost }).is_err() {
            tracing::warn!("event not published: the publisher has stopped");
        }
    }
}

/// Events submitted, to be stored.
pub struct Stored {
    stored: Result<oneshot::Receiver<Result<(), String>>, RecordError>,
    timeout: Duration,
}

impl Stored {
    /// Wait (within the publish timeout) until they are stored.
    pub async fn wait(self) -> Result<(), RecordError> {
        let stored = self.stored?;
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
        // A job that cannot be published fails alone, before it could fail anyone else's.
        jobs.retain_mut(|job| match unpublishable(job) {
            None => true,
            Some(reason) => {
                fail(job, reason);
                false
            }
        });
        if jobs.is_empty() {
            continue;
        }
        let acks = publish(&js, &node, &jobs).await;
        if sent.send(InFlight { acks, jobs, _slot: slot }).is_err() {
            return;
        }
    }
}

/// Why a job must not be published: its session already lost an event, or an event is larger
/// than a stream message may be.
fn unpublishable(job: &Job) -> Option<String> {
    if job.lost.as_ref().is_some_and(|l| l.load(Ordering::SeqCst)) {
        return Some(RecordError::EarlierLost.to_string());
    }
    let largest = job.events.iter().map(|e| e.bytes.len()).max().unwrap_or(0);
    (largest > tollgate_shared::stream::EVENT_MAX_BYTES).then(|| RecordError::TooLarge(largest).to_string())
}

/// Tell a job it failed (marking its session's loss).
fn fail(job: &mut Job, reason: String) {
    if let Some(lost) = &job.lost {
        lost.store(true, Ordering::SeqCst);
    }
    match job.done.take() {
        Some(done) => {
            let _ = done.send(Err(reason));
        }
        None => {
            for event in &job.events {
                tracing::warn!(event = %event.id, kind = event.kind, error = %reason, "event not recorded");
            }
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
        for mut job in jobs {
            // Jobs are told in publish order, so an earlier loss of the session is known here.
            let outcome = match &outcome {
                Ok(()) if job.lost.as_ref().is_some_and(|l| l.load(Ordering::SeqCst)) => {
                    Err(RecordError::EarlierLost.to_string())
                }
                other => other.clone(),
            };
            match outcome {
                Err(reason) => fail(&mut job, reason),
                Ok(()) => {
                    if let Some(done) = job.done.take() {
                        let _ = done.send(Ok(()));
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
    /// Set once an event of this session was not stored: every later publish fails.
    lost: Arc<AtomicBool>,
}

impl SessionRecorder {
    pub fn new(chain: Chain, publisher: Arc<Publisher>, signer: Arc<SessionSigner>) -> Self {
        SessionRecorder { chain: Mutex::new(chain), publisher, signer, lost: Arc::new(AtomicBool::new(false)) }
    }

    /// Publish the session's events and wait until JetStream has stored all of them (and every
    /// event of the session before them).
    pub async fn durable(&self, events: Vec<SealedEvent>) -> Result<(), RecordError> {
        self.submit(events).wait().await
    }

    /// Publish the session's last event and wait until it is stored, even after a loss: it
    /// runs nothing, and it says how the session ended (a gap before it shows in the chain).
    pub async fn durable_last(&self, events: Vec<SealedEvent>) -> Result<(), RecordError> {
        self.publisher.durable(events).await
    }

    /// Publish the session's events; the answer says when they (and every event of the session
    /// before them) are stored.
    pub fn submit(&self, events: Vec<SealedEvent>) -> Stored {
        self.publisher.submit(events, Some(self.lost.clone()))
    }

    /// Publish one of the session's events without waiting; if it is not stored, every later
    /// publish of the session fails.
    pub fn background(&self, event: SealedEvent) {
        self.publisher.background_for(event, Some(self.lost.clone()));
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        // A panic while sealing cannot leave the chain half-updated (seal mutates last), so a
        // poisoned lock is still consistent.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session(&self) -> uuid::Uuid {
        self.chain().session()
    }

    /// Seal the session's next event; refused (and the chain left as it was) when it would be
    /// larger than a stream message may hold, so nothing waits on an event that cannot be stored.
    pub fn seal<P: serde::Serialize>(&self, kind: &'static str, payload: &P) -> Result<SealedEvent, RecordError> {
        self.chain()
            .seal_within(kind, payload, tollgate_shared::stream::EVENT_MAX_BYTES)?
            .map_err(RecordError::TooLarge)
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
