use super::*;

fn classes(sql: &str) -> Vec<String> {
    classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).classes.into_iter().collect()
}

#[test]
fn the_tree_shape_is_what_the_walk_expects() {
    // Guards the generic walk: if pg_query's serialized form changes, this fails loudly.
    let c = classify("delete from orders").unwrap();
    assert_eq!(c.classes.iter().collect::<Vec<_>>(), ["delete"]);
    assert!(c.unbounded_write);
    assert_eq!(c.relations.iter().collect::<Vec<_>>(), ["orders"]);
}

#[test]
fn classes_are_found_anywhere_in_the_tree() {
    // (statement, classes that must be present)
    let table: &[(&str, &[&str])] = &[
        ("select 1", &["select"]),
        ("SeLeCt * FrOm \"Orders\"", &["select"]),
        ("with gone as (delete from orders returning *) select * from gone", &["delete", "select"]),
        ("select * from (select 1) s where exists (select 1 from t where false)", &["select"]),
        ("select 1; drop table orders", &["drop", "select"]),
        ("/* harmless */ select 1; /* not */ truncate orders", &["select", "truncate"]),
        ("copy orders to program 'curl evil'", &["copy_program"]),
        ("copy orders from program 'cat /etc/passwd'", &["copy_program"]),
        ("copy (select 1) to stdout", &["copy_to", "select"]),
        ("copy orders from stdin", &["copy_from"]),
        ("do $$ begin perform 1; end $$", &["do_block"]),
        ("alter system set log_statement = 'none'", &["alter_system"]),
        ("grant all on orders to public", &["grant"]),
        ("create role evil superuser", &["role"]),
        ("explain analyze delete from orders where id = 1", &["delete", "explain"]),
        ("prepare p as delete from orders", &["delete", "prepare"]),
        ("create table t2 as select * from orders", &["create", "select"]),
        ("select * into t3 from orders", &["create", "select"]),
        ("insert into audit select * from orders", &["insert", "select"]),
        ("update orders set total = 0", &["update"]),
        ("insert into orders values (1), (2)", &["insert"]),
        ("merge into t using s on t.id = s.id when matched then delete", &["merge"]),
        ("begin; lock table orders in access exclusive mode; commit", &["lock", "transaction"]),
    ];
    for (sql, expected) in table {
        let got = classes(sql);
        for class in *expected {
            assert!(got.contains(&class.to_string()), "{sql}: {got:?} lacks {class}");
        }
    }
}

#[test]
fn insert_values_is_not_a_select() {
    assert_eq!(classes("insert into orders values (1, 'a')"), ["insert"]);
    assert_eq!(classes("values (1), (2)"), ["other"]);
}

#[test]
fn unbounded_writes_functions_and_relations() {
    let c = classify("with x as (update orders set total = 0) select pg_catalog.pg_read_file('/etc/passwd')").unwrap();
    assert!(c.unbounded_write);
    assert!(c.functions.contains("pg_read_file") && c.functions.contains("pg_catalog.pg_read_file"));
    let c = classify("select lo_export(1, '/tmp/x'), upper(name) from public.customers").unwrap();
    assert!(c.functions.contains("lo_export") && c.functions.contains("upper"));
    assert!(c.relations.contains("public.customers"));
    assert!(!classify("delete from orders where id = 1").unwrap().unbounded_write);
    assert!(!classify("update orders set total = 0 where id = $1").unwrap().unbounded_write);
}

#[test]
fn reads_and_writes() {
    for sql in ["select 1", "show search_path", "begin", "explain select 1", "set statement_timeout = 5"] {
        assert!(!classify(sql).unwrap().writes, "{sql}");
    }
    for sql in [
        "insert into t values (1)",
        "select 1; delete from t where id = 1",
        "vacuum",
        "create index on t (a)",
        "select * into t4 from t",
    ] {
        assert!(classify(sql).unwrap().writes, "{sql}");
    }
}

#[test]
fn unparsable_text_is_an_error() {
    for sql in ["selec 1", "select 'unterminated", "drop table", "\u{0}"] {
        assert!(classify(sql).is_err(), "{sql:?} parsed");
    }
}

