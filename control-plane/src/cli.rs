//! The admin CLI's work (`tollgate policy apply|diff|get`), as functions the binary and the
//! tests share. A document is checked locally first, so YAML errors name the YAML path.

pub mod login;

use serde_json::Value;
use std::path::Path;
use tollgate_shared::policy::{Format, PolicyDocument};

/// Talks to a control plane's API with a bearer token.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Input(String),
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("cannot reach the API: {0}")]
    Http(#[from] reqwest::Error),
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = answer["message"].as_str().unwrap_or("request failed").to_owned();
            return Err(CliError::Api { status, message });
        }
        Ok(answer)
    }
}

/// Read and check a policy file (YAML, or JSON when it ends in `.json`).
pub fn read_document(path: &Path) -> Result<PolicyDocument, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    let format = if path.extension().is_some_and(|e| e == "json") { Format::Json } else { Format::Yaml };
    PolicyDocument::parse(&text, format).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

fn describe(changes: &Value) -> String {
    let list = changes.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "  (no changes)\n".into();
    }
    list.iter()
        .map(|c| {
            let sign = match (c.get("before").is_some(), c.get("after").is_some()) {
                (false, true) => "+",
                (true, false) => "-",
                _ => "~",
            };
            format!("  {sign} {}\n", c["path"].as_str().unwrap_or("?"))
        })
        .collect()
}

async fn live_version(api: &Api) -> Result<u64, CliError> {
    match api.send(reqwest::Method::GET, "/api/v1/policy", None).await {
        Ok(live) => Ok(live["version"].as_u64().unwrap_or(0)),
        Err(CliError::Api { status: 404, .. }) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Make the file the next policy version; returns what changed, for people.
pub async fn apply(api: &Api, path: &Path, comment: Option<&str>) -> Result<String, CliError> {
    let document = read_document(path)?;
    let base = live_version(api).await?;
    let body = serde_json::json!({ "base_version": base, "document": document, "comment": comment });
    let answer = api.send(reqwest::Method::PUT, "/api/v1/policy", Some(&body)).await?;
    Ok(format!("policy version {} applied (was {base}):\n{}", answer["version"], describe(&answer["changes"])))
}

/// What applying the file would change, without applying it.
pub async fn diff(api: &Api, path: &Path) -> Result<String, CliError> {
    let document = read_document(path)?;
    let body = serde_json::json!({ "document": document });
    let answer = api.send(reqwest::Method::POST, "/api/v1/policy/dry-run", Some(&body)).await?;
    Ok(format!("against live version {}:\n{}", answer["live_version"], describe(&answer["changes"])))
}

/// The live policy as YAML.
pub async fn get(api: &Api) -> Result<String, CliError> {
    let live = api.send(reqwest::Method::GET, "/api/v1/policy", None).await?;
    let yaml = serde_norway::to_string(&live["document"]).map_err(|e| CliError::Input(e.to_string()))?;
    Ok(format!(
        "# version {} by {} at {}\n{yaml}",
        live["version"],
        live["changed_by"].as_str().unwrap_or("?"),
        live["changed_at"].as_str().unwrap_or("?")
    ))
}

/// A review report for a period, every page of it: JSON (one array of rows) or CSV (one
/// header). `report` is `agents`, `resources`, `approvals` or `statements` (with `filter`,
/// `text=`, `contains=`, `fingerprint=` or `same_as=`).
pub async fn review(
    api: &Api,
    report: &str,
    from: &str,
    to: Option<&str>,
    filter: Option<(&str, &str)>,
    csv: bool,
    page_size: u32,
) -> Result<String, CliError> {
    if report == "unused-grants" {
        if csv {
            return Err(CliError::Input("unused-grants is JSON only (it carries a policy to apply)".into()));
        }
        let mut path = format!("/api/v1/reviews/unused-grants?from={}", urlencode(from));
        if let Some(to) = to {
            path.push_str(&format!("&to={}", urlencode(to)));
        }
        let answer = api.send(reqwest::Method::GET, &path, None).await?;
        return serde_json::to_string_pretty(&answer)
            .map(|t| format!("{t}\n"))
            .map_err(|e| CliError::Input(e.to_string()));
    }
    if !["agents", "resources", "approvals", "statements"].contains(&report) {
        return Err(CliError::Input(format!(
            "no report {report:?}: agents, resources, approvals, statements or unused-grants"
        )));
    }
    // The end of the period is fixed once, so every page reads the same period.
    let to = to.map_or_else(|| chrono::Utc::now().to_rfc3339(), str::to_owned);
    let mut query: Vec<(&str, String)> = vec![("from", from.to_owned()), ("to", to), ("limit", page_size.to_string())];
    if let Some((name, value)) = filter {
        query.push((name, value.to_owned()));
    }
    if csv {
        query.push(("format", "csv".into()));
    }
    let (mut rows, mut out) = (Vec::new(), String::new());
    let mut cursor: Option<String> = None;
    loop {
        let mut page_query = query.clone();
        if let Some(c) = &cursor {
            page_query.push(("cursor", c.clone()));
        }
        let response = api
            .http
            .get(format!("{}/api/v1/reviews/{report}", api.base))
            .bearer_auth(&api.token)
            .query(&page_query)
            .send()
            .await?;
        let status = response.status().as_u16();
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split("cursor=").nth(1))
            .and_then(|rest| rest.split('>').next())
            .map(urldecode);
        let body = response.text().await?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            return Err(CliError::Api { status, message });
        }
        cursor = if csv {
            // Every page repeats the header (one line; rows may hold quoted line breaks): keep
            // the first, and the rows exactly as sent.
            let (header, rows) = body.split_once('\n').unwrap_or((body.as_str(), ""));
            if out.is_empty() {
                out.push_str(header);
                out.push('\n');
            }
            out.push_str(rows);
            next
        } else {
            let page: Value = serde_json::from_str(&body).map_err(|e| CliError::Input(format!("not JSON: {e}")))?;
            rows.extend(page["items"].as_array().cloned().unwrap_or_default());
            page["next_cursor"].as_str().map(str::to_owned)
        };
        if cursor.is_none() {
            break;
        }
    }
    if csv {
        return Ok(out);
    }
    serde_json::to_string_pretty(&Value::Array(rows))
        .map(|t| format!("{t}\n"))
        .map_err(|e| CliError::Input(e.to_string()))
}

/// Percent-encode a query value (RFC 3339 times carry `+` and `:`; cursors may be any text).
pub fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Undo [`urlencode`] (a malformed escape is kept as it is).
fn urldecode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
