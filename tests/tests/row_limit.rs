//! `max_rows_written`: the database counts, the proxy commits or rolls back. A write within the
//! limit commits with the answer the agent would have had; one over it is rolled back and the
//! agent is told why; inside the agent's own transaction only the statement is undone. The
//! upstream proves each outcome, and the record shows the proxy's own statements. Over the
//! extended protocol the write runs in its pipeline's transaction and an over-limit one fails
//! as a failed statement would: the server skips to the agent's Sync.

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
    // Large objects live in pg_catalog, outside the count: writing them is refused too.
    stack.pg.admin_sql("demo", "select lo_create(4242); alter large object 4242 owner to app");
    let err = client.simple_query("SELECT pg_catalog.lo_unlink(4242)").await.expect_err("a large object");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("large objects")), "{err}");
    assert_eq!(count(&stack, "select count(*) from pg_largeobject_metadata where oid = 4242"), "1");
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

    // What the limit cannot count is refused before it runs.
    let err = client.simple_query("TRUNCATE victims").await.expect_err("uncountable");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("max_rows_written")), "{err}");
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

    // A driver's parameterized write (extended protocol): held the same way, in its pipeline's
    // transaction, and committed by the driver's Sync once approved.
    let client = stack.agent_client(&token).await.expect("connect");
    let write = tokio::spawn(async move { client.execute("DELETE FROM victims WHERE id <= $1", &[&200i32]).await });
    let third = eventually(20, "the third request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.first().cloned()
    })
    .await;
    assert_eq!(count(&stack, "select count(*) from victims"), "890", "uncommitted while it waits");
    let id = third["id"].as_str().expect("id");
    let (status, body) = stack
        .api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&bob), Some(&json!({ "reason": "fine" })))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(write.await.expect("join").expect("approved"), 90);
    assert_eq!(count(&stack, "select count(*) from victims"), "800");

    // The approvals evidence names all three, with their outcomes.
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ");
    let report = eventually(20, "both decisions in the evidence", || async {
        let (_, page) = stack.api(&format!("/api/v1/reviews/approvals?from={from}")).await;
        let items = page["items"].as_array()?.clone();
        (items.len() == 3 && items.iter().all(|a| a["status"] != "pending")).then_some(items)
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
            ("DELETE FROM victims WHERE id <= $1".to_owned(), "approved".to_owned()),
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

/// The extended protocol: a driver's parameterized write is counted in its own pipeline; over
/// the limit it fails as a failing statement would (the pipeline's transaction rolled back, the
/// rest of the pipeline skipped, the agent's block aborted), within it the agent gets the
/// server's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_writes_are_counted_in_their_pipeline() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key, secret text); insert into victims select g, 'x' from generate_series(1, 1000) g;
         create table notes (id int); alter table victims owner to app; alter table notes owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "max_rows_written": 100 } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let token = stack.agent_token("bot-driver");
    let mut client = stack.agent_client(&token).await.expect("connect");

    // Within the limit: the driver's answer, committed by its Sync.
    let n = client.execute("DELETE FROM victims WHERE id <= $1", &[&10i32]).await.expect("10 rows");
    assert_eq!(n, 10);
    assert_eq!(count(&stack, "select count(*) from victims"), "990");
    // Rows returned in binary, within the limit.
    let rows = client.query("DELETE FROM victims WHERE id <= $1 RETURNING id", &[&20i32]).await.expect("returning");
    assert_eq!(rows.iter().map(|r| r.get::<_, i32>(0)).sum::<i32>(), (11..=20).sum::<i32>());
    // Over it: nothing changed, the agent told why.
    let err = client.execute("UPDATE victims SET secret = $1", &[&"y"]).await.expect_err("980 rows");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "54000");
    assert!(db.message().contains("wrote 980 rows, over this resource's limit of 100"), "{}", db.message());
    assert_eq!(count(&stack, "select count(*) from victims where secret = 'y'"), "0");
    // In the agent's transaction: the statement's failure aborts it, as any failure would; a
    // savepoint of the agent's own brings it back, with the earlier work intact.
    let mut tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO notes VALUES ($1)", &[&1i32]).await.expect("note 1");
    let sp = tx.savepoint("before_cleanup").await.expect("savepoint");
    let err = sp.execute("DELETE FROM victims WHERE id > $1", &[&0i32]).await.expect_err("over the limit");
    assert_eq!(err.code().map(|c| c.code()), Some("54000"));
    let err = sp.execute("INSERT INTO notes VALUES ($1)", &[&99i32]).await.expect_err("aborted");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err}");
    sp.rollback().await.expect("rollback to savepoint");
    tx.execute("INSERT INTO notes VALUES ($1)", &[&2i32]).await.expect("note 2");
    tx.commit().await.expect("commit");
    assert_eq!(count(&stack, "select string_agg(id::text, ',' order by id) from notes"), "1,2");
    assert_eq!(count(&stack, "select count(*) from victims"), "980");

    // One pipeline: an insert, a write over the limit, another insert, one Sync. The server
    // skips what follows the failure and the Sync rolls the first insert back with it.
    let port = stack.proxy.postgres_addr.port();
    let mut raw = Wire::connect(port, "demo", &token).await.expect("raw connection");
    let pipeline = [
        wire::parse("", "INSERT INTO notes VALUES (3)"),
        wire::bind("", "", &[]),
        wire::execute("", 0),
        wire::parse("wipe", "DELETE FROM victims WHERE id > $1"),
        wire::bind("", "wipe", &[Some("0")]),
        wire::execute("", 0),
        wire::parse("", "INSERT INTO notes VALUES (4)"),
        wire::bind("", "", &[]),
        wire::execute("", 0),
        wire::sync(),
    ];
    let answers = raw.round(&pipeline, 1).await;
    let tags: Vec<u8> = answers.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"12C12EZ", "{answers:?}");
    assert!(wire::errors(&answers)[0].1.contains("wrote 980 rows"), "{answers:?}");
    assert_eq!(answers.last().map(|m| m.body[0]), Some(b'I'), "the pipeline's transaction is over");
    assert_eq!(count(&stack, "select string_agg(id::text, ',' order by id) from notes"), "1,2");
    assert_eq!(count(&stack, "select count(*) from victims"), "980");
    // The same pipeline within the limit commits all three, the answers as the server gave them.
    let answers = raw
        .round(
            &[
                wire::parse("", "INSERT INTO notes VALUES (3)"),
                wire::bind("", "", &[]),
                wire::execute("", 0),
                wire::bind("", "wipe", &[Some("950")]),
                wire::execute("", 0),
                wire::parse("", "INSERT INTO notes VALUES (4)"),
                wire::bind("", "", &[]),
                wire::execute("", 0),
                wire::sync(),
            ],
            1,
        )
        .await;
    let tags: Vec<String> = answers.iter().filter_map(|m| m.command()).collect();
    assert_eq!(tags, ["INSERT 0 1", "DELETE 50", "INSERT 0 1"], "{answers:?}");
    assert_eq!(count(&stack, "select string_agg(id::text, ',' order by id) from notes"), "1,2,3,4");
    assert_eq!(count(&stack, "select count(*) from victims"), "930");
    // A portal run a few rows at a time would be counted a few rows at a time: a write must
    // run whole; and SQL FETCH or MOVE would run a bound portal past its Execute.
    let answers = raw
        .round(
            &[
                wire::parse("", "DELETE FROM victims WHERE id > 945 RETURNING id"),
                wire::bind("p", "", &[]),
                wire::execute("p", 2),
                wire::sync(),
            ],
            1,
        )
        .await;
    assert!(wire::errors(&answers).iter().any(|(_, m)| m.contains("to completion")), "{answers:?}");
    let answers = raw
        .round(
            &[
                wire::parse("", "DELETE FROM victims WHERE id > $1 RETURNING 1"),
                wire::bind("p", "", &[Some("0")]),
                wire::query("MOVE ALL IN p"),
            ],
            1,
        )
        .await;
    assert!(wire::errors(&answers).iter().any(|(_, m)| m.contains("fetch_of_bound_portal")), "{answers:?}");
    raw.round(&[wire::sync()], 1).await;
    assert_eq!(count(&stack, "select count(*) from victims"), "930");
    // Nor may anything else run it by name while it is open: a built-in that fetches from a
    // portal, or a FETCH after a ROLLBACK TO SAVEPOINT (which leaves older portals open).
    raw.round(&[wire::query("BEGIN")], 1).await;
    raw.round(
        &[
            wire::parse("", "UPDATE victims SET secret = 'z' WHERE id > $1 RETURNING id"),
            wire::bind("q", "", &[Some("0")]),
            wire::sync(),
        ],
        1,
    )
    .await;
    let answers = raw.round(&[wire::query("SELECT cursor_to_xml('q', 1000, true, true, '')")], 1).await;
    assert!(wire::errors(&answers).iter().any(|(_, m)| m.contains("open_bound_portal")), "{answers:?}");
    raw.round(&[wire::query("ROLLBACK"), wire::query("BEGIN")], 2).await;
    raw.round(
        &[
            wire::parse("", "DELETE FROM victims WHERE id > $1 RETURNING 1"),
            wire::bind("r", "", &[Some("0")]),
            wire::sync(),
        ],
        1,
    )
    .await;
    raw.round(&[wire::query("SAVEPOINT s"), wire::query("ROLLBACK TO SAVEPOINT s")], 2).await;
    let answers = raw.round(&[wire::query("FETCH ALL FROM r")], 1).await;
    assert!(wire::errors(&answers).iter().any(|(_, m)| m.contains("fetch_of_bound_portal")), "{answers:?}");
    raw.round(&[wire::query("ROLLBACK")], 1).await;
    assert_eq!(count(&stack, "select count(*) from victims where secret = 'z'"), "0");
    // A portal of a read may be fetched by name: the check is about writes.
    raw.round(&[wire::query("BEGIN")], 1).await;
    raw.round(
        &[
            wire::parse("", "SELECT lower(secret) FROM victims WHERE id = 21"),
            wire::bind("reader", "", &[]),
            wire::sync(),
        ],
        1,
    )
    .await;
    let answers = raw.round(&[wire::query("SELECT cursor_to_xml('reader', 1, true, true, '')")], 1).await;
    assert!(wire::values(&answers).iter().flatten().any(|v| v.contains("<lower>x</lower>")), "{answers:?}");
    raw.round(&[wire::query("COMMIT")], 1).await;
    assert_eq!(count(&stack, "select count(*) from victims"), "930");
    // A Bind the server refuses fails the agent's Execute, not the proxy's count: the agent
    // gets the server's error and nothing else, as without the proxy.
    let answers =
        raw.round(&[wire::bind("", "wipe", &[Some("not a number")]), wire::execute("", 0), wire::sync()], 1).await;
    let tags: Vec<u8> = answers.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"EZ", "{answers:?}");
    assert_eq!(wire::errors(&answers)[0].0, "22P02", "{answers:?}");
    // The proxy's names are its own: an agent may not take them.
    let answers = raw.round(&[wire::parse("tollgate_row_limit", "SELECT 1"), wire::sync()], 1).await;
    assert!(wire::errors(&answers).iter().any(|(_, m)| m.contains("the proxy's own")), "{answers:?}");
    drop(raw);
    let err = client.simple_query("PREPARE tollgate_row_limit AS SELECT 1").await.expect_err("reserved");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("the proxy's own")), "{err}");
    drop(client);

    // The record: the write's limit and attempted count, and the proxy's counts as extended
    // statements (the upstream's log is checked against them when the stack stops).
    let sessions = stack.ended_sessions(2).await;
    let mut events = Vec::new();
    for session in &sessions {
        let id = session["id"].as_str().expect("id").to_owned();
        events.extend(
            eventually(30, "the session's results to be projected", || async {
                let (_, events) = stack.api(&format!("/api/v1/sessions/{id}/events")).await;
                let events = events.as_array()?.clone();
                events.iter().any(|e| e["type"] == "session.ended").then_some(events)
            })
            .await,
        );
    }
    let over = events
        .iter()
        .find(|e| e["type"] == "command" && e["event"]["payload"]["statement"] == "UPDATE victims SET secret = $1")
        .expect("the over-limit write on record");
    assert_eq!(over["event"]["payload"]["postgres"]["row_limit"], 100);
    let result = events
        .iter()
        .filter(|e| e["type"] == "command.result")
        .map(|e| &e["event"]["payload"])
        .find(|r| r["command_id"] == over["id"])
        .expect("its result");
    assert_eq!(
        (result["outcome"].as_str(), result["rows"].as_u64(), result["error"]["code"].as_str()),
        (Some("error"), Some(980), Some("54000")),
        "{result}"
    );
    let counts = events
        .iter()
        .map(|e| &e["event"]["payload"])
        .filter(|c| c["postgres"]["step"] == "row_limit" && c["protocol"] == "extended")
        .count();
    assert!(counts >= 10, "two counts per write, each on record: {counts}");
}