#[test]
fn cache_returns_the_same_answer_and_stays_bounded() {
    let cache = ClassifyCache::new(2);
    let a = cache.classify("select 1").expect("parses");
    assert!(Arc::ptr_eq(&a, &cache.classify("select 1").expect("parses")));
    let _ = cache.classify("select 2");
    let _ = cache.classify("select 3");
    assert!(cache.len() <= 2);
}

#[test]
fn every_class_the_classifier_emits_is_one_policies_may_name() {
    let vocabulary = tollgate_shared::policy::STATEMENT_CLASSES;
    let emitted = CLASSES.iter().map(|(_, class)| *class).chain([
        "copy_from",
        "copy_to",
        "copy_program",
        "create",
        "other",
        USER_FUNCTION,
        DYNAMIC_SQL,
    ]);
    for class in emitted.filter(|c| *c != "copy") {
        assert!(vocabulary.contains(&class), "{class} is missing from STATEMENT_CLASSES");
    }
}

#[test]
fn ways_out_of_read_only_are_flagged() {
    for sql in [
        "set default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "begin read write",
        "start transaction read write",
        "set transaction read write",
        "reset default_transaction_read_only",
    ] {
        assert!(classify(sql).unwrap().escapes_read_only, "{sql}");
    }
    for sql in ["set statement_timeout = 5", "begin", "commit", "begin read only", "set transaction read only"] {
        assert!(!classify(sql).unwrap().escapes_read_only, "{sql}");
    }
}

