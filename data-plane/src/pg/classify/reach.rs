//! Whether a write's reach is bounded: a condition bounds the rows a statement changes only if
//! it can be true for some rows of the target and false for others. A condition with no column
//! of the target in it (`true`, `1 = 1`, `$1 = $2`, `now() > '2000-01-01'`, `other.flag`, an
//! uncorrelated `EXISTS`) is the same for every row: all or nothing. So is a column compared
//! with itself (`x = x`), and an `OR` with such a branch.
//!
//! Without the schema, an unqualified column counts as the target's (in `UPDATE ... FROM`
//! it may belong to another relation). `IS NOT NULL` on a column is a condition unless the
//! column is `NOT NULL` (a primary key's is): a condition bounded only by such tests is judged
//! a second time with them true for every row ([`if_not_null`]), and the columns they test go
//! to the catalog, which knows.

use super::walk::strings;
use serde_json::Value;

/// What a condition is for the rows of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// True for every row.
    All,
    /// False for every row (or NULL): changes nothing.
    None,
    /// The same for every row, unknown which way until it runs: all or nothing.
    Constant,
    /// Depends on the row: bounded.
    Rows,
}

impl Reach {
    /// Whether a write under this condition can change only some rows.
    pub(super) fn bounds(self) -> bool {
        matches!(self, Reach::Rows | Reach::None)
    }
}

/// The relation a write changes, as its columns may be qualified.
pub(super) struct Target {
    name: String,
    /// Judge `IS NOT NULL` on a column of the target as true for every row, noting the column.
    not_null: Option<std::cell::RefCell<Vec<String>>>,
}

impl Target {
    /// From a statement's `relation` (a RangeVar): its alias if it has one, else its name.
    pub(super) fn of(relation: Option<&Value>) -> Target {
        let alias = relation.and_then(|r| r.pointer("/alias/aliasname")).and_then(Value::as_str);
        let name = alias.or_else(|| relation.and_then(|r| r.get("relname")).and_then(Value::as_str));
        Target { name: name.unwrap_or_default().to_owned(), not_null: None }
    }
}

/// The reach of `condition` (absent: every row).
pub(super) fn of(condition: Option<&Value>, target: &Target) -> Reach {
    match condition.filter(|c| !c.is_null()) {
        None => Reach::All,
        Some(c) => reach(c, target),
    }
}

/// For a condition that bounds: the target's columns whose `IS NOT NULL` tests are all that
/// bound it (with them true for every row, it no longer does); `None` when something else does.
pub(super) fn if_not_null(condition: Option<&Value>, target: &Target) -> Option<Vec<String>> {
    let condition = condition.filter(|c| !c.is_null())?;
    let assuming = Target { name: target.name.clone(), not_null: Some(Default::default()) };
    if reach(condition, &assuming).bounds() {
        return None;
    }
    let mut columns = assuming.not_null.map(|c| c.into_inner()).unwrap_or_default();
    columns.sort();
    columns.dedup();
    (!columns.is_empty()).then_some(columns)
}

fn reach(node: &Value, t: &Target) -> Reach {
    let node = node.get("node").unwrap_or(node);
    if let Some(b) = node.get("BoolExpr") {
        let args: Vec<Reach> =
            b.get("args").and_then(Value::as_array).into_iter().flatten().map(|a| reach(a, t)).collect();
        return match b.get("boolop").and_then(Value::as_i64) {
            // AND: any false arm is false; any row-dependent arm bounds.
            Some(1) if args.contains(&Reach::None) => Reach::None,
            Some(1) if args.contains(&Reach::Rows) => Reach::Rows,
            Some(1) if args.iter().all(|r| *r == Reach::All) => Reach::All,
            Some(1) => Reach::Constant,
            // OR: any true arm is true; an arm that may be true for every row reaches them all.
            Some(2) if args.contains(&Reach::All) => Reach::All,
            Some(2) if args.contains(&Reach::Constant) => Reach::Constant,
            Some(2) if args.contains(&Reach::Rows) => Reach::Rows,
            Some(2) => Reach::None,
            Some(3) => match args.first() {
                Some(Reach::All) => Reach::None,
                Some(Reach::None) => Reach::All,
                Some(other) => *other,
                None => Reach::Constant,
            },
            _ => generic(node, t),
        };
    }
    if let Some(c) = node.get("AConst") {
        if c.get("isnull").and_then(Value::as_bool) == Some(true) {
            return Reach::None;
        }
        return match c.pointer("/val/Boolval") {
            Some(b) if b.get("boolval").and_then(Value::as_bool) == Some(true) => Reach::All,
            Some(_) => Reach::None,
            None => Reach::Constant,
        };
    }
    if let Some(e) = node.get("AExpr") {
        return comparison(node, e, t);
    }
    if let (Some(test), Some(noted)) = (node.get("NullTest"), &t.not_null) {
        const IS_NOT_NULL: i64 = 2;
        if let Some(column) = test.get("arg").and_then(|a| column_of(a, t)) {
            let not = test.get("nulltesttype").and_then(Value::as_i64) == Some(IS_NOT_NULL);
            noted.borrow_mut().push(column);
            return if not { Reach::All } else { Reach::None };
        }
    }
    generic(node, t)
}

