//! Masking end to end: a table seeded with secrets and personal data, read every way an agent
//! might try to get a value out unmasked. The raw bytes psql receives and every published event
//! are searched for the seeded values (also re-encoded as base64 or hex, in any case).

use serde_json::{json, Value};
use tollgate_tests::{eventually, leaked, Stack, Tap};

const SEED: &str = r#"
CREATE TABLE customers (
    id int PRIMARY KEY, name text, email text UNIQUE, ssn text, card text, iban text, phone text,
    aws_key text, github_token text, jwt text, private_key text, note text, dsn text
);
INSERT INTO customers VALUES
 (1, 'Alice Doe', 'alice.doe@example.com', '219-09-9999', '4111111111111111', 'DE89370400440532013000',
  '+1 415 555 0134', 'AKIAQ7Z3K9XW2M4PLT5R', 'ghp_R8x2Lq7Vn4Kp9Wd3Jt6Hs1Fg5Zc0Mb2Ny7Qa',
  'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXBsb3kifQ.c2lnbmF0dXJlLXZhbHVlLTEyMzQ1',
  E'-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----',
  'rotated; password=correct-horse-battery', 'postgres://svc:Hx7pQ2vLw9Zk@db.internal:5432/prod'),
 (2, 'Bob Roe', 'bob.roe@example.org', '078-05-1120', '5500 0000 0000 0004', 'GB82WEST12345698765432',
  '(415) 555-0199', 'AKIAJ2M8R4T6W9Y1B3C5', 'ghp_Zm4Xq8Wn2Lv6Kr0Tj3Hy7Pd1Sg5Fc9Bb4Na8',
  'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZWxlYXNlIn0.b3RoZXItc2lnbmF0dXJlLTk4NzY1',
  E'-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx4Tz9gQ2ZbN8wY6vLk3mR5pJ7sH1cD0fE2aB\n-----END RSA PRIVATE KEY-----',
  'api_key: Wq9ErTy7UiOp3As5', 'mysql://report:Vb3nM8kLq2Wx@10.0.0.7/sales');
CREATE VIEW customer_view AS SELECT name, email AS contact, ssn AS tax_id FROM customers;
CREATE FUNCTION leak_ssn() RETURNS text LANGUAGE sql AS $$ SELECT ssn FROM customers WHERE id = 1 $$;
ALTER TABLE customers OWNER TO app; ALTER VIEW customer_view OWNER TO app; ALTER FUNCTION leak_ssn() OWNER TO app;
"#;

const SEEDED: &[&str] = &[
    "alice.doe@example.com",
    "219-09-9999",
    "4111111111111111",
    "DE89370400440532013000",
    "415 555 0134",
    "AKIAQ7Z3K9XW2M4PLT5R",
    "ghp_R8x2Lq7Vn4Kp9Wd3Jt6Hs1Fg5Zc0Mb2Ny7Qa",
    "eyJzdWIiOiJkZXBsb3kifQ",
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    "correct-horse-battery",
    "Hx7pQ2vLw9Zk",
    "bob.roe@example.org",
    "078-05-1120",
    "5500 0000 0000 0004",
    "GB82WEST12345698765432",
    "415) 555-0199",
    "AKIAJ2M8R4T6W9Y1B3C5",
    "ghp_Zm4Xq8Wn2Lv6Kr0Tj3Hy7Pd1Sg5Fc9Bb4Na8",
    "eyJzdWIiOiJyZWxlYXNlIn0",
    "MIIEpAIBAAKCAQEAx4Tz9gQ2ZbN8wY6vLk3mR5pJ7sH1cD0fE2aB",
    "Wq9ErTy7UiOp3As5",
    "Vb3nM8kLq2Wx",
];

