//! What changed between two policy documents, as paths a person can read
//! (`resources[orders-prod].guardrails.deny_classes`). Lists of named items are matched by name,
//! so reordering them is not a change.

use super::PolicyDocument;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub path: String,
    /// Absent when the path was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// Absent when the path was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

pub fn diff(before: &PolicyDocument, after: &PolicyDocument) -> Vec<PolicyChange> {
    let mut out = Vec::new();
    let a = serde_json::to_value(before).unwrap_or(Value::Null);
    let b = serde_json::to_value(after).unwrap_or(Value::Null);
    walk("", &a, &b, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn names(items: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = items.iter().map(|i| i.get("name").and_then(Value::as_str)).collect::<Option<_>>()?;
    let unique: BTreeSet<&&str> = names.iter().collect();
    (unique.len() == names.len()).then_some(names)
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<PolicyChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let child = join(path, key);
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => walk(&child, p, q, out),
                    (Some(p), None) => out.push(PolicyChange { path: child, before: Some(p.clone()), after: None }),
                    (None, Some(q)) => out.push(PolicyChange { path: child, before: None, after: Some(q.clone()) }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => match (names(x), names(y)) {
            (Some(xn), Some(yn)) => {
                let all: BTreeSet<&str> = xn.iter().chain(yn.iter()).copied().collect();
                for name in all {
                    let child = format!("{path}[{name}]");
                    let p = xn.iter().position(|n| *n == name).map(|i| &x[i]);
                    let q = yn.iter().position(|n| *n == name).map(|i| &y[i]);
                    match (p, q) {
                        (Some(p), Some(q)) => walk(&child, p, q, out),
                        (p, q) => out.push(PolicyChange { path: child, before: p.cloned(), after: q.cloned() }),
                    }
                }
            }
            _ if x != y => {
                out.push(PolicyChange { path: path.to_owned(), before: Some(a.clone()), after: Some(b.clone()) })
            }
            _ => {}
        },
        _ if a != b => {
            out.push(PolicyChange { path: path.to_owned(), before: Some(a.clone()), after: Some(b.clone()) })
        }
        _ => {}
    }
}
