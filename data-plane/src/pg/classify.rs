//! Classifying SQL with the real PostgreSQL parser (pg_query): statement classes, relations,
//! functions, and DELETE/UPDATE without WHERE, found by walking the *whole* parse tree, so a
//! DELETE inside a CTE or a function call inside a subquery is seen too.
//!
//! The walk is generic over the tree's serialized form rather than a list of node types to
//! descend into: a node type nobody thought of cannot hide a statement. Results are cached by
//! statement text, so the hot path parses each distinct text once.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
pub use tollgate_shared::event::Classification;

/// Statement node → class. Anything absent here is `other` (and counts as a write).
const CLASSES: &[(&str, &str)] = &[
    ("SelectStmt", "select"),
    ("InsertStmt", "insert"),
    ("UpdateStmt", "update"),
    ("DeleteStmt", "delete"),
    ("MergeStmt", "merge"),
    ("TruncateStmt", "truncate"),
    ("DropStmt", "drop"),
    ("DropdbStmt", "drop"),
    ("DropRoleStmt", "role"),
    ("DropOwnedStmt", "drop"),
    ("DropTableSpaceStmt", "drop"),
    ("AlterTableStmt", "alter"),
    ("AlterDomainStmt", "alter"),
    ("AlterSeqStmt", "alter"),
    ("AlterObjectSchemaStmt", "alter"),
    ("AlterOwnerStmt", "alter"),
    ("RenameStmt", "alter"),
    ("AlterDatabaseStmt", "alter"),
    ("AlterDatabaseSetStmt", "alter"),
    ("AlterFunctionStmt", "alter"),
    ("AlterSystemStmt", "alter_system"),
    ("GrantStmt", "grant"),
    ("GrantRoleStmt", "grant"),
    ("AlterDefaultPrivilegesStmt", "grant"),
    ("CreateRoleStmt", "role"),
    ("AlterRoleStmt", "role"),
    ("AlterRoleSetStmt", "role"),
    ("CreateStmt", "create"),
    ("CreateTableAsStmt", "create"),
    ("ViewStmt", "create"),
    ("IndexStmt", "create"),
    ("CreateSeqStmt", "create"),
    ("CreateSchemaStmt", "create"),
    ("CreatedbStmt", "create"),
    ("CreateExtensionStmt", "create"),
    ("CreateTrigStmt", "create"),
    ("RuleStmt", "create"),
    ("CompositeTypeStmt", "create"),
    ("CreateEnumStmt", "create"),
    ("DefineStmt", "create"),
    ("CreateFunctionStmt", "create_function"),
    ("DoStmt", "do_block"),
    ("CallStmt", "call"),
    ("CopyStmt", "copy"),
    ("ExplainStmt", "explain"),
    ("TransactionStmt", "transaction"),
    ("VariableSetStmt", "set"),
    ("VariableShowStmt", "show"),
    ("LockStmt", "lock"),
    ("VacuumStmt", "vacuum"),
    ("ClusterStmt", "vacuum"),
    ("ReindexStmt", "vacuum"),
    ("PrepareStmt", "prepare"),
    ("ExecuteStmt", "execute"),
    ("DeallocateStmt", "prepare"),
    ("DeclareCursorStmt", "cursor"),
    ("FetchStmt", "cursor"),
    ("ClosePortalStmt", "cursor"),
    ("ListenStmt", "listen"),
    ("UnlistenStmt", "listen"),
    ("NotifyStmt", "notify"),
    ("LoadStmt", "load"),
    ("CheckPointStmt", "checkpoint"),
    ("DiscardStmt", "set"),
    ("CommentStmt", "alter"),
    ("SecLabelStmt", "alter"),
    ("RefreshMatViewStmt", "refresh"),
    ("ReassignOwnedStmt", "role"),
    ("ImportForeignSchemaStmt", "create"),
    ("CreateForeignServerStmt", "create"),
    ("CreateFdwStmt", "create"),
    ("CreateUserMappingStmt", "role"),
    ("AlterUserMappingStmt", "role"),
    ("CreatePolicyStmt", "create"),
    ("AlterPolicyStmt", "alter"),
    ("CreateEventTrigStmt", "create"),
    ("CreatePublicationStmt", "create"),
    ("CreateSubscriptionStmt", "create"),
];

/// Classes that only read (with the session's own settings, which `set` changes).
const READ_ONLY: &[&str] =
    &["select", "explain", "transaction", "show", "set", "cursor", "prepare", "execute", "listen"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("statement does not parse: {0}")]
pub struct ParseError(pub String);

