//! People end live sessions: an approver asks the control plane, which publishes a signed
//! `session.end_requested`; the proxy holding the session tells the agent (FATAL, naming who
//! and why), closes it and records its end with reason `ended_by_person`. A reviewer may not; a
//! session that ended cannot be ended again; a request on the bus that the control plane did
//! not sign ends nothing.

use serde_json::{json, Value};
use tollgate_shared::event::{kind, Chain, Channel, SessionEndRequested};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_tests::{eventually, Stack};

/// A live agent connection through the proxy, and how its connection ended (the agent's view).
async fn connect(stack: &Stack, agent: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<String>) {
    let (client, connection) =
        tokio_postgres::connect(&stack.agent_dsn(&stack.agent_token(agent)), tokio_postgres::NoTls)
            .await
            .expect("the agent connects");
    let ended = tokio::spawn(async move {
        match connection.await {
            Ok(()) => "closed without an error".to_owned(),
            Err(e) => e.as_db_error().map(|db| db.message().to_owned()).unwrap_or_else(|| e.to_string()),
        }
    });
    (client, ended)
}

/// The id of `agent`'s live session, once projected.
async fn live_session(stack: &Stack, agent: &str) -> String {
    eventually(15, "the live session in the views", || async {
        let (_, page) = stack.api(&format!("/api/v1/sessions?live=true&agent_name={agent}")).await;
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

async fn end(stack: &Stack, id: &str, token: &str, reason: &str) -> (u16, Value) {
    stack.api_send("POST", &format!("/api/v1/sessions/{id}/end"), Some(token), Some(&json!({ "reason": reason }))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_ends_a_live_session_and_the_agent_is_told_who_and_why() {
    let stack = Stack::start().await;
    let (client, ended) = connect(&stack, "loop-bot").await;
    let rows = client.simple_query("SELECT 'before' AS step").await.expect("a statement runs");
    assert!(!rows.is_empty());
    let id = live_session(&stack, "loop-bot").await;

    // A reviewer may look but not end it.
    let (status, body) = end(&stack, &id, &stack.reviewer_token(), "no").await;
    assert_eq!(status, 403, "{body}");
    // A malformed id and an unknown session are refused.
    let (status, _) = end(&stack, "not-a-session", &stack.person_token("ada", &["approvers"]), "x").await;
    assert_eq!(status, 400);
    let (status, _) =
        end(&stack, &uuid::Uuid::now_v7().to_string(), &stack.person_token("ada", &["approvers"]), "x").await;
    assert_eq!(status, 404);

    let approver = stack.person_token("ada", &["approvers"]);
    let (status, accepted) = end(&stack, &id, &approver, "rotating the app credentials\u{7}").await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["session_id"], id.as_str());

    // The agent is told, then its connection is closed.
    let told = tokio::time::timeout(std::time::Duration::from_secs(10), ended)
        .await
        .expect("the connection ends")
        .expect("joined");
    assert_eq!(told, "tollgate: this session was ended by ada: rotating the app credentials", "{told}");
    assert!(client.simple_query("SELECT 'after'").await.is_err(), "nothing runs after the end");

    // Its end is recorded: by whom, and signed (the record verifies).
    let session = eventually(15, "the session's end in the views", || async {
        let (_, session) = stack.api(&format!("/api/v1/sessions/{id}")).await;
        session["ended_at"].is_string().then_some(session)
    })
    .await;
    assert_eq!(session["end_reason"], "ended_by_person", "{session}");
    assert_eq!(session["end_detail"], "ended by ada: rotating the app credentials", "{session}");
    let (_, verified) = stack.api(&format!("/api/v1/sessions/{id}/verify")).await;
    assert_eq!(verified["trusted"], true, "{verified}");
    // The request itself is on record, signed by the control plane (not set aside).
    let (_, events) = stack.api(&format!("/api/v1/sessions/{id}/events")).await;
    assert!(events.to_string().contains("ended_by_person"), "{events}");
    let requests: Vec<Value> = stack
        .stream_messages()
        .await
        .iter()
        .filter_map(|raw| serde_json::from_slice::<Value>(raw).ok())
        .filter(|e| e["type"] == kind::SESSION_END_REQUESTED)
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["agent"]["name"], "ada");
    assert_eq!(requests[0]["payload"]["channel"], "rest");
    assert_eq!(requests[0]["payload"]["reason"], "rotating the app credentials", "control characters dropped");

    // An ended session cannot be ended again.
    let (status, body) = end(&stack, &id, &approver, "again").await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_request_on_the_bus_ends_nothing() {
    let stack = Stack::start().await;
    let (client, ended) = connect(&stack, "steady-bot").await;
    client.simple_query("SELECT 1").await.expect("a statement runs");
    let id: uuid::Uuid = live_session(&stack, "steady-bot").await.parse().expect("a session id");

    // Someone who reaches NATS publishes a request to end it, without the control plane's
    // signature.
    let mallory = AgentIdentity {
        issuer: "https://mallory.example".into(),
        subject: "mallory".into(),
        name: "mallory".into(),
        groups: vec!["approvers".into()],
        attributes: Default::default(),
    };
    let resource = ResourceRef { name: "demo".into(), kind: ResourceKind::Postgres };
    let mut chain = Chain::new(uuid::Uuid::now_v7(), tollgate_shared::names::CONTROL_NODE.into(), mallory, resource);
    let forged = SessionEndRequested { session_id: id, channel: Channel::Rest, reason: Some("forged".into()) };
    let event = chain.seal(kind::SESSION_END_REQUESTED, &forged).expect("sealed");
    let nats = stack.nats.client().await;
    let before = stack.proxy.refused_control_messages();
    nats.publish(tollgate_shared::names::session_ends_subject(), event.bytes.clone()).await.expect("published");
    nats.flush().await.expect("flushed");
    eventually(10, "the proxy to refuse the forged request", || async {
        (stack.proxy.refused_control_messages() > before).then_some(())
    })
    .await;

    // The session goes on: a statement runs after the refusal, and the connection is open.
    let rows = client.simple_query("SELECT 'still here'").await.expect("the session goes on");
    assert!(!rows.is_empty());
    assert!(!ended.is_finished(), "the connection is still open");
    drop(client);
    let how = ended.await.expect("joined");
    assert_eq!(how, "closed without an error");
}
