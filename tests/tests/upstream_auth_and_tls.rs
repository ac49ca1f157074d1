//! Upstream login with each password method the proxy supports, TLS on both sides, and issuer
//! keys from a static JWKS file.

use tollgate_data_plane::config::{PgResource, TlsFiles, UpstreamTls, UpstreamTlsMode};
use tollgate_data_plane::Proxy;
use tollgate_shared::config::SecretRef;
use tollgate_tests::{test_pki, Stack};

fn resource(stack: &Stack, name: &str, host: &str, user: &str, password_file: &std::path::Path) -> PgResource {
    PgResource {
        name: name.into(),
        host: host.into(),
        port: stack.pg.port,
        database: "demo".into(),
        user: user.into(),
        password: Some(SecretRef::File(password_file.to_owned())),
        read_only_user: None,
        read_only_password: None,
        tls: UpstreamTls::default(),
        recording: Default::default(),
    }
}

async fn current_user(proxy: &Proxy, token: &str, dbname: &str) -> String {
    let dsn = format!("host=127.0.0.1 port={} dbname={dbname} user=ci password={token}", proxy.postgres_addr.port());
    let (client, connection) =
        tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("connects through the proxy");
    tokio::spawn(connection);
    client.query_one("select current_user::text", &[]).await.expect("query").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_upstream_logins_with_keys_from_a_jwks_file() {
    let stack = Stack::start().await;
    let dir = stack.dir.path();
    for role in ["app_md5", "app_clear"] {
        let password = format!("{role}-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(dir.join(role), &password).unwrap();
        stack.pg.admin_sql(
            "postgres",
            &format!("SET password_encryption = 'md5'; CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        );
    }
    stack.pg.set_hba(
        "local all all scram-sha-256\n\
         host all app_md5 127.0.0.1/32 md5\n\
         host all app_clear 127.0.0.1/32 password\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    let jwks = dir.join("issuer.jwks");
    std::fs::write(&jwks, stack.issuer.jwks().to_string()).unwrap();
    let mut config = stack.proxy_config("proxy-auth");
    config.agent_issuers[0].jwks_file = Some(jwks);
    config.resources.push(resource(&stack, "demo_md5", "127.0.0.1", "app_md5", &dir.join("app_md5")));
    config.resources.push(resource(&stack, "demo_clear", "127.0.0.1", "app_clear", &dir.join("app_clear")));
    let proxy = Proxy::start(config).await.expect("proxy");
    let token = stack.agent_token("bot-auth");

    assert_eq!(current_user(&proxy, &token, "demo_md5").await, "app_md5");
    assert_eq!(current_user(&proxy, &token, "demo_clear").await, "app_clear");
    assert_eq!(current_user(&proxy, &token, "demo").await, "app");
    let log = stack.pg.server_log();
    assert!(log.contains(r#"identity="app_md5" method=md5"#), "{log}");
    assert!(log.contains(r#"identity="app_clear" method=password"#), "{log}");
    assert!(log.contains(r#"identity="app" method=scram-sha-256"#), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_agent_to_proxy_and_verify_full_to_the_upstream() {
    let stack = Stack::start().await;
    let pki = test_pki(stack.dir.path());
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    stack.pg.enable_ssl(&cert, &key);
    // The upstream accepts the proxy's user over TLS only.
    stack.pg.set_hba(
        "local all all scram-sha-256\n\
         hostssl all app 127.0.0.1/32 scram-sha-256\n\
         hostnossl all app 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    let mut config = stack.proxy_config("proxy-tls");
    config.postgres.tls = Some(TlsFiles { cert: cert.clone(), key: key.clone() });
    config.resources[0].host = "localhost".into();
    config.resources[0].tls = UpstreamTls { mode: UpstreamTlsMode::VerifyFull, ca_file: Some(pki.ca.clone()) };
    let proxy = Proxy::start(config).await.expect("proxy");

    let token = stack.agent_token("bot-tls");
    // psql verifies the proxy's certificate and host name (verify-full).
    let verified = std::process::Command::new(stack.pg.bin("psql"))
        .args(["-X", "-At", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
        .arg(format!(
            "host=localhost port={} dbname=demo user=ci sslmode=verify-full sslrootcert={}",
            proxy.postgres_addr.port(),
            pki.ca.display()
        ))
        .env("PGPASSWORD", &token)
        .output()
        .expect("psql");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    // The upstream session itself is encrypted: pg_stat_ssl says so for the proxy's connection.
    assert_eq!(String::from_utf8_lossy(&verified.stdout).trim(), "t");

    let sessions = stack.ended_sessions(1).await;
    assert_eq!(sessions[0]["client_tls"], true, "the session was over TLS: {sessions:?}");

    // Verification is real: a CA that did not sign the upstream's certificate is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = test_pki(other_dir.path()).ca;
    let mut config = stack.proxy_config("proxy-wrong-ca");
    config.resources[0].host = "localhost".into();
    config.resources[0].tls = UpstreamTls { mode: UpstreamTlsMode::VerifyFull, ca_file: Some(other_ca) };
    let wrong = Proxy::start(config).await.expect("proxy");
    let dsn = format!("host=127.0.0.1 port={} dbname=demo user=ci password={token}", wrong.postgres_addr.port());
    let err = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.err().expect("untrusted upstream refused");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("08001"), "{err}");
}