/// Each query tries to get seeded values out; `true` when the upstream answers with an error
/// (whose text would echo the value).
const CORPUS: &[(&str, bool)] = &[
    ("SELECT * FROM customers", false),
    ("SELECT email AS e, ssn AS s, card AS c, iban AS i FROM customers", false),
    ("SELECT card::bigint FROM customers WHERE id = 1", false),
    ("SELECT card::numeric, ssn::varchar(20), iban::char(30), email::citext FROM customers", true),
    ("SELECT ssn::text, phone::varchar, aws_key::name FROM customers", false),
    ("SELECT 'x' || email || 'y', name || ssn, 'k=' || github_token FROM customers", false),
    ("SELECT substr(note, 1), substr(dsn, 1, 200), substr(private_key, 1) FROM customers", false),
    ("SELECT upper(email), upper(github_token), lower(iban), lower(aws_key), upper(jwt) FROM customers", false),
    ("SELECT json_agg(c) FROM customers c", false),
    ("SELECT row_to_json(c) FROM customers c", false),
    ("SELECT jsonb_build_object('key', private_key, 'dsn', dsn) FROM customers", false),
    ("SELECT array_agg(email), array_agg(card), array_agg(jwt) FROM customers", false),
    ("SELECT string_agg(ssn || ' ' || phone || ' ' || iban, '; ') FROM customers", false),
    ("SELECT encode(convert_to(ssn, 'UTF8'), 'base64'), encode(convert_to(email, 'UTF8'), 'base64') FROM customers", false),
    ("SELECT encode(convert_to(private_key || note, 'UTF8'), 'base64') FROM customers", false),
    ("SELECT encode(convert_to(card, 'UTF8'), 'hex'), convert_to(aws_key, 'UTF8') FROM customers", false),
    ("SELECT format('%s / %s / %s / %s', email, ssn, card, dsn) FROM customers", false),
    ("SELECT * FROM customer_view", false),
    ("WITH x AS (SELECT ssn, email, card FROM customers) SELECT * FROM x", false),
    ("SELECT leak_ssn()", false),
    ("SELECT (SELECT email FROM customers WHERE id = 2) AS \"harmless\"", false),
    ("COPY customers TO STDOUT", false),
    ("COPY (SELECT email, card, ssn, jwt FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)", false),
    ("SELECT ssn::int FROM customers", true),
    ("SELECT card::int FROM customers WHERE id = 2", true),
    ("INSERT INTO customers (id, email) SELECT id + 10, email FROM customers", true),
    ("DO $$ BEGIN RAISE NOTICE 'ssn % card %', (SELECT ssn FROM customers WHERE id = 1), (SELECT card FROM customers WHERE id = 1); END $$", false),
    ("DO $$ BEGIN RAISE EXCEPTION 'leak' USING DETAIL = (SELECT email FROM customers WHERE id = 1), HINT = (SELECT dsn FROM customers WHERE id = 1); END $$", true),
    ("LISTEN leak; SELECT pg_notify('leak', (SELECT email || ' ' || ssn || ' ' || card FROM customers WHERE id = 1))", false),
    ("BEGIN; DECLARE c CURSOR FOR SELECT * FROM customers; FETCH ALL FROM c; COMMIT", false),
    ("PREPARE p AS SELECT email, github_token FROM customers; EXECUTE p", false),
    ("SELECT xmlelement(name c, email), to_json(private_key) FROM customers", false),
    // A session variable set from data comes back in a ParameterStatus message.
    ("SELECT set_config('application_name', (SELECT email || ' ' || ssn FROM customers WHERE id = 1), false)", false),
];

fn policy(masking: Value) -> Value {
    json!({
        "resources": [{ "name": "demo", "kind": "postgres", "masking": masking }],
        "grants": [{ "name": "everyone", "who": { "agents": ["*"] }, "resources": { "names": ["demo"] }, "access": "admin" }]
    })
}

async fn stack_with(masking: Value) -> Stack {
    let stack = Stack::start().await;
    stack.pg.admin_sql("demo", "CREATE EXTENSION IF NOT EXISTS citext");
    stack.pg.admin_sql("demo", SEED);
    let version = stack.put_policy(&policy(masking)).await;
    eventually(10, "the proxy to load the masking policy", || async {
        (stack.proxy.policy_version() == Some(version)).then_some(())
    })
    .await;
    stack
}

