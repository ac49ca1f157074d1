//! The console's review pages: the access-review reports for a period (as a table, and as the
//! CSV the API serves, to download), and the policy with every version and what it changed.
//! Both read through the API's own handlers, so a page and an API call never disagree.

use super::pages::{filter_time, message, page};
use super::signed_in_as;
use crate::api::reviews::{ReviewQuery, WhoRanQuery};
use crate::api::AppState;
use crate::web::{escape, escape_shown};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;

/// The reports the console offers, with their titles.
const REPORTS: &[(&str, &str)] = &[
    ("agents", "Per agent"),
    ("resources", "Per resource"),
    ("approvals", "Approvals"),
    ("statements", "Who ran a statement"),
];

/// Rows per report page (the API's largest page).
const ROWS: u32 = 1000;

#[derive(Deserialize, Default)]
pub struct ReportForm {
    #[serde(default)]
    report: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// For `statements`: any statement containing this text.
    #[serde(default)]
    contains: String,
    #[serde(default)]
    cursor: Option<String>,
    /// `csv` downloads the page instead of showing it.
    #[serde(default)]
    format: Option<String>,
}

/// One page of a report from the API's handler: JSON, or CSV when `csv`.
async fn run(state: &AppState, form: &ReportForm, csv: bool) -> Result<Response, String> {
    let from = filter_time("From", &form.from)?.ok_or("From: give the start of the period")?;
    let to = filter_time("To", &form.to)?;
    let format = Some(if csv { "csv" } else { "json" }.to_owned());
    let review = || ReviewQuery { from, to, format: format.clone(), limit: Some(ROWS), cursor: form.cursor.clone() };
    let state = State(state.clone());
    let answer = match form.report.as_str() {
        "agents" => crate::api::reviews::agents(state, Ok(Query(review()))).await,
        "resources" => crate::api::reviews::resources(state, Ok(Query(review()))).await,
        "approvals" => crate::api::reviews::approvals(state, Ok(Query(review()))).await,
        "statements" => {
            let contains = Some(form.contains.trim().to_owned()).filter(|c| !c.is_empty());
            if contains.is_none() {
                return Err("Who ran a statement: give text the statement contains".into());
            }
            let query = WhoRanQuery {
                text: None,
                contains,
                fingerprint: None,
                same_as: None,
                language: None,
                from,
                to,
                format,
                limit: Some(ROWS),
                cursor: form.cursor.clone(),
            };
            crate::api::reviews::statements(state, Ok(Query(query))).await
        }
        other => return Err(format!("There is no report {other:?}.")),
    };
    answer.map_err(|e| match e {
        crate::api::ApiError::BadRequest(why) => why,
        e => {
            tracing::warn!(error = %e, "console report failed");
            "The report failed; the control plane's log says why.".into()
        }
    })
}

/// A cell: text as text (escaped, disguising characters shown), lists joined, objects as
/// `key=value`.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => escape_shown(s),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) => {
            map.iter().map(|(k, v)| format!("{}={}", escape_shown(k), cell(v))).collect::<Vec<_>>().join(", ")
        }
        other => escape(&other.to_string()),
    }
}

