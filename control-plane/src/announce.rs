//! Announcing approvals: each `approval.*` event, read from its own durable consumer (so every
//! replica shares the work and a crash means redelivery, not silence), is posted to Slack (a
//! request with Approve / Deny buttons, later updated with the outcome) and to every signed
//! outbound webhook, retried with backoff.

mod slack;
mod webhook;

use crate::config::{SlackConfig, WebhookConfig};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use sqlx::PgPool;
use std::time::Duration;
use tollgate_shared::event::{kind, Envelope};
use tollgate_shared::names;

const CONSUMER: &str = "tollgate-announcer";

/// Where announcements go, with secrets resolved.
pub struct Announcer {
    pub db: PgPool,
    pub http: reqwest::Client,
    pub slack: Option<slack::Slack>,
    pub webhooks: Vec<webhook::Webhook>,
}

impl Announcer {
    pub fn new(
        db: PgPool,
        slack: Option<&SlackConfig>,
        webhooks: &[WebhookConfig],
    ) -> anyhow::Result<Option<Announcer>> {
        let slack = slack.map(slack::Slack::new).transpose()?;
        let webhooks = webhooks.iter().map(webhook::Webhook::new).collect::<anyhow::Result<Vec<_>>>()?;
        if slack.is_none() && webhooks.is_empty() {
            return Ok(None);
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Some(Announcer { db, http, slack, webhooks }))
    }

    pub async fn run(self, js: jetstream::Context) {
        let mut delay = Duration::from_millis(200);
        loop {
            if let Err(e) = self.consume(&js).await {
                tracing::warn!(error = %e, "announcer interrupted; resuming");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn consume(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let stream = tollgate_shared::stream::open_event_stream(js).await.map_err(anyhow::Error::msg)?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    filter_subject: names::approval_subjects(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(120),
                    ..Default::default()
                },
            )
            .await?;
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            match self.announce(&message.payload).await {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "announcement failed; it will be retried");
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
                }
            }
        }
        Ok(())
    }

    async fn announce(&self, raw: &[u8]) -> anyhow::Result<()> {
        let Ok(event) = serde_json::from_slice::<Envelope>(raw) else {
            tracing::warn!("unreadable approval event not announced");
            return Ok(());
        };
        let is_request_or_decision =
            matches!(event.kind.as_str(), kind::APPROVAL_REQUESTED | kind::APPROVAL_DECIDED | kind::APPROVAL_EXPIRED);
        if !is_request_or_decision {
            return Ok(());
        }
        for hook in &self.webhooks {
            hook.deliver(&self.http, event.id, raw).await?;
        }
        if let Some(slack) = &self.slack {
            slack.announce(&self.http, &self.db, &event).await?;
        }
        Ok(())
    }
}
