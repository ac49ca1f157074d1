//! Deciding from Slack and from signed webhooks. A local fake of Slack's Web API receives the
//! request message and its update; callbacks are signed as Slack signs them. Every forged,
//! stale, replayed or unauthorised attempt is refused with a clear status and recorded as an
//! `approval.refused` event; outbound webhooks carry a verifiable signature and are retried.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tollgate_control_plane::config::{ControlConfig, InboundWebhookConfig, PersonConfig, SlackConfig, WebhookConfig};
use tollgate_control_plane::signing::sign_hex;
use tollgate_shared::config::SecretRef;
use tollgate_tests::{eventually, Stack};

const SLACK_SECRET: &str = "slack-signing-secret-for-tests";
const WEBHOOK_SECRET: &str = "outbound-webhook-secret";
const INBOUND_SECRET: &str = "inbound-webhook-secret";

type Calls = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

/// Slack's Web API as far as Tollgate uses it.
async fn fake_slack(calls: Calls) -> String {
    async fn method(
        State(calls): State<Calls>,
        axum::extract::Path(name): axum::extract::Path<String>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        calls.lock().expect("calls").push((name, headers, body));
        Json(json!({ "ok": true, "channel": "C0APPROVALS", "ts": "1764140000.000100" }))
    }
    let app = Router::new().route("/api/{name}", post(method)).with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}/api")
}

/// A webhook receiver that fails its first delivery, to show retries.
async fn receiver(calls: Calls) -> String {
    async fn hook(State(calls): State<Calls>, headers: HeaderMap, body: String) -> StatusCode {
        let mut calls = calls.lock().expect("calls");
        let first = calls.is_empty();
        // The raw body is kept (first field) to check the signature over the exact bytes.
        let parsed = serde_json::from_str(&body).unwrap_or(Value::Null);
        calls.push((body, headers, parsed));
        if first {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    }
    let app = Router::new().route("/hook", post(hook)).with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}/hook")
}

fn secret(stack: &Stack, name: &str, value: &str) -> SecretRef {
    let path = stack.dir.path().join(name);
    std::fs::write(&path, value).expect("secret file");
    SecretRef::File(path)
}

/// A person as the reviewer issuer names them: the same identity in every channel.
fn person(stack: &Stack, subject: &str, groups: &[&str]) -> PersonConfig {
    PersonConfig {
        issuer: stack.issuer.url().into(),
        subject: subject.into(),
        name: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: Default::default(),
    }
}

async fn stack_with_channels(slack_calls: Calls, hook_calls: Calls) -> Stack {
    let mut stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE victims (id int); CREATE TABLE staged (id int); ALTER TABLE victims OWNER TO app; ALTER TABLE staged OWNER TO app",
    );
    let mut config: ControlConfig = stack.control_config();
    config.slack = Some(SlackConfig {
        api_base: fake_slack(slack_calls).await,
        bot_token: secret(&stack, "slack.token", "xoxb-test-token"),
        signing_secret: secret(&stack, "slack.secret", SLACK_SECRET),
        channel: "C0APPROVALS".into(),
        users: [
            ("U_ALICE".to_string(), person(&stack, "alice@example.com", &["approvers", "dba"])),
            ("U_RITA".to_string(), person(&stack, "rita@example.com", &["reviewers", "dba"])),
            ("U_DEPLOY".to_string(), person(&stack, "deploy-bot", &["approvers", "dba"])),
        ]
        .into(),
    });
    config.webhooks =
        vec![WebhookConfig { url: receiver(hook_calls).await, secret: secret(&stack, "hook.secret", WEBHOOK_SECRET) }];
    config.inbound_webhook = Some(InboundWebhookConfig {
        secret: secret(&stack, "inbound.secret", INBOUND_SECRET),
        person: person(&stack, "ops@example.com", &["approvers", "dba"]),
    });
    // Whoever the agent's `actor` claim names started the run and may not approve it.
    config.approvals.self_links = vec![tollgate_control_plane::config::SelfLink {
        agent_claim: "actor".into(),
        person_claim: "preferred_username".into(),
    }];
    stack.control = tollgate_control_plane::Control::start(config).await.expect("control plane with channels");
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "destructive", "hold_classes": ["drop", "unbounded_write"], "approver_groups": ["dba"], "timeout_secs": 60 }
        ]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.put_policy(&policy).await;
    eventually(10, "policy", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;
    stack
}

