//! Agents are refused with a clear error, before any upstream connection, when their token or
//! resource is wrong; and nothing secret ever leaves the proxy.

use base64::Engine;
use tollgate_control_plane::dev_issuer::DevIssuer;
use tollgate_tests::{captured_logs, Stack, Tap, AGENT_AUDIENCE};

/// Connect through the proxy with `password` as the token, to `database`; the server's error.
async fn refused(stack: &Stack, password: &str, database: &str) -> (String, String) {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(stack.proxy.postgres_addr.port()).user("ci-bot").dbname(database).password(password);
    let err = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => panic!("connection with {password:?} to {database} was accepted"),
        Err(e) => e,
    };
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

fn good_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_unknown_resources_are_refused_before_upstream() {
    let stack = Stack::start().await;
    let good = stack.agent_token("bot");
    let mut extra = serde_json::Map::new();
    extra.insert("repository".into(), "acme/orders".into());
    let expired = stack.issuer.mint("bot", AGENT_AUDIENCE, -300, &extra).expect("mint");
    let wrong_audience = stack.issuer.mint("bot", "someone-else", 600, &extra).expect("mint");
    let now = chrono::Utc::now().timestamp();
    let not_yet_valid = stack
        .issuer
        .sign(&serde_json::json!({"iss": stack.issuer.url(), "sub": "bot", "aud": AGENT_AUDIENCE, "nbf": now + 300, "exp": now + 900}))
        .expect("sign");
    let base_claims =
        serde_json::json!({"iss": stack.issuer.url(), "sub": "bot", "aud": AGENT_AUDIENCE, "exp": now + 600});
    let signed = |mutate: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = base_claims.clone();
        mutate(&mut claims);
        stack.issuer.sign(&claims).expect("sign")
    };
    let missing_sub = signed(&|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    let missing_exp = signed(&|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    let missing_iss = signed(&|c| {
        c.as_object_mut().unwrap().remove("iss");
    });
    let oversized = signed(&|c| c["padding"] = "x".repeat(9000).into());
    let hmac_confusion = {
        // HS256 "signed" with the issuer's public JWKS as the secret: the classic key confusion.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = good_kid(&good);
        let secret = stack.issuer.jwks().to_string();
        jsonwebtoken::encode(&header, &base_claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let unknown_kid = {
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(good.split('.').next().unwrap()).unwrap(),
        )
        .unwrap();
        let mut header = header;
        header["kid"] = "not-a-key".into();
        format!("{}.{}", b64(&header), good.split_once('.').unwrap().1)
    };
    let stranger =
        DevIssuer::new("http://127.0.0.1:9").expect("issuer").mint("bot", AGENT_AUDIENCE, 600, &extra).expect("mint");
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let tampered_signature = {
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[2]).expect("sig");
        sig[10] ^= 0x01;
        format!("{}.{}.{}", parts[0], parts[1], base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
    };
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&parts[1]).expect("claims"))
            .expect("json");
    let mut escalated = claims.clone();
    escalated["sub"] = "admin".into();
    let tampered_payload = format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]);
    parts[0] = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
    let alg_none = format!("{}.{}.", parts[0], parts[1]);

    let kid = stack.issuer.current_kid().expect("a key");
    let critical = stack
        .issuer
        .sign_with_header(&serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid, "crit": ["exp"]}), &base_claims)
        .expect("sign");
    let issued_later = signed(&|c| c["iat"] = (now + 3600).into());
    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        ("no token", String::new(), "demo", "28P01", "no token was presented"),
        ("garbage", "not-a-jwt".into(), "demo", "28P01", "not a well-formed JWT"),
        ("expired", expired, "demo", "28P01", "token expired"),
        ("wrong audience", wrong_audience, "demo", "28P01", "audience does not match"),
        ("not yet valid", not_yet_valid, "demo", "28P01", "not valid for another"),
        ("untrusted issuer", stranger, "demo", "28P01", "is not trusted"),
        ("tampered signature", tampered_signature, "demo", "28P01", "signature is invalid"),
        ("tampered payload", tampered_payload, "demo", "28P01", "signature is invalid"),
        ("alg none", alg_none, "demo", "28P01", "algorithm none is not allowed"),
        ("HS256 key confusion", hmac_confusion, "demo", "28P01", "algorithm HS256 is not allowed"),
        ("unknown kid", unknown_kid, "demo", "28P01", "is not among the issuer's keys"),
        ("oversized", oversized, "demo", "28P01", "the limit is 8192"),
        ("missing sub", missing_sub, "demo", "28P01", "lacks the required claim \"sub\""),
        ("missing exp", missing_exp, "demo", "28P01", "lacks the required claim \"exp\""),
        ("missing iss", missing_iss, "demo", "28P01", "lacks the required claim \"iss\""),
        ("four parts", format!("{good}.more"), "demo", "28P01", "not a well-formed JWT"),
        ("unknown resource", good.clone(), "payroll", "3D000", "unknown resource \"payroll\""),
        ("a crit header", critical, "demo", "28P01", "marks [\"exp\"] as critical"),
        // "issued 3600 s in the future", give or take the seconds this test took.
        ("issued in the future", issued_later, "demo", "28P01", "s in the future"),
    ];
    for (name, token, database, code, message) in cases {
        let (got_code, got_message) = refused(&stack, &token, database).await;
        assert_eq!(got_code, code, "{name}: {got_message}");
        assert!(got_message.starts_with("tollgate: ") && got_message.contains(message), "{name}: {got_message}");
    }
    let (_, expired_message) =
        refused(&stack, &stack.issuer.mint("bot", AGENT_AUDIENCE, -300, &extra).expect("mint"), "demo").await;
    // "tollgate: token expired 300 s ago", give or take the seconds this test took.
    let ago: u64 = expired_message.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((300..=330).contains(&ago), "{expired_message}");

    // A token without a kid is refused once the issuer publishes a second key.
    let no_kid_header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    let no_kid = stack.issuer.sign_with_header(&no_kid_header, &base_claims).expect("sign");
    stack.issuer.rotate(true).expect("rotate, keeping the old key");
    let second_key = stack.issuer.sign(&base_claims).expect("sign with the new key");
    // The proxy learns of the second key when a token names it (an unknown kid refreshes keys,
    // at most once a second): verified, the token is refused only for the unknown resource.
    tollgate_tests::eventually(10, "the proxy to learn the second key", || async {
        (refused(&stack, &second_key, "payroll").await.0 == "3D000").then_some(())
    })
    .await;
    let (code, message) = refused(&stack, &no_kid, "demo").await;
    assert_eq!(code, "28P01", "{message}");
    assert!(message.contains("names no signing key (kid)"), "{message}");

    // No refused attempt reached the upstream, and none opened a session.
    let log = stack.pg.server_log();
    assert!(!log.contains("user=app database=demo"), "an upstream connection was opened:\n{log}");
    let events: Vec<serde_json::Value> =
        stack.stream_messages().await.iter().map(|raw| serde_json::from_slice(raw).unwrap()).collect();
    assert!(
        events
            .iter()
            .all(|e| ["auth.failed", "policy.changed", "node.started"].contains(&e["type"].as_str().unwrap_or(""))),
        "a refused agent opened a session"
    );

    // Every refusal is an auth.failed event, projected for reviews; forged claims stay "claimed".
    let failures = tollgate_tests::eventually(30, "auth failures to be projected", || async {
        let (_, body) = stack.api("/api/v1/auth-failures").await;
        let list = body.as_array()?.clone();
        (list.len() >= 22).then_some(list)
    })
    .await;
    let reasons: Vec<&str> = failures.iter().map(|f| f["reason"].as_str().unwrap_or("")).collect();
    for expected in ["no token was presented", "token audience does not match", "unknown resource \"payroll\""] {
        assert!(reasons.contains(&expected), "{expected} in {reasons:?}");
    }
    let forged = failures.iter().find(|f| f["claimed_subject"] == "admin").expect("the tampered payload's claim");
    assert_eq!(forged["verified"], false);
    assert!(forged["agent_id"].is_null(), "a forged claim never names an agent");
    let unknown_resource = failures.iter().find(|f| f["resource"] == "payroll").expect("unknown resource attempt");
    assert_eq!(unknown_resource["verified"], true);
    assert_eq!(unknown_resource["code"], "3D000");
    let (_, agents) = stack.api("/api/v1/agents").await;
    assert!(agents.as_array().unwrap().iter().all(|a| a["subject"] != "admin"), "forged subject became an agent");

    // The good token still works.
    let client = stack.agent_client(&good).await.expect("valid token connects");
    assert_eq!(client.query_one("select 1", &[]).await.expect("query").get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_password_and_agent_token_never_leave_the_proxy() {
    let stack = Stack::start().await;
    let token = stack.agent_token("bot-leak");
    let tap = Tap::start(stack.proxy.postgres_addr).await;
    let out = stack.psql(
        &token,
        Some(tap.addr.port()),
        &["-c", "select current_user, session_user", "-c", "show password_encryption", "-c", "select 1/0"],
        None,
    );
    assert!(!out.status.success(), "the division by zero should fail the script");
    assert!(String::from_utf8_lossy(&out.stdout).contains("app"), "the upstream user is the proxy's");
    stack.ended_sessions(1).await;

    let secret = stack.upstream_password.as_bytes();
    let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let received = tap.received();
    assert!(!received.is_empty());
    assert!(!contains(&received, secret), "the agent received the upstream password");
    let events = stack.stream_messages().await;
    assert!(events.len() >= 5, "expected a recorded session, got {} events", events.len());
    for event in &events {
        assert!(!contains(event, secret), "an event holds the upstream password");
        assert!(!contains(event, token.as_bytes()), "an event holds the agent token");
    }
    let logs = captured_logs();
    assert!(!logs.contains(&stack.upstream_password), "a log line holds the upstream password");
    assert!(!logs.contains(&token), "a log line holds the agent token");
    // Nor does the projections database.
    let stored = stack.pg.admin_sql(
        "tollgate",
        &format!(
            "select count(*) from events where position('{}' in convert_from(raw, 'UTF8')) > 0",
            stack.upstream_password
        ),
    );
    assert_eq!(stored.trim(), "0");
}

/// Read everything until the proxy closes the connection (or 5 s pass).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

fn startup_message(database: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "ci"), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_malformed_and_fast_path_clients_are_cut_off_cleanly() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let stack = Stack::start().await;
    let mut config = stack.proxy_config("proxy-strict");
    config.postgres.handshake_timeout_ms = 300;
    let proxy = tollgate_data_plane::Proxy::start(config).await.unwrap();
    let addr = proxy.postgres_addr;

    // Silent: closed after the handshake timeout, having been told nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    // Unknown protocol version, absurd length, garbage: closed without a crash.
    for bytes in [vec![0, 0, 0, 8, 0, 0, 0, 1], vec![0, 1, 0, 0, 0, 3, 0, 0], b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        read_to_close(&mut conn).await;
    }

    // A fast-path FunctionCall after login is refused: it would run a function without SQL text.
    let token = stack.agent_token("bot-fastpath");
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&startup_message("demo")).await.unwrap();
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    conn.write_all(&tagged(b'p', &password)).await.unwrap();
    conn.write_all(&tagged(b'F', &[0, 0, 0x0b, 0xb8, 0, 0, 0, 0, 0, 0])).await.unwrap();
    let received = read_to_close(&mut conn).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("0A000") && text.contains("fast-path function calls are not supported"), "{text}");

    // The proxy is still serving.
    let client = stack.agent_client(&token).await.unwrap();
    assert_eq!(client.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
