//! Guardrails judged with the real PostgreSQL parser: statements written to slip past naive
//! rules are denied and never reach the upstream; harmless look-alikes run.

use serde_json::json;
use tollgate_tests::{eventually, Stack};

const DENIED: &[(&str, &str)] = &[
    ("DROP TABLE orders", "deny_classes:drop"),
    ("drop/**/table orders", "deny_classes:drop"),
    ("DrOp TaBlE \"orders\"", "deny_classes:drop"),
    ("/* routine cleanup */ DROP TABLE orders", "deny_classes:drop"),
    ("select 1; drop table orders", "deny_classes:drop"),
    ("select 1;/*x*/drop table public.orders --", "deny_classes:drop"),
    ("select E'\\x44ROP'; drop table orders", "deny_classes:drop"),
    ("with gone as (delete from orders returning *) select * from gone", "deny_unbounded_writes"),
    ("delete from orders", "deny_unbounded_writes"),
    ("DELETE FROM \"orders\"", "deny_unbounded_writes"),
    ("update orders set total = 0", "deny_unbounded_writes"),
    ("prepare wipe as delete from orders", "deny_unbounded_writes"),
    ("truncate orders", "deny_classes:truncate"),
    ("TRUNCATE TABLE public.orders", "deny_classes:truncate"),
    ("copy orders to program 'cat > /tmp/tollgate-evasion'", "deny_classes:copy_program"),
    ("COPY (select 1) TO PROGRAM 'id'", "deny_classes:copy_program"),
    ("select pg_read_file('/etc/hostname')", "deny_functions:pg_read_file"),
    ("select pg_catalog.pg_read_file('/etc/hostname')", "deny_functions:pg_read_file"),
    ("select \"pg_read_file\"('/etc/hostname')", "deny_functions:pg_read_file"),
    ("SELECT PG_READ_FILE('/etc/hostname')", "deny_functions:pg_read_file"),
    ("select U&\"\\0070g_read_file\"('/etc/hostname')", "deny_functions:pg_read_file"),
    ("select * from (select pg_read_file('/etc/hostname')) s", "deny_functions:pg_read_file"),
    ("select lo_export(1, '/tmp/tollgate-evasion')", "deny_functions:lo_export"),
    // The DROP inside the block is seen, not only the block.
    ("do $$ begin execute 'drop table orders'; end $$", "deny_classes:drop"),
    ("DO $body$ BEGIN PERFORM 1; END $body$", "deny_classes:do_block"),
    ("alter system set log_statement = 'none'", "deny_classes:alter_system"),
    ("grant all on orders to public", "deny_classes:grant"),
    ("create role evil superuser", "deny_classes:role"),
    ("create function f() returns int language sql as 'select 1'", "deny_classes:create_function"),
    ("select * from secrets", "deny_relations:secrets"),
    ("select * from public.secrets", "deny_relations:secrets"),
    ("select * from PUBLIC.Secrets", "deny_relations:secrets"),
    ("select * from \"secrets\"", "deny_relations:secrets"),
    ("select o.id from orders o join secrets s on true", "deny_relations:secrets"),
    // A built-in that reads a table named in a string reads that table.
    ("select table_to_xml('secrets', true, true, '')", "deny_relations:secrets"),
    ("select table_to_xml('public.secrets'::regclass, false, false, '')", "deny_relations:secrets"),
    ("select schema_to_xml('public', true, true, '')", "dynamic_sql"),
    // Targets of DDL are relations too.
    ("comment on table secrets is 'x'", "deny_relations:secrets"),
    ("alter table public.secrets add column y int", "deny_relations:secrets"),
    // A qualified rule matches the qualified name, and the bare one whatever the search_path.
    ("select * from archive.ledger", "deny_relations:archive.ledger"),
    ("select * from ledger", "deny_relations:archive.ledger"),
    ("select * from \"Mixed\"", "deny_relations:\"Mixed\""),
    ("selec 1 from orders", "unparsable"),
];

const ALLOWED: &[&str] = &[
    "select 'drop table orders'",
    "select $$truncate orders$$",
    "select 1 -- drop table orders",
    "/* delete from orders */ select count(*) from orders",
    "select 'pg_read_file' as name",
    "select table_to_xml('orders', true, true, '')",
    "delete from orders where id = -1",
    "update orders set total = total where id = -1",
    "select count(*) from orders",
    // Quoted names keep their case: "Secrets" is not secrets, mixed is not "Mixed".
    "select * from \"Secrets\"",
    "select * from mixed",
];

