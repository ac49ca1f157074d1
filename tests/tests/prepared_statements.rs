//! Prepared statements of both kinds are judged and recorded as the text the server runs:
//! protocol-level ones (Parse/Bind/Execute) tracked by what the server confirmed, SQL-level
//! ones (PREPARE/EXECUTE/DEALLOCATE) by what the session ran, in one namespace, as PostgreSQL
//! has it. Every test ends with the harness's check of the upstream's statement log against
//! the record.

use serde_json::{json, Value};
use tollgate_tests::wire::{self, Wire};
use tollgate_tests::{eventually, Stack};

fn policy(deny_unbounded: bool) -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "deny_unbounded_writes": deny_unbounded } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

async fn apply(stack: &Stack, document: &Value) {
    let version = stack.put_policy(document).await;
    eventually(10, "the proxy to load the policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
}

async fn commands(stack: &Stack) -> Vec<Value> {
    let events = stack.stream_messages().await;
    events
        .iter()
        .filter_map(|raw| serde_json::from_slice::<Value>(raw).ok())
        .filter(|e| e["type"] == "command")
        .map(|e| e["payload"].clone())
        .collect()
}

fn orders(stack: &Stack) -> String {
    stack.pg.admin_sql("demo", "select count(*) from orders").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_is_judged_by_its_text_however_it_runs() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table orders (id int); insert into orders select generate_series(1, 5); alter table orders owner to app;
         create function sneaky() returns void language plpgsql as $$ begin execute 'prepare evil as delete from orders'; end $$;
         alter function sneaky() owner to app",
    );
    apply(&stack, &policy(false)).await;
    let token = stack.agent_token("bot-prepared");
    let mut agent = Wire::connect(stack.proxy.postgres_addr.port(), "demo", &token).await.expect("connect");

    // Prepared while deletes are allowed, never executed by the protocol.
    let answer = agent.round(&[wire::parse("wipe", "delete from orders"), wire::sync()], 1).await;
    assert!(wire::errors(&answer).is_empty(), "{answer:?}");
    // A function that would prepare a statement behind the proxy's back, through SPI, is refused;
    // prepared by the superuser, the statement is still one the proxy never saw.
    let answer = agent.round(&[wire::query("select sneaky()")], 1).await;
    assert!(wire::errors(&answer)[0].1.contains("rule dynamic_sql"), "{answer:?}");
    let answer = agent.round(&[wire::query("do $$ begin execute 'execute wipe'; end $$")], 1).await;
    assert!(wire::errors(&answer)[0].1.contains("rule dynamic_sql"), "{answer:?}");

    // Now unbounded writes are denied: every way of running the prepared text is judged as it.
    apply(&stack, &policy(true)).await;
    for sql in ["EXECUTE wipe", "explain analyze execute wipe", "select 1; execute wipe"] {
        let errors = wire::errors(&agent.round(&[wire::query(sql)], 1).await);
        assert_eq!(errors.len(), 1, "{sql}: {errors:?}");
        assert_eq!(errors[0].0, "42501", "{sql}: {errors:?}");
        assert!(errors[0].1.contains("deny_unbounded_writes"), "{sql}: {errors:?}");
    }
    let bound = agent.round(&[wire::bind("", "wipe", &[]), wire::execute("", 0), wire::sync()], 1).await;
    let errors = wire::errors(&bound);
    assert!(errors.len() == 1 && errors[0].1.contains("deny_unbounded_writes"), "{errors:?}");
    // A statement the proxy never saw prepared is refused, whoever prepared it.
    for sql in ["EXECUTE evil", "EXECUTE nobody_prepared_this"] {
        let errors = wire::errors(&agent.round(&[wire::query(sql)], 1).await);
        assert!(errors.len() == 1 && errors[0].1.contains("unknown_prepared_statement"), "{sql}: {errors:?}");
    }
    let bound = agent.round(&[wire::bind("", "evil", &[]), wire::execute("", 0), wire::sync()], 1).await;
    assert!(wire::errors(&bound)[0].1.contains("unknown_prepared_statement"), "{bound:?}");
    let unknown_portal = agent.round(&[wire::execute("never_bound", 0), wire::sync()], 1).await;
    assert!(wire::errors(&unknown_portal)[0].1.contains("unknown_portal"), "{unknown_portal:?}");
    assert_eq!(orders(&stack), "5", "nothing was deleted");

    // The record: EXECUTE recorded with the text it runs.
    let recorded = commands(&stack).await;
    let execute = recorded.iter().find(|c| c["statement"] == "EXECUTE wipe").expect("EXECUTE wipe on record");
    assert_eq!(execute["decision"], "deny");
    assert_eq!(execute["postgres"]["executes"], json!([{ "name": "wipe", "statement": "delete from orders" }]));
    assert!(execute["classification"]["classes"].as_array().unwrap().contains(&json!("delete")), "{execute}");
    let evil = recorded.iter().find(|c| c["statement"] == "EXECUTE evil").expect("EXECUTE evil on record");
    assert_eq!(evil["rule"], "unknown_prepared_statement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_what_the_server_confirmed() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table orders (id int); insert into orders values (1); alter table orders owner to app",
    );
    let token = stack.agent_token("bot-names");
    let mut agent = Wire::connect(stack.proxy.postgres_addr.port(), "demo", &token).await.expect("connect");

    // A second Parse of a live name is refused by the server, which keeps the first text.
    agent.round(&[wire::parse("s1", "select 'first'"), wire::sync()], 1).await;
    let again = agent.round(&[wire::parse("s1", "select 'second'"), wire::sync()], 1).await;
    assert_eq!(wire::errors(&again)[0].0, "42P05", "{again:?}");
    let ran = agent.round(&[wire::bind("", "s1", &[]), wire::execute("", 0), wire::sync()], 1).await;
    assert_eq!(wire::values(&ran), [Some("first".to_owned())]);

    // A DEALLOCATE that never ran (its query failed first) leaves the statement in place.
    let failed = agent.round(&[wire::query("select 1/0; deallocate s1")], 1).await;
    assert_eq!(wire::errors(&failed)[0].0, "22012");
    let ran = agent.round(&[wire::bind("", "s1", &[]), wire::execute("", 0), wire::sync()], 1).await;
    assert_eq!(wire::values(&ran), [Some("first".to_owned())]);

    // One pipeline across segments and protocols: the Bind after the queries runs what they
    // prepared, and the proxy judges and records exactly that.
    let pipeline = [
        wire::parse("s3", "select 3"),
        wire::sync(),
        wire::query("DEALLOCATE s3"),
        wire::query("PREPARE s3 AS select 4"),
        wire::bind("", "s3", &[]),
        wire::execute("", 0),
        wire::sync(),
    ];
    let answers = agent.round(&pipeline, 4).await;
    assert!(wire::errors(&answers).is_empty(), "{answers:?}");
    assert_eq!(wire::values(&answers), [Some("4".to_owned())]);

    // SQL-prepared, protocol-executed; protocol-prepared, SQL-executed.
    agent.round(&[wire::query("PREPARE counted AS select count(*) from orders")], 1).await;
    let ran = agent.round(&[wire::bind("", "counted", &[]), wire::execute("", 0), wire::sync()], 1).await;
    assert_eq!(wire::values(&ran), [Some("1".to_owned())]);
    let ran = agent.round(&[wire::query("EXECUTE s1")], 1).await;
    assert_eq!(wire::values(&ran), [Some("first".to_owned())]);

    // A cursor declared in SQL is a portal the protocol can execute; it runs what was judged.
    agent.round(&[wire::query("DECLARE held CURSOR WITH HOLD FOR select id from orders")], 1).await;
    let ran = agent.round(&[wire::execute("held", 0), wire::sync()], 1).await;
    assert_eq!(wire::values(&ran), [Some("1".to_owned())]);

    let recorded = commands(&stack).await;
    let statements: Vec<&str> = recorded.iter().filter_map(|c| c["statement"].as_str()).collect();
    assert!(statements.contains(&"select 'first'"), "{statements:?}");
    assert!(!statements.contains(&"select 'second'"), "{statements:?}");
    assert!(statements.contains(&"PREPARE s3 AS select 4"), "{statements:?}");
    assert!(statements.contains(&"PREPARE counted AS select count(*) from orders"), "{statements:?}");
    let executed = recorded.iter().find(|c| c["statement"] == "EXECUTE s1").expect("EXECUTE s1");
    assert_eq!(executed["postgres"]["executes"][0]["statement"], "select 'first'");
    // Proven against the server: every statement it ran is on record as allowed, this text.
    let matched = stack.check_upstream_log().expect("the statement log matches the record");
    assert!(matched >= 7, "{matched} statements matched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holds_a_bounded_number_of_prepared_statements() {
    let stack = Stack::start().await;
    let mut config = stack.proxy_config("proxy-small");
    config.postgres.max_prepared_statements = 3;
    let proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy starts");
    let token = stack.agent_token("bot-limit");
    let mut agent = Wire::connect(proxy.postgres_addr.port(), "demo", &token).await.expect("connect");
    for name in ["a", "b", "c"] {
        let answer = agent.round(&[wire::parse(name, "select 1"), wire::sync()], 1).await;
        assert!(wire::errors(&answer).is_empty(), "{name}: {answer:?}");
    }
    let answer = agent.round(&[wire::parse("d", "select 1"), wire::sync()], 1).await;
    let errors = wire::errors(&answer);
    assert!(errors.len() == 1 && errors[0].1.contains("prepared_statement_limit"), "{errors:?}");
    let answer = agent.round(&[wire::query("PREPARE e AS select 1")], 1).await;
    assert!(wire::errors(&answer)[0].1.contains("prepared_statement_limit"), "{answer:?}");
    // The unnamed statement is not counted, and freeing a name makes room.
    let answer = agent.round(&[wire::parse("", "select 1"), wire::close(b'S', "a"), wire::sync()], 1).await;
    assert!(wire::errors(&answer).is_empty(), "{answer:?}");
    let answer = agent.round(&[wire::parse("d", "select 1"), wire::sync()], 1).await;
    assert!(wire::errors(&answer).is_empty(), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_that_would_desynchronise_the_proxy_fail_closed() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table t (i int); alter table t owner to app;
         create function opaque_abs(int) returns int language internal immutable strict as 'int4abs'",
    );
    let token = stack.agent_token("bot-desync");
    let port = stack.proxy.postgres_addr.port();

    // Names the server would truncate to the same 63 bytes are refused.
    let mut agent = Wire::connect(port, "demo", &token).await.expect("connect");
    let long = format!("{}1", "a".repeat(63));
    agent.send(&[wire::parse(&long, "select 1"), wire::sync()]).await;
    let answer = agent.until_ready().await;
    let (code, message) = wire::errors(&answer).into_iter().next().expect("refused");
    assert_eq!(code, "08P01");
    assert!(message.contains("limited to 63 bytes"), "{message}");

    // A Query inside a segment that already failed is skipped, with its ReadyForQuery: the
    // proxy neither waits for it nor loses track, and names from before still resolve.
    let mut agent = Wire::connect(port, "demo", &token).await.expect("connect");
    agent.round(&[wire::parse("s", "select 'kept'"), wire::sync()], 1).await;
    let answer = agent
        .round(
            &[
                wire::parse("", "select 1/0"),
                wire::bind("", "", &[]),
                wire::execute("", 0),
                wire::query("select 2"),
                wire::sync(),
            ],
            1,
        )
        .await;
    assert_eq!(wire::errors(&answer).len(), 1, "{answer:?}");
    assert!(wire::values(&answer).is_empty(), "the skipped query returned nothing: {answer:?}");
    let ran = agent.round(&[wire::bind("", "s", &[]), wire::execute("", 0), wire::sync()], 1).await;
    assert_eq!(wire::values(&ran), [Some("kept".to_owned())]);

    // A statement the proxy cannot see through (a function in a language it cannot read) could
    // change how the server reads SQL: more statement text in the same pipeline segment is
    // refused; after a Sync it waits for the server's answer (and its reported settings).
    let mut agent = Wire::connect(port, "demo", &token).await.expect("connect");
    let answer = agent.round(&[wire::query("select opaque_abs(-3)"), wire::query("select opaque_abs(-4)")], 2).await;
    assert_eq!(wire::values(&answer), [Some("3".to_owned()), Some("4".to_owned())]);
    agent
        .send(&[
            wire::parse("", "select opaque_abs(-1)"),
            wire::bind("", "", &[]),
            wire::execute("", 0),
            wire::parse("", "select 2"),
            wire::sync(),
        ])
        .await;
    let mut rest = Vec::new();
    while let Some(msg) = agent.next().await {
        rest.push(msg);
    }
    assert!(
        wire::errors(&rest).iter().any(|(_, m)| m.contains("send Sync before the next statement text")),
        "{rest:?}"
    );

    // A Sync sent during a COPY that then fails: which Sync the server honours cannot be known,
    // so the session ends instead of guessing.
    let mut agent = Wire::connect(port, "demo", &token).await.expect("connect");
    agent
        .send(&[wire::parse("", "copy t from stdin"), wire::bind("", "", &[]), wire::execute("", 0), wire::sync()])
        .await;
    let mut answers = Vec::new();
    while let Some(msg) = agent.next().await {
        let copying = msg.tag == b'G';
        answers.push(msg);
        if copying {
            break;
        }
    }
    agent.send(&[wire::copy_data(b"not a number\n"), wire::sync()]).await;
    let mut rest = Vec::new();
    while let Some(msg) = agent.next().await {
        rest.push(msg);
    }
    let errors = wire::errors(&rest);
    assert!(errors.iter().any(|(_, m)| m.contains("lost track of the server's answers")), "{errors:?}");
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from t").trim(), "0");
}