fn events_of(messages: &[Vec<u8>], kind: &str) -> Vec<Value> {
    messages.iter().filter_map(|m| serde_json::from_slice::<Value>(m).ok()).filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seeded_value_leaves_the_proxy_unmasked() {
    let stack = stack_with(json!({})).await;
    // Without masking, the seeded values are there to be found: the search itself works.
    let direct = stack.pg.admin_sql("demo", "SELECT * FROM customers");
    assert!(leaked(direct.as_bytes(), SEEDED).len() >= SEEDED.len() - 2, "the leak search finds plain values");

    let token = stack.agent_token("bot-masking");
    assert!(CORPUS.len() >= 25);
    for (sql, fails) in CORPUS {
        let tap = Tap::start(stack.proxy.postgres_addr).await;
        let out = stack.psql(&token, Some(tap.addr.port()), &["-c", sql], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(!out.status.success(), *fails, "{sql}: {stderr}");
        let received = tap.received();
        let leaks = leaked(&received, SEEDED);
        assert!(leaks.is_empty(), "{sql}: the agent received {leaks:?}");
        assert!(
            String::from_utf8_lossy(&received).contains("[masked:"),
            "{sql}: no masking marker, so the query never reached a secret: {}{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let messages = stack.stream_messages().await;
    let all: Vec<u8> = messages.concat();
    let leaks = leaked(&all, SEEDED);
    assert!(leaks.is_empty(), "the records hold {leaks:?}");
    // Each result says what was masked, by detector and column, without the value.
    let results = eventually(30, "every result to be published", || async {
        let results = events_of(&stack.stream_messages().await, "command.result");
        (results.len() >= CORPUS.len()).then_some(results)
    })
    .await;
    let star = results
        .iter()
        .find(|r| {
            r["payload"]["tags"][0] == "SELECT 2" && r["payload"]["masked"].as_array().is_some_and(|m| m.len() >= 10)
        })
        .expect("SELECT * reports its masking");
    let masked = star["payload"]["masked"].as_array().unwrap();
    for (detector, column) in
        [("email", "email"), ("ssn", "ssn"), ("card", "card"), ("iban", "iban"), ("private_key", "private_key")]
    {
        let entry = masked.iter().find(|m| m["detector"] == detector && m["column"] == column);
        assert_eq!(entry.map(|e| e["count"].as_u64()), Some(Some(2)), "{detector} in {column}: {masked:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_mask_text_and_null_what_cannot_carry_a_marker() {
    let stack = stack_with(json!({})).await;
    let client = stack.agent_client(&stack.agent_token("bot-binary")).await.expect("connect");
    // tokio-postgres asks for every result column in binary format.
    let rows = client
        .query("SELECT id, card::bigint AS card_number, email, to_jsonb(ssn) AS j FROM customers WHERE id = 1", &[])
        .await
        .expect("query");
    let row = &rows[0];
    assert_eq!(row.get::<_, i32>("id"), 1);
    assert_eq!(row.get::<_, Option<i64>>("card_number"), None, "a bigint card number cannot hold a marker");
    assert_eq!(row.get::<_, String>("email"), "[masked:email]");
    let statement =
        client.prepare("SELECT ssn, $1::text AS echoed FROM customers WHERE id = $2").await.expect("prepare");
    let rows = client.query(&statement, &[&"mail me at carol@example.net", &2i32]).await.expect("execute");
    assert_eq!(rows[0].get::<_, String>("ssn"), "[masked:ssn]");
    assert_eq!(rows[0].get::<_, String>("echoed"), "mail me at [masked:email]");
    drop(client);

    let messages = stack.stream_messages().await;
    assert!(leaked(&messages.concat(), &["carol@example.net", "4111111111111111"]).is_empty());
    let commands = events_of(&messages, "command");
    let echoed =
        commands.iter().find(|c| c["payload"]["postgres"]["params"][0].is_string()).expect("the bound command");
    // tokio-postgres binds in binary format: recorded as hex, which decodes to an email, so the
    // whole parameter is masked; the integer stays readable.
    assert_eq!(
        echoed["payload"]["postgres"]["params"],
        json!(["[masked:encoded]", "\\x00000002"]),
        "parameters are recorded masked"
    );
    let results = eventually(30, "results", || async {
        let results = events_of(&stack.stream_messages().await, "command.result");
        results.iter().any(|r| r["payload"]["nulled"] == 1).then_some(results)
    })
    .await;
    assert!(results.iter().any(|r| r["payload"]["nulled"] == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_mask_whatever_the_column_holds() {
    let masking = json!({ "columns": ["*secret*", { "name": "*", "type": "bytea" }], "partial": ["card"] });
    let stack = stack_with(masking).await;
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE staff (id int, name text, secret_answer text, photo bytea, card text); \
         INSERT INTO staff VALUES (1, 'Dana', 'my first dog rex', '\\x89504e47', '4111111111111111'); \
         ALTER TABLE staff OWNER TO app",
    );
    let token = stack.agent_token("bot-columns");
    let out = stack.psql(&token, None, &["-At", "-c", "SELECT * FROM staff"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1|Dana|[masked:column]|[masked:column]|****1111");
    // COPY output has no column names, so column rules could not apply: refused.
    let out = stack.psql(&token, None, &["-c", "COPY staff TO STDOUT"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("masking:copy_to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_only_masking_leaves_the_agent_its_values() {
    let stack = stack_with(json!({ "apply_to": "records_only" })).await;
    let token = stack.agent_token("bot-records-only");
    let out = stack.psql(&token, None, &["-At", "-c", "SELECT email FROM customers WHERE id = 1"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice.doe@example.com",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = eventually(30, "the result", || async {
        let results = events_of(&stack.stream_messages().await, "command.result");
        results.into_iter().find(|r| r["payload"]["tags"][0] == "SELECT 1")
    })
    .await;
    assert_eq!(results["payload"]["masked"], json!([{ "detector": "email", "column": "email", "count": 1 }]));
    assert!(leaked(&stack.stream_messages().await.concat(), &["alice.doe@example.com"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_values_pass_unchanged() {
    let stack = stack_with(json!({})).await;
    stack.pg.admin_sql(
        "demo",
        "CREATE TABLE orders (order_id text, placed_at timestamptz, id uuid, price numeric(10,2), sha256 text, commit text, qty int, status text); \
         INSERT INTO orders VALUES \
         ('ORD-2026-000123', '2026-11-26 06:26:58.123456+00', '0198d0a2-7c3e-7b51-9a64-3f1e2d4c5b6a', 129.95, \
          'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', '8bf3168e4d387e1f2c3b9950348c00f4c6b5f7a0', 3, 'shipped'), \
         ('INV/2026/11/0042', '2026-01-02 03:04:05+00', 'f47ac10b-58cc-4372-a567-0e02b2c3d479', 1499.00, \
          'da39a3ee5e6b4b0d3255bfef95601890afd80709', 'a9509d9', 1200, 'refund pending: customer called twice'), \
         ('PO-77-1234-5678', '2025-12-31 23:59:59+00', '00000000-0000-0000-0000-000000000000', 0.01, \
          'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e', \
          'HEAD~3', -5, 'version 1.2.3-rc.4 deployed to eu-west-1'); \
         ALTER TABLE orders OWNER TO app",
    );
    let query = "SELECT *, row_to_json(o) FROM orders o ORDER BY placed_at";
    let direct = stack.pg.admin_sql("demo", query);
    let out = stack.psql(&stack.agent_token("bot-ordinary"), None, &["-At", "-c", query], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), direct, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!direct.contains("[masked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_containers_are_opened_element_by_element() {
    let stack = stack_with(json!({})).await;
    let token = stack.agent_token("bot-containers");
    // psycopg asks for binary results and decodes arrays, ranges and records itself.
    let script = r#"
import json, os, psycopg
out = {}
with psycopg.connect(os.environ["DSN"], autocommit=True) as c:
    cur = c.cursor(binary=True)
    for name, sql in [
        ("bigint_array", "SELECT array[card::bigint] FROM customers WHERE id = 1"),
        ("numeric_array", "SELECT array[card::numeric, 1] FROM customers WHERE id = 1"),
        ("int8range", "SELECT int8range(card::bigint, card::bigint + 1) FROM customers WHERE id = 1"),
        ("int8multirange", "SELECT int8multirange(int8range(card::bigint, card::bigint + 1)) FROM customers WHERE id = 1"),
        ("record", "SELECT row(card::bigint, 42) FROM customers WHERE id = 1"),
        ("nested", "SELECT array[row(array[card::bigint])] FROM customers WHERE id = 1"),
        ("text_array", "SELECT array[email] FROM customers WHERE id = 1"),
        ("ordinary", "SELECT array[1::bigint, 2, 3], int8range(10, 20), row(7, 'x')"),
    ]:
        cur.execute(sql)
        out[name] = [repr(v) for v in cur.fetchone()]
print(json.dumps(out))
"#;
    let got = tollgate_tests::python::psycopg(script, &stack.agent_dsn(&token));
    for name in ["bigint_array", "numeric_array", "int8range", "int8multirange", "record", "nested", "text_array"] {
        assert_eq!(got[name], json!(["None"]), "{name}: a value holding a card or an email is nulled: {got}");
    }
    // Against the database directly the values are there, and ordinary ones read the same.
    let direct = tollgate_tests::python::psycopg(script, &stack.pg.superuser_url("demo"));
    assert!(direct["bigint_array"][0].as_str().is_some_and(|v| v.contains("4111111111111111")), "control: {direct}");
    assert_eq!(got["ordinary"], direct["ordinary"], "{got}");
    assert_eq!(got["ordinary"][0], "[1, 2, 3]");
    let results = eventually(30, "the results", || async {
        let results = events_of(&stack.stream_messages().await, "command.result");
        (results.iter().filter(|r| r["payload"]["nulled"] == 1).count() >= 7).then_some(results)
    })
    .await;
    assert!(results.iter().filter(|r| r["payload"]["nulled"] == 1).count() >= 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_comment_masks_the_secret_and_nothing_after_it() {
    let stack = stack_with(json!({})).await;
    let token = stack.agent_token("bot-comment");
    let sql = "/* -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx4Tz9gQ2ZbN8wY6vLk3mR5pJ7sH1cD0fE2aB */ SELECT 42 AS answer; SELECT count(*) FROM customers";
    let out = stack.psql(&token, None, &["-At", "-c", sql], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commands = events_of(&stack.stream_messages().await, "command");
    let recorded =
        commands.iter().find(|c| c["payload"]["statement"].as_str().is_some_and(|s| s.contains("42 AS answer")));
    let statement = recorded.expect("the statement is on record")["payload"]["statement"].as_str().unwrap().to_owned();
    assert_eq!(statement, "/* [masked:private_key]*/ SELECT 42 AS answer; SELECT count(*) FROM customers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_without_a_description_and_binary_copy() {
    use tollgate_tests::wire::{self, Wire};
    let stack = stack_with(json!({})).await;
    let token = stack.agent_token("bot-raw-binary");
    // No Describe: the proxy asks the server for the columns itself, so the bigint card is
    // recognised by its type (and the agent sees no RowDescription it did not ask for).
    let mut agent = Wire::connect(stack.proxy.postgres_addr.port(), "demo", &token).await.expect("connect");
    let answer = agent
        .round(
            &[
                wire::parse("", "SELECT card::bigint, id FROM customers WHERE id = 1"),
                wire::bind_binary_results("", ""),
                wire::execute("", 0),
                wire::sync(),
            ],
            1,
        )
        .await;
    assert!(!answer.iter().any(|m| m.tag == b'T'), "an unrequested RowDescription: {answer:?}");
    let row = answer.iter().find_map(|m| m.row()).expect("a row");
    assert_eq!(row[0], None, "the card number became NULL");
    assert_eq!(row[1].as_deref().map(str::as_bytes), Some(&[0u8, 0, 0, 1][..]), "the id is untouched");
    // Binary COPY output cannot be masked by type: refused.
    let client = stack.agent_client(&token).await.expect("connect");
    let err = client
        .simple_query("COPY (SELECT card::bigint FROM customers) TO STDOUT (FORMAT binary)")
        .await
        .expect_err("binary copy");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("masking:copy_binary")), "{err}");
}
