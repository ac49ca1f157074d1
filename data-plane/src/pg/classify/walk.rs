//! The generic walk over pg_query's serialized parse tree: every object key is visited, so a
//! statement node anywhere (a DELETE in a CTE, an EXECUTE inside EXPLAIN ANALYZE) is found.

use super::reach::{self, Target};
use super::{body, Analysis, FunctionRef, NameOp, NullTested, Setting, SettingValue, CLASSES};
use serde_json::Value;
use std::sync::Arc;
use tollgate_shared::policy::RelationName;

/// What a condition does to a write's reach.
#[derive(Clone)]
enum Bound {
    /// It bounds it.
    Rows,
    /// Only its `IS NOT NULL` tests of these columns bound it: nothing, if they are `NOT NULL`.
    IfNullable(Vec<String>),
    /// It does not.
    Nothing,
}

impl Bound {
    fn of(condition: Option<&Value>, target: &Target) -> Bound {
        if !reach::of(condition, target).bounds() {
            return Bound::Nothing;
        }
        match reach::if_not_null(condition, target) {
            Some(columns) => Bound::IfNullable(columns),
            None => Bound::Rows,
        }
    }
}

/// Analyse a parse tree of `source` (`{"stmts": [...]}`).
pub(super) fn analyze_tree(source: &str, tree: &Value, depth: u8) -> Analysis {
    let stmts = tree.get("stmts").and_then(Value::as_array);
    let mut walker = Walker::new(source, depth);
    walker.out.classification.statements = stmts.map_or(0, Vec::len);
    for (index, raw) in stmts.into_iter().flatten().enumerate() {
        walker.stmt = index;
        walker.stmt_text = statement_text(source, raw);
        if let Some(stmt) = raw.get("stmt") {
            walker.walk(stmt);
        }
    }
    walker.finish()
}

/// The text of one top-level statement (`stmt_len` 0 means "to the end").
fn statement_text<'s>(source: &'s str, raw: &Value) -> &'s str {
    let start = raw.get("stmt_location").and_then(Value::as_u64).unwrap_or(0) as usize;
    let len = raw.get("stmt_len").and_then(Value::as_u64).unwrap_or(0) as usize;
    let end = if len == 0 { source.len() } else { start.saturating_add(len).min(source.len()) };
    source.get(start..end).unwrap_or(source)
}

pub(super) struct Walker<'s> {
    /// The whole text, and the top-level statement being walked.
    pub(super) source: &'s str,
    pub(super) stmt_text: &'s str,
    pub(super) depth: u8,
    stmt: usize,
    /// Inside an `EXPLAIN` without `ANALYZE`: the statement is planned, not run, so it changes
    /// nothing (its functions and relations still count: planning may run immutable functions).
    planning: bool,
    pub(super) out: Analysis,
}

impl<'s> Walker<'s> {
    fn new(source: &'s str, depth: u8) -> Self {
        Walker { source, stmt_text: source, depth, stmt: 0, planning: false, out: Analysis::default() }
    }

    fn finish(mut self) -> Analysis {
        let c = &mut self.out.classification;
        if c.classes.is_empty() && c.statements > 0 {
            c.classes.insert("other".into());
        }
        c.writes = super::writes(c);
        self.out
    }

    pub(super) fn class(&mut self, class: &str) {
        if !self.out.classification.classes.contains(class) {
            self.out.classification.classes.insert(class.to_owned());
        }
    }

    /// What one node (the query of a PREPARE or DECLARE) does on its own.
    fn sub(&self, node: Option<&Value>) -> Arc<Analysis> {
        let mut inner = Walker::new(self.source, self.depth);
        inner.stmt_text = self.stmt_text;
        inner.out.classification.statements = 1;
        if let Some(node) = node {
            inner.walk(node);
        }
        Arc::new(inner.finish())
    }

    fn op(&mut self, op: NameOp) {
        self.out.ops.push((self.stmt, op));
    }

