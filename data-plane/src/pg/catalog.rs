//! The functions of a resource's database, read by the proxy itself over a connection of its
//! own: which are built in, how volatile each is, and what the body of each SQL or PL/pgSQL
//! function does. A call is then judged by what it can do:
//!
//! - a user function whose body the proxy knows adds its body's classification (a `SELECT f()`
//!   where `f` deletes is a delete), up to a few levels of calls deep;
//! - a function the catalog does not have, or whose body is C, PL/Python... is a
//!   `user_function` (a class policies can deny or hold; it counts as a write);
//! - with a read-only grant, a volatile built-in outside a short list of harmless ones
//!   (`random`, `clock_timestamp`...) is refused: `pg_terminate_backend`, `pg_advisory_lock`,
//!   `lo_export` and their kind change things a read-only transaction does not stop.
//!
//! It also knows which columns are `NOT NULL`: `DELETE ... WHERE id IS NOT NULL` on a primary
//! key is a write no condition bounds.
//!
//! Loaded when the first session of a resource opens; read again when it is older than a minute
//! or a statement calls a function it does not have (at most every two seconds). What runs
//! inside the database beyond the statement (triggers, operators, defaults, views) is bounded by
//! the database's own privileges: see the trust boundary in ARCHITECTURE.md.

use super::classify::{self, Analysis, FunctionRef, NullTested, USER_FUNCTION};
use super::messages::{self, Cursor};
use super::upstream;
use crate::config::PgResource;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tollgate_shared::event::Classification;

/// The statement the proxy runs to read the catalog (the upstream statement-log check knows it).
pub const QUERY: &str = "SELECT n.nspname, p.proname, p.provolatile, l.lanname, \
CASE WHEN n.nspname IN ('pg_catalog', 'information_schema') OR p.prokind NOT IN ('f', 'p') OR l.lanname NOT IN ('sql', 'plpgsql') \
THEN NULL ELSE pg_get_functiondef(p.oid) END \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
JOIN pg_catalog.pg_language l ON l.oid = p.prolang";

/// The columns declared `NOT NULL`, by table (the second statement of a load).
pub const NOT_NULL_QUERY: &str = "SELECT n.nspname, c.relname, a.attname \
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE a.attnotnull AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Whether the database has deferrable constraint triggers of its users (their writes happen at
/// commit; foreign keys' own triggers never write when deferred). The third statement of a load.
pub const DEFERRABLE_TRIGGERS_QUERY: &str = "SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger \
WHERE tgdeferrable AND NOT tgisinternal";

/// The application name of the proxy's catalog connection.
const APPLICATION: &str = "tollgate-catalog";
const MAX_AGE: Duration = Duration::from_secs(60);
const MIN_RELOAD: Duration = Duration::from_secs(2);
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How many levels of calls inside function bodies are followed.
const MAX_DEPTH: u8 = 4;

/// Volatile built-ins a read-only session may call: they read, or change only the session's
/// own scratch state.
const HARMLESS_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "statement_timestamp",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "currval",
    "lastval",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "set_config",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "cursor_to_xml",
    "ts_stat",
];

/// What calling a function can do.
#[derive(Debug)]
enum Body {
    /// Built in (pg_catalog, information_schema).
    Builtin,
    /// A SQL or PL/pgSQL body the proxy has classified.
    Known(Arc<Analysis>),
    /// A body the proxy cannot read.
    Opaque,
}

#[derive(Debug)]
struct Function {
    schema: String,
    volatile: bool,
    body: Body,
}

/// One database's functions, by name, and its `NOT NULL` columns.
#[derive(Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, Vec<Function>>,
    /// By table name: each schema's table of that name with its `NOT NULL` columns.
    not_null: HashMap<String, Vec<(String, HashSet<String>)>>,
    /// Deferrable constraint triggers exist (see [`DEFERRABLE_TRIGGERS_QUERY`]).
    pub deferrable_triggers: bool,
}

