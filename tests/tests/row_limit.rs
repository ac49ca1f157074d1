//! `max_rows_written`: the database counts, the proxy commits or rolls back. A write within the
//! limit commits with the answer the agent would have had; one over it is rolled back and the
//! agent is told why; inside the agent's own transaction only the statement is undone. The
//! upstream proves each outcome, and the record shows the proxy's own statements.

use serde_json::{json, Value};
use tokio_postgres::SimpleQueryMessage;
use tollgate_tests::wire::{self, Wire};
use tollgate_tests::{eventually, Stack};

fn completed(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn count(stack: &Stack, sql: &str) -> String {
    stack.pg.admin_sql("demo", sql).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_limit_are_rolled_back_by_the_database_count() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key, v int); insert into victims select g, 0 from generate_series(1, 10000) g;
         create table notes (id int); alter table victims owner to app; alter table notes owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "max_rows_written": 100 } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let client = stack.agent_client(&stack.agent_token("bot-limited")).await.expect("connect");

    // Within the limit: committed at once (autocommit), the agent sees the server's own tag.
    let done = client.simple_query("DELETE FROM victims WHERE id <= 10").await.expect("10 rows");
    assert_eq!(completed(&done), [10]);
    assert_eq!(count(&stack, "select count(*) from victims"), "9990", "committed, seen by another session");
    let updated = client.simple_query("UPDATE victims SET v = 1 WHERE id BETWEEN 11 AND 110").await.expect("100 rows");
    assert_eq!(completed(&updated), [100], "exactly the limit is within it");

    // Over it: rolled back, the agent told why, nothing changed upstream.
    let err = client.simple_query("DELETE FROM victims WHERE id > 10").await.expect_err("9,990 rows");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "54000");
    assert!(db.message().contains("wrote 9990 rows, over this resource's limit of 100"), "{}", db.message());
    assert_eq!(count(&stack, "select count(*) from victims"), "9990");
    let err = client.simple_query("UPDATE victims SET v = 2").await.expect_err("every row");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"));
    assert_eq!(count(&stack, "select count(*) from victims where v = 2"), "0");
    // The server counts what the tag does not: a write in a CTE under a SELECT, a cascade, a
    // function's writes.
    let err = client
        .simple_query("WITH gone AS (DELETE FROM victims WHERE id > 5000 RETURNING 1) SELECT count(*) FROM gone")
        .await
        .expect_err("5,000 rows through a CTE");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("wrote 5000 rows")), "{err}");
    assert_eq!(count(&stack, "select count(*) from victims"), "9990");
    stack.pg.admin_sql(
        "demo",
        "create table parents (id int primary key); create table children (parent int references parents on delete cascade);
         insert into parents values (1), (2); insert into children select 1 from generate_series(1, 500);
         alter table parents owner to app; alter table children owner to app;
         create function wipe() returns int language plpgsql as $$ begin delete from children; return 0; end $$;
         alter function wipe() owner to app",
    );
    let err = client.simple_query("DELETE FROM parents WHERE id = 1").await.expect_err("one row, 500 cascaded");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("wrote 501 rows")), "{err}");
    let err = client.simple_query("SELECT wipe()").await.expect_err("a function's writes");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"));
    assert_eq!(count(&stack, "select count(*) from children"), "500");
    assert_eq!(count(&stack, "select count(*) from parents"), "2");
    let done = client.simple_query("DELETE FROM parents WHERE id = 2").await.expect("no children: one row");
    assert_eq!(completed(&done), [1]);
    // A table dropped inside the statement would take its counted rows with it: a statement
    // that changes relations is rolled back.
    stack.pg.admin_sql(
        "demo",
        "create table scratch (id int); insert into scratch values (1); alter table scratch owner to app;
         create function sneaky() returns int language plpgsql as $$
             begin drop table scratch; delete from victims where id <= 50; return 0; end $$;
         alter function sneaky() owner to app",
    );
    let err = client.simple_query("SELECT sneaky()").await.expect_err("a drop inside");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("dropped a relation")), "{err}");
    assert_eq!(count(&stack, "select count(*) from scratch"), "1");
    // A cursor runs its query when fetched, outside the statement: refused while a limit is set.
    let err = client.simple_query("DECLARE c CURSOR WITH HOLD FOR SELECT wipe()").await.expect_err("a cursor");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("max_rows_written")), "{err}");
    // The session goes on, and reads are untouched (both protocols).
    let rows = client.query_one("select count(*) from victims where id > $1", &[&9000i32]).await.expect("read");
    assert_eq!(rows.get::<_, i64>(0), 1000);

    // Inside the agent's transaction: the statement alone is undone, earlier work stays.
    client.simple_query("BEGIN").await.expect("begin");
    client.simple_query("INSERT INTO notes VALUES (1)").await.expect("note 1");
    let err = client.simple_query("DELETE FROM victims").await.expect_err("over the limit");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"));
    client.simple_query("INSERT INTO notes VALUES (2)").await.expect("the transaction goes on");
    let small = client.simple_query("DELETE FROM victims WHERE id <= 20").await.expect("10 rows in the transaction");
    assert_eq!(completed(&small), [10]);
    client.simple_query("COMMIT").await.expect("commit");
    assert_eq!(count(&stack, "select string_agg(id::text, ',' order by id) from notes"), "1,2");
    assert_eq!(count(&stack, "select count(*) from victims"), "9980");
    // ...and the agent's own rollback still undoes what it did within the limit.
    client.simple_query("BEGIN").await.expect("begin");
    client.simple_query("DELETE FROM victims WHERE id <= 30").await.expect("10 rows");
    client.simple_query("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&stack, "select count(*) from victims"), "9980");

    // What the limit cannot count is refused before it runs; so is a write over the extended
    // protocol (not enforced there yet).
    let err = client.simple_query("TRUNCATE victims").await.expect_err("uncountable");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("max_rows_written")), "{err}");
    let err = client.execute("DELETE FROM victims WHERE id = $1", &[&5000i32]).await.expect_err("extended write");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("simple-protocol")), "{err}");
    assert_eq!(count(&stack, "select count(*) from victims"), "9980");
    // Extended-protocol messages not yet ended by a Sync could have changed the transaction
    // (an Execute of ROLLBACK): a write behind them is refused until the agent syncs.
    let port = stack.proxy.postgres_addr.port();
    let mut raw = Wire::connect(port, "demo", &stack.agent_token("bot-limited")).await.expect("raw connection");
    let answers = raw
        .round(
            &[
                wire::parse("", "ROLLBACK"),
                wire::bind("", "", &[]),
                wire::execute("", 0),
                wire::query("DELETE FROM victims WHERE id = 9999"),
                wire::sync(),
            ],
            2,
        )
        .await;
    let errors = wire::errors(&answers);
    assert!(errors.iter().any(|(code, m)| code == "42501" && m.contains("send Sync")), "{errors:?}");
    assert_eq!(count(&stack, "select count(*) from victims where id = 9999"), "1");
    drop(raw);
    drop(client);

    // The record: the proxy's own statements, the limit on the write, the attempted count.
    let sessions = stack.ended_sessions(2).await;
    let session = sessions.iter().max_by_key(|s| s["commands"].as_u64()).expect("the main session");
    let id = session["id"].as_str().expect("id").to_owned();
    let events = eventually(30, "the session's results to be projected", || async {
        let (_, events) = stack.api(&format!("/api/v1/sessions/{id}/events")).await;
        let events = events.as_array()?.clone();
        events.iter().any(|e| e["type"] == "session.ended").then_some(events)
    })
    .await;
    let payload = |e: &Value| e["event"]["payload"].clone();
    let commands: Vec<Value> = events.iter().filter(|e| e["type"] == "command").map(payload).collect();
    let over = commands.iter().find(|c| c["statement"] == "DELETE FROM victims WHERE id > 10").expect("recorded");
    assert_eq!(over["postgres"]["row_limit"], 100, "{over}");
    let own: Vec<&str> = commands
        .iter()
        .filter(|c| c["postgres"]["step"] == "row_limit")
        .filter_map(|c| c["statement"].as_str())
        .collect();
    // Each write: the opening with a count, a count after it, the commit or rollback.
    let shapes: Vec<&str> = own
        .iter()
        .map(|s| match *s {
            s if s.starts_with("BEGIN; SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact") => "begin",
            s if s.starts_with("SAVEPOINT tollgate_row_limit; SELECT COALESCE(") => "savepoint",
            s if s.starts_with("SET CONSTRAINTS ALL IMMEDIATE; SELECT COALESCE(") => "count",
            s if s.starts_with("SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact") => "count",
            other => other,
        })
        .collect();
    assert!(
        shapes.starts_with(&["begin", "count", "COMMIT", "begin", "count", "COMMIT", "begin", "count", "ROLLBACK"]),
        "{shapes:?}"
    );
    assert!(shapes.contains(&"ROLLBACK TO SAVEPOINT tollgate_row_limit; RELEASE SAVEPOINT tollgate_row_limit"));
    assert!(shapes.contains(&"savepoint") && shapes.contains(&"RELEASE SAVEPOINT tollgate_row_limit"));
    let over_id = events
        .iter()
        .find(|e| e["type"] == "command" && e["event"]["payload"]["statement"] == "DELETE FROM victims WHERE id > 10")
        .map(|e| e["id"].clone())
        .expect("the over-limit write's event");
    let result = events
        .iter()
        .filter(|e| e["type"] == "command.result")
        .map(payload)
        .find(|r| r["command_id"] == over_id)
        .expect("the over-limit write's result");
    assert_eq!(
        (result["outcome"].as_str(), result["rows"].as_u64(), result["error"]["code"].as_str()),
        (Some("error"), Some(9990), Some("54000")),
        "{result}"
    );
}

