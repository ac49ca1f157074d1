//! Just-in-time approval on the PostgreSQL path: a held statement waits (the agent is told why
//! with a NoticeResponse), runs only once a quorum approves over REST, and never reaches the
//! upstream when denied, expired, or when its proxy dies while holding it. The upstream's own
//! statement log is the proof.

use serde_json::{json, Value};
use std::process::{Child, Output};
use std::time::Duration;
use tollgate_tests::{eventually, Stack};

fn policy() -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "destructive", "hold_classes": ["drop", "unbounded_write"], "approver_groups": ["dba"], "timeout_secs": 60 },
            { "name": "schema", "hold_classes": ["alter"], "approver_groups": ["dba"], "quorum": 2, "timeout_secs": 60 },
            { "name": "quick", "hold_classes": ["truncate"], "approver_groups": ["dba"], "timeout_secs": 2 }
        ]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

async fn stack() -> Stack {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE victims (id int); CREATE TABLE keepme (id int); CREATE TABLE staged (id int); \
         INSERT INTO staged VALUES (1), (2); \
         ALTER TABLE victims OWNER TO app; ALTER TABLE keepme OWNER TO app; ALTER TABLE staged OWNER TO app",
    );
    let version = stack.put_policy(&policy()).await;
    eventually(10, "the proxy to load the approval rules", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    stack
}

/// The one pending request, once projected.
async fn pending(stack: &Stack) -> Value {
    eventually(20, "a pending approval request", || async {
        let (status, list) = stack.api("/api/v1/approvals?status=pending").await;
        let items = list.as_array()?.clone();
        (status == 200 && items.len() == 1).then(|| items[0].clone())
    })
    .await
}

async fn decide(stack: &Stack, id: &str, verdict: &str, who: &str, groups: &[&str]) -> (u16, Value) {
    let token = stack.person_token(who, groups);
    let body = json!({ "reason": format!("{who} says {verdict}") });
    stack.api_send("POST", &format!("/api/v1/approvals/{id}/{verdict}"), Some(&token), Some(&body)).await
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql output")).await.expect("join")
}