    pub(super) fn walk(&mut self, value: &Value) {
        match value {
            Value::Object(map) => {
                // A RangeVar appears both wrapped (`{"RangeVar": {...}}`) and as a plain field
                // (`"relation": {...}`); its shape identifies it either way.
                if map.contains_key("relname") && map.contains_key("schemaname") {
                    self.range_var(value);
                }
                for (key, child) in map {
                    if let Some((_, class)) = CLASSES.iter().find(|(node, _)| node == key) {
                        self.statement(key, class, child);
                    } else if key == "FuncCall" {
                        self.call(child);
                    } else if key == "setstmt" && child.is_object() {
                        // ALTER ROLE/DATABASE/SYSTEM ... SET: a VariableSetStmt as a plain field.
                        self.variable_set(child);
                    } else if key == "funccall" && child.is_object() {
                        // CALL: a FuncCall as a plain field.
                        self.call(child);
                    } else if key == "ColumnRef" {
                        self.attribute(child.get("fields"), 2);
                    } else if key == "AIndirection" {
                        self.attribute(child.get("indirection"), 1);
                    } else if key.ends_with("Stmt") {
                        // A statement type the table does not know: never silently harmless.
                        self.class("other");
                    }
                    if key == "ExplainStmt" && !analyzes(child) {
                        let outer = std::mem::replace(&mut self.planning, true);
                        self.walk(child);
                        self.planning = outer;
                    } else {
                        self.walk(child);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.walk(item)),
            _ => {}
        }
    }

    fn statement(&mut self, node: &str, class: &str, body: &Value) {
        let name = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        // pg_settings has rules that call set_config: writing to it changes settings.
        if matches!(node, "UpdateStmt" | "InsertStmt" | "DeleteStmt" | "MergeStmt")
            && body.pointer("/relation/relname").and_then(Value::as_str) == Some("pg_settings")
        {
            self.out.settings.push(Setting { name: None, value: SettingValue::Computed });
        }
        // Planned, not run: a statement under EXPLAIN (without ANALYZE) does nothing; the
        // walk still finds its relations and function calls.
        if self.planning {
            return;
        }
        match node {
            "CreateTrigStmt" if body.get("deferrable").and_then(Value::as_bool) == Some(true) => {
                self.out.creates_deferrable_trigger = true;
            }
            "DeleteStmt" | "UpdateStmt" => {
                let target = Target::of(body.get("relation"));
                let bound = Bound::of(body.get("where_clause"), &target);
                self.judge_reach(body, &[bound]);
            }
            "MergeStmt" => self.merge(body),
            "InsertStmt" => self.upsert(body),
            "CopyStmt" => {
                let from = body.get("is_from").and_then(Value::as_bool).unwrap_or(false);
                let program = body.get("is_program").and_then(Value::as_bool).unwrap_or(false);
                let binary = body.get("options").and_then(Value::as_array).into_iter().flatten().any(|o| {
                    o.pointer("/node/DefElem/defname").and_then(Value::as_str) == Some("format")
                        && o.pointer("/node/DefElem/arg/node/String/sval")
                            .and_then(Value::as_str)
                            .is_some_and(|f| f.eq_ignore_ascii_case("binary"))
                });
                self.out.binary_copy_out |= binary && !from;
                self.class(match (from, program) {
                    (_, true) => "copy_program",
                    (true, false) => "copy_from",
                    (false, false) => "copy_to",
                });
                return;
            }
            "VariableSetStmt" => self.variable_set(body),
            "TransactionStmt" => {
                if sets_read_write(body) {
                    self.out.classification.escapes_read_only = true;
                }
                // COMMIT, ROLLBACK, PREPARE TRANSACTION end portals. ROLLBACK TO SAVEPOINT ends
                // only those made since the savepoint, which the proxy cannot tell apart: it
                // keeps them all (running one the server dropped fails there).
                if matches!(body.get("kind").and_then(Value::as_i64), Some(3 | 4 | 8)) {
                    self.op(NameOp::EndTransaction);
                }
            }
            // `VALUES (...)` is a SelectStmt too (inside every INSERT ... VALUES): not a read of data.
            "SelectStmt" if body.get("values_lists").and_then(Value::as_array).is_some_and(|v| !v.is_empty()) => return,
            "SelectStmt" if present(body, "into_clause").is_some() => self.class("create"),
            "PrepareStmt" => {
                let inner = self.sub(body.get("query"));
                self.op(NameOp::Prepare { name: name("name"), inner });
            }
            "ExecuteStmt" => self.op(NameOp::Execute { name: name("name") }),
            "DeallocateStmt" => {
                let all = body.get("isall").and_then(Value::as_bool).unwrap_or(false);
                self.op(NameOp::Deallocate((!all).then(|| name("name"))));
            }
            "DiscardStmt" if body.get("target").and_then(Value::as_i64) == Some(1) => {
                self.op(NameOp::DiscardAll);
                self.out.settings.push(Setting { name: None, value: SettingValue::ResetAll });
            }
            "DeclareCursorStmt" => {
                const CURSOR_OPT_HOLD: i64 = 0x20;
                let options = body.get("options").and_then(Value::as_i64).unwrap_or(0);
                let inner = self.sub(body.get("query"));
                let holdable = options & CURSOR_OPT_HOLD != 0;
                self.op(NameOp::Declare { name: name("portalname"), holdable, inner });
            }
            "FetchStmt" => self.op(NameOp::Fetch { name: name("portalname") }),
            "ClosePortalStmt" => {
                let portal = name("portalname");
                self.op(NameOp::Close((!portal.is_empty()).then_some(portal)));
            }
            "DropStmt" if body.get("remove_type").and_then(Value::as_i64).is_some_and(relation_like) => {
                for object in body.get("objects").and_then(Value::as_array).into_iter().flatten() {
                    self.object_name(object, false);
                }
            }
            "CommentStmt" => match body.get("objtype").and_then(Value::as_i64) {
                Some(kind) if relation_like(kind) => {
                    self.object_name(body.get("object").unwrap_or(&Value::Null), false)
                }
                Some(OBJECT_COLUMN) => self.object_name(body.get("object").unwrap_or(&Value::Null), true),
                _ => {}
            },
            "CreateFunctionStmt" => body::create_function(self, body),
            "DoStmt" => body::do_block(self, body),
            _ => {}
        }
        self.class(class);
    }

    /// MERGE: each `WHEN MATCHED` update or delete is bounded by the join (when it ties the
    /// target to the source) or by its own condition; a `WHEN NOT MATCHED BY SOURCE` one, which
    /// reaches every target row the source does not name, only by its own condition.
    fn merge(&mut self, body: &Value) {
        const MATCHED: i64 = 1;
        const NOT_MATCHED_BY_SOURCE: i64 = 2;
        const UPDATE: i64 = 3;
        const DELETE: i64 = 5;
        let target = Target::of(body.get("relation"));
        let join = Bound::of(body.get("join_condition"), &target);
        let clauses = body.get("merge_when_clauses").and_then(Value::as_array);
        for clause in clauses.into_iter().flatten().filter_map(|c| c.pointer("/node/MergeWhenClause")) {
            if !matches!(clause.get("command_type").and_then(Value::as_i64), Some(UPDATE | DELETE)) {
                continue;
            }
            let own = Bound::of(clause.get("condition"), &target);
            match clause.get("match_kind").and_then(Value::as_i64) {
                Some(MATCHED) => self.judge_reach(body, &[own, join.clone()]),
                Some(NOT_MATCHED_BY_SOURCE) => self.judge_reach(body, &[own]),
                _ => {}
            }
        }
    }

    /// A write is bounded when any of `bounds` bounds it. When only `IS NOT NULL` tests do,
    /// the catalog decides (the columns go to `null_tested`); when none does, it is unbounded.
    fn judge_reach(&mut self, body: &Value, bounds: &[Bound]) {
        if bounds.iter().any(|b| matches!(b, Bound::Rows)) {
            return;
        }
        let mut columns: Vec<String> = bounds
            .iter()
            .filter_map(|b| if let Bound::IfNullable(c) = b { Some(c.clone()) } else { None })
            .flatten()
            .collect();
        if columns.is_empty() {
            self.out.classification.unbounded_write = true;
            return;
        }
        columns.sort();
        columns.dedup();
        let relation = |field: &str| body.pointer(&format!("/relation/{field}")).and_then(Value::as_str);
        self.out.null_tested.push(NullTested {
            schema: relation("schemaname").filter(|s| !s.is_empty()).map(str::to_owned),
            table: relation("relname").unwrap_or_default().to_owned(),
            columns,
        });
    }

    /// `INSERT ... SELECT ... ON CONFLICT DO UPDATE`: every existing row the query names is
    /// updated, so without a bounding `WHERE` its reach is the query's (a list of values is
    /// bounded by its length).
    fn upsert(&mut self, body: &Value) {
        const DO_UPDATE: i64 = 3;
        let Some(conflict) = present(body, "on_conflict_clause") else { return };
        if conflict.get("action").and_then(Value::as_i64) != Some(DO_UPDATE) {
            return;
        }
        let values = body
            .pointer("/select_stmt/node/SelectStmt/values_lists")
            .and_then(Value::as_array)
            .is_some_and(|rows| !rows.is_empty());
        if !values {
            let target = Target::of(body.get("relation"));
            self.judge_reach(body, &[Bound::of(conflict.get("where_clause"), &target)]);
        }
    }

    fn variable_set(&mut self, body: &Value) {
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if name.contains("read_only") || sets_read_write(body) {
            self.out.classification.escapes_read_only = true;
        }
        // VariableSetKind: 1 value, 2 default, 3 from current, 4 multi (TRANSACTION...), 5 reset, 6 reset all.
        let value = match body.get("kind").and_then(Value::as_i64) {
            Some(1) => {
                let args = body.get("args").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
                let literals: Option<Vec<String>> = args.iter().map(literal).collect();
                match literals {
                    Some(values) => SettingValue::Literal(values.join(", ")),
                    None => SettingValue::Computed,
                }
            }
            Some(2 | 5) => SettingValue::Reset,
            Some(6) => SettingValue::ResetAll,
            Some(4) => return,
            _ => SettingValue::Computed,
        };
        let name = (!name.is_empty()).then_some(name);
        self.out.settings.push(Setting { name, value });
    }

    /// Attribute notation: the last name of `t.f` (`at_least` 2 names: a bare column calls
    /// nothing) or `(expr).f` (an indirection) may be a function call.
    fn attribute(&mut self, fields: Option<&Value>, at_least: usize) {
        let Some(items) = fields.and_then(Value::as_array) else { return };
        let last = items.last().and_then(|n| n.pointer("/node/String/sval")).and_then(Value::as_str);
        if let Some(last) = last.filter(|_| items.len() >= at_least) {
            if !self.out.attribute_calls.iter().any(|n| n == last) {
                self.out.attribute_calls.push(last.to_owned());
            }
        }
    }

    fn call(&mut self, body: &Value) {
        let parts = strings(body.get("funcname"));
        // The parser folds unquoted names to lower case; a quoted name keeps its case.
        let Some(last) = parts.last().cloned() else { return };
        let schema = (parts.len() > 1).then(|| parts[parts.len() - 2].clone());
        let c = &mut self.out.classification;
        c.functions.insert(last.to_lowercase());
        if parts.len() > 1 {
            c.functions.insert(parts.iter().map(|p| p.to_lowercase()).collect::<Vec<_>>().join("."));
        }
        let args = body.get("args").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let lower = last.to_lowercase();
        if lower == "set_config" {
            let name = args.first().and_then(literal).map(|n| n.to_ascii_lowercase());
            let value = match args.get(1).and_then(literal) {
                Some(v) => SettingValue::Literal(v),
                None => SettingValue::Computed,
            };
            if name.as_deref().is_none_or(|n| n.contains("read_only")) {
                self.out.classification.escapes_read_only = true;
            }
            self.out.settings.push(Setting { name, value });
        }
        body::sql_arguments(self, &lower, args);
        let call = FunctionRef { schema, name: last };
        if !self.out.calls.contains(&call) {
            self.out.calls.push(call);
        }
    }

    fn range_var(&mut self, body: &Value) {
        let name = body.get("relname").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            return;
        }
        let schema = body.get("schemaname").and_then(Value::as_str).filter(|s| !s.is_empty());
        let relation = RelationName { schema: schema.map(str::to_owned), name: name.to_owned() };
        self.out.classification.relations.insert(relation.to_string());
    }

    /// A relation named by a list of names (`DROP TABLE s.t`, `COMMENT ON COLUMN t.c`).
    fn object_name(&mut self, object: &Value, column: bool) {
        let list = object.get("node").and_then(|n| n.get("List")).unwrap_or(object);
        let mut parts = strings(list.get("items"));
        if column {
            parts.pop();
        }
        let Some(name) = parts.pop() else { return };
        let relation = RelationName { schema: parts.pop(), name };
        self.out.classification.relations.insert(relation.to_string());
    }
}

/// ObjectType values naming relations (table, view, materialized view, sequence, index,
/// foreign table).
fn relation_like(kind: i64) -> bool {
    matches!(kind, 42 | 52 | 24 | 38 | 21 | 19)
}
const OBJECT_COLUMN: i64 = 7;

/// `READ WRITE` in BEGIN / START TRANSACTION / SET [SESSION CHARACTERISTICS AS] TRANSACTION:
/// a `transaction_read_only` option whose value is 0.
fn sets_read_write(body: &Value) -> bool {
    let options = body.get("options").or_else(|| body.get("args")).and_then(Value::as_array);
    options.into_iter().flatten().filter_map(|o| o.get("node")?.get("DefElem")).any(|d| {
        d.get("defname").and_then(Value::as_str) == Some("transaction_read_only")
            && d.pointer("/arg/node/AConst/val/Ival/ival").and_then(Value::as_i64).unwrap_or(0) == 0
    })
}

/// Whether an EXPLAIN runs its statement: an `analyze` option that is not explicitly off.
fn analyzes(explain: &Value) -> bool {
    let options = explain.get("options").and_then(Value::as_array);
    options.into_iter().flatten().filter_map(|o| o.pointer("/node/DefElem")).any(|d| {
        d.get("defname").and_then(Value::as_str) == Some("analyze")
            && !d.get("arg").filter(|a| !a.is_null()).is_some_and(|arg| {
                let word = arg.pointer("/node/String/sval").and_then(Value::as_str).map(str::to_owned);
                word.or_else(|| literal(arg))
                    .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no"))
            })
    })
}

/// A field that is there and not null.
fn present<'a>(body: &'a Value, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

/// The strings of a list of `String` nodes, as the parser gave them (quoted names keep case).
pub(super) fn strings(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a constant (`'x'`, `42`, `'x'::text`, `name => 'x'`), as text; `None` for
/// anything computed.
pub(super) fn literal(node: &Value) -> Option<String> {
    let node = node.get("node").unwrap_or(node);
    if let Some(cast) = node.get("TypeCast") {
        return literal(cast.get("arg")?);
    }
    if let Some(named) = node.get("NamedArgExpr") {
        return literal(named.get("arg")?);
    }
    let constant = node.get("AConst")?;
    if constant.get("isnull").and_then(Value::as_bool) == Some(true) {
        return Some("NULL".into());
    }
    let val = constant.get("val")?;
    if let Some(s) = val.pointer("/Sval/sval").and_then(Value::as_str) {
        return Some(s.to_owned());
    }
    if let Some(i) = val.get("Ival") {
        return Some(i.get("ival").and_then(Value::as_i64).unwrap_or(0).to_string());
    }
    if let Some(f) = val.pointer("/Fval/fval").and_then(Value::as_str) {
        return Some(f.to_owned());
    }
    if let Some(b) = val.get("Boolval") {
        return Some(b.get("boolval").and_then(Value::as_bool).unwrap_or(false).to_string());
    }
    val.pointer("/Bsval/bsval").and_then(Value::as_str).map(str::to_owned)
}