/// What judging a statement's calls found.
pub struct Calls {
    /// A volatile built-in a read-only session may not call.
    pub read_only_violation: Option<String>,
    /// A called function's body must be refused whatever the policy says (it handles prepared
    /// statements the proxy cannot follow, or hands computed SQL to a built-in).
    pub refusal: Option<String>,
}

impl Catalog {
    fn from_rows(rows: Vec<[Option<String>; 5]>) -> Catalog {
        let mut by_name: HashMap<String, Vec<Function>> = HashMap::new();
        for [schema, name, volatility, language, definition] in rows {
            let (Some(schema), Some(name)) = (schema, name) else { continue };
            let builtin = schema == "pg_catalog" || schema == "information_schema";
            let body = match (builtin, language.as_deref(), definition) {
                (true, _, _) => Body::Builtin,
                (false, Some("sql" | "plpgsql"), Some(definition)) => match classify::analyze(&definition) {
                    Ok(mut analysis) => {
                        analysis.classification.classes.remove("create_function");
                        analysis.classification.writes = classify::writes(&analysis.classification);
                        Body::Known(Arc::new(analysis))
                    }
                    Err(_) => Body::Opaque,
                },
                _ => Body::Opaque,
            };
            let volatile = volatility.as_deref() == Some("v");
            by_name.entry(name).or_default().push(Function { schema, volatile, body });
        }
        Catalog { by_name, not_null: HashMap::new(), deferrable_triggers: false }
    }

    /// Add the `NOT NULL` columns (rows of [`NOT_NULL_QUERY`]).
    fn with_not_null(mut self, rows: Vec<[Option<String>; 5]>) -> Catalog {
        for [schema, table, column, ..] in rows {
            let (Some(schema), Some(table), Some(column)) = (schema, table, column) else { continue };
            let tables = self.not_null.entry(table).or_default();
            match tables.iter_mut().find(|(s, _)| *s == schema) {
                Some((_, columns)) => {
                    columns.insert(column);
                }
                None => tables.push((schema, HashSet::from([column]))),
            }
        }
        self
    }

    /// Whether a write bounded only by `IS NOT NULL` tests reaches every row: every tested
    /// column is `NOT NULL` in a table it may mean (the schema named, or with the search_path
    /// unknown, any schema's table of that name).
    pub fn reaches_every_row(&self, tested: &NullTested) -> bool {
        self.not_null.get(&tested.table).into_iter().flatten().any(|(schema, columns)| {
            tested.schema.as_ref().is_none_or(|s| s == schema) && tested.columns.iter().all(|c| columns.contains(c))
        })
    }