/// Deferrable constraint triggers write at commit. Where the proxy opens the transaction it
/// fires them before its count; in the agent's own transaction or pipeline it cannot, so there
/// a write is refused once such a trigger may exist (created in this session, or in the catalog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_trigger_writes_are_counted_or_refused() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table victims (id int primary key); create table notes (id int); create table log (n int);
         alter table victims owner to app; alter table notes owner to app; alter table log owner to app;
         create function bulk() returns trigger language plpgsql as $$
             begin insert into log select generate_series(1, 500); return null; end $$;
         alter function bulk() owner to app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "max_rows_written": 100 } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let token = stack.agent_token("bot-triggers");
    let client = stack.agent_client(&token).await.expect("connect");
    // Before any such trigger, both protocols write.
    client.execute("INSERT INTO notes VALUES ($1)", &[&1i32]).await.expect("extended insert");
    client.simple_query("BEGIN; INSERT INTO notes VALUES (2); COMMIT").await.expect_err("several statements");
    client.simple_query("INSERT INTO notes VALUES (2)").await.expect("simple insert");
    client
        .simple_query(
            "CREATE CONSTRAINT TRIGGER fan_out AFTER INSERT ON notes DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION bulk()",
        )
        .await
        .expect("the agent creates a deferred trigger");
    // Outside a transaction: the proxy's own transaction fires it before the count.
    let err = client.simple_query("INSERT INTO notes VALUES (3)").await.expect_err("1 row + 500 at commit");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("wrote 501 rows")), "{err}");
    // In the agent's transaction or over the extended protocol: refused before it runs.
    let err = client.execute("INSERT INTO notes VALUES ($1)", &[&4i32]).await.expect_err("extended");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deferrable constraint triggers")), "{err}");
    client.simple_query("BEGIN").await.expect("begin");
    let err = client.simple_query("INSERT INTO notes VALUES (5)").await.expect_err("in a transaction");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deferrable constraint triggers")), "{err}");
    client.simple_query("ROLLBACK").await.expect("rollback");
    assert_eq!(count(&stack, "select string_agg(id::text, ',' order by id) from notes"), "1,2");
    assert_eq!(count(&stack, "select count(*) from log"), "0");
    drop(client);
    // A new session knows too (this proxy saw the trigger made; other proxies read it in their
    // catalog).
    let client = stack.agent_client(&token).await.expect("connect");
    let err = client.execute("INSERT INTO notes VALUES ($1)", &[&6i32]).await.expect_err("extended");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deferrable constraint triggers")), "{err}");
    assert_eq!(count(&stack, "select count(*) from log"), "0");
}

/// A deferrable trigger made before the proxy ever connected is found in its catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferrable_trigger_in_the_catalog_refuses_writes_that_commit_after_the_count() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table notes (id int); create table log (n int);
         alter table notes owner to app; alter table log owner to app;
         create function bulk() returns trigger language plpgsql as $$
             begin insert into log select generate_series(1, 500); return null; end $$;
         create constraint trigger fan_out after insert on notes deferrable initially deferred
             for each row execute function bulk()",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "max_rows_written": 100 } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let client = stack.agent_client(&stack.agent_token("bot-catalog")).await.expect("connect");
    let err = client.execute("INSERT INTO notes VALUES ($1)", &[&1i32]).await.expect_err("extended");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deferrable constraint triggers")), "{err}");
    let err = client.simple_query("INSERT INTO notes VALUES (2)").await.expect_err("counted at the proxy's commit");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("wrote 501 rows")), "{err}");
    assert_eq!(count(&stack, "select count(*) from notes"), "0");
    assert_eq!(count(&stack, "select count(*) from log"), "0");
}
