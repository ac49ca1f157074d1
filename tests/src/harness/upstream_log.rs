//! The upstream's statement log checked against the record: every statement an upstream ran
//! for an agent must be a recorded `command` the proxy allowed (or held and then released),
//! whose text (or the prepared text it executes) is that statement. Nothing runs upstream that
//! the record does not show as judged and allowed.
//!
//! The log is PostgreSQL's own (`log_statement = all`, JSON): `statement: <text>` for a Query
//! (with `prepare: <text>` when it EXECUTEs a prepared statement) and `execute <name>: <text>`
//! for an extended-protocol Execute. Statements of the superuser (the harness's own setup and
//! the control plane's projections) are not agents' and are left out.

use serde_json::Value;
use std::collections::HashMap;
use tollgate_shared::event::kind;
use tollgate_shared::mask::{Masker, Tally};
use tollgate_shared::policy::PolicyDocument;

/// One statement an upstream ran for a client other than the superuser.
#[derive(Debug, Clone)]
pub struct Ran {
    /// `simple` (a Query) or `extended` (an Execute).
    pub protocol: &'static str,
    pub text: String,
    /// The prepared statement a SQL `EXECUTE` ran, as the server logged it.
    pub prepared: Option<String>,
    pub database: String,
    pub user: String,
}

/// The statements in a `jsonlog` file. A line that is not a JSON record fails the check: the
/// evidence must be readable.
pub fn statements(json_log: &str) -> Result<(Vec<Ran>, usize), String> {
    let mut ran = Vec::new();
    let mut records = 0;
    for line in json_log.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).map_err(|e| format!("unreadable log line ({e}): {line}"))?;
        records += 1;
        let field = |name: &str| record.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        if field("error_severity") != "LOG" || field("user") == "postgres" || field("user").is_empty() {
            continue;
        }
        let message = field("message");
        let (protocol, text) = if let Some(text) = message.strip_prefix("statement: ") {
            ("simple", text.to_owned())
        } else if let Some(rest) = message.strip_prefix("execute ") {
            // `execute <name>: <text>` or `execute fetch from <name>/<portal>: <text>`
            let rest = rest.strip_prefix("fetch from ").unwrap_or(rest);
            match rest.split_once(": ") {
                Some((_, text)) => ("extended", text.to_owned()),
                None => return Err(format!("unexpected execute line: {message}")),
            }
        } else {
            continue;
        };
        let prepared = field("detail").strip_prefix("prepare: ").map(str::to_owned);
        ran.push(Ran { protocol, text, prepared, database: field("dbname"), user: field("user") });
    }
    Ok((ran, records))
}

/// A recorded command the proxy let run.
#[derive(Debug)]
struct Allowed {
    protocol: String,
    statement: String,
    executes: Vec<String>,
}

/// Commands allowed to run: decision `allow`, or `hold` with an `approval.released` for it.
fn allowed(events: &[Value]) -> Vec<Allowed> {
    let released: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["type"] == kind::APPROVAL_RELEASED)
        .filter_map(|e| e["payload"]["command_id"].as_str())
        .collect();
    events
        .iter()
        .filter(|e| e["type"] == kind::COMMAND)
        .filter(|e| {
            let decision = e["payload"]["decision"].as_str();
            decision == Some("allow")
                || (decision == Some("hold") && e["id"].as_str().is_some_and(|id| released.contains(&id)))
        })
        .map(|e| Allowed {
            protocol: e["payload"]["protocol"].as_str().unwrap_or_default().to_owned(),
            statement: e["payload"]["statement"].as_str().unwrap_or_default().to_owned(),
            executes: e["payload"]["postgres"]["executes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["statement"].as_str().map(str::to_owned))
                .collect(),
        })
        .collect()
}