/// The name of a column of the target (`x` or `t.x`), when `node` is one.
fn column_of(node: &Value, t: &Target) -> Option<String> {
    let fields = node.get("node").unwrap_or(node).pointer("/ColumnRef/fields")?.as_array()?;
    let names = strings(Some(&Value::Array(fields.clone())));
    match names.as_slice() {
        [column] => Some(column.clone()),
        [.., table, column] if *table == t.name => Some(column.clone()),
        _ => None,
    }
}

/// `a op b`: a column against itself is always true; constants on both sides are constant.
fn comparison(node: &Value, e: &Value, t: &Target) -> Reach {
    let (left, right) = (e.get("lexpr"), e.get("rexpr"));
    let op = strings(e.get("name")).pop().unwrap_or_default();
    let kind = e.get("kind").and_then(Value::as_i64).unwrap_or(0);
    // AEXPR_OP with =, <=, >= or AEXPR_NOT_DISTINCT (`IS NOT DISTINCT FROM`): the same
    // expression of the same columns on both sides (`x = x`, `t.x = x`, `f(x) = f(x)`) holds for
    // every row (NULLs aside).
    let reflexive = (kind == 1 && matches!(op.as_str(), "=" | "<=" | ">=")) || kind == 5;
    if reflexive {
        if let (Some(l), Some(r)) = (left, right) {
            if touches(l, t, false) && normalized(l, t) == normalized(r, t) {
                return Reach::All;
            }
        }
    }
    if touches(node, t, false) {
        return Reach::Rows;
    }
    // Constants on both sides: the same for every row. Not folded, even `1 = 0`: the operator
    // is whatever the session's search_path finds, which a function of the agent's can be (and
    // a statement's shape, with constants made parameters, then judges as its text does).
    Reach::Constant
}

/// Anything else: row-dependent when a column of the target is in it.
fn generic(node: &Value, t: &Target) -> Reach {
    if touches(node, t, false) {
        Reach::Rows
    } else {
        Reach::Constant
    }
}

/// An expression without its source positions, its columns named without the target's
/// qualifier: two spellings of the same expression compare equal.
fn normalized(node: &Value, t: &Target) -> Value {
    match node {
        Value::Object(map) => {
            if let Some(fields) = map.get("ColumnRef").and_then(|c| c.get("fields")).and_then(Value::as_array) {
                let names = strings(Some(&Value::Array(fields.clone())));
                let plain = match names.as_slice() {
                    [.., table, column] if *table == t.name => vec![column.clone()],
                    _ => names,
                };
                return Value::from(plain);
            }
            Value::Object(
                map.iter()
                    .filter(|(k, _)| k.as_str() != "location")
                    .map(|(k, v)| (k.clone(), normalized(v, t)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| normalized(i, t)).collect()),
        other => other.clone(),
    }
}

/// Whether a column of the target appears in `node`. Inside a subquery an unqualified name is
/// the subquery's own; only a name qualified with the target's name or alias reaches out.
fn touches(node: &Value, t: &Target, in_subquery: bool) -> bool {
    match node {
        Value::Object(map) => map.iter().any(|(key, child)| match key.as_str() {
            "ColumnRef" => {
                let fields = child.get("fields").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                match fields.len() {
                    0 => false,
                    1 => !in_subquery,
                    n => {
                        let qualifier = fields[n - 2].pointer("/node/String/sval").and_then(Value::as_str);
                        qualifier.is_some_and(|q| q == t.name)
                    }
                }
            }
            "SubLink" => {
                // A subquery naming one of its own relations like the target hides the target.
                child.get("testexpr").is_some_and(|e| touches(e, t, in_subquery))
                    || child
                        .get("subselect")
                        .is_some_and(|s| !names_in_from(s).contains(&t.name) && touches(s, t, true))
            }
            _ => touches(child, t, in_subquery),
        }),
        Value::Array(items) => items.iter().any(|item| touches(item, t, in_subquery)),
        _ => false,
    }
}

/// The names a subquery's FROM gives its relations (aliases, else relation names).
fn names_in_from(subselect: &Value) -> Vec<String> {
    fn collect(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if map.contains_key("relname") && map.contains_key("schemaname") {
                    let alias = map.get("alias").and_then(|a| a.get("aliasname")).and_then(Value::as_str);
                    let name = alias.or_else(|| map.get("relname").and_then(Value::as_str));
                    out.extend(name.map(str::to_owned));
                }
                if let Some(alias) = map.get("RangeSubselect").and_then(|r| r.pointer("/alias/aliasname")) {
                    out.extend(alias.as_str().map(str::to_owned));
                }
                map.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(from) = subselect.pointer("/node/SelectStmt/from_clause") {
        collect(from, &mut out);
    }
    out
}
