//! The proxy's view of the wire is the server's: the lexical rules it parses with are the
//! server's, read-only grants stay read-only whatever an agent sends, and SQL inside SQL
//! (function bodies, DO blocks, SQL text handed to built-ins) is judged as what it does. Each
//! corpus runs through real clients (psql, tokio-postgres, psycopg), and every test ends with
//! the harness's check of the upstream's statement log against the record.

use serde_json::{json, Value};
use tollgate_tests::python::psycopg;
use tollgate_tests::{eventually, Stack};

async fn apply(stack: &Stack, document: &Value) {
    let version = stack.put_policy(document).await;
    eventually(10, "the proxy to load the policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
}

fn policy(guardrails: Value, access: &str) -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "guardrails": guardrails }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": access }]
    })
}

/// `(SQLSTATE, message)` of a statement's error through tokio-postgres (simple protocol).
async fn refused(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let err = client.simple_query(sql).await.expect_err(sql);
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_held_to_the_lexical_rules_the_proxy_parses_with() {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "create table victims (id int); alter table victims owner to app");
    // A DBA's default for the upstream role, which would make the server read `\'` as a quote.
    stack.pg.admin_sql("postgres", "ALTER ROLE app SET standard_conforming_strings = off");
    apply(&stack, &policy(json!({ "deny_classes": ["drop"] }), "admin")).await;
    let token = stack.agent_token("bot-lexical");
    let client = stack.agent_client(&token).await.expect("connect");

    // The proxy's startup option outranks the role default: the server reads strings as it does.
    let on = client.query_one("show standard_conforming_strings", &[]).await.expect("show");
    assert_eq!(on.get::<_, String>(0), "on");
    // The classic smuggle: with standard_conforming_strings off a server would end the string at
    // `\'` and run the DROP. Here both read one string literal.
    let rows = client.query_one("select 'a\\''; drop table victims; --'", &[]).await.expect("one string literal");
    assert_eq!(rows.get::<_, String>(0), "a\\'; drop table victims; --");

    for sql in [
        "set standard_conforming_strings = off",
        "SET standard_conforming_strings TO false",
        "select set_config('standard_conforming_strings', 'off', false)",
        "select set_config(name, 'off', false) from (select 'standard_conforming_strings' as name) s",
        "set client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
        "select set_config('client_encoding', 'GBK', false)",
        "alter role app set client_encoding = 'UHC'",
        "create function f() returns int language sql set standard_conforming_strings = off as 'select 1'",
        // pg_settings has rules that call set_config.
        "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
    ] {
        let (code, message) = refused(&client, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("session_settings"), "{sql}: {message}");
    }
    for sql in
        ["set client_encoding = 'UTF8'", "reset client_encoding", "set standard_conforming_strings = on", "reset all"]
    {
        client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    // A client encoding whose multibyte characters can hide a quote byte is refused at startup.
    let out = std::process::Command::new(stack.pg.bin("psql"))
        .args(["-X", "-c", "select 1"])
        .arg(stack.agent_dsn(&token))
        .env("PGCLIENTENCODING", "SJIS")
        .output()
        .expect("psql runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("client_encoding \"SJIS\" is not supported"), "{stderr}");
    let from_python = psycopg(
        r#"
import json, os, psycopg
try:
    psycopg.connect(os.environ["DSN"], client_encoding="GBK")
    print(json.dumps("connected"))
except psycopg.Error as e:
    print(json.dumps(str(e)))
"#,
        &stack.agent_dsn(&token),
    );
    assert!(
        from_python.as_str().is_some_and(|e| e.contains("client_encoding \"GBK\" is not supported")),
        "{from_python}"
    );
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from pg_tables where tablename = 'victims'").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_grant_stays_read_only() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table notes (body text); alter table notes owner to app;
         create function add_note(t text) returns void language plpgsql as $$ begin insert into notes values (t); end $$;
         create function count_notes() returns bigint language sql stable as 'select count(*) from notes';
         create role reader login password 'reader-pw'; grant select on notes to reader;
         grant execute on function count_notes() to reader",
    );
    apply(&stack, &policy(json!({}), "read-only")).await;
    let token = stack.agent_token("bot-reader");
    let client = stack.agent_client(&token).await.expect("connect");
    for (sql, why) in [
        ("select set_config('default_transaction_read_only', 'off', false)", "read_only_grant"),
        ("select set_config('transaction_read_only', 'off', true)", "read_only_grant"),
        ("select pg_terminate_backend(pg_backend_pid())", "pg_terminate_backend is a volatile function"),
        ("select pg_advisory_lock(42)", "pg_advisory_lock is a volatile function"),
        // Attribute notation calls one-argument functions too.
        ("select (42).pg_advisory_lock", "pg_advisory_lock is a volatile function"),
        ("select (pg_backend_pid()).pg_terminate_backend", "pg_terminate_backend is a volatile function"),
        ("select add_note('sneaky')", "read_only_grant"),
        ("set role postgres", "cannot change its role"),
        ("set session authorization postgres", "cannot change its role"),
    ] {
        let (code, message) = refused(&client, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(why), "{sql}: {message}");
    }
    for sql in
        ["select random() < 2, now() is not null, count(*) from notes", "select count_notes()", "select current_user"]
    {
        client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(client);
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from notes").trim(), "0");

    // With a read-only user configured, read-only sessions log in as it: the database's own
    // privileges stand behind the proxy's judgement.
    std::fs::write(stack.dir.path().join("reader.pw"), "reader-pw").expect("password file");
    let mut config = stack.proxy_config("proxy-reader");
    config.resources[0].read_only_user = Some("reader".into());
    config.resources[0].read_only_password =
        Some(tollgate_shared::config::SecretRef::File(stack.dir.path().join("reader.pw")));
    let proxy = tollgate_data_plane::Proxy::start(config).await.expect("proxy starts");
    let dsn = format!(
        "host=127.0.0.1 port={} dbname=demo user=ci-bot password={token} sslmode=disable",
        proxy.postgres_addr.port()
    );
    let seen = psycopg(
        r#"
import json, os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as c:
    print(json.dumps([c.execute("select current_user").fetchone()[0], c.execute("select count_notes()").fetchone()[0]]))
"#,
        &dsn,
    );
    assert_eq!(seen, json!(["reader", 0]));
    let started = eventually(20, "the reader session on record", || async {
        stack
            .stream_messages()
            .await
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
            .find(|e| e["type"] == "session.started" && e["node"] == "proxy-reader")
    })
    .await;
    assert_eq!(started["payload"]["upstream"]["user"], "reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_inside_sql_is_judged_as_what_it_does() {
    let stack = Stack::start().await;
    stack.pg.admin_sql(
        "demo",
        "create table orders (id int); insert into orders select generate_series(1, 3); alter table orders owner to app;
         create function purge() returns void language plpgsql as $$ begin delete from orders where id > 0; end $$;
         create function opaque_abs(int) returns int language internal immutable strict as 'int4abs';
         create procedure purge_all() language sql as 'delete from orders where id > 0';
         create function drop_one(o orders) returns void language sql as 'delete from orders where id = 1';
         alter function purge() owner to app",
    );
    apply(&stack, &policy(json!({ "deny_classes": ["delete", "user_function"] }), "admin")).await;
    let token = stack.agent_token("bot-inner");
    let client = stack.agent_client(&token).await.expect("connect");
    for (sql, rule) in [
        ("create function f() returns void language sql as 'delete from orders where id = 1'", "deny_classes:delete"),
        (
            "create function g() returns void language plpgsql as $$ begin delete from orders where id = 1; end $$",
            "deny_classes:delete",
        ),
        (
            "create procedure p() language plpgsql as $$ begin execute 'delete from orders where id = 1'; end $$",
            "deny_classes:delete",
        ),
        ("do $$ begin delete from orders where id = 1; end $$", "deny_classes:delete"),
        ("select query_to_xml('delete from orders where id = 1 returning id', true, true, '')", "deny_classes:delete"),
        ("select purge()", "deny_classes:delete"),
        ("select * from (select purge()) s", "deny_classes:delete"),
        ("select query_to_xml(q, true, true, '') from (select 'select 1' as q) s", "dynamic_sql"),
        ("select opaque_abs(-1)", "deny_classes:user_function"),
        ("call purge_all()", "deny_classes:delete"),
        ("select o.drop_one from orders o", "deny_classes:delete"),
        ("select not_created_yet()", "deny_classes:user_function"),
    ] {
        let (code, message) = refused(&client, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(&format!("rule {rule} ")), "{sql}: {message}");
    }
    // Look-alikes run: a body that only reads, created now and called at once (the proxy reads
    // the catalog again when a call names a function it has not seen).
    for sql in [
        "create function one() returns int language sql as 'select 1'",
        "select one()",
        "select query_to_xml('select count(*) from orders', true, true, '')",
        "select abs(-1)",
    ] {
        client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The extended protocol judges the same way, at Parse.
    let err = client.prepare("select purge()").await.expect_err("preparing a call of purge");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("deny_classes:delete")), "{err}");
    // psycopg, both protocols: a parameterised query is prepared, a plain one is not.
    let outcome = psycopg(
        r#"
import json, os, psycopg
out = []
with psycopg.connect(os.environ["DSN"], autocommit=True) as c:
    for sql, params in [("select purge()", None), ("select purge() where %s", [True]), ("select one() + %s", [1])]:
        try:
            out.append(["ok", c.execute(sql, params).fetchone()[0]])
        except psycopg.Error as e:
            out.append(["refused", e.sqlstate, str(e)])
print(json.dumps(out))
"#,
        &stack.agent_dsn(&token),
    );
    let outcome = outcome.as_array().expect("a list");
    for refused in &outcome[..2] {
        assert_eq!(refused[0], "refused", "{refused}");
        assert!(refused[2].as_str().is_some_and(|m| m.contains("deny_classes:delete")), "{refused}");
    }
    assert_eq!(outcome[2], json!(["ok", 2]));
    assert_eq!(stack.pg.admin_sql("demo", "select count(*) from orders").trim(), "3");
}