fn ops(sql: &str) -> Vec<(usize, String)> {
    analyze(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .ops
        .iter()
        .map(|(i, op)| {
            let text = match op {
                NameOp::Prepare { name, inner } => {
                    format!(
                        "prepare {name}: {}",
                        inner.classification.classes.iter().cloned().collect::<Vec<_>>().join(",")
                    )
                }
                NameOp::Execute { name } => format!("execute {name}"),
                NameOp::Fetch { name } => format!("fetch {name}"),
                NameOp::Deallocate(name) => format!("deallocate {}", name.as_deref().unwrap_or("*")),
                NameOp::DiscardAll => "discard all".into(),
                NameOp::Declare { name, holdable, .. } => format!("declare {name} hold={holdable}"),
                NameOp::Close(name) => format!("close {}", name.as_deref().unwrap_or("*")),
                NameOp::EndTransaction => "end".into(),
            };
            (*i, text)
        })
        .collect()
}

#[test]
fn what_statements_do_to_prepared_statements_and_portals() {
    let got = ops("PREPARE a(int) AS delete from t where id = $1; EXECUTE a(1); explain analyze execute b; \
         create table c as execute a(2); DEALLOCATE a; DEALLOCATE ALL; DISCARD ALL; \
         DECLARE c CURSOR WITH HOLD FOR select 1; declare d cursor for select 2; CLOSE c; CLOSE ALL; \
         begin; commit; rollback to savepoint s; end; savepoint s");
    let want: Vec<(usize, &str)> = vec![
        (0, "prepare a: delete"),
        (1, "execute a"),
        (2, "execute b"),
        (3, "execute a"),
        (4, "deallocate a"),
        (5, "deallocate *"),
        (6, "discard all"),
        (7, "declare c hold=true"),
        (8, "declare d hold=false"),
        (9, "close c"),
        (10, "close *"),
        (12, "end"),
        // (ROLLBACK TO SAVEPOINT keeps the portals made before the savepoint.)
        (14, "end"),
    ];
    assert_eq!(got, want.into_iter().map(|(i, s)| (i, s.to_owned())).collect::<Vec<_>>());
}

#[test]
fn settings_are_read_from_set_reset_and_set_config() {
    let a = analyze(
        "set standard_conforming_strings = off; set names 'SJIS'; reset client_encoding; reset all; \
         select set_config('client_encoding', 'GBK', false), set_config(name, 'x', false), \
         set_config('standard_conforming_strings', v, true) from t",
    )
    .unwrap();
    let got: Vec<(Option<&str>, &SettingValue)> = a.settings.iter().map(|s| (s.name.as_deref(), &s.value)).collect();
    assert_eq!(
        got,
        vec![
            (Some("standard_conforming_strings"), &SettingValue::Literal("off".into())),
            (Some("client_encoding"), &SettingValue::Literal("SJIS".into())),
            (Some("client_encoding"), &SettingValue::Reset),
            (None, &SettingValue::ResetAll),
            (Some("client_encoding"), &SettingValue::Literal("GBK".into())),
            (None, &SettingValue::Literal("x".into())),
            (Some("standard_conforming_strings"), &SettingValue::Computed),
        ]
    );
    for sql in [
        "alter role app set client_encoding = 'UHC'",
        "alter database demo set client_encoding = 'UHC'",
        "alter system set client_encoding = 'UHC'",
        "alter function f() set client_encoding = 'UHC'",
    ] {
        let a = analyze(sql).unwrap();
        assert_eq!(a.settings.len(), 1, "{sql}: {:?}", a.settings);
        assert_eq!(a.settings[0].name.as_deref(), Some("client_encoding"), "{sql}");
    }
    assert!(classify("select set_config('default_transaction_read_only', 'off', false)").unwrap().escapes_read_only);
    assert!(classify("select set_config(n, 'off', false) from t").unwrap().escapes_read_only);
}

#[test]
fn sql_inside_sql_is_classified() {
    // (statement, classes that must be present)
    let table: &[(&str, &[&str])] = &[
        ("create function f() returns void language sql as 'delete from orders'", &["create_function", "delete"]),
        ("create function f() returns int language sql begin atomic; truncate t; select 1; end", &["truncate"]),
        (
            "create function f() returns void language plpgsql as $$ begin delete from orders; end $$",
            &["create_function", "delete"],
        ),
        (
            "create procedure p(x int) language plpgsql as $$ declare y int; begin y := x; update t set a = y; commit; end $$",
            &["update", "transaction"],
        ),
        ("create function f() returns void language plpgsql as $$ begin execute 'drop table t'; end $$", &["drop"]),
        (
            "create function f(t text) returns void language plpgsql as $$ begin execute 'drop table ' || t; end $$",
            &[DYNAMIC_SQL],
        ),
        ("create function f() returns int language plpgsql as $$ begin return pg_terminate_backend(1)::int; end $$", &[]),
        ("create function f() returns int language c as 'lib', 'sym'", &[DYNAMIC_SQL]),
        ("do $$ begin delete from orders; end $$", &["do_block", "delete"]),
        ("do $$ begin perform 1; end $$ language plperl", &[DYNAMIC_SQL]),
        ("select query_to_xml('delete from orders returning 1', true, true, '')", &["select", "delete"]),
        ("select * from dblink('dbname=x', 'truncate t') as r(x text)", &["truncate"]),
        ("select ts_stat('select to_tsvector(body) from docs')", &["select"]),
    ];
    for (sql, expected) in table {
        let got = classes(sql);
        for class in *expected {
            assert!(got.contains(&class.to_string()), "{sql}: {got:?} lacks {class}");
        }
    }
    let body = analyze(
        "create function f() returns int language plpgsql as $$ begin return pg_terminate_backend(1)::int; end $$",
    )
    .unwrap();
    assert!(body.classification.functions.contains("pg_terminate_backend"), "{:?}", body.classification.functions);
    // A cursor variable names its portal: FETCH, MOVE and OPEN in a body are cursor operations.
    let body = analyze(
        "create function g(c refcursor) returns int language plpgsql as $$ begin move forward all in c; return 0; end $$",
    )
    .unwrap();
    assert!(body.classification.classes.contains("cursor"), "{:?}", body.classification.classes);
    // Computed SQL text handed to a built-in that runs it is refused outright.
    for sql in ["select query_to_xml(q, true, true, '') from t", "select query_to_xml('selec 1', true, true, '')"] {
        assert!(analyze(sql).unwrap().refusal.is_some(), "{sql}");
    }
    assert!(analyze("select query_to_xml('select 1', true, true, '')").unwrap().refusal.is_none());
}

#[test]
fn relations_keep_quoted_case_and_include_ddl_targets() {
    let relations = |sql: &str| -> Vec<String> { classify(sql).unwrap().relations.into_iter().collect() };
    assert_eq!(
        relations("select * from \"Secrets\", public.\"Odd.Name\", Orders"),
        ["\"Secrets\"", "orders", "public.\"Odd.Name\""]
    );
    assert_eq!(relations("drop table public.secrets, \"Other\""), ["\"Other\"", "public.secrets"]);
    assert_eq!(relations("truncate a.b"), ["a.b"]);
    assert_eq!(relations("alter table secrets add column x int"), ["secrets"]);
    assert_eq!(relations("comment on table secrets is 'x'"), ["secrets"]);
    assert_eq!(relations("comment on column s.t.c is 'x'"), ["s.t"]);
    assert_eq!(relations("grant select on secrets to public"), ["secrets"]);
    assert_eq!(relations("drop index i"), ["i"]);
    assert!(relations("drop function f()").is_empty());
}

#[tokio::test]
async fn large_statements_are_analysed_off_the_async_workers() {
    let cache = ClassifyCache::new(10);
    // 200 KiB of one statement: analysed on the blocking pool, then cached like any other.
    let big = format!("select {}1", "1, ".repeat(60_000));
    assert!(big.len() > LARGE_STATEMENT);
    let analysis = cache.classify_async(&big).await.expect("parses");
    assert_eq!(analysis.classification.classes.iter().collect::<Vec<_>>(), ["select"]);
    assert!(Arc::ptr_eq(&analysis, &cache.classify_async(&big).await.expect("cached")));
    // Nesting as deep as the parser allows is analysed; deeper is an error, never a crash.
    for depth in [100, 1_000, 5_000, 20_000, 100_000] {
        let deep = format!("select {}1{}", "(".repeat(depth), ")".repeat(depth));
        let _ = cache.classify_async(&deep).await;
        let chain = format!("select {}1", "1 + ".repeat(depth));
        let _ = cache.classify_async(&chain).await;
        let nested = format!("{}select 1{}", "select * from (".repeat(depth / 10), ") s".repeat(depth / 10));
        let _ = cache.classify_async(&nested).await;
    }
}

#[test]
fn side_doors_the_review_found_are_seen() {
    // pg_settings has rules that call set_config: a write to it is a setting change by name unseen.
    let a = analyze("update pg_settings set setting = 'off' where name = 'standard_conforming_strings'").unwrap();
    assert_eq!(a.settings, [Setting { name: None, value: SettingValue::Computed }]);
    let a = analyze("update pg_catalog.pg_settings set setting = 'SJIS' where name = 'client_encoding'").unwrap();
    assert_eq!(a.settings.len(), 1);
    // CALL carries its function as a plain field.
    let a = analyze("call admin.purge()").unwrap();
    assert_eq!(a.calls, [FunctionRef { schema: Some("admin".into()), name: "purge".into() }]);
    // Attribute notation may call a one-argument function.
    let a = analyze("select (pid).pg_terminate_backend, o.purge, o.id, x from pg_stat_activity, orders o").unwrap();
    assert_eq!(a.attribute_calls, ["pg_terminate_backend", "purge", "id"]);
    assert!(analyze("select t.* from t").unwrap().attribute_calls.is_empty());
    // Quoted function names keep their case.
    assert_eq!(analyze("select \"Purge\"()").unwrap().calls[0].name, "Purge");
    // Binary COPY out is flagged; text and CSV, and COPY in, are not.
    assert!(analyze("copy t to stdout (format binary)").unwrap().binary_copy_out);
    assert!(analyze("copy (select 1) to stdout with binary").unwrap().binary_copy_out);
    assert!(!analyze("copy t to stdout (format csv)").unwrap().binary_copy_out);
    assert!(!analyze("copy t from stdin (format binary)").unwrap().binary_copy_out);
    // Nested SQL that handles prepared statements is refused: the proxy could not follow it.
    for sql in [
        "do $$ begin execute 'execute t'; end $$",
        "create function f() returns void language plpgsql as $$ begin execute 'prepare evil as delete from t'; end $$",
        "select query_to_xml('execute t', true, true, '')",
    ] {
        assert!(analyze(sql).unwrap().refusal.is_some_and(|r| r.contains("prepares, executes")), "{sql}");
    }
    assert!(analyze("create procedure p() language plpgsql as $$ begin commit; end $$").unwrap().refusal.is_none());
}

#[test]
fn statements_differing_only_in_constants_share_one_analysis() {
    let cache = ClassifyCache::new(100);
    let first = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123;").expect("parses");
    for aid in [456, 789, 1] {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        assert!(Arc::ptr_eq(&first, &cache.classify(&sql).expect("parses")), "{sql} parsed again");
    }
    // One entry: the shape (`... aid = $1;`), not one per text. (`-1` is an operator and a
    // constant: another shape.)
    assert_eq!(cache.len(), 1);
    assert_eq!(
        shape::key("select 'a', 1.5e3, x'ff', b'01', E'\\n', 42 from t where c = U&'d'").as_deref(),
        Some("select  $1 ,  $2 ,  $3 ,  $4 ,  $5 ,  $6  from t where c =  $7 ")
    );
    // No constants: the text is its own key.
    assert_eq!(shape::key("select a from t"), None);
    // A constant glued to a name stays apart from it (`abc$1` would be one identifier).
    assert!(shape::key("select date'2020-01-01'").is_some_and(|k| k.contains("date $1")));
}

#[test]
fn a_shape_never_stands_for_a_text_whose_constants_matter() {
    // Each pair: the harmless text first (so its shape is cached), then one of the same shape
    // whose constants change what it does. The second must be analysed as itself.
    let pairs = [
        (
            "select query_to_xml('select 1', true, true, '')",
            "select query_to_xml('delete from orders', true, true, '')",
        ),
        (
            "select set_config('application_name', 'x', false)",
            "select set_config('transaction_read_only', 'off', false)",
        ),
        ("select dblink_exec('dbname=a', 'select 1')", "select dblink_exec('dbname=a', 'drop table orders')"),
        (
            "update pg_settings set setting = 'a' where name = 'application_name'",
            "update pg_settings set setting = 'SJIS' where name = 'client_encoding'",
        ),
        ("copy t to stdout (format 'csv')", "copy t to stdout (format 'binary')"),
        ("do 'begin perform 1; end'", "do 'begin delete from orders; end'"),
        (
            "create function f() returns int language sql as 'select 1'",
            "create function f() returns int language sql as 'delete from orders returning 1'",
        ),
        ("set search_path = 'public'", "set standard_conforming_strings = 'off'"),
        (
            "prepare p as select set_config('a', 'b', false)",
            "prepare p as select set_config('transaction_read_only', 'off', false)",
        ),
    ];
    for (harmless, harmful) in pairs {
        let cache = ClassifyCache::new(100);
        let _ = cache.classify(harmless);
        let got = cache.classify(harmful).map(|a| (*a).clone());
        assert_eq!(got, analyze(harmful), "{harmful} took the analysis of {harmless}");
    }
}

#[test]
fn the_analysis_by_shape_equals_the_full_analysis() {
    let corpus = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 17",
        "UPDATE pgbench_accounts SET abalance = abalance + -4105 WHERE aid = 71727",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (9, 1, 71727, -4105, CURRENT_TIMESTAMP)",
        "delete from orders where id = 5 returning *",
        "delete from orders where 1 = 1",
        "with gone as (delete from orders where id > 3 returning *) select count(*) from gone",
        "select upper('x'), lower(name), pg_catalog.pg_sleep(0.5) from public.customers where id in (1, 2, 3)",
        "select * from t limit 10 offset 20",
        "merge into t using s on t.id = s.id when matched and s.v > 3 then delete",
        "explain analyze update t set a = 'b' where id = 2",
        "prepare p (int) as select * from t where id = $1 and v = 'x'",
        "declare c cursor with hold for select * from t where a = 'b'",
        "begin isolation level serializable; select 1; commit",
        "select 'abc'::text, interval '1 day', 1.5::numeric(10, 2), x'0f', b'101'",
        "insert into t values (E'line\\n', $$dollar$$, 'it''s')",
        "lock table orders in access exclusive mode",
        "select * from t where name like 'a%' and v between 1 and 5",
        "select query_to_xml('select 1', true, true, '')",
        "select set_config('application_name', 'x', false)",
        "set statement_timeout = 5000",
    ];
    for sql in corpus {
        let cache = ClassifyCache::new(100);
        let by_cache = cache.classify(sql).map(|a| (*a).clone());
        assert_eq!(by_cache, analyze(sql), "{sql}");
    }
}

