//! Strict recording: when JetStream cannot take a command's event, the command does not run.

use tollgate_tests::{eventually, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_refused_while_jetstream_is_down_and_sessions_resume_after() {
    let mut stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-outage")).await.expect("connect");
    client.simple_query("select 'before-outage'").await.expect("recorded statement runs");

    stack.nats.kill();
    let err = client.simple_query("select 'marker-during-outage'").await.expect_err("refused while JetStream is down");
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "58000");
    assert!(db.message().contains("could not be recorded"), "{}", db.message());
    assert!(
        client.is_closed() || client.simple_query("select 1").await.is_err(),
        "the session is closed after a refusal"
    );

    // New sessions are refused too while the stream is away.
    let Err(refused) = stack.agent_client(&stack.agent_token("bot-outage")).await else {
        panic!("a new session was opened without recording");
    };
    assert_eq!(refused.as_db_error().map(|e| e.code().code().to_owned()), Some("58000".to_owned()));

    let log = stack.pg.database_log("demo");
    assert!(log.contains("before-outage"));
    assert!(!log.contains("marker-during-outage"), "a refused statement ran upstream");

    stack.nats.restart().await;
    let token = stack.agent_token("bot-outage");
    let after = eventually(60, "a new session after JetStream returns", || async {
        let client = stack.agent_client(&token).await.ok()?;
        client.simple_query("select 'after-recovery'").await.ok().map(|_| ())
    })
    .await;
    let () = after;
    assert!(stack.pg.server_log().contains("after-recovery"));
    // The projector resumed too: the recovered session shows up.
    eventually(60, "the recovered session to be projected", || async {
        let (_, page) = stack.api("/api/v1/sessions?resource=demo").await;
        let items = page["items"].as_array()?.clone();
        items.iter().any(|s| s["commands"].as_i64() == Some(1) && s["end_reason"] == "client_closed").then_some(())
    })
    .await;
}