/// The review reports: pick one and a period, read it here or download it as CSV.
pub async fn reports(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ReportForm>, QueryRejection>,
) -> Response {
    let person = match signed_in_as(
        &state,
        &headers,
        crate::api::READ_ROLES,
        "Reports need the reviewer or auditor role.",
    )
    .await
    {
        Ok(p) => p,
        Err(page) => return page,
    };
    let Ok(Query(form)) = query else {
        return message(StatusCode::BAD_REQUEST, "Refused", "Malformed report request.");
    };
    let csv = form.format.as_deref() == Some("csv");
    let chosen = if form.report.is_empty() { "agents" } else { form.report.as_str() };
    let options: String = REPORTS
        .iter()
        .map(|(value, label)| {
            let selected = if *value == chosen { " selected" } else { "" };
            format!(r#"<option value="{value}"{selected}>{label}</option>"#)
        })
        .collect();
    let mut body = format!(
        r#"<form method="get" action="/console/reports" id="report-form"><fieldset><legend>Report</legend>
<label for="r-report">Report</label> <select id="r-report" name="report">{options}</select>
<label for="r-from">From (UTC)</label> <input id="r-from" name="from" type="datetime-local" required value="{from}">
<label for="r-to">To (UTC, now when empty)</label> <input id="r-to" name="to" type="datetime-local" value="{to}">
<label for="r-contains">Statement contains (who ran a statement)</label> <input id="r-contains" name="contains" value="{contains}">
<button type="submit" id="show-report">Show</button></fieldset></form>"#,
        from = escape(&form.from),
        to = escape(&form.to),
        contains = escape(&form.contains),
    );
    if form.from.is_empty() {
        body.push_str("<p>Choose a report and a period.</p>");
        return page("Reports", Some(&person), &body);
    }
    let answer = match run(&state, &form, csv).await {
        Ok(answer) => answer,
        Err(why) => return message(StatusCode::BAD_REQUEST, "Refused", &why),
    };
    let (parts, answer_body) = answer.into_parts();
    if !parts.status.is_success() {
        return message(StatusCode::BAD_REQUEST, "Refused", "The report could not be made for this request.");
    }
    let bytes = match axum::body::to_bytes(answer_body, 256 * 1024 * 1024).await {
        Ok(bytes) => bytes,
        Err(e) => return super::internal(e),
    };
    if csv {
        let name = format!("tollgate-{}-{}.csv", chosen, form.from.replace(':', "-"));
        let disposition = format!(
            "attachment; filename=\"{}\"",
            name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "_")
        );
        let mut response = (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, disposition),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            bytes,
        )
            .into_response();
        if let Some(link) = parts.headers.get(header::LINK) {
            response.headers_mut().insert(header::LINK, link.clone());
        }
        return response;
    }
    let report: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return super::internal(e),
    };
    let query = |extra: &[(&str, &str)]| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        pairs.append_pair("report", chosen).append_pair("from", &form.from).append_pair("to", &form.to);
        if !form.contains.is_empty() {
            pairs.append_pair("contains", &form.contains);
        }
        if let Some(cursor) = &form.cursor {
            pairs.append_pair("cursor", cursor);
        }
        for (k, v) in extra {
            pairs.append_pair(k, v);
        }
        pairs.finish()
    };
    let _ = write!(
        body,
        r#"<p><a id="download-csv" href="/console/reports?{}">Download this page as CSV</a></p>"#,
        escape(&query(&[("format", "csv")]))
    );
    let items = report["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        body.push_str(r#"<p id="no-rows">Nothing in this period.</p>"#);
    } else {
        let columns: Vec<String> =
            items.first().and_then(|first| first.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
        body.push_str(r#"<table id="report"><thead><tr>"#);
        for column in &columns {
            let _ = write!(body, "<th scope=col>{}</th>", escape(column));
        }
        body.push_str("</tr></thead><tbody>");
        for item in &items {
            body.push_str("<tr class=row>");
            for column in &columns {
                let _ = write!(body, "<td>{}</td>", cell(&item[column]));
            }
            body.push_str("</tr>");
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = report["next_cursor"].as_str() {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        pairs
            .append_pair("report", chosen)
            .append_pair("from", &form.from)
            .append_pair("to", &form.to)
            .append_pair("contains", &form.contains)
            .append_pair("cursor", next);
        let _ = write!(
            body,
            r#"<p><a id="next-page" href="/console/reports?{}">Next page</a></p>"#,
            escape(&pairs.finish())
        );
    }
    page("Reports", Some(&person), &body)
}

/// The policy in force, and every version with who made it, when, why and what it changed.
pub async fn policy(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let person =
        match signed_in_as(&state, &headers, crate::api::READ_ROLES, "The policy needs the reviewer or auditor role.")
            .await
        {
            Ok(p) => p,
            Err(page) => return page,
        };
    let versions = match crate::api::policy::list_versions(State(state.clone())).await {
        Ok(axum::Json(versions)) => versions,
        Err(e) => return super::internal(e),
    };
    let mut body = String::new();
    match crate::api::policy::get_policy(State(state.clone())).await {
        Ok(axum::Json(live)) => {
            let yaml = serde_norway::to_string(&live.document).unwrap_or_else(|e| format!("(cannot show: {e})"));
            let _ = write!(
                body,
                r#"<h2>In force: version {version}</h2><p>by {by} at {at}</p><pre id="live-policy"><code>{yaml}</code></pre>"#,
                version = live.version,
                by = escape_shown(&live.changed_by),
                at = live.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                yaml = escape_shown(&yaml),
            );
        }
        Err(crate::api::ApiError::NotFound(_)) => body.push_str("<p>No policy yet: every agent is refused.</p>"),
        Err(e) => return super::internal(e),
    }
    body.push_str("<h2>Versions</h2>");
    for v in &versions {
        let _ = write!(
            body,
            r#"<section class="version" id="version-{n}"><h3>Version {n}</h3><p>by {by} at {at}{comment}</p><ul>"#,
            n = v.version,
            by = escape_shown(&v.changed_by),
            at = v.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            comment = v.comment.as_deref().map(|c| format!(": {}", escape_shown(c))).unwrap_or_default(),
        );
        for change in v.changes.as_array().into_iter().flatten() {
            let (sign, class) = match (change.get("before").is_some(), change.get("after").is_some()) {
                (false, true) => ("+", "added"),
                (true, false) => ("-", "removed"),
                _ => ("~", "changed"),
            };
            let side = |key: &str| change.get(key).map(|v| escape_shown(&v.to_string())).unwrap_or_default();
            let _ = write!(
                body,
                r#"<li class="{class}"><code>{sign} {path}</code> <small>{before}{arrow}{after}</small></li>"#,
                path = escape_shown(change["path"].as_str().unwrap_or("?")),
                before = side("before"),
                arrow = if class == "changed" { " → " } else { "" },
                after = side("after"),
            );
        }
        body.push_str("</ul></section>");
    }
    page("Policy", Some(&person), &body)
}