#[test]
fn built_ins_reading_a_table_named_in_a_string_read_that_table() {
    let a = analyze("select table_to_xml('secrets', true, true, '')").unwrap();
    assert!(a.classification.relations.contains("secrets"), "{a:?}");
    assert!(a.refusal.is_none());
    let a = analyze("select table_to_xmlschema('public.\"Odd\"'::regclass, true, true, '')").unwrap();
    assert!(a.classification.relations.contains("public.\"Odd\""), "{a:?}");
    // A computed table, or one by oid, cannot be judged: refused.
    for sql in [
        "select table_to_xml(c.oid::regclass, true, true, '') from pg_class c",
        "select table_to_xml(16384::regclass, true, true, '')",
        "select table_to_xml('secrets; drop table t', true, true, '')",
        "select schema_to_xml('public', true, true, '')",
        "select database_to_xml(true, true, '')",
    ] {
        assert!(analyze(sql).unwrap().refusal.is_some(), "{sql}");
    }
    // The shape cache does not let one table's analysis stand for another's.
    let cache = ClassifyCache::new(10);
    let _ = cache.classify("select table_to_xml('orders', true, true, '')");
    let other = cache.classify("select table_to_xml('secrets', true, true, '')").unwrap();
    assert!(other.classification.relations.contains("secrets"));
}

