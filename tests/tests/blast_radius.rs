//! Blast-radius guardrails: a write no condition bounds is refused in every form it takes (no
//! WHERE, a WHERE true for every row, MERGE actions, data-modifying CTEs, upserts from a query,
//! joins that do not tie the target), over both protocols, and the upstream proves it: the
//! victim rows are intact and its statement log never shows the text. `IS NOT NULL` on a
//! primary key bounds nothing (the catalog knows the column cannot be null); on a nullable
//! column it bounds. Look-alikes that are
//! bounded run and change exactly what they name; a plain EXPLAIN is a read.

use serde_json::json;
use tollgate_tests::{eventually, Stack};

const UNBOUNDED: &[&str] = &[
    "delete from orders where true",
    "delete from orders where 1 = 1",
    "delete from orders where 1 = 0",
    "delete from orders where id = id",
    "delete from orders where orders.id = id",
    "delete from orders where id = 5 or true",
    "delete from orders where not false",
    "delete from orders where now() > '2000-01-01'",
    "delete from orders using customers where customers.vip",
    "delete from orders where exists (select 1 from customers orders where orders.vip)",
    "update orders set total = 0 from customers c where c.id = 1",
    "update orders set total = 0 where 2 = 2 and true",
    "with gone as (delete from orders where 'a' = 'a' returning id) select count(*) from gone",
    "with a as (with b as (update orders set total = 0 returning id) select * from b) select count(*) from a",
    "merge into orders o using customers c on true when matched then delete",
    "merge into orders o using customers c on c.vip when matched then update set total = 0",
    "merge into orders o using refunds r on o.id = r.order_id when not matched by source then delete",
    "insert into orders select * from orders on conflict (id) do update set total = 0",
    "explain analyze delete from orders where 1 = 1",
    "delete from orders where id is not null",
    "update orders o set total = 0 where o.id is not null and true",
    "merge into orders o using customers c on o.id is not null when matched then delete",
];

/// Bounded look-alikes: each runs, and the state check below says what it changed.
const BOUNDED: &[&str] = &[
    "delete from orders where false",
    "delete from orders where id = 1",
    "update orders set total = 0 where id = 2",
    "delete from orders o where exists (select 1 from refunds r where r.order_id = o.id)",
    "merge into orders o using (values (4)) v(id) on o.id = v.id when matched then update set total = -4",
    "insert into orders values (5, 55) on conflict (id) do update set total = excluded.total",
    "update orders set total = total + 1 from customers c where orders.customer_id = c.id and c.closed",
    "explain delete from orders",
    "explain (costs off) merge into orders o using customers c on true when matched then delete",
    "update refunds set order_id = order_id where order_id is not null",
];

fn policy() -> serde_json::Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "deny_unbounded_writes": true } }],
        "grants": [
            { "name": "writers", "who": { "agents": ["bot-writer"] }, "resources": { "names": ["demo"] }, "access": "admin" },
            { "name": "readers", "who": { "agents": ["bot-reader"] }, "resources": { "names": ["demo"] }, "access": "read-only" }
        ]
    })
}

fn state(stack: &Stack) -> String {
    stack.pg.admin_sql("demo", "select count(*) || ' ' || sum(total) from orders").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_writes_are_refused_in_every_form_and_bounded_ones_run() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table orders (id int primary key, total int, customer_id int);
         create table customers (id int, vip bool, closed bool);
         create table refunds (order_id int);
         insert into orders select g, 10, g % 3 from generate_series(1, 100) g;
         insert into customers values (0, true, false), (1, false, true), (2, false, false);
         insert into refunds values (3);
         alter table orders owner to app; alter table customers owner to app; alter table refunds owner to app",
    );
    stack.enforce(&policy()).await;
    let before = state(&stack);
    assert_eq!(before, "100 1000");
    let writer = stack.agent_client(&stack.agent_token("bot-writer")).await.expect("connect");

    for sql in UNBOUNDED {
        // Simple protocol, then extended (Parse/Bind/Execute of the same text).
        for (protocol, result) in [
            ("simple", writer.simple_query(sql).await.map(|_| ())),
            ("extended", writer.execute(*sql, &[]).await.map(|_| ())),
        ] {
            let err = result.expect_err(&format!("{protocol}: {sql}"));
            let db = err.as_db_error().unwrap_or_else(|| panic!("{protocol} {sql}: {err}"));
            assert_eq!(db.code().code(), "42501", "{protocol} {sql}: {}", db.message());
            assert!(db.message().contains("deny_unbounded_writes"), "{protocol} {sql}: {}", db.message());
        }
        assert_eq!(state(&stack), before, "{sql} changed nothing");
    }
    for sql in BOUNDED {
        writer.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql} was refused: {e}"));
    }
    // Orders 1 and 3 deleted; 2 zeroed; 4 at -4; 5 at 55; customer 1's (closed) orders +1,
    // except the ones already changed (1 gone, 4 at -4 → -3).
    let rows = stack.pg.admin_sql(
        "demo",
        "select string_agg(id || '=' || total, ',' order by id) from orders where id <= 7 or total <> 10 and total <> 11",
    );
    assert_eq!(rows.trim(), "2=0,4=-3,5=55,6=10,7=11");
    assert_eq!(
        stack.pg.admin_sql("demo", "select count(*) from orders").trim(),
        "98",
        "only the bounded deletes removed rows"
    );

    // A plain EXPLAIN is a read: a read-only grant may plan a delete; EXPLAIN ANALYZE runs it.
    let reader = stack.agent_client(&stack.agent_token("bot-reader")).await.expect("connect");
    reader.simple_query("explain delete from orders").await.expect("planning is reading");
    let err =
        reader.simple_query("explain analyze delete from orders where id = 6").await.expect_err("runs the delete");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from orders where id = 6").trim(), "1");
    drop((writer, reader));

    // The upstream never saw a refused text (positive control: the bounded ones are there).
    let log = stack.pg.database_log("demo");
    for sql in UNBOUNDED {
        assert!(!log.lines().any(|l| l.ends_with(&format!(": {sql}"))), "{sql} reached the upstream");
    }
    for sql in BOUNDED {
        assert!(log.lines().any(|l| l.ends_with(&format!(": {sql}"))), "{sql} is in the upstream's log");
    }
    // And the record says why each was refused.
    let sessions = stack.ended_sessions(2).await;
    let writer_session = sessions.iter().find(|s| s["agent_subject"] == "bot-writer").expect("writer's session");
    let id = writer_session["id"].as_str().expect("id");
    let commands = eventually(30, "the commands to be projected", || async {
        let (_, c) = stack.api(&format!("/api/v1/sessions/{id}/commands")).await;
        let c = c.as_array()?.clone();
        (c.len() >= UNBOUNDED.len() * 2 + BOUNDED.len()).then_some(c)
    })
    .await;
    for sql in UNBOUNDED {
        let recorded: Vec<_> = commands.iter().filter(|c| c["statement"] == *sql).collect();
        assert_eq!(recorded.len(), 2, "{sql}: once per protocol");
        for c in recorded {
            assert_eq!((&c["decision"], &c["rule"]), (&json!("deny"), &json!("deny_unbounded_writes")), "{c}");
            assert_eq!(c["classification"]["unbounded_write"], true, "{c}");
        }
    }
}
