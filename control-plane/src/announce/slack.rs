//! Slack: a request becomes a message with Approve / Deny buttons (`chat.postMessage`); its
//! outcome replaces the buttons (`chat.update`). Every piece of text that came from an agent
//! (statement, agent name) is escaped so it cannot forge Slack formatting or mentions.

use crate::config::SlackConfig;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate_shared::event::{kind, ApprovalDecided, ApprovalExpired, ApprovalRequested, Envelope, Verdict};

pub struct Slack {
    api_base: String,
    token: String,
    channel: String,
}

/// Slack's three control characters as entities, and backticks made harmless, so text shows
/// as written: no `<!channel>`, no `<https://evil|link>`, no escaping a code block.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('`', "\u{2cb}")
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Slack {
    pub fn new(config: &SlackConfig) -> anyhow::Result<Slack> {
        Ok(Slack {
            api_base: config.api_base.trim_end_matches('/').to_owned(),
            token: config.bot_token.resolve()?,
            channel: config.channel.clone(),
        })
    }

    async fn call(&self, http: &reqwest::Client, method: &str, body: &Value) -> anyhow::Result<Value> {
        let response = http
            .post(format!("{}/{method}", self.api_base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?
            .error_for_status()?;
        let answer: Value = response.json().await?;
        if answer["ok"] != true {
            anyhow::bail!("Slack {method} failed: {}", answer["error"]);
        }
        Ok(answer)
    }

    pub async fn announce(&self, http: &reqwest::Client, db: &PgPool, event: &Envelope) -> anyhow::Result<()> {
        match event.kind.as_str() {
            kind::APPROVAL_REQUESTED => {
                let request: ApprovalRequested = serde_json::from_value(event.payload.clone())?;
                // A redelivered event (the ack was lost) must not post the request twice.
                let posted: Option<(String,)> =
                    sqlx::query_as("SELECT ts FROM approval_messages WHERE approval_id = $1")
                        .bind(request.approval_id)
                        .fetch_optional(db)
                        .await?;
                if posted.is_some() {
                    return Ok(());
                }
                let text = format!(
                    "*Approval needed* for `{agent}` on `{resource}` (rule {rule}; {quorum} approval(s) needed; expires {expires})\n```{statement}```",
                    agent = escape(&event.agent.name),
                    resource = escape(&event.resource.name),
                    rule = escape(&request.rule),
                    quorum = request.quorum,
                    expires = request.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    statement = escape(&clip(&request.statement, 2500)),
                );
                let id = request.approval_id.to_string();
                let button = |action: &str, label: &str, style: &str| {
                    json!({ "type": "button", "action_id": action, "style": style, "value": id,
                            "text": { "type": "plain_text", "text": label } })
                };
                let body = json!({
                    "channel": self.channel,
                    "text": format!("Approval needed for {} on {}", escape(&event.agent.name), escape(&event.resource.name)),
                    "blocks": [
                        { "type": "section", "text": { "type": "mrkdwn", "text": text } },
                        { "type": "actions", "block_id": "tollgate", "elements": [
                            button("approve", "Approve", "primary"),
                            button("approve_60", "Approve for 1 hour", "primary"),
                            button("deny", "Deny", "danger")
                        ] }
                    ]
                });
                let answer = self.call(http, "chat.postMessage", &body).await?;
                let (Some(channel), Some(ts)) = (answer["channel"].as_str(), answer["ts"].as_str()) else {
                    anyhow::bail!("Slack chat.postMessage answered without channel and ts");
                };
                sqlx::query("INSERT INTO approval_messages (approval_id, channel, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(request.approval_id)
                    .bind(channel)
                    .bind(ts)
                    .execute(db)
                    .await?;
            }
            kind::APPROVAL_DECIDED | kind::APPROVAL_EXPIRED => {
                let (approval_id, outcome) = if event.kind == kind::APPROVAL_DECIDED {
                    let decided: ApprovalDecided = serde_json::from_value(event.payload.clone())?;
                    let verb = match decided.verdict {
                        Verdict::Approve => "Approved",
                        Verdict::Deny => "Denied",
                    };
                    let reason = decided.reason.map(|r| format!(": {}", escape(&clip(&r, 500)))).unwrap_or_default();
                    (decided.approval_id, format!("*{verb}* by {}{reason}", escape(&event.agent.name)))
                } else {
                    let expired: ApprovalExpired = serde_json::from_value(event.payload.clone())?;
                    (expired.approval_id, "*Expired*: the statement was not run".to_owned())
                };
                let posted: Option<(String, String)> =
                    sqlx::query_as("SELECT channel, ts FROM approval_messages WHERE approval_id = $1")
                        .bind(approval_id)
                        .fetch_optional(db)
                        .await?;
                // Never announced (Slack was down then): nothing to update.
                let Some((channel, ts)) = posted else { return Ok(()) };
                if let Some((votes, quorum)) = self.partial_approval(db, event).await? {
                    // Short of the quorum: say so in the thread and keep the buttons.
                    let text = format!("{outcome} ({votes} of {quorum})");
                    let body = json!({ "channel": channel, "thread_ts": ts, "text": text });
                    self.call(http, "chat.postMessage", &body).await?;
                    return Ok(());
                }
                let body = json!({
                    "channel": channel, "ts": ts, "text": outcome,
                    "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": format!("{outcome} (approval {approval_id})") } }]
                });
                self.call(http, "chat.update", &body).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// For an approval that does not complete the quorum: (distinct approvers so far, quorum).
    async fn partial_approval(&self, db: &PgPool, event: &Envelope) -> anyhow::Result<Option<(i64, i32)>> {
        let Ok(decided) = serde_json::from_value::<ApprovalDecided>(event.payload.clone()) else { return Ok(None) };
        if event.kind != kind::APPROVAL_DECIDED || decided.verdict != Verdict::Approve {
            return Ok(None);
        }
        // Others' approvals as projected so far, plus this one (which may not be projected yet).
        let row: Option<(i32, i64)> = sqlx::query_as(
            "SELECT a.quorum, (SELECT count(DISTINCT (d.approver_issuer, d.approver_subject)) FROM approval_decisions d
                WHERE d.approval_id = a.id AND d.verdict = 'approve' AND NOT (d.approver_issuer = $2 AND d.approver_subject = $3))
             FROM approvals a WHERE a.id = $1",
        )
        .bind(decided.approval_id)
        .bind(&event.agent.issuer)
        .bind(&event.agent.subject)
        .fetch_optional(db)
        .await?;
        Ok(row.map(|(quorum, others)| (others + 1, quorum)).filter(|(votes, quorum)| *votes < i64::from(*quorum)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_cannot_forge_slack_formatting() {
        let statement = "DROP TABLE t /* <!channel> <https://evil.example|click> & ```x``` */";
        let shown = escape(statement);
        assert!(!shown.contains('<') && !shown.contains('>') && !shown.contains('`'), "{shown}");
        assert!(shown.contains("&lt;!channel&gt;") && shown.contains("&amp;"));
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