#[test]
fn a_write_is_unbounded_when_no_condition_bounds_its_reach() {
    let unbounded = [
        "delete from orders",
        "delete from orders where true",
        "delete from orders where 1 = 1",
        "delete from orders where 1 = 0",
        "delete from orders where 'a' = 'a'",
        "delete from orders where orders.id = id",
        "delete from orders where coalesce(id, 0) = coalesce(id, 0)",
        "delete from orders where id = id",
        "delete from orders o where o.id >= o.id",
        "delete from orders where id = 5 or true",
        "delete from orders where not false",
        "delete from orders where true and (1 = 1)",
        "delete from orders where now() > '2000-01-01'",
        "delete from orders where $1 = $2",
        "delete from orders where id is not distinct from id",
        "delete from orders where exists (select 1 from customers where vip)",
        "delete from orders where exists (select 1 from customers orders where orders.vip)",
        "delete from orders using customers where customers.vip",
        "update orders set total = 0 from customers c where c.id = 7",
        "update orders set total = 0 where id = 1 or 2 = 2",
        "with gone as (delete from orders where 1 = 1 returning id) select count(*) from gone",
        "with a as (with b as (update orders set total = 0 returning id) select * from b) select * from a",
        "merge into orders o using customers c on true when matched then delete",
        "merge into orders o using customers c on c.vip when matched then update set total = 0",
        "merge into orders o using customers c on o.id = c.id when not matched by source then delete",
        "insert into orders select * from archive on conflict (id) do update set total = excluded.total",
        "insert into orders select * from archive on conflict (id) do update set total = 0 where true",
        "explain analyze delete from orders",
        "explain (analyze, buffers) delete from orders where 1 = 1",
        "explain (analyze on) update orders set total = 0",
        "create function wipe() returns void language sql as 'delete from orders where 1 = 1'",
    ];
    for sql in unbounded {
        assert!(classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unbounded_write, "{sql}");
    }
    let bounded = [
        "delete from orders where id = 1",
        "delete from orders where false",
        "delete from orders where id = $1",
        "delete from orders where not (id = id)",
        "delete from orders where id = 5 and true",
        "delete from orders where shipped_at is not null",
        "delete from orders where id in (select order_id from refunds)",
        "delete from orders o where exists (select 1 from refunds r where r.order_id = o.id)",
        "delete from orders using customers c where orders.customer_id = c.id and c.closed",
        "update orders set total = 0 from customers c where customer_id = c.id",
        "update orders set total = total where created < now() - interval '1 day'",
        "merge into orders o using refunds r on o.id = r.order_id when matched then delete",
        "merge into orders o using customers c on true when matched and o.customer_id = c.id then delete",
        "merge into orders o using refunds r on o.id = r.order_id when not matched by source and o.total = 0 then delete",
        "merge into orders o using refunds r on true when not matched then insert values (r.order_id)",
        "insert into orders values (1, 2) on conflict (id) do update set total = excluded.total",
        "insert into orders select * from archive on conflict (id) do update set total = 0 where orders.total > 100",
        "insert into orders select * from archive on conflict do nothing",
        "insert into orders select * from archive",
    ];
    for sql in bounded {
        assert!(!classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unbounded_write, "{sql}");
    }
}

