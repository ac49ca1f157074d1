//! Turning a verified token's claims into an agent identity, per issuer: a name template that
//! tells apart bots sharing one subject, groups from claim matchers or a groups claim, and the
//! claims kept as attributes. A token that matches no rule is refused.

use super::AgentIdentity;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How one issuer's claims become an identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMapping {
    /// Agent name, with `{claim}` placeholders (`{a/b}` reads a nested claim), e.g.
    /// `{repository}/{workflow}@{ref}`. Default: `{sub}`.
    #[serde(default)]
    pub name: Option<String>,
    /// Claims kept as attributes (all but token mechanics when absent).
    #[serde(default)]
    pub keep: Option<Vec<String>>,
    /// A claim holding a list of group names to copy, e.g. `groups`.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Every matching rule adds its groups. When rules exist, a token must match at least one.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Claim matchers (all must match; `*` and `?` globs; a list claim matches if any item does)
/// and the groups they grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("no identity rule matched")]
    NoRuleMatched,
    #[error("claim {0:?} needed for the agent name is missing")]
    MissingClaim(String),
    #[error("the agent name template is invalid: {0}")]
    BadTemplate(String),
}

/// Claims that describe the token itself rather than the agent.
pub const TOKEN_MECHANICS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Read a claim by path: `repository`, or `kubernetes.io/serviceaccount/name` for nested ones.
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('/');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `*` matches any run of characters, `?` any one character; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn claim_matches(claims: &Map<String, Value>, path: &str, pattern: &str) -> bool {
    match claim(claims, path) {
        Some(Value::Array(items)) => items.iter().filter_map(scalar_text).any(|v| glob_match(pattern, &v)),
        Some(value) => scalar_text(value).is_some_and(|v| glob_match(pattern, &v)),
        None => false,
    }
}

/// Render `{claim}` placeholders; `{{` and `}}` are literal braces.
pub fn render(template: &str, claims: &Map<String, Value>) -> Result<String, MappingError> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut path = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => path.push(ch),
                        None => return Err(MappingError::BadTemplate(format!("unclosed {{ in {template:?}"))),
                    }
                }
                let value = claim(claims, &path).and_then(scalar_text).filter(|v| !v.is_empty());
                out.push_str(&value.ok_or(MappingError::MissingClaim(path))?);
            }
            '}' => return Err(MappingError::BadTemplate(format!("unmatched }} in {template:?}"))),
            other => out.push(other),
        }
    }
    Ok(out)
}

impl IdentityMapping {
    /// Check the configuration once, at startup.
    pub fn validate(&self) -> Result<(), MappingError> {
        if let Some(template) = &self.name {
            // Render against claims that have every placeholder, to find syntax errors only.
            render(template, &Map::new()).or_else(|e| match e {
                MappingError::MissingClaim(_) => Ok(String::new()),
                other => Err(other),
            })?;
        }
        Ok(())
    }

    /// The identity of a token from `issuer` with these (verified) claims.
    pub fn identify(
        &self,
        issuer: &str,
        subject: &str,
        claims: &Map<String, Value>,
    ) -> Result<AgentIdentity, MappingError> {
        let mut groups: Vec<String> = Vec::new();
        if let Some(path) = &self.groups_claim {
            match claim(claims, path) {
                Some(Value::Array(items)) => groups.extend(items.iter().filter_map(scalar_text)),
                Some(value) => groups.extend(scalar_text(value)),
                None => {}
            }
        }
        if !self.rules.is_empty() {
            let mut matched = false;
            for rule in &self.rules {
                if rule.matchers.iter().all(|(path, pattern)| claim_matches(claims, path, pattern)) {
                    matched = true;
                    groups.extend(rule.groups.iter().cloned());
                }
            }
            if !matched {
                return Err(MappingError::NoRuleMatched);
            }
        }
        groups.sort();
        groups.dedup();
        let name = match &self.name {
            Some(template) => render(template, claims)?,
            None => subject.to_owned(),
        };
        let attributes = match &self.keep {
            Some(keep) => keep.iter().filter_map(|k| claim(claims, k).map(|v| (k.clone(), v.clone()))).collect(),
            None => claims
                .iter()
                .filter(|(k, _)| !TOKEN_MECHANICS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        Ok(AgentIdentity { issuer: issuer.to_owned(), subject: subject.to_owned(), name, groups, attributes })
    }
}

#[cfg(test)]
mod tests;
