//! Classifying SQL with the real PostgreSQL parser (pg_query): statement classes, relations,
//! functions, and DELETE/UPDATE without WHERE, found by walking the *whole* parse tree, so a
//! DELETE inside a CTE or a function call inside a subquery is seen too.
//!
//! Besides the classification every record carries, the analysis says what each statement does
//! to the session's state the proxy must track to see what the server sees: named prepared
//! statements and portals (PREPARE, EXECUTE, DEALLOCATE, DECLARE, CLOSE, DISCARD, transaction
//! ends), settings (SET, RESET, `set_config`), and the functions it calls (judged against the
//! resource's catalog when the statement is judged). SQL inside SQL is classified too: function
//! and procedure bodies when they are created (SQL and PL/pgSQL), DO blocks, and the literal
//! SQL text handed to built-ins that execute it (`query_to_xml`, `dblink`...). Built-ins that
//! read a table named in a string (`table_to_xml('secrets', ...)`) read that relation; those
//! that read every table of a schema or database (`schema_to_xml`) are refused.
//!
//! The walk is generic over the tree's serialized form rather than a list of node types to
//! descend into: a node type nobody thought of cannot hide a statement. Results are cached by
//! statement text, and by *shape* (see [`shape`]): statements that differ only in their
//! constants (`WHERE aid = 123`, `WHERE aid = 456`) share one analysis, so the hot path parses
//! each distinct shape once.

mod body;
mod reach;
mod shape;
mod walk;

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
    // A PL/pgSQL assignment evaluates an expression (a SELECT, which the walk finds inside).
    ("PLAssignStmt", "select"),
];

/// A call of a function whose body the proxy cannot see (not in the resource's catalog, or
/// written in a language other than SQL and PL/pgSQL).
pub const USER_FUNCTION: &str = "user_function";
/// SQL the proxy cannot see before it runs: PL/pgSQL `EXECUTE` of a computed string, a body it
/// cannot parse, SQL text a built-in runs that is not a literal.
pub const DYNAMIC_SQL: &str = "dynamic_sql";

/// Classes that only read (with the session's own settings, which `set` changes).
const READ_ONLY: &[&str] =
    &["select", "explain", "transaction", "show", "set", "cursor", "prepare", "execute", "listen"];

/// How deep SQL inside SQL is followed (a body calling a built-in that runs a literal...).
const MAX_DEPTH: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("statement does not parse: {0}")]
pub struct ParseError(pub String);

/// What a statement text does, beyond its classification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analysis {
    pub classification: Classification,
    /// What it does to named prepared statements and portals, in order, with the index of the
    /// top-level statement that does it.
    pub ops: Vec<(usize, NameOp)>,
    /// Settings it changes, in order.
    pub settings: Vec<Setting>,
    /// Functions it calls, as written.
    pub calls: Vec<FunctionRef>,
    /// Names that call a function if one of that name exists: attribute notation (`t.f`,
    /// `(expr).f`) calls a one-argument function `f` when `t` has no column `f`.
    pub attribute_calls: Vec<String>,
    /// Why it must be refused whatever the policy says (SQL text that is not a literal handed
    /// to a built-in that runs it, prepared statements handled inside nested SQL).
    pub refusal: Option<String>,
    /// A `COPY ... TO` in binary format (its values cannot be masked by type).
    pub binary_copy_out: bool,
    /// Writes bounded only by `IS NOT NULL` tests: unbounded if those columns are `NOT NULL`
    /// (a primary key's are), which the catalog tells.
    pub null_tested: Vec<NullTested>,
    /// It creates a deferrable constraint trigger, whose writes happen at commit.
    pub creates_deferrable_trigger: bool,
}

/// A write whose condition is true for every row if each of `columns` of `table` is `NOT NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NullTested {
    pub schema: Option<String>,
    pub table: String,
    pub columns: Vec<String>,
}

/// An effect on the session's named prepared statements and portals.
#[derive(Debug, Clone, PartialEq)]
pub enum NameOp {
    /// `PREPARE name AS query`: what the query does.
    Prepare { name: String, inner: Arc<Analysis> },
    /// `EXECUTE name`, anywhere (also inside EXPLAIN ANALYZE or CREATE TABLE AS).
    Execute { name: String },
    /// `FETCH` or `MOVE` in a portal: it runs (more of) the portal's statement.
    Fetch { name: String },
    /// `DEALLOCATE name`, or every statement (`None`).
    Deallocate(Option<String>),
    /// `DISCARD ALL`: every statement and every portal.
    DiscardAll,
    /// `DECLARE name CURSOR [WITH HOLD] FOR query`.
    Declare { name: String, holdable: bool, inner: Arc<Analysis> },
    /// `CLOSE name`, or every cursor (`None`).
    Close(Option<String>),
    /// COMMIT, ROLLBACK, ROLLBACK TO, PREPARE TRANSACTION: portals (not held cursors) may end.
    EndTransaction,
}

/// A setting a statement changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Lower case; `None` when the name is computed (`set_config(name_column, ...)`).
    pub name: Option<String>,
    pub value: SettingValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// A literal value, as written.
    Literal(String),
    /// `RESET name` or `SET name TO DEFAULT`: back to the session's starting value.
    Reset,
    /// `RESET ALL` (and `DISCARD ALL`).
    ResetAll,
    /// Not a literal: unknown until it runs.
    Computed,
}

