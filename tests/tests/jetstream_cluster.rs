//! A three-server JetStream cluster: the stream is replicated three times, and losing the
//! stream's leader under load loses nothing. Statements caught in the fail-over are refused
//! (strict recording), every statement that ran upstream is on record exactly once, and new
//! sessions work on the two servers left.

use serde_json::Value;
use std::collections::HashMap;
use tollgate_shared::event::kind;
use tollgate_tests::{eventually, Stack};

/// Agents writing at once while the leader dies.
const WRITERS: usize = 3;
/// Rows each writer inserts.
const ROWS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_stream_leader_under_load_loses_no_record() {
    let stack = Stack::start_clustered().await;
    stack.pg.admin_sql("demo", "CREATE TABLE cluster_rows (marker text PRIMARY KEY)");
    stack.pg.admin_sql("demo", "GRANT ALL ON cluster_rows TO app");

    // Positive control: the stream really is replicated on three servers, with a leader.
    let harness = async_nats::jetstream::new(stack.nats.client().await);
    let mut stream = harness.get_stream(tollgate_shared::names::STREAM).await.expect("event stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3, "the control plane asked for three replicas");
    let cluster = info.cluster.clone().expect("cluster information");
    let leader = cluster.leader.clone().expect("the stream has a leader");
    assert_eq!(cluster.replicas.len(), 2, "two followers besides the leader: {cluster:?}");

    // Writers insert rows with a marker unique to each attempt, reconnecting after a refusal.
    let (halfway_tx, mut halfway) = tokio::sync::mpsc::channel::<()>(WRITERS);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let dsn = stack.agent_dsn(&stack.agent_token(&format!("cluster-bot-{writer}")));
        let halfway_tx = halfway_tx.clone();
        writers.push(tokio::spawn(async move { write_rows(writer, &dsn, halfway_tx).await }));
    }
    drop(halfway_tx);
    for _ in 0..WRITERS {
        halfway.recv().await.expect("a writer reached halfway");
    }

    // Kill the leader mid-load (SIGKILL: no goodbye).
    let mut stack = stack;
    let killed = kill_server(&mut stack, &leader);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.expect("writer task"));
    }
    let refused: usize = outcomes.iter().map(|o| o.refused).sum();
    let inserted: usize = outcomes.iter().map(|o| o.inserted).sum();
    assert_eq!(inserted, WRITERS * ROWS, "every writer finished its rows after the fail-over");

    // A new leader took over on the two servers left.
    let survivor =
        stack.peers.iter().chain(std::iter::once(&stack.nats)).find(|s| s.port != killed).expect("a survivor");
    let js = async_nats::jetstream::new(survivor.client().await);
    let new_leader = eventually(60, "a new stream leader", || async {
        let mut stream = js.get_stream(tollgate_shared::names::STREAM).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.clone()?.leader.filter(|l| *l != leader)
    })
    .await;
    assert_ne!(new_leader, leader);

    // New sessions work with one server down.
    let client = stack.agent_client(&stack.agent_token("cluster-after")).await.expect("a new session after fail-over");
    client.simple_query("INSERT INTO cluster_rows VALUES ('after-failover')").await.expect("recorded and run");
    drop(client);

    // Every row in the table has exactly one recorded command that inserted it; refused
    // attempts (if any) ran nothing.
    let rows = stack.pg.admin_sql("demo", "SELECT marker FROM cluster_rows ORDER BY marker");
    let rows: Vec<&str> = rows.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), WRITERS * ROWS + 1, "the table holds every inserted row");
    let events = read_events(&js).await;
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for event in events.iter().filter(|e| e["type"] == kind::COMMAND) {
        let statement = event["payload"]["statement"].as_str().unwrap_or_default();
        if let Some(marker) = statement.split('\'').nth(1).filter(|_| statement.contains("cluster_rows")) {
            *recorded.entry(marker.to_owned()).or_default() += 1;
        }
    }
    for row in &rows {
        assert_eq!(recorded.get(*row), Some(&1), "row {row} is recorded exactly once");
    }
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event was stored twice across the fail-over");
    eprintln!("{inserted} rows inserted, {refused} statements refused during the fail-over, {} events", events.len());

    // The projector kept up: the session after the fail-over shows up with its command.
    eventually(60, "the post-fail-over session to be projected", || async {
        let (_, page) = stack.api("/api/v1/sessions?resource=demo&limit=200").await;
        let items = page["items"].as_array()?.clone();
        items
            .iter()
            .any(|s| {
                s["agent_subject"] == "cluster-after" && s["commands"].as_i64() == Some(1) && !s["ended_at"].is_null()
            })
            .then_some(())
    })
    .await;
    // Dropping the stack checks the upstream's statement log against the record.
}

struct Outcome {
    inserted: usize,
    refused: usize,
}

/// Insert `ROWS` rows, each attempt with a marker of its own; a refused statement ends the
/// session (strict recording), so reconnect and try the next attempt.
async fn write_rows(writer: usize, dsn: &str, halfway: tokio::sync::mpsc::Sender<()>) -> Outcome {
    let mut outcome = Outcome { inserted: 0, refused: 0 };
    let mut client: Option<tokio_postgres::Client> = None;
    let mut attempt = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while outcome.inserted < ROWS {
        assert!(tokio::time::Instant::now() < deadline, "writer {writer} could not finish: {} rows", outcome.inserted);
        attempt += 1;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    client = Some(c);
                }
                Err(_) => {
                    outcome.refused += 1;
                    // Sessions are refused until the stream has a leader again.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let sql = format!("INSERT INTO cluster_rows VALUES ('w{writer}-r{}-a{attempt}')", outcome.inserted);
        match c.simple_query(&sql).await {
            Ok(_) => {
                outcome.inserted += 1;
                if outcome.inserted == ROWS / 2 {
                    let _ = halfway.send(()).await;
                }
            }
            Err(_) => {
                outcome.refused += 1;
                client = None;
            }
        }
    }
    outcome
}

/// Kill the server named `name` (`nats-0` is `stack.nats`, the others are peers); its port.
fn kill_server(stack: &mut Stack, name: &str) -> u16 {
    let index: usize = name.trim_start_matches("nats-").parse().expect("a cluster server name");
    let server = if index == 0 { &mut stack.nats } else { &mut stack.peers[index - 1] };
    server.kill();
    server.port
}

/// Every event on the stream, read from a surviving server.
async fn read_events(js: &async_nats::jetstream::Context) -> Vec<Value> {
    let mut stream = js.get_stream(tollgate_shared::names::STREAM).await.expect("event stream");
    let last = stream.info().await.expect("stream info").state.last_sequence;
    assert!(last > 0, "the stream holds events");
    let mut out = Vec::new();
    for seq in 1..=last {
        // Right after a fail-over the new leader may answer "temporarily unavailable" (503) for
        // a moment: retry that, a bounded number of times, then fail the test.
        let mut attempts = 0;
        let message = loop {
            match stream.get_raw_message(seq).await {
                Ok(message) => break Some(message),
                Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => break None,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    tracing::debug!(seq, error = %e, "reading the stream again");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("event {seq}: {e}"),
            }
        };
        for raw in message.iter().flat_map(|m| tollgate_shared::stream::events_in(&m.subject, &m.payload)) {
            out.push(serde_json::from_slice(raw).expect("an event"));
        }
    }
    out
}
