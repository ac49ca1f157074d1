//! The policy API: versions with optimistic concurrency, history, diffs, dry runs, the KV
//! snapshot and the policy.changed chain.

use serde_json::{json, Value};
use tollgate_tests::{eventually, Stack};

fn document(deny: &[&str]) -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "labels": { "env": "test" },
                        "guardrails": { "deny_classes": deny, "deny_unbounded_writes": true } }],
        "grants": [{ "name": "ci", "who": { "groups": ["ci"] }, "resources": { "names": ["demo"] }, "access": "read-write" }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_concurrency_history_diff_and_dry_run() {
    let stack = Stack::start().await;
    let admin = stack.person_token("dave@example.com", &["admins"]);
    let put = |base: u64, doc: Value, comment: &str| {
        let body = json!({ "base_version": base, "document": doc, "comment": comment });
        let admin = admin.clone();
        let stack = &stack;
        async move { stack.api_send("PUT", "/api/v1/policy", Some(&admin), Some(&body)).await }
    };

    // The harness set version 1 (the default test policy).
    let (status, live) = stack.api("/api/v1/policy").await;
    assert_eq!((status, live["version"].as_u64()), (200, Some(1)), "{live}");
    let (status, first) = put(1, document(&["drop"]), "initial").await;
    assert_eq!((status, first["version"].as_u64()), (200, Some(2)), "{first}");

    // A change based on a stale version is refused, not merged silently.
    let (status, conflict) = put(1, document(&["truncate"]), "stale").await;
    assert_eq!((status, conflict["error"].as_str()), (409, Some("conflict")), "{conflict}");
    assert!(conflict["message"].as_str().unwrap_or("").contains("version 2"));

    let (status, second) = put(2, document(&["drop", "truncate"]), "also truncate").await;
    assert_eq!((status, second["version"].as_u64()), (200, Some(3)), "{second}");
    assert_eq!(second["changes"][0]["path"], "resources[demo].guardrails.deny_classes");

    // Invalid documents are refused with the path of every problem.
    let mut bad = document(&["dorp"]);
    bad["grants"][0]["resources"]["names"] = json!(["nope"]);
    let (status, refused) = put(3, bad.clone(), "bad").await;
    assert_eq!(status, 400);
    let message = refused["message"].as_str().unwrap_or("");
    assert!(
        message.contains("resources[0].guardrails.deny_classes[0]") && message.contains("grants[0].resources.names[0]"),
        "{message}"
    );
    let (status, dry) =
        stack.api_send("POST", "/api/v1/policy/dry-run", Some(&admin), Some(&json!({ "document": bad }))).await;
    assert_eq!((status, dry["valid"].as_bool()), (200, Some(false)), "{dry}");
    assert_eq!(dry["problems"].as_array().map(Vec::len), Some(2));
    let (_, dry) = stack
        .api_send("POST", "/api/v1/policy/dry-run", Some(&admin), Some(&json!({ "document": document(&[]) })))
        .await;
    assert_eq!((dry["valid"].as_bool(), dry["live_version"].as_u64()), (Some(true), Some(3)));
    assert_eq!(dry["changes"][0]["after"], json!([]));
    // The blast-radius settings: a row limit and a rule holding writes by the rows they write
    // are shown as changes, and their mistakes as problems.
    let mut limited = document(&["drop", "truncate"]);
    limited["resources"][0]["guardrails"]["max_rows_written"] = json!(500);
    limited["resources"][0]["approvals"] = json!([{ "name": "big-writes", "hold_classes": ["delete"],
        "rows_over": 100, "approver_groups": ["dba"], "timeout_secs": 60 }]);
    let (_, dry) =
        stack.api_send("POST", "/api/v1/policy/dry-run", Some(&admin), Some(&json!({ "document": limited }))).await;
    let paths: Vec<&str> = dry["changes"].as_array().into_iter().flatten().filter_map(|c| c["path"].as_str()).collect();
    assert!(dry["valid"] == true && paths.contains(&"resources[demo].guardrails.max_rows_written"), "{dry}");
    assert!(paths.iter().any(|p| p.starts_with("resources[demo].approvals")), "{dry}");
    limited["resources"][0]["guardrails"]["max_rows_written"] = json!(0);
    limited["resources"].as_array_mut().expect("resources").push(json!({ "name": "box", "kind": "ssh",
        "approvals": [{ "name": "big", "hold_classes": ["exec"], "rows_over": 1, "approver_groups": ["dba"] }] }));
    let (_, dry) =
        stack.api_send("POST", "/api/v1/policy/dry-run", Some(&admin), Some(&json!({ "document": limited }))).await;
    let problems: Vec<&str> =
        dry["problems"].as_array().into_iter().flatten().filter_map(|p| p["path"].as_str()).collect();
    assert_eq!(dry["valid"], false, "{dry}");
    assert!(problems.contains(&"resources[0].guardrails.max_rows_written"), "{dry}");
    assert!(problems.iter().any(|p| p.ends_with(".rows_over")), "{dry}");

    // The live policy, its history (projected from policy.changed events) and diffs.
    let (_, live) = stack.api("/api/v1/policy").await;
    assert_eq!((live["version"].as_u64(), live["changed_by"].as_str()), (Some(3), Some("dave@example.com")));
    let versions = eventually(30, "all versions to be projected", || async {
        let (_, v) = stack.api("/api/v1/policy/versions").await;
        (v.as_array()?.len() == 3).then_some(v)
    })
    .await;
    assert_eq!(versions[0]["version"], 3);
    assert_eq!(versions[0]["comment"], "also truncate");
    let (_, v2) = stack.api("/api/v1/policy/versions/2").await;
    assert_eq!(v2["resources"][0]["guardrails"]["deny_classes"], json!(["drop"]));
    let (_, changes) = stack.api("/api/v1/policy/diff?from=2&to=3").await;
    assert_eq!(changes[0]["before"], json!(["drop"]));
    assert_eq!(changes[0]["after"], json!(["drop", "truncate"]));

    // The KV bucket the proxies watch holds version 3; the events form a linked chain.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let kv = js.get_key_value(tollgate_shared::names::POLICY_BUCKET).await.unwrap();
    let stored = kv.get(tollgate_shared::names::POLICY_KEY).await.unwrap().unwrap();
    let key = tollgate_shared::control::ControlPublicKey::parse(&stack.control.public_key).unwrap();
    let snapshot: Value =
        tollgate_shared::control::Signed::open(&stored, &key, tollgate_shared::control::ControlKind::Policy)
            .expect("signed by the control plane");
    assert_eq!(snapshot["version"], 3);
    let events: Vec<Vec<u8>> = stack
        .stream_messages()
        .await
        .into_iter()
        .filter(|raw| serde_json::from_slice::<Value>(raw).map(|v| v["type"] == "policy.changed").unwrap_or(false))
        .collect();
    assert_eq!(events.len(), 3);
    let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
    let report = tollgate_shared::event::verify_chain(&slices);
    assert!(report.linked, "{report:?}");
    let second: Value = serde_json::from_slice(&events[1]).unwrap();
    assert_eq!(second["agent"]["subject"], "dave@example.com");
    let first = second;
    assert_eq!(first["resource"]["kind"], "policy");
    // Policy changes are neither sessions nor agents.
    let (_, agents) = stack.api("/api/v1/agents").await;
    assert!(agents.as_array().unwrap().is_empty(), "{agents}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_who_connects_and_read_only_grants_cannot_write() {
    let stack = Stack::start().await;
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres" }],
        "grants": [
            { "name": "readers", "who": { "agents": ["reader-*"] }, "resources": { "names": ["demo"] }, "access": "read-only" },
            { "name": "writers", "who": { "agents": ["writer-*"] }, "resources": { "names": ["demo"] }, "access": "read-write" }
        ]
    });
    let version = stack.put_policy(&policy).await;
    eventually(10, "the proxy to enforce the new version", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;

    let writer = stack.agent_client(&stack.agent_token("writer-1")).await.expect("writer connects");
    writer
        .batch_execute("create table notes (body text); insert into notes values ('hello')")
        .await
        .expect("writer writes");
    let reader = stack.agent_client(&stack.agent_token("reader-1")).await.expect("reader connects");
    let row = reader.query_one("select body from notes", &[]).await.expect("reader reads");
    assert_eq!(row.get::<_, String>(0), "hello");
    let err =
        reader.batch_execute("insert into notes values ('sneaky')").await.expect_err("a read-only grant cannot write");
    // Denied by the proxy (42501); the upstream session is read-only as well (see guardrails.rs).
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");

    let Err(err) = stack.agent_client(&stack.agent_token("stranger")).await else { panic!("no grant, no session") };
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("no grant gives agent \"stranger\" access to resource \"demo\""), "{}", db.message());

    // Sessions record the version, grant and access that admitted them.
    drop((writer, reader));
    let sessions = stack.ended_sessions(2).await;
    let mut admitted = Vec::new();
    for session in &sessions {
        let (_, events) = stack.api(&format!("/api/v1/sessions/{}/events", session["id"].as_str().unwrap())).await;
        let started = &events[0]["event"]["payload"];
        admitted.push((
            started["grant"].as_str().unwrap_or("").to_owned(),
            started["access"].as_str().unwrap_or("").to_owned(),
        ));
        assert_eq!(started["policy_version"].as_u64(), Some(version));
    }
    admitted.sort();
    assert_eq!(admitted, [("readers".into(), "read-only".into()), ("writers".into(), "read-write".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_proxy_it_keeps_its_policy_without_the_control_plane_and_a_fresh_one_refuses() {
    let mut stack = Stack::start().await;
    // Revoke everything but one agent: enforced without a restart.
    let only = json!({
        "resources": [{ "name": "demo", "kind": "postgres" }],
        "grants": [{ "name": "only", "who": { "agents": ["chosen"] }, "resources": { "names": ["demo"] }, "access": "read-write" }]
    });
    let version = stack.put_policy(&only).await;
    eventually(10, "the proxy to enforce the new version", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    assert!(stack.agent_client(&stack.agent_token("someone-else")).await.is_err());
    assert!(stack.agent_client(&stack.agent_token("chosen")).await.is_ok());

    // Control plane gone: the proxy keeps enforcing what it had.
    let mut down = stack.control_config();
    down.nats.url = "nats://127.0.0.1:9".into();
    stack.control = tollgate_control_plane::Control::start(down).await.unwrap();
    assert!(stack.agent_client(&stack.agent_token("chosen")).await.is_ok());
    assert!(stack.agent_client(&stack.agent_token("someone-else")).await.is_err());

    // A proxy on a NATS that never had a policy refuses everyone.
    let empty_nats = tollgate_tests::NatsServer::start().await;
    let mut config = stack.proxy_config("proxy-without-policy");
    config.nats.url = empty_nats.url();
    config.nats.nkey = Some(tollgate_shared::config::SecretRef::File(empty_nats.seed_file("proxy-without-policy")));
    config.nats.ca_file = Some(empty_nats.ca_file());
    config.policy.wait_at_start_ms = 300;
    let fresh = tollgate_data_plane::Proxy::start(config).await.unwrap();
    assert_eq!(fresh.policy_version(), None);
    let dsn = format!(
        "host=127.0.0.1 port={} dbname=demo user=ci password={}",
        fresh.postgres_addr.port(),
        stack.agent_token("chosen")
    );
    let err = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.err().expect("refused without a policy");
    let db = err.as_db_error().expect("server error");
    assert_eq!(
        (db.code().code(), db.message()),
        ("28000", "tollgate: no policy is loaded on this proxy; agents are refused until one arrives")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_applies_and_diffs_policy_files() {
    use tollgate_control_plane::cli;
    let stack = Stack::start().await;
    let base = format!("http://{}", stack.control.addr);
    let admin = cli::Api::new(&base, &stack.person_token("dave@example.com", &["admins"]));
    let file = stack.dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "resources:\n  - { name: demo, kind: postgres }\ngrants:\n  - { name: ci, who: { agents: [\"*\"] }, resources: { names: [demo] }, access: read-only }\n",
    )
    .unwrap();
    let diff = cli::diff(&admin, &file).await.expect("diff");
    assert!(diff.contains("against live version 1") && diff.contains("- resources[demo_md5]"), "{diff}");
    let applied = cli::apply(&admin, &file, Some("tighten")).await.expect("apply");
    assert!(applied.starts_with("policy version 2 applied (was 1)"), "{applied}");
    assert!(applied.contains("~ grants") || applied.contains("+ grants[ci]"), "{applied}");
    let live = cli::get(&admin).await.expect("get");
    assert!(live.starts_with("# version 2 by dave@example.com") && live.contains("read-only"), "{live}");

    // Bad files are refused locally, with the YAML path; non-admins are refused by the API.
    std::fs::write(&file, "resources:\n  - { name: demo, kind: postgres, guardrails: { deny_classes: [dorp] } }\n")
        .unwrap();
    let err = cli::apply(&admin, &file, None).await.expect_err("invalid file");
    assert!(err.to_string().contains("resources[0].guardrails.deny_classes[0]: unknown statement class"), "{err}");
    let reviewer = cli::Api::new(&base, &stack.reviewer_token());
    std::fs::write(&file, "resources: []\n").unwrap();
    let err = cli::apply(&reviewer, &file, None).await.expect_err("reviewers cannot change policy");
    assert!(err.to_string().starts_with("403"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_enforced_by_every_proxy_on_the_bus() {
    let stack = Stack::start().await;
    let b = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-b")).await.expect("proxy b");
    let c = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-c")).await.expect("proxy c");
    let proxies = [&stack.proxy, &b, &c];
    let mut doc = json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": { "deny_classes": ["truncate"] } }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.put_policy(&doc).await;
    eventually(10, "all three proxies to load it", || async {
        proxies.iter().all(|p| p.policy_version() == Some(version)).then_some(())
    })
    .await;
    let token = stack.agent_token("bot-fleet");
    for proxy in proxies {
        let dsn = format!("host=127.0.0.1 port={} dbname=demo user=ci password={token}", proxy.postgres_addr.port());
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.simple_query("create table if not exists t (x int)").await.expect("create");
        let err = client.simple_query("truncate t").await.expect_err("truncate denied everywhere");
        assert_eq!(err.code().map(|c| c.code()), Some("42501"));
        // Lift the rule: the very same session is judged by the new version.
        doc["resources"][0]["guardrails"]["deny_classes"] = json!([]);
        let lifted = stack.put_policy(&doc).await;
        eventually(10, "the proxy to load the lifted policy", || async {
            (proxy.policy_version() == Some(lifted)).then_some(())
        })
        .await;
        client.simple_query("truncate t").await.expect("allowed after the change");
        doc["resources"][0]["guardrails"]["deny_classes"] = json!(["truncate"]);
        let again = stack.put_policy(&doc).await;
        eventually(10, "the proxies to load it", || async {
            proxies.iter().all(|p| p.policy_version() == Some(again)).then_some(())
        })
        .await;
    }
}