/// "Hold writes over 50 rows": the write runs, its commit waits for people; approved it
/// commits, denied it is rolled back, and meanwhile nobody else sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_commits_only_when_approved() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key); insert into victims select generate_series(1, 1000);
         alter table victims owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "big-writes", "hold_classes": ["delete", "update"], "rows_over": 50,
              "approver_groups": ["dba"], "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let token = stack.agent_token("bot-bulk");
    // Small: no hold.
    let small = stack.psql(&token, None, &["-c", "DELETE FROM victims WHERE id <= 10"], None);
    assert!(small.status.success(), "{small:?}");
    assert_eq!(count(&stack, "select count(*) from victims"), "990");

    // Large, approved: it ran before the decision (its rows are locked, not yet gone for anyone
    // else), and commits after it.
    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM victims WHERE id <= 110"]);
    let first = stack.approve_pending("alice@example.com", &["approvers", "dba"], "planned cleanup").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "DELETE 100");
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for approval"), "the agent was told");
    assert_eq!(count(&stack, "select count(*) from victims"), "890");

    // Large, denied: rolled back, the agent told why, nothing changed.
    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM victims WHERE id <= 300"]);
    let pending = eventually(20, "the second request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.iter().find(|a| a["id"] != first.as_str()).cloned()
    })
    .await;
    let id = pending["id"].as_str().expect("id").to_owned();
    assert_eq!(count(&stack, "select count(*) from victims"), "890", "uncommitted while it waits");
    let bob = stack.person_token("bob@example.com", &["approvers", "dba"]);
    let (status, body) = stack
        .api_send("POST", &format!("/api/v1/approvals/{id}/deny"), Some(&bob), Some(&json!({ "reason": "too much" })))
        .await;
    assert_eq!(status, 202, "{body}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&stack, "select count(*) from victims"), "890");

    // The approvals evidence names both, with their outcomes.
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ");
    let report = eventually(20, "both decisions in the evidence", || async {
        let (_, page) = stack.api(&format!("/api/v1/reviews/approvals?from={from}")).await;
        let items = page["items"].as_array()?.clone();
        (items.len() == 2 && items.iter().all(|a| a["status"] != "pending")).then_some(items)
    })
    .await;
    let mut outcomes: Vec<(String, String)> = report
        .iter()
        .map(|a| (a["statement"].as_str().unwrap_or("").to_owned(), a["status"].as_str().unwrap_or("").to_owned()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("DELETE FROM victims WHERE id <= 110".to_owned(), "approved".to_owned()),
            ("DELETE FROM victims WHERE id <= 300".to_owned(), "denied".to_owned())
        ]
    );
}

