//! Access-review reports: a scripted scenario (two bots; allowed, denied, held and approved
//! commands; a refused login) and the rows the per-agent report must show, exactly, as JSON and
//! CSV, page by page.

use serde_json::{json, Value};
use tollgate_tests::{eventually, Stack};

fn by_name<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items.iter().find(|r| r["agent_name"] == name).unwrap_or_else(|| panic!("{name} in {items:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_report_counts_what_each_bot_did() {
    let stack = Stack::start().await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(1);
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); ALTER TABLE victims OWNER TO app");
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "guardrails": { "deny_classes": ["truncate"] },
            "approvals": [{ "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 60 }] }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.enforce(&policy).await;

    let reader = stack.agent_client(&stack.agent_token("reader-bot")).await.expect("connect");
    reader.simple_query("select 1").await.expect("select");
    reader.simple_query("select 2").await.expect("select");
    reader.simple_query("TRUNCATE victims").await.expect_err("denied");
    drop(reader);
    let deploy_token = stack.agent_token("deploy-bot");
    let child = stack.psql_spawn(&deploy_token, None, &["-c", "DROP TABLE victims"]);
    stack.approve_pending("alice@example.com", &["approvers", "dba"], "ok").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A login its token verified for, on a database no grant gives it.
    let refused = stack.agent_dsn(&deploy_token).replace("dbname=demo", "dbname=elsewhere");
    assert!(tokio_postgres::connect(&refused, tokio_postgres::NoTls).await.is_err());
    stack.ended_sessions(2).await;

    let to = chrono::Utc::now() + chrono::Duration::seconds(60);
    let range = format!("from={}&to={}", from.format("%Y-%m-%dT%H:%M:%S%.fZ"), to.format("%Y-%m-%dT%H:%M:%S%.fZ"));
    let report = eventually(20, "the report to count the refused login and the release", || async {
        let (status, page) = stack.api(&format!("/api/v1/reviews/agents?{range}")).await;
        let items = page["items"].as_array()?.clone();
        let deploy = items.iter().find(|r| r["agent_name"] == "deploy-bot")?;
        (status == 200 && deploy["refused_logins"] == 1 && deploy["approved"] == 1).then_some(page)
    })
    .await;
    let items = report["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{report}");
    let fields = |r: &Value| {
        json!({
            "resources": r["resources"], "sessions": r["sessions"], "commands": r["commands"],
            "allowed": r["allowed"], "denied": r["denied"], "held": r["held"], "approved": r["approved"],
            "classes": r["classes"], "refused_logins": r["refused_logins"], "policy_versions": r["policy_versions"],
        })
    };
    assert_eq!(
        fields(by_name(items, "reader-bot")),
        json!({ "resources": ["demo"], "sessions": 1, "commands": 3, "allowed": 2, "denied": 1, "held": 0, "approved": 0,
                "classes": { "select": 2, "truncate": 1 }, "refused_logins": 0, "policy_versions": [version] })
    );
    assert_eq!(
        fields(by_name(items, "deploy-bot")),
        json!({ "resources": ["demo"], "sessions": 1, "commands": 1, "allowed": 0, "denied": 0, "held": 1, "approved": 1,
                "classes": { "drop": 1 }, "refused_logins": 1, "policy_versions": [version] })
    );
    let reader = by_name(items, "reader-bot");
    assert!(reader["first_use"].as_str() <= reader["last_use"].as_str() && !reader["first_use"].is_null());

    // Page by page, and the same as CSV.
    let (_, first) = stack.api(&format!("/api/v1/reviews/agents?{range}&limit=1")).await;
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let (_, second) = stack.api(&format!("/api/v1/reviews/agents?{range}&limit=1&cursor={cursor}")).await;
    assert!(second["next_cursor"].is_null(), "{second}");
    let paged = [first["items"][0]["agent_name"].clone(), second["items"][0]["agent_name"].clone()];
    assert!(paged.contains(&json!("reader-bot")) && paged.contains(&json!("deploy-bot")), "{paged:?}");
    let (status, content_type, csv) = stack.api_text(&format!("/api/v1/reviews/agents?{range}&format=csv")).await;
    assert_eq!(status, 200, "{csv}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("agent_id,agent_name,issuer,subject,resources,sessions,commands,allowed,denied"));
    let reader_line = lines.iter().find(|l| l.contains(",reader-bot,")).expect("reader-bot's row");
    assert!(reader_line.contains(",demo,1,3,2,1,0,0,0,,select=2;truncate=1,0,"), "{reader_line}");
    assert!(reader_line.ends_with(&format!(",{version}")), "{reader_line}");

    // The CLI (`tollgate review agents --csv`) follows every page: with pages of one row here
    // too, it prints the same rows under one header.
    let api = tollgate_control_plane::cli::Api::new(&format!("http://{}", stack.control.addr), &stack.reviewer_token());
    let (from_arg, to_arg) = (from.to_rfc3339(), to.to_rfc3339());
    let printed = tollgate_control_plane::cli::review(&api, "agents", &from_arg, Some(&to_arg), None, true, 1)
        .await
        .expect("tollgate review agents --csv");
    let mut printed_lines: Vec<&str> = printed.lines().collect();
    let mut served_lines = lines.clone();
    printed_lines.sort_unstable();
    served_lines.sort_unstable();
    assert_eq!(printed_lines, served_lines);
    let printed = tollgate_control_plane::cli::review(&api, "approvals", &from_arg, Some(&to_arg), None, false, 1)
        .await
        .expect("tollgate review approvals");
    let printed: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(printed[0]["statement"], "DROP TABLE victims", "{printed}");
    let bad = tollgate_control_plane::cli::review(&api, "agents", "yesterday", None, None, false, 100).await;
    assert!(bad.expect_err("a bad date").to_string().starts_with("400"), "the API's reason reaches the user");

    // Per resource: who reached it, and how.
    let (status, page) = stack.api(&format!("/api/v1/reviews/resources?{range}")).await;
    assert_eq!(status, 200, "{page}");
    // The refused login asked for a database no session reached: it is a row of its own.
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    let (demo, elsewhere) = (&page["items"][0], &page["items"][1]);
    assert_eq!(
        json!([
            elsewhere["resource"],
            elsewhere["resource_kind"],
            elsewhere["sessions"],
            elsewhere["commands"],
            elsewhere["refused_logins"],
            elsewhere["agents"]
        ]),
        json!(["elsewhere", "postgres", 0, 0, 1, []]),
        "{page}"
    );
    assert_eq!(
        json!({ "resource": demo["resource"], "kind": demo["resource_kind"], "sessions": demo["sessions"],
                "commands": demo["commands"], "allowed": demo["allowed"], "denied": demo["denied"], "held": demo["held"],
                "approved": demo["approved"], "refused_logins": demo["refused_logins"] }),
        json!({ "resource": "demo", "kind": "postgres", "sessions": 2, "commands": 4, "allowed": 2, "denied": 1,
                "held": 1, "approved": 1, "refused_logins": 0 }),
        "the refused login was for another database: {page}"
    );
    let per_agent: Vec<Value> = demo["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| json!([a["agent_name"], a["sessions"], a["commands"], a["denied"], a["held"], a["classes"]]))
        .collect();
    assert_eq!(
        per_agent,
        [
            json!(["deploy-bot", 1, 1, 0, 1, { "drop": 1 }]),
            json!(["reader-bot", 1, 3, 1, 0, { "select": 2, "truncate": 1 }])
        ]
    );

    // Approvals evidence: who asked, who decided, how, why, how long it waited, what came of it.
    let (status, page) = stack.api(&format!("/api/v1/reviews/approvals?{range}")).await;
    assert_eq!(status, 200, "{page}");
    let evidence = &page["items"][0];
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(
        json!([
            evidence["agent_name"],
            evidence["statement"],
            evidence["rule"],
            evidence["status"],
            evidence["decisions"][0]["approver"],
            evidence["decisions"][0]["verdict"],
            evidence["decisions"][0]["channel"],
            evidence["decisions"][0]["reason"]
        ]),
        json!([
            "deploy-bot",
            "DROP TABLE victims",
            "destructive",
            "approved",
            "alice@example.com",
            "approve",
            "rest",
            "ok"
        ])
    );
    assert!(evidence["waited_ms"].as_i64().is_some_and(|w| w >= 0) && !evidence["released_at"].is_null(), "{evidence}");
    let (_, _, csv) = stack.api_text(&format!("/api/v1/reviews/approvals?{range}&format=csv")).await;
    assert!(csv.contains(",deploy-bot,demo,DROP TABLE victims,destructive,drop,1,approved,approve by alice@example.com via rest (ok),"), "{csv}");

    // Who ran this: one request, every agent and session, with the approval behind it.
    let (status, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&text=DROP%20TABLE%20victims")).await;
    assert_eq!(status, 200, "{page}");
    let ran: Vec<Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| json!([r["agent_name"], r["decision"], r["approval_status"], r["approvers"], r["outcome"]]))
        .collect();
    assert_eq!(ran, [json!(["deploy-bot", "hold", "approved", ["alice@example.com"], "ok"])]);
    let (_, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&contains=select%20")).await;
    let readers: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|r| r["agent_name"].as_str()).collect();
    assert_eq!(readers, ["reader-bot", "reader-bot"], "{page}");
    let (_, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&contains=100%25")).await;
    assert_eq!(page["items"], json!([]), "a % is matched literally: {page}");
    // By shape: `select 1` and `select 2` are one statement with other values; the fingerprint
    // a row carries finds the same runs, and the DROP is another shape.
    let (_, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&same_as=SELECT%20%2042%20;")).await;
    let items = page["items"].as_array().expect("items");
    let texts: Vec<&str> = items.iter().filter_map(|r| r["statement"].as_str()).collect();
    assert_eq!(texts, ["select 1", "select 2"], "{page}");
    let print = items[0]["fingerprint"].as_str().expect("fingerprint");
    assert_eq!(items[1]["fingerprint"], print);
    let (_, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&fingerprint={print}")).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    let (_, page) = stack.api(&format!("/api/v1/reviews/statements?{range}&same_as=drop%20table%20VICTIMS")).await;
    let dropped: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|r| r["statement"].as_str()).collect();
    assert_eq!(dropped, ["DROP TABLE victims"], "{page}");

    // A signed export of the period, checked offline with the control plane's public key.
    let (status, _, exported) = stack.api_text(&format!("/api/v1/reviews/export?{range}")).await;
    assert_eq!(status, 200, "{exported}");
    let check = tollgate_shared::export::check(exported.as_bytes(), &stack.control.public_key).expect("signed");
    assert_eq!((check.sessions, check.intact), (2, 2), "{:?}", check.problems);
    assert!(check.problems.is_empty() && check.events >= 8, "{check:?}");
    let signed: Value = serde_json::from_str(&exported).expect("JSON");
    let body: Value = serde_json::from_str(signed["body"].as_str().expect("body")).expect("the export");
    assert_eq!(body["reports"]["agents"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["reports"]["approvals"][0]["statement"], "DROP TABLE victims");
    // Edited after signing: the signature no longer holds. Another key: refused.
    let edited = exported.replacen("DROP TABLE victims", "SELECT 1 FROM victims", 1);
    assert!(tollgate_shared::export::check(edited.as_bytes(), &stack.control.public_key).is_err());
    let (other, _) = tollgate_shared::control::ControlKey::generate().expect("a key");
    assert!(tollgate_shared::export::check(exported.as_bytes(), &other.public_hex()).is_err());

    // Bad requests are refused with a reason.
    for bad in [
        "/api/v1/reviews/agents".to_owned(),
        format!("/api/v1/reviews/agents?{range}&format=xml"),
        format!("/api/v1/reviews/agents?{range}&limit=0"),
        format!("/api/v1/reviews/approvals?{range}&cursor=not-a-cursor"),
        format!("/api/v1/reviews/statements?{range}"),
        format!("/api/v1/reviews/export?from={}&to={}", to.to_rfc3339(), from.to_rfc3339()).replace('+', "%2B"),
        format!("/api/v1/reviews/statements?{range}&text=a&contains=b"),
        format!("/api/v1/reviews/statements?{range}&fingerprint=ABCDEF0123456789"),
        format!("/api/v1/reviews/statements?{range}&fingerprint=abc"),
        format!("/api/v1/reviews/statements?{range}&same_as=x&language=yaml"),
        format!("/api/v1/reviews/agents?from={}&to={}", to.to_rfc3339(), from.to_rfc3339()).replace('+', "%2B"),
    ] {
        let (status, body) = stack.api(&bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_grants_and_read_only_use_come_with_a_revocation_to_apply() {
    let born = chrono::Utc::now();
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "CREATE TABLE notes (id int); ALTER TABLE notes OWNER TO app");
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres" }, { "name": "demo_md5", "kind": "postgres" }],
        "grants": [
            { "name": "writers", "who": { "agents": ["deploy-*"] }, "resources": { "names": ["demo"] }, "access": "read-write" },
            { "name": "readers", "who": { "agents": ["report-*"] }, "resources": { "names": ["demo", "demo_md5"] }, "access": "read-write" },
            { "name": "spare", "who": { "agents": ["nobody-*"] }, "resources": { "names": ["demo_md5"] }, "access": "admin" }
        ]
    });
    let version = stack.enforce(&policy).await;
    // The period starts under this version (the stack's first one, granting everyone, is over).
    let from = chrono::Utc::now();
    let writer = stack.agent_client(&stack.agent_token("deploy-bot")).await.expect("connect");
    writer.simple_query("insert into notes values (1)").await.expect("insert");
    drop(writer);
    let reader = stack.agent_client(&stack.agent_token("report-bot")).await.expect("connect");
    reader.simple_query("select count(*) from notes").await.expect("select");
    // A write the guardrails refuse does not count as using write access.
    reader.simple_query("insert into missing_table values (1)").await.expect_err("no such table");
    drop(reader);
    stack.ended_sessions(2).await;

    let to = chrono::Utc::now() + chrono::Duration::seconds(60);
    let range = format!("from={}&to={}", from.format("%Y-%m-%dT%H:%M:%S%.fZ"), to.format("%Y-%m-%dT%H:%M:%S%.fZ"));
    let (status, report) = stack.api(&format!("/api/v1/reviews/unused-grants?{range}")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["policy_version"], version);
    let rows: Vec<Value> = report["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| json!([g["grant"], g["resource"], g["sessions"], g["agents"], g["wrote"], g["finding"]]))
        .collect();
    assert_eq!(
        rows,
        [
            json!(["writers", "demo", 1, ["deploy-bot"], true, null]),
            json!(["readers", "demo", 1, ["report-bot"], false, "read_only_use"]),
            json!(["readers", "demo_md5", 0, [], false, "unused"]),
            json!(["spare", "demo_md5", 0, [], false, "unused"]),
        ],
        "{report}"
    );
    // The revocation: `spare` gone, `readers` down to what it used, read-only; `writers` as it was.
    let suggested = &report["suggested_policy"];
    let grants: Vec<Value> = suggested["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| json!([g["name"], g["resources"]["names"], g["access"]]))
        .collect();
    assert_eq!(
        grants,
        [json!(["writers", ["demo"], "read-write"]), json!(["readers", ["demo"], "read-only"])],
        "{suggested}"
    );
    let paths: Vec<&str> =
        report["changes"].as_array().expect("changes").iter().filter_map(|c| c["path"].as_str()).collect();
    assert!(paths.iter().any(|p| p.starts_with("grants[spare]")), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("grants[readers]")), "{paths:?}");
    // The CLI prints the same report.
    let api = tollgate_control_plane::cli::Api::new(&format!("http://{}", stack.control.addr), &stack.reviewer_token());
    let printed = tollgate_control_plane::cli::review(
        &api,
        "unused-grants",
        &from.to_rfc3339(),
        Some(&to.to_rfc3339()),
        None,
        false,
        1,
    )
    .await
    .expect("tollgate review unused-grants");
    let printed: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(printed["suggested_policy"], *suggested);
    // It applies as it is, and the same period then has nothing left to revoke.
    let applied = stack.put_policy(suggested).await;
    assert_eq!(applied, version + 1);
    let after = eventually(20, "the new version on record", || async {
        let (_, after) = stack.api(&format!("/api/v1/reviews/unused-grants?{range}")).await;
        (after["policy_version"] == applied).then_some(after)
    })
    .await;
    let live: Vec<&Value> = after["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .filter(|g| g["in_live_policy"] == true)
        .map(|g| &g["finding"])
        .collect();
    assert!(live.len() == 2 && live.iter().all(|f| f.is_null()), "{after}");
    assert_eq!(after["changes"], json!([]), "{after}");
    // `spare` was access held in the period although the live policy has dropped it since.
    let dropped: Vec<Value> = after["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .filter(|g| g["in_live_policy"] == false)
        .map(|g| json!([g["grant"], g["resource"], g["finding"]]))
        .collect();
    assert_eq!(dropped, [json!(["spare", "demo_md5", "unused"])], "{after}");
    // Before the first version nobody held any grant: nothing to report.
    let before = format!(
        "from={}&to={}",
        (born - chrono::Duration::seconds(60)).format("%Y-%m-%dT%H:%M:%S%.fZ"),
        born.format("%Y-%m-%dT%H:%M:%S%.fZ")
    );
    let (status, early) = stack.api(&format!("/api/v1/reviews/unused-grants?{before}")).await;
    assert_eq!((status, &early["grants"]), (200, &json!([])), "{early}");
}

/// The review the issue scripts: bots sharing one service account, told apart by their claims;
/// allowed, denied, held-and-approved and held-and-expired commands; the report rows exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_sharing_one_service_account_are_reviewed_apart() {
    let stack = Stack::start().await;
    let mut config = stack.proxy_config("proxy-mapping");
    config.agent_issuers[0].mapping = Some(toml::from_str(r#"name = "{repository}/{workflow}""#).expect("mapping"));
    let proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy");
    let port = proxy.postgres_addr.port();
    stack.pg.admin_sql("demo", "CREATE TABLE victims (id int); CREATE TABLE others (id int); ALTER TABLE victims OWNER TO app; ALTER TABLE others OWNER TO app");
    let policy = json!({
        "resources": [{ "name": "demo", "kind": "postgres",
            "guardrails": { "deny_classes": ["truncate"] },
            "approvals": [{ "name": "destructive", "hold_classes": ["drop"], "approver_groups": ["dba"], "timeout_secs": 3 }] }],
        "grants": [{ "name": "ci", "who": { "agents": ["acme/*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    });
    let version = stack.enforce(&policy).await;
    let from = chrono::Utc::now();
    // One service account (the same `sub`), two workflows.
    let token = |workflow: &str| {
        let serde_json::Value::Object(extra) = json!({ "repository": "acme/orders", "workflow": workflow }) else {
            unreachable!()
        };
        stack
            .issuer
            .mint("repo:acme/orders:environment:prod", tollgate_tests::AGENT_AUDIENCE, 600, &extra)
            .expect("mint")
    };
    let deploy = stack.psql(&token("deploy"), Some(port), &["-c", "select 1", "-c", "TRUNCATE victims"], None);
    assert!(String::from_utf8_lossy(&deploy.stderr).contains("statement denied"), "denied: {deploy:?}");
    let held = stack.psql_spawn(&token("deploy"), Some(port), &["-c", "DROP TABLE victims"]);
    stack.approve_pending("alice@example.com", &["approvers", "dba"], "release 4.2").await;
    let out = tokio::task::spawn_blocking(move || held.wait_with_output().expect("psql")).await.expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Nobody decides on the migration's drop: it expires, and the table stays.
    let expired = stack.psql(&token("migrate"), Some(port), &["-c", "select 2", "-c", "DROP TABLE others"], None);
    assert!(!expired.status.success(), "the held drop expired: {expired:?}");
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from pg_tables where tablename = 'others'").trim(), "1");
    stack.ended_sessions(3).await;

    let to = chrono::Utc::now() + chrono::Duration::seconds(60);
    let range = format!("from={}&to={}", from.format("%Y-%m-%dT%H:%M:%S%.fZ"), to.format("%Y-%m-%dT%H:%M:%S%.fZ"));
    let report = eventually(20, "both workflows and the expiry in the report", || async {
        let (_, page) = stack.api(&format!("/api/v1/reviews/agents?{range}")).await;
        let items = page["items"].as_array()?;
        let migrate = items.iter().find(|r| r["agent_name"] == "acme/orders/migrate")?;
        (items.len() == 2 && migrate["expired"] == 1).then(|| items.clone())
    })
    .await;
    let rows: Vec<Value> = ["acme/orders/deploy", "acme/orders/migrate"]
        .iter()
        .map(|name| {
            let r = by_name(&report, name);
            json!({ "subject": r["subject"], "sessions": r["sessions"], "commands": r["commands"], "allowed": r["allowed"],
                    "denied": r["denied"], "held": r["held"], "approved": r["approved"], "expired": r["expired"],
                    "approvers": r["approvers"], "classes": r["classes"], "policy_versions": r["policy_versions"] })
        })
        .collect();
    assert_eq!(
        rows,
        [
            json!({ "subject": "repo:acme/orders:environment:prod", "sessions": 2, "commands": 3, "allowed": 1,
                    "denied": 1, "held": 1, "approved": 1, "expired": 0, "approvers": ["alice@example.com"],
                    "classes": { "drop": 1, "select": 1, "truncate": 1 }, "policy_versions": [version] }),
            json!({ "subject": "repo:acme/orders:environment:prod", "sessions": 1, "commands": 2, "allowed": 1,
                    "denied": 0, "held": 1, "approved": 0, "expired": 1, "approvers": [],
                    "classes": { "drop": 1, "select": 1 }, "policy_versions": [version] }),
        ]
    );
    let (_, approvals) = stack.api(&format!("/api/v1/reviews/approvals?{range}")).await;
    let mut evidence: Vec<Value> = approvals["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| {
            json!([
                a["agent_name"],
                a["statement"],
                a["status"],
                a["expiry_reason"],
                a["decisions"].as_array().map(Vec::len)
            ])
        })
        .collect();
    evidence.sort_by_key(|e| e[0].to_string());
    assert_eq!(
        evidence,
        [
            json!(["acme/orders/deploy", "DROP TABLE victims", "approved", null, 1]),
            json!(["acme/orders/migrate", "DROP TABLE others", "expired", "timeout", 0]),
        ]
    );
}