fn policy() -> serde_json::Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": {
            "deny_classes": ["drop", "truncate", "alter_system", "copy_program", "do_block", "grant", "role", "create_function"],
            "deny_unbounded_writes": true,
            "deny_functions": ["pg_read_file", "lo_export"],
            "deny_relations": ["secrets", "archive.ledger", "\"Mixed\""]
        }}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evasions_are_denied_before_the_upstream_and_look_alikes_run() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "create table orders (id int, total int); create table secrets (v text); create table \"Secrets\" (v text); create table mixed (v text); alter table orders owner to app; alter table secrets owner to app; grant select on \"Secrets\", mixed to app; insert into orders values (1, 10)");
    let version = stack.put_policy(&policy()).await;
    eventually(10, "the proxy to load the guardrails", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    let client = stack.agent_client(&stack.agent_token("bot-evasion")).await.expect("connect");

    assert!(DENIED.len() >= 30);
    for (sql, rule) in DENIED {
        let err = client.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), "42501", "{sql}: {}", db.message());
        assert!(db.message().contains(&format!("denied by rule {rule} ")), "{sql}: {}", db.message());
    }
    for sql in ALLOWED {
        client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql} was refused: {e}"));
    }
    // The extended protocol is judged the same way (at Execute, with the prepared text).
    let err = client.execute("delete from orders", &[]).await.expect_err("extended delete without where");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    // A statement is judged when it is prepared: the Parse of a denied text is refused.
    let err = client.prepare("drop table orders").await.expect_err("preparing the drop");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deny_classes:drop")), "{err}");
    assert_eq!(
        client
            .query_one("select total from orders where id = $1", &[&1i32])
            .await
            .expect("still usable")
            .get::<_, i32>(0),
        10
    );

    // A denial inside a transaction aborts it, as a real error would: the insert does not commit.
    client.batch_execute("begin; insert into orders values (9, 9)").await.expect("begin");
    assert!(client.simple_query("truncate orders").await.is_err());
    let err = client.simple_query("select 1").await.expect_err("the transaction is aborted");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    client.simple_query("commit").await.expect("commit (rolls back)");
    let nine: i64 = client.query_one("select count(*) from orders where id = 9", &[]).await.unwrap().get(0);
    assert_eq!(nine, 0);

    // Nothing denied reached the upstream: its statement log never shows the text.
    let log = stack.pg.database_log("demo");
    for (sql, _) in DENIED {
        // `statement: <sql>` (simple) or `execute <unnamed>: <sql>` (extended), as the whole text.
        let lines: Vec<&str> = log.lines().filter(|l| l.ends_with(&format!(": {sql}"))).collect();
        assert!(lines.is_empty(), "{sql} reached the upstream: {lines:?}");
    }
    assert!(log.lines().any(|l| l.ends_with(": select 'drop table orders'")), "look-alikes did run");
    for denied_extended in ["delete from orders", "drop table orders"] {
        assert!(!log.lines().any(|l| l.ends_with(&format!(": {denied_extended}"))), "{denied_extended} ran upstream");
    }
    assert!(log.contains("tollgate: statement denied"), "the upstream only ever saw the stand-in");

    // Each denial is recorded with its decision and rule.
    drop(client);
    let sessions = stack.ended_sessions(1).await;
    let id = sessions[0]["id"].as_str().unwrap();
    let commands = eventually(30, "the commands to be projected", || async {
        let (_, c) = stack.api(&format!("/api/v1/sessions/{id}/commands")).await;
        let c = c.as_array()?.clone();
        (c.len() >= DENIED.len() + ALLOWED.len()).then_some(c)
    })
    .await;
    let denied: Vec<_> = commands.iter().filter(|c| c["decision"] == "deny").collect();
    assert!(denied.len() >= DENIED.len() + 3, "{} denials recorded", denied.len());
    let truncate = denied.iter().find(|c| c["statement"] == "truncate orders").expect("recorded");
    assert_eq!(truncate["rule"], "deny_classes:truncate");
    assert_eq!(truncate["policy_version"].as_u64(), Some(version));
    assert_eq!(truncate["error_code"], "42501");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_grants_cannot_write_or_escape_read_only() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "create table notes (body text); alter table notes owner to app");
    let version = stack
        .put_policy(&json!({
            "resources": [{ "name": "demo", "kind": "postgres" }],
            "grants": [{ "name": "readers", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "read-only" }]
        }))
        .await;
    eventually(10, "the proxy to load the policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    let client = stack.agent_client(&stack.agent_token("reader")).await.expect("connect");
    client.simple_query("select count(*) from notes").await.expect("reading is fine");
    for sql in [
        "insert into notes values ('x')",
        "set default_transaction_read_only = off",
        "begin read write",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "create table more (x int)",
    ] {
        let err = client.simple_query(sql).await.expect_err(sql);
        let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains("denied by rule read_only_grant"), "{sql}: {message}");
    }
    // Volatile functions with side effects are refused by the proxy...
    stack.pg.admin_sql("demo", "create sequence s; alter sequence s owner to app");
    let err = client.simple_query("select nextval('s')").await.expect_err("nextval writes");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("nextval is a volatile function")), "{err}");
    // ...and the upstream session itself is read-only, whatever the proxy misses.
    let mode = client.query_one("show default_transaction_read_only", &[]).await.expect("show");
    assert_eq!(mode.get::<_, String>(0), "on");
}
