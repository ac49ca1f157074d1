//! SQL inside SQL: function and procedure bodies (classified when they are created), DO blocks,
//! and the SQL text built-ins execute. What the inner SQL does is added to the statement that
//! carries it, so guardrails and approval rules see a DELETE inside `CREATE FUNCTION` or inside
//! `query_to_xml('...')` as a DELETE.

use super::walk::{literal, strings, Walker};
use super::{analyze_at, Analysis, DYNAMIC_SQL, MAX_DEPTH};
use serde_json::Value;

/// Built-ins that execute SQL text they are given, and which arguments hold it.
const SQL_RUNNERS: &[(&str, Args)] = &[
    ("query_to_xml", Args::First),
    ("query_to_xmlschema", Args::First),
    ("query_to_xml_and_xmlschema", Args::First),
    ("ts_stat", Args::First),
    ("crosstab", Args::EveryText),
    ("crosstab2", Args::First),
    ("crosstab3", Args::First),
    ("crosstab4", Args::First),
    ("dblink", Args::EveryText),
    ("dblink_exec", Args::EveryText),
    ("dblink_send_query", Args::EveryText),
    ("dblink_open", Args::EveryText),
];

#[derive(Clone, Copy)]
enum Args {
    /// The first argument is SQL text.
    First,
    /// Any text argument may be SQL (connection strings and names among them do not parse).
    EveryText,
}

/// Built-ins that read a table named by their first argument (a `regclass`, usually a string).
const TABLE_READERS: &[&str] = &["table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema"];

/// Built-ins that read every table of a schema or of the database.
const WHOLE_SCHEMA_READERS: &[&str] = &[
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
];

/// Classify the SQL text a built-in runs; refuse a call whose SQL text is computed. Built-ins
/// that read a table named in a string count as reading it (so relation guardrails see it).
pub(super) fn sql_arguments(w: &mut Walker<'_>, function: &str, args: &[Value]) {
    if TABLE_READERS.contains(&function) {
        table_argument(w, function, args.first());
        return;
    }
    if WHOLE_SCHEMA_READERS.contains(&function) {
        refuse(
            w,
            format!("{function} reads every table of a schema or database, which the proxy cannot judge one by one"),
        );
        return;
    }
    let Some((_, which)) = SQL_RUNNERS.iter().find(|(name, _)| *name == function) else { return };
    let candidates: &[Value] = match which {
        Args::First => args.get(..1).unwrap_or_default(),
        Args::EveryText => args,
    };
    for arg in candidates {
        match literal(arg) {
            Some(text) => match inner(w, &text, pg_query::ParserOptions::DEFAULT) {
                Some(found) => w.out.absorb(&found),
                None if matches!(which, Args::First) => {
                    refuse(w, format!("the SQL text handed to {function} does not parse"));
                }
                // A connection string or a cursor name: not SQL.
                None => {}
            },
            None => refuse(
                w,
                format!("the SQL text handed to {function} is computed, so the proxy cannot judge it; pass a literal"),
            ),
        }
    }
}

/// The relation a table reader reads, judged as `SELECT * FROM <it>` (a regclass is read with
/// the same name rules as SQL); a computed or unreadable name is refused.
fn table_argument(w: &mut Walker<'_>, function: &str, arg: Option<&Value>) {
    let Some(name) = arg.and_then(literal) else {
        refuse(w, format!("the table handed to {function} is computed, so the proxy cannot judge it; pass its name"));
        return;
    };
    match inner(w, &format!("SELECT * FROM {name}"), pg_query::ParserOptions::DEFAULT) {
        Some(found) if found.classification.statements == 1 && !found.classification.relations.is_empty() => {
            w.out.absorb(&found)
        }
        _ => refuse(w, format!("the table handed to {function} is not a name the proxy can read")),
    }
}

fn refuse(w: &mut Walker<'_>, reason: String) {
    w.class(DYNAMIC_SQL);
    if w.out.refusal.is_none() {
        w.out.refusal = Some(reason);
    }
}

/// The analysis of SQL found inside SQL, one level deeper; `None` when it does not parse or
/// nests too deep.
fn inner(w: &Walker<'_>, text: &str, mode: pg_query::ParserOptions) -> Option<Analysis> {
    if w.depth >= MAX_DEPTH {
        return None;
    }
    analyze_at(text, mode, w.depth + 1).ok()
}

/// A DefElem's value among a statement's options (`language`, `as`).
fn option<'v>(options: Option<&'v Value>, name: &str) -> Option<&'v Value> {
    options?
        .as_array()?
        .iter()
        .filter_map(|o| o.get("node")?.get("DefElem"))
        .find(|d| d.get("defname").and_then(Value::as_str) == Some(name))?
        .get("arg")
}

fn option_string(options: Option<&Value>, name: &str) -> Option<String> {
    let arg = option(options, name)?;
    arg.pointer("/node/String/sval").and_then(Value::as_str).map(str::to_owned)
}

