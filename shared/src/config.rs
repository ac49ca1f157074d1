//! Configuration loading shared by both binaries: a TOML file, then environment overrides, and
//! references to secrets that never appear in the file itself.
//!
//! An override names a path with `__` between parts, after a prefix:
//! `TOLLGATE_NATS__URL=nats://10.0.0.5:4222` sets `nats.url`;
//! `TOLLGATE_RESOURCES__0__PORT=5433` sets `port` of the first `[[resources]]` table.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment override {var}: {message}")]
    Override { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Read `path` (when given), apply the overrides found in `vars` under `prefix` whose first
/// part is one of `sections` (other variables with the prefix are not configuration), deserialize.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    prefix: &str,
    sections: &[&str],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?,
        None => String::new(),
    };
    let display = path.map(Path::to_owned).unwrap_or_else(|| PathBuf::from("<none>"));
    let mut value: toml::Value =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: display.clone(), message: e.to_string() })?;
    let relevant = vars.into_iter().filter(|(var, _)| {
        var.strip_prefix(prefix)
            .map(|rest| rest.split("__").next().unwrap_or_default().to_ascii_lowercase())
            .is_some_and(|section| sections.contains(&section.as_str()))
    });
    apply_overrides(&mut value, prefix, relevant)?;
    value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse { path: display, message: e.to_string() })
}

/// Apply `PREFIX` + `A__B__0__C` style variables to a TOML document.
pub fn apply_overrides(
    doc: &mut toml::Value,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in vars {
        let Some(path) = var.strip_prefix(prefix) else { continue };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            return Err(ConfigError::Override { var, message: "empty path segment".into() });
        }
        set_path(doc, &parts, scalar(&raw)).map_err(|message| ConfigError::Override { var, message })?;
    }
    Ok(())
}

fn scalar(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(node: &mut toml::Value, parts: &[String], leaf: toml::Value) -> Result<(), String> {
    let Some((head, rest)) = parts.split_first() else {
        *node = leaf;
        return Ok(());
    };
    match node {
        toml::Value::Table(table) => {
            let child = table.entry(head.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            set_path(child, rest, leaf)
        }
        toml::Value::Array(items) => {
            let index: usize = head.parse().map_err(|_| format!("`{head}` is not an array index"))?;
            let len = items.len();
            let child = items
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the end of the array ({len} items)"))?;
            set_path(child, rest, leaf)
        }
        _ => Err(format!("`{head}` is below a value that is not a table")),
    }
}

/// Where a secret comes from: `env:NAME` or `file:PATH`. The secret itself never sits in a
/// config file, an event or a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

impl TryFrom<String> for SecretRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("env:").filter(|n| !n.is_empty()) {
            Ok(SecretRef::Env(name.to_owned()))
        } else if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            Err("a secret must be given by reference: `env:NAME` or `file:PATH`".to_owned())
        }
    }
}

impl From<SecretRef> for String {
    fn from(s: SecretRef) -> String {
        match s {
            SecretRef::Env(name) => format!("env:{name}"),
            SecretRef::File(path) => format!("file:{}", path.display()),
        }
    }
}

impl SecretRef {
    /// Read the secret now. A file's trailing newline is not part of the secret.
    pub fn resolve(&self) -> Result<String, ConfigError> {
        match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| ConfigError::Invalid(format!("secret env:{name} is not set")))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| ConfigError::Invalid(format!("secret file:{} cannot be read: {e}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests;
