//! Signed outbound webhooks: the event's exact bytes as the body, and
//! `X-Tollgate-Signature: v1=hex(HMAC-SHA256(secret, "v1:{timestamp}:{event id}:{body}"))`
//! with `X-Tollgate-Timestamp` and `X-Tollgate-Event-Id`, so a receiver can check origin,
//! freshness and de-duplicate retries.

use crate::config::WebhookConfig;
use crate::signing;
use std::time::Duration;
use uuid::Uuid;

pub struct Webhook {
    url: String,
    secret: Vec<u8>,
}

/// Attempts before the event is handed back to JetStream for a later retry.
const ATTEMPTS: u32 = 4;

impl Webhook {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Webhook> {
        Ok(Webhook { url: config.url.clone(), secret: config.secret.resolve()?.into_bytes() })
    }

    pub async fn deliver(&self, http: &reqwest::Client, event_id: Uuid, body: &[u8]) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let timestamp = chrono::Utc::now().timestamp().to_string();
            let mut message = format!("v1:{timestamp}:{event_id}:").into_bytes();
            message.extend_from_slice(body);
            let signature = format!("v1={}", signing::sign_hex(&self.secret, &message));
            let sent = http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-tollgate-timestamp", &timestamp)
                .header("x-tollgate-event-id", event_id.to_string())
                .header("x-tollgate-signature", signature)
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = format!("HTTP {}", response.status()),
                Err(e) => last = e.to_string(),
            }
            tracing::info!(url = %self.url, %event_id, attempt, error = %last, "webhook delivery failed; retrying");
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        anyhow::bail!("webhook {} refused event {event_id}: {last}", self.url)
    }
}