#[test]
fn a_write_bounded_only_by_is_not_null_names_the_columns_for_the_catalog() {
    let tested = |sql: &str| {
        let a = analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!a.classification.unbounded_write, "{sql}: bounded unless the catalog says otherwise");
        a.null_tested.iter().map(|t| (t.schema.clone(), t.table.clone(), t.columns.join(","))).collect::<Vec<_>>()
    };
    let orders = |columns: &str| vec![(None, "orders".to_owned(), columns.to_owned())];
    assert_eq!(tested("delete from orders where id is not null"), orders("id"));
    assert_eq!(tested("delete from orders o where o.id is not null and true"), orders("id"));
    assert_eq!(tested("update orders set total = 0 where not (id is null)"), orders("id"));
    assert_eq!(tested("delete from orders where id is not null and closed_at is not null"), orders("closed_at,id"));
    assert_eq!(
        tested("delete from shop.orders where id is not null"),
        [(Some("shop".to_owned()), "orders".to_owned(), "id".to_owned())]
    );
    assert_eq!(
        tested("with x as (delete from orders where id is not null returning 1) select 1"),
        orders("id"),
        "in a CTE too"
    );
    assert_eq!(
        tested("merge into orders o using refunds r on o.id is not null when matched then delete"),
        [(None, "orders".to_owned(), "id".to_owned())]
    );
    assert_eq!(
        tested("merge into orders o using refunds r on o.id = r.order_id when not matched by source and o.id is not null then delete"),
        [(None, "orders".to_owned(), "id".to_owned())]
    );
    assert_eq!(
        tested("insert into orders select * from archive on conflict (id) do update set total = 0 where orders.id is not null"),
        orders("id")
    );
    // Something else bounds it, or the test is of another relation's column: nothing to ask.
    for sql in [
        "delete from orders where id is not null and total > 5",
        "delete from orders where id is null",
        "delete from orders using customers c where c.id is not null and c.id = orders.customer_id",
        "delete from orders where id = 1",
        "merge into orders o using refunds r on o.id = r.order_id when matched and o.id is not null then delete",
    ] {
        assert_eq!(tested(sql), [], "{sql}");
    }
}