/// `CREATE FUNCTION` / `CREATE PROCEDURE`: the body is classified now, when it is created.
pub(super) fn create_function(w: &mut Walker<'_>, body: &Value) {
    // `BEGIN ATOMIC ... END` and `RETURN expr` bodies are part of the tree: the walk sees them.
    if body.get("sql_body").is_some_and(|b| !b.is_null()) {
        return;
    }
    let options = body.get("options");
    let language = option_string(options, "language").map(|l| l.to_ascii_lowercase());
    let as_parts = option(options, "as").map(|arg| strings(arg.pointer("/node/List/items")));
    match (language.as_deref(), as_parts.as_deref()) {
        (Some("sql"), Some([text])) => match inner(w, text, pg_query::ParserOptions::DEFAULT) {
            Some(found) => w.out.absorb(&found),
            None => w.class(DYNAMIC_SQL),
        },
        (Some("plpgsql"), Some([_])) => plpgsql(w, w.stmt_text.to_owned()),
        // C, PL/Python, PL/Perl...: a body the proxy cannot read.
        _ => w.class(DYNAMIC_SQL),
    }
}

/// `DO $$ ... $$ [LANGUAGE plpgsql]`.
pub(super) fn do_block(w: &mut Walker<'_>, body: &Value) {
    let args = body.get("args");
    let language = option_string(args, "language").unwrap_or_else(|| "plpgsql".into()).to_ascii_lowercase();
    let Some(code) = option_string(args, "as") else { return };
    if language != "plpgsql" {
        w.class(DYNAMIC_SQL);
        return;
    }
    // pg_query reads PL/pgSQL from a CREATE FUNCTION statement: wrap the block in one, with a
    // dollar-quote tag the block does not contain.
    let mut tag = String::from("$tollgate$");
    let mut n = 0;
    while code.contains(&tag) {
        n += 1;
        tag = format!("$tollgate{n}$");
    }
    plpgsql(w, format!("CREATE FUNCTION tollgate_do_block() RETURNS void LANGUAGE plpgsql AS {tag}{code}{tag}"));
}

fn plpgsql(w: &mut Walker<'_>, create_function: String) {
    if w.depth >= MAX_DEPTH {
        w.class(DYNAMIC_SQL);
        return;
    }
    match pg_query::parse_plpgsql(&create_function) {
        Ok(tree) => walk_plpgsql(w, &tree, false),
        Err(_) => w.class(DYNAMIC_SQL),
    }
}

/// Every SQL statement and expression of a PL/pgSQL function, classified with the parse mode
/// PL/pgSQL itself uses; `EXECUTE` of a computed string is dynamic SQL.
fn walk_plpgsql(w: &mut Walker<'_>, value: &Value, dynamic: bool) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match key.as_str() {
                    "PLpgSQL_expr" => expression(w, child, dynamic),
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                        for (field, part) in child.as_object().into_iter().flatten() {
                            walk_plpgsql(w, part, field == "query");
                        }
                    }
                    "dynquery" => walk_plpgsql(w, child, true),
                    "PLpgSQL_stmt_commit" | "PLpgSQL_stmt_rollback" => w.class("transaction"),
                    // A cursor variable names its portal: it can run any portal of the session.
                    "PLpgSQL_stmt_fetch" | "PLpgSQL_stmt_open" => {
                        w.class("cursor");
                        walk_plpgsql(w, child, dynamic);
                    }
                    _ => walk_plpgsql(w, child, dynamic),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| walk_plpgsql(w, item, dynamic)),
        _ => {}
    }
}

fn expression(w: &mut Walker<'_>, expr: &Value, dynamic: bool) {
    let Some(query) = expr.get("query").and_then(Value::as_str) else { return };
    let mode = expr.get("parseMode").and_then(Value::as_i64).unwrap_or(0) as i32;
    if !dynamic {
        match inner(w, query, mode.into()) {
            Some(found) => w.out.absorb(&found),
            None => w.class(DYNAMIC_SQL),
        }
        return;
    }
    // EXECUTE 'literal': the literal is the statement; anything computed cannot be judged.
    let literal_text = pg_query::parse(query, pg_query::ParserOptions::PLPGSQL_EXPR)
        .ok()
        .and_then(|parsed| serde_json::to_value(&parsed.protobuf).ok())
        .and_then(|tree| {
            let target = tree.pointer("/stmts/0/stmt/node/SelectStmt/target_list")?.as_array()?;
            match target.as_slice() {
                [one] => literal(one.pointer("/node/ResTarget/val")?),
                _ => None,
            }
        });
    match literal_text.and_then(|text| inner(w, &text, pg_query::ParserOptions::DEFAULT)) {
        Some(found) => w.out.absorb(&found),
        None => w.class(DYNAMIC_SQL),
    }
}
