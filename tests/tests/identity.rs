//! Agent identity: issuer key rotation without a restart.

use tollgate_tests::{eventually, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_issuer_keys_are_picked_up_without_a_restart() {
    let stack = Stack::start().await;
    let before = stack.agent_token("bot-rotation");
    let client = stack.agent_client(&before).await.expect("the first key works");
    drop(client);

    // The issuer replaces its key: new tokens carry a kid the proxy has never seen.
    stack.issuer.rotate(false).expect("rotate");
    let after = stack.agent_token("bot-rotation");
    assert_ne!(before.split('.').next(), after.split('.').next(), "the new token names a new kid");
    let client =
        eventually(10, "the proxy to fetch the new key", || async { stack.agent_client(&after).await.ok() }).await;
    assert_eq!(client.query_one("select 1", &[]).await.expect("query").get::<_, i32>(0), 1);

    // Tokens signed with the retired key no longer verify once the keys were refreshed.
    let Err(err) = stack.agent_client(&before).await else { panic!("a token of the retired key was accepted") };
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("signing key") && message.contains("is not among the issuer's keys"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_sharing_a_subject_are_told_apart_and_strangers_are_refused() {
    let stack = Stack::start().await;
    let mut config = stack.proxy_config("proxy-mapping");
    let mapping: tollgate_shared::identity::mapping::IdentityMapping = toml::from_str(
        r#"
        name = "{repository}/{workflow}@{ref}"
        keep = ["repository", "workflow", "ref", "run_id"]
        [[rules]]
        match = { repository = "acme/*" }
        groups = ["ci"]
        [[rules]]
        match = { repository = "acme/*", environment = "prod" }
        groups = ["deployers"]
        "#,
    )
    .expect("mapping");
    config.agent_issuers[0].mapping = Some(mapping);
    let proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy");

    // One service account (same sub), two workflows, two runs.
    let token = |workflow: &str, run: &str, repository: &str| {
        let claims = serde_json::json!({"repository": repository, "workflow": workflow, "ref": "refs/heads/main",
            "run_id": run, "environment": "prod", "actor": "octocat"});
        let serde_json::Value::Object(extra) = claims else { unreachable!() };
        stack
            .issuer
            .mint("repo:acme/orders:environment:prod", tollgate_tests::AGENT_AUDIENCE, 600, &extra)
            .expect("mint")
    };
    let dsn = |token: &str| {
        format!("host=127.0.0.1 port={} dbname=demo user=ci password={token}", proxy.postgres_addr.port())
    };
    for (workflow, run) in [("deploy", "101"), ("migrate", "102")] {
        let (client, connection) =
            tokio_postgres::connect(&dsn(&token(workflow, run, "acme/orders")), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client.simple_query(&format!("select '{workflow}'")).await.expect("query");
    }
    let err = tokio_postgres::connect(&dsn(&token("deploy", "103", "evil/orders")), tokio_postgres::NoTls)
        .await
        .err()
        .expect("no rule matches");
    let db = err.as_db_error().expect("server error");
    assert_eq!((db.code().code(), db.message()), ("28000", "tollgate: no identity rule matched"));

    let sessions = stack.ended_sessions(2).await;
    let mut names: Vec<&str> = sessions.iter().map(|s| s["agent_name"].as_str().unwrap_or("")).collect();
    names.sort();
    assert_eq!(names, ["acme/orders/deploy@refs/heads/main", "acme/orders/migrate@refs/heads/main"]);
    assert_ne!(sessions[0]["agent_id"], sessions[1]["agent_id"]);
    let (_, agents) = stack.api("/api/v1/agents").await;
    let agents = agents.as_array().expect("agents");
    assert_eq!(agents.len(), 2, "{agents:?}");
    for agent in agents {
        assert_eq!(agent["subject"], "repo:acme/orders:environment:prod");
        assert_eq!(agent["groups"], serde_json::json!(["ci", "deployers"]));
        let keys: Vec<&String> = agent["attributes"].as_object().expect("attributes").keys().collect();
        assert_eq!(keys, ["ref", "repository", "run_id", "workflow"], "only the kept claims");
    }
    // Every event of each session carries the precise identity.
    let id = sessions[0]["id"].as_str().expect("id");
    let (_, events) = stack.api(&format!("/api/v1/sessions/{id}/events")).await;
    for event in events.as_array().expect("events") {
        assert_eq!(event["event"]["agent"]["name"], sessions[0]["agent_name"]);
        assert_eq!(event["event"]["agent"]["groups"], serde_json::json!(["ci", "deployers"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_does_not_hammer_the_issuer() {
    let stack = Stack::start().await;
    let fetches_before = stack.issuer.jwks_fetches();
    let started = std::time::Instant::now();
    let claims = serde_json::json!({"iss": stack.issuer.url(), "sub": "bot", "aud": tollgate_tests::AGENT_AUDIENCE,
        "exp": chrono::Utc::now().timestamp() + 600});
    let good = stack.issuer.sign(&claims).expect("sign");
    let (header, rest) = good.split_once('.').expect("jwt");
    let header: serde_json::Value = serde_json::from_slice(&base64_decode(header)).expect("header");
    for i in 0..30 {
        let mut forged = header.clone();
        forged["kid"] = format!("forged-{i}").into();
        let token = format!("{}.{rest}", base64_encode(forged.to_string().as_bytes()));
        let Err(err) = stack.agent_client(&token).await else { panic!("forged kid accepted") };
        let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains("is not among the issuer's keys"), "{message}");
    }
    // min_refresh_secs = 1 in the test config: at most one refresh per second of flood (plus
    // the first), not one per forged token.
    let fetched = stack.issuer.jwks_fetches() - fetches_before;
    let allowed = 2 + started.elapsed().as_secs();
    assert!(fetched <= allowed, "the flood caused {fetched} JWKS fetches in {:?}", started.elapsed());
    assert!(fetched < 30);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("base64")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_name_github_gitlab_kubernetes_and_client_credentials_agents() {
    use tollgate_shared::token::{IssuerConfig, Preset};
    use tollgate_tests::start_issuer;
    let stack = Stack::start().await;
    let (github, _g) = start_issuer().await;
    let (gitlab, _l) = start_issuer().await;
    let (k8s, _k) = start_issuer().await;
    let (idp, _i) = start_issuer().await;
    let mut config = stack.proxy_config("proxy-presets");
    for (preset, issuer) in [
        (Preset::GithubActions, &github),
        (Preset::GitlabCi, &gitlab),
        (Preset::Kubernetes, &k8s),
        (Preset::ClientCredentials, &idp),
    ] {
        let mut c = IssuerConfig::new(issuer.url(), tollgate_tests::AGENT_AUDIENCE);
        c.preset = Some(preset);
        // The test issuers sign ES256; real GitHub and GitLab sign RS256 (the presets' default).
        c.algorithms = vec!["ES256".into()];
        c.min_refresh_secs = 1;
        config.agent_issuers.push(c);
    }
    let proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy");

    let object = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let tokens = [
        github
            .mint(
                "repo:acme/orders:ref:refs/heads/main",
                tollgate_tests::AGENT_AUDIENCE,
                600,
                &object(serde_json::json!({"repository": "acme/orders", "repository_owner": "acme", "workflow": "deploy",
                    "ref": "refs/heads/main", "sha": "0123abcd", "run_id": "99", "actor": "octocat", "event_name": "push"})),
            )
            .unwrap(),
        gitlab
            .mint(
                "project_path:acme/orders:ref_type:branch:ref:main",
                tollgate_tests::AGENT_AUDIENCE,
                600,
                &object(serde_json::json!({"project_path": "acme/orders", "namespace_path": "acme", "ref": "main",
                    "ref_type": "branch", "pipeline_id": "4711", "job_id": "815", "user_login": "dev"})),
            )
            .unwrap(),
        k8s.mint(
            "system:serviceaccount:prod:deployer",
            tollgate_tests::AGENT_AUDIENCE,
            600,
            &object(serde_json::json!({"kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "deployer", "uid": "u-1"},
                "pod": {"name": "deployer-7d9", "uid": "p-1"}}})),
        )
        .unwrap(),
        idp.mint(
            "0oa1b2c3-reporting-bot",
            tollgate_tests::AGENT_AUDIENCE,
            600,
            &object(serde_json::json!({"azp": "reporting-bot", "scope": "db.read", "client_secret_hint": "never kept"})),
        )
        .unwrap(),
    ];
    for token in &tokens {
        let dsn = format!("host=127.0.0.1 port={} dbname=demo user=ci password={token}", proxy.postgres_addr.port());
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.simple_query("select 1").await.expect("query");
    }
    let sessions = stack.ended_sessions(4).await;
    let mut names: Vec<&str> = sessions.iter().map(|s| s["agent_name"].as_str().unwrap_or("")).collect();
    names.sort();
    assert_eq!(
        names,
        ["0oa1b2c3-reporting-bot", "acme/orders/deploy@refs/heads/main", "acme/orders@main", "prod/deployer"]
    );
    let (_, agents) = stack.api("/api/v1/agents").await;
    let gitlab_agent =
        agents.as_array().unwrap().iter().find(|a| a["name"] == "acme/orders@main").expect("gitlab agent");
    assert_eq!(gitlab_agent["attributes"]["pipeline_id"], "4711");
    let k8s_agent = agents.as_array().unwrap().iter().find(|a| a["name"] == "prod/deployer").expect("k8s agent");
    assert_eq!(k8s_agent["attributes"]["kubernetes.io"]["pod"]["name"], "deployer-7d9");
    let idp_agent =
        agents.as_array().unwrap().iter().find(|a| a["name"] == "0oa1b2c3-reporting-bot").expect("idp agent");
    assert_eq!(
        idp_agent["attributes"],
        serde_json::json!({"azp": "reporting-bot", "scope": "db.read"}),
        "only the kept claims"
    );
}