#[test]
fn explain_without_analyze_is_a_read_and_keeps_its_functions() {
    for sql in [
        "explain delete from orders",
        "explain (costs off) update orders set total = 0",
        "explain (analyze off) delete from orders",
        "explain (analyze false) delete from orders",
        "explain merge into orders o using customers c on true when matched then delete",
        "explain with gone as (delete from orders returning id) select * from gone",
        "explain create table copy as select * from orders",
        "explain insert into orders select * from archive",
    ] {
        let c = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(c.classes.iter().collect::<Vec<_>>(), ["explain"], "{sql}");
        assert!(!c.writes && !c.unbounded_write, "{sql}");
        assert!(c.relations.contains("orders"), "relation checks still see {sql}");
    }
    // Planning may evaluate immutable functions: a call under a plain EXPLAIN is still a call.
    let c = classify("explain delete from orders where id = pg_read_file('/etc/passwd')::int").unwrap();
    assert!(c.functions.contains("pg_read_file"));
    let c = classify("explain analyze delete from orders where id = 1").unwrap();
    assert!(c.classes.contains("delete") && c.writes && !c.unbounded_write);
}

#[test]
fn comparisons_of_constants_are_never_folded() {
    // The operator is whatever the search_path finds: `1 = 0` may be true for every row. So a
    // statement's shape (constants made parameters) judges as each of its texts does.
    let cache = ClassifyCache::new(100);
    for sql in ["delete from orders where 1 = 0", "delete from orders where 1 = 1", "delete from orders where 3 = 4"] {
        assert!(cache.classify(sql).unwrap().classification.unbounded_write, "{sql}");
    }
    assert!(!cache.classify("delete from orders where id = 1").unwrap().classification.unbounded_write);
    assert!(!cache.classify("delete from orders where id = 2").unwrap().classification.unbounded_write);
}
