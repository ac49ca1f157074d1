//! The review API: filters, pagination, errors, authentication, health and the OpenAPI document.

use tollgate_tests::{Stack, AGENT_AUDIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_filter_paginate_and_refuse_bad_requests() {
    let stack = Stack::start().await;
    let before = chrono::Utc::now();
    for subject in ["bot-a", "bot-b", "bot-a"] {
        let client = stack.agent_client(&stack.agent_token(subject)).await.expect("connect");
        client.simple_query(&format!("select '{subject}'")).await.expect("query");
    }
    let all = stack.ended_sessions(3).await;
    assert_eq!(all.len(), 3);
    // Newest first.
    assert!(all[0]["id"].as_str() > all[1]["id"].as_str());

    // Pagination: two pages of two and one, no overlap, same order.
    let (_, first) = stack.api("/api/v1/sessions?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let (_, second) = stack.api(&format!("/api/v1/sessions?limit=2&cursor={cursor}")).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    let paged: Vec<&serde_json::Value> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|s| &s["id"])
        .collect();
    assert_eq!(paged, all.iter().map(|s| &s["id"]).collect::<Vec<_>>());

    // Filters: by agent name, by agent id, by resource, by time range.
    let (_, by_name) = stack.api("/api/v1/sessions?agent_name=bot-a").await;
    assert_eq!(by_name["items"].as_array().unwrap().len(), 2);
    let agent_b = all.iter().find(|s| s["agent_name"] == "bot-b").unwrap()["agent_id"].as_str().unwrap().to_owned();
    let (_, by_id) = stack.api(&format!("/api/v1/sessions?agent={agent_b}")).await;
    assert_eq!(by_id["items"].as_array().unwrap().len(), 1);
    let (_, other_resource) = stack.api("/api/v1/sessions?resource=payroll").await;
    assert_eq!(other_resource["items"].as_array().unwrap().len(), 0);
    let from = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (status, in_range) = stack.api(&format!("/api/v1/sessions?from={}", urlencode(&from))).await;
    assert_eq!(status, 200, "{in_range}");
    assert_eq!(in_range["items"].as_array().unwrap().len(), 3);
    let (_, before_range) = stack.api(&format!("/api/v1/sessions?to={}", urlencode(&from))).await;
    assert_eq!(before_range["items"].as_array().unwrap().len(), 0);

    // Bad input gets a clear 400, an unknown session a 404, both as JSON problems.
    for (path, status, needle) in [
        ("/api/v1/sessions?limit=0", 400, "limit"),
        ("/api/v1/sessions?limit=abc", 400, "limit"),
        ("/api/v1/sessions?from=yesterday", 400, "from"),
        ("/api/v1/sessions?agent=not-a-uuid", 400, "agent"),
        ("/api/v1/sessions/not-a-uuid", 400, "UUID"),
        ("/api/v1/sessions/00000000-0000-7000-8000-000000000000", 404, "no session"),
        ("/api/v1/sessions/00000000-0000-7000-8000-000000000000/events", 404, "no session"),
    ] {
        let (got, body) = stack.api(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["message"].as_str().unwrap_or("").contains(needle), "{path}: {body}");
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_checks_the_token_and_the_role() {
    let stack = Stack::start().await;
    // The route list comes from the API document, so a new route cannot escape this table.
    let doc: serde_json::Value = serde_json::from_str(&tollgate_control_plane::api::openapi_json()).unwrap();
    let id = "00000000-0000-7000-8000-000000000000";
    let routes: Vec<(String, Vec<String>)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/api/"))
        .map(|(path, ops)| (path.replace("{id}", id), ops.as_object().unwrap().keys().cloned().collect()))
        .collect();
    assert!(routes.len() >= 7, "{routes:?}");

    let agent = stack.agent_token("bot");
    let mut groups = serde_json::Map::new();
    groups.insert("groups".into(), serde_json::json!(["reviewers"]));
    let agent_audience = stack.issuer.mint("alice@example.com", AGENT_AUDIENCE, 600, &groups).unwrap();
    // (who, token, may read, may change policy, may read approvals, may decide them);
    // None = refused before any role check (401).
    type Rights = Option<(bool, bool, bool, bool)>;
    let callers: Vec<(&str, Option<String>, Rights)> = vec![
        ("nobody", None, None),
        ("garbage", Some("x.y.z".into()), None),
        ("an agent token", Some(agent), None),
        ("a reviewer group with the agent audience", Some(agent_audience), None),
        (
            "a person without groups",
            Some(stack.person_token("eve@example.com", &[])),
            Some((false, false, false, false)),
        ),
        (
            "an approver only",
            Some(stack.person_token("bob@example.com", &["approvers"])),
            Some((false, false, true, true)),
        ),
        ("a reviewer", Some(stack.person_token("alice@example.com", &["reviewers"])), Some((true, false, true, false))),
        ("an auditor", Some(stack.person_token("carol@example.com", &["auditors"])), Some((true, false, true, false))),
        ("an admin", Some(stack.person_token("dave@example.com", &["admins"])), Some((true, true, true, true))),
    ];
    let body = serde_json::json!({});
    for (route, methods) in &routes {
        for method in methods {
            let reads = match method.as_str() {
                "get" => true,
                "put" | "post" => false,
                other => panic!("extend this test for {other} {route}"),
            };
            for (who, token, rights) in &callers {
                let (status, response) =
                    stack.api_send(&method.to_uppercase(), route, token.as_deref(), Some(&body)).await;
                // Ending a session is an approver's decision, like deciding on a held command.
                let approvals = route.starts_with("/api/v1/approvals") || route.ends_with("/end");
                // Asking for approval ahead of a run grants nothing: any authenticated caller may.
                let ask = route == "/api/v1/approvals" && method == "post";
                let allowed = rights.map(|(read, change, read_approvals, decide)| match (approvals, reads) {
                    _ if ask => true,
                    (false, true) => read,
                    (false, false) => change,
                    (true, true) => read_approvals,
                    (true, false) => decide,
                });
                match allowed {
                    None => assert_eq!(
                        (status, response["error"].as_str()),
                        (401, Some("unauthorized")),
                        "{who}: {method} {route}"
                    ),
                    Some(false) => assert_eq!(
                        (status, response["error"].as_str()),
                        (403, Some("forbidden")),
                        "{who}: {method} {route}"
                    ),
                    Some(true) => {
                        assert!(status != 401 && status != 403, "{who} may {method} {route}: {status} {response}")
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_the_api_document() {
    let mut stack = Stack::start().await;
    let (status, health) = stack.api_as("/healthz", None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = stack.api_as("/readyz", None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")), "{ready}");

    let client = stack.agent_client(&stack.agent_token("bot")).await.expect("connect");
    client.simple_query("select 1").await.expect("query");
    drop(client);
    stack.ended_sessions(1).await;
    let base = format!("http://{}", stack.control.addr);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let projected: u64 = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_projector_events_total{result=\"projected\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("projected counter");
    assert!(projected >= 4, "{metrics}");

    let served = reqwest::get(format!("{base}/openapi.json")).await.unwrap().text().await.unwrap();
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json")).unwrap();
    assert_eq!(served, checked_in);
    // The API reference is the control plane's own files: nothing loads from elsewhere, and
    // its content policy says so to the browser.
    let page = reqwest::get(format!("{base}/docs")).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["content-security-policy"], "default-src 'self'; frame-ancestors 'none'");
    let html = page.text().await.unwrap();
    assert!(html.contains("<html") && html.contains(r#"<script src="/docs/reference.js""#), "{html}");
    assert!(html.contains(r#"<label for="filter">"#), "the filter has a label");
    for (asset, kind, holds) in
        [("reference.js", "text/javascript", "fetch(\"/openapi.json\")"), ("reference.css", "text/css", "section.op")]
    {
        let served = reqwest::get(format!("{base}/docs/{asset}")).await.unwrap();
        assert_eq!(served.status().as_u16(), 200, "{asset}");
        assert!(served.headers()["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
        let text = served.text().await.unwrap();
        assert!(text.contains(holds), "{asset}");
        assert!(!text.contains("http://") && !text.contains("https://"), "{asset} names no other origin");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "the page names no other origin");

    // With NATS gone, the control plane says it is not ready, and why.
    stack.nats.kill();
    let problems = tollgate_tests::eventually(30, "readyz to report NATS down", || async {
        let (status, ready) = stack.api_as("/readyz", None).await;
        (status == 503).then_some(ready)
    })
    .await;
    assert!(problems["problems"].to_string().contains("nats"), "{problems}");
    // Back up, so the record can be read and checked against the upstream's log.
    stack.nats.restart().await;
}
