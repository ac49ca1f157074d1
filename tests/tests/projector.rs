//! The projector is idempotent, keeps what it cannot read, and resumes where it stopped.

use tollgate_control_plane::Control;
use tollgate_tests::{eventually, Stack};

async fn metric(stack: &Stack, name: &str) -> u64 {
    stack.metric(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_events_are_not_counted_twice_and_garbage_is_kept_aside() {
    let stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-replay")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    client.simple_query("select 2").await.unwrap();
    drop(client);
    let session = stack.ended_sessions(1).await.remove(0);
    let id = session["id"].as_str().unwrap().to_owned();
    assert_eq!(session["commands"], 2);
    let events = session["events"].as_i64().unwrap();

    // Publish every event again as a new stream message (as a replay or a spool re-send would).
    let raw = stack.stream_messages().await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    for message in &raw {
        let value: serde_json::Value = serde_json::from_slice(message).unwrap();
        let subject = format!("tollgate.events.{}", value["type"].as_str().unwrap());
        js.publish(subject, message.clone().into()).await.unwrap().await.unwrap();
    }
    js.publish("tollgate.events.command", bytes::Bytes::from_static(b"{\"not\": \"an event\"}"))
        .await
        .unwrap()
        .await
        .unwrap();
    // The control plane's own events (the policy change) carried its signature in a header the
    // replay dropped: unsigned, they are kept aside rather than projected.
    let unsigned = raw
        .iter()
        .filter(|m| serde_json::from_slice::<serde_json::Value>(m).is_ok_and(|v| v["type"] == "policy.changed"))
        .count();
    assert!(unsigned >= 1);
    let duplicates = "tollgate_projector_events_total{result=\"duplicate\"}";
    eventually(30, "the replayed events to be seen as duplicates", || async {
        (metric(&stack, duplicates).await >= (raw.len() - unsigned) as u64).then_some(())
    })
    .await;
    eventually(30, "the unsigned control event to be kept aside", || async {
        let kept = stack.pg.admin_sql(
            "tollgate",
            "select count(*) from rejected_events where subject = 'tollgate.events.policy.changed'",
        );
        (kept.trim() == unsigned.to_string()).then_some(())
    })
    .await;
    let (_, after) = stack.api(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(after["commands"], 2);
    assert_eq!(after["events"].as_i64(), Some(events));
    let (_, commands) = stack.api(&format!("/api/v1/sessions/{id}/commands")).await;
    assert_eq!(commands.as_array().unwrap().len(), 2);
    let (_, verify) = stack.api(&format!("/api/v1/sessions/{id}/verify")).await;
    assert_eq!(verify["complete"], true, "{verify}");

    eventually(30, "the unreadable message to be kept", || async {
        let kept = stack
            .pg
            .admin_sql("tollgate", "select count(*) from rejected_events where subject = 'tollgate.events.command'");
        (kept.trim() == "1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_recorded_while_the_control_plane_is_down_are_projected_when_it_returns() {
    let mut stack = Stack::start().await;
    let config = stack.control_config();
    // Take the control plane down (a placeholder replica stays unreachable on another port).
    let mut down = config.clone();
    down.nats.url = "nats://127.0.0.1:9".into();
    stack.control = Control::start(down).await.unwrap();

    let client =
        stack.agent_client(&stack.agent_token("bot-offline")).await.expect("the proxy works without the control plane");
    client.simple_query("select 'recorded while the control plane was away'").await.unwrap();
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    stack.control = Control::start(config).await.unwrap();
    let sessions = stack.ended_sessions(1).await;
    assert_eq!(sessions[0]["agent_subject"], "bot-offline");
    assert_eq!(sessions[0]["commands"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_read_line_by_line_and_never_carries_a_control_event() {
    use tollgate_shared::event::{kind, ApprovalDecided, Chain, Channel, Verdict};
    use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
    let stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-batch")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    stack.ended_sessions(1).await;
    let events = stack.stream_messages().await;
    let command = events
        .iter()
        .find(|m| serde_json::from_slice::<serde_json::Value>(m).is_ok_and(|v| v["type"] == kind::COMMAND))
        .expect("the command on record")
        .clone();

    // A control-plane kind (a decision) inside a proxy's batch, beside a replayed command.
    let mallory = AgentIdentity {
        issuer: "https://evil.example".into(),
        subject: "mallory".into(),
        name: "mallory".into(),
        groups: vec![],
        attributes: Default::default(),
    };
    let decision = ApprovalDecided {
        approval_id: uuid::Uuid::now_v7(),
        verdict: Verdict::Approve,
        channel: Channel::Rest,
        reason: None,
        grant_minutes: None,
    };
    let resource = ResourceRef { name: "demo".into(), kind: ResourceKind::Postgres };
    let mut chain = Chain::new(uuid::Uuid::now_v7(), "proxy-x".into(), mallory, resource);
    let forged = chain.seal(kind::APPROVAL_DECIDED, &decision).unwrap();
    let mut payload = forged.bytes.to_vec();
    payload.push(b'\n');
    payload.extend_from_slice(&command);
    let duplicates = "tollgate_projector_events_total{result=\"duplicate\"}";
    let before = metric(&stack, duplicates).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    js.publish("tollgate.events.proxy-x.batch", payload.into()).await.unwrap().await.unwrap();

    // The replayed line was read (and counted once, as the duplicate it is)...
    eventually(30, "the batch's command line to be read", || async {
        (metric(&stack, duplicates).await > before).then_some(())
    })
    .await;
    // ...and the decision was kept aside, not projected.
    let kept = stack.pg.admin_sql(
        "tollgate",
        "select count(*) from rejected_events where subject = 'tollgate.events.proxy-x.batch' and error like '%signature%'",
    );
    assert_eq!(kept.trim(), "1");
    let decided = stack.pg.admin_sql("tollgate", &format!("select count(*) from events where id = '{}'", forged.id));
    assert_eq!(decided.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_are_counted_exactly_when_batches_are_written_in_parallel() {
    const SESSIONS: usize = 8;
    const STATEMENTS: usize = 60;
    let mut stack = Stack::start().await;
    // A backlog (recorded while the control plane is down) drains in full batches, which are
    // written on several connections at once; small batches make many of them.
    let mut config = stack.control_config();
    config.projector.batch_size = 4;
    let mut down = config.clone();
    down.nats.url = "nats://127.0.0.1:9".into();
    stack.control = Control::start(down).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..SESSIONS {
        let client = stack.agent_client(&stack.agent_token(&format!("bot-parallel-{n}"))).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..STATEMENTS {
                client.simple_query(&format!("select {n}, {i}")).await.expect("runs");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stack.control = Control::start(config).await.unwrap();
    let sessions = stack.ended_sessions(SESSIONS).await;
    // Every event each session has on the stream, counted there...
    let mut on_stream: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for event in
        stack.stream_messages().await.iter().filter_map(|m| serde_json::from_slice::<serde_json::Value>(m).ok())
    {
        if let Some(session) = event["session"].as_str() {
            *on_stream.entry(session.to_owned()).or_default() += 1;
        }
    }
    // ...equals what the views counted, however the batches were split and interleaved.
    for session in
        sessions.iter().filter(|s| s["agent"]["name"].as_str().is_some_and(|n| n.starts_with("bot-parallel-")))
    {
        let id = session["id"].as_str().unwrap();
        assert_eq!(session["commands"].as_i64(), Some(STATEMENTS as i64), "{session}");
        assert_eq!(session["events"].as_i64(), on_stream.get(id).copied(), "{session}");
    }
    let counted = sessions.iter().filter(|s| s["commands"].as_i64() == Some(STATEMENTS as i64)).count();
    assert_eq!(counted, SESSIONS);
}
