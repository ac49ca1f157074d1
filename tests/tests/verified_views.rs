//! The views cannot lie: a row of the commands or results view edited, added or removed behind
//! the record's back is reported by a session's verification, which re-derives the rows from the
//! stored event bytes.

use serde_json::Value;
use tollgate_tests::{eventually, Stack};

async fn verify(stack: &Stack, session: &str) -> Value {
    let (status, report) = stack.api(&format!("/api/v1/sessions/{session}/verify")).await;
    assert_eq!(status, 200, "{report}");
    report
}

fn problems(report: &Value) -> Vec<String> {
    report["problems"].as_array().expect("problems").iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_added_and_removed_view_rows_are_reported() {
    let mut stack = Stack::start().await;
    let client = stack.agent_client(&stack.agent_token("bot-views")).await.expect("connect");
    client.simple_query("create table victims (id int)").await.expect("create");
    client.simple_query("insert into victims values (1), (2)").await.expect("insert");
    client.simple_query("delete from victims where id = 1").await.expect("delete");
    drop(client);
    let session = stack.ended_sessions(1).await.remove(0);
    let id = session["id"].as_str().expect("id").to_owned();
    let sql = |q: &str| stack.pg.admin_sql("tollgate", q);

    // Positive control: as projected, the views say what the events say.
    let clean = verify(&stack, &id).await;
    assert_eq!((clean["views_match"].as_bool(), clean["trusted"].as_bool()), (Some(true), Some(true)), "{clean}");
    assert_eq!(sql(&format!("select count(*) from commands where session_id = '{id}'")).trim(), "3");

    // Rows projected before fingerprints existed have none: verification names the column, and
    // the control plane fills them in when it starts.
    sql(&format!("update commands set fingerprint = null where session_id = '{id}'"));
    let found = problems(&verify(&stack, &id).await);
    assert_eq!(found.iter().filter(|p| p.ends_with("in: fingerprint")).count(), 3, "{found:?}");
    stack.control = tollgate_control_plane::Control::start(stack.control_config()).await.expect("control plane");
    eventually(20, "the fingerprints to be filled in", || async {
        let report = verify(&stack, &id).await;
        (report["views_match"] == true).then_some(())
    })
    .await;
    assert_eq!(
        sql(&format!("select count(distinct fingerprint) from commands where session_id = '{id}' and fingerprint ~ '^[0-9a-f]{{16}}$'"))
            .trim(),
        "3"
    );

    // A reviewer would read an innocent statement where the agent deleted rows.
    let deleted = sql("select event_id from commands where statement like 'delete%'").trim().to_owned();
    assert!(!deleted.is_empty(), "the delete is in the view");
    sql(&format!("update commands set statement = 'select 1', decision = 'deny' where event_id = '{deleted}'"));
    let report = verify(&stack, &id).await;
    assert_eq!((report["views_match"].as_bool(), report["trusted"].as_bool()), (Some(false), Some(false)), "{report}");
    assert_eq!(report["linked"], true, "the events themselves are intact: {report}");
    let found = problems(&report);
    assert!(
        found.iter().any(|p| p.contains(&deleted) && p.ends_with("in: statement, decision")),
        "the edited row and its columns are named: {found:?}"
    );

    // A result row removed, and one edited (rows affected).
    let insert = sql("select event_id from commands where statement like 'insert%'").trim().to_owned();
    let removed = sql(&format!("delete from command_results where command_id = '{insert}' returning event_id"));
    let removed = removed.lines().next().unwrap_or_default().trim().to_owned();
    assert!(!removed.is_empty(), "a result was removed");
    sql(&format!("update command_results set rows = 0 where command_id = '{deleted}'"));
    // A command the agent never sent, added to the view.
    let forged = "00000000-0000-7000-8000-000000000001";
    sql(&format!(
        "insert into commands (event_id, session_id, seq, at, agent_id, resource, protocol, statement, decision)
         select '{forged}', session_id, 99, at, agent_id, resource, protocol, 'select harmless', 'allow'
         from commands where event_id = '{deleted}'"
    ));
    // A result planted under another session, naming the insert (whose own result is gone).
    let planted = "00000000-0000-7000-8000-000000000002";
    sql(&format!(
        "insert into command_results (event_id, command_id, session_id, at, outcome, tags, rows, duration_us)
         values ('{planted}', '{insert}', '00000000-0000-7000-8000-0000000000ff', now(), 'ok', '{{}}', 0, 0)"
    ));
    let (_, served) = stack.api(&format!("/api/v1/sessions/{id}/commands")).await;
    let served_insert = served.as_array().and_then(|c| c.iter().find(|c| c["event_id"] == insert.as_str()).cloned());
    assert_eq!(
        served_insert.map(|c| c["outcome"].clone()),
        Some(Value::Null),
        "another session's result is not served"
    );
    let report = verify(&stack, &id).await;
    let found = problems(&report);
    assert!(found.iter().any(|p| p.contains(planted) && p.contains("no stored event records")), "{found:?}");
    assert!(found.iter().any(|p| p.contains(&removed) && p.contains("missing from the results view")), "{found:?}");
    assert!(
        found.iter().any(|p| p.contains(&deleted) && p.contains("results view differs") && p.ends_with("in: rows")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.contains(forged) && p.contains("no stored event records")), "{found:?}");
    assert_eq!(report["trusted"], false);

    // The session handed to another agent, ended otherwise, in the sessions view.
    sql(&format!(
        "insert into agents (id, issuer, subject, name, first_seen, last_seen)
         values ('00000000-0000-7000-8000-0000000000aa', 'x', 'scapegoat', 'scapegoat', now(), now());
         update sessions set agent_id = '00000000-0000-7000-8000-0000000000aa', end_reason = 'server_closed' where id = '{id}'"
    ));
    let found = problems(&verify(&stack, &id).await);
    assert!(
        found.iter().any(|p| p == "the sessions view differs from the recorded events in: agent_id, end_reason"),
        "{found:?}"
    );

    // A command row removed from the view.
    sql(&format!("delete from commands where event_id = '{insert}'"));
    let found = problems(&verify(&stack, &id).await);
    assert!(found.iter().any(|p| p.contains(&insert) && p.contains("missing from the commands view")), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_a_deleted_and_two_reordered_events_are_reported() {
    let stack = Stack::start().await;
    let token = stack.agent_token("bot-chain");
    for n in 0..3 {
        let client = stack.agent_client(&token).await.expect("connect");
        client.simple_query(&format!("select {n}")).await.expect("select");
        client.simple_query("select 'second'").await.expect("select");
        drop(client);
        stack.ended_sessions(n + 1).await;
    }
    let sessions = stack.ended_sessions(3).await;
    let ids: Vec<String> = sessions.iter().map(|s| s["id"].as_str().expect("id").to_owned()).collect();
    let sql = |q: &str| stack.pg.admin_sql("tollgate", q);
    for id in &ids {
        let clean = verify(&stack, id).await;
        assert_eq!(clean["trusted"], true, "positive control: {clean}");
    }

    // Edited: the stored bytes of a command say something else.
    sql(&format!(
        "update events set raw = convert_to(replace(convert_from(raw, 'UTF8'), 'second', 'edited'), 'UTF8')
         where session_id = '{}' and type = 'command' and convert_from(raw, 'UTF8') like '%second%'",
        ids[0]
    ));
    let report = verify(&stack, &ids[0]).await;
    assert_eq!((report["linked"].as_bool(), report["trusted"].as_bool()), (Some(false), Some(false)), "{report}");
    assert!(problems(&report).iter().any(|p| p.contains("does not link to the event before it")), "{report}");

    // Deleted: one event gone.
    sql(&format!("delete from events where session_id = '{}' and seq = 2", ids[1]));
    let report = verify(&stack, &ids[1]).await;
    assert_eq!(report["trusted"], false, "{report}");
    assert!(problems(&report).iter().any(|p| p.contains("expected seq 2, found 3")), "{report}");

    // Reordered: two events swap places.
    sql(&format!(
        "update events set seq = case seq when 1 then 2 else 1 end where session_id = '{}' and seq in (1, 2)",
        ids[2]
    ));
    let report = verify(&stack, &ids[2]).await;
    assert_eq!(report["trusted"], false, "{report}");
    assert!(problems(&report).iter().any(|p| p.contains("expected seq 1, found 2")), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_and_removed_approval_rows_are_reported() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); ALTER TABLE victims OWNER TO app");
    let policy = serde_json::json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "approvals": [{ "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"],
                            "quorum": 2, "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", "DROP TABLE victims"]);
    let approval = stack.approve_pending("alice@example.com", &["approvers", "dba"], "first").await;
    let bob = stack.person_token("bob@example.com", &["approvers", "dba"]);
    let second = serde_json::json!({ "reason": "second" });
    let (status, body) =
        stack.api_send("POST", &format!("/api/v1/approvals/{approval}/approve"), Some(&bob), Some(&second)).await;
    assert_eq!(status, 202, "{body}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = stack.ended_sessions(1).await.remove(0)["id"].as_str().expect("id").to_owned();
    let sql = |q: &str| stack.pg.admin_sql("tollgate", q);

    // Positive control: the request, both decisions and the release are in the views, as
    // recorded; the session verifies clean.
    let clean = verify(&stack, &id).await;
    assert_eq!((clean["views_match"].as_bool(), clean["trusted"].as_bool()), (Some(true), Some(true)), "{clean}");
    assert_eq!(
        sql(&format!(
            "select status || ' ' || (released_at is not null) || ' ' ||
                    (select count(*) from approval_decisions d where d.approval_id = a.id)
             from approvals a where id = '{approval}'"
        ))
        .trim(),
        "approved true 2"
    );

    // Reviewers would read that someone else approved, for another reason, on a tamer rule.
    sql(&format!(
        "update approval_decisions set approver_name = 'carol@example.com', reason = 'routine'
         where approval_id = '{approval}' and reason = 'first'"
    ));
    sql(&format!("update approvals set rule = 'routine', quorum = 1 where id = '{approval}'"));
    let report = verify(&stack, &id).await;
    assert_eq!((report["views_match"].as_bool(), report["trusted"].as_bool()), (Some(false), Some(false)), "{report}");
    let found = problems(&report);
    assert!(
        found.iter().any(|p| p.contains("decisions view differs") && p.ends_with("in: reason, approver_name")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.contains(&approval) && p.ends_with("in: rule, quorum")), "{found:?}");

    // A decision removed (the quorum now looks short of what released the command), and a
    // request that was approved shown as denied.
    let removed = sql(&format!(
        "delete from approval_decisions where approval_id = '{approval}' and reason = 'second' returning event_id"
    ));
    let removed = removed.lines().next().unwrap_or_default().trim().to_owned();
    assert!(!removed.is_empty(), "a decision was removed");
    sql(&format!("update approvals set status = 'denied' where id = '{approval}'"));
    let found = problems(&verify(&stack, &id).await);
    assert!(found.iter().any(|p| p.contains(&removed) && p.contains("missing from the decisions view")), "{found:?}");
    assert!(found.iter().any(|p| p.contains(&approval) && p.contains("status")), "{found:?}");

    // The whole request removed from the view.
    sql(&format!("delete from approvals where id = '{approval}'"));
    let found = problems(&verify(&stack, &id).await);
    assert!(found.iter().any(|p| p.contains(&approval) && p.contains("missing from the approvals view")), "{found:?}");
}
