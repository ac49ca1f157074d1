//! A session's transcript: its commands in order with decisions, the approval behind a held one
//! (who decided, how, why) and masked results, as JSON and as plain text, with the session's
//! verification; a view edited behind the record's back shows in the transcript too.

use serde_json::json;
use tollgate_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_shows_commands_decisions_approvals_and_masked_results() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); ALTER TABLE victims OWNER TO app");
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "guardrails": { "deny_classes": ["truncate"] },
            "approvals": [{ "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    stack.enforce(&policy).await;

    // One session: a read whose answer holds an address, a denied TRUNCATE, a held DROP.
    let client = stack.agent_client(&stack.agent_token("deploy-bot")).await.expect("connect");
    let rows = client.simple_query("select 'owner bob@example.com' as note").await.expect("select");
    let answered = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    assert!(!answered.contains("bob@example.com"), "masked for the agent: {answered}");
    client.simple_query("TRUNCATE victims").await.expect_err("denied");
    // A statement carrying a terminal escape and a carriage return: printed escaped.
    client.simple_query("select '\u{1b}[2J\rVerification: trusted' as x").await.expect("select");
    let held = tokio::spawn(async move {
        let outcome = client.simple_query("DROP TABLE victims").await.map(|_| ());
        drop(client);
        outcome
    });
    let approval = stack.approve_pending("alice@example.com", &["approvers", "dba"], "planned cleanup").await;
    held.await.expect("join").expect("the DROP ran once approved");
    let session = stack.ended_sessions(1).await.remove(0);
    let id = session["id"].as_str().expect("id").to_owned();

    let (status, transcript) = stack.api(&format!("/api/v1/sessions/{id}/transcript")).await;
    assert_eq!(status, 200, "{transcript}");
    assert_eq!(transcript["verification"]["trusted"], true, "{transcript}");
    assert_eq!(transcript["session"]["agent_name"], "deploy-bot");
    assert_eq!(transcript["ended"], "client_closed", "{transcript}");
    let commands = transcript["commands"].as_array().expect("commands");
    let seen: Vec<(&str, &str)> = commands
        .iter()
        .map(|c| (c["statement"].as_str().unwrap_or(""), c["decision"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            ("select 'owner [masked:email]' as note", "allow"),
            ("TRUNCATE victims", "deny"),
            ("select '\u{1b}[2J\rVerification: trusted' as x", "allow"),
            ("DROP TABLE victims", "hold")
        ],
        "{transcript}"
    );
    assert_eq!(commands[0]["result"]["outcome"], "ok");
    assert_eq!(commands[0]["result"]["rows"], 1);
    assert_eq!(commands[0]["result"]["masked"], json!(["email ×1"]), "{transcript}");
    assert_eq!(commands[1]["rule"], "deny_classes:truncate");
    assert_eq!(commands[1]["result"]["outcome"], "error", "the stand-in the upstream refused: {transcript}");
    let approval_seen = &commands[3]["approval"];
    assert_eq!(approval_seen["id"], approval.as_str());
    assert_eq!(approval_seen["rule"], "destructive");
    assert_eq!(approval_seen["outcome"], "released");
    assert_eq!(approval_seen["decisions"][0]["verdict"], "approve", "{transcript}");
    assert_eq!(approval_seen["decisions"][0]["approver"], "alice@example.com");
    assert_eq!(approval_seen["decisions"][0]["reason"], "planned cleanup");
    assert_eq!(commands[3]["result"]["tags"], json!(["DROP TABLE"]));

    // The same as text.
    let (status, content_type, text) = stack.api_text(&format!("/api/v1/sessions/{id}/transcript?format=text")).await;
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(text.contains("Agent deploy-bot") && text.contains("Verification: trusted"), "{text}");
    assert!(text.contains("DENY (deny_classes:truncate) [simple]\n    TRUNCATE victims\n  -> error, 0 rows"), "{text}");
    assert!(text.contains("approve by alice@example.com via rest"), "{text}");
    assert!(text.contains("masked email ×1") && !text.contains("bob@example.com"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "no control character reaches the reader: {text}");
    assert!(text.contains("    select '\\u{1b}[2J\\rVerification: trusted' as x"), "{text}");
    let (status, _) = stack.api(&format!("/api/v1/sessions/{id}/transcript?format=pdf")).await;
    assert_eq!(status, 400);

    // A view row edited behind the record's back: the transcript says it is not to be trusted.
    stack.pg.admin_sql("tollgate", "update commands set statement = 'select 1' where statement like 'DROP%'");
    let (_, text) = {
        let (status, _, text) = stack.api_text(&format!("/api/v1/sessions/{id}/transcript?format=text")).await;
        (status, text)
    };
    assert!(text.contains("Verification: NOT TRUSTED") && text.contains("differs from the recorded event"), "{text}");
}