/// A statement held by its class and then approved still runs under the row limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_write_still_runs_under_the_limit() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key); insert into victims select generate_series(1, 1000);
         alter table victims owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "max_rows_written": 100 },
            "approvals": [{ "name": "deletes", "hold_classes": ["delete"], "approver_groups": ["dba"], "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let token = stack.agent_token("bot-approved");
    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM victims WHERE id <= 500"]);
    let first = stack.approve_pending("alice@example.com", &["approvers", "dba"], "go").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(!out.status.success(), "approved, but over the limit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote 500 rows, over this resource's limit of 100"), "{stderr}");
    assert_eq!(count(&stack, "select count(*) from victims"), "1000");

    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM victims WHERE id <= 10"]);
    eventually(20, "the second request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.iter().any(|a| a["id"] != first.as_str()).then_some(())
    })
    .await;
    stack.approve_pending("alice@example.com", &["approvers", "dba"], "small").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "DELETE 10");
    assert_eq!(count(&stack, "select count(*) from victims"), "990");
}

/// Nobody decides on a large write's commit in time: it is rolled back, and the request is on
/// record as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_nobody_approves_in_time_is_rolled_back() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key); insert into victims select generate_series(1, 1000);
         alter table victims owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "big-writes", "hold_classes": ["update"], "rows_over": 50,
              "approver_groups": ["dba"], "timeout_secs": 2 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let out = stack.psql(&stack.agent_token("bot-slow"), None, &["-c", "UPDATE victims SET id = id + 1000"], None);
    assert!(!out.status.success(), "expired: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("waiting for approval") && stderr.contains("not approved in time"), "{stderr}");
    assert_eq!(count(&stack, "select max(id) from victims"), "1000", "rolled back");
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ");
    // Expired by its proxy (not only past its time in the API's eyes): the reason is recorded.
    let expired = eventually(20, "the request on record as expired", || async {
        let (_, page) = stack.api(&format!("/api/v1/reviews/approvals?from={from}")).await;
        let item = page["items"].as_array()?.first()?.clone();
        (item["expiry_reason"] == "timeout").then_some(item)
    })
    .await;
    assert_eq!(expired["status"], "expired", "{expired}");
}