fn ran(stack: &Stack, statement: &str) -> bool {
    stack.pg.database_log("demo").contains(statement)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_drop_runs_once_approved_over_rest() {
    let stack = stack().await;
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", "DROP TABLE victims"]);
    let request = pending(&stack).await;
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(request["statement"], "DROP TABLE victims");
    assert_eq!(request["rule"], "destructive");
    assert_eq!(request["agent"]["name"], "deploy-bot");
    assert_eq!(request["classes"], json!(["drop"]));
    assert!(!ran(&stack, "DROP TABLE victims"), "held: not at the upstream yet");

    let (status, accepted) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202, "{accepted}");
    let out = finish(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("waiting for approval {id}")), "the agent was told: {}", stderr(&out));
    assert!(ran(&stack, "DROP TABLE victims"));
    assert_eq!(stack.pg.admin_sql("demo", "SELECT count(*) FROM pg_tables WHERE tablename = 'victims'").trim(), "0");

    // The record: the command was held, requested, decided by alice, and then it ran.
    let decided = eventually(20, "the decision to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "approved").then_some(a)
    })
    .await;
    assert_eq!(decided["decisions"][0]["approver_name"], "alice@example.com");
    assert_eq!(decided["decisions"][0]["channel"], "rest");
    let session = decided["session_id"].as_str().unwrap();
    let events = eventually(20, "the session's events", || async {
        let (_, page) = stack.api(&format!("/api/v1/sessions/{session}/events")).await;
        let events = page.as_array()?.clone();
        events.iter().any(|e| e["type"] == "session.ended").then_some(events)
    })
    .await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    // The release is on record before the statement runs.
    assert_eq!(
        types,
        ["session.started", "command", "approval.requested", "approval.released", "command.result", "session.ended"]
    );
    assert_eq!(events[1]["event"]["payload"]["decision"], "hold");
    assert_eq!(events[1]["event"]["payload"]["approval_id"], id.as_str());
    assert_eq!(events[3]["event"]["payload"]["approval_id"], id.as_str());
    assert_eq!(events[3]["event"]["payload"]["command_id"], events[1]["event"]["id"]);
    assert_eq!(events[4]["event"]["payload"]["outcome"], "ok");
    let released = eventually(20, "the release to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (!a["released_at"].is_null()).then_some(a)
    })
    .await;
    assert_eq!(
        released["released_by"][0].as_str().map(|s| s.starts_with("alice@example.com (")),
        Some(true),
        "{released}"
    );
    let (_, verified) = stack.api(&format!("/api/v1/sessions/{session}/verify")).await;
    assert_eq!((verified["complete"].as_bool(), verified["linked"].as_bool()), (Some(true), Some(true)), "{verified}");
    assert_eq!(verified["problems"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_expired_statements_never_reach_the_upstream() {
    let stack = stack().await;
    let token = stack.agent_token("cleanup-bot");
    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM staged"]);
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    let (status, _) = decide(&stack, &id, "deny", "bob@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    let out = finish(child).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("denied by bob@example.com"), "{}", stderr(&out));
    assert!(stderr(&out).contains("bob@example.com says deny"), "the reason reaches the agent: {}", stderr(&out));
    assert!(!ran(&stack, "DELETE FROM staged"));
    assert_eq!(stack.pg.admin_sql("demo", "SELECT count(*) FROM staged").trim(), "2");

    // Nobody decides within the rule's two seconds.
    let out = stack.psql(&token, None, &["-c", "TRUNCATE staged"], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not approved in time"), "{}", stderr(&out));
    assert!(!ran(&stack, "TRUNCATE staged"));
    let expired = eventually(20, "the expiry to be projected", || async {
        // Past its deadline it reads as expired at once; the proxy's event then says why.
        let (_, list) = stack.api("/api/v1/approvals?status=expired").await;
        list.as_array()?.first().filter(|a| !a["expiry_reason"].is_null()).cloned()
    })
    .await;
    assert_eq!(expired["expiry_reason"], "timeout");
    // Deciding after the fact is refused.
    let (status, problem) =
        decide(&stack, expired["id"].as_str().unwrap(), "approve", "bob@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 409, "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_two_and_who_may_decide() {
    let stack = stack().await;
    let child = stack.psql_spawn(
        &stack.agent_token("carol@example.com"),
        None,
        &["-c", "ALTER TABLE keepme ADD COLUMN note text"],
    );
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/approvals/{id}/approve");

    // Refused: no token, an agent's token, a reviewer without the approver role, an approver
    // outside the rule's groups, the agent's own person.
    let (status, _) = stack.api_send("POST", &path, None, Some(&json!({}))).await;
    assert_eq!(status, 401);
    let (status, _) =
        stack.api_send("POST", &path, Some(&stack.agent_token("carol@example.com")), Some(&json!({}))).await;
    assert_eq!(status, 401, "an agent token is never an approver's");
    let (status, _) = decide(&stack, &id, "approve", "rita@example.com", &["reviewers", "dba"]).await;
    assert_eq!(status, 403);
    let (status, problem) = decide(&stack, &id, "approve", "otto@example.com", &["approvers", "ops"]).await;
    assert_eq!(status, 403, "{problem}");
    let (status, problem) = decide(&stack, &id, "approve", "carol@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 403, "own request: {problem}");

    let (status, _) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    eventually(20, "alice's decision to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["decisions"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let (status, problem) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 409, "one vote per person: {problem}");
    let refused = eventually(20, "refusals to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        let refusals = a["refusals"].as_array()?.clone();
        (refusals.len() >= 3).then_some(refusals)
    })
    .await;
    let statuses: Vec<i64> = refused.iter().filter_map(|r| r["status"].as_i64()).collect();
    // (Refusals by the role layer, before a request is even looked at, are logged, not events.)
    assert_eq!(statuses, [403, 403, 409], "wrong group, own request, twice: {refused:?}");
    assert_eq!(refused[1]["who"], "carol@example.com");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ran(&stack, "ADD COLUMN note"), "one approval of two keeps it held");

    let (status, _) = decide(&stack, &id, "approve", "bob@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    let out = finish(child).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ran(&stack, "ADD COLUMN note"));
    let approved = eventually(20, "approved", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "approved").then_some(a)
    })
    .await;
    assert_eq!(approved["decisions"].as_array().unwrap().len(), 2);
    let (status, _) = decide(&stack, &id, "deny", "dave@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 409, "a decided request takes no more decisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_while_holding_never_runs_the_statement() {
    let stack = stack().await;
    // The second node runs on its own runtime, so it can be stopped the way a crash stops it:
    // every task dropped where it stands, no cleanup code run, no event published.
    let config = stack.proxy_config("proxy-b");
    let (started, addr) = std::sync::mpsc::channel();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let node = std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let proxy = runtime.block_on(tollgate_data_plane::Proxy::start(config)).expect("second proxy");
        started.send(proxy.postgres_addr).expect("address");
        let _ = killed.recv();
        std::mem::forget(proxy);
        runtime.shutdown_background();
    });
    let addr = tokio::task::spawn_blocking(move || addr.recv().expect("second proxy address")).await.expect("join");
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), Some(addr.port()), &["-c", "DROP TABLE keepme"]);
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    kill.send(()).expect("kill");
    tokio::task::spawn_blocking(move || node.join()).await.expect("join").expect("node thread");
    let out = finish(child).await;
    assert!(!out.status.success(), "the agent lost its connection");
    let (status, _) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202, "the request is still pending as far as the control plane knows");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!ran(&stack, "DROP TABLE keepme"), "approved after its proxy died: never executed");
    assert_eq!(stack.pg.admin_sql("demo", "SELECT count(*) FROM pg_tables WHERE tablename = 'keepme'").trim(), "1");
}

/// Wait until every proxy can see the standing approval (it is in the grants bucket).
async fn standing(stack: &Stack, id: &str) {
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let key = tollgate_shared::names::grant_key(uuid::Uuid::parse_str(id).expect("uuid"));
    eventually(20, "the standing approval to be stored", || async {
        let store = js.get_key_value(tollgate_shared::names::GRANTS_BUCKET).await.ok()?;
        store.get(&key).await.ok()?.map(|_| ())
    })
    .await;
    eventually(20, "the proxy to load it", || async { (stack.proxy.standing_approvals() >= 1).then_some(()) }).await;
}

fn commands_of(messages: &[Vec<u8>], statement: &str) -> Vec<Value> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .filter(|e| e["type"] == "command" && e["payload"]["statement"] == statement)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_for_thirty_minutes_later_commands_run_unheld_and_say_so() {
    let stack = stack().await;
    let token = stack.agent_token("deploy-bot");
    let child = stack.psql_spawn(&token, None, &["-c", "DELETE FROM staged"]);
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    let approver = stack.person_token("alice@example.com", &["approvers", "dba"]);
    let body = json!({ "reason": "nightly cleanup", "grant_minutes": 30 });
    let (status, _) =
        stack.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&approver), Some(&body)).await;
    assert_eq!(status, 202);
    assert!(finish(child).await.status.success());
    standing(&stack, &id).await;

    // The same agent, the same class of statement: runs at once, recorded under the approval.
    stack.pg.admin_sql("demo", "INSERT INTO staged VALUES (3)");
    let out = stack.psql(&token, None, &["-c", "DELETE FROM staged"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stack.pg.admin_sql("demo", "SELECT count(*) FROM staged").trim(), "0");
    let commands = commands_of(&stack.stream_messages().await, "DELETE FROM staged");
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[1]["payload"]["decision"], "allow");
    assert_eq!(commands[1]["payload"]["rule"], "standing_approval:destructive");
    assert_eq!(commands[1]["payload"]["approval_id"], id.as_str());

    // Another agent is not covered: held again.
    let child = stack.psql_spawn(&stack.agent_token("other-bot"), None, &["-c", "DELETE FROM staged"]);
    let other = pending(&stack).await;
    assert_eq!(other["agent"]["name"], "other-bot");
    let (status, _) =
        decide(&stack, other["id"].as_str().unwrap(), "deny", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    assert!(!finish(child).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_asks_ahead_of_its_run() {
    let stack = stack().await;
    let lead = stack.person_token("lead@example.com", &["approvers", "dba"]);
    let ask = json!({ "resource": "demo", "agent": "release-bot", "classes": ["drop"], "minutes": 10,
                      "reason": "release 1.2 drops the victims table; questions to lead@example.com" });
    let (status, accepted) = stack.api_send("POST", "/api/v1/approvals", Some(&lead), Some(&ask)).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["rule"], "destructive");
    let id = accepted["approval_id"].as_str().unwrap().to_owned();
    let request = pending(&stack).await;
    assert_eq!(request["grant_minutes"], 10);
    assert!(request["statement"].as_str().unwrap().contains("[masked:email]"), "the reason is masked: {request}");
    let bad = json!({ "resource": "demo", "agent": "release-bot", "classes": ["select"], "minutes": 10 });
    let (status, problem) = stack.api_send("POST", "/api/v1/approvals", Some(&lead), Some(&bad)).await;
    assert_eq!(status, 400, "no rule holds select: {problem}");

    let (status, problem) = decide(&stack, &id, "approve", "lead@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 403, "whoever asked does not approve: {problem}");
    let (status, _) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    standing(&stack, &id).await;
    let out = stack.psql(&stack.agent_token("release-bot"), None, &["-c", "DROP TABLE victims"], None);
    assert!(out.status.success(), "approved ahead: not held: {}", stderr(&out));
    assert!(!stderr(&out).contains("waiting for approval"));
    assert!(ran(&stack, "DROP TABLE victims"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_are_held_too_and_other_sessions_go_on() {
    let stack = stack().await;
    let held = stack.agent_client(&stack.agent_token("driver-bot")).await.expect("connect");
    // tokio-postgres: Parse/Describe/Sync, then Bind/Execute/Sync for the held Execute.
    let execute = tokio::spawn(async move { held.execute("DROP TABLE keepme", &[]).await });
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();

    // Meanwhile another agent's session is not blocked.
    let other = stack.agent_client(&stack.agent_token("reader-bot")).await.expect("connect");
    let rows = tokio::time::timeout(Duration::from_secs(5), other.query("SELECT count(*) FROM staged", &[]))
        .await
        .expect("another session answers while one is held")
        .expect("query");
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    assert!(!ran(&stack, "DROP TABLE keepme"));

    let (status, _) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 202);
    let result = tokio::time::timeout(Duration::from_secs(10), execute).await.expect("released").expect("join");
    assert!(result.is_ok(), "{result:?}");
    assert!(ran(&stack, "DROP TABLE keepme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_shut_down_while_holding_records_the_request_as_ended() {
    let stack = stack().await;
    let second = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-b")).await.expect("second proxy");
    let child = stack.psql_spawn(
        &stack.agent_token("deploy-bot"),
        Some(second.postgres_addr.port()),
        &["-c", "DROP TABLE keepme"],
    );
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    second.shutdown(Duration::from_secs(5)).await;
    let out = finish(child).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("shutting down"), "{}", stderr(&out));
    let ended = eventually(20, "the request to be closed", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "expired").then_some(a)
    })
    .await;
    assert_eq!(ended["expiry_reason"], "session_ended");
    let (status, _) = decide(&stack, &id, "approve", "alice@example.com", &["approvers", "dba"]).await;
    assert_eq!(status, 409, "nothing left to approve");
    assert!(!ran(&stack, "DROP TABLE keepme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_withdraws_a_held_statement() {
    let stack = stack().await;
    let client = stack.agent_client(&stack.agent_token("deploy-bot")).await.expect("connect");
    let cancel = client.cancel_token();
    let held = tokio::spawn(async move { client.simple_query("DROP TABLE keepme").await.map(|_| ()) });
    let id = pending(&stack).await["id"].as_str().unwrap().to_owned();
    cancel.cancel_query(tokio_postgres::NoTls).await.expect("cancel request sent");
    let error =
        tokio::time::timeout(Duration::from_secs(10), held).await.expect("withdrawn").expect("join").unwrap_err();
    let db = error.as_db_error().expect("an error from the server side");
    assert_eq!(db.code().code(), "57014");
    assert!(db.message().contains("withdrawn by a cancel request"), "{}", db.message());
    let ended = eventually(20, "the withdrawal to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "expired").then_some(a)
    })
    .await;
    assert_eq!(ended["expiry_reason"], "canceled");
    assert!(!ran(&stack, "DROP TABLE keepme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_approval_stands_for_its_rule_and_relations_only() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "CREATE TABLE orders (id int); CREATE TABLE payments (id int); ALTER TABLE orders OWNER TO app; ALTER TABLE payments OWNER TO app");
    let rules = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "schema", "hold_classes": ["alter"], "approver_groups": ["dba"], "timeout_secs": 60 },
            { "name": "payments", "hold_classes": ["alter"], "relations": ["payments"], "approver_groups": ["dba"], "quorum": 2, "timeout_secs": 2 }
        ]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.put_policy(&rules).await;
    eventually(10, "the rules", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;
    let token = stack.agent_token("migrate-bot");
    // Held under the lenient rule, approved for 30 minutes.
    let child = stack.psql_spawn(&token, None, &["-c", "ALTER TABLE orders ADD COLUMN a int"]);
    let request = pending(&stack).await;
    assert_eq!((request["rule"].as_str(), request["relations"].clone()), (Some("schema"), json!(["orders"])));
    let token_ann = stack.person_token("ann@example.com", &["approvers", "dba"]);
    let body = json!({ "reason": "migration", "grant_minutes": 30 });
    let id = request["id"].as_str().unwrap();
    let (status, answer) =
        stack.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&token_ann), Some(&body)).await;
    assert_eq!(status, 202, "{answer}");
    assert!(finish(child).await.status.success());
    eventually(10, "the standing approval to reach the proxy", || async {
        (stack.proxy.standing_approvals() == 1).then_some(())
    })
    .await;
    // The same rule, the same relation: runs at once, under the standing approval.
    let out = stack.psql(&token, None, &["-c", "ALTER TABLE orders ADD COLUMN b int"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    // Another relation that the stricter rule holds: its quorum of two is still needed.
    let child = stack.psql_spawn(&token, None, &["-c", "ALTER TABLE payments ADD COLUMN c int"]);
    let stricter = eventually(20, "the stricter request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.iter().find(|a| a["rule"] == "payments").cloned()
    })
    .await;
    assert_eq!(stricter["quorum"], 2);
    let out = finish(child).await;
    assert!(!out.status.success() && stderr(&out).contains("not approved in time"), "{}", stderr(&out));
    assert!(ran(&stack, "ALTER TABLE orders ADD COLUMN b int"));
    assert!(!ran(&stack, "ALTER TABLE payments ADD COLUMN c int"));
    let commands: Vec<Value> = stack
        .stream_messages()
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .filter(|e| e["type"] == "command")
        .map(|e| e["payload"].clone())
        .collect();
    let unheld = commands.iter().find(|c| c["statement"] == "ALTER TABLE orders ADD COLUMN b int").unwrap();
    assert_eq!(
        (unheld["decision"].as_str(), unheld["rule"].as_str()),
        (Some("allow"), Some("standing_approval:schema"))
    );
}
