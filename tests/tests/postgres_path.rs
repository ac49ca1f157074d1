//! The PostgreSQL data path end to end: real psql and tokio-postgres through the proxy, events on
//! a real JetStream, projections in a real Postgres, answers from the API.

use serde_json::Value;
use tollgate_tests::{eventually, Stack};

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn session_commands(stack: &Stack, session: &str) -> Vec<Value> {
    let (status, body) = stack.api(&format!("/api/v1/sessions/{session}/commands")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_session_is_recorded_chained_and_projected() {
    let stack = Stack::start().await;
    let token = stack.agent_token("repo:acme/orders:ref:refs/heads/main");
    let out = stack.psql(
        &token,
        None,
        &[
            "-At",
            "-c",
            "create table items (id int primary key, name text)",
            "-c",
            "insert into items values (1, 'widget'), (2, 'gadget')",
            "-c",
            "select name from items order by id",
        ],
        None,
    );
    assert!(stdout(&out).ends_with("widget\ngadget\n"), "{}", stdout(&out));

    let sessions = stack.ended_sessions(1).await;
    let session = &sessions[0];
    assert_eq!(session["resource"], "demo");
    assert_eq!(session["agent_subject"], "repo:acme/orders:ref:refs/heads/main");
    assert_eq!(session["end_reason"], "client_closed");
    assert_eq!(session["client_user"], "ci-bot");
    let id = session["id"].as_str().expect("session id");

    // The commands view, with results matched to their statements.
    let commands = eventually(20, "results of all three statements", || async {
        let commands = session_commands(&stack, id).await;
        (commands.len() == 3 && commands.iter().all(|c| !c["outcome"].is_null())).then_some(commands)
    })
    .await;
    assert_eq!(commands[0]["statement"], "create table items (id int primary key, name text)");
    assert_eq!(commands[1]["tags"], serde_json::json!(["INSERT 0 2"]));
    assert_eq!(commands[1]["rows"], 2);
    assert_eq!(commands[2]["tags"], serde_json::json!(["SELECT 2"]));
    assert!(commands.iter().all(|c| c["outcome"] == "ok" && c["protocol"] == "simple" && c["decision"] == "allow"));
    // Each command carries what the PostgreSQL parser made of it.
    let classes: Vec<&serde_json::Value> = commands.iter().map(|c| &c["classification"]["classes"]).collect();
    assert_eq!(
        classes,
        [&serde_json::json!(["create"]), &serde_json::json!(["insert"]), &serde_json::json!(["select"])]
    );
    assert_eq!(commands[1]["classification"]["relations"], serde_json::json!(["items"]));
    assert_eq!(commands[1]["classification"]["writes"], true);
    assert_eq!(commands[2]["classification"]["writes"], false);

    // The events: in order, chained, signed; the API's verification agrees with our own.
    let (_, events) = stack.api(&format!("/api/v1/sessions/{id}/events")).await;
    let events = events.as_array().expect("events").clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds.first(), Some(&"session.started"));
    assert_eq!(kinds.last(), Some(&"session.ended"));
    assert_eq!(kinds.iter().filter(|k| **k == "command").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "command.result").count(), 3);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64);
        let prev = if i == 0 { "" } else { events[i - 1]["hash"].as_str().unwrap_or("-") };
        assert_eq!(event["event"]["prev"], prev, "event {i} links to its predecessor");
        assert_eq!(event["event"]["agent"]["attributes"]["repository"], "acme/orders");
    }
    let (_, verify) = stack.api(&format!("/api/v1/sessions/{id}/verify")).await;
    assert_eq!(verify["linked"], true, "{verify}");
    assert_eq!(verify["complete"], true, "{verify}");
    assert_eq!(verify["node_key"], stack.proxy.node_key.as_str());
    assert_eq!((verify["node_trust"].as_str(), verify["trusted"].as_bool()), (Some("trusted"), Some(true)), "{verify}");

    // The agent appears with its claims.
    let (_, agents) = stack.api("/api/v1/agents").await;
    let agent = &agents.as_array().expect("agents")[0];
    assert_eq!(agent["subject"], "repo:acme/orders:ref:refs/heads/main");
    assert_eq!(agent["attributes"]["workflow"], "deploy");
    assert_eq!(agent["sessions"], 1);

    // The upstream ran exactly what the agent sent, as the proxy's own user.
    let log = stack.pg.server_log();
    assert!(log.contains("insert into items values (1, 'widget'), (2, 'gadget')"));
    assert!(log.contains("connection authorized: user=app database=demo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameters_transactions_and_errors() {
    let stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-extended")).await.expect("connect through the proxy");
    client.batch_execute("create table accounts (id int primary key, balance int)").await.expect("create");

    let insert = client.prepare("insert into accounts values ($1, $2)").await.expect("prepare");
    client.execute(&insert, &[&1i32, &100i32]).await.expect("insert 1");
    client.execute(&insert, &[&2i32, &50i32]).await.expect("insert 2");
    let row = client.query_one("select balance from accounts where id = $1", &[&1i32]).await.expect("select");
    assert_eq!(row.get::<_, i32>(0), 100);

    // A rolled-back transaction leaves nothing behind.
    client.batch_execute("begin; update accounts set balance = 0; rollback").await.expect("transaction");
    let total: i64 = client.query_one("select sum(balance) from accounts", &[]).await.expect("sum").get(0);
    assert_eq!(total, 150);

    let err = client
        .query_one("select 1 / (select count(*) from accounts where id = 99)::int", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    // The session is still usable after an error.
    assert_eq!(client.query_one("select 7", &[]).await.expect("after error").get::<_, i32>(0), 7);
    drop(client);

    let sessions = stack.ended_sessions(1).await;
    let id = sessions[0]["id"].as_str().expect("id").to_owned();
    let commands = eventually(20, "all results", || async {
        let c = session_commands(&stack, &id).await;
        (c.iter().all(|c| !c["outcome"].is_null()) && c.len() >= 8).then_some(c)
    })
    .await;
    let inserts: Vec<&Value> =
        commands.iter().filter(|c| c["statement"] == "insert into accounts values ($1, $2)").collect();
    assert_eq!(inserts.len(), 2);
    assert_eq!(inserts[0]["protocol"], "extended");
    assert_eq!(
        inserts[0]["params"],
        serde_json::json!(["\\x00000001", "\\x00000064"]),
        "binary int4 parameters are recorded as hex"
    );
    assert_eq!(inserts[1]["rows"], 1);
    let failed = commands.iter().find(|c| c["outcome"] == "error").expect("the failed statement");
    assert_eq!(failed["error_code"], "22012");
    assert_eq!(failed["error_message"], "division by zero");
    let rollback = commands
        .iter()
        .find(|c| c["statement"] == "begin; update accounts set balance = 0; rollback")
        .expect("transaction");
    assert_eq!(rollback["tags"], serde_json::json!(["BEGIN", "UPDATE 2", "ROLLBACK"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_with_psql_and_tokio_postgres() {
    use futures_util::SinkExt;
    let stack = Stack::start().await;
    let token = stack.agent_token("bot-copy");
    stdout(&stack.psql(&token, None, &["-c", "create table t (id int, label text)"], None));
    let out = stack.psql(&token, None, &["-c", "copy t from stdin"], Some("1\tone\n2\ttwo\n3\tthree\n"));
    assert_eq!(stdout(&out).trim(), "COPY 3");

    // Extended-protocol COPY (tokio-postgres): the Sync sent before the data is ignored upstream.
    let client = stack.agent_client(&token).await.expect("connect");
    let sink = client.copy_in("copy t from stdin").await.expect("copy in");
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"4\tfour\n5\tfive\n")).await.expect("copy data");
    assert_eq!(sink.finish().await.expect("copy done"), 2);
    assert_eq!(client.query_one("select count(*) from t", &[]).await.expect("count").get::<_, i64>(0), 5);
    drop(client);

    let out = stack.psql(&token, None, &["-c", "copy (select * from t order by id) to stdout"], None);
    assert_eq!(stdout(&out), "1\tone\n2\ttwo\n3\tthree\n4\tfour\n5\tfive\n");

    let sessions = stack.ended_sessions(4).await;
    let mut copies = Vec::new();
    for session in &sessions {
        for command in session_commands(&stack, session["id"].as_str().unwrap_or_default()).await {
            if command["statement"].as_str().unwrap_or("").starts_with("copy") {
                copies.push(command);
            }
        }
    }
    let tags: Vec<String> = copies.iter().map(|c| c["tags"].to_string()).collect();
    assert!(tags.contains(&r#"["COPY 3"]"#.to_owned()), "{tags:?}");
    assert!(tags.contains(&r#"["COPY 2"]"#.to_owned()), "{tags:?}");
    assert!(tags.contains(&r#"["COPY 5"]"#.to_owned()), "{tags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_upstream_query() {
    let stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-cancel")).await.expect("connect");
    let cancel = client.cancel_token();
    let started = std::time::Instant::now();
    let long = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    // Cancel until it takes: a cancel that arrives before the query runs is a no-op.
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await.expect("cancel sent through the proxy");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if long.is_finished() {
            break;
        }
    }
    let err = long.await.expect("join").expect_err("the query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    let sessions = stack.ended_sessions(1).await;
    let commands = session_commands(&stack, sessions[0]["id"].as_str().unwrap_or_default()).await;
    assert_eq!(commands[0]["error_code"], "57014");
}