/// Every masking the record may have used: the strict default and each policy version's
/// masking of each resource.
fn maskers(events: &[Value]) -> Vec<std::sync::Arc<Masker>> {
    let mut maskers = vec![Masker::strict()];
    for event in events.iter().filter(|e| e["type"] == kind::POLICY_CHANGED) {
        let Ok(document) = serde_json::from_value::<PolicyDocument>(event["payload"]["document"].clone()) else {
            continue;
        };
        for resource in &document.resources {
            if let Ok(masker) = Masker::new(&resource.masking) {
                maskers.push(std::sync::Arc::new(masker));
            }
        }
    }
    maskers
}

/// Statements the proxy itself runs upstream (not agents'), by exact text.
fn proxy_own(text: &str) -> bool {
    tollgate_data_plane::pg::OWN_STATEMENTS.contains(&text)
}

/// Check the log against the record; returns how many logged statements matched.
pub fn check(ran: &[Ran], events: &[Value]) -> Result<usize, String> {
    let mut allowed = allowed(events);
    let maskers = maskers(events);
    let masked = |text: &str| -> Vec<String> {
        let mut variants: Vec<String> = maskers
            .iter()
            .map(|m| tollgate_data_plane::pg::mask::mask_statement(m, text, &mut Tally::default()).into_owned())
            .collect();
        variants.sort();
        variants.dedup();
        variants
    };
    // Allowed commands by protocol and text, so each logged statement is one lookup.
    let mut by_text: HashMap<(String, String), Vec<Vec<String>>> = HashMap::new();
    for a in allowed.drain(..) {
        by_text.entry((a.protocol, a.statement)).or_default().push(a.executes);
    }
    let mut problems = Vec::new();
    let mut matched = 0;
    for statement in ran.iter().filter(|r| !proxy_own(&r.text)) {
        let texts = masked(&statement.text);
        let prepared = statement.prepared.as_deref().map(&masked);
        let found = texts.iter().any(|text| {
            let Some(bucket) = by_text.get_mut(&(statement.protocol.to_owned(), text.clone())) else {
                return false;
            };
            let Some(index) = bucket
                .iter()
                .position(|executes| prepared.as_ref().is_none_or(|p| executes.iter().any(|x| p.contains(x))))
            else {
                return false;
            };
            bucket.swap_remove(index);
            true
        });
        if found {
            matched += 1;
        } else {
            problems.push(format!(
                "{} ran on {} as {} ({}) without an allowed command on record{}",
                statement.text,
                statement.database,
                statement.user,
                statement.protocol,
                statement.prepared.as_deref().map(|p| format!(", executing {p:?}")).unwrap_or_default()
            ));
        }
    }
    if problems.is_empty() {
        Ok(matched)
    } else {
        Err(problems.join("\n"))
    }
}

/// The positive control and the check together: the log must be readable and hold records,
/// and when the record shows allowed commands that ran, at least one logged statement must be
/// among them (else the check searched the wrong log).
pub fn verify(json_log: &str, events: &[Value]) -> Result<usize, String> {
    // PostgreSQL's log speaks for PostgreSQL sessions only (SSH hosts keep their own log).
    let events: Vec<Value> = events.iter().filter(|e| e["resource"]["kind"] != "ssh").cloned().collect();
    let events = &events[..];
    let (ran, records) = statements(json_log)?;
    if records == 0 {
        return Err("the upstream's JSON log holds no records: the statement log cannot be checked".into());
    }
    let matched = check(&ran, events)?;
    let results: HashMap<&str, &str> = events
        .iter()
        .filter(|e| e["type"] == kind::COMMAND_RESULT)
        .filter_map(|e| Some((e["payload"]["command_id"].as_str()?, e["payload"]["outcome"].as_str()?)))
        .collect();
    let completed = events
        .iter()
        .filter(|e| e["type"] == kind::COMMAND && e["payload"]["decision"] == "allow")
        .filter(|e| e["id"].as_str().and_then(|id| results.get(id)) == Some(&"ok"))
        .count();
    if completed > 0 && matched == 0 {
        return Err(format!(
            "{completed} commands completed on record but the upstream's log shows none of them: wrong log?"
        ));
    }
    Ok(matched)
}
