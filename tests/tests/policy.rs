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

    let (status, _) = stack.api("/api/v1/policy").await;
    assert_eq!(status, 404, "no policy before the first version");
    let (status, first) = put(0, document(&["drop"]), "initial").await;
    assert_eq!((status, first["version"].as_u64()), (200, Some(1)), "{first}");

    // A change based on a stale version is refused, not merged silently.
    let (status, conflict) = put(0, document(&["truncate"]), "stale").await;
    assert_eq!((status, conflict["error"].as_str()), (409, Some("conflict")), "{conflict}");
    assert!(conflict["message"].as_str().unwrap_or("").contains("version 1"));

    let (status, second) = put(1, document(&["drop", "truncate"]), "also truncate").await;
    assert_eq!((status, second["version"].as_u64()), (200, Some(2)), "{second}");
    assert_eq!(second["changes"][0]["path"], "resources[demo].guardrails.deny_classes");

    // Invalid documents are refused with the path of every problem.
    let mut bad = document(&["dorp"]);
    bad["grants"][0]["resources"]["names"] = json!(["nope"]);
    let (status, refused) = put(2, bad.clone(), "bad").await;
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
    assert_eq!((dry["valid"].as_bool(), dry["live_version"].as_u64()), (Some(true), Some(2)));
    assert_eq!(dry["changes"][0]["after"], json!([]));

    // The live policy, its history (projected from policy.changed events) and diffs.
    let (_, live) = stack.api("/api/v1/policy").await;
    assert_eq!((live["version"].as_u64(), live["changed_by"].as_str()), (Some(2), Some("dave@example.com")));
    let versions = eventually(30, "both versions to be projected", || async {
        let (_, v) = stack.api("/api/v1/policy/versions").await;
        (v.as_array()?.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["comment"], "also truncate");
    let (_, v1) = stack.api("/api/v1/policy/versions/1").await;
    assert_eq!(v1["resources"][0]["guardrails"]["deny_classes"], json!(["drop"]));
    let (_, changes) = stack.api("/api/v1/policy/diff?from=1&to=2").await;
    assert_eq!(changes[0]["before"], json!(["drop"]));
    assert_eq!(changes[0]["after"], json!(["drop", "truncate"]));

    // The KV bucket proxies will watch holds version 2; the events form a linked chain.
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let kv = js.get_key_value(tollgate_shared::names::POLICY_BUCKET).await.unwrap();
    let snapshot: Value =
        serde_json::from_slice(&kv.get(tollgate_shared::names::POLICY_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(snapshot["version"], 2);
    let events: Vec<Vec<u8>> = stack
        .stream_messages()
        .await
        .into_iter()
        .filter(|raw| serde_json::from_slice::<Value>(raw).map(|v| v["type"] == "policy.changed").unwrap_or(false))
        .collect();
    assert_eq!(events.len(), 2);
    let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
    let report = tollgate_shared::event::verify_chain(&slices);
    assert!(report.linked, "{report:?}");
    let first: Value = serde_json::from_slice(&events[0]).unwrap();
    assert_eq!(first["agent"]["subject"], "dave@example.com");
    assert_eq!(first["resource"]["kind"], "policy");
    // Policy changes are neither sessions nor agents.
    let (_, agents) = stack.api("/api/v1/agents").await;
    assert!(agents.as_array().unwrap().is_empty(), "{agents}");
}