fn slack_body(user: &str, action: &str, approval: &str) -> String {
    let payload = json!({ "type": "block_actions", "user": { "id": user }, "actions": [{ "action_id": action, "value": approval }] });
    serde_urlencoded::to_string([("payload", payload.to_string())]).expect("form")
}

/// POST a Slack callback signed with `key` at `timestamp`; returns the status.
async fn slack_call(stack: &Stack, key: &str, timestamp: i64, body: &str) -> u16 {
    let signature = format!("v0={}", sign_hex(key.as_bytes(), format!("v0:{timestamp}:{body}").as_bytes()));
    reqwest::Client::new()
        .post(format!("http://{}/slack/interactions", stack.control.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("x-slack-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("callback")
        .status()
        .as_u16()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn slack_request_id(calls: &Calls, n: usize) -> String {
    eventually(20, "the request to be posted to Slack", || async {
        let calls = calls.lock().expect("calls");
        let posts: Vec<&Value> =
            calls.iter().filter(|(m, _, b)| m == "chat.postMessage" && b["blocks"].is_array()).map(|c| &c.2).collect();
        posts.get(n).map(|b| b["blocks"][1]["elements"][0]["value"].as_str().expect("approval id").to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_buttons_decide_and_every_bad_callback_is_refused() {
    let slack_calls: Calls = Arc::default();
    let hook_calls: Calls = Arc::default();
    let stack = stack_with_channels(slack_calls.clone(), hook_calls.clone()).await;
    let statement = "DROP TABLE victims /* <!channel> <https://evil.example|approve here> & ```x``` */";
    let child = stack.psql_spawn(&stack.agent_token("deploy-bot"), None, &["-c", statement]);
    let id = slack_request_id(&slack_calls, 0).await;
    {
        let calls = slack_calls.lock().unwrap();
        let (_, headers, post) = calls.iter().find(|(m, _, _)| m == "chat.postMessage").unwrap();
        assert_eq!(headers["authorization"], "Bearer xoxb-test-token");
        assert_eq!(post["channel"], "C0APPROVALS");
        let text = post["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(text.contains("&lt;!channel&gt;") && text.contains("deploy-bot"), "{text}");
        assert!(!text.contains("<!channel>") && !text.contains("<https://evil"), "agent text cannot format: {text}");
        let actions: Vec<&str> =
            post["blocks"][1]["elements"].as_array().unwrap().iter().filter_map(|b| b["action_id"].as_str()).collect();
        assert_eq!(actions, ["approve", "approve_60", "deny"]);
    }
    // Wait until the control plane knows the request (the callback may beat the projector).
    eventually(20, "the request to be projected", || async {
        (stack.api(&format!("/api/v1/approvals/{id}")).await.0 == 200).then_some(())
    })
    .await;

    let alice = slack_body("U_ALICE", "approve_60", &id);
    assert_eq!(slack_call(&stack, "not-the-secret", now(), &alice).await, 401, "forged signature");
    assert_eq!(slack_call(&stack, SLACK_SECRET, now() - 600, &alice).await, 401, "stale timestamp");
    let bearer = reqwest::Client::new()
        .post(format!("http://{}/slack/interactions", stack.control.addr))
        .bearer_auth(stack.agent_token("deploy-bot"))
        .body(alice.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401, "an agent's token is no signature");
    assert_eq!(
        slack_call(&stack, SLACK_SECRET, now(), &slack_body("U_NOBODY", "approve", &id)).await,
        403,
        "unknown user"
    );
    assert_eq!(
        slack_call(&stack, SLACK_SECRET, now(), &slack_body("U_RITA", "approve", &id)).await,
        403,
        "not an approver"
    );
    assert_eq!(
        slack_call(&stack, SLACK_SECRET, now(), &slack_body("U_DEPLOY", "approve", &id)).await,
        403,
        "own request"
    );
    assert!(!stack.pg.database_log("demo").contains("DROP TABLE victims"), "still held");

    let signed_at = now();
    assert_eq!(slack_call(&stack, SLACK_SECRET, signed_at, &alice).await, 200);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stack.pg.database_log("demo").contains("DROP TABLE victims"));
    assert_eq!(slack_call(&stack, SLACK_SECRET, signed_at, &alice).await, 409, "replayed body");
    eventually(20, "alice's decision to be projected", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (a["status"] == "approved").then_some(())
    })
    .await;
    let again = slack_body("U_ALICE", "deny", &id);
    assert_eq!(slack_call(&stack, SLACK_SECRET, now() + 1, &again).await, 409, "a second decision");

    // The message shows the outcome; the decision names its channel; refusals are on record.
    eventually(20, "the Slack message to be updated", || async {
        let calls = slack_calls.lock().unwrap();
        calls
            .iter()
            .any(|(m, _, b)| {
                m == "chat.update" && b["text"].as_str().unwrap_or("").contains("Approved* by alice@example.com")
            })
            .then_some(())
    })
    .await;
    let (_, approval) = stack.api(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(approval["decisions"][0]["channel"], "slack");
    assert_eq!(approval["decisions"][0]["grant_minutes"], 60, "Approve for 1 hour");
    let refusals = eventually(20, "refusals to be recorded", || async {
        let events: Vec<Value> = stack
            .stream_messages()
            .await
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
            .filter(|e| e["type"] == "approval.refused")
            .collect();
        (events.len() >= 8).then_some(events)
    })
    .await;
    let statuses: Vec<u64> = refusals.iter().map(|e| e["payload"]["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [401, 401, 401, 403, 403, 403, 409, 409], "{refusals:?}");

    // Outbound webhooks: the request and the decision, signed, the first delivery retried.
    let hooks = eventually(20, "webhook deliveries", || async {
        let calls = hook_calls.lock().unwrap();
        let kinds: Vec<&str> = calls.iter().filter_map(|(_, _, b)| b["type"].as_str()).collect();
        kinds.contains(&"approval.decided").then(|| calls.clone())
    })
    .await;
    for (raw, headers, body) in &hooks {
        let timestamp = headers["x-tollgate-timestamp"].to_str().unwrap();
        let event_id = headers["x-tollgate-event-id"].to_str().unwrap();
        assert_eq!(event_id, body["id"].as_str().unwrap());
        let expected = format!(
            "v1={}",
            sign_hex(WEBHOOK_SECRET.as_bytes(), format!("v1:{timestamp}:{event_id}:{raw}").as_bytes())
        );
        assert_eq!(headers["x-tollgate-signature"].to_str().unwrap(), expected, "signed over the exact body");
    }
    let first = hooks[0].2["id"].as_str().unwrap();
    assert!(hooks.iter().filter(|(_, _, b)| b["id"] == first).count() >= 2, "the refused first delivery was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_inbound_webhook_decides_and_a_forged_one_is_refused() {
    let stack = stack_with_channels(Arc::default(), Arc::default()).await;
    let child = stack.psql_spawn(&stack.agent_token("cleanup-bot"), None, &["-c", "DELETE FROM staged"]);
    let id = eventually(20, "a pending request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.first().map(|a| a["id"].as_str().unwrap().to_owned())
    })
    .await;
    let body = json!({ "approval_id": id, "verdict": "deny", "reason": "change freeze" }).to_string();
    // A body cannot name who decides: the decision is the configured signer's.
    let naming = json!({ "approval_id": id, "verdict": "approve",
                         "approver": { "issuer": "x", "subject": "someone-else", "groups": ["dba"] } })
    .to_string();
    let send = |key: &'static str, timestamp: i64, body: String| {
        let addr = stack.control.addr;
        async move {
            let signature = format!("v1={}", sign_hex(key.as_bytes(), format!("v1:{timestamp}:{body}").as_bytes()));
            reqwest::Client::new()
                .post(format!("http://{addr}/webhooks/decisions"))
                .header("x-tollgate-timestamp", timestamp.to_string())
                .header("x-tollgate-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(INBOUND_SECRET, now(), naming).await, 400, "a body naming its approver");
    assert_eq!(send("wrong-key", now(), body.clone()).await, 401);
    assert_eq!(send(INBOUND_SECRET, now() - 400, body.clone()).await, 401);
    assert_eq!(send(INBOUND_SECRET, now(), body.clone()).await, 200);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("denied by ops@example.com") && stderr.contains("change freeze"), "{stderr}");
    assert!(!stack.pg.database_log("demo").contains("DELETE FROM staged"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_is_one_vote_in_every_channel_and_never_approves_their_own_run() {
    let stack = stack_with_channels(Arc::default(), Arc::default()).await;
    let quorum_of_two = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [
            { "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "quorum": 2, "timeout_secs": 60 }
        ]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.put_policy(&quorum_of_two).await;
    eventually(10, "policy", || async { (stack.proxy.policy_version() == Some(version)).then_some(()) }).await;
    // A run started by developer "dev-dan" (the CI actor claim).
    let mut claims = serde_json::Map::new();
    claims.insert("actor".into(), "dev-dan".into());
    let token = stack.issuer.mint("deploy-bot", tollgate_tests::AGENT_AUDIENCE, 600, &claims).unwrap();
    let child = stack.psql_spawn(&token, None, &["-c", "DROP TABLE victims"]);
    let id = eventually(20, "a pending request", || async {
        let (_, list) = stack.api("/api/v1/approvals?status=pending").await;
        list.as_array()?.first().map(|a| a["id"].as_str().unwrap().to_owned())
    })
    .await;
    let approve = |token: String| {
        let id = id.clone();
        let stack = &stack;
        async move {
            stack.api_send("POST", &format!("/api/v1/approvals/{id}/approve"), Some(&token), Some(&json!({}))).await
        }
    };
    // Dan, under his own name, is the actor of the run: refused.
    let mut dan = serde_json::Map::new();
    dan.insert("groups".into(), json!(["approvers", "dba"]));
    dan.insert("preferred_username".into(), "dev-dan".into());
    let dan = stack.issuer.mint("dan@example.com", tollgate_tests::REVIEWER_AUDIENCE, 600, &dan).unwrap();
    let (status, body) = approve(dan).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("own request"), "{body}");
    // Alice approves in Slack, then again through the API: one person, one vote.
    assert_eq!(slack_call(&stack, SLACK_SECRET, now(), &slack_body("U_ALICE", "approve", &id)).await, 200);
    let (status, body) = approve(stack.person_token("alice@example.com", &["approvers", "dba"])).await;
    assert_eq!(status, 409, "alice's second vote through another channel: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("already decided"), "{body}");
    let (_, request) = stack.api(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(request["status"], "pending", "one vote of two: still held");
    // A second person completes the quorum.
    let (status, body) = approve(stack.person_token("bob@example.com", &["approvers", "dba"])).await;
    assert_eq!(status, 202, "{body}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let released = eventually(20, "the release", || async {
        let (_, a) = stack.api(&format!("/api/v1/approvals/{id}")).await;
        (!a["released_at"].is_null()).then_some(a)
    })
    .await;
    let by: Vec<&str> = released["released_by"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(by.len(), 2, "{released}");
    assert!(
        by.iter().any(|p| p.starts_with("alice@example.com")) && by.iter().any(|p| p.starts_with("bob@example.com"))
    );
}