/// Parse and classify one statement text (which may hold several statements).
pub fn classify(sql: &str) -> Result<Classification, ParseError> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| ParseError(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| ParseError(e.to_string()))?;
    let mut c = Classification { statements: parsed.protobuf.stmts.len(), ..Default::default() };
    walk(&tree, &mut c);
    if c.classes.is_empty() && c.statements > 0 {
        c.classes.insert("other".into());
    }
    c.writes = c.classes.iter().any(|class| !READ_ONLY.contains(&class.as_str()));
    // EXPLAIN ANALYZE runs its statement; SELECT ... INTO creates a table: the inner nodes are
    // classified by the walk, so `writes` already reflects what they do.
    Ok(c)
}

fn walk(value: &Value, c: &mut Classification) {
    match value {
        Value::Object(map) => {
            // A RangeVar appears both wrapped (`{"RangeVar": {...}}`) and as a plain field
            // (`"relation": {...}`); its shape identifies it either way.
            if map.contains_key("relname") && map.contains_key("schemaname") {
                record_relation(value, c);
            }
            for (key, child) in map {
                if let Some((_, class)) = CLASSES.iter().find(|(node, _)| node == key) {
                    classify_node(key, class, child, c);
                } else if key == "FuncCall" {
                    record_function(child, c);
                } else if key.ends_with("Stmt") {
                    // A statement type this table does not know: never silently harmless.
                    c.classes.insert("other".into());
                }
                walk(child, c);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| walk(item, c)),
        _ => {}
    }
}

fn classify_node(node: &str, class: &str, body: &Value, c: &mut Classification) {
    match node {
        "DeleteStmt" | "UpdateStmt" if present(body, "where_clause").is_none() => {
            c.unbounded_write = true;
            c.classes.insert(class.to_owned());
        }
        "CopyStmt" => {
            let from = body.get("is_from").and_then(Value::as_bool).unwrap_or(false);
            let program = body.get("is_program").and_then(Value::as_bool).unwrap_or(false);
            c.classes.insert(
                match (from, program) {
                    (_, true) => "copy_program",
                    (true, false) => "copy_from",
                    (false, false) => "copy_to",
                }
                .to_owned(),
            );
        }
        "VariableSetStmt" => {
            let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            if name.contains("read_only") || sets_read_write(body) {
                c.escapes_read_only = true;
            }
            c.classes.insert(class.to_owned());
        }
        "TransactionStmt" if sets_read_write(body) => {
            c.escapes_read_only = true;
            c.classes.insert(class.to_owned());
        }
        // `VALUES (...)` is a SelectStmt too (inside every INSERT ... VALUES): not a read of data.
        "SelectStmt" if body.get("values_lists").and_then(Value::as_array).is_some_and(|v| !v.is_empty()) => {}
        "SelectStmt" if present(body, "into_clause").is_some() => {
            c.classes.insert("select".into());
            c.classes.insert("create".into());
        }
        _ => {
            c.classes.insert(class.to_owned());
        }
    }
}

/// `READ WRITE` in BEGIN / START TRANSACTION / SET [SESSION CHARACTERISTICS AS] TRANSACTION:
/// a `transaction_read_only` option whose value is 0.
fn sets_read_write(body: &Value) -> bool {
    let options = body.get("options").or_else(|| body.get("args")).and_then(Value::as_array);
    options.into_iter().flatten().filter_map(|o| o.get("node")?.get("DefElem")).any(|d| {
        d.get("defname").and_then(Value::as_str) == Some("transaction_read_only")
            && d.pointer("/arg/node/AConst/val/Ival/ival").and_then(Value::as_i64).unwrap_or(0) == 0
    })
}

/// A field that is there and not null.
fn present<'a>(body: &'a Value, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default()
}

fn record_function(body: &Value, c: &mut Classification) {
    let parts = names(body.get("funcname"));
    if let Some(last) = parts.last() {
        c.functions.insert(last.clone());
        if parts.len() > 1 {
            c.functions.insert(parts.join("."));
        }
    }
}

fn record_relation(body: &Value, c: &mut Classification) {
    let name = body.get("relname").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return;
    }
    match body.get("schemaname").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(schema) => c.relations.insert(format!("{schema}.{name}")),
        None => c.relations.insert(name.to_owned()),
    };
}

/// Classifications by statement text, bounded: when full it starts over (cheap, and a cold
/// cache only costs parses).
/// A classification, or why the text did not parse, shared between sessions.
pub type Classified = Arc<Result<Classification, ParseError>>;

pub struct ClassifyCache {
    entries: Mutex<HashMap<Arc<str>, Classified>>,
    capacity: usize,
}

impl ClassifyCache {
    pub fn new(capacity: usize) -> Self {
        ClassifyCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    pub fn classify(&self, sql: &str) -> Classified {
        if let Some(hit) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return hit.clone();
        }
        let result = Arc::new(classify(sql));
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(Arc::from(sql), result.clone());
        result
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
