//! `tollgate-control rebuild`: the views recreated from the event stream into an empty schema
//! equal the live ones, row for row, for every table the events make.

use serde_json::json;
use tollgate_tests::{eventually, Stack};

/// Tables the events make, and the columns that hold when a row was written rather than what
/// the record says (left out of the comparison).
const TABLES: &[(&str, &[&str])] = &[
    ("events", &["projected_at"]),
    ("agents", &[]),
    ("sessions", &[]),
    ("commands", &[]),
    ("command_results", &[]),
    ("auth_failures", &[]),
    ("policy_versions", &[]),
    ("approvals", &[]),
    ("approval_decisions", &[]),
    ("approval_refusals", &[]),
    ("node_keys", &[]),
    ("rejected_events", &["id", "received_at"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_views_equal_the_live_ones() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE victims (id int); INSERT INTO victims VALUES (1), (2); ALTER TABLE victims OWNER TO app",
    );
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "guardrails": { "deny_classes": ["truncate"] },
            "approvals": [{ "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;

    // Allowed, denied, held and approved commands from two bots; a refused login.
    let client = stack.agent_client(&stack.agent_token("reader-bot")).await.expect("connect");
    client.simple_query("select count(*) from victims").await.expect("select");
    client.simple_query("TRUNCATE victims").await.expect_err("truncate is denied");
    drop(client);
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", "DROP TABLE victims"]);
    stack.approve_pending("alice@example.com", &["approvers", "dba"], "planned").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stack.agent_client("not-a-token").await.is_err());
    stack.ended_sessions(2).await;
    let live = |table: &str| stack.pg.admin_sql("tollgate", &format!("select count(*) from public.{table}"));
    eventually(20, "the refused login and the release to be projected", || async {
        let released = stack.pg.admin_sql("tollgate", "select count(*) from approvals where released_at is not null");
        (live("auth_failures").trim() != "0" && released.trim() == "1").then_some(())
    })
    .await;

    let rebuilt =
        tollgate_control_plane::projector::rebuild::rebuild(&stack.control_config(), "rebuilt").await.expect("rebuild");
    let stream = stack.stream_messages().await.len() as u64;
    assert!(rebuilt.messages > 0 && rebuilt.projected >= stream, "{rebuilt:?} ({stream} events on the stream)");
    assert_eq!((rebuilt.first_sequence, rebuilt.messages), (1, rebuilt.last_sequence), "the whole stream: {rebuilt:?}");

    // Every table equal, both ways (positive control: each holds rows).
    for (table, left_out) in TABLES {
        let columns = stack.pg.admin_sql(
            "tollgate",
            &format!(
                "select string_agg(column_name, ', ' order by ordinal_position) from information_schema.columns
                 where table_schema = 'public' and table_name = '{table}'"
            ),
        );
        let columns: Vec<&str> =
            columns.trim().split(", ").filter(|c| !left_out.contains(c) && !c.is_empty()).collect();
        assert!(!columns.is_empty(), "{table} has columns");
        let columns = columns.join(", ");
        let differ = stack.pg.admin_sql(
            "tollgate",
            &format!(
                "select count(*) from ((select {columns} from public.{table} except all select {columns} from rebuilt.{table})
                 union all (select {columns} from rebuilt.{table} except all select {columns} from public.{table})) d"
            ),
        );
        assert_eq!(differ.trim(), "0", "{table}: the rebuilt rows differ from the live ones");
        let rows = live(table);
        if !["rejected_events", "approval_refusals"].contains(table) {
            assert_ne!(rows.trim(), "0", "{table} holds rows to compare");
        }
    }

    // A second rebuild into the same schema is refused, not mixed in.
    let again = tollgate_control_plane::projector::rebuild::rebuild(&stack.control_config(), "rebuilt").await;
    assert!(again.expect_err("schema exists").to_string().contains("does not exist yet"));
    let bad = tollgate_control_plane::projector::rebuild::rebuild(&stack.control_config(), "public").await;
    assert!(bad.expect_err("public refused").to_string().contains("not public"));
}