/// A function called, as written (lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionRef {
    pub schema: Option<String>,
    pub name: String,
}

impl Analysis {
    /// Add what `other`, SQL inside this SQL (a function body, a DO block, SQL text a built-in
    /// runs), does to this analysis. Prepared statements and cursors handled in there are out
    /// of the proxy's sight (they change the session's names when the inner SQL runs), so such
    /// inner SQL is refused.
    pub(crate) fn absorb(&mut self, other: &Analysis) {
        merge(&mut self.classification, &other.classification);
        self.settings.extend(other.settings.iter().cloned());
        for call in &other.calls {
            if !self.calls.contains(call) {
                self.calls.push(call.clone());
            }
        }
        for name in &other.attribute_calls {
            if !self.attribute_calls.contains(name) {
                self.attribute_calls.push(name.clone());
            }
        }
        if self.refusal.is_none() {
            self.refusal.clone_from(&other.refusal);
        }
        if self.refusal.is_none() && other.ops.iter().any(|(_, op)| !matches!(op, NameOp::EndTransaction)) {
            self.refusal = Some(
                "nested SQL (a function body, a DO block, SQL text a built-in runs) prepares, executes or deallocates \
                 statements or cursors, which the proxy cannot follow"
                    .into(),
            );
        }
        self.binary_copy_out |= other.binary_copy_out;
        self.null_tested.extend(other.null_tested.iter().cloned());
        self.creates_deferrable_trigger |= other.creates_deferrable_trigger;
    }
}

/// Add what `other` does to `into` (classes, relations, functions, flags).
pub fn merge(into: &mut Classification, other: &Classification) {
    into.classes.extend(other.classes.iter().cloned());
    into.relations.extend(other.relations.iter().cloned());
    into.functions.extend(other.functions.iter().cloned());
    into.unbounded_write |= other.unbounded_write;
    into.escapes_read_only |= other.escapes_read_only;
    into.writes = writes(into);
}

/// Whether a classification does anything but read.
pub fn writes(c: &Classification) -> bool {
    c.classes.iter().any(|class| !READ_ONLY.contains(&class.as_str()))
}

/// Parse and analyse one statement text (which may hold several statements).
pub fn analyze(sql: &str) -> Result<Analysis, ParseError> {
    analyze_at(sql, pg_query::ParserOptions::DEFAULT, 0)
}

/// Parse and classify one statement text.
pub fn classify(sql: &str) -> Result<Classification, ParseError> {
    analyze(sql).map(|a| a.classification)
}

fn analyze_at(sql: &str, mode: pg_query::ParserOptions, depth: u8) -> Result<Analysis, ParseError> {
    let parsed = pg_query::parse(sql, mode).map_err(|e| ParseError(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| ParseError(e.to_string()))?;
    Ok(walk::analyze_tree(sql, &tree, depth))
}

/// An analysis, or why the text did not parse, shared between sessions (cheap to clone).
pub type Classified = Result<Arc<Analysis>, ParseError>;

/// Texts longer than this are analysed on the blocking pool, a few at a time, so one huge
/// statement cannot stall the sessions sharing an async worker.
const LARGE_STATEMENT: usize = 64 * 1024;
const LARGE_AT_ONCE: usize = 2;

/// Analyses by statement text, bounded: when full it starts over (cheap, and a cold cache only
/// costs parses).
pub struct ClassifyCache {
    entries: Mutex<HashMap<Arc<str>, Classified>>,
    capacity: usize,
    large: Arc<tokio::sync::Semaphore>,
}

impl ClassifyCache {
    pub fn new(capacity: usize) -> Self {
        ClassifyCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            large: Arc::new(tokio::sync::Semaphore::new(LARGE_AT_ONCE)),
        }
    }

    fn cached(&self, sql: &str) -> Option<Classified> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(sql).cloned()
    }

    fn store(&self, sql: &str, result: Classified) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(Arc::from(sql), result);
    }

    /// The analysis of `sql`, computed on this thread: by its exact text, else by its shape
    /// when the shape's analysis owes nothing to constants, else parsed in full.
    pub fn classify(&self, sql: &str) -> Classified {
        if let Some(hit) = self.cached(sql) {
            return hit;
        }
        if let Some(key) = shape::key(sql) {
            let by_shape = match self.cached(&key) {
                Some(hit) => hit,
                None => {
                    let result = analyze(&key).map(Arc::new);
                    self.store(&key, result.clone());
                    result
                }
            };
            if let Ok(analysis) = &by_shape {
                if shape::owes_nothing_to_constants(analysis) {
                    return by_shape;
                }
            }
        }
        let result = analyze(sql).map(Arc::new);
        self.store(sql, result.clone());
        result
    }

    /// The analysis of `sql`; a large text is analysed on the blocking pool.
    pub async fn classify_async(&self, sql: &str) -> Classified {
        if sql.len() < LARGE_STATEMENT {
            return self.classify(sql);
        }
        if let Some(hit) = self.cached(sql) {
            return hit;
        }
        let Ok(_permit) = self.large.clone().acquire_owned().await else {
            return Err(ParseError("the proxy is shutting down".into()));
        };
        let text = sql.to_owned();
        let result = match tokio::task::spawn_blocking(move || analyze(&text)).await {
            Ok(result) => result.map(Arc::new),
            Err(e) => Err(ParseError(format!("analysis failed: {e}"))),
        };
        self.store(sql, result.clone());
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