    /// The functions a call may mean: every overload, in the schema named or (unqualified, with
    /// the session's search_path unknown) in any schema.
    fn candidates<'c>(&'c self, call: &'c FunctionRef) -> impl Iterator<Item = &'c Function> + 'c {
        self.by_name
            .get(&call.name)
            .into_iter()
            .flatten()
            .filter(move |f| call.schema.as_ref().is_none_or(|schema| &f.schema == schema))
    }

    /// Whether the catalog has every function these analyses call.
    pub fn knows(&self, analyses: &[&Analysis]) -> bool {
        analyses.iter().flat_map(|a| &a.calls).all(|call| self.candidates(call).next().is_some())
    }

    /// The calls of an analysis: the functions it names, and the attribute-notation names
    /// (`t.f`) that are functions in this catalog (the others are columns).
    fn calls_of(&self, analysis: &Analysis) -> Vec<FunctionRef> {
        let attributes = analysis
            .attribute_calls
            .iter()
            .filter(|name| self.by_name.contains_key(*name))
            .map(|name| FunctionRef { schema: None, name: name.clone() });
        analysis.calls.iter().cloned().chain(attributes).collect()
    }

    /// Add what the calls can do to `c`; report a volatile built-in when `read_only`.
    pub fn expand(&self, c: &mut Classification, analyses: &[&Analysis], read_only: bool) -> Calls {
        let mut seen = HashSet::new();
        let mut found = Calls { read_only_violation: None, refusal: None };
        for analysis in analyses {
            self.expand_calls(c, &self.calls_of(analysis), read_only, 0, &mut seen, &mut found);
        }
        c.writes = classify::writes(c);
        found
    }

    fn expand_calls(
        &self,
        c: &mut Classification,
        calls: &[FunctionRef],
        read_only: bool,
        depth: u8,
        seen: &mut HashSet<*const Function>,
        found: &mut Calls,
    ) {
        for call in calls {
            let mut any = false;
            for function in self.candidates(call) {
                any = true;
                match &function.body {
                    Body::Builtin => {
                        if read_only && function.volatile && !HARMLESS_VOLATILE.contains(&call.name.as_str()) {
                            found.read_only_violation.get_or_insert_with(|| call.name.clone());
                        }
                    }
                    // Every overload's body counts, once; too deep to follow is unknown.
                    Body::Known(_) if depth >= MAX_DEPTH => {
                        c.classes.insert(USER_FUNCTION.into());
                    }
                    Body::Known(body) => {
                        if !seen.insert(function as *const Function) {
                            continue;
                        }
                        classify::merge(c, &body.classification);
                        if found.refusal.is_none() {
                            found.refusal.clone_from(&body.refusal);
                        }
                        self.expand_calls(c, &self.calls_of(body), read_only, depth + 1, seen, found);
                    }
                    Body::Opaque => {
                        c.classes.insert(USER_FUNCTION.into());
                    }
                }
            }
            if !any {
                c.classes.insert(USER_FUNCTION.into());
            }
        }
    }
}

/// A resource's catalog as this proxy knows it, reloaded when stale.
pub struct CatalogCell {
    resource: Arc<PgResource>,
    max_message: usize,
    current: RwLock<Option<(Arc<Catalog>, Instant)>>,
    /// One load at a time; the last attempt.
    loading: tokio::sync::Mutex<Option<Instant>>,
    /// A session created functions since the last load: the next unknown call reloads at once.
    dirty: std::sync::atomic::AtomicBool,
    /// When a session last may have created a deferrable trigger.
    triggers_created: std::sync::Mutex<Option<Instant>>,
}

impl CatalogCell {
    pub fn new(resource: Arc<PgResource>, max_message: usize) -> Self {
        CatalogCell {
            resource,
            max_message,
            current: RwLock::new(None),
            loading: tokio::sync::Mutex::new(None),
            dirty: std::sync::atomic::AtomicBool::new(false),
            triggers_created: std::sync::Mutex::new(None),
        }
    }

