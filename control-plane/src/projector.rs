//! The projector: a durable JetStream pull consumer that writes events into the Postgres views.
//!
//! Batched (one transaction per batch), idempotent (an event id is inserted once; its effects
//! apply only when the insert happened), resumable (acks follow the commit, so a crash replays
//! the batch and the duplicates are skipped). Every control-plane replica shares the consumer.

mod apply;
pub mod rebuild;
pub mod rows;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::{FutureExt, StreamExt};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_shared::control::ControlPublicKey;
use tollgate_shared::names;

/// Batches of per-statement events written at once, on separate connections (2: 41-42k
/// events/s into the views on the two-core benchmark machine, 3: 43-44k).
const WRITERS: usize = 3;

/// Messages asked for by one pull request.
const PULL_BATCH: usize = 1000;

/// How long a batch of per-statement events gathers after its first message. Every other
/// event (a session starting or ending, an approval, a policy change) ends the gathering at
/// once, so what people and the API wait for is projected without it. Larger batches cost the
/// database less per event: 10 ms measured ~3,000 TPS through the proxy on the benchmark
/// machine, 50 ms ~3,600 and 100 ms ~3,800 (pgbench -S, 8 clients, strict recording).
const GATHER: Duration = Duration::from_millis(100);

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct ProjectorStats {
    pub projected: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    /// Messages the consumer has not delivered yet (as of the last batch).
    pub lag: AtomicU64,
    /// Woken after every committed batch (the API waits on it for its own decisions).
    pub committed: tokio::sync::Notify,
}

