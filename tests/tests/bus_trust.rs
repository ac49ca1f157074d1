//! Trust on the bus: what reaches NATS does not decide anything unless the control plane signed
//! it. A forged or replayed policy, a forged approval decision and a forged standing approval are
//! refused and counted by the proxy, which keeps enforcing what it had; the real ones work.

use serde_json::{json, Value};
use tollgate_shared::control::{ControlKey, ControlKind, Signed};
use tollgate_shared::event::{kind, ApprovalDecided, Chain, Channel, Verdict};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_tests::{eventually, Stack};

fn held_policy() -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "approvals": [{
            "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 60
        }]}],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

async fn jetstream(stack: &Stack) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(stack.nats.client().await)
}

async fn refusals_reach(stack: &Stack, n: u64) {
    eventually(10, "the proxy to refuse the forged message", || async {
        (stack.proxy.refused_control_messages() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_policies_are_refused_and_the_real_one_still_applies() {
    let stack = Stack::start().await;
    assert_eq!(stack.proxy.policy_version(), Some(1));
    let js = jetstream(&stack).await;
    let kv = js.get_key_value(tollgate_shared::names::POLICY_BUCKET).await.expect("policy bucket");
    let signed_v1 = kv.get(tollgate_shared::names::POLICY_KEY).await.expect("get").expect("version 1");

    // An unsigned snapshot claiming the highest version there is, which would freeze every update.
    let permissive = json!({
        "version": u64::MAX, "document": { "resources": [], "grants": [] }, "event_id": uuid::Uuid::nil(),
        "event_hash": "", "changed_by": "mallory", "changed_at": "2026-12-02T00:00:00Z"
    });
    kv.put(tollgate_shared::names::POLICY_KEY, serde_json::to_vec(&permissive).unwrap().into()).await.expect("put");
    refusals_reach(&stack, 1).await;
    // Signed, but by a key that is not the control plane's.
    let (mallory, _) = ControlKey::generate().unwrap();
    let mut next = permissive.clone();
    next["version"] = 2.into();
    let forged = Signed::seal(&mallory, ControlKind::Policy, &next).unwrap();
    kv.put(tollgate_shared::names::POLICY_KEY, forged.into()).await.expect("put");
    refusals_reach(&stack, 2).await;
    // An old version, really signed, replayed: changes nothing.
    kv.put(tollgate_shared::names::POLICY_KEY, signed_v1.clone()).await.expect("replay");
    assert_eq!(stack.proxy.policy_version(), Some(1));

    // The control plane's own next version is not frozen out; the proxy enforces it.
    let version = stack.put_policy(&held_policy()).await;
    assert_eq!(version, 2, "the control plane builds on its own signed version, not the forgeries");
    eventually(10, "the proxy to load version 2", || async { (stack.proxy.policy_version() == Some(2)).then_some(()) })
        .await;
    // The whole time, agents were served under the real policy.
    let out = stack.psql(&stack.agent_token("bot-trust"), None, &["-c", "select 1"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_decisions_and_standing_approvals_release_nothing() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "create table victims (id int); alter table victims owner to app");
    let version = stack.put_policy(&held_policy()).await;
    eventually(10, "the proxy to load the policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    let token = stack.agent_token("deploy-bot");
    let child = stack.psql_spawn(&token, None, &["-c", "DROP TABLE victims"]);
    let request = eventually(20, "the request", || async {
        let (_, list) = stack
            .api_as("/api/v1/approvals?status=pending", Some(&stack.person_token("ann", &["approvers", "dba"])))
            .await;
        list.as_array().and_then(|l| l.first().cloned())
    })
    .await;
    let id: uuid::Uuid = request["id"].as_str().unwrap().parse().unwrap();

    // Someone on the bus publishes approvals: unsigned, then signed with a key of their own.
    let js = jetstream(&stack).await;
    let mallory = AgentIdentity {
        issuer: "https://evil.example".into(),
        subject: "mallory".into(),
        name: "mallory".into(),
        groups: vec!["dba".into()],
        attributes: Default::default(),
    };
    let decision = ApprovalDecided {
        approval_id: id,
        verdict: Verdict::Approve,
        channel: Channel::Rest,
        reason: None,
        grant_minutes: None,
    };
    let resource = ResourceRef { name: "demo".into(), kind: ResourceKind::Postgres };
    let mut chain = Chain::new(uuid::Uuid::now_v7(), "control".into(), mallory.clone(), resource.clone());
    let unsigned = chain.seal(kind::APPROVAL_DECIDED, &decision).unwrap();
    tollgate_shared::stream::publish_event(&js, &unsigned).await.unwrap().await.unwrap();
    refusals_reach(&stack, 1).await;
    let (key, _) = ControlKey::generate().unwrap();
    let mut chain = Chain::new(uuid::Uuid::now_v7(), "control".into(), mallory.clone(), resource);
    let forged = chain.seal(kind::APPROVAL_DECIDED, &decision).unwrap();
    let signature = key.sign(ControlKind::Event, &forged.bytes);
    tollgate_shared::stream::publish_signed_event(&js, &forged, &signature).await.unwrap().await.unwrap();
    refusals_reach(&stack, 2).await;
    // A standing approval written straight into the bucket, unsigned.
    let grants = js.get_key_value(tollgate_shared::names::GRANTS_BUCKET).await.expect("grants bucket");
    let standing = json!({
        "approval_id": id, "agent_issuer": null, "agent_name": "deploy-bot", "resource": "demo",
        "classes": ["drop"], "until": "2099-01-01T00:00:00Z", "approvers": ["mallory"]
    });
    grants.put(tollgate_shared::names::grant_key(id), serde_json::to_vec(&standing).unwrap().into()).await.unwrap();
    refusals_reach(&stack, 3).await;
    assert_eq!(stack.proxy.standing_approvals(), 0);

    // Still held: the statement has not run.
    let log = stack.pg.database_log("demo");
    assert!(!log.contains("DROP TABLE victims"), "ran on a forged approval");
    assert!(log.contains("connection authorized: user=app"), "control: the upstream log is the right one");

    // The real approval releases it.
    let (status, body) = stack
        .api_send(
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&stack.person_token("ann", &["approvers", "dba"])),
            Some(&json!({ "reason": "ticket 7" })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let released = eventually(20, "the release on record", || async {
        stack
            .stream_messages()
            .await
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
            .find(|e| e["type"] == "approval.released")
    })
    .await;
    assert_eq!(released["payload"]["approvers"][0].as_str().map(|a| a.starts_with("ann (")), Some(true), "{released}");
}

async fn verified(stack: &Stack, session: &str, want: &str) -> Value {
    eventually(20, &format!("the session to verify as {want}"), || async {
        let (_, report) = stack.api(&format!("/api/v1/sessions/{session}/verify")).await;
        (report["node_trust"] == want).then_some(report)
    })
    .await
}

async fn decide_node(stack: &Stack, key: &str, action: &str) {
    let admin = stack.person_token("root@example.com", &["admins"]);
    let (status, body) = stack
        .api_send("POST", &format!("/api/v1/nodes/{key}/{action}"), Some(&admin), Some(&json!({ "reason": action })))
        .await;
    assert_eq!(status, 202, "{action}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_trusted_only_under_trusted_node_keys() {
    use tollgate_shared::event::{EndReason, SessionEnded, SessionSigner, SessionStarted, UpstreamTarget};
    let stack = Stack::start().await;
    let token = stack.agent_token("bot-nodes");
    // proxy-a's key is trusted by the control plane's configuration.
    let out = stack.psql(&token, None, &["-c", "select 1"], None);
    assert!(out.status.success());
    let first = stack.ended_sessions(1).await;
    let report = verified(&stack, first[0]["id"].as_str().unwrap(), "trusted").await;
    assert_eq!(report["trusted"], true, "{report}");

    // A second proxy with a key of its own: its sessions verify, but are not trusted until an
    // admin trusts the key it announced.
    let proxy_b = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-b")).await.expect("proxy-b");
    let dsn = format!("host=127.0.0.1 port={} dbname=demo user=ci password={token}", proxy_b.postgres_addr.port());
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("connect via b");
    let running = tokio::spawn(connection);
    client.simple_query("select 2").await.expect("query via b");
    drop(client);
    let _ = running.await;
    let sessions = stack.ended_sessions(2).await;
    let b_session =
        sessions.iter().find(|s| s["node"] == "proxy-b").expect("proxy-b's session")["id"].as_str().unwrap().to_owned();
    let report = verified(&stack, &b_session, "pending").await;
    assert_eq!((report["complete"].as_bool(), report["trusted"].as_bool()), (Some(true), Some(false)), "{report}");
    let (_, nodes) = stack.api("/api/v1/nodes").await;
    let listed = nodes.as_array().unwrap().iter().find(|n| n["key"] == proxy_b.node_key.as_str()).expect("b announced");
    assert_eq!((listed["node"].as_str(), listed["status"].as_str()), (Some("proxy-b"), Some("pending")), "{nodes}");
    decide_node(&stack, &proxy_b.node_key, "trust").await;
    assert_eq!(verified(&stack, &b_session, "trusted").await["trusted"], true);
    // Rotated out: what it signed before stays trusted...
    decide_node(&stack, &proxy_b.node_key, "retire").await;
    assert_eq!(verified(&stack, &b_session, "retired").await["trusted"], true);
    // ...compromised: nothing it signed is.
    decide_node(&stack, &proxy_b.node_key, "revoke").await;
    assert_eq!(verified(&stack, &b_session, "revoked").await["trusted"], false);

    // A whole session forged on the bus under a fresh key: linked and complete, not trusted.
    let (forger, _) = SessionSigner::generate().unwrap();
    let session = uuid::Uuid::now_v7();
    let agent = AgentIdentity {
        issuer: stack.issuer.url().into(),
        subject: "bot-nodes".into(),
        name: "bot-nodes".into(),
        groups: Vec::new(),
        attributes: Default::default(),
    };
    let mut chain =
        Chain::new(session, "proxy-a".into(), agent, ResourceRef { name: "demo".into(), kind: ResourceKind::Postgres });
    let started = SessionStarted {
        client_addr: "127.0.0.1:1".into(),
        client_tls: false,
        client_user: "ci".into(),
        application_name: None,
        upstream: UpstreamTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            database: Some("demo".into()),
            user: "app".into(),
        },
        node_key: forger.public_hex(),
        policy_version: Some(1),
        grant: Some("everyone".into()),
        access: None,
    };
    let events = vec![chain.seal(kind::SESSION_STARTED, &started).unwrap()];
    let head = chain.head().to_owned();
    let ended = SessionEnded {
        reason: EndReason::ClientClosed,
        detail: None,
        commands: 0,
        signature: forger.sign_end(session, chain.next_seq(), &head),
        head,
    };
    let events = [events, vec![chain.seal(kind::SESSION_ENDED, &ended).unwrap()]].concat();
    let js = jetstream(&stack).await;
    for event in &events {
        tollgate_shared::stream::publish_event(&js, event).await.unwrap().await.unwrap();
    }
    // Both events projected (the end too), then the verdict.
    eventually(20, "the forged session's end to be projected", || async {
        let (_, view) = stack.api(&format!("/api/v1/sessions/{session}")).await;
        (!view["ended_at"].is_null()).then_some(())
    })
    .await;
    let report = verified(&stack, &session.to_string(), "unknown").await;
    assert_eq!(
        (report["linked"].as_bool(), report["complete"].as_bool(), report["trusted"].as_bool()),
        (Some(true), Some(true), Some(false)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_admits_each_component_to_its_own_subjects_only() {
    let stack = Stack::start().await;
    // The normal flow (sessions, policy, decisions' subscription) runs within the permissions.
    let out = stack.psql(&stack.agent_token("bot-perms"), None, &["-c", "select 1"], None);
    assert!(out.status.success());
    stack.ended_sessions(1).await;

    // No credentials: refused, over TLS or not.
    let anonymous = async_nats::ConnectOptions::new()
        .add_root_certificates(stack.nats.ca_file())
        .require_tls(true)
        .connect(stack.nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client was admitted");
    let plain = async_nats::connect(format!("nats://127.0.0.1:{}", stack.nats.port)).await;
    assert!(plain.is_err(), "a client without TLS was admitted");

    // A proxy's credentials: its own events go through (the positive control)...
    let proxy = stack.nats.client_as("proxy-b").await;
    let js = async_nats::jetstream::new(proxy.clone());
    let own = js.publish("tollgate.events.proxy-b.node.started", "{}".into()).await.expect("publish").await;
    assert!(own.is_ok(), "a proxy publishes its own events: {own:?}");
    // ...another node's subjects, a decision, the buckets: refused.
    for subject in ["tollgate.events.proxy-a.command", "tollgate.events.control.approval.decided"] {
        let refused = match js.publish(subject, "{}".into()).await {
            Ok(ack) => tokio::time::timeout(std::time::Duration::from_secs(3), ack).await.map_or(true, |r| r.is_err()),
            Err(_) => true,
        };
        assert!(refused, "proxy-b published on {subject}");
    }
    let kv = js.get_key_value(tollgate_shared::names::POLICY_BUCKET).await.expect("a proxy may read the policy bucket");
    let write = tokio::time::timeout(std::time::Duration::from_secs(3), kv.put("current", "{}".into())).await;
    assert!(write.map_or(true, |r| r.is_err()), "proxy-b wrote the policy bucket");
    let delete =
        tokio::time::timeout(std::time::Duration::from_secs(3), js.delete_stream(tollgate_shared::names::STREAM)).await;
    assert!(delete.map_or(true, |r| r.is_err()), "proxy-b deleted the event stream");
    // The stream holds proxy-b's own message and none of the refused ones.
    let messages = stack.stream_messages().await;
    assert_eq!(messages.iter().filter(|m| m.as_slice() == b"{}").count(), 1, "only proxy-b's own message was stored");
    let types: Vec<String> = messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    assert!(types.contains(&"session.started".to_owned()), "control: the stream is readable: {types:?}");
    let policy = stack.api("/api/v1/policy").await.1;
    assert_eq!(policy["version"], 1, "the policy is untouched: {policy}");
}
