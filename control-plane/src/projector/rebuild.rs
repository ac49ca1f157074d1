//! `tollgate-control rebuild`: every projection recreated from the event stream into an empty
//! schema of the same database, by the projector's own writing code, while the live projector
//! goes on. The stream is the record; the views are only ever what it says.

use super::apply;
use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use std::time::Duration;
use tollgate_shared::control::ControlPublicKey;

/// Messages written per transaction.
const BATCH: usize = 500;

/// What a rebuild wrote.
#[derive(Debug, serde::Serialize)]
pub struct Rebuilt {
    pub schema: String,
    /// The stream's first and last sequence when the rebuild began: what came before the
    /// first (removed by the stream's limits) cannot be rebuilt.
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Stream messages read.
    pub messages: u64,
    pub projected: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// A schema name the rebuild may create: lower-case letters, digits and `_`, not `public`.
fn checked(schema: &str) -> anyhow::Result<&str> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema != "public"
        && !schema.starts_with("pg_");
    anyhow::ensure!(valid, "schema {schema:?}: use lower-case letters, digits and _ (not public, not pg_*)");
    Ok(schema)
}

/// Rebuild every projection into `schema`, which must not exist yet.
pub async fn rebuild(config: &crate::config::ControlConfig, schema: &str) -> anyhow::Result<Rebuilt> {
    let schema = checked(schema)?;
    let control = crate::load_signing_key(&config.signing_key_file)?;
    let control = ControlPublicKey::parse(&control.public_hex()).map_err(anyhow::Error::msg)?;
    let options: sqlx::postgres::PgConnectOptions =
        config.database_url.parse().context("the projections database URL")?;
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .context("connecting to the projections database")?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.with_context(|| {
        format!("creating schema {schema} (a rebuild starts from an empty schema that does not exist yet)")
    })?;
    // Every connection of the rebuild sees only the new schema: the migrations create their
    // tables there, and the projector's unqualified statements write there.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .context("connecting to the projections database")?;
    sqlx::migrate!("../migrations").run(&db).await.context("creating the projections in the new schema")?;

    let nats = crate::connect_nats(&config.nats).await?;
    let js = jetstream::new(nats);
    let mut stream = tollgate_shared::stream::open_event_stream(&js).await.map_err(anyhow::Error::msg)?;
    let state = stream.info().await.context("reading the event stream's state")?.state.clone();
    let last = state.last_sequence;
    let mut rebuilt = Rebuilt {
        schema: schema.to_owned(),
        first_sequence: state.first_sequence,
        last_sequence: last,
        messages: 0,
        projected: 0,
        duplicates: 0,
        rejected: 0,
    };
    if state.messages == 0 {
        return Ok(rebuilt);
    }
    // A consumer of its own, unacknowledged and forgotten a minute after the rebuild stops: the
    // live projector's position is not touched.
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("reading the event stream")?;
    let mut messages = consumer.stream().max_messages_per_batch(BATCH).messages().await?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut done = false;
    while !done {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .context("the event stream stopped delivering before its last message")?;
        let message = match next {
            Some(message) => message.map_err(|e| anyhow::anyhow!("reading the event stream: {e}"))?,
            None => anyhow::bail!("the event stream ended before its last message"),
        };
        let info = message.info().map_err(|e| anyhow::anyhow!("a stream message without its metadata: {e}"))?;
        let sequence = info.stream_sequence;
        // Past the last message as of the start, or nothing after this one (the last may have
        // been removed meanwhile).
        done = sequence >= last || info.pending == 0;
        if sequence <= last {
            batch.push(message);
            rebuilt.messages += 1;
        }
        if batch.len() >= BATCH || (done && !batch.is_empty()) {
            let outcome = apply::write_batch(&db, &batch, &control).await.context("writing the rebuilt projections")?;
            rebuilt.projected += outcome.projected;
            rebuilt.duplicates += outcome.duplicates;
            rebuilt.rejected += outcome.rejected;
            batch.clear();
        }
    }
    Ok(rebuilt)
}