    /// The catalog as last loaded (empty before the first load).
    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(c, _)| c.clone()).unwrap_or_default()
    }

    fn age(&self) -> Option<Duration> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, at)| at.elapsed())
    }

    /// Make sure a catalog is loaded, reading it again when it is older than a minute. Only a
    /// first load that fails is an error; a failed reload keeps what the proxy had.
    pub async fn ensure(&self) -> Result<(), String> {
        match self.age() {
            Some(age) if age < MAX_AGE => Ok(()),
            Some(_) => {
                self.reload(Duration::ZERO).await;
                Ok(())
            }
            None => {
                self.reload(Duration::ZERO).await;
                match self.age() {
                    Some(_) => Ok(()),
                    None => Err(format!("cannot read the function catalog of resource {:?}", self.resource.name)),
                }
            }
        }
    }

    /// A statement calls functions the catalog does not have: read it again (at most every
    /// two seconds), in case they were just created.
    pub async fn refresh_for(&self, analyses: &[&Analysis]) {
        if !self.current().knows(analyses) {
            let created = self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel);
            self.reload(if created { Duration::ZERO } else { MIN_RELOAD }).await;
        }
    }

    /// A session of this proxy may have created a deferrable trigger (perhaps in a transaction
    /// not committed yet, which the catalog's connection cannot see).
    pub fn triggers_changed(&self) {
        *self.triggers_created.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether deferrable constraint triggers may exist: for two minutes after a session of
    /// this proxy may have created one, yes; else what a catalog at most a minute old says.
    pub async fn deferrable_triggers(&self) -> bool {
        let created = *self.triggers_created.lock().unwrap_or_else(|p| p.into_inner());
        if created.is_some_and(|at| at.elapsed() < 2 * MAX_AGE) {
            return true;
        }
        if self.age().is_none_or(|age| age >= MAX_AGE) {
            self.reload(MIN_RELOAD).await;
        }
        self.current().deferrable_triggers
    }

    /// A statement that creates or replaces functions was forwarded.
    pub fn functions_changed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    async fn reload(&self, min_interval: Duration) {
        let mut last = self.loading.lock().await;
        if last.is_some_and(|at| at.elapsed() < min_interval) {
            return;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(LOAD_TIMEOUT, load(&self.resource, self.max_message)).await {
            Ok(Ok(catalog)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((Arc::new(catalog), Instant::now()));
            }
            Ok(Err(e)) => tracing::warn!(resource = %self.resource.name, error = %e, "function catalog not read"),
            Err(_) => tracing::warn!(resource = %self.resource.name, "function catalog read timed out"),
        }
    }
}

/// Read the catalog over a connection of the proxy's own.
async fn load(resource: &PgResource, max_message: usize) -> Result<Catalog, String> {
    let params = [
        ("application_name".to_owned(), APPLICATION.to_owned()),
        ("options".to_owned(), super::lexical::UPSTREAM_OPTIONS.to_owned()),
    ];
    let mut upstream = upstream::connect(resource, &params, max_message).await.map_err(|e| e.to_string())?;
    for query in [QUERY, NOT_NULL_QUERY, DEFERRABLE_TRIGGERS_QUERY] {
        upstream.writer.write_all(&messages::query(query)).await.map_err(|e| e.to_string())?;
    }
    upstream.writer.flush().await.map_err(|e| e.to_string())?;
    let mut rows = [Vec::new(), Vec::new(), Vec::new()];
    let mut answered = 0;
    let mut failure = None;
    while answered < rows.len() {
        let frame = upstream.reader.read_frame().await.map_err(|e| e.to_string())?;
        let Some(frame) = frame else { return Err("the upstream closed the catalog connection".into()) };
        match frame.tag() {
            b'D' => rows[answered].push(row(frame.body()).map_err(|e| e.to_string())?),
            b'E' => failure = Some(messages::error_fields(frame.body()).map_err(|e| e.to_string())?),
            b'Z' => answered += 1,
            _ => {}
        }
    }
    let [functions, not_null, triggers] = rows;
    let _ = upstream.writer.write_all(&messages::framed(b'X', &[])).await;
    let _ = upstream.writer.flush().await;
    match failure {
        Some((code, message)) => Err(format!("{code} {message}")),
        None => {
            let mut catalog = Catalog::from_rows(functions).with_not_null(not_null);
            // Unreadable: assume there are.
            catalog.deferrable_triggers = triggers.first().and_then(|[n, ..]| n.as_deref()) != Some("0");
            Ok(catalog)
        }
    }
}

/// A DataRow of up to five text columns.
fn row(body: &[u8]) -> Result<[Option<String>; 5], messages::Malformed> {
    let mut c = Cursor::new(body, "DataRow");
    let mut out: [Option<String>; 5] = Default::default();
    let n = usize::try_from(c.i16()?).map_err(|_| messages::Malformed("DataRow"))?;
    for i in 0..n {
        let len = c.i32()?;
        let value = if len >= 0 { Some(String::from_utf8_lossy(c.take(len as usize)?).into_owned()) } else { None };
        if let Some(slot) = out.get_mut(i) {
            *slot = value;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let row = |schema: &str, name: &str, v: &str, lang: &str, def: Option<&str>| {
            [Some(schema.into()), Some(name.into()), Some(v.into()), Some(lang.into()), def.map(str::to_owned)]
        };
        Catalog::from_rows(vec![
            row("pg_catalog", "count", "i", "internal", None),
            row("pg_catalog", "pg_terminate_backend", "v", "internal", None),
            row("pg_catalog", "random", "v", "internal", None),
            row(
                "public",
                "wipe",
                "v",
                "plpgsql",
                Some("CREATE OR REPLACE FUNCTION public.wipe() RETURNS void LANGUAGE plpgsql AS $f$ begin delete from orders; perform public.kill(); end $f$"),
            ),
            row(
                "public",
                "kill",
                "v",
                "sql",
                Some("CREATE OR REPLACE FUNCTION public.kill() RETURNS bool LANGUAGE sql AS $f$ select pg_terminate_backend(1) $f$"),
            ),
            row("public", "native", "v", "c", None),
        ])
    }

    fn expand(sql: &str, read_only: bool) -> (Classification, Calls) {
        let analysis = classify::analyze(sql).unwrap();
        let mut c = analysis.classification.clone();
        let calls = catalog().expand(&mut c, &[&analysis], read_only);
        (c, calls)
    }

    #[test]
    fn calls_are_judged_by_what_the_function_does() {
        let (c, calls) = expand("select count(*), random() from t", true);
        assert!(!c.writes && calls.read_only_violation.is_none());
        let (c, calls) = expand("select pg_terminate_backend(1)", true);
        assert_eq!(calls.read_only_violation.as_deref(), Some("pg_terminate_backend"));
        assert!(!c.classes.contains(USER_FUNCTION));
        // A body the proxy knows adds what it does, calls inside it included.
        let (c, calls) = expand("select wipe()", true);
        assert!(c.classes.contains("delete") && c.writes, "{c:?}");
        assert_eq!(calls.read_only_violation.as_deref(), Some("pg_terminate_backend"));
        assert!(c.functions.contains("pg_terminate_backend"));
        // Unknown functions and unreadable bodies are user functions.
        for sql in ["select native()", "select nobody_knows()", "select other_schema.count(1)"] {
            let (c, _) = expand(sql, false);
            assert!(c.classes.contains(USER_FUNCTION) && c.writes, "{sql}: {c:?}");
        }
        assert!(catalog().knows(&[&classify::analyze("select count(1), public.wipe()").unwrap()]));
    }

    #[test]
    fn not_null_columns_make_is_not_null_bound_nothing() {
        let row = |schema: &str, table: &str, column: &str| {
            [Some(schema.into()), Some(table.into()), Some(column.into()), None, None]
        };
        let known = catalog().with_not_null(vec![
            row("public", "orders", "id"),
            row("public", "orders", "total"),
            row("archive", "orders", "closed_at"),
        ]);
        let tested = |sql: &str| classify::analyze(sql).unwrap().null_tested.remove(0);
        assert!(known.reaches_every_row(&tested("delete from orders where id is not null")));
        assert!(known.reaches_every_row(&tested("delete from orders where id is not null and total is not null")));
        // Unqualified, any schema's table of that name may be meant.
        assert!(known.reaches_every_row(&tested("delete from orders where closed_at is not null")));
        assert!(!known.reaches_every_row(&tested("delete from public.orders where closed_at is not null")));
        assert!(!known.reaches_every_row(&tested("delete from orders where note is not null")));
        assert!(!known.reaches_every_row(&tested("delete from orders where id is not null and closed_at is not null")));
        assert!(!known.reaches_every_row(&tested("delete from others where id is not null")));
        assert!(!catalog().knows(&[&classify::analyze("select nobody_knows()").unwrap()]));
    }
}