/// Project until the task is aborted. Events of the control plane's own kinds count only with
/// its signature (`control` verifies it); others are kept aside in `rejected_events`.
pub async fn run(
    js: jetstream::Context,
    db: PgPool,
    batch_size: usize,
    stats: Arc<ProjectorStats>,
    control: ControlPublicKey,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match consume(&js, &db, batch_size, &stats, &control).await {
            Ok(()) => delay = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(error = %e, "projector interrupted; resuming");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(
    js: &jetstream::Context,
    db: &PgPool,
    batch_size: usize,
    stats: &ProjectorStats,
    control: &ControlPublicKey,
) -> anyhow::Result<()> {
    let stream = tollgate_shared::stream::open_event_stream(js).await.map_err(anyhow::Error::msg)?;
    let consumer = stream
        .get_or_create_consumer(
            names::PROJECTOR_CONSUMER,
            pull::Config {
                durable_name: Some(names::PROJECTOR_CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    // Pull requests of a thousand messages (the client's default is 200): fewer requests and
    // fewer round trips while a backlog drains.
    let mut messages =
        consumer.stream().max_messages_per_batch(PULL_BATCH).heartbeat(Duration::from_secs(15)).messages().await?;
    // Two stages, so the next batch gathers while this one is written: the gatherer hands
    // whole batches over (at most one waiting), the writer commits and then acknowledges.
    let (hand_over, mut batches) = tokio::sync::mpsc::channel::<Vec<jetstream::Message>>(1);
    let gather = async move {
        loop {
            // Wait for one message, then gather what arrives within the gathering window, up
            // to the batch size and while only per-statement events come: a little lag buys
            // far fewer transactions.
            let Some(first) = messages.next().await else { return Ok(()) };
            let mut batch = vec![first?];
            let until = tokio::time::Instant::now() + GATHER;
            while batch.len() < batch_size && batch.last().is_some_and(|m| per_statement(&m.subject)) {
                let next = match messages.next().now_or_never() {
                    Some(next) => next,
                    None => match tokio::time::timeout_at(until, messages.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                };
                match next {
                    Some(message) => batch.push(message?),
                    None => break,
                }
            }
            if let Some(Ok(info)) = batch.last().map(|m| m.info()) {
                stats.lag.store(info.pending, Ordering::Relaxed);
            }
            if hand_over.send(batch).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        // Full batches of per-statement events only (commands and results, whose effects
        // commute: inserts and counter bumps) are written on up to WRITERS connections at once;
        // any other batch waits for those to commit and is written alone, so lifecycle and
        // approval events apply in stream order.
        let mut running = futures_util::stream::FuturesUnordered::new();
        loop {
            // The running writes make progress only while polled: poll them while waiting.
            let batch = tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => continue,
                batch = batches.recv() => batch,
            };
            let Some(batch) = batch else { break };
            // In parallel only when batches come full (a backlog): under live traffic one
            // writer at a time lets the next batch grow while this one is written, which costs
            // the database far less per event than more, smaller transactions.
            if batch.len() >= batch_size && batch.iter().all(|m| per_statement(&m.subject)) {
                while running.len() >= WRITERS {
                    running.next().await;
                }
                running.push(write(db, batch, stats, control));
            } else {
                while running.next().await.is_some() {}
                write(db, batch, stats, control).await;
            }
        }
        while running.next().await.is_some() {}
    };
    // When gathering stops (an error, or the stream ended), what it handed over is still
    // written and acknowledged before the consumer is opened again.
    let (gathered, ()) = tokio::join!(gather, write);
    gathered
}

/// Write one batch (retrying while the database is away, never dropping it), then acknowledge
/// its messages.
/// Whether a message can only hold per-statement events: a proxy's batch, or a lone `command`
/// or `command.result` (what the projector decodes may still differ; a node can at worst
/// reorder the projection of its own events, which it could do by publishing in that order).
fn per_statement(subject: &str) -> bool {
    tollgate_shared::stream::is_batch(subject) || subject.ends_with(".command") || subject.ends_with(".command.result")
}

async fn write(db: &PgPool, batch: Vec<jetstream::Message>, stats: &ProjectorStats, control: &ControlPublicKey) {
    let batch = batch.as_slice();
    let mut delay = Duration::from_millis(100);
    let outcome = loop {
        match apply::write_batch(db, batch, control).await {
            Ok(outcome) => break outcome,
            Err(e) => {
                tracing::warn!(error = %e, events = batch.len(), "projection batch failed; retrying");
                for message in batch {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    stats.projected.fetch_add(outcome.projected, Ordering::Relaxed);
    stats.committed.notify_waiters();
    stats.duplicates.fetch_add(outcome.duplicates, Ordering::Relaxed);
    stats.rejected.fetch_add(outcome.rejected, Ordering::Relaxed);
    for message in batch {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "ack failed; the event will be redelivered and skipped as a duplicate");
        }
    }
}

/// Give commands projected before fingerprints existed their fingerprint, a thousand rows per
/// transaction, so a large history is filled in without holding the views. Rows the projector
/// writes carry theirs already; a restart resumes where this stopped.
pub async fn backfill_fingerprints(db: PgPool) {
    let mut filled = 0u64;
    loop {
        let step = async {
            let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
                "SELECT event_id, protocol, statement FROM commands WHERE fingerprint IS NULL LIMIT 1000",
            )
            .fetch_all(&db)
            .await?;
            let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
            let prints: Vec<String> = rows.iter().map(|(_, p, s)| crate::fingerprint::of(p, s)).collect();
            sqlx::query(
                "UPDATE commands c SET fingerprint = f.print FROM UNNEST($1::uuid[], $2::text[]) AS f(id, print)
                 WHERE c.event_id = f.id AND c.fingerprint IS NULL",
            )
            .bind(&ids)
            .bind(&prints)
            .execute(&db)
            .await?;
            Ok::<usize, sqlx::Error>(rows.len())
        };
        match step.await {
            Ok(0) => break,
            Ok(n) => filled += n as u64,
            Err(e) => {
                tracing::warn!(error = %e, "filling in statement fingerprints failed; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
    if filled > 0 {
        tracing::info!(filled, "statement fingerprints filled in for earlier commands");
    }
}
