//! Overlapped recording (opt-in per resource): a statement goes upstream while its event is
//! being stored, and its response reaches the agent only once the event is stored. The record
//! still shows everything the upstream ran; what the mode gives up is stated and shown here: if
//! the store fails in that window, the statement has run but its result never reaches the agent.

use serde_json::Value;
use tollgate_data_plane::config::Recording;
use tollgate_tests::{Stack, Tap};

/// The stack with its proxy replaced by one recording `demo` overlapped.
async fn overlapped_stack() -> Stack {
    let mut stack = Stack::start().await;
    let mut config = stack.proxy_config("proxy-overlapped");
    let demo = config.resources.iter_mut().find(|r| r.name == "demo").expect("the demo resource");
    demo.recording = Recording::Overlapped;
    stack.proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy");
    stack
}

fn dsn(port: u16, token: &str) -> String {
    format!("host=127.0.0.1 port={port} dbname=demo user=ci-bot password={token} sslmode=disable")
}

async fn connect(port: u16, token: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&dsn(port, token), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_run_and_every_one_is_on_record() {
    let stack = overlapped_stack().await;
    let client = connect(stack.proxy.postgres_addr.port(), &stack.agent_token("bot-overlap")).await;
    client.batch_execute("create table marks (id int primary key, note text)").await.expect("create");
    for id in 0..20 {
        client.execute("insert into marks values ($1, $2)", &[&id, &format!("mark-{id}")]).await.expect("insert");
    }
    // Several statements in one Query, and a pipeline of extended-protocol queries.
    client
        .batch_execute("update marks set note = 'x' where id = 1; delete from marks where id = 2")
        .await
        .expect("batch");
    let (a, b) = tokio::join!(
        client.query_one("select count(*) from marks", &[]),
        client.query_one("select note from marks where id = $1", &[&1i32])
    );
    assert_eq!(a.expect("count").get::<_, i64>(0), 19);
    assert_eq!(b.expect("note").get::<_, String>(0), "x");
    drop(client);
    let session = stack.ended_sessions(1).await.remove(0);
    let id = session["id"].as_str().expect("id");
    let (_, verify) = stack.api(&format!("/api/v1/sessions/{id}/verify")).await;
    assert_eq!(verify["complete"], true, "{verify}");
    let commands = stack
        .stream_messages()
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .filter(|e| e["type"] == "command" && e["session"] == id)
        .count();
    assert!(commands >= 24, "{commands} commands on record");
    // Dropping the stack checks the upstream's statement log against the record.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_whose_record_cannot_be_stored_never_reaches_the_agent() {
    let mut stack = overlapped_stack().await;
    let tap = Tap::start(stack.proxy.postgres_addr).await;
    let client = connect(tap.addr.port(), &stack.agent_token("bot-overlap")).await;
    let before = client.simple_query("select 'before-' || 'outage'").await.expect("recorded statement runs");
    let row = before.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(row.as_deref(), Some("before-outage"));

    stack.nats.kill();
    let err = client.simple_query("select 'withheld-' || 'answer'").await.expect_err("refused once the store fails");
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "58000");
    assert!(db.message().contains("withheld"), "{}", db.message());

    // The stated window: the statement ran upstream (so there was an answer to withhold)...
    let log = stack.pg.database_log("demo");
    assert!(log.contains("select 'withheld-' || 'answer'"), "the statement reached the upstream");
    // ...and its answer never reached the agent, though the earlier one did.
    let received = tap.received();
    let seen = |needle: &[u8]| received.windows(needle.len()).any(|w| w == needle);
    assert!(seen(b"before-outage"), "the tap saw the first answer");
    assert!(!seen(b"withheld-answer"), "the agent received a result whose record was not stored");
    // That statement is, by design of this mode, not on record: the statement-log check would
    // rightly report it, so it is skipped for this test.
    stack.skip_log_check_at_drop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_too_large_to_record_is_refused_before_it_runs_and_harms_no_other_session() {
    let stack = overlapped_stack().await;
    let port = stack.proxy.postgres_addr.port();
    let bystander = connect(port, &stack.agent_token("bot-bystander")).await;
    bystander.simple_query("select 'bystander-' || 'before'").await.expect("runs");
    let agent = connect(port, &stack.agent_token("bot-huge")).await;
    agent.simple_query("select 'huge-' || 'before'").await.expect("runs");

    // Over the largest event a stream message may hold: its event could never be stored.
    let padding = "x".repeat(tollgate_shared::stream::EVENT_MAX_BYTES + 1);
    let huge = format!("select 'huge-' || 'marker' /* {padding} */");
    let err = agent.simple_query(&huge).await.expect_err("refused");
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "58000");
    assert!(db.message().contains("bytes"), "{}", db.message());

    // The other session goes on, and its statements are recorded.
    bystander.simple_query("select 'bystander-' || 'after'").await.expect("the other session is unharmed");
    let log = stack.pg.database_log("demo");
    assert!(log.contains("'bystander-' || 'after'") && log.contains("'huge-' || 'before'"), "the log is the right one");
    assert!(!log.contains("'huge-' || 'marker'"), "the statement that could not be recorded ran upstream");
    // The refused session's end is on record, with why.
    let sessions = stack.ended_sessions(1).await;
    assert!(sessions.iter().any(|s| s["end_reason"] == "recording_failed" && s["commands"] == 1), "{sessions:?}");
}
